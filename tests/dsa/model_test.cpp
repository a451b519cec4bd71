// The DeepSeek-V3.2 model's invariants (issue 4): padding invariance, decode == full forward, routing replay,
// dense == sparse when every query sees <= index_topk keys, and clear errors for bad checkpoints.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn_like.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <fstream>

#include "core/error.h"
#include "core/precision.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "dsa/model.h"
#include "dsa/rope.h"
#include "moe/router.h"
#include "tests/model_fixtures.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

using testing::TempDir;

ModelConfig tiny(int64_t index_topk = 6) { return testing::toy_model_config(index_topk); }

Model make_model(const ModelConfig& c, uint64_t seed = 3) {
    Model m = Model::random(c, seed, at::kCPU);
    testing::scale_weights(m, seed + 1, 0.15, 0.05);
    return m;
}

at::Tensor random_ids(int64_t b, int64_t l, int64_t vocab, uint64_t seed) {
    at::Generator gen = rng::make_cpu_generator(seed);
    return at::randint(vocab, {b, l}, gen, at::kLong);
}

TEST(ModelTest, ShapesAndRecordsOfAForward) {
    const ModelConfig c = tiny();
    const Model m = make_model(c);
    const at::Tensor ids = random_ids(2, 10, c.vocab_size, 1);
    const ForwardOutput out = m.forward({ids}, {.return_hidden = true, .return_routes = true, .return_topk = true});
    EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{2, 10, c.vocab_size}));
    EXPECT_EQ(out.logits.scalar_type(), at::kFloat);
    EXPECT_EQ(out.hidden.sizes(), (std::vector<int64_t>{2, 10, c.hidden_size}));
    ASSERT_EQ(out.routes.size(), 2u);  // layers 1 and 2 are MoE
    EXPECT_EQ(out.routes[0].sizes(), (std::vector<int64_t>{2, 10, c.num_experts_per_tok}));
    ASSERT_EQ(out.topk.size(), 3u);
    EXPECT_EQ(out.topk[0].sizes(), (std::vector<int64_t>{2, 10, c.index_topk}));
    // Query t sees t + 1 keys: min(t + 1, k) valid entries, all causal.
    const at::Tensor t5 = out.topk[1][0][4];
    EXPECT_EQ(t5.ge(0).sum().item<int64_t>(), 5);
    EXPECT_LE(t5.max().item<int64_t>(), 4);
    EXPECT_EQ(out.topk[1][0][9].ge(0).sum().item<int64_t>(), c.index_topk);
    EXPECT_FALSE(out.logits.isnan().any().item<bool>());
}

// A paged decode step's inputs from block tables and positions (the engine's per-step slots): each key position's
// slot through its row's table, the new token's slot, the key mask, the positions' rotary factors; bad shapes named.
TEST(ModelTest, PagedDecodeStepSlotsThroughTheBlockTables) {
    const ModelConfig c = tiny();
    const Model m = make_model(c);
    PagedKvCache cache = m.new_paged_cache(4, 4);
    const at::Tensor table = at::tensor({3, 1, 0, 2}, at::kLong).view({2, 2});
    const at::Tensor pos = at::tensor({5, 2}, at::kLong);
    const PagedStep step = m.paged_decode_step(cache, table, pos, 7);
    EXPECT_EQ(step.cache, &cache);
    EXPECT_TRUE(at::equal(step.read_slots,
                          at::tensor({12, 13, 14, 15, 4, 5, 6, 0, 1, 2, 3, 8, 9, 10}, at::kLong).view({2, 7})));
    EXPECT_TRUE(at::equal(step.write_slots, at::tensor({5, 2}, at::kLong).view({2, 1})));
    EXPECT_TRUE(at::equal(step.key_valid, at::arange(7, at::kLong).unsqueeze(0) <= pos.unsqueeze(1)));
    const auto [cos, sin] = rope_cos_sin(rope_table(c), pos.unsqueeze(1));
    EXPECT_TRUE(at::equal(step.cos, cos));
    EXPECT_TRUE(at::equal(step.sin, sin));
    EXPECT_EQ(step.cos.sizes(), (std::vector<int64_t>{2, 1, c.qk_rope_head_dim / 2}));
    // The forward with them equals the forward that computes its own rotary factors.
    const at::Tensor ids = at::tensor({7, 9}, at::kLong).view({2, 1});
    PagedStep own = step;
    own.cos = own.sin = at::Tensor();
    at::NoGradGuard no_grad;
    const ForwardOutput a = m.forward({.input_ids = ids, .position_ids = pos.unsqueeze(1)}, {.paged = &step});
    const ForwardOutput b = m.forward({.input_ids = ids, .position_ids = pos.unsqueeze(1)}, {.paged = &own});
    EXPECT_TRUE(at::equal(a.logits, b.logits));
    EXPECT_THAT([&] { (void)m.paged_decode_step(cache, table, pos, 9); },
                ::testing::ThrowsMessage<c10::Error>(::testing::HasSubstr("keys <= NB x block_size")));
}

// The rollout's once-cast weights (Model::autocast_weights): the matmul weights in bf16, everything read
// elementwise or in fp32 regions unchanged, and under autocast the same logits bit for bit — prefill, decode steps
// and the records — as the model that autocast casts on every call.
TEST(ModelTest, AutocastWeightsGiveTheAutocastForwardBitForBit) {
    ModelConfig c = tiny();
    c.tie_word_embeddings = true;
    const Model m = make_model(c);
    const Model cast = m.autocast_weights(at::kBFloat16);
    const LayerWeights& l = cast.weights().layers[1];
    for (const at::Tensor* t : {&l.attn.q_a_proj, &l.attn.kv_b_proj, &l.attn.o_proj, &l.indexer.wq_b, &l.indexer.wk,
                                &l.moe.experts.gate_proj, &l.moe.experts.down_proj, &l.moe.shared.up_proj,
                                &cast.weights().layers[0].mlp.gate_proj, &cast.weights().lm_head}) {
        EXPECT_EQ(t->scalar_type(), at::kBFloat16);
    }
    for (const at::Tensor* t :
         {&l.attn.q_a_layernorm, &l.input_layernorm, &l.indexer.weights_proj, &l.indexer.k_norm_weight, &l.moe.gate,
          &l.moe.bias, &cast.weights().embed_tokens, &cast.weights().norm}) {
        EXPECT_EQ(t->scalar_type(), at::kFloat);
    }
    EXPECT_EQ(m.weights().lm_head.scalar_type(), at::kFloat);  // the original is untouched

    const at::Tensor ids = random_ids(2, 14, c.vocab_size, 9);  // 14 > index_topk 6: the sparse path too
    const ForwardOptions opt{.return_routes = true, .return_topk = true};
    const ForwardOutput plain = m.forward({ids}, opt);
    const AutocastScope amp(at::kCPU, /*enabled=*/true, /*on_cpu=*/true);  // bf16 autocast on the CPU
    const ForwardOutput want = m.forward({ids}, opt);
    const ForwardOutput got = cast.forward({ids}, opt);
    EXPECT_FALSE(at::allclose(plain.logits, want.logits, 0, 1e-4)) << "autocast changed nothing: a vacuous test";
    EXPECT_TRUE(at::equal(got.logits, want.logits));
    for (size_t i = 0; i < want.routes.size(); ++i) EXPECT_TRUE(at::equal(got.routes[i], want.routes[i]));
    for (size_t i = 0; i < want.topk.size(); ++i) EXPECT_TRUE(at::equal(got.topk[i], want.topk[i]));
    // Prefill then decode over a cache.
    KvCache a = m.new_cache(2, 16), b = cast.new_cache(2, 16);
    (void)m.forward({ids.narrow(1, 0, 12)}, {}, &a);
    (void)cast.forward({ids.narrow(1, 0, 12)}, {}, &b);
    EXPECT_TRUE(at::equal(cast.forward({ids.narrow(1, 12, 1)}, {}, &b).logits,
                          m.forward({ids.narrow(1, 12, 1)}, {}, &a).logits));
}

TEST(ModelTest, FusedProjectionsGiveTheSameForwardWithoutAutograd) {
    const ModelConfig c = tiny();
    Model m = make_model(c);
    for (NamedTensor& t : m.named_tensors()) {
        if (t.trainable) t.tensor->requires_grad_(true);
    }
    const Model fused = m.fuse_projections();
    const LayerWeights& l = fused.weights().layers[1];
    ASSERT_TRUE(l.fused_a.defined() && l.fused_b.defined());
    EXPECT_EQ(l.fused_a.size(0), l.attn.q_a_proj.size(0) + l.attn.kv_a_proj_with_mqa.size(0) + l.indexer.wk.size(0));
    EXPECT_EQ(l.fused_b.size(0), l.attn.q_b_proj.size(0) + l.indexer.wq_b.size(0));
    EXPECT_FALSE(m.weights().layers[1].fused_a.defined()) << "the original is untouched";
    EXPECT_TRUE(at::equal(l.fused_a, at::cat({l.attn.q_a_proj, l.attn.kv_a_proj_with_mqa, l.indexer.wk})));
    EXPECT_TRUE(at::equal(l.fused_b, at::cat({l.attn.q_b_proj, l.indexer.wq_b})));
    const LayerWeights& dense = fused.weights().layers[0];  // first_k_dense_replace 1: its MLP's gate and up stacked
    ASSERT_FALSE(dense.is_moe);
    EXPECT_TRUE(at::equal(dense.fused_gate_up, at::cat({dense.mlp.gate_proj, dense.mlp.up_proj})));
    EXPECT_FALSE(l.fused_gate_up.defined()) << "a MoE layer has no dense MLP";
    // The size limit: a stack over it is not made; the attention's two are made together or not at all.
    const int64_t mlp_bytes = static_cast<int64_t>(dense.mlp.gate_proj.nbytes() + dense.mlp.up_proj.nbytes());
    EXPECT_FALSE(m.fuse_projections(false, mlp_bytes - 1).weights().layers[0].fused_gate_up.defined());
    EXPECT_TRUE(m.fuse_projections(false, mlp_bytes).weights().layers[0].fused_gate_up.defined());
    const int64_t b_bytes = static_cast<int64_t>(l.attn.q_b_proj.nbytes() + l.indexer.wq_b.nbytes());
    const int64_t a_bytes =
        static_cast<int64_t>(l.attn.q_a_proj.nbytes() + l.attn.kv_a_proj_with_mqa.nbytes() + l.indexer.wk.nbytes());
    const LayerWeights& capped = m.fuse_projections(false, std::min(a_bytes, b_bytes)).weights().layers[1];
    EXPECT_FALSE(capped.fused_a.defined() || capped.fused_b.defined()) << "one of the two over the limit: neither";
    const LayerWeights& both = m.fuse_projections(false, std::max(a_bytes, b_bytes)).weights().layers[1];
    EXPECT_TRUE(both.fused_a.defined() && both.fused_b.defined());
    // Nothing of the stacks is saved or trained: the named tensors are the same list.
    ModelWeights a = m.weights(), b = fused.weights();
    EXPECT_EQ(named_tensors(a, c).size(), named_tensors(b, c).size());

    const at::Tensor ids = random_ids(2, 14, c.vocab_size, 5);  // 14 > index_topk 6: the sparse path too
    const ForwardOptions opt{.return_routes = true, .return_topk = true};
    {
        const at::NoGradGuard no_grad;  // the stacks run: the same products, summed as separate GEMMs may not be
        const ForwardOutput want = m.forward({ids}, opt);
        const ForwardOutput got = fused.forward({ids}, opt);
        EXPECT_TRUE(at::allclose(got.logits, want.logits, 1e-5, 1e-5))
            << "max |d| " << (got.logits - want.logits).abs().max().item<double>();
        for (size_t i = 0; i < want.routes.size(); ++i) EXPECT_TRUE(at::equal(got.routes[i], want.routes[i]));
        for (size_t i = 0; i < want.topk.size(); ++i) EXPECT_TRUE(at::equal(got.topk[i], want.topk[i]));
        // Prefill then decode over a cache.
        KvCache ca = m.new_cache(2, 16), cb = fused.new_cache(2, 16);
        (void)m.forward({ids.narrow(1, 0, 12)}, {}, &ca);
        (void)fused.forward({ids.narrow(1, 0, 12)}, {}, &cb);
        EXPECT_TRUE(at::allclose(fused.forward({ids.narrow(1, 12, 1)}, {}, &cb).logits,
                                 m.forward({ids.narrow(1, 12, 1)}, {}, &ca).logits, 1e-5, 1e-5));
    }
    // With autograd the stacks (detached copies) are not read: the gradients reach the model's own projections.
    const ForwardOutput train = fused.forward({ids}, {});
    EXPECT_TRUE(at::equal(train.logits, m.forward({ids}, {}).logits)) << "the separate projections, bit for bit";
    train.logits.logsumexp(-1).sum().backward();
    EXPECT_TRUE(l.attn.q_a_proj.grad().defined() && l.attn.kv_a_proj_with_mqa.grad().defined() &&
                l.attn.q_b_proj.grad().defined());
    EXPECT_FALSE(l.fused_a.requires_grad() || l.fused_b.requires_grad());
}

TEST(ModelTest, AbsorbedProjectionsGiveTheSameForwardWithoutAutograd) {
    const ModelConfig c = tiny();
    const Model m = make_model(c);
    const Model absorbed = m.fuse_projections(/*absorb=*/true);
    const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
    const int64_t lora = c.kv_lora_rank, v = c.v_head_dim;
    for (size_t i = 0; i < absorbed.weights().layers.size(); ++i) {
        const LayerWeights& l = absorbed.weights().layers[i];
        ASSERT_TRUE(l.absorbed) << "layer " << i;
        EXPECT_FALSE(m.fuse_projections().weights().layers[i].absorbed) << "only when asked";
        ASSERT_EQ(l.fused_b.size(0), heads * (lora + rope) + l.indexer.wq_b.size(0));
        // Head 1's rows and columns against the factors, in the other association.
        const at::Tensor w_kv = l.attn.kv_b_proj.view({heads, nope + v, lora});
        const at::Tensor w_q = l.attn.q_b_proj.view({heads, nope + rope, -1});
        const at::Tensor x = at::randn({3, l.attn.q_b_proj.size(1)}, at::kDouble);
        const at::Tensor want_q = at::matmul(at::matmul(x, w_q[1].narrow(0, 0, nope).t().to(at::kDouble)),
                                             w_kv[1].narrow(0, 0, nope).to(at::kDouble));
        const at::Tensor got_q = at::matmul(x, l.fused_b.narrow(0, lora, lora).t().to(at::kDouble));
        EXPECT_TRUE(at::allclose(got_q, want_q, 1e-5, 1e-5));
        EXPECT_TRUE(at::equal(l.fused_b.narrow(0, heads * lora, heads * rope),
                              w_q.narrow(1, nope, rope).reshape({heads * rope, -1})))
            << "the rope rows as they are";
    }
    ModelWeights a = m.weights(), b = absorbed.weights();
    EXPECT_EQ(named_tensors(a, c).size(), named_tensors(b, c).size()) << "nothing of them is saved";

    const at::NoGradGuard no_grad;
    const at::Tensor ids = random_ids(2, 14, c.vocab_size, 6);  // 14 > index_topk 6: the sparse path too
    const ForwardOptions opt{.return_routes = true, .return_topk = true};
    const ForwardOutput want = m.forward({ids}, opt);
    const ForwardOutput got = absorbed.forward({ids}, opt);
    EXPECT_TRUE(at::allclose(got.logits, want.logits, 1e-5, 1e-5))
        << "max |d| " << (got.logits - want.logits).abs().max().item<double>();
    for (size_t i = 0; i < want.routes.size(); ++i) EXPECT_TRUE(at::equal(got.routes[i], want.routes[i]));
    for (size_t i = 0; i < want.topk.size(); ++i) EXPECT_TRUE(at::equal(got.topk[i], want.topk[i]));
    KvCache ca = m.new_cache(2, 16), cb = absorbed.new_cache(2, 16);  // prefill, then decode over the cache
    (void)m.forward({ids.narrow(1, 0, 12)}, {}, &ca);
    (void)absorbed.forward({ids.narrow(1, 0, 12)}, {}, &cb);
    for (int64_t t = 12; t < 14; ++t) {
        EXPECT_TRUE(at::allclose(absorbed.forward({ids.narrow(1, t, 1)}, {}, &cb).logits,
                                 m.forward({ids.narrow(1, t, 1)}, {}, &ca).logits, 1e-5, 1e-5));
    }
}

TEST(ModelTest, AbsorbedProjectionsOnlyWhereTheyCostFewBytes) {
    ModelConfig c = tiny();
    c.num_attention_heads = 64;
    c.kv_lora_rank = 512;
    c.q_lora_rank = 512;
    c.hidden_size = 256;
    const Model m = make_model(c);
    // 64 · 512 · 512 fp32 absorbed elements against far fewer in the factors: over 8 MiB more a layer.
    const Model fused = m.fuse_projections(true);  // kept: the loop below reads its layers
    for (const LayerWeights& l : fused.weights().layers) {
        EXPECT_FALSE(l.absorbed);
        EXPECT_EQ(l.fused_b.size(0), l.attn.q_b_proj.size(0) + l.indexer.wq_b.size(0));
    }
}

TEST(ModelTest, PaddingOnEitherSideGivesTheUnpaddedLogits) {
    const ModelConfig c = tiny();
    const Model m = make_model(c);
    const int64_t lens[] = {12, 7, 9};
    const int64_t L = 12;
    at::Tensor right = at::zeros({3, L}, at::kLong), left = at::zeros({3, L}, at::kLong);
    at::Tensor right_mask = at::zeros({3, L}, at::kLong), left_mask = at::zeros({3, L}, at::kLong);
    std::vector<at::Tensor> seqs;
    for (int64_t b = 0; b < 3; ++b) {
        seqs.push_back(random_ids(1, lens[b], c.vocab_size, 10 + b));
        right[b].narrow(0, 0, lens[b]).copy_(seqs[b][0]);
        right_mask[b].narrow(0, 0, lens[b]).fill_(1);
        left[b].narrow(0, L - lens[b], lens[b]).copy_(seqs[b][0]);
        left_mask[b].narrow(0, L - lens[b], lens[b]).fill_(1);
        right[b].narrow(0, lens[b], L - lens[b]).fill_(7);  // padding ids are arbitrary tokens
    }
    const at::Tensor lr = m.forward({right, right_mask}).logits;
    const at::Tensor ll = m.forward({left, left_mask}).logits;
    for (int64_t b = 0; b < 3; ++b) {
        const at::Tensor alone = m.forward({seqs[b]}).logits[0];
        EXPECT_ALL_CLOSE("right-padded seq " + std::to_string(b), lr[b].narrow(0, 0, lens[b]), alone, 2e-5);
        EXPECT_ALL_CLOSE("left-padded seq " + std::to_string(b), ll[b].narrow(0, L - lens[b], lens[b]), alone, 2e-5);
    }
}

TEST(ModelTest, PrefillThenDecodeEqualsOneFullForward) {
    const ModelConfig c = tiny(/*index_topk=*/5);
    const Model m = make_model(c);
    const int64_t L = 14, prefill = 4;  // decode crosses from the dense into the sparse regime
    // Left-padded batch as in rollout: the second prompt is 2 tokens shorter.
    at::Tensor ids = random_ids(2, L, c.vocab_size, 5);
    at::Tensor mask = at::ones({2, L}, at::kLong);
    mask[1].narrow(0, 0, 2).fill_(0);
    const at::Tensor full = m.forward({ids, mask}).logits;
    KvCache cache = m.new_cache(2, L);
    std::vector<at::Tensor> steps;
    steps.push_back(m.forward({ids.narrow(1, 0, prefill), mask.narrow(1, 0, prefill)}, {}, &cache).logits);
    for (int64_t t = prefill; t < L; ++t) {
        steps.push_back(m.forward({ids.narrow(1, t, 1), mask.narrow(1, t, 1)}, {}, &cache).logits);
    }
    EXPECT_EQ(cache.length, L);
    const at::Tensor decoded = at::cat(steps, 1);
    EXPECT_ALL_CLOSE("decode row 0", decoded[0], full[0], 2e-5);
    EXPECT_ALL_CLOSE("decode row 1 (real tokens)", decoded[1].narrow(0, 2, L - 2), full[1].narrow(0, 2, L - 2), 2e-5);
    // Capacity is enforced.
    EXPECT_THROW(m.forward({ids.narrow(1, 0, 1)}, {}, &cache), c10::Error);
}

TEST(ModelTest, RoutingReplayReproducesTheRecordedForwardExactly) {
    const ModelConfig c = tiny();
    Model m = make_model(c);
    const at::Tensor ids = random_ids(2, 9, c.vocab_size, 2);
    const ForwardOutput rec = m.forward({ids}, {.return_routes = true});
    const ForwardOutput again = m.forward({ids}, {.return_routes = true, .replay_routes = &rec.routes});
    EXPECT_TRUE(at::equal(again.logits, rec.logits));
    // After the router changes, replay still uses the recorded experts (keep-routing); a fresh forward does not.
    for (LayerWeights& l : m.weights().layers) {
        if (l.is_moe) l.moe.gate.add_(at::randn_like(l.moe.gate));
    }
    const ForwardOutput replayed = m.forward({ids}, {.return_routes = true, .replay_routes = &rec.routes});
    const ForwardOutput fresh = m.forward({ids}, {.return_routes = true});
    for (size_t j = 0; j < rec.routes.size(); ++j) EXPECT_TRUE(at::equal(replayed.routes[j], rec.routes[j]));
    bool any_changed = false;
    for (size_t j = 0; j < rec.routes.size(); ++j) any_changed |= !at::equal(fresh.routes[j], rec.routes[j]);
    EXPECT_TRUE(any_changed) << "perturbing the router should change some fresh routes";
}

TEST(ModelTest, DenseAndSparsePathsAgreeWhenEveryQuerySeesAtMostTopkKeys) {
    const ModelConfig c = tiny(/*index_topk=*/16);
    const Model m = make_model(c);
    const at::Tensor ids = random_ids(2, 16, c.vocab_size, 3);
    const at::Tensor dense = m.forward({ids}, {.path = AttentionPath::kDense}).logits;
    const at::Tensor sparse = m.forward({ids}, {.path = AttentionPath::kSparse}).logits;
    const at::Tensor autop = m.forward({ids}).logits;
    EXPECT_ALL_CLOSE("sparse vs dense", sparse, dense, 1e-5);
    EXPECT_TRUE(at::equal(autop, dense)) << "L <= index_topk must take the dense path";
    // With fewer selected keys than visible ones, the paths differ (sparsity is real).
    const Model m4 = Model(tiny(4), m.weights());
    EXPECT_FALSE(at::allclose(m4.forward({ids}).logits, dense, 1e-3, 1e-3));
}

TEST(ModelTest, GradientsReachEveryTrainableTensor) {
    const ModelConfig c = tiny();
    Model m = make_model(c);
    for (NamedTensor& t : m.named_tensors()) {
        if (t.trainable) t.tensor->requires_grad_(true);
    }
    const at::Tensor ids = random_ids(2, 10, c.vocab_size, 4);
    m.forward({ids}).logits.logsumexp(-1).sum().backward();
    for (NamedTensor& t : m.named_tensors()) {
        // The indexer selects without gradient (it learns from its own loss in the DSA stages).
        const bool indexer = t.name.find("indexer") != std::string::npos;
        if (!t.trainable || indexer) {
            EXPECT_FALSE(t.tensor->grad().defined() && t.tensor->grad().abs().sum().item<double>() > 0) << t.name;
            continue;
        }
        ASSERT_TRUE(t.tensor->grad().defined()) << t.name;
        EXPECT_GT(t.tensor->grad().abs().sum().item<double>(), 0) << t.name;
    }
}

TEST(ModelTest, ParameterCountsAndBadTokenIds) {
    const ModelConfig c = tiny();
    const ParamCounts n = count_parameters(c);
    int64_t total = 0;
    Model m = make_model(c);
    for (NamedTensor& t : m.named_tensors()) {
        if (t.trainable) total += t.tensor->numel();
    }
    EXPECT_EQ(n.total, total);
    const int64_t experts_per_layer = 3 * c.n_routed_experts * c.moe_intermediate_size * c.hidden_size;
    EXPECT_EQ(n.total - n.activated, 2 * experts_per_layer / c.n_routed_experts * (c.n_routed_experts - 2));
    try {
        m.forward({at::full({1, 3}, c.vocab_size, at::kLong)});
        FAIL() << "an out-of-vocabulary id must be rejected";
    } catch (const DataError& e) {
        EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
    }
}

// Saves a model, applies `mutate` to its single safetensors file's tensor set, and expects loading to fail
// with a message containing every string of `expect`.
void expect_load_error(const std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)>& mutate,
                       const std::vector<std::string>& expect) {
    const ModelConfig c = tiny();
    const Model m = make_model(c);
    TempDir tmp;
    const std::string dir = tmp.path() + "/ckpt";
    m.save(dir, {.dtype = at::kFloat});
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    const SafetensorsFile f = SafetensorsFile::open(dir + "/model.safetensors");
    for (const SafetensorInfo& i : f.tensors()) tensors.emplace_back(i.name, f.get(i.name).clone());
    mutate(tensors);
    save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
    try {
        Model::load(dir, ModelConfig{}, at::kCPU);
        ADD_FAILURE() << "loading the mutated checkpoint should fail";
    } catch (const CheckpointError& e) {
        for (const std::string& s : expect) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what();
    }
}

TEST(ModelTest, BadCheckpointsNameTheFileAndTensor) {
    const std::string q = "model.layers.1.self_attn.q_a_proj.weight";
    expect_load_error([&](auto& ts) { std::erase_if(ts, [&](auto& p) { return p.first == q; }); },
                      {"missing tensor", q});
    expect_load_error(
        [&](auto& ts) { ts.emplace_back("model.layers.1.mlp.experts.99.up_proj.weight", at::zeros({2})); },
        {"unexpected tensor", "experts.99.up_proj", "model.safetensors"});
    expect_load_error(
        [&](auto& ts) {
            for (auto& [n, t] : ts)
                if (n == q) t = at::zeros({t.size(0) + 1, t.size(1)});
        },
        {"shape", q, "model.safetensors"});
    expect_load_error(
        [&](auto& ts) {
            for (auto& [n, t] : ts)
                if (n == q) t = t.to(at::kInt);
        },
        {"dtype", q});
    // The MTP layer (index num_hidden_layers) is skipped, not unexpected.
    const ModelConfig c = tiny();
    const Model m = make_model(c);
    TempDir tmp;
    const std::string dir = tmp.path() + "/mtp";
    m.save(dir, {.dtype = at::kBFloat16});
    auto tensors = hf_named_tensors(m.weights(), c);
    tensors.emplace_back("model.layers.3.eh_proj.weight", at::zeros({4, 4}));
    save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
    const Model back = Model::load(dir, ModelConfig{}, at::kCPU);
    EXPECT_EQ(back.config().num_hidden_layers, 3);
}

// n_shared_experts 0: saved as transformers saves it (each MoE layer's shared expert with no rows) and loaded back;
// a shared expert with rows is still unexpected.
TEST(ModelTest, NoSharedExpertsRoundTripWithEmptySharedTensors) {
    ModelConfig c = tiny();
    c.n_shared_experts = 0;
    const Model m = make_model(c);
    TempDir tmp;
    const std::string dir = tmp.path() + "/no_shared";
    m.save(dir, {.dtype = at::kFloat});
    {
        const SafetensorsFile f = SafetensorsFile::open(dir + "/model.safetensors");
        for (const char* name : {"model.layers.1.mlp.shared_experts.gate_proj.weight",
                                 "model.layers.2.mlp.shared_experts.down_proj.weight"}) {
            ASSERT_TRUE(f.contains(name)) << name;
            EXPECT_EQ(f.get(name).numel(), 0) << name;
        }
        EXPECT_FALSE(f.contains("model.layers.0.mlp.shared_experts.gate_proj.weight")) << "layer 0 is dense";
    }
    const Model back = Model::load(dir, ModelConfig{}, at::kCPU);
    EXPECT_FALSE(back.weights().layers[1].moe.shared.gate_proj.defined());
    const at::Tensor ids = random_ids(2, 9, c.vocab_size, 4);
    EXPECT_TRUE(at::equal(back.forward({ids}).logits, m.forward({ids}).logits));
    auto with_rows = hf_named_tensors(m.weights(), c);
    for (auto& [n, t] : with_rows) {
        if (n == "model.layers.1.mlp.shared_experts.up_proj.weight") t = at::zeros({4, c.hidden_size});
    }
    save_safetensors(dir + "/model.safetensors", with_rows, {{"format", "pt"}});
    EXPECT_THROW(
        {
            try {
                Model::load(dir, ModelConfig{}, at::kCPU);
            } catch (const CheckpointError& e) {
                EXPECT_NE(std::string(e.what()).find("unexpected tensor"), std::string::npos) << e.what();
                throw;
            }
        },
        CheckpointError);
}

TEST(ModelConfigTest, RouterOptionsFromModelConfig) {
    ModelConfig m;
    m.n_routed_experts = 64;
    m.n_group = 8;
    m.topk_group = 4;
    m.num_experts_per_tok = 6;
    const moe::RouterOptions o = router_options(m);
    EXPECT_EQ(o.n_routed_experts, 64);
    EXPECT_EQ(o.n_group, 8);
    EXPECT_EQ(o.topk_group, 4);
    EXPECT_EQ(o.num_experts_per_tok, 6);
    EXPECT_DOUBLE_EQ(o.routed_scaling_factor, m.routed_scaling_factor);
    EXPECT_EQ(moe::select_experts(at::rand({3, 64}), o).size(1), 6);
}

}  // namespace
}  // namespace dsrl::dsa
