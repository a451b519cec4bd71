// MoE balance in training (trainer/moe_balance.h, issue 25 item 1): the routing-bias update uses the expert loads
// of every rank's real tokens (one rank alone, and under mpirun -np 2 with different tokens per rank), leaves the
// bias alone when no forward trained the MoE, reports the load metrics, and the sequence-wise balance loss reaches
// the router's weights.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/sign.h>
#include <ATen/ops/zeros.h>

#include <absl/strings/str_cat.h>

#include <map>
#include <string>
#include <vector>

#include "core/rng.h"
#include "dsa/model.h"
#include "moe/router.h"
#include "tests/mpi_test_util.h"
#include "trainer/moe_balance.h"

namespace dsrl::trainer {
namespace {

const dist::Communicator& job_comm() {
    static const dist::Communicator none;
    return testing::under_mpi() ? testing::world() : none;
}

int job_rank() { return testing::under_mpi() ? testing::world().rank() : 0; }

// A batch of 3 sequences, the second left-padded by 4 and the third right-padded by 2; tokens differ per rank.
dsa::ForwardInput batch_of(const dsa::Model& model, int rank) {
    auto gen = rng::make_cpu_generator(40 + static_cast<uint64_t>(rank));
    const at::Tensor ids = at::randint(model.config().vocab_size, {3, 12}, gen);
    at::Tensor mask = at::ones({3, 12}, at::kLong);
    mask[1].narrow(0, 0, 4).zero_();
    mask[2].narrow(0, 10, 2).zero_();
    return {ids, mask};
}

std::vector<at::Tensor> biases(const dsa::Model& model) {
    std::vector<at::Tensor> out;
    for (const auto& l : model.weights().layers) {
        if (l.is_moe) out.push_back(l.moe.bias.clone());
    }
    return out;
}

TEST(ExpertBalanceTest, BiasMovesAgainstTheLoadOfEveryRanksRealTokens) {
    JobConfig job;
    dsa::Model model = dsa::Model::random(job.model, 5, at::kCPU);
    const std::vector<at::Tensor> before = biases(model);
    ASSERT_FALSE(before.empty()) << "the default model has MoE layers";
    const MoeTrainConfig cfg{.bias_update_speed = 0.01};
    ExpertBalance balance(model, cfg, job_comm());
    ASSERT_NE(balance.tracker(), nullptr);
    const int rank = job_rank();
    const dsa::ForwardInput in = batch_of(model, rank);
    const dsa::ForwardOutput out = model.forward(in, {.return_routes = true, .balance = balance.tracker()});
    ASSERT_EQ(out.routes.size(), before.size());

    // The oracle: this rank's loads from the returned routes over the real tokens, summed over the ranks.
    const int64_t experts = model.config().n_routed_experts;
    std::vector<at::Tensor> want;
    for (const at::Tensor& r : out.routes) {
        at::Tensor load = moe::expert_load(r.reshape({-1, r.size(2)}), experts, in.attention_mask.flatten());
        EXPECT_EQ(load.sum().item<int64_t>(), in.attention_mask.sum().item<int64_t>() * r.size(2));
        if (testing::under_mpi()) testing::world().all_reduce(load);
        want.push_back(load);
    }
    balance.after_step();
    const std::vector<at::Tensor> after = biases(model);
    std::map<std::string, double> m;
    balance.take_metrics(m);
    size_t j = 0;
    for (size_t layer = 0; layer < model.weights().layers.size(); ++layer) {
        if (!model.weights().layers[layer].is_moe) continue;
        const at::Tensor l = want[j].to(at::kFloat);
        const at::Tensor expected = before[j] - at::sign(l - l.mean()) * 0.01;
        EXPECT_TRUE(at::allclose(after[j], expected, 0, 1e-7)) << "MoE layer " << layer;
        EXPECT_FALSE(at::equal(after[j], before[j])) << "the random batch is not perfectly balanced";
        const std::string prefix = absl::StrCat("moe/layer", layer, "/");
        ASSERT_TRUE(m.count(prefix + "max_load")) << prefix;
        EXPECT_NEAR(m[prefix + "max_load"], l.max().item<double>() / l.mean().item<double>(), 1e-9);
        EXPECT_EQ(m[prefix + "idle_experts"], l.eq(0).sum().item<double>());
        if (testing::under_mpi()) {  // every rank holds the same bias
            const at::Tensor all = testing::world().all_gather(after[j]);
            for (int r = 1; r < testing::world().size(); ++r) EXPECT_TRUE(at::equal(all[r], all[0]));
        }
        ++j;
    }
    EXPECT_TRUE(m.count("moe/max_load") && m.count("moe/idle_experts"));
    EXPECT_EQ(m.count("moe/seq_aux_loss"), 0u) << "no balance loss was configured";
    // Metrics are taken once; a step whose forwards tracked nothing (the indexer warm-up) changes nothing.
    std::map<std::string, double> again;
    balance.after_step();
    balance.take_metrics(again);
    EXPECT_TRUE(again.empty());
    const std::vector<at::Tensor> unchanged = biases(model);
    for (size_t k = 0; k < after.size(); ++k) EXPECT_TRUE(at::equal(unchanged[k], after[k]));
}

TEST(ExpertBalanceTest, SpeedZeroKeepsTheBiasButReportsLoads) {
    JobConfig job;
    dsa::Model model = dsa::Model::random(job.model, 6, at::kCPU);
    const std::vector<at::Tensor> before = biases(model);
    ExpertBalance balance(model, {}, job_comm());
    model.forward(batch_of(model, job_rank()), {.balance = balance.tracker()});
    balance.after_step();
    std::map<std::string, double> m;
    balance.take_metrics(m);
    EXPECT_GE(m.at("moe/max_load"), 1.0);
    const std::vector<at::Tensor> after = biases(model);
    for (size_t k = 0; k < after.size(); ++k) EXPECT_TRUE(at::equal(after[k], before[k]));
}

TEST(ExpertBalanceTest, BalanceLossReachesTheRouterWeights) {
    JobConfig job;
    dsa::Model model = dsa::Model::random(job.model, 7, at::kCPU);
    ExpertBalance balance(model, {.seq_aux_loss_alpha = 0.5}, job_comm());
    std::vector<at::Tensor*> gates;
    for (auto& l : model.weights().layers) {
        if (l.is_moe) gates.push_back(&l.moe.gate);
    }
    for (at::Tensor* g : gates) g->requires_grad_(true);
    const dsa::ForwardInput in = batch_of(model, job_rank());
    const dsa::ForwardOutput out = model.forward(in, {.return_routes = true, .balance = balance.tracker()});
    ASSERT_TRUE(balance.tracker()->aux_loss.defined());
    // The balance loss alone (its value against the definition: RouterTest.SequenceBalanceLossMatchesTheDefinition).
    const at::Tensor zero = out.logits.sum() * 0.0;
    const at::Tensor total = balance.tracker()->add_aux_loss(zero);
    EXPECT_FALSE(balance.tracker()->aux_loss.defined()) << "taken once";
    EXPECT_GT(total.item<double>(), 0.0);
    total.backward();
    for (at::Tensor* g : gates) {
        ASSERT_TRUE(g->grad().defined());
        EXPECT_GT(g->grad().abs().sum().item<double>(), 0.0);
    }
    std::map<std::string, double> m;
    balance.take_metrics(m);
    EXPECT_NEAR(m.at("moe/seq_aux_loss"), total.item<double>(), 1e-6);
}

}  // namespace
}  // namespace dsrl::trainer
