#include "core/rng.h"

#include <ATen/ops/randn.h>
#include <ATen/ops/equal.h>
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

}  // namespace
}  // namespace dsrl::rng
