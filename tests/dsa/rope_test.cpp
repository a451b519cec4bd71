#include "dsa/rope.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

ModelConfig small_config() {
    ModelConfig c;
    c.qk_rope_head_dim = 16;
    c.rope_theta = 10000.0;
    c.rope_scaling.factor = 40.0;
    c.rope_scaling.original_max_position_embeddings = 64;
    return c;
}

TEST(RopeTest, RotationPreservesNormsAndDependsOnlyOnRelativePosition) {
    auto gen = rng::make_cpu_generator(1);
    const RopeTable t = rope_table(small_config());
    EXPECT_DOUBLE_EQ(t.attention_factor, 1.0);  // mscale == mscale_all_dim
    const at::Tensor q = at::randn({16}, gen);
    const at::Tensor k = at::randn({16}, gen);
    auto rot = [&](const at::Tensor& x, int64_t pos, bool interleaved) {
        auto [c, s] = rope_cos_sin(t, at::tensor({pos}, at::kLong));
        return interleaved ? apply_rope_interleaved(x.unsqueeze(0), c, s)[0]
                           : apply_rope_half_split(x.unsqueeze(0), c, s)[0];
    };
    for (const bool interleaved : {true, false}) {
        EXPECT_NEAR(rot(q, 37, interleaved).norm().item<double>(), q.norm().item<double>(), 1e-5);
        const double a = (rot(q, 10, interleaved) * rot(k, 3, interleaved)).sum().item<double>();
        const double b = (rot(q, 107, interleaved) * rot(k, 100, interleaved)).sum().item<double>();
        EXPECT_NEAR(a, b, 1e-4) << "interleaved=" << interleaved;
    }
}

TEST(RopeTest, InterleavedEqualsHalfSplitOnDeinterleavedInput) {
    auto gen = rng::make_cpu_generator(2);
    const RopeTable t = rope_table(small_config());
    const at::Tensor x = at::randn({5, 3, 16}, gen);
    auto [c, s] = rope_cos_sin(t, at::arange(5, at::kLong));
    const at::Tensor inter = apply_rope_interleaved(x, c.unsqueeze(1), s.unsqueeze(1));
    // De-interleave: [x0, x2, ..., x1, x3, ...]
    const at::Tensor evens = x.slice(-1, 0, 16, 2);
    const at::Tensor odds = x.slice(-1, 1, 16, 2);
    const at::Tensor half = apply_rope_half_split(at::cat({evens, odds}, -1), c.unsqueeze(1), s.unsqueeze(1));
    const at::Tensor inter_deinterleaved = at::cat({inter.slice(-1, 0, 16, 2), inter.slice(-1, 1, 16, 2)}, -1);
    EXPECT_ALL_CLOSE("interleaved vs half-split", inter_deinterleaved, half, 1e-6);
}

TEST(RopeTest, SoftmaxScaleFollowsYarnMscale) {
    ModelConfig c;
    c.qk_nope_head_dim = 128;
    c.qk_rope_head_dim = 64;
    c.rope_scaling.factor = 40;
    c.rope_scaling.mscale_all_dim = 1.0;
    const double m = 0.1 * std::log(40.0) + 1.0;
    EXPECT_NEAR(mla_softmax_scale(c), m * m / std::sqrt(192.0), 1e-12);
    c.rope_scaling.type = "none";
    EXPECT_NEAR(mla_softmax_scale(c), 1 / std::sqrt(192.0), 1e-12);
    EXPECT_DOUBLE_EQ(yarn_mscale(1.0, 1.0), 1.0);
}

}  // namespace
}  // namespace dsrl::dsa
