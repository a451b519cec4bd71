#include "trainer/train.h"

#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_split.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <optional>

#include "core/checksum.h"
#include "core/dist/groups.h"
#include "core/error.h"
#include "core/fault.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/precision.h"
#include "core/rng.h"
#include "data/prompts.h"
#include "data/token_data.h"
#include "dsa/hf_checkpoint.h"
#include "dsa/model.h"
#include "dsa/sparse_attention.h"
#include "rewards/reward.h"
#include "rollout/engine.h"
#include "text/tokenizer.h"
#include "trainer/agent_domains.h"
#include "trainer/checkpoint.h"
#include "trainer/moe_balance.h"
#include "trainer/optimizer.h"
#include "trainer/run_dir.h"
#include "trainer/stage_loop.h"
#include "trainer/stages.h"
#include "trainer/tensorboard.h"
#include "trainer/weight_sync.h"

namespace dsrl::trainer {
namespace {

text::ChatChoice chat_choice(const ModelRuntime& m) { return {.format = m.chat_format, .thinking = m.thinking}; }

// Cuts the metrics file back to `bytes` (its size when the checkpoint being resumed was written; 0 when the job
// being resumed left no checkpoint, so every step runs again); -1 (a checkpoint of an older dsrl) or a file
// already that short leave it as it is.
void truncate_metrics(const std::string& path, int64_t bytes) {
    const int64_t size = fs::file_size(path);
    if (bytes >= 0 && size < bytes) {
        // Shorter than when the checkpoint was written: rows were lost (cut or edited outside dsrl). Said, and a torn
        // last row cut back to the last whole one, so the rows appended now start on a line of their own.
        const std::string text = size > 0 ? fs::read_file(path) : std::string();
        const size_t whole = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
        DSRL_LOG(warn) << path << ": " << size << " bytes, shorter than the " << bytes
                       << " it had when the checkpoint was written; rows of steps before the checkpoint are missing"
                       << (whole < text.size() ? " (a torn last row dropped)" : "");
        if (whole < text.size()) fs::truncate_file(path, static_cast<int64_t>(whole));
        return;
    }
    if (bytes < 0 || size <= bytes) return;
    DSRL_LOG(warn) << path << ": dropping " << size - bytes << " bytes of rows written after the checkpoint "
                   << "(the steps run again from it)";
    fs::truncate_file(path, bytes);
}

// The TensorBoard side of truncate_metrics: event records written after the checkpoint are cut (or their files
// removed), so a resumed curve has one point per step instead of a second pass over the rerun steps.
void cut_tensorboard(const std::string& tb_dir, const std::string& cursor) {
    const int64_t dropped = trainer::restore_tensorboard(tb_dir, cursor);
    if (dropped > 0) {
        DSRL_LOG(warn) << tb_dir << ": dropping " << dropped << " bytes of TensorBoard events written after the "
                       << "checkpoint (the steps run again from it)";
    }
}

// Stages and keys the schema accepts for what later issues build: refused, never silently ignored.
void check_supported(const JobConfig& job) {
    // (Here, not in the config's rules: dsrl_tool generate reads the same config with a group of one.)
    const bool grpo = has_stage(job, "grpo");
    if (grpo && job.rollout.group_size < 2) {
        throw ConfigError(absl::StrCat(
            "rollout.group_size: GRPO needs at least 2 samples per prompt (its advantages are relative to the group's "
            "mean: a group of one has none, so every step would train nothing), got ",
            job.rollout.group_size));
    }
    // Greedy sampling (temperature 0, or top_k 1) gives a group's samples the same tokens: every advantage is 0 and
    // GRPO would run its steps learning nothing, silently. (Evaluation decodes greedily by itself.)
    const rollout::SamplingParams& sp = job.rollout.sampling;
    if (grpo && (sp.greedy() || sp.top_k == 1)) {
        throw ConfigError(absl::StrCat(
            sp.greedy() ? "rollout.temperature: 0 (greedy)" : "rollout.top_k: 1 (greedy)",
            " gives every sample of a group the same tokens, so GRPO's group-relative advantages are all 0 and no step "
            "would learn anything; sample (temperature > 0, top_k 0 or > 1) — held-out evaluation is greedy anyway"));
    }
    for (const std::string& stage : job.run.stages) {
        if (stage != "sft" && stage != "grpo" && stage != "indexer_warmup" && stage != "sparse_train") {
            throw ConfigError(absl::StrCat("run.stages: stage '", stage, "' cannot run in this build; runnable: sft, ",
                                           "indexer_warmup, sparse_train, grpo"));
        }
    }
    // Disaggregated RL (issue 22): a GRPO job, synchronous (max_policy_lag 0) or pipelined (L >= 1), on trainer ranks
    // with any expert parallelism and ZeRO stage; the rest is refused, never silently run otherwise.
    if (job.dist.mode == DistMode::kDisaggregated) {
        if (job.dist.rollout_ranks < 1) {
            throw ConfigError(
                "dist.rollout_ranks: dist.mode disaggregated needs at least one rollout rank (the last "
                "rollout_ranks ranks generate, the others train)");
        }
        if (job.run.stages != std::vector<std::string>{"grpo"}) {
            throw ConfigError(
                "run.stages: dist.mode disaggregated runs a GRPO job: run.stages must be [grpo] (run "
                "SFT or the DSA stages as a colocated job first, then start from its checkpoint)");
        }
    }
    if (job.model.impl == Impl::kCuda && !built_with_cuda()) {
        throw ConfigError(
            "model.impl: cuda, but this build of dsrl has no CUDA kernels (configure with "
            "DSRL_WITH_CUDA=ON on a machine with nvcc); use auto or reference");
    }
}

}  // namespace

void check_same_job(const std::string& config_yaml, const dist::Communicator& comm) {
    if (comm.size() <= 1) return;
    // Each node of a multi-node job may read its own copy of the config (and its own --set): one job needs one
    // configuration. Checksums first (a few bytes per rank); the texts only to say where they differ.
    const std::string mine = std::to_string(crc32c(config_yaml.data(), config_yaml.size()));
    const std::vector<std::string> sums = comm.all_gather_bytes(mine);
    int other = -1;
    for (int r = 1; r < static_cast<int>(sums.size()) && other < 0; ++r) {
        if (sums[static_cast<size_t>(r)] != sums[0]) other = r;
    }
    if (other < 0) return;
    std::string theirs = config_yaml;
    comm.broadcast_bytes(theirs, other);
    std::string ours = config_yaml;
    comm.broadcast_bytes(ours, 0);
    const std::vector<std::string> a = absl::StrSplit(ours, '\n'), b = absl::StrSplit(theirs, '\n');
    size_t line = 0;
    while (line < a.size() && line < b.size() && a[line] == b[line]) ++line;
    throw ConfigError(
        absl::StrCat("rank ", other,
                     " runs another configuration than rank 0 (each rank must load the same config file and --set "
                     "options); the resolved configurations first differ at line ",
                     line + 1, ": rank 0 '", line < a.size() ? a[line] : "", "', rank ", other, " '",
                     line < b.size() ? b[line] : "", "'"));
}

namespace {

// A CPU job whose weights alone — one copy per rank in model.dtype, the routed experts split over
// dist.expert_parallel_size, times the ranks the launcher put on this machine — or whose given rollout cache pool
// exceeds the machine's memory cannot run: it would die in the kernel's OOM killer or in a bare std::bad_alloc, with no
// word of why. Said here, naming the keys. (Training needs more — gradients, Adam's two moments, the reference model —
// so this only refuses what is certain to fail; rollout workers holding every expert are counted as trainer ranks.)
void check_fits_memory(const JobConfig& job, const ModelArch& arch) {
    const bool cuda = job.run.device == "cuda" || (job.run.device == "auto" && at::hasCUDA());
    const int64_t limit = fs::memory_limit_bytes();
    if (cuda || limit <= 0) return;
    const double total = static_cast<double>(dsa::count_parameters(arch).total);
    const int64_t moe_layers =
        std::max<int64_t>(0, arch.num_hidden_layers - std::min(arch.first_k_dense_replace, arch.num_hidden_layers));
    const double routed = static_cast<double>(arch.n_routed_experts) * 3.0 * static_cast<double>(arch.hidden_size) *
                          static_cast<double>(arch.moe_intermediate_size) * static_cast<double>(moe_layers);
    const double ep = static_cast<double>(std::max<int64_t>(1, job.dist.expert_parallel_size));
    const double per_rank = std::max(0.0, total - routed) + std::min(routed, total) / ep;
    const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    const double ranks = local != nullptr && std::atoi(local) > 0 ? std::atoi(local) : 1;
    ModelConfig sized = job.model;  // the runtime's dtype, the checkpoint's architecture
    static_cast<ModelArch&>(sized) = arch;
    const auto element = static_cast<double>(c10::elementSize(dsa::model_dtype(sized)));
    const double bytes = per_rank * element * ranks;
    const auto gib = [](double b) { return absl::StrFormat("%.1f GiB", b / (1024.0 * 1024.0 * 1024.0)); };
    // The rollout's cache pool where its size is given, found before the stages before GRPO run.
    if (job.rollout.engine.cache_blocks > 0) {
        rollout::check_cache_pool_fits(job.rollout.engine.cache_blocks, job.rollout.engine.block_size,
                                       dsa::cache_bytes_per_token(sized), limit, "this machine's memory");
    }
    if (bytes <= static_cast<double>(limit)) return;
    throw ConfigError(absl::StrCat(
        "model: the weights alone need ", gib(bytes), " (", absl::StrFormat("%.3g", total), " parameters",
        ep > 1 ? absl::StrCat(", the routed experts over ", static_cast<int64_t>(ep), " expert-parallel ranks") : "",
        ", ", static_cast<int64_t>(ranks), " rank(s) on this machine, ",
        job.model.dtype == DType::kBFloat16 ? "bfloat16" : "float32", "), more than this machine's ", gib(limit),
        " of memory; training needs several times that. Lower model.hidden_size, model.num_hidden_layers, "
        "model.n_routed_experts, model.moe_intermediate_size or model.vocab_size",
        job.model.path.empty() ? "" : " (here: model.path's config.json)",
        ", raise dist.expert_parallel_size, or run on GPUs (run.device)"));
}

// A data file's prompt that fills the model's context leaves no room to generate: the rollout refuses it — after the
// stages before GRPO (hours of SFT, perhaps) have run. Found here instead, naming the file and the item. Synthetic
// sources (infinite) are left to the rollout.
void check_prompt_lengths(const data::PromptSource& source,
                          const text::Tokenizer& tokenizer,
                          const ModelArch& arch,
                          const std::string& key) {
    for (int64_t i = 0; i < source.size(); ++i) {
        const data::PromptItem item = source.get(i);
        const auto n = static_cast<int64_t>(data::prompt_ids(tokenizer, item, source.name()).size());
        if (n >= arch.max_position_embeddings) {
            throw DataError(absl::StrCat(key, ": ", source.name(), ": prompt ", item.id, " has ", n,
                                         " tokens in the chat format; the model's context (max_position_embeddings) "
                                         "is ",
                                         arch.max_position_embeddings, ", which leaves no room for a response"));
        }
    }
}

// After a resume on another world size: the per-rank sizes whose global batch (× the ranks) is not the checkpoint's,
// each with the value that keeps it. The checkpoint's own config says what it was; one of an older schema gives no
// hint.
void warn_global_batch(const std::string& saved_yaml, int saved_world, const JobConfig& job, int world) {
    JobConfig saved;
    try {
        config::Document::from_string(saved_yaml, "the checkpoint's config").read_into(saved, job_config_paths());
    } catch (const Error&) {
        return;
    }
    const auto hint = [&](const char* key, int64_t saved_per_rank, int64_t per_rank) {
        const int64_t before = saved_per_rank * saved_world, now = per_rank * world;
        if (before == now) return;
        const std::string keep = before % world == 0
                                     ? absl::StrCat(": --set ", key, "=", before / world, " keeps it")
                                     : absl::StrCat(" (no per-rank value on ", world, " ranks keeps it)");
        DSRL_LOG(warn) << "the global batch changes with the world size: " << key << " " << saved_per_rank << " x "
                       << saved_world << " ranks = " << before << " in the checkpoint's job, " << per_rank << " x "
                       << world << " = " << now << " now" << keep;
    };
    hint("rollout.prompts_per_step", saved.rollout.prompts_per_step, job.rollout.prompts_per_step);
    hint("trainer.micro_batch_size", saved.trainer.micro_batch_size, job.trainer.micro_batch_size);
    if (uses_dsa_stages(job)) hint("dsa.batch_size", saved.dsa.batch_size, job.dsa.batch_size);
}

}  // namespace

void check_job(const JobConfig& job) {
    check_supported(job);
    // The checkpoint's config.json and safetensors headers (cheap: nothing is read but the headers), and the
    // tokenizer the job will use (its vocabulary against model.vocab_size): errors --check should report too.
    ModelArch arch = job.model;  // a checkpoint's own config.json decides its architecture
    if (!job.model.path.empty()) {
        try {
            arch = dsa::HfCheckpointReader::open(job.model.path).arch();
        } catch (const CheckpointError& e) {
            throw CheckpointError(absl::StrCat("model.path: ", e.what()));
        }
    }
    const int64_t vocab_size = arch.vocab_size;
    check_fits_memory(job, arch);
    const auto tokenizer = text::make_tokenizer(job.model.path, vocab_size, chat_choice(job.model));
    const rewards::Registry& registry = rewards::Registry::global();
    bool agents = false;
    for (const DomainConfig& d : job.domains) {
        const data::Rows rows = d.environment.enabled() ? data::Rows::kTasks : data::Rows::kPrompts;
        if (!d.environment.enabled() && d.rewards.empty()) {
            throw ConfigError(absl::StrCat("domains[", d.name,
                                           "].rewards: a domain needs at least one reward module (or an environment)"));
        }
        if (!d.environment.enabled()) rewards::DomainReward::create(registry, d.rewards, job.rewards.timeout_s);
        agents |= d.environment.enabled();
        const auto prompts = data::make_prompt_source(d.data, d.name, "", rows);
        if (rows == data::Rows::kPrompts)
            check_prompt_lengths(*prompts, *tokenizer, arch, "domains[" + d.name + "].data");
        if (!d.eval_data.empty()) {
            const auto held_out = data::make_prompt_source(d.eval_data, d.name, "", rows);
            if (rows == data::Rows::kPrompts) {
                check_prompt_lengths(*held_out, *tokenizer, arch, "domains[" + d.name + "].eval_data");
            }
        }
    }
    if (agents) {
        AgentEnvironments::build(job);  // modules known, plugins load
        rollout::parse_context_strategy(job.rollout.context);
        text::ChatOptions options;
        if (tokenizer->chat_format(&options) == nullptr) {
            throw ConfigError(
                "domains[].environment: agent domains need a chat format that shows tool calls; the byte-level "
                "template cannot (set model.chat_format: deepseek_v32)");
        }
    }
    if (!job.sft.data.empty()) data::make_prompt_source(job.sft.data, "sft", "", data::Rows::kConversations);
    if (uses_dsa_stages(job)) data::make_token_source(job.dsa.data, job.dsa.seq_len, *tokenizer, "");
}

at::ScalarType save_scalar_type(SaveDType d) {
    switch (d) {
        case SaveDType::kFloat32:
            return at::kFloat;
        case SaveDType::kFloat8:
            return at::kFloat8_e4m3fn;
        case SaveDType::kBFloat16:
            break;
    }
    return at::kBFloat16;
}

int run_job(const JobConfig& job, const RunOptions& opt, const dist::Communicator& comm) {
    const int rank = comm.rank();
    check_supported(job);
    check_same_job(opt.config_yaml, comm);
    fault::check_environment();
    const bool grpo = has_stage(job, "grpo");
    if (rank == 0 && grpo && job.grpo.mini_batches > job.rollout.prompts_per_step) {
        DSRL_LOG(warn) << "grpo.mini_batches " << job.grpo.mini_batches << " > rollout.prompts_per_step "
                       << job.rollout.prompts_per_step << ": a mini-batch holds whole groups, so each pass makes "
                       << job.rollout.prompts_per_step << " optimizer steps (the learning-rate schedule counts those)";
    }
    // One job per run directory, held until run_job returns (before MPI_Finalize); stale temporary files of
    // killed writers are removed under it (trainer/run_dir.h).
    const std::string root =
        job.trainer.checkpoint.dir.empty() ? fs::join(job.run.output_dir, "checkpoints") : job.trainer.checkpoint.dir;
    std::vector<RunDirLock::Dir> lock_dirs{{job.run.output_dir, "run.output_dir"}};
    if (!job.trainer.checkpoint.dir.empty()) lock_dirs.push_back({root, "trainer.checkpoint.dir"});
    const RunDirLock run_lock = RunDirLock::acquire(lock_dirs, job.run.lock_wait_s, job.run.name, comm);
    if (rank == 0 && fs::is_dir(root)) fs::remove_temporaries(root);
    // A killed export leaves <output_dir>/.final.tmp-XXXXXX.
    if (rank == 0 && fs::is_dir(job.run.output_dir)) fs::remove_temporaries(job.run.output_dir);
    const std::string metrics_path = fs::join(job.run.output_dir, job.trainer.metrics_file);
    const std::string tb_dir = fs::join(job.run.output_dir, "tb");
    if (opt.resume.empty()) {
        prepare_fresh_start(root,
                            {metrics_path, fs::join(job.run.output_dir, "eval.json"),
                             fs::join(job.run.output_dir, "tb"), fs::join(job.run.output_dir, kFinalModelDir)},
                            job.run.overwrite, comm);
    }
    if (opt.handle_signals) install_stop_handlers();
    const bool cuda = job.run.device == "cuda" || (job.run.device == "auto" && at::hasCUDA());
    // One GPU per process: dist::Bootstrap made the local rank's GPU the current device (cuda:0 for every rank
    // would put all ranks on one GPU, and NCCL refuses tensors off its communicator's device).
    const c10::Device device = cuda ? c10::Device(c10::kCUDA, c10::cuda::current_device()) : c10::Device(c10::kCPU);
    rng::seed_default_generators(static_cast<uint64_t>(job.run.seed), rank);
    // bf16 autocast on CUDA for every forward (rollout, training, evaluation) and its backward.
    const AutocastScope amp(device, job.trainer.autocast);
    // Roles: colocated, all ranks do everything; disaggregated, ranks [0, T) train and [T, world) roll out.
    Roles roles{.trainers = comm.size(), .group = &comm};
    std::optional<dist::Communicator> role_group;
    if (job.dist.mode == DistMode::kDisaggregated) {
        const int64_t r = job.dist.rollout_ranks;
        if (r >= comm.size()) {
            throw ConfigError(absl::StrCat("dist.rollout_ranks: ", r,
                                           " rollout ranks leave no trainer rank in a job of ", comm.size(),
                                           " ranks (rollout_ranks must be below the world size)"));
        }
        roles.disaggregated = true;
        roles.trainers = comm.size() - static_cast<int>(r);
        roles.rollout_workers = static_cast<int>(r);
        roles.rollout = rank >= roles.trainers;
        role_group.emplace(comm.split(roles.rollout ? "rollout" : "trainers", roles.rollout ? 1 : 0, rank));
        roles.group = &*role_group;
        if (rank == 0) {
            DSRL_LOG(info) << "disaggregated: ranks 0-" << roles.trainers - 1 << " train, ranks " << roles.trainers
                           << "-" << comm.size() - 1 << " roll out (max_policy_lag " << job.dist.max_policy_lag << ")";
        }
    }
    // Expert parallelism over the trainer ranks (groups: core/dist/groups.h, laid out over ranks [0, T) when
    // disaggregated; a ConfigError naming dist.expert_parallel_size when it does not divide T, before the model loads).
    // Each trainer keeps its share of the routed experts. A rollout worker is in no expert-parallel group: it holds
    // every expert and receives the trainers' slices after each step.
    const bool expert_parallel = job.dist.expert_parallel_size > 1;
    const dist::StandardGroups groups =
        expert_parallel ? dist::make_standard_groups(comm, job.dist) : dist::StandardGroups{};
    // Every rank starts from the same weights (same seed), then stays in sync through averaged gradients (the
    // trainers) and the trainers' weights after every RL step (a disaggregated job's rollout workers).
    dsa::Model policy = job.model.path.empty()
                            ? dsa::Model::random(job.model, rng::derive_seed(job.run.seed, 0, "init"), device)
                            : dsa::Model::load(job.model.path, job.model, device);
    if (expert_parallel && !roles.rollout) policy.set_expert_parallel({.group = &groups.ep});
    // Disaggregated: the trainers' weights to the rollout workers after each RL step (collective: built on every rank).
    std::optional<WeightSync> weight_sync;
    if (roles.disaggregated) {
        weight_sync.emplace(comm, roles.trainers, job.dist.expert_parallel_size);
        roles.weights = &*weight_sync;
    }
    // A rollout worker's optimizer has no parameters: it is never stepped, holds no moments, joins no trainer
    // collective and writes no optimizer state.
    std::vector<Param> params;
    for (dsa::NamedTensor& t : policy.named_tensors()) {
        if (t.trainable && !roles.rollout)
            params.push_back({t.name, t.tensor->requires_grad_(true), decays(t.name, *t.tensor)});
    }
    // The optimizer averages over this rank's role group: the trainers.
    ShardOptions shard{.comm = roles.group, .zero_stage = job.trainer.zero_stage};
    if (expert_parallel && !roles.rollout) {
        shard.is_expert = dsa::is_routed_experts;
        shard.expert_comm = &groups.dp;
        shard.ep_comm = &groups.ep;
    }
    AdamW optimizer(params, job.trainer.optimizer.adamw, shard);
    const std::unique_ptr<text::Tokenizer> tok =
        text::make_tokenizer(policy.config().path, policy.config().vocab_size, chat_choice(policy.config()));
    TrainingState state;
    state.world_size = comm.size();
    state.rollout_ranks = roles.disaggregated ? roles.rollout_workers : 0;
    state.config_yaml = opt.config_yaml;
    JobContext ctx{job, comm, device, policy, optimizer, state};
    ctx.roles = roles;
    ctx.dump_rollouts = opt.dump_rollouts;
    // The routing-bias update and expert-load metrics after every optimizer step of every stage.
    ExpertBalance expert_balance(policy, job.moe, *roles.group);
    optimizer.set_after_step([&expert_balance] { expert_balance.after_step(); });
    ctx.expert_balance = &expert_balance;
    std::vector<std::unique_ptr<Stage>> stages = make_stages(ctx, *tok);

    if (!opt.resume.empty()) {
        const std::string dir = resolve_resume(root, opt.resume, &comm);
        if (!dir.empty()) {
            LoadedCheckpoint ck = load_checkpoint(dir, policy, comm.size(), rank, state.rollout_ranks);
            optimizer.load_state(ck.optimizer, int_cursor(ck.state.cursors, "optimizer_steps", 0), dir);
            const int world = state.world_size, rollout_ranks = state.rollout_ranks;
            state = ck.state;
            state.resumed_world_size = ck.state.world_size;
            state.world_size = world;  // resharded: this job's layout from now on
            state.rollout_ranks = rollout_ranks;
            state.config_yaml = opt.config_yaml;
            if (rank == 0 && state.resumed_world_size != state.world_size) {
                warn_global_batch(ck.state.config_yaml, state.resumed_world_size, job, state.world_size);
            }
            ctx.reference_dir = ck.reference_dir;
            if (ck.rng_state.numel() > 0) {
                at::Generator gen = at::detail::getDefaultCPUGenerator();
                gen.set_state(ck.rng_state);
            }
            for (const auto& s : stages) s->restore_cursors(state.cursors);
            // Rows the killed job appended after this checkpoint describe steps that are about to run again
            // (bit for bit): drop them, so every step has one row.
            if (rank == 0) {
                truncate_metrics(metrics_path, int_cursor(state.cursors, "metrics_bytes", -1));
                const auto tb = state.cursors.find("tensorboard");  // absent: a checkpoint of an older dsrl
                if (tb != state.cursors.end()) cut_tensorboard(tb_dir, tb->second);
            }
        } else if (rank == 0) {
            DSRL_LOG(info) << "no checkpoint under " << root << ": starting fresh";
            truncate_metrics(metrics_path, 0);  // the resumed job's rows before its first checkpoint run again
            cut_tensorboard(tb_dir, "");
        }
    }

    MetricsLog metrics(metrics_path, job.trainer.tensorboard ? tb_dir : "", rank == 0);
    ctx.metrics = &metrics;
    // A checkpoint of the whole job: every stage's data cursors, whichever stage is running.
    ctx.checkpoint = [&] {
        for (const auto& s : stages) s->save_cursors(state.cursors);
        state.cursors["optimizer_steps"] = std::to_string(optimizer.steps());
        if (rank == 0) {
            state.cursors["metrics_bytes"] = std::to_string(fs::file_size(metrics_path));
            state.cursors["tensorboard"] = tensorboard_cursor(tb_dir);
        }
        save_checkpoint(root, policy, optimizer, state, at::detail::getDefaultCPUGenerator().get_state(),
                        job.trainer.checkpoint.keep_last, &comm, ctx.reference.get(), /*trains=*/!roles.rollout);
    };
    for (const auto& stage : stages) {
        if (!run_stage(*stage, ctx)) return 0;  // stopped by a signal, checkpointed
    }
    // The trained policy for other tools, at trainer.checkpoint.save_dtype (under expert parallelism each rank of
    // rank 0's group writes its own experts).
    const std::string final_dir = fs::join(job.run.output_dir, kFinalModelDir);
    check_finite_weights(policy, !roles.rollout, &comm, absl::StrCat("the trained policy to ", final_dir));
    policy.save_distributed(final_dir, {.dtype = save_scalar_type(job.trainer.checkpoint.save_dtype)}, rank == 0);
    if (rank == 0) {
        DSRL_LOG(info) << "exported the trained policy to " << final_dir;
    }
    return 0;
}

}  // namespace dsrl::trainer
