// dsrl_bench_zero: memory per rank of training state at trainer.zero_stage 0, 1 and 2 (issue 21, SPEC §8).
//   mpirun -np 4 build/bin/dsrl_bench_zero                          # CPU ranks, a ~13M-parameter MoE model
//   mpirun -np 8 build/bin/dsrl_bench_zero --device cuda --hidden 1024 --layers 8
// Flags: --device cpu|cuda, --hidden, --layers, --experts, --vocab, --seq, --batch, --steps.
// For each stage the same model (same seed) takes `steps` SFT-like steps on per-rank random tokens: forward, NLL,
// backward, AdamW::reduce_and_clip (gradients averaged over the ranks), step. Reported per stage, as the largest
// over the ranks: bytes of parameters, of gradients held after the reduction, of AdamW moments, their sum and its
// ratio to ZeRO 0, the mean step time (slowest rank; relative to ZeRO 0 in the same run) and a checksum of the
// final weights (the stages train the same weights bit for bit). Figures only; never fails on speed or memory.
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/randint.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/dist/bootstrap.h"
#include "core/dist/communicator.h"
#include "core/error.h"
#include "core/main_guard.h"
#include "dsa/model.h"
#include "trainer/config.h"
#include "trainer/optimizer.h"

namespace {

using dsrl::dist::Communicator;

struct Options {
    std::string device = "cpu";
    int64_t hidden = 256, layers = 4, experts = 16, vocab = 4096, seq = 64, batch = 2, steps = 3;
};

struct Row {
    dsrl::trainer::OptimizerMemory mem;  // largest over the ranks
    double step_s = 0;
    double checksum = 0;
};

Row run_stage(
    const Options& o, const dsrl::JobConfig& job, int64_t stage, const Communicator& world, c10::Device device) {
    using namespace dsrl;
    dsa::Model model = dsa::Model::random(job.model, /*seed=*/7, device);
    std::vector<trainer::Param> params;
    for (dsa::NamedTensor& t : model.named_tensors()) {
        if (t.trainable) params.push_back({t.name, t.tensor->requires_grad_(true), trainer::decays(t.name, *t.tensor)});
    }
    trainer::AdamW opt(params, job.trainer.optimizer.adamw, {.comm = &world, .zero_stage = stage});
    Row row;
    double seconds = 0;
    for (int64_t step = 0; step < o.steps; ++step) {
        at::manual_seed(static_cast<uint64_t>(1000 * step + world.rank()));
        const at::Tensor ids = at::randint(job.model.vocab_size, {o.batch, o.seq}, at::kLong).to(device);
        world.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        const dsa::ForwardOutput out = model.forward({.input_ids = ids}, {});
        const at::Tensor logp = at::log_softmax(out.logits.narrow(1, 0, o.seq - 1).to(at::kFloat), -1);
        const at::Tensor loss = -at::gather(logp, -1, ids.narrow(1, 1, o.seq - 1).unsqueeze(-1)).mean();
        loss.backward();
        opt.reduce_and_clip(1.0);
        const trainer::OptimizerMemory m = opt.memory();
        opt.step(1e-4);
        opt.zero_grad(/*set_to_none=*/true);
        world.barrier();
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        row.mem = m;
    }
    at::Tensor t = at::empty({4}, at::kDouble);
    double* p = t.data_ptr<double>();
    p[0] = static_cast<double>(row.mem.params);
    p[1] = static_cast<double>(row.mem.grads);
    p[2] = static_cast<double>(row.mem.optimizer);
    p[3] = seconds / static_cast<double>(o.steps);
    world.all_reduce(t, dist::ReduceOp::kMax);
    row.mem = {.params = static_cast<int64_t>(p[0]),
               .grads = static_cast<int64_t>(p[1]),
               .optimizer = static_cast<int64_t>(p[2])};
    row.step_s = p[3];
    at::NoGradGuard no_grad;
    for (const trainer::Param& q : params) row.checksum += q.tensor.to(at::kDouble).sum().item<double>();
    return row;
}

int run(int argc, char** argv) {
    dsrl::dist::Bootstrap boot(&argc, &argv);
    Options o;
    const bool go = dsrl::bench::Flags("dsrl_bench_zero")
                        .text("--device", &o.device, "cpu or cuda")
                        .integer("--hidden", &o.hidden, 16, "hidden size")
                        .integer("--layers", &o.layers, 2, "layers (the first dense, the others MoE)")
                        .integer("--experts", &o.experts, 2, "routed experts")
                        .integer("--vocab", &o.vocab, 272, "vocabulary size")
                        .integer("--seq", &o.seq, 2, "tokens per sequence")
                        .integer("--batch", &o.batch, 1, "sequences per rank and step")
                        .integer("--steps", &o.steps, 1, "steps per stage")
                        .parse(argc, argv);
    if (!go) return 0;
    if (o.device != "cpu" && o.device != "cuda") {
        throw dsrl::ConfigError(absl::StrCat("dsrl_bench_zero: --device='", o.device, "' must be cpu or cuda"));
    }
    const c10::Device device =
        o.device == "cuda" && boot.device() >= 0 ? c10::Device(c10::kCUDA, boot.device()) : c10::Device(c10::kCPU);
    if (o.device == "cuda" && !device.is_cuda()) throw dsrl::ConfigError("dsrl_bench_zero: no GPU visible");
    const dsrl::JobConfig job = dsrl::load_job_config(
        "", {absl::StrCat("model.hidden_size=", o.hidden), absl::StrCat("model.num_hidden_layers=", o.layers),
             absl::StrCat("model.n_routed_experts=", o.experts), absl::StrCat("model.vocab_size=", o.vocab),
             absl::StrCat("model.intermediate_size=", 2 * o.hidden),
             absl::StrCat("model.moe_intermediate_size=", o.hidden / 2)});
    const Communicator world = Communicator::world(/*timeout_s=*/600);
    std::vector<Row> rows;
    for (const int64_t stage : {0, 1, 2}) rows.push_back(run_stage(o, job, stage, world, device));
    if (world.rank() != 0) return 0;
    const auto mib = [](int64_t b) { return static_cast<double>(b) / (1 << 20); };
    std::printf("dsrl_bench_zero: %d ranks, %s, hidden %lld, %lld layers, %lld experts, vocab %lld; %.1fM parameters\n",
                world.size(), device.str().c_str(), static_cast<long long>(o.hidden), static_cast<long long>(o.layers),
                static_cast<long long>(o.experts), static_cast<long long>(o.vocab),
                static_cast<double>(rows[0].mem.params) / 4 / 1e6);
    std::printf("%-6s %12s %12s %14s %12s %10s %10s %10s  %s\n", "zero", "params MiB", "grads MiB", "optimizer MiB",
                "total MiB", "vs zero 0", "step ms", "vs zero 0", "weights checksum");
    const double base = static_cast<double>(rows[0].mem.params + rows[0].mem.grads + rows[0].mem.optimizer);
    for (size_t s = 0; s < rows.size(); ++s) {
        const Row& r = rows[s];
        const int64_t total = r.mem.params + r.mem.grads + r.mem.optimizer;
        std::printf("%-6zu %12.2f %12.2f %14.2f %12.2f %10.3f %10.1f %10.2f  %.10e\n", s, mib(r.mem.params),
                    mib(r.mem.grads), mib(r.mem.optimizer), mib(total), static_cast<double>(total) / base,
                    1e3 * r.step_s, r.step_s / rows[0].step_s, r.checksum);
    }
    std::printf(
        "(largest over the ranks; gradients as held after the reduction — during backward every rank "
        "holds all of them)\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
