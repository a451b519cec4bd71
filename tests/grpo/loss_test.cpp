// The GRPO objective (issue 6): hand-computed terms, a scalar reference implementation, finite-difference
// gradients, each stabilizer acting, and edge cases.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "grpo/loss.h"
#include "tests/test_util.h"

namespace dsrl::grpo {
namespace {

TEST(AdvantagesTest, GroupMeanWithoutStdFailedSamplesAndDegenerateGroups) {
    const float nan = std::nanf("");
    const at::Tensor r = at::tensor(std::vector<float>{1, 0, 1, 0, 2, 2, nan, 1, 3});
    const at::Tensor g = at::tensor(std::vector<int64_t>{0, 0, 0, 0, 1, 1, 2, 2, 3});
    const Advantages a = compute_advantages(r, g, AdvNorm::kNone);
    EXPECT_ALL_CLOSE("adv", a.adv, at::tensor(std::vector<float>{.5, -.5, .5, -.5, 0, 0, 0, 0, 0}), 1e-7);
    EXPECT_TRUE(a.contributes.to(at::kLong).equal(at::tensor(std::vector<int64_t>{1, 1, 1, 1, 1, 1, 0, 0, 0})));
    EXPECT_EQ(a.failed_samples, 1);
    EXPECT_EQ(a.dropped_groups, 2);  // group 2 (one valid) and group 3 (one sample)
    const Advantages s = compute_advantages(r, g, AdvNorm::kStd);
    EXPECT_NEAR(s.adv[0].item<float>(), 0.5 / (std::sqrt(1.0 / 3.0) + 1e-6), 1e-5);  // sample std of {1,0,1,0}
    EXPECT_EQ(s.adv[4].item<float>(), 0.0f);  // equal rewards: zero advantage, not NaN
    EXPECT_THROW(compute_advantages(at::tensor(std::vector<float>{1, INFINITY}), at::tensor(std::vector<int64_t>{0, 0}),
                                    AdvNorm::kNone),
                 DataError);
}

TEST(GrpoLossTest, OneTokenByHand) {
    // r = 0.5/0.4 = 1.25 clipped to 1.2 (A > 0); KL = r·(0.6/0.5 − ln(0.6/0.5) − 1).
    const auto t = [](double v) { return at::tensor(std::vector<double>{v}).view({1, 1}); };
    LossInputs in{.logp = t(std::log(0.5)),
                  .logp_old = t(std::log(0.4)),
                  .logp_ref = t(std::log(0.6)),
                  .valid = t(1),
                  .adv = at::tensor(std::vector<double>{1.0}),
                  .beta = at::tensor(std::vector<double>{0.1})};
    const LossOutput out = grpo_loss(in, {.eps_low = 0.2, .eps_high = 0.2});
    const double kl = 1.25 * (1.2 - std::log(1.2) - 1);
    EXPECT_NEAR(out.metrics.at("kl_mean"), kl, 1e-6);
    EXPECT_NEAR(out.loss.item<double>(), -(1.2 - 0.1 * kl), 1e-6);
    EXPECT_EQ(out.metrics.at("clip_frac"), 1.0);
    EXPECT_EQ(out.metrics.at("clip_high_frac"), 1.0);
    EXPECT_NEAR(out.metrics.at("ratio_max"), 1.25, 1e-6);
}

// Scalar reference of SPEC §5 (independent loops, double precision).
double reference_loss(const at::Tensor& lp,
                      const at::Tensor& old,
                      const at::Tensor& ref,
                      const at::Tensor& valid,
                      const at::Tensor& adv,
                      const at::Tensor& beta,
                      const LossOptions& o) {
    const int64_t n = lp.size(0), T = lp.size(1);
    double total = 0, weight = 0;
    for (int64_t i = 0; i < n; ++i) {
        double len = 0, stat = 0, sum = 0;
        for (int64_t t = 0; t < T; ++t) {
            if (valid[i][t].item<double>() == 0) continue;
            len += 1;
            stat += old[i][t].item<double>() - lp[i][t].item<double>();
        }
        if (len == 0) continue;
        const double A = adv[i].item<double>();
        const double M = (o.off_policy_mask && A < 0 && stat / len > o.delta) ? 0.0 : 1.0;
        for (int64_t t = 0; t < T; ++t) {
            if (valid[i][t].item<double>() == 0) continue;
            const double r = std::exp(lp[i][t].item<double>() - old[i][t].item<double>());
            const double d = ref[i][t].item<double>() - lp[i][t].item<double>();
            const double clipped = std::clamp(r, 1 - o.eps_low, 1 + o.eps_high);
            sum += std::min(r * A, clipped * A) * M - beta[i].item<double>() * r * (std::exp(d) - d - 1);
        }
        if (o.agg == LossAgg::kSeqMean) {
            total += sum / len;
            weight += 1;
        } else {
            total += sum;
            weight += len;
        }
    }
    return -total / weight;
}

struct Batch {
    at::Tensor lp, old, ref, valid, adv, beta;
};

Batch random_batch(uint64_t seed) {
    at::Generator gen = rng::make_cpu_generator(seed);
    Batch b;
    b.lp = (at::randn({5, 7}, gen, at::kDouble) * 0.3 - 1.5).requires_grad_(true);
    b.old = b.lp.detach() + at::randn({5, 7}, gen, at::kDouble) * 0.25;
    b.ref = b.lp.detach() + at::randn({5, 7}, gen, at::kDouble) * 0.2;
    b.valid = at::ones({5, 7}, at::kDouble);
    b.valid[1].narrow(0, 3, 4).fill_(0);  // length 3
    b.valid[2].narrow(0, 1, 6).fill_(0);  // length 1
    b.adv = at::randn({5}, gen, at::kDouble);
    b.beta = at::rand({5}, gen, at::kDouble) * 0.1;
    return b;
}

TEST(GrpoLossTest, MatchesTheScalarReferenceForEveryOption) {
    for (const LossAgg agg : {LossAgg::kSeqMean, LossAgg::kTokenMean}) {
        for (const bool mask : {true, false}) {
            for (uint64_t seed = 1; seed <= 3; ++seed) {
                const Batch b = random_batch(seed);
                const LossOptions o{
                    .eps_low = 0.2, .eps_high = 0.28, .delta = 0.05, .off_policy_mask = mask, .agg = agg};
                const LossOutput out = grpo_loss({b.lp, b.old, b.ref, b.valid, b.adv, {}, b.beta}, o);
                EXPECT_NEAR(out.loss.item<double>(), reference_loss(b.lp, b.old, b.ref, b.valid, b.adv, b.beta, o),
                            1e-6)
                    << "agg " << static_cast<int>(agg) << " mask " << mask << " seed " << seed;
            }
        }
    }
}

// Data-parallel normalization: two halves of a batch, each divided by (the whole batch's count) / 2 as two
// ranks would, average to the whole batch's loss — for both aggregations, with uneven lengths and a
// non-contributing sequence; the default (no denominator) equals dividing by loss_denominator of the batch.
TEST(GrpoLossTest, GlobalDenominatorMakesRankHalvesAverageToTheWholeBatch) {
    for (const LossAgg agg : {LossAgg::kSeqMean, LossAgg::kTokenMean}) {
        const Batch b = random_batch(11);
        const at::Tensor contributes = at::tensor({1, 1, 0, 1, 1}, at::kLong).to(at::kBool);
        const LossOptions o{.eps_low = 0.2, .eps_high = 0.28, .delta = 0.05, .agg = agg};
        const double whole =
            grpo_loss({b.lp, b.old, b.ref, b.valid, b.adv, contributes, b.beta}, o).loss.item<double>();
        const double count = loss_denominator(b.valid, contributes, agg);
        LossOptions with = o;
        with.denominator = count;
        EXPECT_NEAR(grpo_loss({b.lp, b.old, b.ref, b.valid, b.adv, contributes, b.beta}, with).loss.item<double>(),
                    whole, 1e-12);
        with.denominator = count / 2;  // 2 ranks
        double mean_of_halves = 0;
        for (const auto& [start, len] : {std::pair<int64_t, int64_t>{0, 2}, {2, 3}}) {
            const auto part = [&](const at::Tensor& x) { return x.narrow(0, start, len); };
            mean_of_halves += grpo_loss({part(b.lp), part(b.old), part(b.ref), part(b.valid), part(b.adv),
                                         part(contributes), part(b.beta)},
                                        with)
                                  .loss.item<double>() /
                              2;
        }
        EXPECT_NEAR(mean_of_halves, whole, 1e-12) << "agg " << static_cast<int>(agg);
    }
}

TEST(GrpoLossTest, GradientMatchesFiniteDifferences) {
    const Batch b = random_batch(7);
    const LossOptions o{.eps_low = 0.2, .eps_high = 0.28, .delta = 0.05};
    const auto f = [&](const at::Tensor& lp) {
        return grpo_loss({lp, b.old, b.ref, b.valid, b.adv, {}, b.beta}, o).loss;
    };
    const at::Tensor grad = torch::autograd::grad({f(b.lp)}, {b.lp})[0];
    const double h = 1e-6;
    at::Tensor fd = at::zeros_like(grad);
    for (int64_t i = 0; i < 5; ++i) {
        for (int64_t t = 0; t < 7; ++t) {
            at::Tensor plus = b.lp.detach().clone(), minus = b.lp.detach().clone();
            plus[i][t] += h;
            minus[i][t] -= h;
            fd[i][t] = (f(plus).item<double>() - f(minus).item<double>()) / (2 * h);
        }
    }
    EXPECT_ALL_CLOSE("d loss / d logp", grad, fd, 1e-6);
    EXPECT_EQ(grad[2].narrow(0, 1, 6).abs().sum().item<double>(), 0.0) << "padding gets no gradient";
}

TEST(GrpoLossTest, OffPolicyMaskedSequenceKeepsOnlyItsKlGradient) {
    Batch b = random_batch(11);
    // Sequence 0: negative advantage and π_old above π_θ on average (mean log(π_old/π_θ) = 0.2 > δ), driven
    // by one token; the others sit inside the clip range, where the policy term would have a gradient.
    b.adv[0] = -1.0;
    const at::Tensor lp0 = b.lp.detach().clone();
    b.old[0] = lp0[0] - 0.1;
    b.old[0][0] = lp0[0][0] + 2.0;
    const LossOptions o{.delta = 0.1};
    const LossOutput out = grpo_loss({b.lp, b.old, b.ref, b.valid, b.adv, {}, b.beta}, o);
    EXPECT_GE(out.metrics.at("masked_seq_frac"), 0.2 - 1e-9);
    EXPECT_EQ(out.seq_mask[0].item<float>(), 0.0f);
    const at::Tensor grad = torch::autograd::grad({out.loss}, {b.lp})[0];
    // The same sequence with zero advantage has no policy term at all: identical gradient (its KL term only).
    at::Tensor adv0 = b.adv.clone();
    adv0[0] = 0.0;
    const at::Tensor lp2 = lp0.clone().requires_grad_(true);
    const at::Tensor grad_kl_only =
        torch::autograd::grad({grpo_loss({lp2, b.old, b.ref, b.valid, adv0, {}, b.beta}, o).loss}, {lp2})[0];
    EXPECT_ALL_CLOSE("masked sequence gradient", grad[0], grad_kl_only[0], 1e-12);
    EXPECT_GT(grad[0].abs().sum().item<double>(), 0) << "its KL term still acts";
    // Without masking the policy term would act.
    const at::Tensor lp3 = lp0.clone().requires_grad_(true);
    const LossOptions no_mask{.delta = 0.1, .off_policy_mask = false};
    const at::Tensor grad_unmasked =
        torch::autograd::grad({grpo_loss({lp3, b.old, b.ref, b.valid, b.adv, {}, b.beta}, no_mask).loss}, {lp3})[0];
    EXPECT_GT((grad_unmasked[0] - grad[0]).abs().max().item<double>(), 1e-3);
}

TEST(GrpoLossTest, KlGradientIsRatioTimesLogRatioToTheReference) {
    const Batch b = random_batch(13);
    const at::Tensor zero_adv = at::zeros({5}, at::kDouble);
    const LossOutput out = grpo_loss({b.lp, b.old, b.ref, b.valid, zero_adv, {}, b.beta}, {});
    const at::Tensor grad = torch::autograd::grad({out.loss}, {b.lp})[0];
    // loss = mean_i (1/|o_i|) Σ_t β_i·KL_it  ⇒  d/dlogp_it = β_i/(N·|o_i|) · r_it · (logp_it − logp_ref_it).
    const at::Tensor lens = b.valid.sum(1, true);
    const at::Tensor r = (b.lp.detach() - b.old).exp();
    const at::Tensor expected = b.beta.unsqueeze(1) / (5 * lens) * r * (b.lp.detach() - b.ref) * b.valid;
    EXPECT_ALL_CLOSE("KL gradient", grad, expected, 1e-12);
}

TEST(GrpoLossTest, EdgeCases) {
    Batch b = random_batch(17);
    // All-equal rewards in every group: zero advantages, the policy term vanishes.
    const LossOutput zero = grpo_loss({b.lp, b.old, b.ref, b.valid, at::zeros({5}, at::kDouble), {}, {}}, {});
    EXPECT_EQ(zero.loss.item<double>(), 0.0);
    // Sequences that do not contribute are left out of the mean.
    const at::Tensor only_first = at::tensor(std::vector<int64_t>{1, 0, 0, 0, 0}).to(at::kBool);
    const LossOutput one = grpo_loss({b.lp, b.old, b.ref, b.valid, b.adv, only_first, b.beta}, {});
    const LossOutput first = grpo_loss({b.lp.narrow(0, 0, 1),
                                        b.old.narrow(0, 0, 1),
                                        b.ref.narrow(0, 0, 1),
                                        b.valid.narrow(0, 0, 1),
                                        b.adv.narrow(0, 0, 1),
                                        {},
                                        b.beta.narrow(0, 0, 1)},
                                       {});
    EXPECT_NEAR(one.loss.item<double>(), first.loss.item<double>(), 1e-12);
    EXPECT_EQ(one.metrics.at("sequences"), 1.0);
    // NaN at a valid position is an error naming the tensor; at padding it is ignored.
    at::Tensor bad = b.old.clone();
    bad[0][0] = NAN;
    try {
        grpo_loss({b.lp, bad, b.ref, b.valid, b.adv, {}, b.beta}, {});
        FAIL() << "NaN logp_old must be rejected";
    } catch (const DataError& e) {
        EXPECT_NE(std::string(e.what()).find("logp_old"), std::string::npos) << e.what();
    }
    bad = b.old.clone();
    bad[2][5] = NAN;  // padding of the length-1 sequence
    EXPECT_TRUE(std::isfinite(grpo_loss({b.lp, bad, b.ref, b.valid, b.adv, {}, b.beta}, {}).loss.item<double>()));
}

}  // namespace
}  // namespace dsrl::grpo
