// The forward-only SIMT and tensor-core sparse MLA kernels (dsa/kernels/sparse_mla_simt.cuh, sparse_mla_mma.cuh)
// against the ATen reference (dsa::sparse_mla_attention) on fresh random inputs: the small models' shapes,
// batch-strided caches and a pool view, −1 entries, a query without any valid entry (out 0, lse −inf), fp32, bf16 and
// fp16, one tile or several per block, splits; the dispatch rule of
// dsa::sparse_attention (kAuto in a forward without autograd only). Also the paged-slots kernel
// (dsa/paged_slots_cuda.h) against the ATen gather through the block table that dsa/model.cpp falls back to, and the
// paged step's inputs kernel against Model::paged_decode_step's ATen formulas.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/isneginf.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include "dsa/paged_slots_cuda.h"
#include "dsa/rope.h"
#include "dsa/sparse_attention.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

struct Shape {
    int64_t B, T, H, C, R, K, S;
};

void check(const Shape& s, at::ScalarType q_type, at::ScalarType kv_type, bool pool_view, bool tensor_cores = true) {
    SCOPED_TRACE(::testing::Message() << "B " << s.B << " T " << s.T << " H " << s.H << " C " << s.C << " R " << s.R
                                      << " K " << s.K << " S " << s.S << " q " << q_type << " kv " << kv_type
                                      << (pool_view ? " (pool view)" : "") << (tensor_cores ? "" : " (SIMT only)"));
    const auto f = at::TensorOptions().device(at::kCUDA);
    const at::Tensor q_lat = at::randn({s.B, s.T, s.H, s.C}, f).to(q_type);
    const at::Tensor q_pe = at::randn({s.B, s.T, s.H, s.R}, f).to(q_type);
    // A pool view [1, S, C] out of wider rows ([c_kv | k_pe | more]) like the paged cache's per-layer tensors, or a
    // plain cache [B, S, C].
    at::Tensor c_kv, k_pe;
    if (pool_view) {
        const at::Tensor rows = at::randn({s.B, s.S, s.C + s.R + 8}, f).to(kv_type);
        c_kv = rows.narrow(2, 0, s.C);
        k_pe = rows.narrow(2, s.C, s.R);
    } else {
        c_kv = at::randn({s.B, s.S, s.C}, f).to(kv_type);
        k_pe = at::randn({s.B, s.S, s.R}, f).to(kv_type);
    }
    at::Tensor idx = at::randint(s.S, {s.B, s.T, s.K}, f.dtype(at::kLong));
    idx = at::where(at::rand({s.B, s.T, s.K}, f).lt(0.2), at::full({}, -1, idx.options()), idx);
    idx[0][0].fill_(-1);  // a query with no valid entry
    const double scale = 0.1;
    ASSERT_TRUE(cuda::sparse_mla_simt_fits(q_lat, q_pe, c_kv, k_pe, idx));
    // Every shape here is one the tensor-core kernel takes when q and the cache are both bf16 or both fp16.
    const bool half = q_type != at::kFloat && q_type == kv_type;
    EXPECT_EQ(cuda::sparse_mla_simt_uses_tensor_cores(q_lat, q_pe, c_kv, k_pe, idx), half);
    const AttentionOutput got = cuda::sparse_mla_simt(q_lat, q_pe, c_kv, k_pe, idx, scale, tensor_cores);
    const AttentionOutput want = sparse_mla_attention(q_lat, q_pe, c_kv, k_pe, idx, scale);
    ASSERT_EQ(got.out.scalar_type(), want.out.scalar_type());
    ASSERT_EQ(got.out.sizes(), want.out.sizes());
    const bool exact = q_type == at::kFloat;
    EXPECT_LE(testing::rel_err(got.out, want.out), exact ? 2e-6 : 1e-2);
    EXPECT_TRUE(got.lse.isneginf().equal(want.lse.isneginf()));
    const at::Tensor finite = want.lse.isneginf().logical_not();
    EXPECT_LE(testing::rel_err(at::where(finite, got.lse, 0.0), at::where(finite, want.lse, 0.0)), 1e-5);
    EXPECT_EQ(got.out[0][0].abs().max().item<double>(), 0.0) << "a query without entries";
}

TEST(SparseMlaSimtTest, MatchesTheReference) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    // single_gpu.yaml's decode (queries of every row as one sequence over the pool), the demo model, a prefill-like
    // batch, heads x latent at the limit, K not a multiple of the tile, one query (its entries over eight blocks and
    // the merge), many queries (one block each).
    for (const Shape& s :
         {Shape{
              1,
              64,
              12,
              256,
              32,
              128,
              2000,
          },
          Shape{1, 7, 4, 32, 16, 12, 50}, Shape{2, 33, 12, 256, 32, 128, 300}, Shape{1, 3, 16, 512, 64, 37, 100},
          Shape{1, 1, 12, 256, 32, 128, 500}, Shape{1, 600, 12, 256, 32, 128, 700},
          // three m tiles of heads; more entries than a tile, several tiles per block (online softmax across them)
          Shape{2, 5, 40, 64, 16, 70, 90}, Shape{1, 300, 12, 256, 32, 300, 700}}) {
        check(s, at::kFloat, at::kFloat, false);
        check(s, at::kBFloat16, at::kBFloat16, true);                          // the tensor-core kernel
        check(s, at::kBFloat16, at::kBFloat16, true, /*tensor_cores=*/false);  // the SIMT kernel at the same shape
        check(s, at::kBFloat16, at::kBFloat16, false);
        check(s, at::kHalf, at::kHalf, true);
        check(s, at::kBFloat16, at::kFloat, true);  // bf16 autocast over an fp32 pool
    }
}

TEST(SparseMlaSimtTest, TensorCoreKernelsSubTilesMatchTheReference) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    // A tile staged whole, in two or in four sub-tiles (a ring refilled as it is consumed; sub-tiles past the last
    // entry skipped): each the reference's result (the online softmax's steps differ, so P's bf16 rounding may too).
    // The decode of single_gpu.yaml at batch 256 and 1 (splits), several tiles per block, K not a multiple of a
    // sub-tile, three m tiles of heads.
    struct StagesReset {
        ~StagesReset() { cuda::set_sparse_mla_mma_stages(0); }
    } reset;
    const auto f = at::TensorOptions().device(at::kCUDA);
    for (const Shape& s :
         {Shape{1, 256, 12, 256, 32, 128, 4096}, Shape{1, 1, 12, 256, 32, 128, 500},
          Shape{1, 40, 12, 256, 32, 300, 700}, Shape{1, 9, 12, 256, 32, 100, 300}, Shape{2, 5, 40, 64, 16, 70, 90}}) {
        SCOPED_TRACE(::testing::Message() << "B " << s.B << " T " << s.T << " H " << s.H << " K " << s.K);
        const at::Tensor rows = at::randn({s.B, s.S, s.C + s.R + 8}, f).to(at::kBFloat16);
        const at::Tensor c_kv = rows.narrow(2, 0, s.C), k_pe = rows.narrow(2, s.C, s.R);
        const at::Tensor q_lat = at::randn({s.B, s.T, s.H, s.C}, f).to(at::kBFloat16);
        const at::Tensor q_pe = at::randn({s.B, s.T, s.H, s.R}, f).to(at::kBFloat16);
        at::Tensor idx = at::randint(s.S, {s.B, s.T, s.K}, f.dtype(at::kLong));
        idx = at::where(at::rand({s.B, s.T, s.K}, f).lt(0.2), at::full({}, -1, idx.options()), idx);
        ASSERT_TRUE(cuda::sparse_mla_simt_uses_tensor_cores(q_lat, q_pe, c_kv, k_pe, idx));
        const AttentionOutput want = sparse_mla_attention(q_lat, q_pe, c_kv, k_pe, idx, 0.06);
        const at::Tensor finite = want.lse.isneginf().logical_not();
        for (const int64_t stages : {1, 2, 4, 0}) {
            SCOPED_TRACE(::testing::Message() << "stages " << stages);
            cuda::set_sparse_mla_mma_stages(stages);
            const AttentionOutput got = cuda::sparse_mla_simt(q_lat, q_pe, c_kv, k_pe, idx, 0.06, true);
            EXPECT_LE(testing::rel_err(got.out, want.out), 1e-2);
            EXPECT_TRUE(got.lse.isneginf().equal(want.lse.isneginf()));
            EXPECT_LE(testing::rel_err(at::where(finite, got.lse, 0.0), at::where(finite, want.lse, 0.0)), 1e-5);
        }
    }
    EXPECT_THROW(cuda::set_sparse_mla_mma_stages(3), c10::Error);
}

TEST(SparseMlaSimtTest, TensorCoreKernelMatchesTheSimtOne) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    // The decode of single_gpu.yaml at batch 1, 64 and 256 through the pool: the tensor-core kernel (P rounded to bf16)
    // against the SIMT kernel (fp32 throughout) on the same bf16 inputs.
    const auto f = at::TensorOptions().device(at::kCUDA);
    for (const int64_t N : {1, 64, 256}) {
        SCOPED_TRACE(::testing::Message() << "queries " << N);
        const int64_t H = 12, C = 256, R = 32, K = 128, S = 4096;
        const at::Tensor q_lat = at::randn({1, N, H, C}, f).to(at::kBFloat16);
        const at::Tensor q_pe = at::randn({1, N, H, R}, f).to(at::kBFloat16);
        const at::Tensor c_kv = at::randn({1, S, C}, f).to(at::kBFloat16);
        const at::Tensor k_pe = at::randn({1, S, R}, f).to(at::kBFloat16);
        at::Tensor idx = at::randint(S, {1, N, K}, f.dtype(at::kLong));
        idx = at::where(at::rand({1, N, K}, f).lt(0.1), at::full({}, -1, idx.options()), idx);
        ASSERT_TRUE(cuda::sparse_mla_simt_uses_tensor_cores(q_lat, q_pe, c_kv, k_pe, idx));
        const AttentionOutput mma = cuda::sparse_mla_simt(q_lat, q_pe, c_kv, k_pe, idx, 0.06, true);
        const AttentionOutput simt = cuda::sparse_mla_simt(q_lat, q_pe, c_kv, k_pe, idx, 0.06, false);
        EXPECT_LE(testing::rel_err(mma.out, simt.out), 1e-2);
        EXPECT_LE(testing::rel_err(mma.lse, simt.lse), 1e-5);
    }
}

TEST(SparseMlaSimtTest, QueriesAreReadInPlaceAsColumnRangesOfAWiderOutput) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    // The absorbed decode's q̃ and rope query are column ranges of one GEMM's output [B, L, W]: both kernels read them
    // through their row stride, with B and L rows, the same bits as contiguous copies.
    const auto f = at::TensorOptions().device(at::kCUDA);
    const int64_t H = 12, C = 256, R = 32, K = 64, S = 512;
    for (const bool tensor_cores : {true, false}) {
        for (const auto& [B, L] : {std::pair<int64_t, int64_t>{1, 37}, {3, 1}, {2, 5}}) {
            SCOPED_TRACE(::testing::Message() << "tensor cores " << tensor_cores << ", B " << B << ", L " << L);
            const at::Tensor wide = at::randn({B, L, H * (C + R) + 40}, f).to(at::kBFloat16);
            const at::Tensor q_lat = wide.narrow(-1, 0, H * C).view({B, L, H, C});
            const at::Tensor q_pe = wide.narrow(-1, H * C, H * R).view({B, L, H, R});
            const at::Tensor c_kv = at::randn({B, S, C}, f).to(at::kBFloat16);
            const at::Tensor k_pe = at::randn({B, S, R}, f).to(at::kBFloat16);
            at::Tensor idx = at::randint(S, {B, L, K}, f.dtype(at::kLong));
            idx = at::where(at::rand({B, L, K}, f).lt(0.1), at::full({}, -1, idx.options()), idx);
            ASSERT_FALSE(q_lat.is_contiguous());
            if (tensor_cores) {
                ASSERT_TRUE(cuda::sparse_mla_simt_uses_tensor_cores(q_lat, q_pe, c_kv, k_pe, idx));
            }
            const AttentionOutput strided = cuda::sparse_mla_simt(q_lat, q_pe, c_kv, k_pe, idx, 0.06, tensor_cores);
            const AttentionOutput copied =
                cuda::sparse_mla_simt(q_lat.contiguous(), q_pe.contiguous(), c_kv, k_pe, idx, 0.06, tensor_cores);
            EXPECT_TRUE(at::equal(strided.out, copied.out));
            EXPECT_TRUE(at::equal(strided.lse, copied.lse));
            // q_pe rotated as the kernel stages it (a decode step's query RoPE): the bits of the query the rope kernel
            // rotated first.
            const QueryRope rope{at::randn({B, L, R / 2}, f) * 4, at::randn({B, L, R / 2}, f), R, true};
            const AttentionOutput in_kernel =
                cuda::sparse_mla_simt(q_lat, q_pe, c_kv, k_pe, idx, 0.06, tensor_cores, &rope);
            const AttentionOutput before = cuda::sparse_mla_simt(q_lat, rotate_query(q_pe, rope, Impl::kAuto), c_kv,
                                                                 k_pe, idx, 0.06, tensor_cores);
            EXPECT_TRUE(at::equal(in_kernel.out, before.out)) << "rotated query";
            EXPECT_TRUE(at::equal(in_kernel.lse, before.lse)) << "rotated query";
            // The dispatcher's other paths rotate first: the reference with a rotation equals it on the rotated query.
            const AttentionOutput ref =
                sparse_attention(q_lat, q_pe, c_kv, k_pe, idx, 0.06, Impl::kReference, 256, true, &rope);
            const AttentionOutput ref_before = sparse_attention(q_lat, rotate_query(q_pe, rope, Impl::kReference), c_kv,
                                                                k_pe, idx, 0.06, Impl::kReference);
            EXPECT_TRUE(at::equal(ref.out, ref_before.out));
        }
    }
}

TEST(SparseMlaSimtTest, DispatchTakesItOnlyWithoutAutograd) {
    DSRL_REQUIRE_CUDA();
    const auto f = at::TensorOptions().device(at::kCUDA);
    const at::Tensor q_lat = at::randn({1, 4, 4, 32}, f).requires_grad_(true);
    const at::Tensor q_pe = at::randn({1, 4, 4, 16}, f);
    const at::Tensor c_kv = at::randn({1, 20, 32}, f), k_pe = at::randn({1, 20, 16}, f);
    const at::Tensor idx = at::randint(20, {1, 4, 8}, f.dtype(at::kLong));
    EXPECT_FALSE(cuda::sparse_mla_simt_fits(q_lat, q_pe, c_kv, k_pe, idx)) << "a query autograd tracks";
    {
        at::NoGradGuard no_grad;
        EXPECT_TRUE(cuda::sparse_mla_simt_fits(q_lat, q_pe, c_kv, k_pe, idx));
    }
    EXPECT_FALSE(cuda::sparse_mla_simt_fits(q_lat.detach(), q_pe, c_kv, k_pe, idx.to(at::kFloat))) << "float indices";
    EXPECT_FALSE(cuda::sparse_mla_simt_fits(at::randn({1, 4, 64, 256}, f), at::randn({1, 4, 64, 16}, f),
                                            at::randn({1, 20, 256}, f), k_pe, idx))
        << "H x C over the accumulators";
    // Through the dispatch: with autograd the reference (out has a grad_fn), and the same values either way.
    const AttentionOutput tracked = sparse_attention(q_lat, q_pe, c_kv, k_pe, idx, 0.2, Impl::kAuto);
    EXPECT_TRUE(tracked.out.requires_grad());
    at::NoGradGuard no_grad;
    const AttentionOutput fast = sparse_attention(q_lat, q_pe, c_kv, k_pe, idx, 0.2, Impl::kAuto);
    EXPECT_LE(testing::rel_err(fast.out, tracked.out.detach()), 2e-6);
}

TEST(PagedSlotsKernelTest, EqualsTheGatherThroughTheTable) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const auto f = at::TensorOptions().device(at::kCUDA);
    for (const int64_t B : {1, 5, 256}) {
        const int64_t S = 96, K = 16;
        const at::Tensor read = at::randint(1 << 20, {B, S}, f.dtype(at::kLong));
        const at::Tensor pos = at::randint(S, {B, 1}, f.dtype(at::kLong));
        // Sparse: key positions at or before each query's, some -1 (fewer visible keys than K).
        at::Tensor topk = (at::rand({B, 1, K}, f) * (pos.unsqueeze(-1) + 1).to(at::kFloat)).to(at::kLong);
        topk = at::where(at::rand({B, 1, K}, f) < 0.2, at::full({}, -1, f.dtype(at::kLong)), topk);
        const at::Tensor want = at::where(topk >= 0, read.gather(1, topk.clamp_min(0).view({B, K})).view({B, 1, K}),
                                          at::full({}, -1, f.dtype(at::kLong)));
        EXPECT_TRUE(at::equal(cuda::paged_slots(read, topk.to(at::kInt), {}, {}, 1), want)) << "sparse, B " << B;
        // Dense: every key visible to the query (valid, at or before its position).
        const at::Tensor valid = at::arange(S, f.dtype(at::kLong)).unsqueeze(0) <= pos + 3;
        const at::Tensor visible =
            valid.unsqueeze(1).logical_and(at::arange(S, f.dtype(at::kLong)).view({1, 1, S}) <= pos.unsqueeze(-1));
        const at::Tensor dense_want =
            at::where(visible, read.unsqueeze(1).expand({B, 1, S}), at::full({}, -1, f.dtype(at::kLong)));
        EXPECT_TRUE(at::equal(cuda::paged_slots(read, {}, valid, pos, 1), dense_want)) << "dense, B " << B;
    }
    EXPECT_FALSE(cuda::paged_slots_fit(at::zeros({2, 4}, f.dtype(at::kLong)), at::zeros({2, 1, 3}, f.dtype(at::kLong))))
        << "int64 key sets";
    EXPECT_FALSE(cuda::paged_slots_fit(at::zeros({2, 4}, at::kLong), {})) << "a table on the CPU";
}

// The step-inputs kernel against dsa::Model::paged_decode_step's ATen formulas (the engine's per-step ops before):
// slots and key mask equal, the rotary factors the same bits as rope_cos_sin's (plain RoPE, YaRN with a factor of 1
// and with another).
TEST(PagedStepKernelTest, EqualsTheAtenSlotsMaskAndRotaryFactors) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const auto f = at::TensorOptions().device(at::kCUDA);
    for (const double mscale : {0.0, 1.0, 0.707}) {
        ModelArch arch;
        arch.qk_rope_head_dim = 64;
        if (mscale == 0.0) arch.rope_scaling.type = "none";
        arch.rope_scaling.mscale = mscale;
        RopeTable rope = rope_table(arch);
        rope.inv_freq = rope.inv_freq.to(at::kCUDA);
        if (mscale == 0.707) {
            ASSERT_NE(rope.attention_factor, 1.0);
        }
        for (const int64_t R : {1, 7, 256}) {
            for (const int64_t bs : {1, 16, 64}) {
                SCOPED_TRACE(::testing::Message() << "mscale " << mscale << " R " << R << " bs " << bs);
                const int64_t NB = 9, keys = NB * bs - (bs > 1 ? 3 : 0);
                const at::Tensor table = at::randint(1 << 16, {R, NB}, f.dtype(at::kLong));
                // Positions anywhere in the table, with large ones for the rotary factors' rounding.
                const at::Tensor pos = at::randint(NB * bs, {R}, f.dtype(at::kLong));
                ASSERT_TRUE(cuda::paged_step_inputs_fit(table, pos, bs, keys, rope.inv_freq));
                const cuda::PagedStepInputs got =
                    cuda::paged_step_inputs(table, pos, bs, keys, rope.inv_freq, rope.attention_factor);
                const at::Tensor key = at::arange(keys, table.options());
                EXPECT_TRUE(at::equal(got.read, table.index_select(1, key.div(bs, "floor")) * bs + key.remainder(bs)));
                EXPECT_TRUE(at::equal(got.write, table.gather(1, pos.div(bs, "floor").unsqueeze(1)) * bs +
                                                     pos.remainder(bs).unsqueeze(1)));
                EXPECT_TRUE(at::equal(got.key_valid, key.unsqueeze(0) <= pos.unsqueeze(1)));
                const auto [cos, sin] = rope_cos_sin(rope, pos.unsqueeze(1));
                EXPECT_TRUE(at::equal(got.cos, cos));
                EXPECT_TRUE(at::equal(got.sin, sin));
                const at::Tensor big = at::full({R}, 1000003, f.dtype(at::kLong));
                const cuda::PagedStepInputs far =
                    cuda::paged_step_inputs(table, big, bs, keys, rope.inv_freq, rope.attention_factor);
                const auto [cos_far, sin_far] = rope_cos_sin(rope, big.unsqueeze(1));
                EXPECT_TRUE(at::equal(far.cos, cos_far)) << "position 1000003";
                EXPECT_TRUE(at::equal(far.sin, sin_far)) << "position 1000003";
                EXPECT_TRUE(at::equal(far.write, at::full({R, 1}, -1, f.dtype(at::kLong))))
                    << "a position outside the table writes nowhere";
            }
        }
    }
    const at::Tensor table = at::zeros({2, 3}, f.dtype(at::kLong)), pos = at::zeros({2}, f.dtype(at::kLong));
    EXPECT_FALSE(cuda::paged_step_inputs_fit(table, pos, 4, 13, {})) << "more keys than the table holds";
    EXPECT_FALSE(cuda::paged_step_inputs_fit(table.cpu(), pos.cpu(), 4, 12, {})) << "a table on the CPU";
    EXPECT_FALSE(cuda::paged_step_inputs_fit(table.to(at::kInt), pos, 4, 12, {})) << "an int32 table";
    EXPECT_TRUE(cuda::paged_step_inputs_fit(table, pos, 4, 12, {}));
}

TEST(PagedWriteKernelTest, EqualsTheThreeIndexCopies) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const auto f = at::TensorOptions().device(at::kCUDA);
    const int64_t P = 300;
    for (const at::ScalarType pool_type : {at::kBFloat16, at::kFloat}) {
        for (const at::ScalarType row_type : {at::kBFloat16, at::kFloat}) {
            for (const int64_t N : {1, 7, 256}) {
                SCOPED_TRACE(::testing::Message() << "pool " << pool_type << " rows " << row_type << " N " << N);
                // Distinct slots (a decode step's), the rows as views with a row stride (narrowed out of wider rows,
                // as the model's latent and rope key are), the pools as the engine's [P, D] tensors.
                const at::Tensor slots = at::randperm(P, f.dtype(at::kLong)).narrow(0, 0, N).contiguous();
                const at::Tensor wide = at::randn({N, 256 + 32 + 5}, f).to(row_type);
                const std::vector<at::Tensor> rows = {wide.narrow(1, 0, 256), wide.narrow(1, 256, 32),
                                                      at::randn({N, 64}, f).to(row_type)};
                std::vector<at::Tensor> got, want;
                for (const int64_t D : {256, 32, 64}) {
                    got.push_back(at::randn({P, D}, f).to(pool_type));
                    want.push_back(got.back().clone());
                }
                ASSERT_TRUE(cuda::paged_write_fits(slots, got, rows));
                cuda::paged_write(slots, got, rows);
                for (size_t i = 0; i < 3; ++i) {
                    want[i].index_copy_(0, slots, rows[i].to(pool_type));
                    EXPECT_TRUE(at::equal(got[i], want[i])) << "part " << i;
                }
            }
        }
    }
    // A slot outside the pool writes nothing; the other rows are written.
    const at::Tensor pool = at::zeros({4, 8}, f), rows = at::ones({3, 8}, f);
    cuda::paged_write(at::tensor({-1, 2, 4}, at::kLong).to(at::kCUDA), {pool}, {rows});
    EXPECT_EQ(pool.sum().item<double>(), 8.0);
    EXPECT_EQ(pool[2].sum().item<double>(), 8.0);
    EXPECT_FALSE(cuda::paged_write_fits(at::zeros({3}, at::kLong), {pool}, {rows})) << "slots on the CPU";
    EXPECT_FALSE(cuda::paged_write_fits(at::zeros({3}, f.dtype(at::kInt)), {pool}, {rows})) << "int32 slots";
    EXPECT_FALSE(cuda::paged_write_fits(at::zeros({3}, f.dtype(at::kLong)), {pool}, {at::ones({3, 7}, f)}))
        << "a row of another width";
    EXPECT_FALSE(cuda::paged_write_fits(at::zeros({3}, f.dtype(at::kLong)), {pool}, {at::ones({8, 3}, f).t()}))
        << "rows that are not contiguous";
}

}  // namespace
}  // namespace dsrl::dsa
