// dsrl_bench_rollout: rollout throughput.
//
// With --model DIR (a Hugging Face checkpoint; `dsrl_tool init --config configs/single_gpu.yaml --out DIR` writes the
// single_gpu.yaml model), side by side in one run on the same checkpoint, prompts and sampling settings: dsrl's
// continuous engine, its static engine (the reference) and Hugging Face generate() (transformers, run through
// bench/hf_generate.py) in generated tokens/s at each batch size, and the continuous engine's fraction of the
// memory-bandwidth bound (bytes of weights and cache one decode step reads ÷ the device's measured copy bandwidth).
//
//   build/bin/dsrl_bench_rollout --model DIR [--device cuda] [--batches 1,64,256] [--prompt-len 64]
//                                [--new-tokens 128] [--top-p 0.95] [--python python3] [--hf 1] [--group 1]
//                                [--profile B [--profile-graphs 0] [--profile-host 0] [--trace FILE] [--compare 0]]
//
// --profile B then runs the continuous engine once at batch B under PyTorch's profiler and prints where a decode
// step's time goes: on CUDA every kernel, copy and memset by name (launched one by one: the H100's CUPTI does not trace
// the kernels of a CUDA-graph replay; --profile-graphs 1 replays and shows only the copies around it; with
// --profile-buckets 1 the kernels launched are those of the padded step the graphs replay), on the CPU
// every ATen op
// by self time, with calls and microseconds per decode step. --trace writes the profile as a Chrome/Perfetto trace;
// --compare 0 skips the table. --profile-prefill 1 profiles the prefill forwards instead of the decode steps.
// --reference 1 loads the model with model.impl reference: none of dsrl's kernels, the ATen ops they replace (a
// baseline for them in the same run). --baselines 0 runs only the continuous engine (e.g. under an external profiler).
// On CUDA each batch also prints the decode steps' device time (CUDA events) and, from an extra run with --probe N
// (default 20; 0 skips), the largest graph's time per replay back to back, a window's whole step (nothing runs between
// replays).
// --autocast 1 (CUDA) keeps the weights fp32 under bf16 autocast, as a training job's rollout runs them (HF generate()
// still runs bf16 weights), and --cast-once 0 turns rollout.cast_weights_once off.
//
// Without --model: decode throughput of batched generation with records (batch 1 / 8 / 32, ratio against batch 1
// in the same process) and the bytes per token of each recorded field — kept set (keep-sampling-mask), routing
// path (keep-routing) and DSA key sets (keep-indexer, against 4 bytes per key raw) — at top_p 0.95 and 1.0.
//
//   build/bin/dsrl_bench_rollout [--device cpu|cuda] [--new-tokens 64] [--vocab 4096] [--scale 0.3] [--index-topk 8]
//
// The model is then the embedded default architecture (3 layers, 2 MoE, 8 experts, top-2) with a larger vocabulary
// and random weights scaled by --scale so the next-token distributions are peaked rather than uniform.
// Figures, not pass/fail.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "bench/op_profile.h"
#include "core/error.h"
#include "core/main_guard.h"
#include "core/precision.h"
#include "core/rng.h"
#include "dsa/weights.h"
#include "rollout/engine.h"
#include "rollout/generator.h"

namespace {

struct Result {
    double tok_per_s = 0;
    double kept_bytes = 0, route_bytes = 0, kept_size = 0, indexer_bytes = 0, indexer_raw = 0;
    int64_t tokens = 0, all_tokens = 0;
};

Result run_once(
    const dsrl::dsa::Model& m, const dsrl::text::Tokenizer& tok, int64_t batch, int64_t new_tokens, double top_p) {
    std::vector<dsrl::rollout::GenerationRequest> reqs;
    at::Generator gen = dsrl::rng::make_cpu_generator(batch);
    for (int64_t i = 0; i < batch; ++i) {
        std::vector<int32_t> prompt = {static_cast<int32_t>(tok.bos_id())};
        for (int j = 0; j < 31; ++j) prompt.push_back(static_cast<int32_t>(16 + (i * 31 + j * 7) % 256));
        reqs.push_back({"bench", i, 0, dsrl::rollout::sample_seed(1, i, 0), prompt});
    }
    dsrl::rollout::GenerateOptions opt{.sampling = {.temperature = 1.0, .top_p = top_p},
                                       .max_new_tokens = new_tokens,
                                       .max_batch_size = batch,
                                       .record_indexer = true};
    dsrl::rollout::GenerationStats stats;
    const auto samples = dsrl::rollout::generate(m, tok, reqs, opt, &stats);
    Result r;
    r.tok_per_s = stats.generated_tokens / std::max(stats.decode_seconds + stats.prefill_seconds, 1e-9);
    for (const auto& s : samples) {
        for (const auto& k : s.kept) {
            r.kept_bytes += static_cast<double>(k.bytes().size());
            r.kept_size += static_cast<double>(k.size());
        }
        r.route_bytes += static_cast<double>(s.routes.size());
        r.indexer_bytes += static_cast<double>(s.indexer_bytes());
        // Raw: every sparse-regime position's k keys as int32, per layer.
        r.indexer_raw += static_cast<double>(s.indexer.size()) *
                         static_cast<double>(std::max<int64_t>(0, s.num_tokens() - s.indexer_topk)) * s.indexer_topk *
                         4;
        r.tokens += static_cast<int64_t>(s.response.size());
        r.all_tokens += s.num_tokens();
    }
    return r;
}

// Bytes one decode step of `batch` rows at mean context `context` reads: every dense weight, the experts the batch
// routes to (expected distinct experts of batch · k uniform draws), and per row and layer the indexer keys of every
// position plus the selected MLA entries.
double decode_step_bytes(const dsrl::dsa::Model& m, int64_t batch, double context) {
    const dsrl::ModelConfig& c = m.config();
    double dense = 0, experts = 0;
    dsrl::dsa::ModelWeights w = m.weights();  // tensor handles, for the named list
    for (const auto& t : dsrl::dsa::named_tensors(w, c)) {
        const double bytes = static_cast<double>(t.tensor->numel() * t.tensor->element_size());
        (dsrl::dsa::is_routed_experts(t.name) ? experts : dense) += bytes;
    }
    const double e = static_cast<double>(c.n_routed_experts), k = static_cast<double>(c.num_experts_per_tok);
    const double hit = e > 0 ? (1.0 - std::pow(1.0 - k / e, static_cast<double>(batch))) : 0.0;
    const double elem =
        static_cast<double>(m.cache_bytes_per_token()) /
        static_cast<double>(c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim + c.index_head_dim));
    const double per_row = static_cast<double>(c.num_hidden_layers) *
                           (context * static_cast<double>(c.index_head_dim) +
                            std::min(context, static_cast<double>(c.index_topk)) *
                                static_cast<double>(c.kv_lora_rank + c.qk_rope_head_dim)) *
                           elem;
    return dense + experts * hit + static_cast<double>(batch) * per_row;
}

// Device-to-device copy bandwidth (read + write bytes per second) of a 512 MiB buffer.
double copy_bandwidth(const c10::Device& device) {
    const int64_t n = int64_t{512} << 20;
    const at::Tensor src = at::empty({n}, at::TensorOptions().dtype(at::kByte).device(device)).fill_(1);
    at::Tensor dst = at::empty_like(src);
    dst.copy_(src);
    dsrl::bench::sync_device(device);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; ++i) dst.copy_(src);
    dsrl::bench::sync_device(device);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return 2.0 * 10.0 * static_cast<double>(n) / secs;
}

struct ProfileRequest {
    bool autocast = false;          // fp32 weights under bf16 autocast (a training job's rollout)
    bool cast_weights_once = true;  // rollout.cast_weights_once
    bool absorb = true;             // rollout.absorb_projections
    int64_t batch = 0;              // 0: no profile
    bool graphs = true;
    bool buckets = false;  // graphs off: the bucketed step (the graphs' shapes), eagerly
    bool compare = true;
    bool host = false;       // the CPU ops on CUDA too
    bool prefill = false;    // the prefill forwards instead of the decode steps
    bool reference = false;  // model.impl reference: no dsrl kernels (the ATen ops they replace)
    bool baselines = true;   // the table's no-graph and static columns (0: the continuous engine alone)
    int64_t probe = 20;      // CUDA graphs: back-to-back replays timed per bucket in an extra run (0: none)
    std::string trace;
    int top = 25;
};

struct Timed {
    double tok_per_s = 0;
    dsrl::rollout::GenerationStats stats;
};

Timed time_engine(const dsrl::dsa::Model& m,
                  const dsrl::text::Tokenizer& tok,
                  const std::vector<dsrl::rollout::GenerationRequest>& reqs,
                  dsrl::rollout::GenerateOptions opt) {
    Timed t;
    dsrl::bench::sync_device(m.device());
    const auto t0 = std::chrono::steady_clock::now();
    (void)dsrl::rollout::generate(m, tok, reqs, opt, &t.stats);
    dsrl::bench::sync_device(m.device());
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    t.tok_per_s = static_cast<double>(t.stats.generated_tokens) / secs;
    return t;
}

int compare(const std::string& model_dir,
            const std::string& device_name,
            const std::vector<int64_t>& batches,
            int64_t prompt_len,
            int64_t new_tokens,
            double top_p,
            const std::string& python,
            bool hf,
            const std::string& hf_script,
            int64_t group,
            const ProfileRequest& profile) {
    const c10::Device device(device_name);
    dsrl::ModelRuntime run;
    // As dsrl_train runs a job with fp32 master weights and trainer.autocast: fp32 weights, bf16 autocast on CUDA.
    run.dtype = device.is_cuda() && !profile.autocast ? dsrl::DType::kBFloat16 : dsrl::DType::kFloat32;
    run.impl = profile.reference ? dsrl::Impl::kReference : dsrl::Impl::kAuto;
    const dsrl::AutocastScope amp(device, profile.autocast);
    const dsrl::dsa::Model m = dsrl::dsa::Model::load(model_dir, run, device);
    const dsrl::ModelConfig& c = m.config();
    const auto tok = dsrl::text::make_tokenizer(model_dir, c.vocab_size);
    const int64_t most = *std::max_element(batches.begin(), batches.end());
    // The same prompts for every engine: printable bytes (plain text for any tokenizer's ids below 127 too).
    std::vector<std::vector<int32_t>> prompts;
    for (int64_t b = 0; b < most; ++b) {
        std::vector<int32_t> ids;
        for (int64_t t = 0; t < prompt_len; ++t) ids.push_back(static_cast<int32_t>(32 + (b * 37 + t * 11) % 95));
        prompts.push_back(ids);
    }
    const std::string prompts_path = absl::StrCat("/tmp/dsrl_bench_rollout_prompts_", getpid(), ".json");
    {
        std::ofstream f(prompts_path);
        f << "[";
        for (size_t b = 0; b < prompts.size(); ++b) {
            f << (b ? ",[" : "[");
            for (size_t t = 0; t < prompts[b].size(); ++t) f << (t ? "," : "") << prompts[b][t];
            f << "]";
        }
        f << "]";
    }
    // `batch` sequences: batch / group prompts with `group` samples each (a GRPO group shares its prompt).
    auto requests = [&](int64_t batch) {
        std::vector<dsrl::rollout::GenerationRequest> reqs;
        for (int64_t b = 0; b < batch; ++b) {
            const int64_t p = b / group;
            const auto g = static_cast<int32_t>(b % group);
            reqs.push_back({"bench", p, g, dsrl::rollout::sample_seed(1, p, g), prompts[p]});
        }
        return reqs;
    };
    const double bw = copy_bandwidth(device);
    std::printf(
        "dsrl_bench_rollout: %s on %s (%s), %ld layers, hidden %ld, %ld experts top-%ld, vocab %ld; prompts "
        "of %ld tokens (%ld samples each), up to %ld new tokens, temperature 1, top_p %.2f; device copy bandwidth "
        "%.0f GB/s\n",
        model_dir.c_str(), device_name.c_str(),
        amp.active() ? (profile.cast_weights_once ? "fp32 weights, bf16 autocast, matmul weights cast once per call"
                                                  : "fp32 weights, bf16 autocast, weights cast in every forward")
                     : (device.is_cuda() ? "bf16 weights" : "fp32 weights"),
        long(c.num_hidden_layers), long(c.hidden_size), long(c.n_routed_experts), long(c.num_experts_per_tok),
        long(c.vocab_size), long(prompt_len), long(group), long(new_tokens), top_p, bw / 1e9);
    dsrl::rollout::GenerateOptions opt{.sampling = {.temperature = 1.0, .top_p = top_p}, .max_new_tokens = new_tokens};
    opt.engine.cast_weights_once = profile.cast_weights_once;
    opt.engine.absorb_projections = profile.absorb;
    {  // warm-up
        dsrl::rollout::GenerateOptions w = opt;
        w.max_new_tokens = 8;
        (void)dsrl::rollout::generate(m, *tok, requests(std::min<int64_t>(most, 8)), w, nullptr);
    }
    // On CUDA the continuous engine runs twice: replaying captured decode steps (the default) and launching every
    // kernel (rollout.cuda_graphs false).
    const bool graphs = device.is_cuda();
    int64_t nodes = 0;
    std::string node_kinds;
    if (profile.compare) {
        std::printf("%6s | %12s %12s %12s %12s | %8s %9s %9s | %9s %13s %8s %7s\n", "batch", "dsrl tok/s", "no-graph",
                    "static", "HF", "vs HF", "vs static", "graph x", "bw bound", "graphs (s)", "peak blk", "preempt");
    }
    for (const int64_t batch : profile.compare ? batches : std::vector<int64_t>{}) {
        opt.max_batch_size = batch;
        opt.engine.kind = "continuous";
        opt.engine.cuda_graphs = true;
        const Timed cont = time_engine(m, *tok, requests(batch), opt);
        Timed eager = cont, stat = cont;
        if (graphs && profile.baselines) {
            opt.engine.cuda_graphs = false;
            eager = time_engine(m, *tok, requests(batch), opt);
            opt.engine.cuda_graphs = true;
        }
        if (profile.baselines) {
            opt.engine.kind = "static";
            stat = time_engine(m, *tok, requests(batch), opt);
        }
        double hf_tps = 0;
        if (hf) {
            const auto r = dsrl::bench::run_child(
                python,
                {hf_script, model_dir, prompts_path, std::to_string(batch), std::to_string(new_tokens),
                 absl::StrFormat("%g", top_p), device_name, std::to_string(tok->eos_id())},
                "dsrl_bench_rollout (Hugging Face generate)");
            if (r && r->size() >= 2) hf_tps = (*r)[0] / (*r)[1];
        }
        // Mean context over the run: the prompt plus half the mean response.
        const double mean_new = static_cast<double>(cont.stats.generated_tokens) / static_cast<double>(batch);
        const double context = static_cast<double>(prompt_len) + mean_new / 2.0;
        const double step_bytes = decode_step_bytes(
            m, std::min<int64_t>(batch, cont.stats.decode_row_steps / std::max<int64_t>(1, cont.stats.decode_steps)),
            context);
        const double achieved = step_bytes * static_cast<double>(cont.stats.decode_steps) /
                                std::max(cont.stats.decode_seconds + cont.stats.prefill_seconds, 1e-9);
        std::printf("%6ld | %12.0f %12s %12.0f %12s | %8s %8.2fx %9s | %8.1f%% %13s %8ld %7ld\n", long(batch),
                    cont.tok_per_s, graphs ? absl::StrFormat("%.0f", eager.tok_per_s).c_str() : "-", stat.tok_per_s,
                    hf ? absl::StrFormat("%.0f", hf_tps).c_str() : "-",
                    hf_tps > 0 ? absl::StrFormat("%.2fx", cont.tok_per_s / hf_tps).c_str() : "-",
                    cont.tok_per_s / stat.tok_per_s,
                    graphs ? absl::StrFormat("%.2fx", cont.tok_per_s / eager.tok_per_s).c_str() : "-",
                    100.0 * achieved / bw,
                    absl::StrFormat("%ld (%.2f)", long(cont.stats.graphs_captured), cont.stats.capture_seconds).c_str(),
                    long(cont.stats.peak_cache_blocks), long(cont.stats.preemptions));
        const dsrl::rollout::GenerationStats& st = cont.stats;
        std::printf(
            "       host (s): prefill %.3f, decode %.3f = window setup %.3f + graph capture %.3f + launch %.3f + wait "
            "for the device %.3f + records %.3f + the rest %.3f\n",
            st.prefill_seconds, st.decode_seconds, st.setup_seconds, st.capture_seconds, st.launch_seconds,
            st.wait_seconds, st.record_seconds,
            st.decode_seconds - st.setup_seconds - st.capture_seconds - st.launch_seconds - st.wait_seconds -
                st.record_seconds);
        if (device.is_cuda()) {
            // The decode steps alone against the bound: the step's bytes at the copy bandwidth over its device time
            // (no prefill, graph capture or host time, which the bw bound column counts).
            const double step_s = st.device_decode_seconds / static_cast<double>(std::max<int64_t>(1, st.decode_steps));
            std::printf(
                "       device (CUDA events): %.1f us per decode step over %ld steps; %.1f MB read per step, %.1f us "
                "at "
                "the copy bandwidth: %.1f%% of the bound on device time\n",
                1e6 * step_s, long(st.decode_steps), step_bytes / 1e6, 1e6 * step_bytes / bw,
                step_s > 0 ? 100.0 * step_bytes / bw / step_s : 0.0);
        }
        if (graphs && profile.probe > 0) {  // an extra run: the timed one stays free of the probe's replays
            dsrl::rollout::GenerateOptions probe = opt;
            probe.engine.kind = "continuous";
            probe.engine.cuda_graphs = true;
            probe.engine.probe_replays = profile.probe;
            const Timed p = time_engine(m, *tok, requests(batch), probe);
            std::printf(
                "       largest graph (%ld nodes), %ld replays back to back: %.1f us per replay (a window's step: "
                "nothing runs between replays)\n",
                long(p.stats.graph_nodes), long(profile.probe), p.stats.graph_replay_us);
        }
        std::fflush(stdout);
        if (cont.stats.graph_nodes > nodes) {
            nodes = cont.stats.graph_nodes;
            node_kinds = cont.stats.graph_node_kinds;
        }
    }
    if (nodes > 0) {
        std::printf("decode-step graph: %ld nodes per step (%s)\n", long(nodes), node_kinds.c_str());
    }
    std::remove(prompts_path.c_str());
    if (profile.batch > 0) {
        opt.max_batch_size = profile.batch;
        opt.engine.kind = "continuous";
        opt.engine.cuda_graphs = profile.graphs;
        opt.engine.eager_buckets = profile.buckets;
        (void)dsrl::rollout::generate(m, *tok, requests(profile.batch), opt, nullptr);  // captures outside the profile
        dsrl::rollout::GenerationStats stats;
        const dsrl::bench::OpProfile p = dsrl::bench::profile_ops(
            device, [&] { (void)dsrl::rollout::generate(m, *tok, requests(profile.batch), opt, &stats); },
            profile.prefill ? dsrl::rollout::kPrefillScope : dsrl::rollout::kDecodeScope, profile.trace, profile.host);
        std::printf(
            "\nprofile of the continuous engine at batch %ld (CUDA graphs %s): %ld decode steps, %ld prefill "
            "forwards over %ld prefill tokens (%.3f s), %ld generated tokens\n",
            long(profile.batch), device.is_cuda() && profile.graphs ? "on" : "off", long(stats.decode_steps),
            long(stats.prefill_calls), long(stats.prefill_tokens), stats.prefill_seconds, long(stats.generated_tokens));
        if (profile.prefill) {
            dsrl::bench::print_profile(p, stats.prefill_calls, "prefill forward", profile.top);
        } else {
            dsrl::bench::print_profile(p, stats.decode_steps, "decode step", profile.top);
        }
        if (!profile.trace.empty()) std::printf("trace: %s\n", profile.trace.c_str());
    }
    if (!profile.compare) return 0;
    std::printf(
        "tok/s: generated tokens / wall time (prefill and graph capture included); no-graph: the continuous engine "
        "with rollout.cuda_graphs false; HF: transformers generate() (bf16 on CUDA), do_sample, the same prompts, "
        "temperature and top_p; graph x: dsrl over no-graph; graphs (s): decode-step graphs captured in the run and "
        "the seconds their capture took; bw bound: bytes of weights and cache one decode step reads x decode "
        "steps / time, over the measured copy bandwidth.\n");
    return 0;
}

int run(int argc, char** argv) {
    std::string model_dir, python = "python3", batches_text = "1,64,256", hf_script = "bench/hf_generate.py";
    int64_t prompt_len = 64, hf = 1, group = 1;
    double top_p_cmp = 0.95;
    ProfileRequest profile;
    int64_t profile_graphs = 0, compare_table = 1, profile_top = 25, autocast = 0, cast_once = 1, absorb = 1,
            profile_host = 0, profile_prefill = 0, reference = 0, baselines = 1, profile_buckets = 0;
    std::string device = "cpu";
    int64_t new_tokens = 64, vocab = 4096;
    double scale = 0.3;
    int64_t index_topk = 8;
    const bool go =
        dsrl::bench::Flags("dsrl_bench_rollout")
            .text("--device", &device, "cpu or cuda")
            .integer("--new-tokens", &new_tokens, 1, "tokens generated per sample")
            .integer("--vocab", &vocab, 2, "vocabulary size")
            .number("--scale", &scale, "std of the random weights")
            .integer("--index-topk", &index_topk, 1, "DSA keys per query (sparse from that position on)")
            .text("--model", &model_dir, "a Hugging Face checkpoint: compare with HF generate()")
            .text("--batches", &batches_text, "--model: comma-separated batch sizes")
            .integer("--prompt-len", &prompt_len, 1, "--model: prompt tokens")
            .number("--top-p", &top_p_cmp, "--model: nucleus truncation")
            .text("--python", &python, "--model: the python with transformers")
            .integer("--hf", &hf, 0, "--model: 1 runs Hugging Face generate(), 0 skips it")
            .text("--hf-script", &hf_script, "--model: the generate() script (run from the repository)")
            .integer("--group", &group, 1, "--model: samples per prompt (G > 1 shares prompts; no HF column then)")
            .integer("--profile", &profile.batch, 0, "--model: profile the continuous engine at this batch (0: no)")
            .integer("--profile-graphs", &profile_graphs, 0, "--profile: 1 replays CUDA graphs, 0 launches kernels")
            .integer("--profile-buckets", &profile_buckets, 0,
                     "--profile-graphs 0: 1 launches the padded step the graphs replay (their kernels, one by one)")
            .integer("--profile-top", &profile_top, 1, "--profile: rows printed")
            .integer("--profile-host", &profile_host, 0, "--profile on CUDA: 1 reports the host's CPU ops instead")
            .integer("--profile-prefill", &profile_prefill, 0, "--profile: 1 profiles the prefill forwards instead")
            .integer("--probe", &profile.probe, 0,
                     "--model on CUDA: replays of each graph timed back to back in an extra run (0: none)")
            .integer("--baselines", &baselines, 0,
                     "--model: 0 skips the no-graph and static engines (their columns repeat dsrl's)")
            .integer("--reference", &reference, 0,
                     "--model: 1 runs model.impl reference (no dsrl kernels: the ATen ops)")
            .text("--trace", &profile.trace, "--profile: write a Chrome/Perfetto trace here")
            .integer("--compare", &compare_table, 0, "--model: 0 skips the engines-vs-HF table")
            .integer("--autocast", &autocast, 0,
                     "--model on CUDA: 1 keeps fp32 weights under bf16 autocast (as dsrl_train with trainer.autocast)")
            .integer("--cast-once", &cast_once, 0, "--autocast 1: rollout.cast_weights_once (0 casts in every forward)")
            .integer("--absorb", &absorb, 0, "--model: rollout.absorb_projections (0: the per-head products run)")
            .parse(argc, argv);
    if (!go) return 0;
    profile.graphs = profile_graphs != 0;
    profile.buckets = profile_buckets != 0;
    profile.host = profile_host != 0;
    profile.prefill = profile_prefill != 0;
    profile.reference = reference != 0;
    profile.baselines = baselines != 0;
    profile.autocast = autocast != 0;
    profile.cast_weights_once = cast_once != 0;
    profile.absorb = absorb != 0;
    profile.compare = compare_table != 0;
    profile.top = static_cast<int>(profile_top);
    if (!model_dir.empty()) {
        return compare(model_dir, device, dsrl::bench::parse_lengths(batches_text, "dsrl_bench_rollout"), prompt_len,
                       new_tokens, top_p_cmp, python, hf != 0 && group == 1, hf_script, group, profile);
    }
    dsrl::ModelConfig c;
    c.vocab_size = vocab;
    c.max_position_embeddings = 4096;
    c.index_topk = index_topk;
    dsrl::dsa::Model m = dsrl::dsa::Model::random(c, 3, c10::Device(device));
    {
        at::NoGradGuard no_grad;
        at::Generator gen = dsrl::rng::make_cpu_generator(4);
        for (auto& t : m.named_tensors()) {
            if (t.name.find("norm") != std::string::npos || t.name.find("bias") != std::string::npos) continue;
            t.tensor->copy_(at::empty(t.tensor->sizes(), at::kFloat).normal_(0.0, scale, gen));
        }
    }
    const dsrl::text::ByteTokenizer tok(vocab);
    std::printf(
        "dsrl_bench_rollout: device %s, model %ld layers (%ld MoE, %ld experts top-%ld), vocab %ld, prompt 32 "
        "tokens, %ld new tokens per sample, temperature 1, DSA index_topk %ld\n",
        device.c_str(), long(c.num_hidden_layers), long(c.num_hidden_layers - c.first_k_dense_replace),
        long(c.n_routed_experts), long(c.num_experts_per_tok), long(vocab), long(new_tokens), long(c.index_topk));
    run_once(m, tok, 2, 4, 1.0);  // warm-up
    std::printf("%6s %6s | %12s %10s | %14s %16s %16s %16s %14s\n", "top_p", "batch", "decode tok/s", "vs batch1",
                "mean kept ids", "kept B/token", "route B/token", "indexer B/token", "indexer raw");
    for (const double top_p : {0.95, 1.0}) {
        double base = 0;
        for (const int64_t batch : {1, 8, 32}) {
            const Result r = run_once(m, tok, batch, new_tokens, top_p);
            if (batch == 1) base = r.tok_per_s;
            std::printf("%6.2f %6ld | %12.0f %9.2fx | %14.1f %16.2f %16.2f %16.2f %13.1fx\n", top_p, long(batch),
                        r.tok_per_s, r.tok_per_s / base, r.kept_size / r.tokens, r.kept_bytes / r.tokens,
                        r.route_bytes / r.all_tokens, r.indexer_bytes / r.all_tokens,
                        r.indexer_raw / std::max(r.indexer_bytes, 1.0));
            std::fflush(stdout);
        }
    }
    std::printf(
        "kept B/token: encoded kept set per sampled token; route B/token: routing path per prompt or "
        "response token (MoE layers x top-k x id bytes); indexer B/token: coded DSA key sets per prompt or response "
        "token (all layers); indexer raw: how much larger int32 keys of every sparse position would be.\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
