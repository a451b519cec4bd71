// Foundation pieces under mpirun (-np 2 and 3): every rank derives distinct seeds from the same base, the
// same rank always derives the same seed, and the logger prefixes each rank's lines with its rank.
#include <mpi.h>

#include <ATen/ops/randn.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "core/logging.h"
#include "core/rng.h"

namespace dsrl {
namespace {

int world_rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}
int world_size() {
    int n = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
}

TEST(MpiFoundationTest, RanksDeriveDistinctReproducibleStreams) {
    const int rank = world_rank();
    const int size = world_size();
    ASSERT_GE(size, 2) << "run under mpirun -np >= 2";
    // Each rank's first draw from its "rollout" stream, gathered everywhere.
    auto gen = rng::make_cpu_generator(rng::derive_seed(1234, rank, "rollout"));
    const double mine = at::randn({1}, gen).item<double>();
    std::vector<double> all(size);
    MPI_Allgather(&mine, 1, MPI_DOUBLE, all.data(), 1, MPI_DOUBLE, MPI_COMM_WORLD);
    EXPECT_EQ(std::set<double>(all.begin(), all.end()).size(), static_cast<size_t>(size));
    // Every rank can recompute any other rank's stream (what exact resume relies on).
    for (int r = 0; r < size; ++r) {
        auto g = rng::make_cpu_generator(rng::derive_seed(1234, r, "rollout"));
        EXPECT_EQ(at::randn({1}, g).item<double>(), all[r]) << "rank " << r;
    }
}

TEST(MpiFoundationTest, LogLinesCarryTheRank) {
    const int rank = world_rank();
    log::set_rank(rank);
    EXPECT_THAT(log::prefix(log::Level::kWarn), ::testing::HasSubstr("[rank " + std::to_string(rank) + "] W "));
    log::set_level(log::Level::kInfo);
    EXPECT_EQ(log::enabled(log::Level::kInfo), rank == 0);  // info from rank 0 only, by default
    EXPECT_TRUE(log::enabled(log::Level::kWarn));
    log::set_rank(-1);
}

}  // namespace
}  // namespace dsrl
