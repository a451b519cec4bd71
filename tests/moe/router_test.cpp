#include "moe/router.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/zeros.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "core/rng.h"
#include "tests/test_util.h"

namespace dsrl::moe {
namespace {

// Brute-force group-limited top-k for one token, straight from SPEC §2.4.
std::set<int64_t> brute_force(const std::vector<float>& s, const RouterOptions& o) {
    const int64_t per = o.n_routed_experts / o.n_group;
    std::vector<std::pair<float, int64_t>> groups;
    for (int64_t g = 0; g < o.n_group; ++g) {
        std::vector<float> v(s.begin() + g * per, s.begin() + (g + 1) * per);
        std::sort(v.rbegin(), v.rend());
        groups.push_back({v[0] + (per > 1 ? v[1] : 0.f), g});
    }
    std::sort(groups.rbegin(), groups.rend());
    std::vector<std::pair<float, int64_t>> cand;
    for (int64_t i = 0; i < o.topk_group; ++i) {
        const int64_t g = groups[i].second;
        for (int64_t e = g * per; e < (g + 1) * per; ++e) cand.push_back({s[e], e});
    }
    std::sort(cand.rbegin(), cand.rend());
    std::set<int64_t> out;
    for (int64_t i = 0; i < o.num_experts_per_tok; ++i) out.insert(cand[i].second);
    return out;
}

std::set<int64_t> row_set(const at::Tensor& idx, int64_t t) {
    std::set<int64_t> out;
    for (int64_t j = 0; j < idx.size(1); ++j) out.insert(idx[t][j].item<int64_t>());
    return out;
}

const RouterOptions kOpt{.n_routed_experts = 16,
                         .num_experts_per_tok = 3,
                         .n_group = 4,
                         .topk_group = 2,
                         .routed_scaling_factor = 2.5,
                         .norm_topk_prob = true};

TEST(RouterTest, GroupLimitedSelectionMatchesBruteForce) {
    auto gen = rng::make_cpu_generator(3);
    const at::Tensor biased = at::rand({50, 16}, gen);
    const at::Tensor idx = select_experts(biased, kOpt);
    ASSERT_EQ(idx.sizes(), (std::vector<int64_t>{50, 3}));
    for (int64_t t = 0; t < 50; ++t) {
        std::vector<float> s(16);
        for (int64_t e = 0; e < 16; ++e) s[e] = biased[t][e].item<float>();
        EXPECT_EQ(row_set(idx, t), brute_force(s, kOpt)) << "token " << t;
        std::set<int64_t> groups;
        for (int64_t e : row_set(idx, t)) groups.insert(e / 4);
        EXPECT_LE(groups.size(), 2u);
    }
}

TEST(RouterTest, BiasSelectsButDoesNotWeight) {
    auto gen = rng::make_cpu_generator(5);
    const at::Tensor x = at::randn({8, 12}, gen);
    const at::Tensor w = at::randn({16, 12}, gen);
    const RouterOptions opt{
        .n_routed_experts = 16, .num_experts_per_tok = 2, .n_group = 1, .topk_group = 1, .routed_scaling_factor = 2.5};
    at::Tensor bias = at::zeros({16});
    bias[7] = 100.0;  // expert 7 is always selected, whatever its score
    const Route r = route(x, w, bias, opt);
    for (int64_t t = 0; t < 8; ++t) {
        EXPECT_TRUE(row_set(r.indices, t).count(7)) << t;
        // weights come from the unbiased sigmoid scores, normalized, times the scaling factor
        const double s0 = r.scores[t][r.indices[t][0].item<int64_t>()].item<double>();
        const double s1 = r.scores[t][r.indices[t][1].item<int64_t>()].item<double>();
        EXPECT_NEAR(r.weights[t][0].item<double>(), 2.5 * s0 / (s0 + s1), 1e-6);
        EXPECT_NEAR(r.weights[t].sum().item<double>(), 2.5, 1e-5);
    }
}

TEST(RouterTest, ReplayReproducesTheRecordedForwardAndStillTrainsTheRouter) {
    auto gen = rng::make_cpu_generator(9);
    const at::Tensor x = at::randn({20, 12}, gen);
    at::Tensor w = at::randn({16, 12}, gen).requires_grad_(true);
    const at::Tensor bias = at::rand({16}, gen) * 0.1;
    const Route recorded = route(x, w, bias, kOpt);
    const at::Tensor record = encode_route(recorded.indices, 16);
    EXPECT_EQ(record.scalar_type(), at::kByte);
    const Route replayed = route(x, w, bias, kOpt, decode_route(record, 16));
    EXPECT_TRUE(at::equal(replayed.indices, recorded.indices));
    EXPECT_TRUE(at::equal(replayed.weights, recorded.weights));
    // Replay with a changed router: same ids (even where selection would differ), weights follow the new
    // scores, and the gradient reaches the router weight.
    const at::Tensor w2 = (w.detach() + at::randn({16, 12}, gen)).requires_grad_(true);
    const Route moved = route(x, w2, bias, kOpt, recorded.indices);
    EXPECT_TRUE(at::equal(moved.indices, recorded.indices));
    EXPECT_FALSE(at::equal(moved.weights, recorded.weights));
    moved.weights.sum().backward();
    ASSERT_TRUE(w2.grad().defined());
    EXPECT_GT(w2.grad().abs().sum().item<double>(), 0.0);
}

TEST(RouterTest, ReplayRejectsBadIds) {
    const at::Tensor x = at::zeros({2, 12});
    const at::Tensor w = at::zeros({16, 12});
    const at::Tensor bias = at::zeros({16});
    try {
        route(x, w, bias, kOpt, at::full({2, 3}, 16, at::kLong));
        FAIL();
    } catch (const c10::Error& e) {
        EXPECT_THAT(e.what_without_backtrace(), ::testing::HasSubstr("replayed expert ids must be in [0, 16)"));
    }
    EXPECT_THROW(route(x, w, bias, kOpt, at::zeros({2, 2}, at::kLong)), c10::Error);
    EXPECT_THROW(route(x, w, bias,
                       RouterOptions{.n_routed_experts = 16, .num_experts_per_tok = 9, .n_group = 4, .topk_group = 2}),
                 c10::Error);
}

TEST(RouterTest, RouteEncodingUsesUint8UpTo256ExpertsAnd16BitAbove) {
    const at::Tensor small = at::arange(256, at::kLong).view({64, 4});
    EXPECT_TRUE(at::equal(decode_route(encode_route(small, 256), 256), small));
    for (const int64_t experts : {300, 65536}) {
        const at::Tensor big = at::arange(experts - 40, experts, at::kLong).view({10, 4});
        const at::Tensor enc = encode_route(big, experts);
        EXPECT_EQ(enc.element_size(), 2);
        EXPECT_TRUE(at::equal(decode_route(enc, experts), big)) << experts;
    }
}

TEST(RouterTest, BiasUpdateMovesTowardBalance) {
    at::Tensor bias = at::zeros({4});
    const at::Tensor indices = at::tensor({0, 0, 0, 1, 2, 0}, at::kLong).view({3, 2});
    const at::Tensor load = expert_load(indices, 4);
    EXPECT_TRUE(at::equal(load, at::tensor({4, 1, 1, 0}, at::kLong)));
    update_bias(bias, load, 0.001);
    EXPECT_ALL_CLOSE("bias", bias, at::tensor({-0.001f, 0.001f, 0.001f, 0.001f}), 1e-9);
}

TEST(RouterTest, ExpertLoadCountsOnlyValidRows) {
    const at::Tensor indices = at::tensor({0, 1, 2, 3, 0, 3}, at::kLong).view({3, 2});
    const at::Tensor valid = at::tensor({1, 0, 1}, at::kLong);
    EXPECT_TRUE(at::equal(expert_load(indices, 4, valid), at::tensor({2, 1, 0, 1}, at::kLong)));
    EXPECT_TRUE(at::equal(expert_load(indices, 4, at::zeros({3}, at::kBool)), at::zeros({4}, at::kLong)));
    EXPECT_THROW(expert_load(indices, 3), c10::Error);  // id 3 is outside [0, 3): not a silently longer result
    EXPECT_THROW(expert_load(indices, 4, at::ones({2}, at::kBool)), c10::Error);
}

TEST(RouterTest, SequenceBalanceLossMatchesTheDefinition) {
    const int64_t B = 3, L = 5, E = 6, k = 2;
    auto gen = rng::make_cpu_generator(3);
    const at::Tensor scores = at::rand({B, L, E}, gen).requires_grad_(true);
    const at::Tensor indices = std::get<1>(at::topk(at::rand({B, L, E}, gen), k, -1));
    const at::Tensor mask = at::tensor({1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0}, at::kLong).view({B, L});
    const at::Tensor loss = sequence_balance_loss(scores, indices, mask);
    ASSERT_EQ(loss.sizes(), at::IntArrayRef({B}));
    // Loops over the definition: f_e = E/(k·T)·count_e, P_e = mean_t s_te/Σ_j s_tj over the real tokens.
    const at::Tensor s = scores.detach();
    for (int64_t b = 0; b < B; ++b) {
        double t = 0;
        std::vector<double> count(E, 0), share(E, 0);
        for (int64_t l = 0; l < L; ++l) {
            if (mask[b][l].item<int64_t>() == 0) continue;
            t += 1;
            for (int64_t j = 0; j < k; ++j) count[indices[b][l][j].item<int64_t>()] += 1;
            const double total = s[b][l].sum().item<double>();
            for (int64_t e = 0; e < E; ++e) share[e] += s[b][l][e].item<double>() / total;
        }
        double want = 0;
        for (int64_t e = 0; e < E && t > 0; ++e) want += (E / (k * t)) * count[e] * (share[e] / t);
        EXPECT_NEAR(loss[b].item<double>(), want, 1e-6) << "sequence " << b;
    }
    EXPECT_EQ(loss[2].item<double>(), 0.0);  // no real token
    loss.sum().backward();  // differentiable in the scores (the router learns from it), not in the choice
    ASSERT_TRUE(scores.grad().defined());
    EXPECT_GT(scores.grad().abs().sum().item<double>(), 0.0);
    // Perfect balance (every expert chosen equally, equal scores) gives 1.
    const at::Tensor even = at::arange(E, at::kLong).view({1, 3, 2});
    EXPECT_NEAR(sequence_balance_loss(at::ones({1, 3, E}), even, at::ones({1, 3})).item<double>(), 1.0, 1e-6);
}

}  // namespace
}  // namespace dsrl::moe
