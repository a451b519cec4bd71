// Sharded optimizer state (trainer/optimizer.h, trainer.zero_stage) on MPI ranks: stages 0, 1 and 2 update the
// same parameters bit for bit from different per-rank gradients; each rank holds only its owners' moments (and at
// ZeRO 2 its owners' gradients); parameters without a gradient anywhere are not touched; a state written at one
// stage loads at another by name. Runs under mpirun -np 2 (and alone, where there is nothing to shard).
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/randn.h>
#include <mpi.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/dist/communicator.h"
#include "core/error.h"
#include "trainer/optimizer.h"

namespace dsrl::trainer {
namespace {

struct Trained {
    std::vector<Param> params;
    std::vector<double> norms;
};

// Five parameters of different sizes (the same values on every rank); gradients differ per rank; "frozen" gets
// none anywhere, "rank0_only" only on rank 0. Three steps, the second with a norm above the clip.
std::vector<Param> make_params() {
    std::vector<Param> p;
    const std::vector<std::vector<int64_t>> shapes = {{64, 16}, {16}, {8, 8}, {32, 4}, {5}, {3, 3}};
    const std::vector<std::string> names = {"big", "norm", "square", "tall", "rank0_only", "frozen"};
    at::manual_seed(11);
    for (size_t i = 0; i < shapes.size(); ++i) {
        p.push_back({names[i], at::randn(shapes[i]).requires_grad_(true), shapes[i].size() > 1, 1.0});
    }
    return p;
}

Trained train(const dist::Communicator* comm, int64_t stage, int rank) {
    Trained run;
    run.params = make_params();
    AdamW opt(run.params, {.weight_decay = 0.1}, {.comm = comm, .zero_stage = stage});
    for (int step = 0; step < 3; ++step) {
        at::manual_seed(100 + 7 * step + rank);
        for (Param& p : run.params) {
            if (p.name == "frozen" || (p.name == "rank0_only" && rank != 0)) continue;
            p.tensor.mutable_grad() = at::randn(p.tensor.sizes()) * (step == 1 ? 10.0 : 0.1);
        }
        const ClipResult c = opt.reduce_and_clip(/*max_norm=*/1.0);
        run.norms.push_back(c.norm);
        EXPECT_TRUE(c.finite);
        opt.step(1e-2);
        if (stage == 2 && comm != nullptr) {
            // Only the owned parameters keep gradients; the frozen one has none anywhere.
            for (size_t i = 0; i < run.params.size(); ++i) {
                EXPECT_EQ(run.params[i].tensor.grad().defined(),
                          opt.owner(i) == comm->rank() && run.params[i].name != "frozen")
                    << run.params[i].name;
            }
        }
        opt.zero_grad(/*set_to_none=*/true);
    }
    return run;
}

TEST(ZeroOptimizerTest, StagesTrainTheSameWeightsBitForBit) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    const dist::Communicator world = initialized ? dist::Communicator::world(60) : dist::Communicator();
    const dist::Communicator* comm = initialized ? &world : nullptr;
    const int rank = comm != nullptr ? comm->rank() : 0;
    const Trained base = train(comm, 0, rank);
    for (const int64_t stage : {1, 2}) {
        SCOPED_TRACE(stage);
        const Trained run = train(comm, stage, rank);
        EXPECT_EQ(run.norms, base.norms);
        for (size_t i = 0; i < base.params.size(); ++i) {
            EXPECT_TRUE(at::equal(run.params[i].tensor, base.params[i].tensor)) << base.params[i].name;
        }
    }
    // A parameter with a gradient on no rank is not updated at all (no weight decay).
    EXPECT_TRUE(at::equal(base.params.back().tensor, make_params().back().tensor));
    // The clip applied: step 2's norm was above 1.
    EXPECT_GT(base.norms[1], 1.0);
}

TEST(ZeroOptimizerTest, EachRankHoldsItsShareAndStatesLoadAcrossStages) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) GTEST_SKIP() << "needs mpirun (the ranks to shard over)";
    const dist::Communicator world = dist::Communicator::world(60);
    std::vector<Param> params = make_params();
    int64_t total = 0;
    for (const Param& p : params) total += p.tensor.numel();
    AdamW full(params, {}, {.comm = &world, .zero_stage = 0});
    AdamW z1(make_params(), {}, {.comm = &world, .zero_stage = 1});
    EXPECT_EQ(full.memory().optimizer, 2 * 4 * total);
    // Owners balance by size: each rank at most its share plus the largest parameter.
    EXPECT_LE(z1.memory().optimizer, 2 * 4 * (total / world.size() + 64 * 16));
    EXPECT_LT(z1.memory().optimizer, full.memory().optimizer);
    // The state written by every rank at ZeRO 1 is the whole state, each name once.
    std::string mine;
    for (const auto& [name, t] : z1.state()) mine += name + "\n";
    std::set<std::string> names;
    size_t count = 0;
    for (const std::string& part : world.all_gather_bytes(mine)) {
        for (size_t a = 0, b; (b = part.find('\n', a)) != std::string::npos; a = b + 1) {
            names.insert(part.substr(a, b - a));
            ++count;
        }
    }
    EXPECT_EQ(count, names.size());
    EXPECT_EQ(names.size(), 2 * params.size());
    // A full state (as ZeRO 0 writes it) loads into a ZeRO 2 optimizer: each rank takes its own parameters.
    std::map<std::string, at::Tensor> state;
    for (const auto& [name, t] : full.state()) state[name] = at::full(t.sizes(), 0.5);
    AdamW z2(make_params(), {}, {.comm = &world, .zero_stage = 2});
    z2.load_state(state, 7, "test");
    EXPECT_EQ(z2.steps(), 7);
    for (const auto& [name, t] : z2.state()) EXPECT_TRUE(at::equal(t, state.at(name))) << name;
    EXPECT_THROW(AdamW(make_params(), {}, {.comm = &world, .zero_stage = 3}), ConfigError);
}

}  // namespace
}  // namespace dsrl::trainer
