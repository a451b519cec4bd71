// The DSA training-stage losses and metric (SPEC §3, dsa/indexer_loss.h) against a naive oracle that builds the
// full [B, H, L, S] probabilities: values for several tile sizes and with padding, finite-difference gradients
// in fp64, no gradient to the attention inputs, the recall metric, and the model hooks that separate the LM
// loss from the indexer loss (detach_indexer_inputs).
#include "dsa/indexer_loss.h"

#include <torch/csrc/autograd/autograd.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/log.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/rng.h"
#include "dsa/indexer_topk.h"
#include "dsa/model.h"
#include "dsa/sparse_attention.h"
#include "tests/model_fixtures.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Case {
    IndexerOutput ix;     // q [B, L, HI, D], k [B, L, D], w [B, L, HI]
    AttentionInputs att;  // dense lse
    at::Tensor query_pos, key_valid;
};

// [B, L, S] bool visibility.
at::Tensor visible_full(const at::Tensor& query_pos, const at::Tensor& key_valid) {
    const int64_t S = key_valid.size(1);
    return at::arange(S, at::kLong).view({1, 1, S}).le(query_pos.unsqueeze(-1)).logical_and(key_valid.unsqueeze(1));
}

// [B, H, L, S] scaled attention scores.
at::Tensor full_scores(const AttentionInputs& a) {
    return (at::einsum("bthc,bsc->bhts", {a.q_lat, a.c_kv}) + at::einsum("bthr,bsr->bhts", {a.q_pe, a.k_pe})) * a.scale;
}

// Row 0: 2 left-padding tokens; row 1: an invalid key in the middle and 2 right-padding tokens (B = 2).
Case random_case(
    int64_t L, int64_t HI, int64_t D, uint64_t seed, at::ScalarType dt = at::kDouble, bool padding = true) {
    const int64_t B = 2, H = 3, C = 5, R = 2;
    auto gen = rng::make_cpu_generator(seed);
    const auto o = at::TensorOptions().dtype(dt);
    Case c;
    c.ix.q = at::randn({B, L, HI, D}, gen, o);
    c.ix.k = at::randn({B, L, D}, gen, o);
    c.ix.w = at::randn({B, L, HI}, gen, o);
    c.att.q_lat = at::randn({B, L, H, C}, gen, o);
    c.att.q_pe = at::randn({B, L, H, R}, gen, o);
    c.att.c_kv = at::randn({B, L, C}, gen, o);
    c.att.k_pe = at::randn({B, L, R}, gen, o);
    c.att.scale = 0.4;
    c.att.dense = true;
    c.query_pos = at::arange(L, at::kLong).unsqueeze(0).expand({B, L}).contiguous();
    c.key_valid = at::ones({B, L}, at::kBool);
    if (padding) {
        c.key_valid[0].narrow(0, 0, 2).fill_(false);
        c.key_valid[1][3] = false;
        c.key_valid[1].narrow(0, L - 2, 2).fill_(false);
    }
    at::Tensor scores = full_scores(c.att);
    scores = scores.masked_fill(visible_full(c.query_pos, c.key_valid).unsqueeze(1).logical_not(), kNegInf);
    c.att.lse = at::logsumexp(scores, -1).transpose(1, 2).contiguous();  // [B, L, H], −inf without keys
    return c;
}

void require_grad(Case& c) {
    c.ix.q = c.ix.q.detach().clone().requires_grad_(true);
    c.ix.k = c.ix.k.detach().clone().requires_grad_(true);
    c.ix.w = c.ix.w.detach().clone().requires_grad_(true);
}

// [B, L, S] selection mask of top-k indices.
at::Tensor selection_mask(const at::Tensor& topk, int64_t S) {
    at::Tensor mask = at::zeros({topk.size(0), topk.size(1), S + 1}, at::kBool);
    const at::Tensor idx = topk.to(at::kLong);
    mask.scatter_(2, at::where(idx.ge(0), idx, at::zeros_like(idx) + S), true);
    return mask.narrow(2, 0, S).contiguous();
}

// The oracle: full matrices, differentiable in the indexer through plain autograd.
//   sparse: per-head softmax over `mask` (the selected set), else over the visible keys.
struct Oracle {
    at::Tensor loss;
    int64_t num_queries;
};

Oracle naive_loss(const Case& c, const at::Tensor& topk) {
    const int64_t S = c.att.c_kv.size(1);
    const bool sparse = topk.defined();
    const at::Tensor mask = sparse ? selection_mask(topk, S) : visible_full(c.query_pos, c.key_valid);  // [B, L, S]
    at::Tensor valid = c.key_valid.gather(1, c.query_pos);
    if (sparse) valid = valid.logical_and(mask.any(-1));
    // Rows without a key become "all keys" (p = 0 there, weight 0) so that no NaN reaches backward.
    const at::Tensor safe = mask.logical_or(mask.any(-1, true).logical_not());
    const at::Tensor scores = full_scores(c.att).masked_fill(safe.unsqueeze(1).logical_not(), kNegInf);
    const at::Tensor p = at::softmax(scores, -1).masked_fill(mask.unsqueeze(1).logical_not(), 0).mean(1);  // [B, L, S]
    const double iscale = 1.0 / std::sqrt(double(c.ix.q.size(3)));
    const at::Tensor logits =
        at::einsum("btjs,btj->bts", {at::relu(at::einsum("btjd,bsd->btjs", {c.ix.q, c.ix.k}) * iscale), c.ix.w});
    const at::Tensor logq = at::log_softmax(logits.masked_fill(safe.logical_not(), kNegInf), -1);
    const at::Tensor kl =
        at::where(p.gt(0), p * (at::log(p.clamp_min(1e-300)) - logq), at::zeros_like(p)).sum(-1);  // [B, L]
    const int64_t n = valid.sum().item<int64_t>();
    return {(kl * valid.to(kl.scalar_type())).sum() / double(std::max<int64_t>(n, 1)), n};
}

double naive_recall(const Case& c, const at::Tensor& topk) {
    const int64_t S = c.att.c_kv.size(1);
    const at::Tensor visible = visible_full(c.query_pos, c.key_valid);
    const at::Tensor scores = full_scores(c.att).masked_fill(visible.unsqueeze(1).logical_not(), kNegInf);
    const at::Tensor p = at::softmax(scores, -1).nan_to_num(0).mean(1);  // [B, L, S]
    const at::Tensor mass = (p * selection_mask(topk, S).to(p.scalar_type())).sum(-1);
    const at::Tensor valid = c.key_valid.gather(1, c.query_pos);
    return (mass * valid.to(mass.scalar_type())).sum().item<double>() / valid.sum().item<double>();
}

at::Tensor topk_of(const Case& c, int64_t k) {
    const double iscale = 1.0 / std::sqrt(double(c.ix.q.size(3)));
    return indexer_topk(c.ix.q.detach(), c.ix.k.detach(), c.ix.w.detach(), iscale, c.query_pos, c.key_valid, k);
}

std::vector<at::Tensor> grads_of(const at::Tensor& loss, const Case& c) {
    return torch::autograd::grad({loss}, {c.ix.q, c.ix.k, c.ix.w});
}

TEST(IndexerLossTest, WarmupLossEqualsTheFullMatrixOracleForEveryTile) {
    for (const bool padding : {false, true}) {
        Case c = random_case(11, 2, 4, 1, at::kDouble, padding);
        require_grad(c);
        const Oracle expect = naive_loss(c, at::Tensor());
        const auto eg = grads_of(expect.loss, c);
        EXPECT_EQ(expect.num_queries, padding ? 22 - 5 : 22);
        for (const int64_t tile : {1, 3, 7, 11, 64}) {
            const std::string what = "padding " + std::to_string(padding) + ", tile " + std::to_string(tile);
            const IndexerLoss got = indexer_warmup_loss(c.ix, c.att, c.query_pos, c.key_valid, tile);
            EXPECT_EQ(got.num_queries, expect.num_queries) << what;
            EXPECT_EQ(got.loss.dim(), 0);
            EXPECT_GT(got.loss.item<double>(), 0.0) << what;
            EXPECT_ALL_CLOSE("loss, " + what, got.loss, expect.loss, 1e-12, 1e-10);
            const auto g = grads_of(got.loss, c);
            EXPECT_ALL_CLOSE("dq, " + what, g[0], eg[0], 1e-12, 1e-9);
            EXPECT_ALL_CLOSE("dk, " + what, g[1], eg[1], 1e-12, 1e-9);
            EXPECT_ALL_CLOSE("dw, " + what, g[2], eg[2], 1e-12, 1e-9);
        }
    }
}

// Under bf16 autocast the forward's attention inputs are bf16 and its lse comes from bf16 scores: the loss
// recomputes each tile's lse from its own fp32 scores (a stale lse must not leak in) and matches the oracle on
// the same bf16-rounded inputs.
TEST(IndexerLossTest, WarmupLossWithReducedPrecisionAttentionInputsRecomputesTheLse) {
    Case c = random_case(11, 2, 4, 5, at::kFloat, true);
    Case rounded = c;
    for (at::Tensor* t : {&rounded.att.q_lat, &rounded.att.q_pe, &rounded.att.c_kv, &rounded.att.k_pe}) {
        *t = t->to(at::kBFloat16).to(at::kFloat);
    }
    const Oracle expect = naive_loss(rounded, at::Tensor());
    Case bf16 = c;
    for (at::Tensor* t : {&bf16.att.q_lat, &bf16.att.q_pe, &bf16.att.c_kv, &bf16.att.k_pe}) *t = t->to(at::kBFloat16);
    bf16.att.lse = at::zeros_like(c.att.lse);  // stale: must not be used
    for (const int64_t tile : {1, 4, 64}) {
        const IndexerLoss got = indexer_warmup_loss(bf16.ix, bf16.att, bf16.query_pos, bf16.key_valid, tile);
        EXPECT_EQ(got.loss.scalar_type(), at::kFloat);
        EXPECT_ALL_CLOSE("loss, tile " + std::to_string(tile), got.loss, expect.loss, 1e-5, 1e-4);
    }
}

TEST(IndexerLossTest, SparseLossEqualsTheFullMatrixOracleForEveryTile) {
    for (const bool padding : {false, true}) {
        Case c = random_case(12, 3, 4, 2, at::kDouble, padding);
        require_grad(c);
        const at::Tensor topk = topk_of(c, 4);  // fewer than the visible keys of most queries
        const Oracle expect = naive_loss(c, topk);
        const auto eg = grads_of(expect.loss, c);
        for (const int64_t tile : {1, 4, 5, 64}) {
            const std::string what = "padding " + std::to_string(padding) + ", tile " + std::to_string(tile);
            const IndexerLoss got = indexer_sparse_loss(c.ix, c.att, topk, c.query_pos, c.key_valid, tile);
            EXPECT_EQ(got.num_queries, expect.num_queries) << what;
            EXPECT_GT(got.loss.item<double>(), 0.0) << what;
            EXPECT_ALL_CLOSE("loss, " + what, got.loss, expect.loss, 1e-12, 1e-10);
            const auto g = grads_of(got.loss, c);
            EXPECT_ALL_CLOSE("dq, " + what, g[0], eg[0], 1e-12, 1e-9);
            EXPECT_ALL_CLOSE("dk, " + what, g[1], eg[1], 1e-12, 1e-9);
            EXPECT_ALL_CLOSE("dw, " + what, g[2], eg[2], 1e-12, 1e-9);
        }
        // The sparse lse of the attention is not needed: any lse (here the dense one, flagged sparse) gives the same.
        AttentionInputs sparse_att = c.att;
        sparse_att.dense = false;
        EXPECT_ALL_CLOSE("sparse-flagged inputs",
                         indexer_sparse_loss(c.ix, sparse_att, topk, c.query_pos, c.key_valid).loss, expect.loss, 1e-12,
                         1e-10);
    }
}

TEST(IndexerLossTest, SparseLossEqualsWarmupLossWhenEveryVisibleKeyIsSelected) {
    Case c = random_case(9, 2, 4, 3);
    const at::Tensor all = topk_of(c, 16);
    EXPECT_ALL_CLOSE("sparse vs dense", indexer_sparse_loss(c.ix, c.att, all, c.query_pos, c.key_valid, 4).loss,
                     indexer_warmup_loss(c.ix, c.att, c.query_pos, c.key_valid, 4).loss, 1e-12, 1e-10);
}

// Central finite differences over every element of q, k and w.
void expect_matches_finite_differences(const std::string& what,
                                       const std::function<at::Tensor(const Case&)>& f,
                                       Case& c) {
    require_grad(c);
    const auto analytic = grads_of(f(c), c);
    const at::Tensor params[] = {c.ix.q, c.ix.k, c.ix.w};
    const char* names[] = {"q", "k", "w"};
    const double eps = 1e-6;
    at::NoGradGuard no_grad;
    for (int i = 0; i < 3; ++i) {
        at::Tensor flat = params[i].view({-1});
        at::Tensor numeric = at::zeros_like(flat);
        for (int64_t e = 0; e < flat.numel(); ++e) {
            const double x = flat[e].item<double>();
            flat[e].fill_(x + eps);
            const double up = f(c).item<double>();
            flat[e].fill_(x - eps);
            const double down = f(c).item<double>();
            flat[e].fill_(x);
            numeric[e] = (up - down) / (2 * eps);
        }
        EXPECT_ALL_CLOSE(what + " d" + names[i], analytic[i].view({-1}), numeric, 1e-7, 1e-5);
    }
}

TEST(IndexerLossTest, GradientsMatchFiniteDifferences) {
    Case dense = random_case(7, 2, 4, 4);
    expect_matches_finite_differences(
        "warmup", [](const Case& c) { return indexer_warmup_loss(c.ix, c.att, c.query_pos, c.key_valid, 3).loss; },
        dense);
    Case sparse = random_case(7, 2, 4, 5);
    const at::Tensor topk = topk_of(sparse, 3);
    expect_matches_finite_differences(
        "sparse",
        [&](const Case& c) { return indexer_sparse_loss(c.ix, c.att, topk, c.query_pos, c.key_valid, 2).loss; },
        sparse);
}

TEST(IndexerLossTest, AttentionInputsGetNoGradient) {
    Case c = random_case(8, 2, 4, 6);
    c.att.q_lat.requires_grad_(true);
    c.att.q_pe.requires_grad_(true);
    c.att.c_kv.requires_grad_(true);
    c.att.k_pe.requires_grad_(true);
    const at::Tensor topk = topk_of(c, 3);
    // Only the attention inputs require grad: the loss does not.
    EXPECT_FALSE(indexer_warmup_loss(c.ix, c.att, c.query_pos, c.key_valid).loss.requires_grad());
    EXPECT_FALSE(indexer_sparse_loss(c.ix, c.att, topk, c.query_pos, c.key_valid).loss.requires_grad());
    // With the indexer differentiable too, nothing reaches the attention inputs.
    require_grad(c);
    for (const bool sparse : {false, true}) {
        const at::Tensor loss = sparse ? indexer_sparse_loss(c.ix, c.att, topk, c.query_pos, c.key_valid).loss
                                       : indexer_warmup_loss(c.ix, c.att, c.query_pos, c.key_valid).loss;
        const auto g = torch::autograd::grad({loss}, {c.att.q_lat, c.att.q_pe, c.att.c_kv, c.att.k_pe, c.ix.q}, {},
                                             /*retain_graph=*/false, /*create_graph=*/false, /*allow_unused=*/true);
        for (int i = 0; i < 4; ++i) EXPECT_FALSE(g[i].defined()) << "attention input " << i << ", sparse " << sparse;
        EXPECT_TRUE(g[4].defined());
    }
}

TEST(IndexerLossTest, WarmupLossNeedsTheDenseLse) {
    Case c = random_case(6, 2, 4, 7);
    c.att.dense = false;
    EXPECT_THROW(indexer_warmup_loss(c.ix, c.att, c.query_pos, c.key_valid), c10::Error);
    c.att.dense = true;
    EXPECT_THROW(indexer_warmup_loss(c.ix, c.att, c.query_pos, c.key_valid, 0), c10::Error);
    EXPECT_THROW(indexer_warmup_loss({c.ix.q, c.ix.k.narrow(1, 0, 3), c.ix.w}, c.att, c.query_pos, c.key_valid),
                 c10::Error);
}

TEST(IndexerLossTest, FloatInputsMatchTheFp64Oracle) {
    const Case c = random_case(10, 2, 8, 8, at::kFloat);
    Case d = c;
    d.ix = {c.ix.q.to(at::kDouble), c.ix.k.to(at::kDouble), c.ix.w.to(at::kDouble)};
    d.att.q_lat = c.att.q_lat.to(at::kDouble);
    d.att.q_pe = c.att.q_pe.to(at::kDouble);
    d.att.c_kv = c.att.c_kv.to(at::kDouble);
    d.att.k_pe = c.att.k_pe.to(at::kDouble);
    const IndexerLoss got = indexer_warmup_loss(c.ix, c.att, c.query_pos, c.key_valid, 4);
    EXPECT_EQ(got.loss.scalar_type(), at::kFloat);
    EXPECT_ALL_CLOSE("fp32 warmup", got.loss, naive_loss(d, at::Tensor()).loss, 1e-5, 1e-4);
    const at::Tensor topk = topk_of(c, 3);
    EXPECT_ALL_CLOSE("fp32 sparse", indexer_sparse_loss(c.ix, c.att, topk, c.query_pos, c.key_valid, 4).loss,
                     naive_loss(d, topk).loss, 1e-5, 1e-4);
}

TEST(IndexerLossTest, RecallIsOneWhenEveryVisibleKeyIsSelectedAndMatchesTheOracle) {
    for (const bool padding : {false, true}) {
        const Case c = random_case(13, 2, 4, 9, at::kDouble, padding);
        EXPECT_NEAR(attention_recall(c.att, topk_of(c, 13), c.query_pos, c.key_valid), 1.0, 1e-12);
        EXPECT_NEAR(attention_recall(c.att, topk_of(c, 20), c.query_pos, c.key_valid, 5), 1.0, 1e-12);
        const at::Tensor topk = topk_of(c, 3);
        const double expect = naive_recall(c, topk);
        EXPECT_GT(expect, 0.0);
        EXPECT_LT(expect, 1.0);
        for (const int64_t tile : {1, 4, 64}) {
            const double got = attention_recall(c.att, topk, c.query_pos, c.key_valid, tile);
            EXPECT_GE(got, 0.0);
            EXPECT_LE(got, 1.0);
            EXPECT_NEAR(got, expect, 1e-12) << "tile " << tile;
        }
        // Without the dense lse (a sparse forward's inputs) the dense normalizer is recomputed.
        AttentionInputs sparse_att = c.att;
        sparse_att.dense = false;
        sparse_att.lse = at::zeros_like(c.att.lse);
        EXPECT_NEAR(attention_recall(sparse_att, topk, c.query_pos, c.key_valid, 4), expect, 1e-12);
    }
}

TEST(IndexerLossTest, OracleRecallIsTheMassOfTheHeaviestKeysAndBoundsEverySelection) {
    for (const bool padding : {false, true}) {
        const Case c = random_case(13, 2, 4, 17, at::kDouble, padding);
        const int64_t S = c.att.c_kv.size(1);
        // The oracle's selection, built naively from the full [B, L, S] head-averaged attention.
        const at::Tensor visible = visible_full(c.query_pos, c.key_valid);
        const at::Tensor scores = full_scores(c.att).masked_fill(visible.unsqueeze(1).logical_not(), kNegInf);
        const at::Tensor p = at::softmax(scores, -1).nan_to_num(0).mean(1);
        for (const int64_t k : {1, 3, 6}) {
            const at::Tensor best = std::get<1>(p.topk(k, -1));
            // Invisible keys (p = 0) in the naive selection contribute nothing, as in the oracle.
            const double expect = naive_recall(c, best);
            for (const int64_t tile : {1, 5, 64}) {
                EXPECT_NEAR(attention_recall_oracle(c.att, k, c.query_pos, c.key_valid, tile), expect, 1e-12);
            }
            EXPECT_GE(expect + 1e-12, attention_recall(c.att, topk_of(c, k), c.query_pos, c.key_valid));
        }
        EXPECT_NEAR(attention_recall_oracle(c.att, S + 3, c.query_pos, c.key_valid), 1.0, 1e-12);
    }
}

// --- With the model ---------------------------------------------------------------------------------------------

ModelConfig tiny(int64_t index_topk) { return testing::toy_model_config(index_topk); }

Model make_model(const ModelConfig& c, uint64_t seed = 3) {
    Model m = Model::random(c, seed, at::kCPU);
    testing::scale_weights(m, seed + 1, 0.15, 0.05);
    return m;
}

bool is_indexer(const std::string& name) { return name.find("indexer") != std::string::npos; }

TEST(IndexerLossModelTest, ReturnsTheAttentionInputsOfEachLayer) {
    const ModelConfig c = tiny(4);
    const Model m = make_model(c);
    auto gen = rng::make_cpu_generator(11);
    const at::Tensor ids = at::randint(c.vocab_size, {2, 10}, gen, at::kLong);
    at::Tensor mask = at::ones({2, 10}, at::kLong);
    mask[1].narrow(0, 0, 3).fill_(0);  // left padding
    for (const AttentionPath path : {AttentionPath::kDense, AttentionPath::kSparse}) {
        const ForwardOutput out = m.forward(
            {ids, mask}, {.return_topk = true, .return_indexer = true, .return_attention = true, .path = path});
        ASSERT_EQ(out.attention.size(), 3u);
        const AttentionInputs& a = out.attention[1];
        EXPECT_EQ(a.dense, path == AttentionPath::kDense);
        EXPECT_EQ(a.q_lat.sizes(), (std::vector<int64_t>{2, 10, c.num_attention_heads, c.kv_lora_rank}));
        EXPECT_EQ(a.q_pe.sizes(), (std::vector<int64_t>{2, 10, c.num_attention_heads, c.qk_rope_head_dim}));
        EXPECT_EQ(a.c_kv.sizes(), (std::vector<int64_t>{2, 10, c.kv_lora_rank}));
        EXPECT_EQ(a.k_pe.sizes(), (std::vector<int64_t>{2, 10, c.qk_rope_head_dim}));
        EXPECT_EQ(a.lse.scalar_type(), at::kFloat);
        // The lse is that of the attention that ran.
        const AttentionOutput again =
            path == AttentionPath::kDense
                ? dense_mla_attention(a.q_lat, a.q_pe, a.c_kv, a.k_pe, out.query_pos, out.key_valid, a.scale)
                : sparse_mla_attention(a.q_lat, a.q_pe, a.c_kv, a.k_pe, out.topk[1], a.scale);
        const at::Tensor real = out.key_valid.gather(1, out.query_pos).unsqueeze(-1).expand_as(a.lse);
        EXPECT_ALL_CLOSE("lse", a.lse.masked_select(real), again.lse.masked_select(real), 1e-5, 1e-5);
        // Recall: 1 on the dense path with index_topk >= L, in [0, 1] with selection; the losses are finite.
        const double recall = attention_recall(a, out.topk[1], out.query_pos, out.key_valid);
        EXPECT_GT(recall, 0.0);
        EXPECT_LT(recall, 1.0);
        const IndexerLoss l =
            path == AttentionPath::kDense
                ? indexer_warmup_loss(out.indexer[1], a, out.query_pos, out.key_valid, 4)
                : indexer_sparse_loss(out.indexer[1], a, out.topk[1], out.query_pos, out.key_valid, 4);
        EXPECT_EQ(l.num_queries, 17);
        EXPECT_TRUE(std::isfinite(l.loss.item<double>()));
        EXPECT_GE(l.loss.item<double>(), 0.0);
    }
    const ForwardOutput all = m.forward({ids, mask}, {.return_topk = true, .return_attention = true});
    const Model wide = Model(tiny(16), m.weights());
    const ForwardOutput dense = wide.forward({ids, mask}, {.return_topk = true, .return_attention = true});
    EXPECT_TRUE(dense.attention[0].dense);
    EXPECT_NEAR(attention_recall(dense.attention[0], dense.topk[0], dense.query_pos, dense.key_valid), 1.0, 1e-5);
    EXPECT_FALSE(all.attention[0].dense);  // L = 10 > index_topk = 4: the auto path is sparse
}

// SPEC §3 sparse_train: the LM loss trains everything but the indexer, the indexer loss only the indexer.
TEST(IndexerLossModelTest, DetachedIndexerInputsSeparateTheLmLossFromTheIndexerLoss) {
    const ModelConfig c = tiny(4);
    Model m = make_model(c);
    std::vector<at::Tensor> params;
    std::vector<std::string> names;
    for (NamedTensor& t : m.named_tensors()) {
        if (!t.trainable) continue;
        t.tensor->requires_grad_(true);
        params.push_back(*t.tensor);
        names.push_back(t.name);
    }
    auto gen = rng::make_cpu_generator(12);
    const at::Tensor ids = at::randint(c.vocab_size, {2, 12}, gen, at::kLong);
    at::Tensor mask = at::ones({2, 12}, at::kLong);
    mask[0].narrow(0, 0, 2).fill_(0);
    const at::Tensor targets = at::randint(c.vocab_size, {2, 12, 1}, gen, at::kLong);
    auto losses = [&](bool detach) {
        const ForwardOutput out = m.forward({ids, mask}, {.return_topk = true,
                                                          .return_indexer = true,
                                                          .return_attention = true,
                                                          .detach_indexer_inputs = detach,
                                                          .path = AttentionPath::kSparse});
        const at::Tensor lm = at::log_softmax(out.logits, -1).gather(-1, targets).sum();
        at::Tensor indexer = at::zeros({});
        for (size_t i = 0; i < out.indexer.size(); ++i) {
            indexer = indexer + indexer_sparse_loss(out.indexer[i], out.attention[i], out.topk[i], out.query_pos,
                                                    out.key_valid, 5)
                                    .loss;
        }
        return std::pair{lm, indexer};
    };
    auto nonzero = [](const at::Tensor& g) { return g.defined() && g.abs().sum().item<double>() > 0; };
    const auto [lm, indexer] = losses(/*detach=*/true);
    const auto g_lm = torch::autograd::grad({lm}, params, {}, /*retain_graph=*/true, false, /*allow_unused=*/true);
    const auto g_ix = torch::autograd::grad({indexer}, params, {}, /*retain_graph=*/false, false, true);
    int num_indexer = 0;
    for (size_t i = 0; i < params.size(); ++i) {
        if (is_indexer(names[i])) {
            ++num_indexer;
            EXPECT_FALSE(nonzero(g_lm[i])) << "LM loss reached " << names[i];
            EXPECT_TRUE(nonzero(g_ix[i])) << "indexer loss missed " << names[i];
        } else {
            EXPECT_TRUE(nonzero(g_lm[i])) << "LM loss missed " << names[i];
            EXPECT_FALSE(nonzero(g_ix[i])) << "indexer loss reached " << names[i];
        }
    }
    EXPECT_EQ(num_indexer, 5 * c.num_hidden_layers);  // wq_b, wk, k_norm weight + bias, weights_proj
    // Without detaching, the indexer loss flows into the query/KV path (why sparse_train detaches).
    const auto [lm2, indexer2] = losses(/*detach=*/false);
    const auto g_ix2 = torch::autograd::grad({indexer2}, params, {}, false, false, true);
    bool leaked = false;
    for (size_t i = 0; i < params.size(); ++i) leaked |= !is_indexer(names[i]) && nonzero(g_ix2[i]);
    EXPECT_TRUE(leaked);
    EXPECT_ALL_CLOSE("same loss value", indexer2, indexer, 1e-6, 1e-6);
}

}  // namespace
}  // namespace dsrl::dsa
