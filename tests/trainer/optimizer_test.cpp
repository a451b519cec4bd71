// The optimizer (issue 8): AdamW against libtorch's torch::optim::AdamW as the oracle, the schedule, clipping
// and non-finite detection, and bit-exact continuation from saved state.
#include <gtest/gtest.h>

#include <torch/optim/adamw.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/randn.h>

#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "tests/test_util.h"
#include "trainer/optimizer.h"

namespace dsrl::trainer {
namespace {

std::vector<Param> make_params(uint64_t seed) {
    at::Generator gen = rng::make_cpu_generator(seed);
    return {{"w", at::randn({5, 4}, gen).requires_grad_(true)}, {"b", at::randn({4}, gen).requires_grad_(true)}};
}

void fill_grads(std::vector<Param>& ps, int step) {
    at::Generator gen = rng::make_cpu_generator(100 + step);
    for (Param& p : ps) p.tensor.mutable_grad() = at::randn(p.tensor.sizes(), gen);
}

TEST(OptimizerTest, AdamWMatchesTorchOptimAdamW) {
    std::vector<Param> ours = make_params(1), theirs = make_params(1);
    AdamW opt(ours, {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1});
    std::vector<at::Tensor> tp;
    for (Param& p : theirs) tp.push_back(p.tensor);
    torch::optim::AdamW oracle(tp, torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
    for (int step = 0; step < 6; ++step) {
        fill_grads(ours, step);
        fill_grads(theirs, step);
        opt.step(1e-2);
        oracle.step();
    }
    for (size_t i = 0; i < ours.size(); ++i) EXPECT_ALL_CLOSE(ours[i].name, ours[i].tensor, theirs[i].tensor, 1e-6);
}

// A stage boundary: after reset_state the optimizer continues exactly like a new AdamW over the same weights.
TEST(OptimizerTest, ResetStateActsLikeAFreshOptimizer) {
    std::vector<Param> a = make_params(3);
    AdamW opt(a, {.weight_decay = 0.1});
    for (int step = 0; step < 4; ++step) {
        fill_grads(a, step);
        opt.step(1e-2);
    }
    opt.reset_state();
    EXPECT_EQ(opt.steps(), 0);
    std::vector<Param> b;
    for (const Param& p : a) b.push_back({p.name, p.tensor.detach().clone().requires_grad_(true), p.decay});
    AdamW fresh(b, {.weight_decay = 0.1});
    for (int step = 10; step < 13; ++step) {
        fill_grads(a, step);
        fill_grads(b, step);
        opt.step(1e-2);
        fresh.step(1e-2);
    }
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i].tensor, b[i].tensor)) << a[i].name;
    EXPECT_EQ(opt.steps(), 3);
}

TEST(OptimizerTest, LrScaleActsAsAParameterGroupAndDroppedGradsFreeze) {
    // Parameter "w" at lr 1e-2 · 0.5 equals torch's AdamW at lr 5e-3; "b" keeps lr 1e-2.
    std::vector<Param> ours = make_params(3), half = make_params(3), full = make_params(3);
    AdamW opt(ours, {.weight_decay = 0.1});
    opt.set_lr_scales([](const std::string& name) { return name == "w" ? 0.5 : 1.0; });
    AdamW a(half, {.weight_decay = 0.1}), b(full, {.weight_decay = 0.1});
    for (int step = 0; step < 4; ++step) {
        fill_grads(ours, step);
        fill_grads(half, step);
        fill_grads(full, step);
        opt.step(1e-2);
        a.step(5e-3);
        b.step(1e-2);
    }
    EXPECT_ALL_CLOSE("w", ours[0].tensor, half[0].tensor, 1e-7);
    EXPECT_ALL_CLOSE("b", ours[1].tensor, full[1].tensor, 1e-7);
    // zero_grad(set_to_none): the next step leaves the parameter exactly as it is (moments and decay too).
    opt.zero_grad(/*set_to_none=*/true);
    EXPECT_FALSE(ours[0].tensor.grad().defined());
    const at::Tensor before = ours[0].tensor.detach().clone();
    ours[1].tensor.mutable_grad() = at::ones_like(ours[1].tensor);
    opt.step(1e-2);
    EXPECT_TRUE(at::equal(ours[0].tensor, before));
}

TEST(OptimizerTest, NoDecayForNormsAndBiases) {
    const at::Tensor mat = at::randn({3, 3}), vec = at::randn({3});
    EXPECT_TRUE(decays("model.layers.0.self_attn.q_a_proj.weight", mat));
    EXPECT_FALSE(decays("model.layers.0.input_layernorm.weight", vec));
    EXPECT_FALSE(decays("model.layers.0.self_attn.indexer.k_norm.bias", vec));
    EXPECT_FALSE(decays("model.layers.1.mlp.gate.e_score_correction_bias", vec));
}

TEST(OptimizerTest, ScheduleWarmsUpThenDecays) {
    OptimizerConfig c;
    c.lr = 1.0;
    c.min_lr_ratio = 0.1;
    c.warmup_steps = 4;
    EXPECT_DOUBLE_EQ(lr_at(c, 0, 100), 0.25);
    EXPECT_DOUBLE_EQ(lr_at(c, 3, 100), 1.0);
    EXPECT_DOUBLE_EQ(lr_at(c, 4, 100), 1.0);
    EXPECT_NEAR(lr_at(c, 52, 100), 0.55, 1e-12);  // halfway through the cosine
    EXPECT_NEAR(lr_at(c, 100, 100), 0.1, 1e-12);
    c.schedule = LrSchedule::kConstant;
    EXPECT_DOUBLE_EQ(lr_at(c, 80, 100), 1.0);
}

TEST(OptimizerTest, ClippingScalesToMaxNormAndReportsNonFinite) {
    std::vector<Param> ps = make_params(2);
    fill_grads(ps, 0);
    const double before =
        std::sqrt(ps[0].tensor.grad().pow(2).sum().item<double>() + ps[1].tensor.grad().pow(2).sum().item<double>());
    const ClipResult r = clip_grad_norm(ps, 0.5);
    EXPECT_NEAR(r.norm, before, 1e-5);
    EXPECT_TRUE(r.finite);
    const double after =
        std::sqrt(ps[0].tensor.grad().pow(2).sum().item<double>() + ps[1].tensor.grad().pow(2).sum().item<double>());
    EXPECT_NEAR(after, 0.5, 1e-5);
    ps[1].tensor.mutable_grad()[0] = NAN;
    const at::Tensor kept = ps[0].tensor.grad().clone();
    EXPECT_FALSE(clip_grad_norm(ps, 0.5).finite);
    EXPECT_TRUE(ps[0].tensor.grad().equal(kept)) << "nothing is scaled when the step will be skipped";
}

TEST(OptimizerTest, SavedStateContinuesBitForBit) {
    std::vector<Param> a = make_params(3);
    AdamW opt_a(a, {});
    for (int s = 0; s < 3; ++s) {
        fill_grads(a, s);
        opt_a.step(1e-2);
    }
    // Snapshot (as a checkpoint would), then continue both the original and a restored copy.
    std::vector<Param> b;
    for (const Param& p : a) b.push_back({p.name, p.tensor.detach().clone().requires_grad_(true), p.decay});
    AdamW opt_b(b, {});
    std::map<std::string, at::Tensor> state;
    for (auto& [k, v] : opt_a.state()) state[k] = v.clone();
    opt_b.load_state(state, opt_a.steps(), "test");
    for (int s = 3; s < 6; ++s) {
        fill_grads(a, s);
        fill_grads(b, s);
        opt_a.step(1e-2);
        opt_b.step(1e-2);
    }
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(a[i].tensor.equal(b[i].tensor)) << a[i].name;
    state.erase("exp_avg.w");
    EXPECT_THROW(opt_b.load_state(state, 3, "ckpt/optimizer.safetensors"), CheckpointError);
}

}  // namespace
}  // namespace dsrl::trainer
