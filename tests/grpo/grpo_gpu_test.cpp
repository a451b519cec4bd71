// Rollout and GRPO on CUDA (issues 5, 6): generation with records on the GPU, teacher-forced recomputation
// reproducing the recorded log-probs, and a GRPO loss + backward through the chunked log-prob function.
// Skipped with a printed reason where no GPU is visible.
#include <algorithm>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/tensor.h>

#include "core/precision.h"
#include "core/rng.h"
#include "grpo/logprobs.h"
#include "grpo/loss.h"
#include "rollout/generator.h"
#include "tests/model_fixtures.h"
#include "tests/test_util.h"

namespace dsrl::grpo {
namespace {

// The GRPO loss of the samples' rewards (group advantages without std division) on the packed batch.
LossOutput group_loss(const std::vector<const rollout::Sample*>& all, const LogprobResult& pi, const PackedBatch& b) {
    std::vector<float> rewards;
    std::vector<int64_t> group;
    for (const auto* s : all) {
        rewards.push_back(s->reward);
        group.push_back(s->prompt_id);
    }
    const Advantages adv = compute_advantages(at::tensor(rewards), at::tensor(group), AdvNorm::kNone);
    return grpo_loss({pi.logp, b.logp_old.cuda(), {}, b.valid.cuda(), adv.adv.cuda(), adv.contributes.cuda(), {}}, {});
}

// The embedded default model (index_topk 12, so generations cross into the sparse regime) with weights of std 0.08
// (peaked distributions), built on the CPU and moved to the GPU; or the architecture `c`.
dsa::Model random_cuda_model(uint64_t seed, const ModelConfig* arch = nullptr) {
    ModelConfig c;
    c.index_topk = 12;
    c.max_position_embeddings = 128;
    if (arch != nullptr) c = *arch;
    dsa::Model cpu = dsa::Model::random(c, seed, at::kCPU);
    at::Generator gen = rng::make_cpu_generator(seed + 1);
    for (dsa::NamedTensor& t : cpu.named_tensors()) {
        if (t.name.find("norm") == std::string::npos) t.tensor->normal_(0.0, 0.08, gen);
    }
    dsa::ModelWeights w = cpu.weights();
    for (dsa::NamedTensor& t : dsa::named_tensors(w, c)) *t.tensor = t.tensor->cuda();
    return dsa::Model(c, w);
}

// `prompts` chat prompts of `base + step·p` copies of `fill`, `group` samples each (seeds from `seed`), as
// generate_groups orders them.
std::vector<rollout::GenerationRequest> chat_groups(
    const text::ByteTokenizer& tok, int prompts, int group, int base, int step, char fill, uint64_t seed) {
    std::vector<rollout::GenerationRequest> reqs;
    for (int p = 0; p < prompts; ++p) {
        const auto ids = tok.apply_chat({{"user", std::string(static_cast<size_t>(base + step * p), fill)}}, true);
        for (int g = 0; g < group; ++g) {
            reqs.push_back({"d", p, g, rollout::sample_seed(seed, p, g), std::vector<int32_t>(ids.begin(), ids.end())});
        }
    }
    return reqs;
}

TEST(GrpoGpuTest, GenerateRecomputeAndLossOnCuda) {
    DSRL_REQUIRE_CUDA();
    dsa::Model m = random_cuda_model(31);
    const ModelConfig& c = m.config();
    const text::ByteTokenizer tok(c.vocab_size);
    std::vector<rollout::Prompt> prompts;
    for (int i = 0; i < 3; ++i) {
        const auto ids = tok.apply_chat({{"user", std::string("gpu question ") + char('a' + i)}}, true);
        prompts.push_back({"reasoning", i, std::vector<int32_t>(ids.begin(), ids.end())});
    }
    const rollout::GenerateOptions opt{.sampling = {.temperature = 0.9, .top_p = 0.9}, .max_new_tokens = 12};
    auto groups = rollout::generate_groups(m, tok, prompts, 4, opt, 7);
    double worst = 0;
    std::vector<const rollout::Sample*> all;
    for (auto& g : groups) {
        for (auto& s : g.samples) {
            s.reward = static_cast<float>(s.sample_index % 2);
            all.push_back(&s);
            const at::Tensor lp = rollout::recompute_logprobs(m, s, 0.9, true, true);
            worst = std::max(worst, (lp - at::tensor(s.logprobs, at::kFloat)).abs().max().item<double>());
        }
    }
    EXPECT_LE(worst, 1e-4);
    for (dsa::NamedTensor& t : m.named_tensors()) {
        if (t.trainable) t.tensor->requires_grad_(true);
    }
    const PackedBatch b = pack_samples(all, tok.pad_id());
    const LogprobResult pi = sequence_logprobs(m, b, {.temperature = 0.9, .chunk_tokens = 16, .entropy = true});
    EXPECT_TRUE(pi.logp.is_cuda());
    EXPECT_LE(((pi.logp.detach().cpu() - b.logp_old) * b.valid).abs().max().item<double>(), 1e-4);
    const LossOutput loss = group_loss(all, pi, b);
    loss.loss.backward();
    EXPECT_TRUE(m.weights().lm_head.grad().defined());
    EXPECT_GT(m.weights().lm_head.grad().abs().sum().item<double>(), 0);
}

// The continuous engine on CUDA, graphed and launched, against the static engine's samples of `reqs` in fp32: the same
// tokens for almost every sample (the dense MoE sums in another order, so a draw at a CDF boundary may flip), log-probs
// of the equal ones within 1e-4, teacher-forced recomputation of its records within 1e-4, each group's prompt
// prefilled once (`group` samples a prompt).
void expect_continuous_matches_static(const dsa::Model& m,
                                      const text::ByteTokenizer& tok,
                                      const std::vector<rollout::GenerationRequest>& reqs,
                                      rollout::GenerateOptions opt,
                                      int64_t group,
                                      bool expect_padding) {
    const std::vector<rollout::Sample> want = rollout::generate_static(m, tok, reqs, opt);
    opt.engine.block_size = 8;
    for (const bool graphs : {true, false}) {
        SCOPED_TRACE(graphs ? "CUDA graphs" : "no graphs");
        opt.engine.cuda_graphs = graphs;
        rollout::GenerationStats stats;
        const std::vector<rollout::Sample> got = rollout::generate(m, tok, reqs, opt, &stats);
        ASSERT_EQ(got.size(), want.size());
        EXPECT_EQ(stats.prefill_tokens * group, stats.prompt_tokens) << "each group's prompt prefilled once";
        EXPECT_EQ(stats.graphs_captured > 0, graphs);
        if (graphs && expect_padding) {
            EXPECT_GT(stats.padded_row_steps, 0) << "rows padded to a bucket";
        }
        int same = 0;
        double worst = 0, worst_recomputed = 0;
        for (size_t i = 0; i < got.size(); ++i) {
            if (got[i].response == want[i].response) {
                ++same;
                for (size_t t = 0; t < got[i].logprobs.size(); ++t) {
                    worst = std::max(worst, static_cast<double>(std::abs(got[i].logprobs[t] - want[i].logprobs[t])));
                }
            }
            const at::Tensor lp = rollout::recompute_logprobs(m, got[i], opt.sampling.temperature, true, true, true);
            worst_recomputed =
                std::max(worst_recomputed, (lp - at::tensor(got[i].logprobs, at::kFloat)).abs().max().item<double>());
        }
        EXPECT_GE(same, static_cast<int>(got.size()) * 9 / 10);
        EXPECT_LE(worst, 1e-4);
        EXPECT_LE(worst_recomputed, 1e-4);
    }
}

// |recorded log-prob - teacher-forced recomputation| over every token of `samples` (routes, kept sets and key sets
// replayed): the mean and the 99th percentile, printed under `what`.
struct ForcedDiffs {
    size_t tokens = 0;
    double mean = 0, p99 = 0;
};
ForcedDiffs teacher_forced_diffs(const dsa::Model& m,
                                 const std::vector<rollout::Sample>& samples,
                                 double temperature,
                                 const std::string& what) {
    std::vector<float> diffs;
    for (const rollout::Sample& s : samples) {
        const at::Tensor lp = rollout::recompute_logprobs(m, s, temperature, true, true, true);
        const at::Tensor d = (lp - at::tensor(s.logprobs, at::kFloat)).abs();
        for (int64_t i = 0; i < d.numel(); ++i) diffs.push_back(d[i].item<float>());
    }
    ForcedDiffs r{.tokens = diffs.size()};
    if (diffs.empty()) return r;
    std::sort(diffs.begin(), diffs.end());
    for (const float d : diffs) r.mean += d;
    r.mean /= static_cast<double>(diffs.size());
    r.p99 = diffs[diffs.size() * 99 / 100];
    std::printf("[%s] %zu tokens: |logp - teacher-forced| mean %.2e, p99 %.2e, max %.2e\n", what.c_str(), diffs.size(),
                r.mean, r.p99, static_cast<double>(diffs.back()));
    return r;
}

TEST(GrpoGpuTest, ContinuousEngineMatchesTheStaticEngineOnCuda) {
    DSRL_REQUIRE_CUDA();
    const dsa::Model m = random_cuda_model(41);
    const text::ByteTokenizer tok(m.config().vocab_size);
    const rollout::GenerateOptions opt{.sampling = {.temperature = 0.9, .top_p = 0.9},
                                       .max_new_tokens = 20,
                                       .max_batch_size = 14,  // 3 groups of 4 run: rows padded to 14
                                       .record_indexer = true};
    expect_continuous_matches_static(m, tok, chat_groups(tok, 6, 4, 3, 5, 'q', 3), opt, 4, /*expect_padding=*/true);
}

// A GRPO rollout's bf16 decode on the kernels — fp32 master weights under bf16 autocast cast once, stacked and absorbed
// projections, the paged step's inputs in one kernel, the keys rotated by the norm kernel and the queries by the
// tensor-core attention and the paged indexer as they read them, the routed experts on the tensor cores, CUDA graphs —
// against teacher-forced recomputation of its records (routes, kept sets and key sets replayed; a prefill forward):
// the same log-probs within bf16 rounding of two computation orders (docs/rollout.md: mean |Δ| <= 0.02, 99% of tokens
// within 0.1).
TEST(GrpoGpuTest, Bf16DecodeRecordsAreReproducedByTeacherForcing) {
    DSRL_REQUIRE_CUDA();
    ModelConfig c;
    c.hidden_size = 256;
    c.intermediate_size = 512;
    c.moe_intermediate_size = 64;
    c.num_hidden_layers = 3;
    c.num_attention_heads = 8;
    c.q_lora_rank = 128;
    c.kv_lora_rank = 128;
    c.qk_nope_head_dim = 32;
    c.qk_rope_head_dim = 32;
    c.v_head_dim = 32;
    c.index_n_heads = 8;
    c.index_head_dim = 64;
    c.index_topk = 16;
    c.max_position_embeddings = 256;
    const dsa::Model m = random_cuda_model(45, &c);
    const text::ByteTokenizer tok(m.config().vocab_size);
    const std::vector<rollout::GenerationRequest> reqs = chat_groups(tok, 4, 4, 6, 7, 'r', 9);
    rollout::GenerateOptions opt{.sampling = {.temperature = 1.0, .top_p = 0.95},
                                 .max_new_tokens = 48,
                                 .max_batch_size = 16,
                                 .record_indexer = true};
    const AutocastScope autocast(at::kCUDA, true);
    rollout::GenerationStats stats;
    const std::vector<rollout::Sample> got = rollout::generate(m, tok, reqs, opt, &stats);
    EXPECT_GT(stats.graphs_captured, 0);
    const ForcedDiffs d = teacher_forced_diffs(m, got, 1.0, "bf16 decode");
    ASSERT_GT(d.tokens, 400u);
    EXPECT_LE(d.mean, 0.02);
    EXPECT_LE(d.p99, 0.1);
}

// Architectures the tests above do not use, as a user's checkpoint may bring them: DeepSeek-V3.2's head dims (a
// 512-wide latent, 64-wide rope keys, 128-wide indexer heads, eight expert groups, yarn rotary scaling) with a
// vocabulary past the sampling kernel's 4,096 (its ATen fallback inside the graphs); an all-dense model with tied
// embeddings; one expert group of eight, top-2, no shared expert. In each, the continuous engine (graphed and launched)
// gives the static engine's records in fp32, and under bf16 autocast teacher forcing reproduces its log-probs
// (docs/rollout.md's tolerance).
TEST(GrpoGpuTest, HeldOutArchitecturesKeepTheRecordsOnCuda) {
    DSRL_REQUIRE_CUDA();
    std::vector<std::pair<const char*, ModelConfig>> archs;
    {
        ModelConfig c = testing::with_v32_heads(ModelConfig{}, 64);
        c.vocab_size = 5000;
        c.hidden_size = 256;
        c.intermediate_size = 512;
        c.moe_intermediate_size = 64;
        c.num_hidden_layers = 3;
        c.num_attention_heads = 4;
        c.q_lora_rank = 128;
        c.num_experts_per_tok = 4;
        c.index_n_heads = 16;
        c.index_topk = 16;
        c.max_position_embeddings = 256;
        archs.emplace_back("V3.2 head dims, vocab 5000, yarn", c);
    }
    {
        ModelConfig c;
        c.num_hidden_layers = 2;
        c.first_k_dense_replace = 2;
        c.tie_word_embeddings = true;
        c.index_topk = 12;
        c.max_position_embeddings = 128;
        archs.emplace_back("all dense, tied embeddings", c);
    }
    {
        ModelConfig c;
        c.n_routed_experts = 8;
        c.num_experts_per_tok = 2;
        c.n_group = 1;
        c.topk_group = 1;
        c.n_shared_experts = 0;
        c.index_topk = 12;
        c.max_position_embeddings = 128;
        archs.emplace_back("one group of 8, top-2, no shared expert", c);
    }
    for (const auto& [name, arch] : archs) {
        SCOPED_TRACE(name);
        const dsa::Model m = random_cuda_model(51, &arch);
        const text::ByteTokenizer tok(m.config().vocab_size);
        const std::vector<rollout::GenerationRequest> reqs = chat_groups(tok, 3, 4, 4, 9, 'h', 13);
        rollout::GenerateOptions opt{.sampling = {.temperature = 0.9, .top_p = 0.9},
                                     .max_new_tokens = 24,
                                     .max_batch_size = 10,
                                     .record_indexer = true};
        expect_continuous_matches_static(m, tok, reqs, opt, 4, /*expect_padding=*/false);
        const AutocastScope autocast(at::kCUDA, true);
        opt.engine.cuda_graphs = true;
        const ForcedDiffs d =
            teacher_forced_diffs(m, rollout::generate(m, tok, reqs, opt), 0.9, std::string("held-out arch: ") + name);
        ASSERT_GT(d.tokens, 100u);
        EXPECT_LE(d.mean, 0.02);
        EXPECT_LE(d.p99, 0.1);
    }
}

// The graphs read the live weights: after an in-place update (an optimizer step) a second generate() samples from the
// updated model, as the launched kernels do.
TEST(GrpoGpuTest, GraphedDecodeSeesInPlaceWeightUpdates) {
    DSRL_REQUIRE_CUDA();
    dsa::Model m = random_cuda_model(43);
    const text::ByteTokenizer tok(m.config().vocab_size);
    std::vector<rollout::GenerationRequest> reqs;
    const auto ids = tok.apply_chat({{"user", "weights change between rollouts"}}, true);
    for (int g = 0; g < 3; ++g) {
        reqs.push_back({"d", 0, g, rollout::sample_seed(5, 0, g), std::vector<int32_t>(ids.begin(), ids.end())});
    }
    rollout::GenerateOptions opt{.sampling = {.temperature = 1.0}, .max_new_tokens = 16};
    const auto run = [&](bool graphs) {
        opt.engine.cuda_graphs = graphs;
        return rollout::generate(m, tok, reqs, opt);
    };
    const std::vector<rollout::Sample> before = run(true);
    {
        at::NoGradGuard no_grad;
        for (dsa::NamedTensor& t : m.named_tensors()) {
            if (t.name.find("norm") == std::string::npos) t.tensor->mul_(2.0);
        }
    }
    const std::vector<rollout::Sample> graphed = run(true), launched = run(false);
    const auto total = [](const rollout::Sample& s) {
        double sum = 0;
        for (const float lp : s.logprobs) sum += lp;
        return sum;
    };
    double moved = 0, worst = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
        moved = std::max(moved, std::abs(total(graphed[i]) - total(before[i])));
        ASSERT_EQ(graphed[i].response, launched[i].response) << i;
        for (size_t t = 0; t < graphed[i].logprobs.size(); ++t) {
            worst = std::max(worst, static_cast<double>(std::abs(graphed[i].logprobs[t] - launched[i].logprobs[t])));
        }
    }
    EXPECT_GT(moved, 1e-3) << "the samples did not change with the weights";
    EXPECT_LE(worst, 1e-4);
}

// Under bf16 autocast (a training job's rollout) generate() runs on the matmul weights cast once
// (rollout.cast_weights_once): the records of graphed decode steps equal those of steps that cast every weight.
TEST(GrpoGpuTest, WeightsCastOnceGiveTheSameRecordsOnCuda) {
    DSRL_REQUIRE_CUDA();
    const dsa::Model m = random_cuda_model(47);
    const text::ByteTokenizer tok(m.config().vocab_size);
    const std::vector<rollout::GenerationRequest> reqs = chat_groups(tok, 4, 3, 4, 7, 'w', 7);
    const AutocastScope amp(m.device(), true);
    ASSERT_TRUE(amp.active());
    rollout::GenerateOptions opt{
        .sampling = {.temperature = 0.9, .top_p = 0.9}, .max_new_tokens = 24, .record_indexer = true};
    opt.engine.cast_weights_once = false;
    const std::vector<rollout::Sample> want = rollout::generate(m, tok, reqs, opt);
    opt.engine.cast_weights_once = true;
    const std::vector<rollout::Sample> got = rollout::generate(m, tok, reqs, opt);
    ASSERT_EQ(got.size(), want.size());
    int identical = 0;
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(got[i].response, want[i].response) << "sample " << i;
        EXPECT_EQ(got[i].routes, want[i].routes) << "sample " << i;
        identical += got[i].logprobs == want[i].logprobs ? 1 : 0;
        for (size_t t = 0; t < got[i].logprobs.size(); ++t) {
            worst = std::max(worst, static_cast<double>(std::abs(got[i].logprobs[t] - want[i].logprobs[t])));
        }
    }
    std::printf("weights cast once vs in every step: %d of %zu samples bit-identical, max |d logp| %.2e\n", identical,
                got.size(), worst);
    EXPECT_LE(worst, 1e-5);
}

// bf16 autocast (trainer.autocast, the GPU default): fp32 parameters, bf16 matmuls. Rollout and teacher-forced
// recomputation under the same autocast agree to bf16 precision; the logits differ from the fp32 forward (so
// autocast is active) by a bf16-sized amount; the GRPO backward yields finite fp32 gradients.
TEST(GrpoGpuTest, Bf16AutocastRolloutRecomputeAndBackward) {
    DSRL_REQUIRE_CUDA();
    ModelConfig c;
    c.index_topk = 12;
    c.max_position_embeddings = 128;
    dsa::Model cpu = dsa::Model::random(c, 41, at::kCPU);
    dsa::ModelWeights w = cpu.weights();
    for (dsa::NamedTensor& t : dsa::named_tensors(w, c)) *t.tensor = t.tensor->cuda();
    dsa::Model m(c, w);
    const text::ByteTokenizer tok(c.vocab_size);
    std::vector<rollout::Prompt> prompts;
    for (int i = 0; i < 2; ++i) {
        const auto ids = tok.apply_chat({{"user", std::string("autocast prompt ") + char('a' + i)}}, true);
        prompts.push_back({"reasoning", i, std::vector<int32_t>(ids.begin(), ids.end())});
    }
    const auto ids = tok.apply_chat({{"user", "compare the logits"}}, true);
    const at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0).cuda();
    // The dense path: on the sparse one a near-tie of indexer scores may select another key in bf16.
    const dsa::ForwardOptions dense{.path = dsa::AttentionPath::kDense};
    const at::Tensor fp32_logits = m.forward({input}, dense).logits.cpu();
    const AutocastScope amp(m.device(), true);
    ASSERT_TRUE(amp.active());
    const at::Tensor amp_logits = m.forward({input}, dense).logits;
    EXPECT_EQ(amp_logits.scalar_type(), at::kFloat);
    const double diff = (amp_logits.cpu() - fp32_logits).abs().max().item<double>();
    // The yardstick of a bf16-sized error: the same fp32 forward with every weight rounded to bf16 once.
    double rounding = 0;
    {
        Fp32Region fp32;
        dsa::ModelWeights wr = m.weights();
        for (dsa::NamedTensor& t : dsa::named_tensors(wr, c)) *t.tensor = t.tensor->to(at::kBFloat16).to(at::kFloat);
        const at::Tensor rounded = dsa::Model(c, wr).forward({input}, dense).logits.cpu();
        rounding = (rounded - fp32_logits).abs().max().item<double>();
    }
    std::printf("bf16 autocast vs fp32 logits: max abs diff %.4f; weights rounded to bf16: %.4f; max |logit| %.3f\n",
                diff, rounding, fp32_logits.abs().max().item<double>());
    EXPECT_GT(diff, 0.0) << "autocast did not change the matmul precision";
    // Autocast also rounds activations at every matmul, so allow a few times the weight-rounding error.
    EXPECT_LT(diff, 4 * rounding + 1e-3);
    const rollout::GenerateOptions opt{.sampling = {.temperature = 1.0}, .max_new_tokens = 10};
    auto groups = rollout::generate_groups(m, tok, prompts, 4, opt, 9);
    std::vector<const rollout::Sample*> all;
    for (auto& g : groups) {
        for (auto& s : g.samples) {
            s.reward = static_cast<float>(s.sample_index % 2);
            all.push_back(&s);
        }
    }
    for (dsa::NamedTensor& t : m.named_tensors()) {
        if (t.trainable) t.tensor->requires_grad_(true);
    }
    const PackedBatch b = pack_samples(all, tok.pad_id());
    const LogprobResult pi = sequence_logprobs(m, b, {.temperature = 1.0, .chunk_tokens = 16});
    EXPECT_LE(((pi.logp.detach().cpu() - b.logp_old) * b.valid).abs().max().item<double>(), 5e-2);
    const LossOutput loss = group_loss(all, pi, b);
    loss.loss.backward();
    for (dsa::NamedTensor& t : m.named_tensors()) {
        if (!t.trainable || !t.tensor->grad().defined()) continue;
        EXPECT_EQ(t.tensor->grad().scalar_type(), at::kFloat) << t.name;
        EXPECT_TRUE(t.tensor->grad().isfinite().all().item<bool>()) << t.name;
    }
    EXPECT_GT(m.weights().lm_head.grad().abs().sum().item<double>(), 0);
}

}  // namespace
}  // namespace dsrl::grpo
