// Expert parallelism (moe/expert_parallel.h) under mpirun -np 2 and 4: with the experts of a layer sharded over
// the ranks, every rank's output and input gradient equal the replicated block's on its tokens, and each rank's
// expert gradients equal the replicated block's gradient of the summed loss of all ranks — also when a rank has
// no tokens. The replicated oracle runs on every rank over all ranks' tokens (gathered).
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include <string>
#include <vector>

#include "core/dist/communicator.h"
#include "core/error.h"
#include "moe/expert_parallel.h"
#include "tests/mpi_test_util.h"

namespace dsrl::moe {
namespace {

using ::dsrl::testing::under_mpi;
using ::dsrl::testing::world;

constexpr int64_t kE = 8, kH = 16, kI = 8, kK = 2;

struct Inputs {
    at::Tensor x, indices, weights, c;  // this rank's tokens; c weighs the outputs in the loss
};

Inputs inputs_of(int rank, int64_t tokens) {
    at::manual_seed(static_cast<uint64_t>(100 + rank));
    Inputs in;
    in.x = at::randn({tokens, kH});
    std::vector<at::Tensor> rows;
    for (int64_t t = 0; t < tokens; ++t) rows.push_back(at::randperm(kE, at::kLong).narrow(0, 0, kK));
    in.indices = tokens > 0 ? at::stack(rows) : at::zeros({0, kK}, at::kLong);
    in.weights = at::rand({tokens, kK});
    in.c = at::randn({tokens, kH});
    return in;
}

SwiGluWeights experts() {
    at::manual_seed(7);  // the same on every rank
    return {(at::randn({kE, kI, kH}) * 0.3).requires_grad_(true), (at::randn({kE, kI, kH}) * 0.3).requires_grad_(true),
            (at::randn({kE, kH, kI}) * 0.3).requires_grad_(true)};
}

void expect_close(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
    ASSERT_EQ(a.sizes(), b.sizes()) << what;
    EXPECT_TRUE(at::allclose(a, b, 1e-5, 1e-6)) << what << ": max diff " << (a - b).abs().max().item<double>();
}

void check_against_replicated(const dist::Communicator& world, int64_t my_tokens) {
    const int rank = world.rank();
    const Inputs in = inputs_of(rank, my_tokens);
    // Expert parallel: this rank's slice of the experts.
    const SwiGluWeights all_ep = experts();
    const ExpertParallel ep{.group = &world, .num_experts = kE};
    const at::Tensor x_ep = in.x.clone().requires_grad_(true);
    const at::Tensor y_ep = routed_experts_ep(x_ep, in.indices, in.weights, ep.local(all_ep), ep);
    (y_ep * in.c).sum().backward();

    // Replicated oracle over every rank's tokens.
    std::vector<int64_t> counts;
    const at::Tensor x_all = world.all_gather_v(in.x, &counts).requires_grad_(true);
    const at::Tensor idx_all = world.all_gather_v(in.indices);
    const at::Tensor w_all = world.all_gather_v(in.weights);
    const at::Tensor c_all = world.all_gather_v(in.c);
    const SwiGluWeights full = experts();
    const at::Tensor y_all = routed_experts(x_all, idx_all, w_all, full);
    (y_all * c_all).sum().backward();
    int64_t first = 0;
    for (int r = 0; r < rank; ++r) first += counts[static_cast<size_t>(r)];

    expect_close(y_ep, y_all.narrow(0, first, my_tokens).detach(), "output");
    if (my_tokens > 0) expect_close(x_ep.grad(), x_all.grad().narrow(0, first, my_tokens), "input gradient");
    const int64_t n = ep.local_experts(), e0 = ep.first_expert();
    for (auto [name, mine, ref] :
         {std::tuple<const char*, at::Tensor, at::Tensor>{"gate_proj", all_ep.gate_proj, full.gate_proj},
          {"up_proj", all_ep.up_proj, full.up_proj},
          {"down_proj", all_ep.down_proj, full.down_proj}}) {
        expect_close(mine.grad().narrow(0, e0, n), ref.grad().narrow(0, e0, n), std::string(name) + " gradient");
        // Experts of other ranks get nothing here.
        EXPECT_EQ(mine.grad().abs().sum().item<double>(), mine.grad().narrow(0, e0, n).abs().sum().item<double>());
    }
}

TEST(ExpertParallelTest, EqualsTheReplicatedBlockForwardAndBackward) {
    if (!under_mpi()) GTEST_SKIP() << "needs mpirun";
    check_against_replicated(world(), 5 + 3 * world().rank());
}

TEST(ExpertParallelTest, ARankWithoutTokensStillExchanges) {
    if (!under_mpi()) GTEST_SKIP() << "needs mpirun";
    check_against_replicated(world(), world().rank() == 1 ? 0 : 6);
}

TEST(ExpertParallelTest, ExpertsMustSplitEvenly) {
    if (!under_mpi()) GTEST_SKIP() << "needs mpirun";
    const ExpertParallel ep{.group = &world(), .num_experts = 3};
    try {
        ep.check();
        ADD_FAILURE() << "no ConfigError";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("dist.expert_parallel_size"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace dsrl::moe
