#include "trainer/train.h"

#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/tensor.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_split.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "core/fault.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/precision.h"
#include "core/rng.h"
#include "dsa/model.h"
#include "dsa/sparse_attention.h"
#include "grpo/logprobs.h"
#include "rewards/prompts.h"
#include "rollout/tokenizer.h"
#include "trainer/checkpoint.h"
#include "trainer/dsa_stages.h"
#include "trainer/evaluate.h"
#include "trainer/optimizer.h"
#include "trainer/rl_step.h"
#include "trainer/run_dir.h"
#include "trainer/tensorboard.h"
#include "trainer/token_data.h"

namespace dsrl::trainer {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::atomic<int> g_signal{0};
extern "C" void on_signal(int sig) { g_signal.store(sig); }

// True on every rank when any rank received SIGTERM/SIGINT (so all stop after the same step).
bool stop_requested(const dist::Communicator& comm) {
    at::Tensor flag = at::tensor(std::vector<int32_t>{g_signal.load() != 0 ? 1 : 0});
    if (comm.size() > 1) comm.all_reduce(flag, dist::ReduceOp::kMax);
    return flag.item<int32_t>() != 0;
}

dsa::Model clone_model(const dsa::Model& m, c10::Device device) {
    dsa::ModelWeights w = m.weights();
    for (dsa::NamedTensor& t : dsa::named_tensors(w, m.config())) *t.tensor = t.tensor->detach().to(device).clone();
    if (m.config().tie_word_embeddings) w.lm_head = w.embed_tokens;
    return dsa::Model(m.config(), w);
}

// Per-rank metrics averaged on rank 0 (keys a rank lacks, e.g. a domain it did not draw, are averaged over
// the ranks that have them).
std::map<std::string, double> reduce_metrics(const std::map<std::string, double>& local, const dist::Communicator& comm) {
    if (comm.size() <= 1) return local;
    // Text lines "key value" (NaN and Inf survive, unlike JSON numbers).
    std::string text;
    for (const auto& [k, v] : local) absl::StrAppendFormat(&text, "%s %.17g\n", k, v);
    std::map<std::string, double> sum;
    std::map<std::string, int> count;
    for (const std::string& s : comm.all_gather_bytes(text)) {
        for (absl::string_view line : absl::StrSplit(s, '\n', absl::SkipEmpty())) {
            const size_t sp = line.rfind(' ');
            double v = 0;
            if (sp == absl::string_view::npos || !absl::SimpleAtod(line.substr(sp + 1), &v)) continue;
            const std::string key(line.substr(0, sp));
            sum[key] += v;
            ++count[key];
        }
    }
    for (auto& [k, v] : sum) v /= count[k];
    return sum;
}

std::string cursor_of(const rewards::PromptSampler& s) { return absl::StrCat(s.epoch(), ":", s.position()); }

void restore_cursor(rewards::PromptSampler& s, const std::string& text, const std::string& what) {
    const std::vector<std::string> parts = absl::StrSplit(text, ':');
    int64_t epoch = 0, position = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &epoch) || !absl::SimpleAtoi(parts[1], &position)) {
        throw CheckpointError(absl::StrCat("checkpoint cursor '", what, "' is malformed: '", text, "'"));
    }
    s.restore({epoch, position});
}

// An integer cursor of a checkpoint (`fallback` when absent); a malformed one is a CheckpointError naming it.
int64_t int_cursor(const std::map<std::string, std::string>& cursors, const std::string& name, int64_t fallback) {
    const auto it = cursors.find(name);
    if (it == cursors.end()) return fallback;
    int64_t value = 0;
    if (!absl::SimpleAtoi(it->second, &value)) {
        throw CheckpointError(absl::StrCat("checkpoint cursor '", name, "' is malformed: '", it->second, "'"));
    }
    return value;
}

// Cuts the metrics file back to `bytes` (its size when the checkpoint being resumed was written); -1 (a
// checkpoint of an older dsrl) or a file already that short leave it as it is.
void truncate_metrics(const std::string& path, int64_t bytes) {
    const int64_t size = fs::file_size(path);
    if (bytes < 0 || size <= bytes) return;
    DSRL_LOG(warn) << path << ": dropping " << size - bytes << " bytes of rows written after the checkpoint "
                   << "(the steps run again from it)";
    fs::truncate_file(path, bytes);
}

// Rank 0's metrics: one JSON line per step in metrics.jsonl and, with trainer.tensorboard, TensorBoard
// scalars "<stage>/<key>" in <output_dir>/tb (a resumed run appends a new event file; TensorBoard merges them).
class MetricsLog {
public:
    MetricsLog(const std::string& path, const std::string& tb_dir, bool active) : active_(active) {
        if (!active_) return;
        out_.open(path, std::ios::app);
        if (!out_) throw Error(absl::StrCat("cannot open the metrics file ", path));
        if (!tb_dir.empty()) tb_ = std::make_unique<TensorBoardWriter>(tb_dir);
    }
    void write(const std::string& stage, int64_t step, const std::map<std::string, double>& m) {
        if (!active_) return;
        Json j = m;
        j["stage"] = stage;
        j["step"] = step;
        out_ << j.dump() << "\n";
        out_.flush();
        if (tb_) {
            std::map<std::string, double> tagged;
            for (const auto& [k, v] : m) tagged[stage + "/" + k] = v;
            tb_->add_scalars(step, tagged);
        }
    }

private:
    bool active_;
    std::ofstream out_;
    std::unique_ptr<TensorBoardWriter> tb_;
};

// One SFT batch: chat prompt + target response (meta "response", else "\boxed{answer}" when the prompt asks
// for a boxed answer, else the answer) + EOS; NLL over the response tokens.
// The SFT data: `sft.data`, or (when empty) every domain's training data mixed by the domain weights.
struct SftSource {
    std::string name;  // cursor key
    double weight = 1.0;
    std::string spec;
    std::unique_ptr<rewards::PromptSampler> sampler;
};

// Seeded by the job alone: every rank holds the same streams and draws the whole global batch (next_sft_item).
std::vector<SftSource> sft_sources(const JobConfig& job) {
    std::vector<SftSource> out;
    const auto add = [&](const std::string& key, double weight, const std::string& spec, const std::string& domain) {
        out.push_back({key, weight, spec,
                       std::make_unique<rewards::PromptSampler>(rewards::make_prompt_source(spec, domain, ""),
                                                                rng::derive_seed(job.run.seed, 0, key))});
    };
    if (!job.sft.data.empty()) {
        add("prompts.sft", 1.0, job.sft.data, "sft");
    } else {
        for (const DomainConfig& d : job.domains) add("prompts.sft." + d.name, d.weight, d.data, d.name);
    }
    return out;
}

// The next SFT item of step `step`, global slot `slot`: the source is drawn by weight, deterministically.
rewards::PromptItem next_sft_item(std::vector<SftSource>& sources, const JobConfig& job, int64_t step, int64_t slot,
                                  std::string* spec) {
    double total = 0;
    for (const SftSource& s : sources) total += s.weight;
    const uint64_t r = rng::mix64(rng::derive_seed(job.run.seed, 0, absl::StrCat("sft.mixture.", step)) +
                                  static_cast<uint64_t>(slot) * 0x9E3779B97F4A7C15ull);
    double x = static_cast<double>(r >> 11) / 9007199254740992.0 * total;
    SftSource* chosen = &sources.back();
    for (SftSource& s : sources) {
        if (x < s.weight) {
            chosen = &s;
            break;
        }
        x -= s.weight;
    }
    *spec = chosen->spec;
    return chosen->sampler->next();
}

std::map<std::string, double> sft_step(dsa::Model& model, AdamW& opt, const rollout::Tokenizer& tok,
                                       std::vector<SftSource>& sources, int64_t step, const JobConfig& job,
                                       const dist::Communicator& comm) {
    // The global batch is world × micro_batch_size slots; every rank draws them all (its streams advance alike)
    // and trains on slots [rank · m, (rank + 1) · m) — the same data as one rank with world × m sequences.
    const int64_t per_rank = job.trainer.micro_batch_size;
    std::vector<rollout::Sample> samples(static_cast<size_t>(per_rank));
    for (int64_t g = 0; g < comm.size() * per_rank; ++g) {
        std::string spec;
        const rewards::PromptItem item = next_sft_item(sources, job, step, g, &spec);
        if (g / per_rank != comm.rank()) continue;
        rollout::Sample& s = samples[static_cast<size_t>(g % per_rank)];
        std::string target;
        if (const auto it = item.meta.find("response"); it != item.meta.end()) {
            target = it->second;
        } else if (const auto a = item.meta.find("answer"); a != item.meta.end()) {
            target = item.prompt.find("\\boxed") != std::string::npos ? absl::StrCat("\\boxed{", a->second, "}") : a->second;
        } else {
            throw DataError(absl::StrCat("sft: prompt ", item.id, " of ", spec,
                                         " has neither 'response' nor 'answer'"));
        }
        for (const int64_t id : tok.apply_chat({{"user", item.prompt}}, true)) s.prompt.push_back(static_cast<int32_t>(id));
        for (const int64_t id : tok.encode(target)) s.response.push_back(static_cast<int32_t>(id));
        s.response.push_back(static_cast<int32_t>(tok.eos_id()));
        s.vocab_size = job.model.vocab_size;
    }
    std::vector<const rollout::Sample*> ptrs;
    for (const rollout::Sample& s : samples) ptrs.push_back(&s);
    const grpo::PackedBatch b = grpo::pack_samples(ptrs, tok.pad_id());
    const grpo::LogprobResult lp = grpo::sequence_logprobs(
        model, b, {.replay_routes = false, .apply_kept = false, .chunk_tokens = job.grpo.logp_chunk_tokens});
    const at::Tensor valid = b.valid.to(lp.logp.device());
    // Mean over the global batch's target tokens (data_parallel_denominator: every rank's loss sum over the
    // global count / world, so the averaged gradient and the ranks' mean of `loss` are the global mean).
    const double denominator = data_parallel_denominator(valid.sum().item<double>(), &comm);
    const at::Tensor loss = -(lp.logp * valid).sum() / denominator;
    loss.backward();
    average_gradients(opt.params(), &comm);
    const ClipResult c = clip_grad_norm(opt.params(), job.trainer.optimizer.grad_clip);
    std::map<std::string, double> m{
        {"loss", loss.item<double>()}, {"grad_norm", c.norm}, {"skipped_steps", 0}, {"tokens", denominator}};
    if (c.finite) {
        opt.step(job.sft.lr);
    } else {
        m["skipped_steps"] = 1;
    }
    opt.zero_grad();
    return m;
}

// Step time, throughput and the GPU's allocation peak for a step's metrics (console and metrics.jsonl): built
// before the step (it resets the peak), applied to the step's rank-averaged metrics after it.
class StepMeter {
public:
    explicit StepMeter(c10::Device device) : device_(device), t0_(Clock::now()) {
        if (device_.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index());
    }
    /// seconds (this rank's wall time of the step), tokens_per_s = tokens / seconds (tokens: the global
    /// batch's) and, on a GPU, gpu_peak_mem_gib (this rank's peak of allocated memory during the step).
    void finish(std::map<std::string, double>& m, double tokens) const {
        m["seconds"] = std::chrono::duration<double>(Clock::now() - t0_).count();
        m["tokens_per_s"] = tokens / std::max(1e-9, m["seconds"]);
        if (device_.is_cuda()) {
            m["gpu_peak_mem_gib"] = static_cast<double>(c10::cuda::CUDACachingAllocator::getDeviceStats(device_.index())
                                                            .allocated_bytes[0].peak) / double(1 << 30);
        }
    }
    /// "  1234 tok/s  mem 1.23 GiB" for the console line.
    std::string text(const std::map<std::string, double>& m) const {
        std::string out = absl::StrFormat("  %.0f tok/s", m.at("tokens_per_s"));
        if (device_.is_cuda()) absl::StrAppendFormat(&out, "  mem %.2f GiB", m.at("gpu_peak_mem_gib"));
        return out;
    }

private:
    c10::Device device_;
    Clock::time_point t0_;
};

// A periodic checkpoint after `step`; every_steps 0 means none (only at the end of a stage and on a signal).
bool checkpoint_due(int64_t step, int64_t every_steps) { return every_steps > 0 && step % every_steps == 0; }

std::string eta(double seconds_per_step, int64_t remaining) {
    const int64_t s = static_cast<int64_t>(seconds_per_step * static_cast<double>(remaining));
    return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
}

std::string eval_text(const std::map<std::string, double>& m) {
    std::string text;
    for (const auto& [k, v] : m) {
        if (k.rfind("accuracy/", 0) == 0) absl::StrAppendFormat(&text, " %s %.3f", k.substr(9), v);
    }
    return text;
}

bool uses_dsa_stages(const JobConfig& job) {
    for (const std::string& s : job.run.stages) {
        if (s == "indexer_warmup" || s == "sparse_train") return true;
    }
    return false;
}

// Stages and keys the schema accepts for what later issues build: refused, never silently ignored.
void check_supported(const JobConfig& job) {
    for (const std::string& stage : job.run.stages) {
        if (stage != "sft" && stage != "grpo" && stage != "indexer_warmup" && stage != "sparse_train") {
            throw ConfigError(absl::StrCat("run.stages: stage '", stage, "' cannot run in this build; runnable: sft, ",
                                           "indexer_warmup, sparse_train, grpo"));
        }
    }
    // Keys the schema accepts for what later issues build; refusing them beats silently running otherwise.
    if (job.dist.mode == DistMode::kDisaggregated) {
        throw ConfigError("dist.mode: disaggregated rollout/trainer ranks are not implemented in this build; "
                          "use dist.mode: colocated (every rank rolls out, then trains)");
    }
    if (job.dist.expert_parallel_size != 1) {
        throw ConfigError(absl::StrCat("dist.expert_parallel_size = ", job.dist.expert_parallel_size,
                                       ": expert parallelism is not implemented in this build; use 1 ",
                                       "(every rank holds all experts; ranks are data-parallel)"));
    }
    if (job.model.impl == Impl::kCuda && !dsa::cuda::sparse_mla_available()) {
        throw ConfigError("model.impl: cuda, but this build of dsrl has no CUDA kernels (configure with "
                          "DSRL_WITH_CUDA=ON on a machine with nvcc); use auto or reference");
    }
}

}  // namespace

void check_job(const JobConfig& job) {
    check_supported(job);
    const rewards::Registry& registry = rewards::Registry::global();
    for (const DomainConfig& d : job.domains) {
        rewards::DomainReward::create(registry, d.rewards, job.rewards.timeout_s);
        rewards::make_prompt_source(d.data, d.name, "");
        if (!d.eval_data.empty()) rewards::make_prompt_source(d.eval_data, d.name, "");
    }
    if (!job.sft.data.empty()) rewards::make_prompt_source(job.sft.data, "sft", "");
    if (uses_dsa_stages(job)) make_token_source(job.dsa.data, job.dsa.seq_len, *rollout::make_tokenizer(job.model), "");
}

int run_job(const JobConfig& job, const RunOptions& opt, const dist::Communicator& comm) {
    const int rank = comm.rank();
    check_supported(job);
    fault::check_environment();
    // One job per run directory, held until run_job returns (before MPI_Finalize); stale temporary files of
    // killed writers are removed under it (trainer/run_dir.h).
    const std::string root = job.trainer.checkpoint.dir.empty() ? fs::join(job.run.output_dir, "checkpoints")
                                                                 : job.trainer.checkpoint.dir;
    std::vector<RunDirLock::Dir> lock_dirs{{job.run.output_dir, "run.output_dir"}};
    if (!job.trainer.checkpoint.dir.empty()) lock_dirs.push_back({root, "trainer.checkpoint.dir"});
    const RunDirLock run_lock = RunDirLock::acquire(lock_dirs, job.run.lock_wait_s, job.run.name, comm);
    if (rank == 0 && fs::is_dir(root)) fs::remove_temporaries(root);
    const std::string metrics_path = fs::join(job.run.output_dir, job.trainer.metrics_file);
    if (opt.resume.empty()) {
        prepare_fresh_start(root, {metrics_path, fs::join(job.run.output_dir, "eval.json"),
                                   fs::join(job.run.output_dir, "tb")}, job.run.overwrite, comm);
    }
    if (opt.handle_signals) {
        std::signal(SIGTERM, on_signal);
        std::signal(SIGINT, on_signal);
    }
    const bool cuda = job.run.device == "cuda" || (job.run.device == "auto" && at::hasCUDA());
    // One GPU per process: dist::Bootstrap made the local rank's GPU the current device (cuda:0 for every rank
    // would put all ranks on one GPU, and NCCL refuses tensors off its communicator's device).
    const c10::Device device = cuda ? c10::Device(c10::kCUDA, c10::cuda::current_device()) : c10::Device(c10::kCPU);
    rng::seed_default_generators(static_cast<uint64_t>(job.run.seed), rank);
    // bf16 autocast on CUDA for every forward (rollout, training, evaluation) and its backward.
    const AutocastScope amp(device, job.trainer.autocast);
    // Every rank starts from the same weights (same seed), then stays in sync through averaged gradients.
    dsa::Model policy = job.model.path.empty()
                            ? dsa::Model::random(job.model, rng::derive_seed(job.run.seed, 0, "init"), device)
                            : dsa::Model::load(job.model.path, job.model, device);
    const ModelConfig& mcfg = policy.config();
    bool any_kl = false;
    for (const DomainConfig& d : job.domains) any_kl |= d.beta > 0;
    std::unique_ptr<dsa::Model> reference;
    std::vector<Param> params;
    for (dsa::NamedTensor& t : policy.named_tensors()) {
        if (t.trainable) params.push_back({t.name, t.tensor->requires_grad_(true), decays(t.name, *t.tensor)});
    }
    AdamW optimizer(params, AdamWOptions::from(job.trainer.optimizer));
    const std::unique_ptr<rollout::Tokenizer> tok = rollout::make_tokenizer(mcfg);
    std::vector<DomainRuntime> domains = build_domains(job, "");
    std::vector<SftSource> sft_data = sft_sources(job);
    // The DSA stages' token stream and held-out batches: a synthetic task draws them from another seed; a file
    // keeps its first eval_batches·batch_size·world windows for evaluation and trains on the rest.
    std::unique_ptr<TokenStream> dsa_stream;
    std::vector<TokenBatch> dsa_eval_batches;
    if (uses_dsa_stages(job)) {
        const bool synthetic = job.dsa.data.rfind("synthetic:", 0) == 0;
        auto src = make_token_source(job.dsa.data, job.dsa.seq_len, *tok, "");
        const int64_t held_out = synthetic ? 0 : job.dsa.eval_batches * job.dsa.batch_size * comm.size();
        TokenStream eval_stream(synthetic ? make_token_source(job.dsa.data, job.dsa.seq_len, *tok, "", 1000003) : src,
                                rank, comm.size());
        for (int64_t i = 0; i < job.dsa.eval_batches; ++i) dsa_eval_batches.push_back(eval_stream.next(job.dsa.batch_size));
        dsa_stream = std::make_unique<TokenStream>(src, rank, comm.size(), held_out);
    }

    TrainingState state;
    state.world_size = comm.size();
    state.config_yaml = opt.config_yaml;
    std::string reference_dir;
    if (!opt.resume.empty()) {
        const std::string dir = resolve_resume(root, opt.resume);
        if (!dir.empty()) {
            LoadedCheckpoint ck = load_checkpoint(dir, policy, comm.size(), rank);
            optimizer.load_state(ck.optimizer, int_cursor(ck.state.cursors, "optimizer_steps", 0), dir);
            state = ck.state;
            reference_dir = ck.reference_dir;
            state.config_yaml = opt.config_yaml;
            if (ck.rng_state.numel() > 0) {
                at::Generator gen = at::detail::getDefaultCPUGenerator();
                gen.set_state(ck.rng_state);
            }
            for (DomainRuntime& d : domains) {
                const auto it = state.cursors.find("prompts." + d.name);
                if (it != state.cursors.end()) restore_cursor(*d.sampler, it->second, it->first);
            }
            for (SftSource& src : sft_data) {
                if (const auto it = state.cursors.find(src.name); it != state.cursors.end()) {
                    restore_cursor(*src.sampler, it->second, it->first);
                }
            }
            if (dsa_stream) dsa_stream->restore(int_cursor(state.cursors, "tokens.dsa", 0));
            // Rows the killed job appended after this checkpoint describe steps that are about to run again
            // (bit for bit): drop them, so every step has one row.
            if (rank == 0) truncate_metrics(metrics_path, int_cursor(state.cursors, "metrics_bytes", -1));
        } else if (rank == 0) {
            DSRL_LOG(info) << "no checkpoint under " << root << ": starting fresh";
        }
    }

    MetricsLog metrics(metrics_path,
                       job.trainer.tensorboard ? fs::join(job.run.output_dir, "tb") : "", rank == 0);
    std::unique_ptr<Evaluator> evaluator;
    if (job.trainer.eval_prompts > 0) evaluator = std::make_unique<Evaluator>(job, *tok, "");
    // Evaluation at RL step `step`; the figures before RL are kept in the checkpoint state, so the final
    // before/after summary survives a resume.
    const auto evaluate = [&](int64_t step, const char* when) {
        const auto t0 = Clock::now();
        std::map<std::string, double> m = evaluator->run(policy, &comm);
        m["eval_seconds"] = std::chrono::duration<double>(Clock::now() - t0).count();
        metrics.write("eval", step, m);
        if (rank == 0) {
            std::printf("[eval] %s (step %ld): accuracy%s  (%ld prompts per domain, greedy, %.1fs)\n", when,
                        long(step), eval_text(m).c_str(), long(job.trainer.eval_prompts), m["eval_seconds"]);
            std::fflush(stdout);
        }
        return m;
    };
    const auto checkpoint = [&] {
        for (const DomainRuntime& d : domains) state.cursors["prompts." + d.name] = cursor_of(*d.sampler);
        for (const SftSource& src : sft_data) state.cursors[src.name] = cursor_of(*src.sampler);
        if (dsa_stream) state.cursors["tokens.dsa"] = std::to_string(dsa_stream->cursor());
        state.cursors["optimizer_steps"] = std::to_string(optimizer.steps());
        if (rank == 0) state.cursors["metrics_bytes"] = std::to_string(fs::file_size(metrics_path));
        save_checkpoint(root, policy, optimizer, state, at::detail::getDefaultCPUGenerator().get_state(),
                        job.trainer.checkpoint.keep_last, &comm, reference.get());
    };

    // Rank 0 prints accuracy before -> after RL per domain and writes <output_dir>/eval.json.
    const auto final_summary = [&](const std::map<std::string, double>& after) {
        if (rank != 0) return;
        std::map<std::string, double> before;
        if (const auto it = state.cursors.find("eval_before"); it != state.cursors.end()) {
            for (absl::string_view line : absl::StrSplit(it->second, '\n', absl::SkipEmpty())) {
                const size_t sp = line.rfind(' ');
                double v = 0;
                if (sp != absl::string_view::npos && absl::SimpleAtod(line.substr(sp + 1), &v)) {
                    before[std::string(line.substr(0, sp))] = v;
                }
            }
        }
        Json j;
        std::printf("[eval] accuracy before -> after RL (%ld held-out prompts per domain, greedy):\n",
                    long(job.trainer.eval_prompts));
        for (const auto& [k, v] : after) {
            if (k.rfind("accuracy/", 0) != 0) continue;
            const std::string domain = k.substr(9);
            const auto b = before.find(k);
            j[domain] = {{"before", b != before.end() ? Json(b->second) : Json(nullptr)}, {"after", v}};
            if (b != before.end()) {
                std::printf("[eval]   %-12s %.3f -> %.3f  (%+.3f)\n", domain.c_str(), b->second, v, v - b->second);
            } else {
                std::printf("[eval]   %-12s ? -> %.3f\n", domain.c_str(), v);
            }
        }
        std::fflush(stdout);
        const std::string text = j.dump(2) + "\n";
        fs::write_file_atomic(fs::join(job.run.output_dir, "eval.json"), {text});
    };

    // The DSA stages (SPEC §3): held-out task loss + attention recall at the start and end of each stage.
    const auto dsa_eval = [&](const std::string& stage, bool at_end) {
        if (dsa_eval_batches.empty()) return;
        const auto t0 = Clock::now();
        std::map<std::string, double> m = dsa_evaluate(policy, dsa_eval_batches, job, &comm);
        m["stage_id"] = stage == "indexer_warmup" ? 1 : 2;
        m["at_end"] = at_end ? 1 : 0;
        m["eval_seconds"] = std::chrono::duration<double>(Clock::now() - t0).count();
        metrics.write("dsa_eval", state.job_step(), m);
        if (rank == 0) {
            std::printf("[dsa_eval] %s %s: task_loss dense %.4f sparse %.4f  recall %.3f (best possible %.3f)  "
                        "(k=%ld, %ld batches, %.1fs)\n",
                        stage.c_str(), at_end ? "end" : "start", m["task_loss_dense"], m["task_loss_sparse"],
                        m["recall_mean"], m["recall_oracle_mean"], long(mcfg.index_topk),
                        long(dsa_eval_batches.size()), m["eval_seconds"]);
            std::fflush(stdout);
        }
    };
    // Runs `total` steps of a DSA stage (or the dense_lm pre-phase); false when a signal stopped the job.
    using DsaStep = std::map<std::string, double> (*)(dsa::Model&, AdamW&, const TokenBatch&, const JobConfig&,
                                                      const dist::Communicator*, double);
    const auto run_dsa = [&](const std::string& stage, int64_t total, DsaStep step_fn, bool with_eval) {
        int64_t& done = state.stage_steps[stage];
        if (done >= total) return true;
        if (done == 0) optimizer.reset_state();  // each stage starts with fresh moments and step count
        if (with_eval && done == 0) dsa_eval(stage, false);
        const auto t0 = Clock::now();
        const int64_t first = done;
        while (done < total) {
            fault::kill_point("step_start", state.job_step() + 1, rank);
            const TokenBatch batch = dsa_stream->next(job.dsa.batch_size);
            const StepMeter meter(device);
            std::map<std::string, double> m = reduce_metrics(
                step_fn(policy, optimizer, batch, job, &comm, dsa_lr_factor(job.trainer.optimizer, done, total)), comm);
            meter.finish(m, static_cast<double>(batch.input_ids.numel() * comm.size()));
            ++done;
            state.skipped_steps += static_cast<int64_t>(m.at("skipped_steps"));
            metrics.write(stage, done, m);
            const double per_step =
                std::chrono::duration<double>(Clock::now() - t0).count() / static_cast<double>(done - first);
            if (rank == 0 && (done % job.trainer.log_every == 0 || done == total)) {
                std::string extra;
                if (m.count("lm_loss")) absl::StrAppendFormat(&extra, " (lm %.4f indexer %.4f)", m.at("lm_loss"), m.at("indexer_loss"));
                if (m.count("recall_mean")) absl::StrAppendFormat(&extra, "  recall %.3f", m.at("recall_mean"));
                std::printf("[%s] step %ld/%ld  loss %.4f%s  grad_norm %.3f%s  eta %s\n", stage.c_str(), long(done),
                            long(total), m.at("loss"), extra.c_str(), m.at("grad_norm"), meter.text(m).c_str(),
                            eta(per_step, total - done).c_str());
                std::fflush(stdout);
            }
            if (with_eval && done == total) dsa_eval(stage, true);
            const bool stop = stop_requested(comm);
            if (stop || checkpoint_due(done, job.trainer.checkpoint.every_steps) || done == total) checkpoint();
            if (stop) {
                if (rank == 0) {
                    DSRL_LOG(info) << "stopping after " << stage << " step " << done << " (signal); resume with --resume auto";
                }
                return false;
            }
        }
        return true;
    };

    for (const std::string& stage : job.run.stages) {
        if (stage == "indexer_warmup") {
            // dsa.dense_lm_steps: dense LM training first (a dense-trained model to convert, for experiments).
            if (!run_dsa("dense_lm", job.dsa.dense_lm_steps, &dense_lm_step, false)) return 0;
            if (!run_dsa(stage, job.dsa.warmup_steps, &indexer_warmup_step, true)) return 0;
        } else if (stage == "sparse_train") {
            if (!run_dsa(stage, job.dsa.sparse_steps, &sparse_train_step, true)) return 0;
        } else if (stage == "sft") {
            const auto t0 = Clock::now();
            int64_t& done = state.stage_steps["sft"];
            const int64_t first = done;
            if (done == 0) optimizer.reset_state();  // fresh moments and step count for the stage
            while (done < job.sft.steps) {
                fault::kill_point("step_start", state.job_step() + 1, rank);
                const StepMeter meter(device);
                std::map<std::string, double> m =
                    reduce_metrics(sft_step(policy, optimizer, *tok, sft_data, done, job, comm), comm);
                m["tokens"] *= comm.size();  // the global batch's target tokens (reduce_metrics averages)
                meter.finish(m, m["tokens"]);
                ++done;
                state.skipped_steps += static_cast<int64_t>(m.at("skipped_steps"));
                metrics.write("sft", done, m);
                const double per_step = std::chrono::duration<double>(Clock::now() - t0).count() /
                                        static_cast<double>(done - first);
                if (rank == 0 && (done % job.trainer.log_every == 0 || done == job.sft.steps)) {
                    std::printf("[sft] step %ld/%ld  loss %.4f  grad_norm %.3f%s  eta %s\n", long(done),
                                long(job.sft.steps), m.at("loss"), m.at("grad_norm"), meter.text(m).c_str(),
                                eta(per_step, job.sft.steps - done).c_str());
                    std::fflush(stdout);
                }
                // Checkpoints every N steps and when the stage ends (an SFT-only job keeps its result).
                const bool stop = stop_requested(comm);
                if (stop || checkpoint_due(done, job.trainer.checkpoint.every_steps) || done == job.sft.steps) {
                    checkpoint();
                }
                if (stop) {
                    if (rank == 0) {
                        DSRL_LOG(info) << "stopping after SFT step " << done << " (signal); resume with --resume auto";
                    }
                    return 0;
                }
            }
        } else {  // grpo
            // The KL reference is the policy as the GRPO stage starts (after SFT); checkpoints keep it, so a
            // resumed run uses the same one.
            if (any_kl && !reference) {
                // grpo.ref_on_cpu keeps the frozen reference in host memory (its log-probs are computed there).
                const c10::Device ref_device = job.grpo.ref_on_cpu ? c10::Device(c10::kCPU) : device;
                reference = reference_dir.empty()
                                ? std::make_unique<dsa::Model>(clone_model(policy, ref_device))
                                : std::make_unique<dsa::Model>(dsa::Model::load(reference_dir, job.model, ref_device));
            }
            // Fresh moments and step count: the lr schedule (warm-up, cosine) counts the stage's own optimizer steps.
            if (state.step == 0) optimizer.reset_state();
            RlStep rl(job, policy, reference.get(), *tok, domains, optimizer, &comm);
            const int64_t total = job.trainer.total_steps;
            if (evaluator && state.step == 0 && !state.cursors.count("eval_before")) {
                std::string before;
                for (const auto& [k, v] : evaluate(0, "before RL")) absl::StrAppendFormat(&before, "%s %.17g\n", k, v);
                state.cursors["eval_before"] = before;
            }
            const auto t0 = Clock::now();
            const int64_t first = state.step;
            while (state.step < total) {
                fault::kill_point("step_start", state.job_step() + 1, rank);
                const StepMeter meter(device);
                const RlStepResult r = rl.run(state.step);
                ++state.step;
                state.policy_version = state.step;
                state.skipped_steps += r.skipped_steps;
                std::map<std::string, double> m = reduce_metrics(r.metrics, comm);
                // Counts are totals over the ranks (reduce_metrics averages): tokens and sequences of the global batch.
                m["generated_tokens"] *= comm.size();
                if (m.count("sequences")) m["sequences"] *= comm.size();
                meter.finish(m, m["generated_tokens"]);
                metrics.write("grpo", state.step, m);
                if (rank == 0 && (state.step % job.trainer.log_every == 0 || state.step == total)) {
                    std::string rewards_text;
                    for (const auto& [k, v] : m) {
                        if (k.rfind("reward_mean/", 0) == 0) absl::StrAppendFormat(&rewards_text, " %s %.3f", k.substr(12), v);
                    }
                    const double per_step = std::chrono::duration<double>(Clock::now() - t0).count() /
                                            static_cast<double>(state.step - first);
                    std::printf("[grpo] step %ld/%ld  reward%s  kl %.4f  clip %.3f  masked %.3f%s  eta %s\n",
                                long(state.step), long(total), rewards_text.c_str(), m["kl_mean"], m["clip_frac"],
                                m["masked_seq_frac"], meter.text(m).c_str(), eta(per_step, total - state.step).c_str());
                    std::fflush(stdout);
                }
                if (evaluator && state.step == total) {
                    final_summary(evaluate(state.step, "after RL"));
                } else if (evaluator && job.trainer.eval_every > 0 && state.step % job.trainer.eval_every == 0) {
                    evaluate(state.step, "during RL");
                }
                const bool stop = stop_requested(comm);
                if (stop || checkpoint_due(state.step, job.trainer.checkpoint.every_steps) || state.step == total) checkpoint();
                if (stop) {
                    if (rank == 0) {
                        DSRL_LOG(info) << "stopping after step " << state.step << " (signal); resume with --resume auto";
                    }
                    return 0;
                }
            }
        }
    }
    return 0;
}

}  // namespace dsrl::trainer
