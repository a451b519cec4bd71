// Sampling: the processed distribution (temperature, top-k, min-p, top-p, greedy), per-row generators, and
// the recomputation GRPO uses (token_logprobs) agreeing with what rollout records.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/log.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include "core/rng.h"
#include "rollout/kept_set.h"
#include "rollout/sampling.h"
#include "tests/rollout/sampling_compare.h"
#include "tests/test_util.h"

namespace dsrl::rollout {
namespace {

at::Tensor random_logits(int64_t rows, int64_t vocab, uint64_t seed, double scale = 3.0) {
    at::Generator gen = rng::make_cpu_generator(seed);
    return at::randn({rows, vocab}, gen, at::kFloat) * scale;
}

// The sampling kernel's GPU test forgives a kept set or a drawn id that differs from the ATen path only where a sum
// lands within rounding of a threshold (tests/rollout/sampling_compare.h): the helpers must tell that from a wrong set.
TEST(SamplingTest, ThresholdComparisonTellsRoundingFromWrongSets) {
    const auto probs = [](std::initializer_list<double> v) {
        return at::log(at::tensor(std::vector<double>(v), at::kDouble)).to(at::kFloat).unsqueeze(0);
    };
    const auto flipped = [](const at::Tensor& mask, int64_t id) {
        at::Tensor m = mask.clone();
        m[0][id] = !m[0][id].item<bool>();
        return m;
    };
    // 0.5, 0.3, 0.2: at top_p 0.8 the mass before id 2 is 0.8 itself, so a sampler that rounds it either way may keep
    // id 2 or not; at top_p 0.6 id 2 (mass before it 0.8) is out for any rounding, and so is a flip of id 1 (0.5).
    const at::Tensor x = probs({0.5, 0.3, 0.2});
    for (const double top_p : {0.8, 0.6}) {
        const SamplingParams p{.top_p = top_p};
        const at::Tensor want = processed_logprobs(x, p).isfinite();
        EXPECT_EQ(testing::kept_sets_differ_at_thresholds(x, p, want, want, 1e-5).ok, true);
        EXPECT_EQ(testing::kept_sets_differ_at_thresholds(x, p, want, flipped(want, 2), 1e-5).ok, top_p == 0.8);
        EXPECT_FALSE(testing::kept_sets_differ_at_thresholds(x, p, want, flipped(want, 1), 1e-5).ok);
    }
    // min-p: 0.5, 0.05, 0.45 with min_p 0.1 puts id 1 at the floor (0.1 · 0.5); with min_p 0.5 it is far below.
    const at::Tensor y = probs({0.5, 0.05, 0.45});
    for (const double min_p : {0.1, 0.5}) {
        const SamplingParams p{.min_p = min_p};
        const at::Tensor want = processed_logprobs(y, p).isfinite();
        EXPECT_EQ(testing::kept_sets_differ_at_thresholds(y, p, want, flipped(want, 1), 1e-5).ok, min_p == 0.1);
    }
    // The draw: u = 0.5 lands on the mass up to id 0 (0.5), so ids 0 and 1 may both be drawn; u = 0.9 does not.
    const at::Tensor logp = x[0];
    EXPECT_TRUE(testing::draws_differ_at_boundary(logp, 0.5, 0, 1, 1e-5));
    EXPECT_FALSE(testing::draws_differ_at_boundary(logp, 0.9, 0, 2, 1e-5));
    // The bit layout round trip (13 ids: a partial last byte).
    const at::Tensor mask = at::rand({3, 13}) > 0.5;
    EXPECT_TRUE(at::equal(testing::unpack_mask_bits(pack_mask_bits(mask), 13), mask));
}

TEST(SamplingTest, NoTruncationIsTheTemperedSoftmax) {
    const at::Tensor x = random_logits(4, 50, 1);
    EXPECT_ALL_CLOSE("T=0.7", processed_logprobs(x, {.temperature = 0.7}), at::log_softmax(x / 0.7, -1), 1e-6);
}

TEST(SamplingTest, TopKMinPAndTopPKeepExactlyTheDocumentedSets) {
    const at::Tensor x = random_logits(6, 64, 2);
    const at::Tensor k5 = processed_logprobs(x, {.top_k = 5});
    for (int64_t b = 0; b < 6; ++b) {
        EXPECT_EQ(k5[b].isfinite().sum().item<int64_t>(), 5);
        const at::Tensor fifth = std::get<0>(at::sort(x[b], -1, /*descending=*/true))[4];
        EXPECT_TRUE((x[b] >= fifth).eq(k5[b].isfinite()).all().item<bool>()) << "row " << b;
    }
    // min-p: p >= min_p * p_max.
    const at::Tensor mp = processed_logprobs(x, {.min_p = 0.1});
    const at::Tensor p = at::log_softmax(x, -1).exp();
    EXPECT_TRUE((p >= 0.1 * std::get<0>(p.max(-1, true))).eq(mp.isfinite()).all().item<bool>());
    // top-p: the kept set is the smallest most-likely prefix reaching the mass.
    for (const double top_p : {0.5, 0.9, 0.95}) {
        const at::Tensor tp = processed_logprobs(x, {.top_p = top_p});
        for (int64_t b = 0; b < 6; ++b) {
            const at::Tensor kept = tp[b].isfinite();
            const double mass = p[b].masked_select(kept).sum().item<double>();
            const double smallest = p[b].masked_select(kept).min().item<double>();
            EXPECT_GE(mass, top_p - 1e-6) << "row " << b;
            EXPECT_LT(mass - smallest, top_p) << "row " << b << ": not the smallest prefix";
            EXPECT_NEAR(tp[b].masked_select(kept).exp().sum().item<double>(), 1.0, 1e-5);  // renormalized
        }
    }
}

TEST(SamplingTest, GreedyKeepsOnlyTheArgmax) {
    const at::Tensor x = random_logits(3, 20, 3);
    const at::Tensor g = processed_logprobs(x, {.temperature = 0});
    for (int64_t b = 0; b < 3; ++b) {
        EXPECT_EQ(g[b].isfinite().sum().item<int64_t>(), 1);
        EXPECT_EQ(g[b].argmax().item<int64_t>(), x[b].argmax().item<int64_t>());
        EXPECT_EQ(g[b].max().item<float>(), 0.0f);
    }
    EXPECT_THROW(processed_logprobs(x, {.top_p = 0}), c10::Error);
}

TEST(SamplingTest, EachRowDrawsFromItsOwnGeneratorAndFollowsTheDistribution) {
    const at::Tensor logp = processed_logprobs(random_logits(3, 10, 4, 1.0), {.top_k = 6});
    std::vector<at::Generator> a{rng::make_cpu_generator(7), rng::make_cpu_generator(8), rng::make_cpu_generator(9)};
    std::vector<at::Generator> alone{rng::make_cpu_generator(8)};
    const at::Tensor batch = sample_rows(logp, a);
    EXPECT_EQ(sample_rows(logp.narrow(0, 1, 1), alone)[0].item<int64_t>(), batch[1].item<int64_t>());
    // Frequencies of 20000 draws of row 0 match its probabilities; nothing outside the kept set.
    std::vector<at::Generator> g{rng::make_cpu_generator(11)};
    at::Tensor counts = at::zeros({10}, at::kDouble);
    const at::Tensor row = logp.narrow(0, 0, 1);
    for (int i = 0; i < 20000; ++i) counts[sample_rows(row, g)[0].item<int64_t>()] += 1;
    EXPECT_ALL_CLOSE("empirical frequencies", counts / 20000, row[0].exp().to(at::kDouble), 0.012);
}

// draw_uniforms reads each generator as at::rand({1}, gen, kDouble) would (the sample seeds' contract), bit for bit,
// draw after draw.
TEST(SamplingTest, DrawUniformsIsAtRandPerRow) {
    std::vector<at::Generator> mine, theirs;
    for (uint64_t seed : {1u, 77u, 123456789u}) {
        mine.push_back(rng::make_cpu_generator(seed));
        theirs.push_back(rng::make_cpu_generator(seed));
    }
    for (int draw = 0; draw < 5; ++draw) {
        const at::Tensor u = draw_uniforms(mine);
        for (size_t b = 0; b < theirs.size(); ++b) {
            const double want = 1.0 - at::rand({1}, theirs[b], at::kDouble).item<double>();
            EXPECT_EQ(u[static_cast<int64_t>(b)][0].item<double>(), want) << "row " << b << ", draw " << draw;
        }
    }
}

TEST(SamplingTest, RecomputedLogprobsUnderTheKeptSetEqualTheRecordedOnes) {
    const at::Tensor x = random_logits(5, 40, 5);
    const SamplingParams p{.temperature = 0.8, .top_p = 0.9, .top_k = 12};
    const at::Tensor logp = processed_logprobs(x, p);
    std::vector<at::Generator> gens;
    for (int i = 0; i < 5; ++i) gens.push_back(rng::make_cpu_generator(20 + i));
    const at::Tensor tokens = sample_rows(logp, gens);
    const at::Tensor recorded = logp.gather(1, tokens.unsqueeze(1)).squeeze(1);
    EXPECT_ALL_CLOSE("with kept set", token_logprobs(x, tokens, logp.isfinite(), 0.8), recorded, 1e-6);
    // Without the mask the recomputation is the untruncated log-prob: lower (mass spread over all ids).
    EXPECT_TRUE((token_logprobs(x, tokens, {}, 0.8) < recorded).all().item<bool>());
}

}  // namespace
}  // namespace dsrl::rollout
