// The decode step's sampling kernel (rollout/sampling_cuda.h) against processed_logprobs + sample_with_uniforms, the
// ATen path the engine runs otherwise, on the same GPU logits and uniforms: the same ids, kept sets and (to fp32
// rounding) log-probs under temperature, top-k, min-p, top-p, their mix and greedy — but for rows where a sum lands
// within rounding of a threshold, held to being exactly that; forced ids; ties to the lower id; vocabularies from 2 to
// the kernel's 4096 (and its refusal above). A window's slots (the engine's graphed steps): each row reading and
// writing the slot of its own step, bit for bit the plain kernel's; the step-closing kernel's records and positions.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <string>
#include <vector>

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

// The sort's stages of stride < 32 by warp shuffles against every stage through shared memory: the same network, so
// the same ids, log-probs and kept sets bit for bit — vocabularies from 2 (a single lane pair) to 512 (one element a
// thread, the largest the shuffles take) and 513 (shared memory either way), ties included.
TEST(SamplingKernelTest, WarpStagesSortAsTheBlockStages) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const auto f = at::TensorOptions().device(at::kCUDA);
    for (const int64_t V : {2, 5, 16, 33, 320, 512, 513}) {
        // Rounded logits: many exact ties across lanes and warps.
        const at::Tensor logits = at::cat({(at::randn({32, V}, f) * 4).round(), at::randn({32, V}, f) * 0.3}, 0);
        const at::Tensor u = 1.0 - at::rand({64, 1}, f.dtype(at::kDouble));
        for (const SamplingParams& p :
             {SamplingParams{.temperature = 1.0, .top_p = 0.9}, SamplingParams{.temperature = 0.8, .top_k = 7},
              SamplingParams{.temperature = 1.0, .top_p = 0.6, .min_p = 0.01}}) {
            SCOPED_TRACE("V " + std::to_string(V) + ", top_p " + std::to_string(p.top_p) + ", top_k " +
                         std::to_string(p.top_k));
            cuda::set_sample_warp_stages(false);
            const cuda::Sampled block = cuda::sample(logits, u, at::Tensor(), p, true);
            cuda::set_sample_warp_stages(true);
            const cuda::Sampled warp = cuda::sample(logits, u, at::Tensor(), p, true);
            EXPECT_TRUE(at::equal(block.tokens.cpu(), warp.tokens.cpu()));
            EXPECT_TRUE(at::equal(block.logp.cpu(), warp.logp.cpu()));
            EXPECT_TRUE(at::equal(block.kept.cpu(), warp.kept.cpu()));
        }
    }
}

// Row r's step in the window: slot (pos[r] − base[r]) mod C, rows at different slots (some past C: wrapped). The
// windowed kernel is the plain one reading and writing there, so every record is bit for bit the plain kernel's on
// the slot's uniform and forced id, and no other slot is touched.
TEST(SamplingKernelTest, WindowSlotsAreThePlainKernelsPerRow) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const auto f = at::TensorOptions().device(at::kCUDA);
    const auto i64 = f.dtype(at::kLong);
    const int64_t R = 24, V = 320, C = 5;
    const SamplingParams p{.temperature = 1.0, .top_p = 0.9};
    const at::Tensor logits = at::randn({R, V}, f) * 3;
    const at::Tensor uniform = 1.0 - at::rand({C, R, 1}, f.dtype(at::kDouble));
    const at::Tensor forced =
        at::where(at::rand({C, R}, f) < 0.3, at::randint(V, {C, R}, i64), at::full({C, R}, -1, i64));
    std::vector<int64_t> step(R), slot(R);
    for (int64_t r = 0; r < R; ++r) {
        step[r] = r % 7;
        slot[r] = step[r] % C;
    }
    const at::Tensor base = at::randint(100, {R}, i64);
    const at::Tensor pos = base + at::tensor(step, at::kLong).to(f.device());
    const cuda::SampleWindow w{.pos = pos,
                               .base = base,
                               .tokens = at::full({C, R}, -7, i64),
                               .logp = at::full({C, R}, 9.f, f),
                               .kept = at::zeros({C, R, (V + 7) / 8}, f.dtype(at::kByte))};
    const cuda::Sampled got = cuda::sample(logits, uniform, forced, p, w);
    EXPECT_FALSE(got.logp.defined());
    EXPECT_FALSE(got.kept.defined());
    const at::Tensor uc = uniform.cpu(), fc = forced.cpu();
    at::Tensor u_row = at::zeros({R, 1}, at::kDouble), f_row = at::zeros({R}, at::kLong);
    for (int64_t r = 0; r < R; ++r) {
        u_row[r][0] = uc[slot[r]][r][0];
        f_row[r] = fc[slot[r]][r];
    }
    const cuda::Sampled want = cuda::sample(logits, u_row.to(f.device()), f_row.to(f.device()), p, true);
    EXPECT_TRUE(at::equal(got.tokens.cpu(), want.tokens.cpu()));
    const at::Tensor tokens = w.tokens.cpu(), logp = w.logp.cpu(), kept = w.kept.cpu();
    const at::Tensor wt = want.tokens.cpu(), wl = want.logp.cpu(), wk = want.kept.cpu();
    for (int64_t r = 0; r < R; ++r) {
        for (int64_t c = 0; c < C; ++c) {
            SCOPED_TRACE("row " + std::to_string(r) + ", slot " + std::to_string(c));
            if (c == slot[r]) {
                EXPECT_EQ(tokens[c][r].item<int64_t>(), wt[r].item<int64_t>());
                EXPECT_TRUE(at::equal(logp[c][r], wl[r])) << "log-prob bits";
                EXPECT_TRUE(at::equal(kept[c][r], wk[r])) << "kept set";
            } else {
                EXPECT_EQ(tokens[c][r].item<int64_t>(), -7) << "another step's slot written";
                EXPECT_EQ(logp[c][r].item<float>(), 9.f);
                EXPECT_EQ(kept[c][r].sum().item<int64_t>(), 0);
            }
        }
    }
}

// The kernel closing a windowed step: every layer's row r copied to the row's slot (int64 routes, int32 indexer
// sets), the other slots untouched, every position moved on by one; and its refusals (launching nothing).
TEST(StepRecordsKernelTest, RowsGoToTheirSlotsAndThePositionsMoveOn) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const auto f = at::TensorOptions().device(at::kCUDA);
    const auto i64 = f.dtype(at::kLong), i32 = f.dtype(at::kInt);
    const int64_t R = 10, C = 3, M = 3, k = 4, L = 2, K = 6;
    std::vector<at::Tensor> routes, topk;
    for (int64_t m = 0; m < M; ++m) routes.push_back(at::randint(32, {R, 1, k}, i64));
    for (int64_t l = 0; l < L; ++l) topk.push_back(at::randint(-1, 500, {R, 1, K}, i32));
    std::vector<int64_t> slot(R), step(R);
    for (int64_t r = 0; r < R; ++r) {
        step[r] = (3 * r) % 5;
        slot[r] = step[r] % C;
    }
    const at::Tensor base = at::randint(50, {R}, i64);
    const at::Tensor pos = base + at::tensor(step, at::kLong).to(f.device());
    const at::Tensor pos0 = pos.clone();
    at::Tensor routes_dst = at::full({C, R, M, k}, -5, i64), topk_dst = at::full({C, R, L, K}, -5, i32);
    ASSERT_TRUE(cuda::step_records(routes, routes_dst, topk, topk_dst, pos, base));
    EXPECT_TRUE(at::equal(pos.cpu(), (pos0 + 1).cpu())) << "positions moved on by one";
    const at::Tensor want_routes = at::stack(routes, 1).select(2, 0).cpu(),
                     want_topk = at::stack(topk, 1).select(2, 0).cpu();
    const at::Tensor got_routes = routes_dst.cpu(), got_topk = topk_dst.cpu();
    for (int64_t r = 0; r < R; ++r) {
        for (int64_t c = 0; c < C; ++c) {
            SCOPED_TRACE("row " + std::to_string(r) + ", slot " + std::to_string(c));
            if (c == slot[r]) {
                EXPECT_TRUE(at::equal(got_routes[c][r], want_routes[r]));
                EXPECT_TRUE(at::equal(got_topk[c][r], want_topk[r]));
            } else {
                EXPECT_EQ(got_routes[c][r].ne(-5).sum().item<int64_t>(), 0);
                EXPECT_EQ(got_topk[c][r].ne(-5).sum().item<int64_t>(), 0);
            }
        }
    }
    // Routes alone (no indexer sets recorded).
    ASSERT_TRUE(cuda::step_records(routes, routes_dst, {}, at::Tensor(), pos, base));
    EXPECT_TRUE(at::equal(pos.cpu(), (pos0 + 2).cpu()));
    // Refused, nothing launched: a strided source, a source of another type, more sources than the destination has.
    std::vector<at::Tensor> strided = routes;
    strided[1] = at::randint(32, {k, 1, R}, i64).transpose(0, 2);
    std::vector<at::Tensor> typed = routes;
    typed[2] = typed[2].to(at::kInt);
    std::vector<at::Tensor> more = routes;
    more.push_back(routes[0]);
    for (const auto* bad : {&strided, &typed, &more}) {
        EXPECT_FALSE(cuda::step_records(*bad, routes_dst, topk, topk_dst, pos, base));
    }
    EXPECT_FALSE(cuda::step_records(routes, routes_dst, topk, topk_dst, pos.cpu(), base.cpu())) << "CPU positions";
    EXPECT_TRUE(at::equal(pos.cpu(), (pos0 + 2).cpu())) << "a refusal moved the positions";
}

}  // namespace
}  // namespace dsrl::rollout
