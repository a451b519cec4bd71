// dsrl_bench_model: forward throughput and peak memory of the DeepSeek-V3.2 model for growing sequence
// lengths, sparse (DSA, index_topk 256) beside dense causal attention — the O(L·k) vs O(L²) growth of SPEC §2.3.
//
//   build/bin/dsrl_bench_model [--lengths 1024,2048,4096,8192,16384] [--topk 256] [--device cpu|cuda]
//                              [--dense-max 8192] [--repeats 1]
//
// Each (length, path) point runs in a fresh child process (this binary re-executed with --child), so the
// peak resident memory it reports (ru_maxrss growth during the forward, CPU) belongs to that forward alone.
// On CUDA the peak comes from the caching allocator's statistics. Figures, not pass/fail.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/randint.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/Device.h>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_split.h>

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/error.h"
#include "core/main_guard.h"
#include "core/rng.h"
#include "dsa/model.h"

#if DSRL_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace {

// A small model with every mechanism; attention dominates at long L.
dsrl::ModelConfig bench_config(int64_t topk) {
    dsrl::ModelConfig c;
    c.vocab_size = 1024;
    c.hidden_size = 256;
    c.intermediate_size = 512;
    c.moe_intermediate_size = 128;
    c.num_hidden_layers = 2;
    c.first_k_dense_replace = 1;
    c.num_attention_heads = 4;
    c.q_lora_rank = 128;
    c.kv_lora_rank = 128;
    c.qk_nope_head_dim = 32;
    c.qk_rope_head_dim = 32;
    c.v_head_dim = 32;
    c.n_routed_experts = 8;
    c.num_experts_per_tok = 2;
    c.n_group = 2;
    c.topk_group = 1;
    c.index_n_heads = 4;
    c.index_head_dim = 64;
    c.index_topk = topk;
    c.max_position_embeddings = 32768;
    return c;
}

long max_rss_kib() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss;
}

long current_rss_kib() {
    FILE* f = std::fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f != nullptr) {
        if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        std::fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

// Child: one forward (after a warm-up on the CPU) and a result line "RESULT seconds peak_mib".
int child(int64_t length, const std::string& path, int64_t topk, const std::string& device_name, int repeats) {
    const c10::Device device(device_name);
    const dsrl::ModelConfig cfg = bench_config(topk);
    const dsrl::dsa::Model model = dsrl::dsa::Model::random(cfg, 1, device);
    at::NoGradGuard no_grad;
    at::Generator gen = dsrl::rng::make_cpu_generator(2);
    const at::Tensor ids = at::randint(cfg.vocab_size, {1, length}, gen, at::kLong).to(device);
    dsrl::dsa::ForwardOptions opt;
    opt.path = path == "dense" ? dsrl::dsa::AttentionPath::kDense : dsrl::dsa::AttentionPath::kSparse;
    opt.return_logits = false;  // the vocabulary projection is not what is measured
    // Warm up on a short input (allocator, thread pool), then measure.
    model.forward({ids.narrow(1, 0, std::min<int64_t>(length, 512))}, opt);
    const long rss_before = current_rss_kib();
    const long max_before = max_rss_kib();
#if DSRL_WITH_CUDA
    if (device.is_cuda()) {
        c10::cuda::device_synchronize();
        c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
    }
#endif
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        const dsrl::dsa::ForwardOutput out = model.forward({ids}, opt);
#if DSRL_WITH_CUDA
        if (device.is_cuda()) c10::cuda::device_synchronize();
#endif
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    double peak_mib = 0;
    if (device.is_cpu()) {
        peak_mib = (std::max(max_rss_kib(), max_before) - rss_before) / 1024.0;
    }
#if DSRL_WITH_CUDA
    if (device.is_cuda()) {
        const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
        peak_mib = stats.allocated_bytes[0].peak / 1048576.0;
    }
#endif
    std::printf("RESULT %.6f %.1f\n", best, peak_mib);
    return 0;
}

// Runs this binary with --child and parses its RESULT line; false when the child failed.
bool measure(const std::string& self,
             int64_t length,
             const std::string& path,
             int64_t topk,
             const std::string& device,
             int repeats,
             double* seconds,
             double* peak_mib) {
    const auto r = dsrl::bench::run_child(
        self, {"--child", std::to_string(length), path, std::to_string(topk), device, std::to_string(repeats)},
        "dsrl_bench_model");
    if (!r || r->size() != 2) return false;
    *seconds = (*r)[0];
    *peak_mib = (*r)[1];
    return true;
}

int run(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (!args.empty() && args[0] == "--child") {
        return child(std::stoll(args.at(1)), args.at(2), std::stoll(args.at(3)), args.at(4), std::stoi(args.at(5)));
    }
    std::string lengths = "1024,2048,4096,8192,16384", device = "cpu";
    int64_t topk = 256, dense_max = 8192;
    int repeats = 1;
    const bool go = dsrl::bench::Flags("dsrl_bench_model")
                        .text("--lengths", &lengths, "comma-separated sequence lengths")
                        .integer("--topk", &topk, 1, "index_topk")
                        .text("--device", &device, "cpu or cuda")
                        .integer("--dense-max", &dense_max, 0, "longest length measured on the dense path")
                        .integer("--repeats", &repeats, 1, "best of this many runs per point")
                        .parse(argc, argv);
    if (!go) return 0;
    const std::string exe = dsrl::bench::self_exe(argv[0]);
    const dsrl::ModelConfig c = bench_config(topk);
    std::printf(
        "dsrl_bench_model: device %s, batch 1, %ld layers (hidden %ld, %ld heads, kv_lora %ld, indexer %ldx%ld), "
        "index_topk %ld, best of %d\n",
        device.c_str(), long(c.num_hidden_layers), long(c.hidden_size), long(c.num_attention_heads),
        long(c.kv_lora_rank), long(c.index_n_heads), long(c.index_head_dim), long(topk), repeats);
    std::printf("%8s | %14s %12s | %14s %12s | %12s %10s\n", "L", "sparse tok/s", "sparse MiB", "dense tok/s",
                "dense MiB", "speed ratio", "mem ratio");
    for (const int64_t L : dsrl::bench::parse_lengths(lengths, "dsrl_bench_model")) {
        double ts = 0, ms = 0, td = 0, md = 0;
        const bool ok_s = measure(exe, L, "sparse", topk, device, repeats, &ts, &ms);
        const bool ok_d = L <= dense_max && measure(exe, L, "dense", topk, device, repeats, &td, &md);
        const std::string sparse_cols =
            ok_s ? absl::StrFormat("%14.0f %12.1f", L / ts, ms) : absl::StrFormat("%14s %12s", "failed", "-");
        const std::string dense_cols = ok_d ? absl::StrFormat("%14.0f %12.1f", L / td, md)
                                            : absl::StrFormat("%14s %12s", L > dense_max ? "skipped" : "failed", "-");
        const std::string ratios = ok_s && ok_d ? absl::StrFormat("%11.2fx %9.2fx", td / ts, md / std::max(ms, 1e-9))
                                                : absl::StrFormat("%12s %10s", "-", "-");
        std::printf("%8ld | %s | %s | %s\n", long(L), sparse_cols.c_str(), dense_cols.c_str(), ratios.c_str());
        std::fflush(stdout);
    }
    std::printf(
        "speed ratio = sparse tokens/s over dense; mem ratio = dense peak over sparse peak. Dense above "
        "--dense-max (%ld) is skipped: its L x L scores outgrow this machine.\n",
        long(dense_max));
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
