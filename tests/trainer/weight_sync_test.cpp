// The trainers' weights to the rollout workers of a disaggregated job (trainer/weight_sync.h), under mpirun: ranks
// [0, T) train, the last rank rolls out. Under -np 2 one trainer holds every expert; under -np 3 two trainers hold
// half the experts each (EP 2) and the rollout worker must end with every weight of the trained model, the routing
// biases included, exactly.
#include <gtest/gtest.h>

#include <ATen/ops/zeros_like.h>

#include "core/rng.h"
#include "dsa/model.h"
#include "dsa/weights.h"
#include "tests/mpi_test_util.h"
#include "tests/test_util.h"
#include "trainer/config.h"
#include "trainer/weight_sync.h"

namespace dsrl::trainer {
namespace {

TEST(WeightSyncTest, RolloutWorkersReceiveEveryWeightFromTheTrainersSlices) {
    if (!testing::under_mpi() || testing::world().size() < 2) GTEST_SKIP() << "needs mpirun -np 2 or more";
    const dist::Communicator& world = testing::world();
    const int rank = world.rank();
    const int trainers = world.size() - 1;
    const int64_t p = trainers % 2 == 0 ? 2 : 1;
    const bool rollout = rank >= trainers;
    JobConfig job;
    // The trained weights (every rank knows them, as the oracle) with a routing bias that is not its initial zeros.
    dsa::Model trained = dsa::Model::random(job.model, 6, at::kCPU);
    for (dsa::LayerWeights& l : trained.weights().layers) {
        if (l.is_moe) l.moe.bias.fill_(0.25);
    }
    // Every rank starts from other weights; the trainers then hold the trained ones, each its experts' slice.
    dsa::Model model = dsa::Model::random(job.model, 5, at::kCPU);
    const dist::Communicator ep = world.split("ep", rollout ? -1 : static_cast<int>(rank / p), rank);
    if (!rollout && p > 1) model.set_expert_parallel({.group = &ep});
    const std::vector<dsa::NamedTensor> want = trained.named_tensors();
    std::vector<dsa::NamedTensor> have = model.named_tensors();
    ASSERT_EQ(have.size(), want.size());
    const int64_t experts = job.model.n_routed_experts;
    if (!rollout) {
        for (size_t i = 0; i < have.size(); ++i) {
            at::Tensor src = *want[i].tensor;
            if (dsa::is_routed_experts(want[i].name) && p > 1)
                src = src.narrow(0, (rank % p) * (experts / p), experts / p);
            have[i].tensor->copy_(src);
        }
    }

    const WeightSync sync(world, trainers, p);
    sync.broadcast(model);

    // A rollout worker: every weight, whole; a trainer: its own, unchanged.
    for (size_t i = 0; i < have.size(); ++i) {
        at::Tensor expected = *want[i].tensor;
        if (!rollout && dsa::is_routed_experts(want[i].name) && p > 1)
            expected = expected.narrow(0, (rank % p) * (experts / p), experts / p);
        EXPECT_ALL_CLOSE(want[i].name, *have[i].tensor, expected, 0);
    }
}

}  // namespace
}  // namespace dsrl::trainer
