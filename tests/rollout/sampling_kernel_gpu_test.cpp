// The decode step's sampling kernel (rollout/sampling_cuda.h) against processed_logprobs + sample_with_uniforms, the
// ATen path the engine runs otherwise, on the same GPU logits and uniforms: the same ids, kept sets and (to fp32
// rounding) log-probs under temperature, top-k, min-p, top-p, their mix and greedy — but for rows where a sum lands
// within rounding of a threshold, held to being exactly that; forced ids; ties to the lower id; vocabularies from 2 to
// the kernel's 4096 (and its refusal above).
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <string>

#include "rollout/kept_set.h"
#include "rollout/sampling.h"
#include "rollout/sampling_cuda.h"
#include "tests/rollout/sampling_compare.h"
#include "tests/test_util.h"

namespace dsrl::rollout {
namespace {

struct Want {
    at::Tensor tokens, logp, kept, processed;
};

Want aten_path(const at::Tensor& logits, const at::Tensor& u, const at::Tensor& forced, const SamplingParams& p) {
    const at::Tensor logp = processed_logprobs(logits, p);
    at::Tensor tokens = sample_with_uniforms(logp, u);
    if (forced.defined()) tokens = at::where(forced >= 0, forced, tokens);
    return {tokens, logp.gather(1, tokens.unsqueeze(1)).squeeze(1), pack_mask_bits(logp.isfinite()), logp};
}

// The kernel against the ATen path. They sum in different orders, so a kept set may differ where the top-p mass
// before an id or the min-p floor lands within rounding of its threshold, and a drawn id where the uniform lands at
// the boundary between two ids (the kernel's documented cases, tests/rollout/sampling_compare.h): such rows — at most
// two of a check's 128 — are held to being exactly that; every other row to the same kept set, the same id and the
// log-prob within 2e-5.
void check(const at::Tensor& logits, const SamplingParams& p, const std::string& what, bool with_forced = false) {
    SCOPED_TRACE(what);
    const int64_t R = logits.size(0), V = logits.size(1);
    const auto f = logits.options();
    const at::Tensor u = 1.0 - at::rand({R, 1}, f.dtype(at::kDouble));  // (0, 1] as draw_uniforms
    at::Tensor forced;
    if (with_forced) {
        forced = at::where(at::rand({R}, f) < 0.5, at::full({R}, -1, f.dtype(at::kLong)),
                           (at::rand({R}, f) * logits.size(1)).to(at::kLong));
    }
    const Want want = aten_path(logits, u, forced, p);
    const cuda::Sampled got = cuda::sample(logits, u, forced, p, /*kept_bits=*/true);
    const at::Tensor got_kept = testing::unpack_mask_bits(got.kept, V);
    const at::Tensor want_kept = testing::unpack_mask_bits(want.kept, V);
    EXPECT_TRUE(at::equal(want_kept, want.processed.isfinite().cpu())) << "the bit layout";
    const at::Tensor kept_differ = (got_kept != want_kept).any(1);
    const int64_t n_kept = kept_differ.sum().item<int64_t>();
    EXPECT_LE(n_kept, 2) << "kept sets differ in " << n_kept << " rows";
    if (n_kept > 0) {
        const testing::Boundary bnd = testing::kept_sets_differ_at_thresholds(logits, p, got_kept, want_kept, 1e-5);
        EXPECT_TRUE(bnd.ok) << "kept sets differ away from a threshold: " << bnd.why;
    }
    const at::Tensor got_tokens = got.tokens.cpu(), want_tokens = want.tokens.cpu(), uc = u.cpu();
    at::Tensor same = kept_differ.logical_not().logical_and(got_tokens == want_tokens);
    int64_t n_draws = 0;
    for (int64_t r = 0; r < R; ++r) {
        if (kept_differ[r].item<bool>() || got_tokens[r].item<int64_t>() == want_tokens[r].item<int64_t>()) continue;
        ++n_draws;
        EXPECT_TRUE(!forced.defined() || forced[r].item<int64_t>() < 0) << "row " << r << ": a forced id differs";
        EXPECT_TRUE(testing::draws_differ_at_boundary(want.processed[r], uc[r][0].item<double>(),
                                                      got_tokens[r].item<int64_t>(), want_tokens[r].item<int64_t>(),
                                                      1e-5))
            << "row " << r << ": ids " << got_tokens[r].item<int64_t>() << " and " << want_tokens[r].item<int64_t>()
            << " differ away from the draw's boundary";
    }
    EXPECT_LE(n_draws, 2) << "drawn ids differ in " << n_draws << " rows";
    const at::Tensor finite = want.logp.isfinite().cpu().logical_and(same);
    EXPECT_TRUE(at::equal(got.logp.isfinite().cpu().logical_and(same), finite));
    const at::Tensor d = at::where(finite, (got.logp.cpu() - want.logp.cpu()).abs(), at::zeros_like(want.logp.cpu()));
    EXPECT_LE(d.max().item<double>(), 2e-5) << "log-probs differ";
}

TEST(SamplingKernelTest, MatchesTheAtenSampling) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const auto f = at::TensorOptions().device(at::kCUDA);
    for (const int64_t V : {2, 7, 320, 1000, 4096}) {
        // Peaked rows (most mass on a few ids, where top-p cuts) and flat ones.
        const at::Tensor logits = at::cat({at::randn({64, V}, f) * 4, at::randn({64, V}, f) * 0.3}, 0);
        const std::string v = "V " + std::to_string(V) + ": ";
        check(logits, {.temperature = 1.0}, v + "plain");
        check(logits, {.temperature = 0.7}, v + "temperature 0.7");
        check(logits, {.temperature = 1.0, .top_p = 0.95}, v + "top_p 0.95");
        check(logits, {.temperature = 1.3, .top_p = 0.5}, v + "temperature 1.3, top_p 0.5");
        check(logits, {.temperature = 1.0, .top_k = 5}, v + "top_k 5");
        check(logits, {.temperature = 1.0, .min_p = 0.1}, v + "min_p 0.1");
        check(logits, {.temperature = 0.9, .top_p = 0.9, .top_k = 40, .min_p = 0.02}, v + "all three");
        check(logits, {.temperature = 0.0}, v + "greedy");
        check(logits, {.temperature = 1.0, .top_p = 0.8}, v + "top_p 0.8, forced ids", /*with_forced=*/true);
    }
}

TEST(SamplingKernelTest, TiesKeepTheLowerIds) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    // Four ids share the top logit: top_k 2 keeps the two lowest of them, greedy the lowest.
    at::Tensor logits = at::zeros({3, 16}, at::TensorOptions().device(at::kCUDA));
    for (const int64_t id : {3, 6, 9, 12}) logits.select(1, id).fill_(2.0);
    check(logits, {.temperature = 1.0, .top_k = 2}, "top_k 2 over a four-way tie");
    check(logits, {.temperature = 1.0, .top_p = 0.3}, "top_p over a four-way tie");
    check(logits, {.temperature = 0.0}, "greedy over a four-way tie");
}

TEST(SamplingKernelTest, TakesOnlyWhatItCanHold) {
    DSRL_REQUIRE_CUDA();
    const auto f = at::TensorOptions().device(at::kCUDA);
    EXPECT_TRUE(cuda::sample_kernel_fits(at::zeros({2, 4096}, f)));
    EXPECT_FALSE(cuda::sample_kernel_fits(at::zeros({2, 4097}, f))) << "a vocabulary over 4096";
    EXPECT_FALSE(cuda::sample_kernel_fits(at::zeros({2, 64}, f.dtype(at::kBFloat16)))) << "bf16 logits";
    EXPECT_FALSE(cuda::sample_kernel_fits(at::zeros({2, 64}))) << "CPU logits";
    EXPECT_FALSE(cuda::sample_kernel_fits(at::zeros({64, 2}, f).t())) << "strided rows";
}

}  // namespace
}  // namespace dsrl::rollout
