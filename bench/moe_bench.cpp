// dsrl_bench_moe: one MoE layer's forward + backward, expert-parallel vs replicated, in the same run (issue 21).
//   mpirun -np 4 build/bin/dsrl_bench_moe                              # CPU ranks
//   mpirun -np 8 build/bin/dsrl_bench_moe --device cuda --hidden 2048 --tokens 8192
// Flags: --device cpu|cuda, --tokens (per rank), --hidden, --inter (expert intermediate size), --experts, --topk,
//        --iters, --warmup.
// Every rank routes its own tokens (random router); "replicated" runs the routed experts with all E experts on each
// rank (data parallel), "expert parallel" with E/N experts per rank and the tokens exchanged by all_to_all_v both
// ways. Reported: mean time per forward+backward (slowest rank), tokens/s of the whole group, expert weight bytes
// per rank, the ratio EP / replicated, and the largest output difference between the two (the same math).
#include <ATen/TensorOperators.h>
#include <ATen/ops/full.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/topk.h>

#include <absl/strings/str_cat.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "bench/bench_util.h"
#include "core/dist/bootstrap.h"
#include "core/dist/communicator.h"
#include "core/error.h"
#include "core/main_guard.h"
#include "moe/expert_parallel.h"

namespace {

using dsrl::dist::Communicator;

struct Options {
    std::string device = "cpu";
    int64_t tokens = 1024, hidden = 256, inter = 128, experts = 16, topk = 4;
    int iters = 5, warmup = 1;
};

int run(int argc, char** argv) {
    dsrl::dist::Bootstrap boot(&argc, &argv);
    Options o;
    const bool go = dsrl::bench::Flags("dsrl_bench_moe")
                        .text("--device", &o.device, "cpu or cuda")
                        .integer("--tokens", &o.tokens, 1, "tokens per rank")
                        .integer("--hidden", &o.hidden, 1, "hidden size")
                        .integer("--inter", &o.inter, 1, "expert intermediate size")
                        .integer("--experts", &o.experts, 1, "routed experts (a multiple of the ranks)")
                        .integer("--topk", &o.topk, 1, "experts per token")
                        .integer("--iters", &o.iters, 1, "timed steps")
                        .integer("--warmup", &o.warmup, 0, "untimed steps")
                        .parse(argc, argv);
    if (!go) return 0;
    const Communicator world = Communicator::world(/*timeout_s=*/600);
    c10::Device device(c10::kCPU);
    if (o.device == "cuda") {
        if (boot.device() < 0) throw dsrl::ConfigError("dsrl_bench_moe: --device cuda, but no GPU is visible");
        device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(boot.device()));
    } else if (o.device != "cpu") {
        throw dsrl::ConfigError(absl::StrCat("dsrl_bench_moe: --device='", o.device, "' must be cpu or cuda"));
    }
    const dsrl::moe::ExpertParallel ep{.group = &world, .num_experts = o.experts};
    ep.check();
    const auto opts = at::TensorOptions().device(device);
    at::manual_seed(5);  // the same experts on every rank
    const dsrl::moe::SwiGluWeights all{(at::randn({o.experts, o.inter, o.hidden}, opts) * 0.05).requires_grad_(true),
                                       (at::randn({o.experts, o.inter, o.hidden}, opts) * 0.05).requires_grad_(true),
                                       (at::randn({o.experts, o.hidden, o.inter}, opts) * 0.05).requires_grad_(true)};
    const dsrl::moe::SwiGluWeights mine = ep.local(all);
    at::manual_seed(static_cast<uint64_t>(100 + world.rank()));
    const at::Tensor x = at::randn({o.tokens, o.hidden}, opts).requires_grad_(true);
    const at::Tensor router = at::randn({o.hidden, o.experts}, opts);
    const auto routed = at::topk(at::sigmoid(x.detach().matmul(router)), o.topk);
    const at::Tensor weights = std::get<0>(routed), indices = std::get<1>(routed);

    const auto time_it = [&](auto&& step) {
        for (int i = 0; i < o.warmup; ++i) step();
        dsrl::bench::sync_device(device);
        world.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < o.iters; ++i) step();
        dsrl::bench::sync_device(device);
        at::Tensor t = at::full(
            {1}, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / o.iters, at::kDouble);
        world.all_reduce(t, dsrl::dist::ReduceOp::kMax);
        return t.item<double>();
    };
    at::Tensor y_rep, y_ep;
    const double rep = time_it([&] {
        y_rep = dsrl::moe::routed_experts(x, indices, weights, all);
        y_rep.sum().backward();
    });
    const double par = time_it([&] {
        y_ep = dsrl::moe::routed_experts_ep(x, indices, weights, mine, ep);
        y_ep.sum().backward();
    });
    at::Tensor diff = at::full({1}, (y_rep - y_ep).abs().max().item<double>(), at::kDouble);
    world.all_reduce(diff, dsrl::dist::ReduceOp::kMax);
    if (world.rank() != 0) return 0;
    const double per_expert = static_cast<double>(3 * o.inter * o.hidden * 4) / (1 << 20);
    const double group_tokens = static_cast<double>(o.tokens) * world.size();
    std::printf("dsrl_bench_moe: %d ranks, %s, %lld tokens/rank, hidden %lld, inter %lld, %lld experts, top-%lld\n",
                world.size(), device.str().c_str(), static_cast<long long>(o.tokens), static_cast<long long>(o.hidden),
                static_cast<long long>(o.inter), static_cast<long long>(o.experts), static_cast<long long>(o.topk));
    std::printf("%-16s %12s %14s %16s\n", "layout", "fwd+bwd ms", "tokens/s", "expert MiB/rank");
    std::printf("%-16s %12.2f %14.0f %16.2f\n", "replicated", 1e3 * rep, group_tokens / rep, per_expert * o.experts);
    std::printf("%-16s %12.2f %14.0f %16.2f\n", "expert parallel", 1e3 * par, group_tokens / par,
                per_expert * static_cast<double>(ep.local_experts()));
    std::printf("EP / replicated: time %.2fx, expert memory %.3fx; max |y_ep - y_replicated| = %.2e\n", par / rep,
                1.0 / world.size(), diff.item<double>());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
