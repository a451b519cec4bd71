// Policy/reference log-probs for GRPO (issue 6): the chunked vocabulary projection against plain autograd,
// keep-routing and keep-sampling-mask on real rollout samples, and one update phase moving the policy.
#include <gtest/gtest.h>

#include <torch/csrc/autograd/autograd.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randn_like.h>
#include <ATen/ops/where.h>

#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "grpo/logprobs.h"
#include "grpo/update.h"
#include "rollout/generator.h"
#include "tests/test_util.h"

namespace dsrl::grpo {
namespace {

TEST(ChunkedLogprobTest, MatchesPlainAutogradWithAndWithoutKeptSets) {
    at::Generator gen = rng::make_cpu_generator(1);
    const at::Tensor h0 = at::randn({13, 8}, gen, at::kDouble), w0 = at::randn({30, 8}, gen, at::kDouble);
    const at::Tensor tokens = at::randint(30, {13}, gen, at::kLong);
    at::Tensor kept = at::rand({13, 30}, gen, at::kDouble).lt(0.4);
    kept.scatter_(1, tokens.unsqueeze(1), true);  // the sampled token is always kept
    for (const bool with_kept : {false, true}) {
        for (const int64_t chunk : {1, 4, 100}) {
            const at::Tensor h = h0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
            KeptChunkFn fn;
            if (with_kept) fn = [&](int64_t s, int64_t n) { return kept.narrow(0, s, n); };
            auto [lp, ent] = chunked_token_logprobs(h, w, tokens, fn, 0.7, chunk, true);
            // Oracle: the whole [M, V] logits through autograd.
            const at::Tensor h2 = h0.clone().requires_grad_(true), w2 = w0.clone().requires_grad_(true);
            at::Tensor logits = at::matmul(h2, w2.t()) / 0.7;
            if (with_kept) logits = at::where(kept, logits, at::full_like(logits, -INFINITY));
            const at::Tensor logp_all = at::log_softmax(logits, -1);
            const at::Tensor expect = logp_all.gather(1, tokens.unsqueeze(1)).squeeze(1);
            EXPECT_ALL_CLOSE("logp", lp, expect, 1e-5);  // chunks compute in fp32
            const at::Tensor p = logp_all.exp();
            const at::Tensor oracle_ent = -at::where(p.gt(0), p * logp_all, at::zeros_like(p)).sum(-1);
            EXPECT_ALL_CLOSE("entropy", ent, oracle_ent.detach(), 1e-5);
            const at::Tensor g = at::randn({13}, gen, at::kDouble);
            const auto ours = torch::autograd::grad({lp}, {h, w}, {g});
            const auto theirs = torch::autograd::grad({expect}, {h2, w2}, {g});
            EXPECT_ALL_CLOSE("d/dhidden", ours[0], theirs[0], 1e-5);
            EXPECT_ALL_CLOSE("d/dweight", ours[1], theirs[1], 1e-5);
        }
    }
}

struct Rollout {
    dsa::Model model;
    std::vector<rollout::SampleGroup> groups;
};

Rollout make_rollout(bool record_indexer = false) {
    ModelConfig c;
    c.index_topk = 12;
    c.max_position_embeddings = 128;
    dsa::Model m = dsa::Model::random(c, 21, at::kCPU);
    at::Generator gen = rng::make_cpu_generator(22);
    for (dsa::NamedTensor& t : m.named_tensors()) {
        if (t.name.find("norm") == std::string::npos) t.tensor->normal_(0.0, 0.08, gen);
    }
    const text::ByteTokenizer tok(c.vocab_size);
    std::vector<rollout::Prompt> prompts;
    for (int i = 0; i < 3; ++i) {
        const auto ids = tok.apply_chat({{"user", std::string("question ") + char('a' + i)}}, true);
        prompts.push_back({i == 2 ? "alignment" : "reasoning", i, std::vector<int32_t>(ids.begin(), ids.end())});
    }
    const rollout::GenerateOptions opt{.sampling = {.temperature = 0.9, .top_p = 0.9, .top_k = 40},
                                       .max_new_tokens = 10,
                                       .record_indexer = record_indexer};
    auto groups = rollout::generate_groups(m, tok, prompts, 4, opt, 5);
    for (auto& g : groups) {
        for (auto& s : g.samples) s.reward = static_cast<float>(s.sample_index % 2);  // two winners per group
    }
    return {std::move(m), std::move(groups)};
}

std::vector<const rollout::Sample*> all_samples(const std::vector<rollout::SampleGroup>& groups) {
    std::vector<const rollout::Sample*> out;
    for (const auto& g : groups) {
        for (const auto& s : g.samples) out.push_back(&s);
    }
    return out;
}

TEST(SequenceLogprobsTest, KeepRoutingAndKeepSamplingMaskReproduceTheBehaviourPolicy) {
    Rollout r = make_rollout();
    const PackedBatch b = pack_samples(all_samples(r.groups), 2);
    const LogprobOptions both{.replay_routes = true, .apply_kept = true, .temperature = 0.9, .chunk_tokens = 7};
    const at::Tensor lp = sequence_logprobs(r.model, b, both).logp.detach();
    EXPECT_ALL_CLOSE("recorded behaviour log-probs", lp * b.valid, b.logp_old, 1e-5);
    // keep-sampling-mask: renormalizing over the kept set raises every truncated token's log-prob.
    const at::Tensor full =
        sequence_logprobs(r.model, b, {.replay_routes = true, .apply_kept = false, .temperature = 0.9}).logp;
    EXPECT_TRUE((lp >= full.detach() - 1e-6).logical_or(b.valid.eq(0)).all().item<bool>());
    EXPECT_GT((lp - full.detach()).max().item<double>(), 1e-3);
    // keep-routing: the router moves (bias), the replayed forward still reproduces the records...
    for (dsa::LayerWeights& l : r.model.weights().layers) {
        if (l.is_moe) l.moe.bias.add_(at::randn_like(l.moe.bias) * 0.5);
    }
    EXPECT_ALL_CLOSE("replayed after the router moved", sequence_logprobs(r.model, b, both).logp.detach() * b.valid,
                     b.logp_old, 1e-5);
    const at::Tensor rerouted =
        sequence_logprobs(r.model, b, {.replay_routes = false, .apply_kept = true, .temperature = 0.9}).logp.detach();
    EXPECT_GT(((rerouted - b.logp_old) * b.valid).abs().max().item<double>(), 1e-3);
    // ... and the router still learns through the recomputed gate weights.
    dsa::LayerWeights& moe = r.model.weights().layers[1];
    moe.moe.gate.requires_grad_(true);
    sequence_logprobs(r.model, b, both).logp.sum().backward();
    ASSERT_TRUE(moe.moe.gate.grad().defined());
    EXPECT_GT(moe.moe.gate.grad().abs().sum().item<double>(), 0);
}

TEST(SequenceLogprobsTest, KeepIndexerReplaysEachSamplesSetsInAPaddedBatch) {
    Rollout r = make_rollout(/*record_indexer=*/true);
    const PackedBatch b = pack_samples(all_samples(r.groups), 2);
    const LogprobOptions replay{
        .replay_routes = true, .apply_kept = true, .temperature = 0.9, .chunk_tokens = 7, .replay_indexer = true};
    EXPECT_ALL_CLOSE("recorded behaviour log-probs", sequence_logprobs(r.model, b, replay).logp.detach() * b.valid,
                     b.logp_old, 1e-5);
    // The indexer moves: the replayed forward (which never evaluates it) holds, a fresh selection does not.
    {
        at::NoGradGuard no_grad;
        for (dsa::LayerWeights& l : r.model.weights().layers) l.indexer.wk.add_(at::randn_like(l.indexer.wk) * 0.5);
    }
    EXPECT_ALL_CLOSE("replayed after the indexer moved", sequence_logprobs(r.model, b, replay).logp.detach() * b.valid,
                     b.logp_old, 1e-5);
    LogprobOptions fresh = replay;
    fresh.replay_indexer = false;
    EXPECT_GT(((sequence_logprobs(r.model, b, fresh).logp.detach() - b.logp_old) * b.valid).abs().max().item<double>(),
              1e-3);
    // Gradients still reach the attention (the replayed sets select what is attended, not how).
    dsa::LayerWeights& l0 = r.model.weights().layers[0];
    l0.attn.kv_a_proj_with_mqa.requires_grad_(true);
    sequence_logprobs(r.model, b, replay).logp.sum().backward();
    ASSERT_TRUE(l0.attn.kv_a_proj_with_mqa.grad().defined());
    EXPECT_GT(l0.attn.kv_a_proj_with_mqa.grad().abs().sum().item<double>(), 0);
    // Samples without sets cannot be replayed.
    Rollout plain = make_rollout();
    EXPECT_THROW(sequence_logprobs(plain.model, pack_samples(all_samples(plain.groups), 2), replay), DataError);
}

TEST(SequenceLogprobsTest, MissingRecordsAreClearErrors) {
    Rollout r = make_rollout();
    rollout::Sample s = r.groups[0].samples[0];
    s.kept.clear();
    const PackedBatch b = pack_samples({&s}, 2);
    EXPECT_THROW(sequence_logprobs(r.model, b, {.apply_kept = true}), DataError);
    // An empty kept set cannot be built, nor read from a record.
    EXPECT_ANY_THROW(rollout::KeptSet::from_ids({}, 320));
    EXPECT_THROW(rollout::KeptSet::from_bytes(std::string("\x01", 1), 320), DataError);
}

TEST(GrpoUpdateTest, AnUpdateRaisesTheLogprobsOfBetterSamples) {
    Rollout r = make_rollout();
    const dsa::Model reference(r.model.config(), [&] {
        dsa::ModelWeights w = r.model.weights();
        for (dsa::NamedTensor& t : dsa::named_tensors(w, r.model.config())) *t.tensor = t.tensor->clone();
        return w;
    }());
    std::vector<at::Tensor> params;
    for (dsa::NamedTensor& t : r.model.named_tensors()) {
        if (t.trainable) params.push_back(t.tensor->requires_grad_(true));
    }
    int steps = 0;
    const auto sgd = [&] {
        at::NoGradGuard no_grad;
        for (at::Tensor& p : params) {
            if (p.grad().defined()) {
                p.sub_(p.grad() * 0.05);
                p.mutable_grad().zero_();
            }
        }
        ++steps;
    };
    GrpoConfig cfg;
    cfg.updates_per_batch = 2;
    cfg.mini_batches = 3;
    r.groups[1].samples[3].reward = std::nanf("");  // a failed reward is excluded and counted
    const auto before_b = pack_samples(all_samples(r.groups), 2);
    const at::Tensor before = sequence_logprobs(r.model, before_b, {.temperature = 0.9}).logp.detach();
    const auto metrics =
        grpo_update(r.model, &reference, r.groups, cfg, {{"reasoning", 0.0}, {"alignment", 0.05}}, 0.9, sgd);
    EXPECT_EQ(steps, 6);
    ASSERT_EQ(metrics.size(), 6u);
    EXPECT_NEAR(metrics[0].at("ratio_mean"), 1.0, 1e-4) << "first step: π_θ = π_old";
    EXPECT_GT(std::abs(metrics[3].at("ratio_mean") - 1.0), 1e-5) << "second pass sees the moved policy";
    EXPECT_EQ(metrics[0].at("failed_samples"), 1.0);
    EXPECT_GT(metrics[0].at("entropy_mean"), 0.0);
    EXPECT_DOUBLE_EQ(metrics[0].at("reward_mean/alignment"), 0.5);  // rewards 0,1,0,1
    EXPECT_DOUBLE_EQ(metrics[0].at("reward_std/alignment"), 0.5);
    EXPECT_NEAR(metrics[0].at("reward_mean/reasoning"), 3.0 / 7.0, 1e-12);  // one failed sample excluded
    const at::Tensor after = sequence_logprobs(r.model, before_b, {.temperature = 0.9}).logp.detach();
    // Sequence log-likelihood change: winners (reward 1) up, losers down, on average.
    const at::Tensor delta = ((after - before) * before_b.valid).sum(1);
    double win = 0, lose = 0;
    for (int64_t i = 0; i < delta.size(0); ++i) {
        if (i == 7) continue;  // the failed sample
        (i % 2 == 1 ? win : lose) += delta[i].item<double>();
    }
    EXPECT_GT(win, lose);
    EXPECT_THROW(grpo_update(r.model, nullptr, r.groups, cfg, {{"reasoning", 0.0}, {"alignment", 0.05}}, 0.9, sgd),
                 ConfigError);
    EXPECT_THROW(grpo_update(r.model, &reference, r.groups, cfg, {{"reasoning", 0.0}}, 0.9, sgd), ConfigError);
}

}  // namespace
}  // namespace dsrl::grpo
