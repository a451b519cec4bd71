#include "moe/moe_block.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/flip.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <gtest/gtest.h>

#include "core/rng.h"
#include "tests/test_util.h"

namespace dsrl::moe {
namespace {

MoeWeights random_weights(int64_t e, int64_t h, int64_t i, at::Generator& gen, bool shared = true) {
    MoeWeights w;
    w.gate = at::randn({e, h}, gen);
    w.bias = at::randn({e}, gen) * 0.01;
    w.experts = {at::randn({e, i, h}, gen) * 0.3, at::randn({e, i, h}, gen) * 0.3, at::randn({e, h, i}, gen) * 0.3};
    if (shared) w.shared = {at::randn({i, h}, gen) * 0.3, at::randn({i, h}, gen) * 0.3, at::randn({h, i}, gen) * 0.3};
    return w;
}

// Token by token, straight from the formula: the oracle of the grouped implementation.
at::Tensor naive(const at::Tensor& x, const MoeWeights& w, const Route& r) {
    std::vector<at::Tensor> rows;
    for (int64_t t = 0; t < x.size(0); ++t) {
        at::Tensor acc = at::zeros({x.size(1)});
        for (int64_t j = 0; j < r.indices.size(1); ++j) {
            const int64_t e = r.indices[t][j].item<int64_t>();
            acc = acc + r.weights[t][j] * swiglu(x[t].unsqueeze(0), w.experts.gate_proj[e], w.experts.up_proj[e],
                                                 w.experts.down_proj[e])[0];
        }
        if (w.shared.gate_proj.defined()) {
            acc = acc + swiglu(x[t].unsqueeze(0), w.shared.gate_proj, w.shared.up_proj, w.shared.down_proj)[0];
        }
        rows.push_back(acc);
    }
    return at::stack(rows);
}

const RouterOptions kOpt{
    .n_routed_experts = 8, .num_experts_per_tok = 2, .n_group = 2, .topk_group = 1, .routed_scaling_factor = 2.5};

TEST(MoeBlockTest, GroupedExpertsMatchTokenByTokenFormula) {
    auto gen = rng::make_cpu_generator(21);
    const MoeWeights w = random_weights(8, 16, 12, gen);
    const at::Tensor x = at::randn({33, 16}, gen);
    const MoeOutput out = moe_forward(x, w, kOpt);
    EXPECT_ALL_CLOSE("moe y", out.y, naive(x, w, out.route), 1e-5, 1e-5);
    const MoeOutput no_shared = moe_forward(x, random_weights(8, 16, 12, gen, /*shared=*/false), kOpt);
    EXPECT_EQ(no_shared.y.sizes(), x.sizes());
    EXPECT_EQ(moe_forward(x.narrow(0, 0, 0), w, kOpt).y.size(0), 0);
}

TEST(MoeBlockTest, DenseExpertsMatchTheGroupedOnesAndTheFormula) {
    auto gen = rng::make_cpu_generator(23);
    const MoeWeights w = random_weights(8, 16, 12, gen);
    for (const int64_t tokens : {1, 5, 64}) {
        const at::Tensor x = at::randn({tokens, 16}, gen);
        const MoeOutput grouped = moe_forward(x, w, kOpt);
        const MoeOutput dense = moe_forward(x, w, kOpt, {}, nullptr, /*dense=*/true);
        EXPECT_TRUE(at::equal(dense.route.indices, grouped.route.indices));
        EXPECT_ALL_CLOSE("dense moe y", dense.y, grouped.y, 1e-5, 1e-5);
        EXPECT_ALL_CLOSE("dense moe y vs formula", dense.y, naive(x, w, dense.route), 1e-5, 1e-5);
    }
}

// The grouped matmuls (the rollout prefill's path on CUDA) run anywhere _grouped_mm does: on the CPU in fp32 they are
// the loop's sums in another order. Experts no token picks, one token, and no token at all included.
TEST(MoeBlockTest, GroupedMatmulExpertsMatchTheLoop) {
    auto gen = rng::make_cpu_generator(25);
    const MoeWeights w = random_weights(8, 16, 12, gen);
    for (const int64_t tokens : {1, 3, 64}) {
        const at::Tensor x = at::randn({tokens, 16}, gen);
        const Route r = route(x, w.gate, w.bias, kOpt);
        const at::Tensor loop = routed_experts(x, r.indices, r.weights, w.experts);
        const at::Tensor grouped = routed_experts_grouped(x, r.indices, r.weights, w.experts, at::kFloat);
        EXPECT_ALL_CLOSE("grouped vs loop", grouped, loop, 1e-5, 1e-5);
        // Every pair on one expert (the others empty), and the slots in either order.
        const at::Tensor one = at::zeros_like(r.indices) + 5;
        EXPECT_ALL_CLOSE("grouped one expert", routed_experts_grouped(x, one, r.weights, w.experts, at::kFloat),
                         routed_experts(x, one, r.weights, w.experts), 1e-5, 1e-5);
        const at::Tensor flipped = r.indices.flip(1), wflipped = r.weights.flip(1);
        EXPECT_ALL_CLOSE("grouped, slots flipped", routed_experts_grouped(x, flipped, wflipped, w.experts, at::kFloat),
                         loop, 1e-5, 1e-5);
    }
    const at::Tensor none = at::zeros({0, 16});
    EXPECT_EQ(
        routed_experts_grouped(none, at::zeros({0, 2}, at::kLong), at::zeros({0, 2}), w.experts, at::kFloat).sizes(),
        none.sizes());
    EXPECT_THROW(routed_experts_grouped(at::zeros({3, 15}), at::zeros({3, 2}, at::kLong), at::zeros({3, 2}), w.experts,
                                        at::kFloat),
                 c10::Error);
}

TEST(MoeBlockTest, GradientsMatchTheNaiveFormula) {
    auto gen = rng::make_cpu_generator(22);
    MoeWeights w = random_weights(8, 16, 12, gen);
    const at::Tensor x0 = at::randn({9, 16}, gen);
    const at::Tensor up = at::randn({9, 16}, gen);
    auto grads = [&](bool grouped) {
        at::Tensor x = x0.clone().requires_grad_(true);
        MoeWeights v = w;
        v.gate = w.gate.clone().requires_grad_(true);
        v.experts.down_proj = w.experts.down_proj.clone().requires_grad_(true);
        const MoeOutput out = moe_forward(x, v, kOpt);
        const at::Tensor y = grouped ? out.y : naive(x, v, out.route);
        (y * up).sum().backward();
        return std::vector<at::Tensor>{x.grad(), v.gate.grad(), v.experts.down_proj.grad()};
    };
    const auto a = grads(true);
    const auto b = grads(false);
    EXPECT_ALL_CLOSE("dx", a[0], b[0], 1e-5, 1e-5);
    EXPECT_ALL_CLOSE("dgate", a[1], b[1], 1e-5, 1e-5);
    EXPECT_ALL_CLOSE("ddown", a[2], b[2], 1e-5, 1e-5);
}

TEST(MoeBlockTest, ReplayingTheRecordReproducesTheForwardExactly) {
    auto gen = rng::make_cpu_generator(23);
    const MoeWeights w = random_weights(8, 16, 12, gen);
    const at::Tensor x = at::randn({20, 16}, gen);
    const MoeOutput first = moe_forward(x, w, kOpt);
    const MoeOutput replay = moe_forward(x, w, kOpt, decode_route(encode_route(first.route.indices, 8), 8));
    EXPECT_TRUE(at::equal(replay.y, first.y));
    EXPECT_TRUE(at::equal(replay.route.indices, first.route.indices));
}

TEST(MoeBlockTest, RejectsMismatchedExpertWeights) {
    auto gen = rng::make_cpu_generator(24);
    MoeWeights w = random_weights(8, 16, 12, gen);
    w.experts.down_proj = at::randn({8, 15, 12}, gen);
    EXPECT_THROW(moe_forward(at::randn({4, 16}, gen), w, kOpt), c10::Error);
}

}  // namespace
}  // namespace dsrl::moe
