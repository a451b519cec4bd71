// dsrl_bench_comm: bandwidth of the Communicator's all_reduce, all_gather and all_to_all (SPEC §8).
//   mpirun -np 2 build/bin/dsrl_bench_comm                       # CPU (MPI backend), 1 KiB .. 1 MiB
//   mpirun -np 8 build/bin/dsrl_bench_comm --device cuda         # GPU (NCCL backend), 1 KiB .. 256 MiB
// Flags: --device cpu|cuda, --min-size / --max-size (bytes, K/M/G suffixes), --iters N, --warmup N,
//        --dtype float|bf16, --moe-tokens LIST --moe-hidden H --moe-topk K (the all_to_all_v table: MoE dispatch).
// Columns follow nccl-tests: size = bytes of the per-rank buffer (all_gather: its output), time = mean per
// op (slowest rank), algbw = size / time, busbw = algbw * factor with factor 2(n-1)/n for all_reduce and
// (n-1)/n for all_gather and all_to_all: busbw is comparable with the link's peak bandwidth. `vs_copy` is
// busbw over the bandwidth of a local device copy of the same size, measured in this process (a baseline,
// not a pass/fail). Prints figures only; never fails on speed.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_format.h>

#include "bench/bench_util.h"
#include "core/dist/bootstrap.h"
#include "core/dist/communicator.h"
#include "core/env.h"
#include "core/error.h"
#include "core/main_guard.h"

namespace {

using dsrl::dist::Communicator;

struct Options {
    std::string device = "cpu";
    int64_t min_size = 1 << 10;
    int64_t max_size = -1;  // default: 1 MiB on cpu, 256 MiB on cuda
    int iters = 20;
    int warmup = 3;
    std::string dtype = "float";
    std::string moe_tokens = "256,1024,4096";
    int64_t moe_hidden = 1024;
    int64_t moe_topk = 8;
    bool help = false;
};

int64_t parse_size(const std::string& flag, const std::string& text) {
    int64_t mult = 1;
    std::string digits = text;
    if (!text.empty()) {
        const char suffix = static_cast<char>(std::toupper(static_cast<unsigned char>(text.back())));
        if (suffix == 'K' || suffix == 'M' || suffix == 'G') {
            mult = suffix == 'K' ? (1 << 10) : suffix == 'M' ? (1 << 20) : (int64_t{1} << 30);
            digits = text.substr(0, text.size() - 1);
        }
    }
    int64_t v = 0;
    if (!absl::SimpleAtoi(digits, &v) || v <= 0) {
        throw dsrl::ConfigError(absl::StrCat(flag, "='", text, "' is not a positive size (bytes, or with K/M/G)"));
    }
    return v * mult;
}

Options parse(int argc, char** argv) {
    Options o;
    auto size = [](int64_t* v, const char* flag) {
        return [v, flag](const std::string& text) { *v = parse_size(flag, text); };
    };
    o.help =
        !dsrl::bench::Flags("dsrl_bench_comm")
             .text("--device", &o.device, "cpu or cuda")
             .custom("--min-size", size(&o.min_size, "--min-size"), "smallest message (bytes, or with K/M/G)", "1K")
             .custom("--max-size", size(&o.max_size, "--max-size"), "largest message", "1M on cpu, 256M on cuda")
             .integer("--iters", &o.iters, 1, "timed calls per size")
             .integer("--warmup", &o.warmup, 0, "untimed calls per size")
             .text("--dtype", &o.dtype, "float or bf16")
             .text("--moe-tokens", &o.moe_tokens, "tokens per rank of the MoE dispatch table (comma list)")
             .integer("--moe-hidden", &o.moe_hidden, 1, "hidden size of a dispatched row")
             .integer("--moe-topk", &o.moe_topk, 1, "experts per token (rows per token)")
             .parse(argc, argv);
    if (o.help) return o;
    if (o.device != "cpu" && o.device != "cuda") {
        throw dsrl::ConfigError(absl::StrCat("--device='", o.device, "' must be cpu or cuda"));
    }
    if (o.dtype != "float" && o.dtype != "bf16") {
        throw dsrl::ConfigError(absl::StrCat("--dtype='", o.dtype, "' must be float or bf16"));
    }
    if (o.max_size < 0) o.max_size = o.device == "cpu" ? (1 << 20) : (int64_t{256} << 20);
    if (o.min_size > o.max_size) {
        throw dsrl::ConfigError(absl::StrCat("--min-size ", o.min_size, " exceeds --max-size ", o.max_size));
    }
    return o;
}

// Mean seconds per call of `op` on the slowest rank.
template <class F>
double time_op(const Communicator& world, const at::Device& device, int warmup, int iters, F&& op) {
    for (int i = 0; i < warmup; ++i) op();
    dsrl::bench::sync_device(device);
    world.barrier();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) op();
    dsrl::bench::sync_device(device);
    const double mine = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / iters;
    at::Tensor t = at::empty({1}, at::TensorOptions().dtype(at::kDouble));
    t.fill_(mine);
    world.all_reduce(t, dsrl::dist::ReduceOp::kMax);
    return t.item<double>();
}

int run(int argc, char** argv) {
    dsrl::dist::Bootstrap boot(&argc, &argv);
    const Options o = parse(argc, argv);
    if (o.help) return 0;
    const Communicator world = Communicator::world(/*timeout_s=*/600);
    const int n = world.size();
    at::Device device(at::kCPU);
    if (o.device == "cuda") {
        if (boot.device() < 0) throw dsrl::ConfigError("--device cuda: no GPU is visible to this process");
        device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(boot.device()));
    }
    const at::ScalarType dtype = o.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
    const int64_t elem = dtype == at::kBFloat16 ? 2 : 4;
    const at::TensorOptions opts = at::TensorOptions().dtype(dtype).device(device);
    const bool rank0 = world.rank() == 0;
    if (rank0) {
        std::printf("# dsrl_bench_comm: %d ranks, device %s, dtype %s, %d iters (+%d warmup), peer checks %s\n", n,
                    o.device.c_str(), o.dtype.c_str(), o.iters, o.warmup,
                    dsrl::env::get_bool("DSRL_DIST_CHECK_PEERS") ? "on (DSRL_DIST_CHECK_PEERS=1)" : "off");
        std::printf("# %-14s %12s %12s %11s %11s %11s %8s\n", "op", "size(B)", "count", "time(us)", "algbw(GB/s)",
                    "busbw(GB/s)", "vs_copy");
    }
    for (const char* op : {"all_reduce", "all_gather", "all_to_all"}) {
        for (int64_t size = o.min_size; size <= o.max_size; size *= 2) {
            // Per-rank buffer of `size` bytes, rounded down to a multiple of n elements (all_gather and
            // all_to_all split it in n blocks).
            int64_t count = size / elem;
            count -= count % n;
            if (count == 0) continue;
            const int64_t bytes = count * elem;
            at::Tensor buf = at::ones({count}, opts);
            at::Tensor block = at::ones({count / n}, opts);
            at::Tensor copy_dst = at::empty({count}, opts);
            const double copy_s = time_op(world, device, o.warmup, o.iters, [&] { copy_dst.copy_(buf); });
            double seconds = 0;
            double factor = static_cast<double>(n - 1) / n;
            if (std::strcmp(op, "all_reduce") == 0) {
                factor = 2.0 * (n - 1) / n;
                seconds = time_op(world, device, o.warmup, o.iters, [&] { world.all_reduce(buf); });
            } else if (std::strcmp(op, "all_gather") == 0) {
                seconds = time_op(world, device, o.warmup, o.iters, [&] { (void)world.all_gather(block); });
            } else {
                seconds = time_op(world, device, o.warmup, o.iters, [&] { (void)world.all_to_all(buf); });
            }
            const double algbw = static_cast<double>(bytes) / seconds / 1e9;
            const double busbw = algbw * factor;
            const double copy_bw = static_cast<double>(bytes) / copy_s / 1e9;
            if (rank0) {
                std::printf("  %-14s %12lld %12lld %11.1f %11.3f %11.3f %8.3f\n", op, static_cast<long long>(bytes),
                            static_cast<long long>(count), seconds * 1e6, algbw, busbw, busbw / copy_bw);
                std::fflush(stdout);
            }
        }
    }
    // MoE dispatch: every rank sends T·top-k rows of H elements, split unevenly over the ranks as routing does
    // (destination j of rank r gets a share ∝ 1 + 0.5·sin(r + 2j)); one all_to_all_v (counts exchanged inside).
    if (rank0) {
        std::printf("# all_to_all_v at MoE dispatch sizes: tokens x top-%lld rows of %lld elements per rank, skewed\n",
                    static_cast<long long>(o.moe_topk), static_cast<long long>(o.moe_hidden));
        std::printf("# %-14s %12s %12s %11s %11s %11s\n", "tokens/rank", "size(B)", "rows", "time(us)", "algbw(GB/s)",
                    "busbw(GB/s)");
    }
    for (const int64_t tokens : dsrl::bench::parse_lengths(o.moe_tokens, "dsrl_bench_comm --moe-tokens")) {
        const int64_t rows = tokens * o.moe_topk;
        std::vector<double> share(static_cast<size_t>(n));
        double total = 0;
        for (int j = 0; j < n; ++j)
            total += share[static_cast<size_t>(j)] = 1.0 + 0.5 * std::sin(world.rank() + 2.0 * j);
        std::vector<int64_t> send(static_cast<size_t>(n));
        int64_t given = 0;
        for (int j = 0; j < n; ++j) {
            send[static_cast<size_t>(j)] =
                j + 1 == n ? rows - given : static_cast<int64_t>(rows * share[static_cast<size_t>(j)] / total);
            given += send[static_cast<size_t>(j)];
        }
        at::Tensor buf = at::ones({rows, o.moe_hidden}, opts);
        const double seconds = time_op(world, device, o.warmup, o.iters, [&] { (void)world.all_to_all_v(buf, send); });
        const int64_t bytes = rows * o.moe_hidden * elem;
        const double algbw = static_cast<double>(bytes) / seconds / 1e9;
        if (rank0) {
            std::printf("  %-14lld %12lld %12lld %11.1f %11.3f %11.3f\n", static_cast<long long>(tokens),
                        static_cast<long long>(bytes), static_cast<long long>(rows), seconds * 1e6, algbw,
                        algbw * (n - 1) / n);
            std::fflush(stdout);
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
