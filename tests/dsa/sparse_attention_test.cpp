#include "dsa/sparse_attention.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/full.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <string>

#include "core/rng.h"
#include "dsa/indexer_topk.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

struct Qkv {
    at::Tensor q_lat, q_pe, c_kv, k_pe, pos, valid;
};

Qkv random_qkv(int64_t b, int64_t t, int64_t h, int64_t c, int64_t r, uint64_t seed) {
    auto gen = rng::make_cpu_generator(seed);
    return {at::randn({b, t, h, c}, gen),
            at::randn({b, t, h, r}, gen),
            at::randn({b, t, c}, gen),
            at::randn({b, t, r}, gen),
            at::arange(t, at::kLong).unsqueeze(0).expand({b, t}).contiguous(),
            at::ones({b, t}, at::kBool)};
}

// Attention restricted to the selected keys, with an explicit [B, T, S] mask: the oracle of the gather path.
at::Tensor masked_oracle(const Qkv& x, const at::Tensor& indices, double scale) {
    const int64_t b = x.q_lat.size(0), t = x.q_lat.size(1), s = x.c_kv.size(1);
    at::Tensor mask = at::zeros({b, t, s}, at::kBool);
    for (int64_t i = 0; i < b; ++i) {
        for (int64_t j = 0; j < t; ++j) {
            for (int64_t k = 0; k < indices.size(2); ++k) {
                const int64_t key = indices[i][j][k].item<int64_t>();
                if (key >= 0) mask[i][j][key] = true;
            }
        }
    }
    at::Tensor scores =
        (at::einsum("bthc,bsc->bths", {x.q_lat, x.c_kv}) + at::einsum("bthr,bsr->bths", {x.q_pe, x.k_pe})) * scale;
    scores = scores.masked_fill(mask.unsqueeze(2).logical_not(), -INFINITY);
    return at::einsum("bths,bsc->bthc", {at::softmax(scores, -1), x.c_kv});
}

at::Tensor random_topk(const Qkv& x, int64_t topk, uint64_t seed) {
    auto gen = rng::make_cpu_generator(seed);
    const int64_t b = x.q_lat.size(0), t = x.q_lat.size(1);
    const at::Tensor q = at::randn({b, t, 2, 4}, gen), k = at::randn({b, t, 4}, gen), w = at::randn({b, t, 2}, gen);
    return indexer_topk(q, k, w, 0.5, x.pos, x.valid, topk);
}

TEST(SparseAttentionTest, EqualsDenseCausalWhenEveryVisibleKeyIsSelected) {
    const Qkv x = random_qkv(2, 9, 3, 8, 4, 1);
    const at::Tensor idx = random_topk(x, 16, 2);  // topk > T: every visible key, padded with −1
    const double scale = 0.3;
    const AttentionOutput sparse = sparse_mla_attention(x.q_lat, x.q_pe, x.c_kv, x.k_pe, idx, scale, 4);
    const AttentionOutput dense = dense_mla_attention(x.q_lat, x.q_pe, x.c_kv, x.k_pe, x.pos, x.valid, scale);
    EXPECT_ALL_CLOSE("out", sparse.out, dense.out, 1e-5, 1e-5);
    EXPECT_ALL_CLOSE("lse", sparse.lse, dense.lse, 1e-5, 1e-5);
}

TEST(SparseAttentionTest, MatchesMaskedAttentionOverTheSelectedSet) {
    const Qkv x = random_qkv(2, 20, 4, 8, 4, 3);
    const at::Tensor idx = random_topk(x, 5, 4);
    for (const int64_t chunk : {1, 7, 64}) {
        const AttentionOutput sparse = sparse_mla_attention(x.q_lat, x.q_pe, x.c_kv, x.k_pe, idx, 0.25, chunk);
        EXPECT_ALL_CLOSE("sparse vs masked, chunk " + std::to_string(chunk), sparse.out, masked_oracle(x, idx, 0.25),
                         1e-5, 1e-5);
    }
}

// The sparse path (an autograd function that re-gathers each chunk in backward) against plain autograd through
// the masked full-matrix oracle, in fp64, all four gradients, for chunk sizes that split the queries unevenly.
TEST(SparseAttentionTest, GradientsMatchTheMaskedOracle) {
    Qkv base = random_qkv(2, 12, 2, 8, 4, 5);
    const at::Tensor idx = random_topk(base, 4, 6);  // early queries see < 4 keys: −1 slots
    for (at::Tensor* t : {&base.q_lat, &base.q_pe, &base.c_kv, &base.k_pe}) *t = t->to(at::kDouble);
    const at::Tensor weights = at::randn({2, 12, 2, 8}, rng::make_cpu_generator(11)).to(at::kDouble);
    auto grads = [&](int64_t chunk) {  // chunk 0: the oracle
        Qkv x = base;
        for (at::Tensor* t : {&x.q_lat, &x.q_pe, &x.c_kv, &x.k_pe}) *t = t->clone().requires_grad_(true);
        const at::Tensor out = chunk > 0 ? sparse_mla_attention(x.q_lat, x.q_pe, x.c_kv, x.k_pe, idx, 0.4, chunk).out
                                         : masked_oracle(x, idx, 0.4);
        (out * weights).sum().backward();
        return std::vector<at::Tensor>{out.detach(), x.q_lat.grad(), x.q_pe.grad(), x.c_kv.grad(), x.k_pe.grad()};
    };
    const auto want = grads(0);
    for (const int64_t chunk : {1, 5, 12}) {
        const auto got = grads(chunk);
        const std::string c = " (chunk " + std::to_string(chunk) + ")";
        EXPECT_ALL_CLOSE("out" + c, got[0], want[0], 1e-12, 1e-12);
        EXPECT_ALL_CLOSE("dq_lat" + c, got[1], want[1], 1e-12, 1e-10);
        EXPECT_ALL_CLOSE("dq_pe" + c, got[2], want[2], 1e-12, 1e-10);
        EXPECT_ALL_CLOSE("dc_kv" + c, got[3], want[3], 1e-12, 1e-10);
        EXPECT_ALL_CLOSE("dk_pe" + c, got[4], want[4], 1e-12, 1e-10);
    }
}

TEST(SparseAttentionTest, QueriesWithoutValidKeysGiveZerosNotNaN) {
    const Qkv x = random_qkv(1, 4, 2, 8, 4, 7);
    at::Tensor idx = at::full({1, 4, 3}, -1, at::kInt);
    idx[0][2][0] = 1;
    const AttentionOutput out = sparse_mla_attention(x.q_lat, x.q_pe, x.c_kv, x.k_pe, idx, 1.0);
    EXPECT_FALSE(out.out.isnan().any().item<bool>());
    EXPECT_EQ(out.out[0][0].abs().sum().item<double>(), 0.0);
    EXPECT_TRUE(out.lse[0][0].isneginf().all().item<bool>());
    EXPECT_ALL_CLOSE("single key", out.out[0][2], x.c_kv[0][1].expand({2, 8}), 1e-6);  // one key: its c_kv
    // Backward through the empty rows stays finite.
    const at::Tensor q = x.q_lat.clone().requires_grad_(true);
    const at::Tensor ckv = x.c_kv.clone().requires_grad_(true);
    sparse_mla_attention(q, x.q_pe, ckv, x.k_pe, idx, 1.0).out.sum().backward();
    EXPECT_TRUE(q.grad().isfinite().all().item<bool>());
    EXPECT_TRUE(ckv.grad().isfinite().all().item<bool>());
    idx[0][1][0] = 4;  // out of range
    EXPECT_THROW(sparse_mla_attention(x.q_lat, x.q_pe, x.c_kv, x.k_pe, idx, 1.0), c10::Error);
}

// The dense path (an autograd function over query chunks that recomputes probabilities in backward) against
// plain autograd through the full [B, T, H, S] matrices, in fp64: outputs, lse and all four gradients for
// several chunk sizes, with left padding, an invalid key in the middle and queries that see no key at all.
TEST(DenseAttentionTest, QueryChunksAndRecomputeMatchFullMatrixAutograd) {
    Qkv base = random_qkv(2, 11, 3, 8, 4, 9);
    for (at::Tensor* t : {&base.q_lat, &base.q_pe, &base.c_kv, &base.k_pe}) *t = t->to(at::kDouble);
    base.valid[0].narrow(0, 0, 3).fill_(false);  // row 0: queries 0..2 see no key (left padding)
    base.valid[1][5] = false;
    const double scale = 0.35;
    auto leaves = [&] {
        Qkv x = base;
        for (at::Tensor* t : {&x.q_lat, &x.q_pe, &x.c_kv, &x.k_pe}) *t = t->clone().requires_grad_(true);
        return x;
    };
    const at::Tensor weights = at::randn({2, 11, 3, 8}, rng::make_cpu_generator(10)).to(at::kDouble);
    // Oracle: full matrices, softmax with key-less rows set to 0.
    Qkv o = leaves();
    at::Tensor scores =
        (at::einsum("bthc,bsc->bths", {o.q_lat, o.c_kv}) + at::einsum("bthr,bsr->bths", {o.q_pe, o.k_pe})) * scale;
    const at::Tensor visible = (at::arange(11, at::kLong).view({1, 1, 11}) <= o.pos.unsqueeze(-1))
                                   .logical_and(o.valid.unsqueeze(1))
                                   .unsqueeze(2);
    const at::Tensor any = visible.any(-1, true);
    scores = scores.masked_fill(visible.logical_not(), -INFINITY).masked_fill(any.logical_not(), 0.0);
    const at::Tensor probs = at::softmax(scores, -1) * any.to(at::kDouble);
    const at::Tensor want = at::einsum("bths,bsc->bthc", {probs, o.c_kv});
    (want * weights).sum().backward();
    for (const int64_t chunk : {1, 4, 11, 0}) {
        Qkv x = leaves();
        const AttentionOutput got = dense_mla_attention(x.q_lat, x.q_pe, x.c_kv, x.k_pe, x.pos, x.valid, scale, chunk);
        const std::string c = " (chunk " + std::to_string(chunk) + ")";
        EXPECT_ALL_CLOSE("out" + c, got.out, want, 1e-12, 1e-12);
        EXPECT_TRUE(got.lse[0].narrow(0, 0, 3).isneginf().all().item<bool>()) << c;
        EXPECT_FALSE(got.lse.requires_grad()) << c;
        (got.out * weights).sum().backward();
        EXPECT_ALL_CLOSE("dq_lat" + c, x.q_lat.grad(), o.q_lat.grad(), 1e-12, 1e-10);
        EXPECT_ALL_CLOSE("dq_pe" + c, x.q_pe.grad(), o.q_pe.grad(), 1e-12, 1e-10);
        EXPECT_ALL_CLOSE("dc_kv" + c, x.c_kv.grad(), o.c_kv.grad(), 1e-12, 1e-10);
        EXPECT_ALL_CLOSE("dk_pe" + c, x.k_pe.grad(), o.k_pe.grad(), 1e-12, 1e-10);
        EXPECT_TRUE(x.q_lat.grad().isfinite().all().item<bool>()) << c;
    }
    EXPECT_THROW(dense_mla_attention(base.q_lat, base.q_pe, base.c_kv, base.k_pe, base.pos, base.valid, scale, -1),
                 c10::Error);
}

}  // namespace
}  // namespace dsrl::dsa
