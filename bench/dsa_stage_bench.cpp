// dsrl_bench_dsa_stage: peak memory and time of the dense warm-up indexer loss (SPEC §3 indexer_warmup,
// dsa/indexer_loss.h), forward + backward, for growing sequence lengths — the tiled custom autograd function
// (O(tile · S · H)) beside the naive full-matrix computation (O(H · L²), what plain autograd would keep).
//
//   build/bin/dsrl_bench_dsa_stage [--lengths 1024,2048,4096,8192] [--tile 128] [--naive-max 4096]
//                                  [--heads 8] [--index-heads 4]
//
// Each (length, mode) point runs in a fresh child process (this binary re-executed with --child), as in
// bench/model_bench.cpp: the peak it reports is the growth of the resident set (ru_maxrss) during the
// measured forward + backward, over the resident set just before it (inputs included in neither). Both modes
// print the loss, which must agree. CPU, batch 1. Figures, not pass/fail.
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/log.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_split.h>

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/error.h"
#include "core/main_guard.h"
#include "core/rng.h"
#include "dsa/indexer_loss.h"
#include "dsa/sparse_attention.h"

namespace {

constexpr int64_t kLatent = 64;    // C (kv_lora)
constexpr int64_t kRope = 32;      // R
constexpr int64_t kIndexDim = 64;  // D_I

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

struct Inputs {
    dsrl::dsa::IndexerOutput ix;
    dsrl::dsa::AttentionInputs att;
    at::Tensor query_pos, key_valid;
};

// Random inputs of length L; the dense lse is computed 16 queries at a time so that building it leaves a peak
// far below the measured one.
Inputs make_inputs(int64_t length, int64_t heads, int64_t index_heads, uint64_t seed) {
    at::Generator gen = dsrl::rng::make_cpu_generator(seed);
    Inputs in;
    in.att.q_lat = at::randn({1, length, heads, kLatent}, gen);
    in.att.q_pe = at::randn({1, length, heads, kRope}, gen);
    in.att.c_kv = at::randn({1, length, kLatent}, gen);
    in.att.k_pe = at::randn({1, length, kRope}, gen);
    in.att.scale = 1.0 / std::sqrt(double(kLatent + kRope));
    in.att.dense = true;
    in.query_pos = at::arange(length, at::kLong).unsqueeze(0);
    in.key_valid = at::ones({1, length}, at::kBool);
    in.att.lse = at::empty({1, length, heads}, at::kFloat);
    {
        at::NoGradGuard no_grad;
        for (int64_t t0 = 0; t0 < length; t0 += 16) {
            const int64_t n = std::min<int64_t>(16, length - t0);
            in.att.lse.narrow(1, t0, n).copy_(
                dsrl::dsa::dense_mla_attention(in.att.q_lat.narrow(1, t0, n), in.att.q_pe.narrow(1, t0, n), in.att.c_kv,
                                               in.att.k_pe, in.query_pos.narrow(1, t0, n), in.key_valid, in.att.scale)
                    .lse);
        }
    }
    in.ix.q = (at::randn({1, length, index_heads, kIndexDim}, gen)).requires_grad_(true);
    in.ix.k = at::randn({1, length, kIndexDim}, gen).requires_grad_(true);
    in.ix.w = (at::randn({1, length, index_heads}, gen) / std::sqrt(double(index_heads))).requires_grad_(true);
    return in;
}

// The naive full-matrix loss: [H, L, S] attention probabilities and [H_I, L, S] indexer heads, plain autograd.
at::Tensor naive_loss(const Inputs& in) {
    const double neg_inf = -std::numeric_limits<double>::infinity();
    const int64_t S = in.att.c_kv.size(1);
    const at::Tensor visible = at::arange(S, at::kLong).view({1, 1, S}).le(in.query_pos.unsqueeze(-1));  // [1, L, S]
    const at::Tensor scores = (at::einsum("bthc,bsc->bhts", {in.att.q_lat, in.att.c_kv}) +
                               at::einsum("bthr,bsr->bhts", {in.att.q_pe, in.att.k_pe})) *
                              in.att.scale;
    const at::Tensor p = at::softmax(scores.masked_fill(visible.unsqueeze(1).logical_not(), neg_inf), -1).mean(1);
    const at::Tensor heads = at::relu(at::einsum("btjd,bsd->btjs", {in.ix.q, in.ix.k}) / std::sqrt(double(kIndexDim)));
    const at::Tensor logits = at::einsum("btjs,btj->bts", {heads, in.ix.w}).masked_fill(visible.logical_not(), neg_inf);
    const at::Tensor logq = at::log_softmax(logits, -1);
    const at::Tensor kl = at::where(p.gt(0), p * (at::log(p) - logq), at::zeros_like(p)).sum(-1);
    return kl.mean();
}

at::Tensor loss_of(const Inputs& in, const std::string& mode, int64_t tile) {
    return mode == "naive" ? naive_loss(in)
                           : dsrl::dsa::indexer_warmup_loss(in.ix, in.att, in.query_pos, in.key_valid, tile).loss;
}

// Child: one forward + backward after a short warm-up; prints "RESULT seconds peak_mib loss".
int child(int64_t length, const std::string& mode, int64_t tile, int64_t heads, int64_t index_heads) {
    {
        const Inputs warm = make_inputs(std::min<int64_t>(length, 256), heads, index_heads, 1);
        loss_of(warm, mode, tile).backward();
    }
    const Inputs in = make_inputs(length, heads, index_heads, 2);
    const long rss_before = current_rss_kib();
    const long max_before = max_rss_kib();
    const auto t0 = std::chrono::steady_clock::now();
    const at::Tensor loss = loss_of(in, mode, tile);
    loss.backward();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double peak_mib = (std::max(max_rss_kib(), max_before) - rss_before) / 1024.0;
    std::printf("RESULT %.6f %.1f %.9f\n", seconds, peak_mib, loss.item<double>());
    return 0;
}

struct Point {
    bool ok = false;
    double seconds = 0, peak_mib = 0, loss = 0;
};

// Runs this binary with --child and parses its RESULT line.
Point measure(const std::string& self, const std::vector<std::string>& child_args) {
    std::vector<std::string> args = {"--child"};
    args.insert(args.end(), child_args.begin(), child_args.end());
    const auto r = dsrl::bench::run_child(self, args, "dsrl_bench_dsa_stage");
    if (!r || r->size() != 3) return Point{};
    return {true, (*r)[0], (*r)[1], (*r)[2]};
}

int run(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (!args.empty() && args[0] == "--child") {
        return child(std::stoll(args.at(1)), args.at(2), std::stoll(args.at(3)), std::stoll(args.at(4)),
                     std::stoll(args.at(5)));
    }
    std::string lengths = "1024,2048,4096,8192";
    int64_t tile = 128, naive_max = 4096, heads = 8, index_heads = 4;
    const bool go = dsrl::bench::Flags("dsrl_bench_dsa_stage")
                        .text("--lengths", &lengths, "comma-separated sequence lengths")
                        .integer("--tile", &tile, 1, "query tile")
                        .integer("--naive-max", &naive_max, 0, "longest length measured with the naive loss")
                        .integer("--heads", &heads, 1, "attention heads")
                        .integer("--index-heads", &index_heads, 1, "indexer heads")
                        .parse(argc, argv);
    if (!go) return 0;
    const std::string exe = dsrl::bench::self_exe(argv[0]);
    std::printf(
        "dsrl_bench_dsa_stage: dense warm-up indexer loss, forward + backward, CPU, batch 1, %ld heads "
        "(C %ld, R %ld), indexer %ldx%ld, tile %ld\n",
        long(heads), long(kLatent), long(kRope), long(index_heads), long(kIndexDim), long(tile));
    std::printf("%7s | %10s %9s | %10s %9s | %9s | %12s\n", "L", "tiled MiB", "tiled s", "naive MiB", "naive s",
                "mem ratio", "|loss diff|");
    for (const int64_t L : dsrl::bench::parse_lengths(lengths, "dsrl_bench_dsa_stage")) {
        const auto child_args = [&](const std::string& mode) {
            return std::vector<std::string>{std::to_string(L), mode, std::to_string(tile), std::to_string(heads),
                                            std::to_string(index_heads)};
        };
        const Point t = measure(exe, child_args("tiled"));
        const Point v = L <= naive_max ? measure(exe, child_args("naive")) : Point{};
        const std::string tc =
            t.ok ? absl::StrFormat("%10.1f %9.2f", t.peak_mib, t.seconds) : absl::StrFormat("%10s %9s", "failed", "-");
        const std::string vc = v.ok ? absl::StrFormat("%10.1f %9.2f", v.peak_mib, v.seconds)
                                    : absl::StrFormat("%10s %9s", L > naive_max ? "skipped" : "failed", "-");
        const std::string ratio =
            t.ok && v.ok
                ? absl::StrFormat("%8.1fx | %12.2e", v.peak_mib / std::max(t.peak_mib, 1e-9), std::abs(v.loss - t.loss))
                : absl::StrFormat("%9s | %12s", "-", "-");
        std::printf("%7ld | %s | %s | %s\n", long(L), tc.c_str(), vc.c_str(), ratio.c_str());
        std::fflush(stdout);
    }
    std::printf(
        "mem ratio = naive peak over tiled peak. Naive above --naive-max (%ld) is skipped: its [H, L, L] "
        "tensors outgrow this machine. Tiled working set ~ tile x S x max(H, H_I) x 4 B per live tensor.\n",
        long(naive_max));
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
