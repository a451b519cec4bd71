#include "core/rng.h"

#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>

#include <set>

namespace dsrl::rng {
namespace {

TEST(RngTest, DeriveSeedIsDeterministicAndDistinctPerRankAndStream) {
    EXPECT_EQ(derive_seed(1234, 0, "rollout"), derive_seed(1234, 0, "rollout"));
    std::set<uint64_t> seen;
    for (int64_t rank = 0; rank < 64; ++rank) {
        for (const char* stream : {"default", "rollout", "data", "dropout"}) {
            EXPECT_TRUE(seen.insert(derive_seed(1234, rank, stream)).second) << rank << " " << stream;
        }
    }
    EXPECT_NE(derive_seed(1234, 0, "x"), derive_seed(1235, 0, "x"));
}

TEST(RngTest, GeneratorsFromTheSameSeedDrawTheSameNumbers) {
    auto g1 = make_cpu_generator(derive_seed(7, 3, "rollout"));
    auto g2 = make_cpu_generator(derive_seed(7, 3, "rollout"));
    auto g3 = make_cpu_generator(derive_seed(7, 4, "rollout"));
    const at::Tensor a = at::randn({64}, g1);
    const at::Tensor b = at::randn({64}, g2);
    const at::Tensor c = at::randn({64}, g3);
    EXPECT_TRUE(at::equal(a, b));
    EXPECT_FALSE(at::equal(a, c));
}

TEST(RngTest, SeedDefaultGeneratorsIsReproducible) {
    seed_default_generators(99, 1);
    const at::Tensor a = at::randn({16});
    seed_default_generators(99, 1);
    const at::Tensor b = at::randn({16});
    seed_default_generators(99, 2);
    const at::Tensor c = at::randn({16});
    EXPECT_TRUE(at::equal(a, b));
    EXPECT_FALSE(at::equal(a, c));
}

TEST(RngTest, WeightedIndexFollowsTheWeights) {
    const std::vector<double> w = {1.0, 0.0, 3.0};
    std::vector<int> count(3, 0);
    uint64_t state = 7;
    for (int i = 0; i < 40000; ++i) {
        state = mix64(state + 0x9E3779B97F4A7C15ull);
        ++count[weighted_index(w, state)];
    }
    EXPECT_EQ(count[1], 0);                          // a zero weight is never drawn
    EXPECT_NEAR(count[0] / 40000.0, 0.25, 0.01);     // 1 / 4
    EXPECT_NEAR(count[2] / 40000.0, 0.75, 0.01);     // 3 / 4
    EXPECT_EQ(weighted_index(w, 0), 0u);             // the bottom of [0, 1)
    EXPECT_EQ(weighted_index(w, ~uint64_t{0}), 2u);  // the top
    EXPECT_EQ(weighted_index({2.0}, 12345), 0u);
}

}  // namespace
}  // namespace dsrl::rng
