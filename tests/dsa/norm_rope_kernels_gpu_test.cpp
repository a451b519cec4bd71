// The fused RMSNorm and RoPE kernels (dsa/norm_rope_cuda.h) against their ATen formulas on the same GPU tensors: RoPE
// bit for bit (the kernel rounds op by op as the formula does), RMSNorm within the rounding of a differently ordered
// sum of squares; strided views as the model passes them; the dispatch rule (no kernel where autograd records). Also
// the indexer's top-k selected by the exact top-k kernel against the reference's sort.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/result_type.h>
#include <ATen/ops/tensor.h>

#include <cmath>
#include <optional>
#include <string>
#include <utility>

#include "core/add_norm_rows.h"
#include "core/kernels/row_dot.cuh"
#include "dsa/indexer_topk.h"
#include "dsa/kernels/norm_rope.cuh"
#include "dsa/model.h"
#include "dsa/norm_rope_cuda.h"
#include "dsa/rope.h"
#include "moe/moe_cuda.h"
#include "moe/router.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

at::Tensor randn(at::IntArrayRef shape, at::ScalarType t) {
    return at::randn(shape, at::TensorOptions().device(at::kCUDA)).to(t);
}

TEST(NormRopeKernelTest, RmsNormMatchesTheFormula) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    struct Case {
        at::ScalarType x, w;
    };
    for (const Case c : {Case{at::kFloat, at::kFloat}, Case{at::kBFloat16, at::kFloat},
                         Case{at::kBFloat16, at::kBFloat16}, Case{at::kHalf, at::kFloat}}) {
        SCOPED_TRACE(std::string(c10::toString(c.x)) + " x, " + c10::toString(c.w) + " weight");
        // Contiguous rows; a latent narrowed out of [c_kv | k_pe] (rows strided); one row of 7168.
        const at::Tensor kv = randn({2, 5, 288}, c.x) * 3;
        for (const at::Tensor& x : {randn({3, 5, 768}, c.x), kv.narrow(-1, 0, 256), randn({1, 1, 7168}, c.x)}) {
            const at::Tensor w = randn({x.size(-1)}, c.w) * 0.5 + 1;
            const at::Tensor want = rms_norm(x, w, 1e-6);
            const at::Tensor got = cuda::rms_norm(x, w, 1e-6);
            ASSERT_EQ(got.scalar_type(), want.scalar_type());
            ASSERT_EQ(got.sizes(), want.sizes());
            const double err = testing::rel_err(got, want);
            EXPECT_LE(err, c.x == at::kFloat && c.w == at::kFloat ? 1e-6 : 4e-3) << x.sizes();
            // A reduced-precision x rounds the normalized value before the weight: then most elements agree bit for
            // bit, a sum of squares in another order moving only those near a rounding boundary. (In fp32 that order
            // moves every element of a row by an ulp or so: the relative error above bounds it.)
            if (c.x != at::kFloat) {
                const double same = got.eq(want).to(at::kDouble).mean().item<double>();
                EXPECT_GE(same, 0.95) << x.sizes();
            }
        }
    }
}

TEST(NormRopeKernelTest, RopeEqualsTheFormulaBitForBit) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    for (const at::ScalarType t : {at::kFloat, at::kBFloat16}) {
        SCOPED_TRACE(c10::toString(t));
        const at::Tensor cos4 = at::randn({2, 3, 1, 16}, at::TensorOptions().device(at::kCUDA));
        const at::Tensor sin4 = at::randn({2, 3, 1, 16}, at::TensorOptions().device(at::kCUDA));
        const at::Tensor cos3 = cos4.squeeze(2), sin3 = sin4.squeeze(2);
        // MLA: q_pe narrowed out of q [B, L, H, nope + rope]; k_pe out of [c_kv | k_pe].
        const at::Tensor q = randn({2, 3, 4, 96}, t).narrow(-1, 64, 32);
        EXPECT_TRUE(at::equal(cuda::rope(q, cos4, sin4, 32, true), apply_rope_interleaved(q, cos4, sin4)));
        const at::Tensor k = randn({2, 3, 288}, t).narrow(-1, 256, 32);
        EXPECT_TRUE(at::equal(cuda::rope(k, cos3, sin3, 32, true), apply_rope_interleaved(k, cos3, sin3)));
        // Indexer: the first 32 of 64 dims half-split, the rest copied.
        const auto half_split = [](const at::Tensor& x, const at::Tensor& c, const at::Tensor& s) {
            return at::cat({apply_rope_half_split(x.narrow(-1, 0, 32), c, s), x.narrow(-1, 32, x.size(-1) - 32)}, -1);
        };
        const at::Tensor iq = randn({2, 3, 8, 64}, t);
        EXPECT_TRUE(at::equal(cuda::rope(iq, cos4, sin4, 32, false), half_split(iq, cos4, sin4)));
        const at::Tensor ik = randn({2, 3, 64}, t);
        EXPECT_TRUE(at::equal(cuda::rope(ik, cos3, sin3, 32, false), half_split(ik, cos3, sin3)));
        // One position (a decode step): x [B, 1, D] with cos [B, 1, rope/2].
        const at::Tensor k1 = randn({5, 1, 64}, t);
        const at::Tensor c1 = cos3.narrow(1, 0, 1).narrow(0, 0, 1).expand({5, 1, 16}).contiguous();
        const at::Tensor s1 = sin3.narrow(1, 0, 1).narrow(0, 0, 1).expand({5, 1, 16}).contiguous();
        EXPECT_TRUE(at::equal(cuda::rope(k1, c1, s1, 32, false), half_split(k1, c1, s1)));
    }
}

// A layer's jobs in one launch equal one launch each, bit for bit: the query and latent RMSNorms with the indexer key's
// LayerNorm (different shapes, strides and, for the norms, dtypes), and the four rotations (MLA interleaved, indexer
// half split) of column ranges.
TEST(NormRopeKernelTest, JobsInOneLaunchEqualOneLaunchEach) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    for (const at::ScalarType t : {at::kFloat, at::kBFloat16}) {
        SCOPED_TRACE(c10::toString(t));
        const at::Tensor a = randn({4, 1, 384 + 288 + 64}, t);  // a stacked projection: q_a | kv_a | the indexer's wk
        const at::Tensor q_a = a.narrow(-1, 0, 384), kv = a.narrow(-1, 384, 288), wk = a.narrow(-1, 672, 64);
        const at::Tensor w1 = randn({384}, t) * 0.5 + 1, w2 = randn({256}, at::kFloat) * 0.5 + 1;
        const at::Tensor lw = randn({64}, t) * 0.5 + 1, lb = randn({64}, t) * 0.1;
        const std::vector<at::Tensor> n =
            cuda::norms({{q_a, w1, {}, 1e-6}, {kv.narrow(-1, 0, 256), w2, {}, 1e-6}, {wk, lw, lb, 1e-6}});
        ASSERT_EQ(n.size(), 3u);
        EXPECT_TRUE(at::equal(n[0], cuda::rms_norm(q_a, w1, 1e-6)));
        EXPECT_TRUE(at::equal(n[1], cuda::rms_norm(kv.narrow(-1, 0, 256), w2, 1e-6)));
        EXPECT_TRUE(at::equal(n[2], cuda::layer_norm(wk, lw, lb, 1e-6)));
        ASSERT_EQ(n[1].scalar_type(), at::result_type(w2, kv));
        const std::vector<at::Tensor> two = cuda::norms({{q_a, w1, {}, 1e-6}, {kv.narrow(-1, 0, 256), w2, {}, 1e-6}});
        EXPECT_TRUE(at::equal(two[0], n[0]) && at::equal(two[1], n[1]));

        const at::Tensor cos4 = at::randn({4, 1, 1, 16}, at::TensorOptions().device(at::kCUDA));
        const at::Tensor sin4 = at::randn({4, 1, 1, 16}, at::TensorOptions().device(at::kCUDA));
        const at::Tensor cos3 = cos4.squeeze(2), sin3 = sin4.squeeze(2);
        const at::Tensor qb = randn({4, 1, 12 * 96 + 8 * 64}, t);  // q_b | the indexer's wq_b
        const at::Tensor q_pe = qb.narrow(-1, 0, 12 * 96).view({4, 1, 12, 96}).narrow(-1, 64, 32);
        const at::Tensor k_pe = kv.narrow(-1, 256, 32);
        const at::Tensor iq = qb.narrow(-1, 12 * 96, 8 * 64).view({4, 1, 8, 64}), ik = n[2];
        const std::vector<at::Tensor> r = cuda::ropes({{q_pe, cos4, sin4, 32, true},
                                                       {k_pe, cos3, sin3, 32, true},
                                                       {iq, cos4, sin4, 32, false},
                                                       {ik, cos3, sin3, 32, false}});
        ASSERT_EQ(r.size(), 4u);
        EXPECT_TRUE(at::equal(r[0], cuda::rope(q_pe, cos4, sin4, 32, true)));
        EXPECT_TRUE(at::equal(r[1], cuda::rope(k_pe, cos3, sin3, 32, true)));
        EXPECT_TRUE(at::equal(r[2], cuda::rope(iq, cos4, sin4, 32, false)));
        EXPECT_TRUE(at::equal(r[3], cuda::rope(ik, cos3, sin3, 32, false)));
    }
    // A paged decode's jobs write into pools at their slots (a bf16 pool from fp32 rows: the value rounded to the
    // row's type, then cast; a slot outside the pool writes nothing) — what the copy of each result would write.
    for (const at::ScalarType pool_type : {at::kFloat, at::kBFloat16}) {
        SCOPED_TRACE(c10::toString(pool_type));
        const at::Tensor a = randn({4, 1, 288 + 64}, at::kFloat), w = randn({256}, at::kFloat) * 0.5 + 1;
        const at::Tensor lw = randn({64}, at::kFloat), lb = randn({64}, at::kFloat);
        const at::Tensor kv = a.narrow(-1, 0, 288), wk = a.narrow(-1, 288, 64);
        const at::Tensor slots = at::tensor(std::vector<int64_t>{5, 0, 9, 17}, at::kLong).cuda();  // 17: outside
        const auto pool = [&](int64_t d) {
            return at::full({10, d}, 7.0, at::TensorOptions().dtype(pool_type).device(at::kCUDA));
        };
        const at::Tensor c_kv = pool(256), k_pe = pool(32), index_k = pool(64);
        const std::vector<at::Tensor> n =
            cuda::norms({{kv.narrow(-1, 0, 256), w, {}, 1e-6, c_kv, slots}, {wk, lw, lb, 1e-6}});
        EXPECT_FALSE(n[0].defined());
        const at::Tensor cos3 = at::randn({4, 1, 16}, at::TensorOptions().device(at::kCUDA)), sin3 = cos3.sin();
        const std::vector<at::Tensor> r = cuda::ropes({{kv.narrow(-1, 256, 32), cos3, sin3, 32, true, k_pe, slots},
                                                       {n[1], cos3, sin3, 32, false, index_k, slots}});
        EXPECT_FALSE(r[0].defined() || r[1].defined());
        const at::Tensor in = slots.narrow(0, 0, 3);  // the rows whose slot is in the pool
        const auto expect_rows = [&](const at::Tensor& pl, const at::Tensor& rows, const char* what) {
            at::Tensor want = pool(pl.size(1));
            want.index_copy_(0, in, rows.reshape({4, -1}).narrow(0, 0, 3).to(pool_type));
            EXPECT_TRUE(at::equal(pl, want)) << what;
        };
        expect_rows(c_kv, cuda::rms_norm(kv.narrow(-1, 0, 256), w, 1e-6), "latent");
        expect_rows(k_pe, cuda::rope(kv.narrow(-1, 256, 32), cos3, sin3, 32, true), "rope key");
        expect_rows(index_k, cuda::rope(cuda::layer_norm(wk, lw, lb, 1e-6), cos3, sin3, 32, false), "index key");
    }
    EXPECT_THROW(cuda::norms({}), c10::Error);
    const at::Tensor x = randn({2, 64}, at::kFloat), w = randn({64}, at::kFloat);
    EXPECT_THROW(
        cuda::norms({{x, w, {}, 1e-6}, {x, w, {}, 1e-6}, {x, w, {}, 1e-6}, {x, w, {}, 1e-6}, {x, w, {}, 1e-6}}),
        c10::Error);
}

// The indexer key's job: LayerNorm, then the half-split rotation of its first 32 dims; into pool at slots if given.
cuda::NormJob index_key_job(const at::Tensor& wk,
                            const at::Tensor& lw,
                            const at::Tensor& lb,
                            const at::Tensor& cos,
                            const at::Tensor& sin,
                            const at::Tensor& pool = {},
                            const at::Tensor& slots = {}) {
    return {.x = wk,
            .weight = lw,
            .bias = lb,
            .eps = 1e-6,
            .pool = pool,
            .slots = slots,
            .cos = cos,
            .sin = sin,
            .rope = 32,
            .interleaved = false};
}

// A decode layer's rotated norm jobs in one launch — the query's RMSNorm rotated over part of its row (interleaved),
// the rope key without a norm (interleaved), the indexer key's LayerNorm (half split) — checked bit for bit against
// the norm then the rope kernel; returns their results. Rows of a = [rows, 1, 384 + 288 + 64] (q_a | kv_a | wk).
std::vector<at::Tensor> layer_jobs_equal_norm_then_rope(const at::Tensor& a,
                                                        const at::Tensor& w1,
                                                        const at::Tensor& lw,
                                                        const at::Tensor& lb,
                                                        const at::Tensor& cos,
                                                        const at::Tensor& sin) {
    const at::Tensor q_a = a.narrow(-1, 0, 384), k_pe = a.narrow(-1, 640, 32), wk = a.narrow(-1, 672, 64);
    const std::vector<at::Tensor> n =
        cuda::norms({{.x = q_a, .weight = w1, .eps = 1e-6, .cos = cos, .sin = sin, .rope = 32, .interleaved = true},
                     {.x = k_pe, .cos = cos, .sin = sin, .rope = 32, .interleaved = true},
                     index_key_job(wk, lw, lb, cos, sin)});
    EXPECT_EQ(n.size(), 3u);
    if (n.size() != 3) return n;
    EXPECT_TRUE(at::equal(n[0], cuda::rope(cuda::rms_norm(q_a, w1, 1e-6), cos, sin, 32, true))) << "RMSNorm";
    EXPECT_TRUE(at::equal(n[1], cuda::rope(k_pe, cos, sin, 32, true))) << "no norm";
    EXPECT_TRUE(at::equal(n[2], cuda::rope(cuda::layer_norm(wk, lw, lb, 1e-6), cos, sin, 32, false))) << "LayerNorm";
    return n;
}

// A norm job that also rotates (the keys' RoPE in the norm's launch): the norm then the rope kernel, bit for bit — the
// rope key without a norm (interleaved), the indexer key's LayerNorm (half split), an RMSNorm (interleaved over part of
// the row); returned, or written into pools at slots (a slot outside the pool writes nothing).
TEST(NormRopeKernelTest, RotatedJobsEqualTheNormThenTheRope) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const auto f = at::TensorOptions().device(at::kCUDA);
    for (const at::ScalarType t : {at::kFloat, at::kBFloat16}) {
        SCOPED_TRACE(c10::toString(t));
        const at::Tensor a = randn({4, 1, 384 + 288 + 64}, t);  // q_a | kv_a | the indexer's wk
        const at::Tensor wk = a.narrow(-1, 672, 64), k_pe = a.narrow(-1, 640, 32);
        const at::Tensor w1 = randn({384}, t) * 0.5 + 1, lw = randn({64}, t) * 0.5 + 1, lb = randn({64}, t) * 0.1;
        const at::Tensor cos = at::randn({4, 1, 16}, f) * 3, sin = at::randn({4, 1, 16}, f) * 3;
        const std::vector<at::Tensor> n = layer_jobs_equal_norm_then_rope(a, w1, lw, lb, cos, sin);
        ASSERT_EQ(n.size(), 3u);
        EXPECT_EQ(n[1].scalar_type(), t);
        for (const at::ScalarType pool_type : {at::kFloat, at::kBFloat16}) {
            SCOPED_TRACE(c10::toString(pool_type));
            const at::Tensor slots = at::tensor(std::vector<int64_t>{5, 0, 9, 17}, at::kLong).cuda();  // 17: outside
            const auto pool = [&](int64_t d) { return at::full({10, d}, 7.0, f.dtype(pool_type)); };
            const at::Tensor pe_pool = pool(32), ik_pool = pool(64);
            const std::vector<at::Tensor> p =
                cuda::norms({{.x = k_pe, .pool = pe_pool, .slots = slots, .cos = cos, .sin = sin, .rope = 32},
                             index_key_job(wk, lw, lb, cos, sin, ik_pool, slots)});
            EXPECT_FALSE(p[0].defined() || p[1].defined());
            const at::Tensor in = slots.narrow(0, 0, 3);
            const auto expect_rows = [&](const at::Tensor& pl, const at::Tensor& rows, const char* what) {
                at::Tensor want = pool(pl.size(1));
                want.index_copy_(0, in, rows.reshape({4, -1}).narrow(0, 0, 3).to(pool_type));
                EXPECT_TRUE(at::equal(pl, want)) << what;
            };
            expect_rows(pe_pool, n[1], "rope key");
            expect_rows(ik_pool, n[2], "index key");
        }
    }
    const at::Tensor x = randn({2, 64}, at::kFloat), w = randn({64}, at::kFloat);
    const at::Tensor cos = at::zeros({2, 16}, f);
    EXPECT_FALSE(cuda::norm_rope_fits({.x = x, .weight = w, .cos = cos, .sin = cos, .rope = 30})) << "rope / 2 != 16";
    EXPECT_FALSE(cuda::norm_rope_fits({.x = x, .weight = w, .cos = cos.cpu(), .sin = cos, .rope = 32})) << "cos on CPU";
    EXPECT_TRUE(cuda::norm_rope_fits({.x = x, .weight = w, .cos = cos, .sin = cos, .rope = 32}));
    EXPECT_THROW(cuda::norms({{.x = x, .weight = w, .cos = cos, .sin = cos, .rope = 30}}), c10::Error);
}

// The residual add fused into the next RMSNorm: the sum as ATen's add rounds it, the norm as the single kernel gives
// it on that sum, bit for bit; a bf16 sublayer output into an fp32 stream (autocast) and rows with a stride.
TEST(NormRopeKernelTest, AddRmsNormEqualsTheAddThenTheNorm) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    struct Case {
        at::ScalarType x, r, w;
    };
    for (const Case k : {Case{at::kBFloat16, at::kBFloat16, at::kBFloat16}, Case{at::kFloat, at::kBFloat16, at::kFloat},
                         Case{at::kFloat, at::kFloat, at::kFloat}, Case{at::kHalf, at::kHalf, at::kFloat}}) {
        SCOPED_TRACE(std::string(c10::toString(k.x)) + " + " + c10::toString(k.r));
        for (const int64_t rows : {1, 256}) {
            const at::Tensor x = randn({rows, 1, 768}, k.x), w = randn({768}, k.w) * 0.5 + 1;
            const at::Tensor r = randn({rows, 1, 800}, k.r).narrow(-1, 0, 768);  // rows of stride 800
            const auto [sum, normed] = cuda::add_rms_norm(x, r, w, 1e-6);
            const at::Tensor want_sum = x + r;
            ASSERT_EQ(sum.scalar_type(), want_sum.scalar_type());
            EXPECT_TRUE(at::equal(sum, want_sum));
            EXPECT_TRUE(at::equal(normed, cuda::rms_norm(want_sum, w, 1e-6)));
        }
    }
}

// The residual add, the norm and the indexer's head weights as one launch (a decode step's layer input): the sum and
// the normalized rows bit for bit those of the add / norm kernels, the projection bit for bit proj_fp32's of that
// output (the same tile kernel on the same rows); with and without the residual add, tiles with missing rows.
TEST(NormRopeKernelTest, AddNormProjEqualsTheNormThenTheProjection) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    struct Case {
        at::ScalarType x, r, w;
        int64_t dim, n;
    };
    for (const Case k :
         {Case{at::kBFloat16, at::kBFloat16, at::kBFloat16, 768, 8},
          Case{at::kFloat, at::kBFloat16, at::kFloat, 768, 8}, Case{at::kHalf, at::kHalf, at::kFloat, 1536, 13},
          Case{at::kFloat, at::kFloat, at::kFloat, 64, 70}}) {
        SCOPED_TRACE(std::string(c10::toString(k.x)) + " + " + c10::toString(k.r) + ", dim " + std::to_string(k.dim));
        for (const int64_t rows : {1, 7, 256, 1500}) {  // two rows a tile up to 512, eight above
            const at::Tensor x = randn({rows, 1, k.dim}, k.x), w = randn({k.dim}, k.w) * 0.5 + 1;
            const at::Tensor r = randn({rows, 1, k.dim + 32}, k.r).narrow(-1, 0, k.dim);  // strided rows
            const at::Tensor wp = randn({k.n, k.dim}, at::kFloat) * 0.1;
            const double scale = 1.0 / std::sqrt(8.0);
            ASSERT_TRUE(cuda::add_norm_proj_fits(x, r, w, wp));
            const cuda::NormedProjection got = cuda::add_norm_proj(x, r, w, 1e-6, wp, scale);
            const auto [sum, normed] = cuda::add_rms_norm(x, r, w, 1e-6);
            EXPECT_TRUE(at::equal(got.sum, sum)) << "rows " << rows;
            EXPECT_TRUE(at::equal(got.normed, normed)) << "rows " << rows;
            EXPECT_TRUE(at::equal(got.proj, cuda::proj_fp32(normed, wp, scale))) << "rows " << rows;
            ASSERT_EQ(got.proj.sizes(), (at::IntArrayRef{rows, 1, k.n}));
            const at::Tensor want = at::linear(normed.to(at::kFloat), wp) * scale;
            const at::Tensor bound = at::linear(normed.to(at::kFloat).abs(), wp.abs()) * scale * 1e-5 + 1e-30;
            EXPECT_TRUE((got.proj - want).abs().le(bound).all().item<bool>());
            // No residual: the layer's first norm.
            const cuda::NormedProjection first = cuda::add_norm_proj(x, {}, w, 1e-6, wp, scale);
            EXPECT_FALSE(first.sum.defined());
            EXPECT_TRUE(at::equal(first.normed, cuda::rms_norm(x, w, 1e-6)));
            EXPECT_TRUE(at::equal(first.proj, cuda::proj_fp32(first.normed, wp, scale)));
        }
    }
    // Rows longer than the tile kernel's (1536), a residual of another shape, a norm weight of another width.
    const at::Tensor x = randn({4, 2048}, at::kFloat), w = randn({2048}, at::kFloat);
    EXPECT_FALSE(cuda::add_norm_proj_fits(x, x, w, randn({8, 2048}, at::kFloat)));
    const at::Tensor x2 = randn({4, 768}, at::kFloat), w2 = randn({768}, at::kFloat), wp2 = randn({8, 768}, at::kFloat);
    EXPECT_TRUE(cuda::add_norm_proj_fits(x2, x2, w2, wp2));
    EXPECT_FALSE(cuda::add_norm_proj_fits(x2, randn({3, 768}, at::kFloat), w2, wp2));
    EXPECT_FALSE(cuda::add_norm_proj_fits(x2, x2, randn({764}, at::kFloat), wp2));
    EXPECT_THROW(cuda::add_norm_proj(x, x, w, 1e-6, randn({8, 2048}, at::kFloat), 1.0), c10::Error);
}

// The residual add, the norm and the router as one launch (a decode step's MoE input): the sum and the normalized rows
// bit for bit those of the add / norm kernel, the route bit for bit route_select_rows's on that output (the same tile
// kernel on the same rows); DeepSeek-V3-like routers, a held-out one, tiles with missing rows.
TEST(NormRopeKernelTest, AddNormRouteEqualsTheNormThenTheRouter) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    struct Case {
        at::ScalarType x, r, w, gate;
        int64_t dim, experts, k, groups, kept;
    };
    for (const Case c : {Case{at::kBFloat16, at::kBFloat16, at::kBFloat16, at::kFloat, 768, 32, 4, 4, 2},
                         Case{at::kFloat, at::kBFloat16, at::kFloat, at::kFloat, 768, 32, 4, 4, 2},
                         Case{at::kBFloat16, at::kBFloat16, at::kBFloat16, at::kBFloat16, 256, 64, 6, 8, 8},
                         Case{at::kHalf, at::kHalf, at::kFloat, at::kFloat, 96, 256, 8, 8, 4}}) {
        SCOPED_TRACE(std::string(c10::toString(c.x)) + " rows, " + c10::toString(c.gate) + " gate, dim " +
                     std::to_string(c.dim) + ", experts " + std::to_string(c.experts));
        const moe::RouterOptions opt{
            .n_routed_experts = c.experts, .num_experts_per_tok = c.k, .n_group = c.groups, .topk_group = c.kept};
        for (const int64_t tokens : {1, 7, 256, 1500}) {  // two tokens a tile up to 512, eight above
            const at::Tensor x = randn({tokens, c.dim}, c.x), w = randn({c.dim}, c.w) * 0.5 + 1;
            const at::Tensor r = randn({tokens, c.dim + 16}, c.r).narrow(-1, 0, c.dim);
            const at::Tensor gate = (randn({c.experts, c.dim}, at::kFloat) * 0.1).to(c.gate);
            const at::Tensor bias = randn({c.experts}, at::kFloat) * 0.05;
            ASSERT_TRUE(moe::cuda::add_norm_route_fits(x, r, w, gate, opt));
            const moe::cuda::NormedRoute got = moe::cuda::add_norm_route(x, r, w, 1e-6, gate, bias, opt);
            const auto [sum, normed] = cuda::add_rms_norm(x, r, w, 1e-6);
            EXPECT_TRUE(at::equal(got.sum, sum)) << "tokens " << tokens;
            EXPECT_TRUE(at::equal(got.normed, normed)) << "tokens " << tokens;
            const moe::Route want = moe::cuda::route_select_rows(normed, gate, bias, opt, nullptr);
            EXPECT_TRUE(at::equal(got.route.logits, want.logits)) << "tokens " << tokens;
            EXPECT_TRUE(at::equal(got.route.indices, want.indices)) << "tokens " << tokens;
            EXPECT_TRUE(at::equal(got.route.weights, want.weights)) << "tokens " << tokens;
            EXPECT_TRUE(
                at::allclose(got.route.logits, at::linear(normed.to(at::kFloat), gate.to(at::kFloat)), 1e-5, 1e-5));
        }
    }
    // A router too large for the tile kernel's shared memory; a delta of another shape.
    const moe::RouterOptions big{.n_routed_experts = 1024, .num_experts_per_tok = 8, .n_group = 32, .topk_group = 3};
    const at::Tensor x = randn({4, 64}, at::kFloat), w = randn({64}, at::kFloat);
    EXPECT_FALSE(moe::cuda::add_norm_route_fits(x, x, w, randn({1024, 64}, at::kFloat), big));
    const moe::RouterOptions small{.n_routed_experts = 32, .num_experts_per_tok = 4, .n_group = 4, .topk_group = 2};
    EXPECT_TRUE(moe::cuda::add_norm_route_fits(x, x, w, randn({32, 64}, at::kFloat), small));
    EXPECT_FALSE(moe::cuda::add_norm_route_fits(x, randn({4, 60}, at::kFloat), w, randn({32, 64}, at::kFloat), small));
}

// The router's two-row tile kernel with its gate copied into shared memory before it waits (the decode default,
// core/kernels/row_dot.cuh) against the same kernel reading the gate from global memory: bit for bit, for an fp32 gate
// and a bf16 one.
TEST(NormRopeKernelTest, RouterGateStagedBeforeTheWaitGivesTheSameRoute) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    struct Restore {
        ~Restore() { dsrl::kernels::set_tile_stage(-1); }
    } restore;
    const auto both = [](const auto& run) {
        dsrl::kernels::set_tile_stage(1);
        const auto staged = run();
        dsrl::kernels::set_tile_stage(0);
        const auto plain = run();
        return std::make_pair(staged, plain);
    };
    for (const at::ScalarType gt : {at::kFloat, at::kBFloat16}) {
        const moe::RouterOptions opt{.n_routed_experts = 32, .num_experts_per_tok = 4, .n_group = 4, .topk_group = 2};
        const at::Tensor x = randn({255, 768}, at::kBFloat16), r = randn({255, 768}, at::kBFloat16);
        const at::Tensor w = randn({768}, at::kBFloat16) * 0.5 + 1, gate = (randn({32, 768}, at::kFloat) * 0.1).to(gt);
        const at::Tensor bias = randn({32}, at::kFloat) * 0.05;
        const auto [a, b] = both([&] { return moe::cuda::add_norm_route(x, r, w, 1e-6, gate, bias, opt); });
        EXPECT_TRUE(at::equal(a.route.logits, b.route.logits)) << c10::toString(gt);
        EXPECT_TRUE(at::equal(a.route.indices, b.route.indices)) << c10::toString(gt);
        EXPECT_TRUE(at::equal(a.route.weights, b.route.weights)) << c10::toString(gt);
        EXPECT_TRUE(at::equal(a.normed, b.normed)) << c10::toString(gt);
    }
}

// A MoE layer's output left as its pair rows (moe::cuda::routed_experts_pairs) and summed by the next add + norm as
// it reads them: the combine alone equals routed_experts's y, and the add + norm kernel (a block per row) and the
// add + norm + projection tile kernel (two and eight rows a block) give the sum, the normed rows and the projection
// bit for bit as they do from that y — k 2, 4, 8 and 9 (two batches of the sum's loads), with and without the shared
// expert's row, ids outside [0, E), bf16 and fp16. Pairs the kernels do not take (another type, a token count off) are
// refused.
TEST(NormRopeKernelTest, AddNormOfPairRowsEqualsTheCombinedSum) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    struct Case {
        at::ScalarType type;
        int64_t experts, k, hidden, inter;
        bool shared;
    };
    for (const Case c : {Case{at::kBFloat16, 32, 4, 768, 64, true}, Case{at::kBFloat16, 16, 8, 192, 128, false},
                         Case{at::kHalf, 8, 2, 256, 64, true}}) {
        SCOPED_TRACE(std::string(c10::toString(c.type)) + " k " + std::to_string(c.k) + " H " +
                     std::to_string(c.hidden) + (c.shared ? " shared" : ""));
        const int64_t E = c.experts, H = c.hidden, I = c.inter;
        const moe::SwiGluWeights experts{randn({E, I, H}, c.type) * 0.1, randn({E, I, H}, c.type) * 0.1,
                                         randn({E, H, I}, c.type) * 0.1};
        const moe::SwiGluWeights shared{randn({I, H}, c.type) * 0.1, randn({I, H}, c.type) * 0.1,
                                        randn({H, I}, c.type) * 0.1};
        const moe::SwiGluWeights* sh = c.shared ? &shared : nullptr;
        const at::Tensor w = randn({H}, c.type) * 0.5 + 1, wp = randn({8, H}, at::kFloat) * 0.1;
        for (const int64_t tokens : {1, 7, 256, 1500}) {
            SCOPED_TRACE("tokens " + std::to_string(tokens));
            const at::Tensor h = randn({tokens, H}, c.type), x = randn({tokens, H}, c.type);
            at::Tensor ids = at::randint(0, E, {tokens, c.k}, h.options().dtype(at::kLong));
            ids.select(1, 0).masked_fill_(at::rand({tokens}, h.options().dtype(at::kFloat)).lt(0.1),
                                          E);  // adds nothing
            const at::Tensor weights = at::rand({tokens, c.k}, h.options().dtype(at::kFloat));
            const at::Tensor y = moe::cuda::routed_experts(h, ids, weights, experts, sh);
            const PairRows pairs = moe::cuda::routed_experts_pairs(h, ids, weights, experts, sh);
            ASSERT_TRUE(pairs.defined());
            EXPECT_EQ(pairs.slots, c.k + (c.shared ? 1 : 0));
            EXPECT_TRUE(at::equal(moe::cuda::combine_pairs(pairs), y));
            ASSERT_TRUE(cuda::add_rms_norm_takes(x, pairs));
            const auto [sum, normed] = cuda::add_rms_norm(x, y, w, 1e-6);
            const auto [psum, pnormed] = cuda::add_rms_norm(x, pairs, w, 1e-6);
            EXPECT_TRUE(at::equal(psum, sum));
            EXPECT_TRUE(at::equal(pnormed, normed));
            ASSERT_TRUE(cuda::add_norm_proj_fits(x, {}, w, wp, &pairs));
            const cuda::NormedProjection want = cuda::add_norm_proj(x, y, w, 1e-6, wp, 0.5);
            const cuda::NormedProjection got = cuda::add_norm_proj(x, {}, w, 1e-6, wp, 0.5, &pairs);
            EXPECT_TRUE(at::equal(got.sum, want.sum));
            EXPECT_TRUE(at::equal(got.normed, want.normed));
            EXPECT_TRUE(at::equal(got.proj, want.proj));
            // Rows of [..., H] flatten to the pairs' tokens: [1, T, H] as a decode step's x is shaped.
            EXPECT_TRUE(cuda::add_rms_norm_takes(x.unsqueeze(0), pairs));
            EXPECT_FALSE(cuda::add_rms_norm_takes(x.to(at::kFloat), pairs)) << "x of another type than the rows";
            EXPECT_FALSE(cuda::add_rms_norm_takes(x.narrow(0, 0, tokens - 1), pairs)) << "a token count off";
        }
    }
    // More experts a token than one batch of the sum's loads (k = 9): the rows past the batch in a second one.
    const at::Tensor h = randn({300, 64}, at::kBFloat16), x = randn({300, 64}, at::kBFloat16);
    const at::Tensor w = randn({64}, at::kBFloat16);
    const moe::SwiGluWeights experts{randn({16, 64, 64}, at::kBFloat16) * 0.1, randn({16, 64, 64}, at::kBFloat16) * 0.1,
                                     randn({16, 64, 64}, at::kBFloat16) * 0.1};
    const at::Tensor ids = at::randint(0, 16, {300, 9}, h.options().dtype(at::kLong));
    const at::Tensor weights = at::rand({300, 9}, h.options().dtype(at::kFloat));
    const at::Tensor y = moe::cuda::routed_experts(h, ids, weights, experts);
    const PairRows nine = moe::cuda::routed_experts_pairs(h, ids, weights, experts);
    EXPECT_TRUE(at::equal(moe::cuda::combine_pairs(nine), y));
    // The ATen loop rounds each expert's weighted output to bf16 and sums the nine in bf16: a few ulps of the largest
    // value apart from the kernel's fp32 sum (2 ulps at 2-4 is 3.1e-2, 1.02e-2 of a max of 3.05 seen once).
    const at::Tensor ref = moe::routed_experts(h, ids, weights, experts).to(at::kFloat);
    EXPECT_LE((y.to(at::kFloat) - ref).abs().max().item<double>(), 3e-2 * ref.abs().max().item<double>())
        << "the sum of all nine slots";
    ASSERT_TRUE(cuda::add_rms_norm_takes(x, nine));
    EXPECT_TRUE(at::equal(cuda::add_rms_norm(x, nine, w, 1e-6).second, cuda::add_rms_norm(x, y, w, 1e-6).second));
    EXPECT_THROW(cuda::add_rms_norm(x.narrow(0, 0, 299), nine, w, 1e-6), c10::Error) << "a token count off";
}

// Shapes the indexer's scoring kernels do not take (D = 64): kAuto scores with ATen and selects with the exact top-k
// kernel, which must equal the reference's stable sort, −1 padding and ties included.
TEST(NormRopeKernelTest, IndexerSelectionWithTheTopkKernelEqualsTheSort) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const auto opts = at::TensorOptions().device(at::kCUDA);
    for (const int64_t keys : {5, 40, 300}) {
        SCOPED_TRACE(keys);
        const at::Tensor q = at::randn({3, 4, 8, 64}, opts), k = at::randn({3, keys, 64}, opts);
        const at::Tensor w = at::randn({3, 4, 8}, opts);
        const at::Tensor pos = (at::arange(4, opts.dtype(at::kLong)) + (keys - 4)).clamp_min(0).expand({3, 4});
        const at::Tensor valid = at::rand({3, keys}, opts).gt(0.2);
        const at::Tensor want = select_topk(q, k, w, 0.125, pos, valid, 16, Impl::kReference, 2);
        const at::Tensor got = select_topk(q, k, w, 0.125, pos, valid, 16, Impl::kAuto, 2);
        EXPECT_TRUE(at::equal(got.cpu(), want.cpu()));
    }
}

TEST(NormRopeKernelTest, Fp32ProjectionMatchesTheCastMatmulAndScale) {
    DSRL_REQUIRE_CUDA();
    std::optional<at::NoGradGuard> no_grad(std::in_place);
    for (const at::ScalarType xt : {at::kFloat, at::kBFloat16, at::kHalf}) {
        for (const at::ScalarType wt : {at::kFloat, at::kBFloat16}) {
            SCOPED_TRACE(std::string(c10::toString(xt)) + " x, " + c10::toString(wt) + " w");
            // The indexer's head weights of single_gpu.yaml ([B, 1, 768] x [8, 768]); a router's width; rows narrowed
            // out of wider ones (strided); the longest row; one output; outputs not a multiple of the kernel's pass.
            const at::Tensor wide = randn({5, 3, 800}, xt);
            struct Case {
                at::Tensor x;
                int64_t n;
            };
            for (const Case& c :
                 {Case{randn({256, 1, 768}, xt), 8}, Case{randn({7, 768}, xt), 32}, Case{wide.narrow(-1, 0, 768), 8},
                  Case{randn({3, 2048}, xt), 13}, Case{randn({1, 1, 48}, xt), 1}, Case{randn({33, 64}, xt), 70}}) {
                const at::Tensor w = randn({c.n, c.x.size(-1)}, wt) * 0.1;
                ASSERT_TRUE(cuda::proj_fp32_fits(c.x, w)) << c.x.sizes();
                for (const double scale : {1.0, 0.125, 1.0 / std::sqrt(8.0)}) {
                    const at::Tensor want = at::linear(c.x.to(at::kFloat), w.to(at::kFloat)) * scale;
                    const at::Tensor got = cuda::proj_fp32(c.x, w, scale);
                    ASSERT_EQ(got.scalar_type(), at::kFloat);
                    ASSERT_EQ(got.sizes(), want.sizes());
                    // fp32 products of the same operands summed in another order: within a few ulps of the sum of
                    // the terms' magnitudes (a cancelling sum's relative error can be large).
                    const at::Tensor bound =
                        at::linear(c.x.to(at::kFloat).abs(), w.to(at::kFloat).abs()) * scale * 1e-5 + 1e-30;
                    EXPECT_TRUE((got - want).abs().le(bound).all().item<bool>())
                        << c.x.sizes() << " scale " << scale << ": max |d| " << (got - want).abs().max().item<double>();
                }
            }
        }
    }
    no_grad.reset();
    // Rows the kernel does not take: not a multiple of 4, longer than 2048, a transposed weight, autograd recording.
    EXPECT_FALSE(cuda::proj_fp32_fits(randn({2, 770}, at::kFloat), randn({8, 770}, at::kFloat)));
    EXPECT_FALSE(cuda::proj_fp32_fits(randn({2, 4096}, at::kFloat), randn({8, 4096}, at::kFloat)));
    EXPECT_FALSE(cuda::proj_fp32_fits(randn({2, 64}, at::kFloat), randn({64, 8}, at::kFloat).t()));
    const at::Tensor w = randn({8, 64}, at::kFloat).requires_grad_(true);
    EXPECT_FALSE(cuda::proj_fp32_fits(randn({2, 64}, at::kFloat), w)) << "autograd records w";
    EXPECT_THROW(cuda::proj_fp32(randn({2, 770}, at::kFloat), randn({8, 770}, at::kFloat), 1.0), c10::Error);
}

TEST(NormRopeKernelTest, LayerNormMatchesAtenOnColumnRanges) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    for (const at::ScalarType xt : {at::kFloat, at::kBFloat16, at::kHalf}) {
        {
            const at::ScalarType wt = xt;  // ATen's CUDA layer_norm takes weights of x's type only
            SCOPED_TRACE(c10::toString(xt));
            // The indexer's keys as a column range of the stacked projection's output; contiguous rows; a long row.
            const at::Tensor wide = randn({4, 3, 736}, xt) * 2 + 0.5;
            for (const at::Tensor& x : {wide.narrow(-1, 672, 64), randn({7, 128}, xt), randn({2, 4096}, xt),
                                        randn({2, 4104}, xt)}) {  // 4104: past the shared-memory stash
                const at::Tensor w = randn({x.size(-1)}, wt) * 0.5 + 1, b = randn({x.size(-1)}, wt) * 0.1;
                ASSERT_TRUE(cuda::layer_norm_takes(x, w, b));
                const at::Tensor want = at::layer_norm(x, {x.size(-1)}, w, b, 1e-6);
                const at::Tensor got = cuda::layer_norm(x, w, b, 1e-6);
                ASSERT_EQ(got.scalar_type(), want.scalar_type());
                ASSERT_EQ(got.sizes(), want.sizes());
                // Two passes where ATen runs Welford's: the same statistics up to fp32 rounding; a bf16 output then
                // agrees but where that rounding crosses a bf16 boundary.
                EXPECT_LE(testing::rel_err(got, want), xt == at::kFloat ? 1e-5 : 4e-3) << x.sizes();
                if (xt != at::kFloat) {
                    EXPECT_GE(got.eq(want).to(at::kDouble).mean().item<double>(), 0.95) << x.sizes();
                }
            }
        }
    }
    EXPECT_FALSE(cuda::layer_norm_takes(randn({2, 64}, at::kFloat), randn({64}, at::kFloat), randn({32}, at::kFloat)));
    EXPECT_FALSE(
        cuda::layer_norm_takes(randn({2, 64}, at::kBFloat16), randn({64}, at::kFloat), randn({64}, at::kFloat)));
    EXPECT_FALSE(
        cuda::layer_norm_takes(randn({64, 2}, at::kFloat).t(), randn({64}, at::kFloat), randn({64}, at::kFloat)));
}

TEST(NormRopeKernelTest, KernelsRunOnlyWhereAutogradRecordsNothing) {
    DSRL_REQUIRE_CUDA();
    const at::Tensor x = randn({4, 8}, at::kFloat);
    const at::Tensor w = randn({8}, at::kFloat).requires_grad_(true);
    EXPECT_FALSE(cuda::norm_rope_kernels_fit(x, {&w})) << "a weight that needs its gradient";
    EXPECT_FALSE(cuda::norm_rope_kernels_fit(x.cpu(), {}));
    EXPECT_FALSE(cuda::norm_rope_kernels_fit(x.t(), {})) << "a last dim that is not contiguous";
    {
        at::NoGradGuard no_grad;
        EXPECT_TRUE(cuda::norm_rope_kernels_fit(x, {&w}));
    }
    EXPECT_THROW(cuda::rope(randn({2, 3, 64}, at::kFloat), randn({2, 3, 8}, at::kFloat), randn({2, 3, 8}, at::kFloat),
                            32, false),
                 c10::Error)
        << "cos of the wrong width";
}

}  // namespace
}  // namespace dsrl::dsa
