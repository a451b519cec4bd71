// CUDA indexer kernels (dsa/indexer_cuda.h) against the ATen oracle (dsa/indexer_topk.h) on fresh random
// inputs: exact top-k (order included, same scores in), bf16 and FP8 logits with identical −inf masks, the
// fused causal top-k, the logits backward vs autograd, the warm-up loss on the kernels vs its ATen path, and
// timings at full size (IndexerKernelBench, printed, never asserted). Outputs are poisoned before each run (the caching
// allocator hands the poisoned block back).
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <vector>

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "core/rng.h"
#include "dsa/indexer_cuda.h"
#include "dsa/indexer_loss.h"
#include "dsa/indexer_topk.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Leaves a freed block of `bytes` filled with 0xFF (NaN as fp32, −1-ish garbage as int) in the caching
// allocator, so that the next allocation of that size — the kernel's output — starts poisoned.
void poison_next_alloc(int64_t bytes) {
    at::Tensor junk = at::full({(bytes + 3) / 4}, std::numeric_limits<float>::quiet_NaN(),
                               at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
    junk.view(at::kInt).fill_(0x7FC0DEAD);
}

// The reference's top-k of each row of logits [R, S]: first topk of a stable descending sort, −1 where −inf.
at::Tensor ref_topk_rows(const at::Tensor& logits, int64_t topk) {
    auto [sorted, order] = at::sort(logits.cpu(), /*stable=*/true, /*dim=*/-1, /*descending=*/true);
    const int64_t kept = std::min(topk, logits.size(1));
    at::Tensor idx =
        at::where(sorted.narrow(1, 0, kept) == -kInf, at::full({1}, -1, at::kLong), order.narrow(1, 0, kept))
            .to(at::kInt);
    if (kept < topk) idx = at::cat({idx, at::full({logits.size(0), topk - kept}, -1, at::kInt)}, 1);
    return idx;
}

// Masked reference logits [B, T, S] fp32 (on the inputs' device).
at::Tensor ref_logits(const at::Tensor& q,
                      const at::Tensor& k,
                      const at::Tensor& w,
                      double scale,
                      const at::Tensor& pos,
                      const at::Tensor& valid) {
    const at::Tensor s = indexer_scores(q.to(at::kFloat), k.to(at::kFloat), w.to(at::kFloat), scale);
    const int64_t S = k.size(1);
    at::Tensor visible = at::arange(S, pos.options()).view({1, 1, S}) <= pos.unsqueeze(-1);
    if (valid.defined()) visible = visible.logical_and(valid.unsqueeze(1));
    return s.masked_fill(visible.logical_not(), -kInf);
}

// ‖a − e‖ / ‖e‖ over the finite entries of e, after checking that the −inf masks agree and a has no NaN.
double masked_rel_err(const at::Tensor& actual, const at::Tensor& expected) {
    const at::Tensor a = actual.cpu().to(at::kDouble), e = expected.cpu().to(at::kDouble);
    EXPECT_FALSE(a.isnan().any().item<bool>()) << "NaN (unwritten?) in the kernel's output";
    EXPECT_TRUE(at::equal(a == -kInf, e == -kInf))
        << "−inf masks differ: " << (a == -kInf).sum().item<int64_t>() << " vs " << (e == -kInf).sum().item<int64_t>();
    const at::Tensor finite = e.isfinite().logical_and(a.isfinite());
    const at::Tensor zero = at::zeros({1}, at::kDouble);
    return ::dsrl::testing::rel_err(at::where(finite, a, zero), at::where(finite, e, zero));
}

struct Inputs {
    at::Tensor q, k, w, pos, valid;  // CUDA; q, k bf16
    double scale;
};

// Decode-like inputs: T < S queries at the end of each sequence, batch 1 padded on the left.
Inputs make_inputs(uint64_t seed, int64_t B, int64_t T, int64_t S, int64_t H, bool pad = true) {
    at::Generator gen = rng::make_cpu_generator(seed);
    Inputs in;
    in.q = at::randn({B, T, H, 128}, gen, at::kFloat).to(at::kBFloat16).cuda();
    in.k = at::randn({B, S, 128}, gen, at::kFloat).to(at::kBFloat16).cuda();
    in.w = at::randn({B, T, H}, gen, at::kFloat).mul(1.0 / std::sqrt(double(H))).cuda();
    in.pos = (at::arange(T, at::kLong) + (S - T)).unsqueeze(0).repeat({B, 1});
    if (B > 1 && T > 2) in.pos[1].narrow(0, 0, T / 2).fill_(S / 3);  // some rows see far fewer keys
    in.pos = in.pos.cuda();
    at::Tensor valid = at::ones({B, S}, at::kBool);
    if (pad && B > 1) valid[1].narrow(0, 0, std::min<int64_t>(13, S)).fill_(false);
    if (pad && S > 40) valid[0][S / 2] = false;
    in.valid = valid.cuda();
    in.scale = 1.0 / std::sqrt(128.0);
    return in;
}

TEST(IndexerKernelTest, TopkRowsEqualsTheStableSortSelection) {
    DSRL_REQUIRE_CUDA();
    at::Generator gen = rng::make_cpu_generator(11);
    struct Case {
        int64_t rows, cols, topk;
    };
    for (const Case c : {Case{3, 1, 4}, Case{4, 5, 3}, Case{5, 100, 2048}, Case{5, 300, 128}, Case{4, 512, 128},
                         Case{3, 509, 600}, Case{4, 513, 128}, Case{6, 3000, 64}, Case{4, 4097, 2048}, Case{3, 4099, 1},
                         Case{4, 20011, 512}, Case{3, 70000, 2048}}) {
        at::Tensor x = at::randn({c.rows, c.cols}, gen, at::kFloat);
        // Row 1: heavy ties (values on a coarse grid, ±0 included); row 2: a −inf tail leaving fewer finite
        // entries than topk; the last row: exact zeros from a ReLU-like clamp, negated (−0) in part.
        if (c.rows > 1) x[1] = (x[1] * 2).round() / 2 * (at::randint(2, {c.cols}, gen, at::kLong) * 2 - 1);
        if (c.rows > 2) x[2].narrow(0, c.cols / 3, c.cols - c.cols / 3).fill_(-kInf);
        x[c.rows - 1] = x[c.rows - 1].clamp_min(0.5) - 0.5;
        x[c.rows - 1].narrow(0, 0, c.cols / 2).mul_(-1.0);
        poison_next_alloc(c.rows * c.topk * 4);
        const at::Tensor got = cuda::topk_rows(x.cuda(), c.topk).cpu();
        const at::Tensor want = ref_topk_rows(x, c.topk);
        EXPECT_TRUE(at::equal(got, want))
            << "rows " << c.rows << " cols " << c.cols << " topk " << c.topk
            << "; first differing row: " << (got != want).any(1).to(at::kInt).argmax().item<int64_t>();
        EXPECT_TRUE(at::equal(cuda::topk_rows(x.cuda(), c.topk).cpu(), got)) << "not deterministic";
    }
}

TEST(IndexerKernelTest, TopkRowsFullLengthRows) {
    DSRL_REQUIRE_CUDA();
    at::Generator gen = rng::make_cpu_generator(12);
    const int64_t R = 6, S = 131072, K = 2048;
    at::Tensor x = at::randn({R, S}, gen, at::kFloat);
    x[1] = (x[1] * 4).round();                    // a few hundred distinct values: big threshold ties
    x[2].narrow(0, 1000, S - 1000).fill_(-kInf);  // fewer finite entries than topk
    x[3] = x[3].clamp_min(2.5) - 2.5;             // ~0.6% positive, then ties at exact zero
    x[4] = x[4] * 1e-3 + 7.0;                     // one exponent: the first radix digit is one bin
    x[5].fill_(1.5);                              // all equal: the first topk keys
    poison_next_alloc(R * K * 4);
    const at::Tensor got = cuda::topk_rows(x.cuda(), K).cpu();
    const at::Tensor want = ref_topk_rows(x, K);
    for (int64_t r = 0; r < R; ++r) EXPECT_TRUE(at::equal(got[r], want[r])) << "row " << r;
}

TEST(IndexerKernelTest, LogitsMatchTheReference) {
    DSRL_REQUIRE_CUDA();
    struct Case {
        int64_t B, T, S, H;
    };
    for (const Case c : {Case{2, 37, 300, 64}, Case{1, 5, 1000, 16}, Case{2, 64, 64, 32}, Case{1, 130, 2049, 48}}) {
        const Inputs in = make_inputs(20 + c.S, c.B, c.T, c.S, c.H);
        poison_next_alloc(c.B * c.T * c.S * 4);
        const at::Tensor got = cuda::indexer_logits(in.q, in.k, in.w, in.scale, in.pos, in.valid);
        const at::Tensor want = ref_logits(in.q, in.k, in.w, in.scale, in.pos, in.valid);
        const double err = masked_rel_err(got, want);
        EXPECT_LE(err, 1e-2) << "B " << c.B << " T " << c.T << " S " << c.S << " H " << c.H;
        EXPECT_LE(err, 1e-4) << "fp32 accumulation of bf16 products should be near-exact";
        EXPECT_TRUE(at::equal(cuda::indexer_logits(in.q, in.k, in.w, in.scale, in.pos, in.valid), got))
            << "not deterministic";
    }
    // Without key_valid, and w in bf16.
    const Inputs in = make_inputs(33, 1, 20, 90, 64);
    const at::Tensor got = cuda::indexer_logits(in.q, in.k, in.w.to(at::kBFloat16), in.scale, in.pos, {});
    EXPECT_LE(masked_rel_err(got, ref_logits(in.q, in.k, in.w.to(at::kBFloat16), in.scale, in.pos, {})), 1e-4);
}

TEST(IndexerKernelTest, Fp8LogitsMatchTheReference) {
    DSRL_REQUIRE_CUDA();
    const Inputs in = make_inputs(41, 2, 45, 700, 64);
    const cuda::Fp8Rows q8 = cuda::quantize_fp8_rows(in.q), k8 = cuda::quantize_fp8_rows(in.k);
    EXPECT_EQ(q8.values.scalar_type(), at::kFloat8_e4m3fn);
    EXPECT_EQ(q8.scales.sizes(), in.w.sizes());
    poison_next_alloc(2 * 45 * 700 * 4);
    const at::Tensor got =
        cuda::indexer_logits_fp8(q8.values, q8.scales, k8.values, k8.scales, in.w, in.scale, in.pos, in.valid);
    const double err = masked_rel_err(got, ref_logits(in.q, in.k, in.w, in.scale, in.pos, in.valid));
    EXPECT_LE(err, 5e-2);
    std::printf("[fp8 logits] rel err vs bf16 reference %.3g\n", err);
    // Against a reference that simulates the quantization: only accumulation order differs.
    const at::Tensor dq = q8.values.to(at::kFloat) * q8.scales.unsqueeze(-1);
    const at::Tensor dk = k8.values.to(at::kFloat) * k8.scales.unsqueeze(-1);
    EXPECT_LE(masked_rel_err(got, ref_logits(dq, dk, in.w, in.scale, in.pos, in.valid)), 1e-4);
}

// Per row: at least `min_agree` of the reference's valid indices are selected, the valid counts are equal,
// and the selected set's reference-score sum is within a rounding tolerance of the reference set's.
void expect_topk_sets_close(
    const at::Tensor& got_t, const at::Tensor& want_t, const at::Tensor& scores_t, double min_agree, double sum_rtol) {
    const at::Tensor got = got_t.cpu().reshape({-1, got_t.size(-1)}), want = want_t.cpu().reshape({-1, got_t.size(-1)});
    const at::Tensor scores = scores_t.cpu().reshape({got.size(0), -1});
    const auto g = got.accessor<int32_t, 2>(), w = want.accessor<int32_t, 2>();
    const auto sc = scores.accessor<float, 2>();
    const int64_t R = got.size(0), K = got.size(1), S = scores.size(1);
    int64_t agree = 0, total = 0, bad_sum_rows = 0, bad_count_rows = 0, bad_index = 0;
    std::vector<char> mark(S);
    for (int64_t r = 0; r < R; ++r) {
        std::fill(mark.begin(), mark.end(), 0);
        double sum_w = 0, abs_w = 0, sum_g = 0;
        int64_t n_w = 0, n_g = 0;
        for (int64_t i = 0; i < K; ++i) {
            if (w[r][i] >= 0) {
                mark[w[r][i]] = 1;
                sum_w += sc[r][w[r][i]];
                abs_w += std::abs(sc[r][w[r][i]]);
                ++n_w;
            }
        }
        for (int64_t i = 0; i < K; ++i) {
            const int32_t j = g[r][i];
            if (j < 0) continue;
            if (j >= S || sc[r][j] == -kInf) {
                ++bad_index;
                continue;
            }
            agree += mark[j];
            sum_g += sc[r][j];
            ++n_g;
        }
        total += n_w;
        bad_count_rows += n_g != n_w;
        bad_sum_rows += std::abs(sum_g - sum_w) > sum_rtol * (abs_w + 1e-6);
    }
    EXPECT_EQ(bad_index, 0) << "indices out of range or of invisible keys";
    EXPECT_EQ(bad_count_rows, 0) << "rows whose number of valid indices differs";
    EXPECT_EQ(bad_sum_rows, 0) << "rows whose selected score sum is off";
    EXPECT_GE(double(agree), min_agree * double(total)) << agree << " of " << total << " indices agree";
    std::printf("[topk sets] %lld of %lld indices agree\n", static_cast<long long>(agree),
                static_cast<long long>(total));
}

TEST(IndexerKernelTest, FusedTopkMatchesTheReference) {
    DSRL_REQUIRE_CUDA();
    struct Case {
        int64_t B, T, S, H, K, chunk;
    };
    for (const Case c :
         {Case{2, 50, 3000, 64, 256, 24}, Case{1, 7, 5, 16, 8, 1024}, Case{1, 1024, 4096, 64, 2048, 512}}) {
        const Inputs in = make_inputs(50 + c.S, c.B, c.T, c.S, c.H);
        poison_next_alloc(c.B * c.T * c.K * 4);
        const at::Tensor got = cuda::indexer_topk(in.q, in.k, in.w, in.scale, in.pos, in.valid, c.K, c.chunk);
        ASSERT_EQ(got.sizes(), (std::vector<int64_t>{c.B, c.T, c.K}));
        const at::Tensor want =
            indexer_topk(in.q.to(at::kFloat), in.k.to(at::kFloat), in.w, in.scale, in.pos, in.valid, c.K, c.chunk);
        const at::Tensor scores = ref_logits(in.q, in.k, in.w, in.scale, in.pos, in.valid);
        expect_topk_sets_close(got, want, scores, 0.99, 1e-5);
        EXPECT_TRUE(at::equal(cuda::indexer_topk(in.q, in.k, in.w, in.scale, in.pos, in.valid, c.K, c.chunk), got))
            << "not deterministic";
        // FP8: same contract, looser agreement (quantization moves scores near the threshold).
        const at::Tensor got8 = cuda::indexer_topk(in.q, in.k, in.w, in.scale, in.pos, in.valid, c.K, c.chunk, true);
        expect_topk_sets_close(got8, want, scores, 0.7, 5e-2);
    }
}

// A paged decode's indexer (keys read through slot tables from a shuffled pool) against the reference on the gathered
// keys: the head dims and counts of the models (64 and 128 dims, 8 to 64 heads, and a small odd case), bf16 and fp32
// pools, fp32 and bf16 head weights, two queries per row, a row that sees nothing; the slots are the table's.
TEST(IndexerKernelTest, PagedTopkMatchesTheReferenceOnGatheredKeys) {
    DSRL_REQUIRE_CUDA();
    struct Case {
        int64_t B, L, S, H, D, K;
        at::ScalarType dtype, w_dtype;
    };
    for (const Case c :
         {Case{5, 1, 300, 8, 64, 128, at::kBFloat16, at::kFloat},
          Case{3, 2, 700, 64, 128, 256, at::kBFloat16, at::kFloat}, Case{4, 1, 40, 3, 16, 8, at::kFloat, at::kBFloat16},
          Case{2, 1, 2000, 16, 32, 2048, at::kBFloat16, at::kFloat}}) {
        SCOPED_TRACE(::testing::Message()
                     << "B " << c.B << " L " << c.L << " S " << c.S << " H " << c.H << " D " << c.D << " K " << c.K);
        at::Generator gen = rng::make_cpu_generator(90 + c.S + c.H);
        const int64_t P = c.B * c.S + 17;
        const at::Tensor pool = at::randn({P, c.D}, gen, at::kFloat).to(c.dtype).cuda();
        const at::Tensor read = at::randperm(P, gen, at::kLong).narrow(0, 0, c.B * c.S).view({c.B, c.S}).cuda();
        // q as a column range of a wider tensor (the model's stacked projection), w strided the same way.
        const at::Tensor q_wide = at::randn({c.B, c.L, c.H * c.D + 24}, gen, at::kFloat).to(c.dtype).cuda();
        const at::Tensor q = q_wide.narrow(2, 8, c.H * c.D).view({c.B, c.L, c.H, c.D});
        const at::Tensor w = at::randn({c.B, c.L, c.H + 4}, gen, at::kFloat)
                                 .div(std::sqrt(double(c.H)))
                                 .to(c.w_dtype)
                                 .cuda()
                                 .narrow(2, 0, c.H);
        at::Tensor pos = (at::arange(c.L, at::kLong) + (c.S - c.L)).unsqueeze(0).repeat({c.B, 1});
        pos[c.B - 1].fill_(-1);              // sees nothing
        if (c.B > 2) pos[1].fill_(c.S / 3);  // sees a third
        at::Tensor valid = at::ones({c.B, c.S}, at::kBool);
        valid[0].narrow(0, 0, std::min<int64_t>(9, c.S)).fill_(false);  // left padding
        valid[0][c.S / 2] = false;
        pos = pos.cuda();
        valid = valid.cuda();
        const double scale = 1.0 / std::sqrt(double(c.D));
        ASSERT_TRUE(cuda::indexer_paged_fits(q, pool, w, read, c.K));
        poison_next_alloc(c.B * c.L * c.K * 8);
        const cuda::PagedTopk got = cuda::indexer_paged_topk(q, pool, read, w, scale, pos, valid, c.K);
        ASSERT_EQ(got.keys.sizes(), (std::vector<int64_t>{c.B, c.L, c.K}));
        ASSERT_EQ(got.slots.sizes(), (std::vector<int64_t>{c.B, c.L, c.K}));
        const at::Tensor keys = pool.index_select(0, read.reshape({-1})).view({c.B, c.S, c.D});
        const at::Tensor want = indexer_topk(q.to(at::kFloat), keys.to(at::kFloat), w.to(at::kFloat), scale, pos, valid,
                                             c.K, /*query_chunk=*/1024);
        const at::Tensor scores = ref_logits(q, keys, w, scale, pos, valid);
        expect_topk_sets_close(got.keys, want, scores, 0.99, 1e-5);
        // The slots are the table's entries of the selected keys, −1 with the key.
        const at::Tensor k64 = got.keys.to(at::kLong);
        const at::Tensor table = read.unsqueeze(1).expand({c.B, c.L, c.S});
        const at::Tensor expect_slots =
            at::where(k64 >= 0, table.gather(2, k64.clamp_min(0)), at::full({1}, -1, read.options()));
        EXPECT_TRUE(at::equal(got.slots, expect_slots));
        EXPECT_TRUE(at::equal(got.keys[c.B - 1], at::full({c.L, c.K}, -1, got.keys.options()))) << "the blind row";
        const cuda::PagedTopk again = cuda::indexer_paged_topk(q, pool, read, w, scale, pos, valid, c.K);
        EXPECT_TRUE(at::equal(again.keys, got.keys)) << "not deterministic";
        // Rows of at most 512 keys are scored and selected in one kernel: the two-kernel path's selection exactly.
        const cuda::PagedTopk two = cuda::indexer_paged_topk(q, pool, read, w, scale, pos, valid, c.K, false);
        EXPECT_TRUE(at::equal(two.keys, got.keys));
        EXPECT_TRUE(at::equal(two.slots, got.slots));
        // The query rotated as the kernels stage it: the selection of the query the rope kernel rotated, in either
        // path, half split (the indexer's) and interleaved.
        for (const bool interleaved : {false, true}) {
            const int64_t rope = interleaved ? c.D : std::min<int64_t>(c.D, 32);
            const QueryRope r{at::randn({c.B, c.L, rope / 2}, gen, at::kFloat).mul(4).cuda(),
                              at::randn({c.B, c.L, rope / 2}, gen, at::kFloat).cuda(), rope, interleaved};
            const at::Tensor rotated = rotate_query(q, r, Impl::kAuto);
            for (const bool one_launch : {true, false}) {
                SCOPED_TRACE(::testing::Message()
                             << "rotated, interleaved " << interleaved << ", one launch " << one_launch);
                const cuda::PagedTopk in_kernel =
                    cuda::indexer_paged_topk(q, pool, read, w, scale, pos, valid, c.K, one_launch, &r);
                const cuda::PagedTopk before =
                    cuda::indexer_paged_topk(rotated, pool, read, w, scale, pos, valid, c.K, one_launch);
                EXPECT_TRUE(at::equal(in_kernel.keys, before.keys));
                EXPECT_TRUE(at::equal(in_kernel.slots, before.slots));
            }
        }
    }
    {  // Exact ties (every key the same): the lowest positions win, in order, in either path; a row of one warp's keys.
        for (const int64_t S : {1, 31, 200, 512}) {
            SCOPED_TRACE(::testing::Message() << "ties, S " << S);
            const at::Tensor pool = at::ones({S + 3, 64}, at::kBFloat16).cuda();
            const at::Tensor read = (at::arange(S, at::kLong) + 3).view({1, S}).cuda();
            const at::Tensor q = at::ones({1, 2, 8, 64}, at::kBFloat16).cuda(), w = at::ones({1, 2, 8}).cuda();
            const at::Tensor pos = at::tensor({S - 1, S / 2}, at::kLong).view({1, 2}).cuda();
            const int64_t K = std::min<int64_t>(S, 16);
            const cuda::PagedTopk one = cuda::indexer_paged_topk(q, pool, read, w, 0.125, pos, {}, K);
            const cuda::PagedTopk two = cuda::indexer_paged_topk(q, pool, read, w, 0.125, pos, {}, K, false);
            EXPECT_TRUE(at::equal(one.keys, two.keys));
            EXPECT_TRUE(at::equal(one.slots, two.slots));
            const int64_t seen = std::min<int64_t>(K, S / 2 + 1);
            EXPECT_TRUE(at::equal(one.keys[0][1].narrow(0, 0, seen).cpu(), at::arange(seen, at::kInt)));
            EXPECT_TRUE(at::equal(one.slots[0][0].cpu(), at::arange(K, at::kLong) + 3));
        }
    }
    // What the kernels do not take, the model's fallback (the gather and select_topk) handles.
    const at::Tensor pool = at::zeros({64, 60}, at::kBFloat16).cuda(), read = at::zeros({1, 8}, at::kLong).cuda();
    const at::Tensor w = at::zeros({1, 1, 4}, at::kFloat).cuda();
    EXPECT_FALSE(cuda::indexer_paged_fits(at::zeros({1, 1, 4, 60}, at::kBFloat16).cuda(), pool, w, read, 8));  // D % 8
    const at::Tensor big = at::zeros({64, 256}, at::kBFloat16).cuda();
    EXPECT_FALSE(cuda::indexer_paged_fits(at::zeros({1, 1, 64, 256}, at::kBFloat16).cuda(), big,
                                          at::zeros({1, 1, 64}, at::kFloat).cuda(), read, 8));
    EXPECT_FALSE(cuda::indexer_paged_fits(at::zeros({1, 1, 4, 64}, at::kBFloat16).cuda(),
                                          at::zeros({64, 64}, at::kHalf).cuda(), w, read, 8));
    EXPECT_FALSE(cuda::indexer_paged_fits(at::zeros({1, 1, 4, 64}, at::kBFloat16).cuda(),
                                          at::zeros({64, 64}, at::kBFloat16).cuda(), w, read, 4096));
    EXPECT_THROW(cuda::indexer_paged_topk(at::zeros({1, 1, 4, 60}, at::kBFloat16).cuda(), pool, read, w, 1.0,
                                          at::zeros({1, 1}, at::kLong).cuda(), at::Tensor(), 8),
                 c10::Error);
}

TEST(IndexerKernelTest, BackwardMatchesAutograd) {
    DSRL_REQUIRE_CUDA();
    struct Case {
        int64_t B, T, S, H;
        bool bf16;
    };
    for (const Case c : {Case{2, 19, 150, 32, true}, Case{2, 131, 700, 64, true}, Case{1, 64, 64, 48, true},
                         Case{1, 7, 300, 16, true}, Case{2, 19, 150, 32, false}}) {
        Inputs in = make_inputs(61 + c.T, c.B, c.T, c.S, c.H);
        if (!c.bf16) {
            in.q = in.q.to(at::kFloat);
            in.k = in.k.to(at::kFloat);
        }
        at::Generator gen = rng::make_cpu_generator(62 + c.S);
        const at::Tensor g = at::randn({c.B, c.T, c.S}, gen, at::kFloat).cuda();
        const cuda::IndexerGrads got = cuda::indexer_logits_backward(in.q, in.k, in.w, in.scale, in.pos, in.valid, g);
        at::Tensor q = in.q.to(at::kFloat).detach().requires_grad_(true);
        at::Tensor k = in.k.to(at::kFloat).detach().requires_grad_(true);
        at::Tensor w = in.w.detach().requires_grad_(true);
        const at::Tensor visible = ref_logits(in.q, in.k, in.w, in.scale, in.pos, in.valid).isfinite().to(at::kFloat);
        (indexer_scores(q, k, w, in.scale) * g * visible).sum().backward();
        auto rel = [](const at::Tensor& a, const at::Tensor& e) {
            EXPECT_FALSE(a.isnan().any().item<bool>());
            return ::dsrl::testing::rel_err(a, e);
        };
        EXPECT_EQ(got.dq.scalar_type(), in.q.scalar_type());
        EXPECT_EQ(got.dk.scalar_type(), in.k.scalar_type());
        EXPECT_EQ(got.dw.scalar_type(), at::kFloat);
        const double eq = rel(got.dq, q.grad()), ek = rel(got.dk, k.grad()), ew = rel(got.dw, w.grad());
        EXPECT_LE(eq, 1e-2) << "dq; T " << c.T << " S " << c.S << " H " << c.H;
        EXPECT_LE(ek, 1e-2) << "dk; T " << c.T << " S " << c.S << " H " << c.H;
        EXPECT_LE(ew, 1e-2) << "dw; T " << c.T << " S " << c.S << " H " << c.H;
        std::printf("[backward] %s T=%lld S=%lld H=%lld: rel err dq %.2g dk %.2g dw %.2g\n", c.bf16 ? "bf16" : "fp32",
                    (long long)c.T, (long long)c.S, (long long)c.H, eq, ek, ew);
        const cuda::IndexerGrads again = cuda::indexer_logits_backward(in.q, in.k, in.w, in.scale, in.pos, in.valid, g);
        EXPECT_TRUE(at::equal(again.dq, got.dq) && at::equal(again.dk, got.dk) && at::equal(again.dw, got.dw))
            << "not deterministic";
    }
}

// The dense warm-up loss with its indexer logits and backward on the kernels (model.impl auto/cuda) against the
// ATen path (reference) on the same bf16 inputs: loss, valid-query count and the gradients of q, k, w; query
// tiles that do not divide L, padding on both sides, two indexer head counts.
TEST(IndexerKernelTest, WarmupLossKernelPathMatchesTheReferencePath) {
    DSRL_REQUIRE_CUDA();
    for (const int64_t HI : {int64_t(64), int64_t(32)}) {
        const int64_t B = 2, L = 300, H = 16, C = 64, R = 16;
        at::Generator gen = rng::make_cpu_generator(81 + HI);
        auto randn = [&](at::IntArrayRef shape, double mul) {
            return at::randn(shape, gen, at::kFloat).mul(mul).to(at::kBFloat16).cuda();
        };
        IndexerOutput ix{randn({B, L, HI, 128}, 1.0), randn({B, L, 128}, 1.0), randn({B, L, HI}, 0.3).to(at::kFloat)};
        if (HI == 32) ix.k = ix.k.to(at::kFloat);  // as under bf16 autocast (k leaves a LayerNorm in fp32)
        AttentionInputs att;
        att.q_lat = randn({B, L, H, C}, 0.5);
        att.q_pe = randn({B, L, H, R}, 0.5);
        att.c_kv = randn({B, L, C}, 0.5);
        att.k_pe = randn({B, L, R}, 0.5);
        att.lse = at::zeros({B, L, H}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));  // bf16: recomputed
        att.scale = 1.0 / std::sqrt(double(C + R));
        att.dense = true;
        const at::Tensor pos = at::arange(L, at::kLong).unsqueeze(0).repeat({B, 1}).cuda();
        at::Tensor valid = at::ones({B, L}, at::kBool);
        valid[0].narrow(0, 0, 5).fill_(false);
        valid[1].narrow(0, L - 7, 7).fill_(false);
        valid = valid.cuda();
        auto run = [&](Impl impl) {
            IndexerOutput x{ix.q.detach().requires_grad_(true), ix.k.detach().requires_grad_(true),
                            ix.w.detach().requires_grad_(true)};
            const IndexerLoss l = indexer_warmup_loss(x, att, pos, valid, /*query_tile=*/64, impl);
            std::vector<at::Tensor> out = torch::autograd::grad({l.loss}, {x.q, x.k, x.w});
            out.insert(out.begin(), l.loss.detach());
            return std::make_pair(out, l.num_queries);
        };
        const auto [want, want_n] = run(Impl::kReference);
        const auto [got, got_n] = run(Impl::kCuda);
        EXPECT_EQ(got_n, want_n);
        EXPECT_EQ(got[2].scalar_type(), ix.k.scalar_type());
        const char* names[] = {"loss", "dq", "dk", "dw"};
        for (int i = 0; i < 4; ++i) {
            EXPECT_FALSE(got[i].isnan().any().item<bool>()) << names[i];
            const double err = ::dsrl::testing::rel_err(got[i].to(at::kFloat), want[i].to(at::kFloat));
            EXPECT_LE(err, 1e-2) << names[i] << " H_I " << HI;
            std::printf("[warmup loss kernels] H_I=%lld %s rel err %.2e\n", (long long)HI, names[i], err);
        }
        EXPECT_GT(want[0].item<double>(), 0.0);
        const auto [auto_out, auto_n] = run(Impl::kAuto);  // auto takes the kernels for these inputs
        EXPECT_TRUE(at::equal(auto_out[0], got[0]));
    }
    // kCuda on inputs the kernels cannot take: a clear error, not a silent fallback.
    IndexerOutput f32{at::randn({1, 8, 16, 128}).cuda(), at::randn({1, 8, 128}).cuda(), at::randn({1, 8, 16}).cuda()};
    AttentionInputs att{at::randn({1, 8, 2, 4}).cuda(),
                        at::randn({1, 8, 2, 2}).cuda(),
                        at::randn({1, 8, 4}).cuda(),
                        at::randn({1, 8, 2}).cuda(),
                        at::zeros({1, 8, 2}).cuda(),
                        0.5,
                        true};
    const at::Tensor pos = at::arange(8, at::kLong).unsqueeze(0).cuda();
    EXPECT_THROW(indexer_warmup_loss(f32, att, pos, at::Tensor(), 4, Impl::kCuda), c10::Error);
    EXPECT_NO_THROW(indexer_warmup_loss(f32, att, pos, at::Tensor(), 4, Impl::kAuto));
}

TEST(IndexerKernelTest, RejectsBadArguments) {
    DSRL_REQUIRE_CUDA();
    const Inputs in = make_inputs(71, 1, 4, 8, 16);
    EXPECT_THROW(cuda::indexer_logits(in.q.to(at::kFloat), in.k, in.w, in.scale, in.pos, in.valid), c10::Error);
    EXPECT_THROW(cuda::indexer_logits(in.q.narrow(3, 0, 64), in.k, in.w, in.scale, in.pos, in.valid), c10::Error);
    EXPECT_THROW(cuda::indexer_logits(in.q, in.k.narrow(1, 0, 7), in.w, in.scale, in.pos, in.valid), c10::Error);
    EXPECT_THROW(cuda::topk_rows(at::zeros({2, 8}, at::kFloat).cuda(), 4096), c10::Error);
    EXPECT_THROW(cuda::topk_rows(at::zeros({2, 8}, at::kDouble).cuda(), 4), c10::Error);
}

}  // namespace
}  // namespace dsrl::dsa
