// The continuous rollout engine (issue 23) against the static engine, its oracle: the same tokens, log-probs within
// 1e-5 (fp32 CPU), the same kept sets, routes and indexer sets — whatever the batch limit, the sync interval, the
// token budget, the block size (copies on write of shared prompt blocks) and a cache small enough to force
// preemptions; each group's prompt prefilled once; teacher-forced recomputation reproduces the log-probs.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/tensor.h>
#include <absl/strings/str_cat.h>
#include <gmock/gmock.h>

#include <algorithm>
#include <iterator>

#include "core/error.h"
#include "core/precision.h"
#include "rollout/engine.h"
#include "tests/model_fixtures.h"
#include "tests/test_util.h"

namespace dsrl::rollout {
namespace {

ModelConfig tiny() {
    ModelConfig c;      // the embedded default: vocab 320, 3 layers (2 MoE)
    c.index_topk = 12;  // prompts + responses cross from the dense into the sparse regime
    c.max_position_embeddings = 96;
    return c;
}

dsa::Model make_model(const ModelConfig& c) {
    dsa::Model m = dsa::Model::random(c, 17, at::kCPU);
    testing::scale_weights(m, 18, 0.08, 0.02);
    return m;
}

// Prompts of different lengths (5 to 40 tokens), G samples each, as generate_groups orders them.
std::vector<GenerationRequest> requests(int prompts, int group, int64_t vocab) {
    std::vector<GenerationRequest> out;
    for (int p = 0; p < prompts; ++p) {
        std::vector<int32_t> ids;
        const int len = 5 + (p * 13) % 36;
        for (int t = 0; t < len; ++t) ids.push_back(static_cast<int32_t>(3 + (p * 31 + t * 7) % (vocab - 3)));
        for (int g = 0; g < group; ++g) out.push_back({"d", 100 + p, g, sample_seed(5, 100 + p, g), ids});
    }
    return out;
}

GenerateOptions options(EngineOptions engine, int64_t max_batch = 64) {
    return {.sampling = {.temperature = 0.9, .top_p = 0.9, .top_k = 40},
            .max_new_tokens = 24,
            .stop = {"e", "t"},  // sequences of many lengths, most ending inside a window
            .max_batch_size = max_batch,
            .record_indexer = true,
            .engine = engine};
}

// Ids in exactly one of two kept sets.
int64_t kept_difference(const KeptSet& a, const KeptSet& b) {
    const std::vector<int32_t> x = a.ids(), y = b.ids();
    std::vector<int32_t> d;
    std::set_symmetric_difference(x.begin(), x.end(), y.begin(), y.end(), std::back_inserter(d));
    return static_cast<int64_t>(d.size());
}

// Every record field of `got` equals `want`'s (log-probs within 1e-5). Kept sets may differ by one id at the top-p /
// min-p boundary (a cumulative mass within rounding of the threshold: the engines sum in another order) for at most
// 1% of the tokens; such a token's log-prob is renormalized over another set, so it is not compared.
void expect_same_records(const std::vector<Sample>& want, const std::vector<Sample>& got, const std::string& what) {
    ASSERT_EQ(want.size(), got.size()) << what;
    double worst = 0;
    int64_t tokens = 0, boundary = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const Sample& a = want[i];
        const Sample& b = got[i];
        SCOPED_TRACE(absl::StrCat(what, ": sample ", i, " (prompt ", a.prompt_id, ", index ", a.sample_index, ")"));
        ASSERT_EQ(a.prompt_id, b.prompt_id);
        ASSERT_EQ(a.sample_index, b.sample_index);
        ASSERT_EQ(a.response, b.response);
        EXPECT_EQ(a.finish, b.finish);
        ASSERT_EQ(a.logprobs.size(), b.logprobs.size());
        ASSERT_EQ(a.kept.size(), b.kept.size());
        for (size_t t = 0; t < a.logprobs.size(); ++t) {
            ++tokens;
            if (a.kept[t].bytes() != b.kept[t].bytes()) {
                EXPECT_EQ(kept_difference(a.kept[t], b.kept[t]), 1) << "token " << t << ": kept sets differ by more "
                                                                    << "than the boundary id";
                ++boundary;
                continue;
            }
            worst = std::max(worst, static_cast<double>(std::abs(a.logprobs[t] - b.logprobs[t])));
        }
        EXPECT_EQ(a.routes, b.routes) << "routing paths";
        ASSERT_EQ(a.indexer.size(), b.indexer.size());
        for (size_t l = 0; l < a.indexer.size(); ++l) {
            EXPECT_TRUE(at::equal(a.indexer_sets(static_cast<int32_t>(l)), b.indexer_sets(static_cast<int32_t>(l))))
                << "indexer sets of layer " << l;
        }
    }
    EXPECT_LE(worst, 1e-5) << what << ": log-probs";
    EXPECT_LE(boundary * 100, tokens) << what << ": " << boundary << " of " << tokens << " kept sets differ";
}

TEST(EngineTest, ContinuousBatchingReproducesTheStaticEngineUnderEveryLimit) {
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    const auto reqs = requests(7, 4, m.config().vocab_size);
    GenerationStats base_stats;
    const std::vector<Sample> want = generate_static(m, tok, reqs, options({.kind = "static"}), &base_stats);
    int64_t stopped = 0;
    for (const Sample& s : want) stopped += s.finish == FinishReason::kStop || s.finish == FinishReason::kEos ? 1 : 0;
    EXPECT_GT(stopped, 4) << "samples of several lengths";
    EXPECT_LT(stopped, 7 * 4);

    struct Case {
        std::string name;
        EngineOptions engine;
        int64_t max_batch;
    };
    const std::vector<Case> cases = {
        {"defaults", {}, 64},
        {"batch of 6 (groups wait)", {}, 6},
        {"sync every 5 steps", {.sync_interval = 5}, 64},
        {"blocks of 5 (copy on write)", {.block_size = 5}, 64},
        {"token budget 120", {.max_tokens_in_flight = 120}, 64},
        // The step CUDA graphs replay: rows padded to a power of two, block tables padded (keys past a row masked).
        {"bucketed step", {.eager_buckets = true}, 64},
        {"bucketed step, batch of 6, blocks of 5", {.block_size = 5, .eager_buckets = true}, 6},
        {"bucketed step, sync every 3 steps", {.sync_interval = 3, .eager_buckets = true}, 64},
    };
    for (const Case& c : cases) {
        GenerationStats stats;
        const std::vector<Sample> got = generate_continuous(m, tok, reqs, options(c.engine, c.max_batch), &stats);
        expect_same_records(want, got, c.name);
        EXPECT_EQ(stats.generated_tokens, base_stats.generated_tokens) << c.name;
        EXPECT_EQ(stats.preemptions, 0) << c.name;
        // Each group's prompt once: the static engine prefills every sample's copy.
        EXPECT_EQ(stats.prefill_tokens * 4, base_stats.prompt_tokens) << c.name;
        if (c.engine.sync_interval > 1) {
            EXPECT_GT(stats.wasted_row_steps, 0) << c.name;
        }
        if (c.engine.eager_buckets) {
            EXPECT_GT(stats.padded_row_steps, 0) << c.name << ": rows padded to a bucket";
        }
        if (c.engine.sync_interval <= 1) {
            EXPECT_EQ(stats.decode_row_steps, stats.generated_tokens) << c.name << ": finished rows leave at once";
        }
        // The host's split of the decode time: each part counted once (a graph's capture apart from the launches).
        for (const double part : {stats.setup_seconds, stats.capture_seconds, stats.launch_seconds, stats.wait_seconds,
                                  stats.record_seconds})
            EXPECT_GE(part, 0.0) << c.name;
        EXPECT_LE(stats.setup_seconds + stats.capture_seconds + stats.launch_seconds + stats.wait_seconds +
                      stats.record_seconds,
                  stats.decode_seconds + 1e-6)
            << c.name;
    }
}

// Forced ids (scripted turns, GenerationRequest::forced; the sample ends with them) of several lengths in the bucketed
// step's window of slots: forced rows beside sampled ones in a window, and the windows after them with nothing forced,
// against the static engine.
TEST(EngineTest, ForcedIdsInTheBucketedWindows) {
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    std::vector<GenerationRequest> reqs = requests(5, 3, m.config().vocab_size);
    for (size_t i = 0; i < reqs.size(); i += 2) {
        const auto n = static_cast<int32_t>(1 + (i * 5) % 9);  // 1 to 9 forced ids
        for (int32_t t = 0; t < n; ++t) reqs[i].forced.push_back(static_cast<int32_t>(20 + (7 * i + 3 * t) % 200));
    }
    GenerateOptions opt = options({.kind = "static"});
    opt.stop.clear();  // a forced id must not end the sample early
    const std::vector<Sample> want = generate_static(m, tok, reqs, opt, nullptr);
    for (size_t i = 0; i < reqs.size(); i += 2) {
        EXPECT_EQ(want[i].response, reqs[i].forced) << "sample " << i << " is its forced ids";
    }
    for (const EngineOptions& e : {EngineOptions{.sync_interval = 4, .eager_buckets = true},
                                   EngineOptions{.sync_interval = 16, .eager_buckets = true}}) {
        opt.engine = e;
        expect_same_records(want, generate_continuous(m, tok, reqs, opt, nullptr),
                            absl::StrCat("bucketed, sync every ", e.sync_interval));
    }
}

// Held-out shapes and settings: a model without MoE layers, greedy decoding, no truncation (kept sets "all"),
// min-p, a context window that ends most samples (finish context), blocks of one slot, one sequence at a time.
TEST(EngineTest, EdgeSettingsMatchTheStaticEngine) {
    struct Case {
        std::string name;
        ModelConfig cfg;
        SamplingParams sampling;
        EngineOptions engine;
        int64_t max_batch = 64;
    };
    ModelConfig dense = tiny();
    dense.first_k_dense_replace = dense.num_hidden_layers;  // no MoE layer: no routes
    ModelConfig short_window = tiny();
    short_window.max_position_embeddings = 48;  // prompts of up to 40 tokens + 24 new ones do not fit
    // DeepSeek-V3.2's head dims (512-wide latent, 64-wide rope keys, 128-wide indexer heads, 8 expert groups, yarn) at
    // a small width, and a model with tied embeddings, one expert group and no shared expert.
    ModelConfig v32_heads = testing::with_v32_heads(tiny(), 32);
    v32_heads.vocab_size = 600;
    v32_heads.num_hidden_layers = 2;
    ModelConfig tied_one_group = tiny();
    tied_one_group.tie_word_embeddings = true;
    tied_one_group.n_routed_experts = 6;
    tied_one_group.num_experts_per_tok = 2;
    tied_one_group.n_group = 1;
    tied_one_group.topk_group = 1;
    tied_one_group.n_shared_experts = 0;
    const std::vector<Case> cases = {
        {"dense model, greedy", dense, {.temperature = 0.0}, {}},
        {"no truncation", tiny(), {.temperature = 1.0}, {.sync_interval = 3}},
        {"min_p", tiny(), {.temperature = 0.8, .min_p = 0.05}, {.block_size = 3}},
        {"short window, blocks of 1, one at a time",
         short_window,
         {.temperature = 0.9, .top_p = 0.9},
         {.block_size = 1},
         1},
        {"V3.2 head dims, yarn", v32_heads, {.temperature = 0.9, .top_p = 0.9}, {.block_size = 4}},
        {"tied embeddings, one expert group, no shared expert",
         tied_one_group,
         {.temperature = 0.9, .top_k = 20},
         {.sync_interval = 5}},
    };
    for (const Case& c : cases) {
        const dsa::Model m = make_model(c.cfg);
        const text::ByteTokenizer tok(c.cfg.vocab_size);
        const auto reqs = requests(5, 3, c.cfg.vocab_size);
        GenerateOptions opt = options({.kind = "static"}, c.max_batch);
        opt.sampling = c.sampling;
        const std::vector<Sample> want = generate_static(m, tok, reqs, opt, nullptr);
        opt.engine = c.engine;
        expect_same_records(want, generate_continuous(m, tok, reqs, opt, nullptr), c.name);
        if (c.cfg.max_position_embeddings == 48) {
            int context = 0;
            for (const Sample& s : want) context += s.finish == FinishReason::kContext ? 1 : 0;
            EXPECT_GT(context, 0) << "the short window must end some samples";
        }
    }
}

TEST(EngineTest, AFullCachePreemptsAndRecomputesWithTheSameRecords) {
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    const auto reqs = requests(6, 4, m.config().vocab_size);
    const std::vector<Sample> want = generate_static(m, tok, reqs, options({.kind = "static"}), nullptr);
    // 16 blocks of 4 slots: one sequence of 64 tokens fits (needs 18 with the scratch and copy-on-write blocks: use
    // 20), a few groups do not.
    GenerationStats stats;
    const std::vector<Sample> got =
        generate_continuous(m, tok, reqs, options({.block_size = 4, .cache_blocks = 20}), &stats);
    expect_same_records(want, got, "cache of 20 blocks");
    EXPECT_GT(stats.preemptions, 0) << "the small cache must have evicted sequences";
    EXPECT_LE(stats.peak_cache_blocks, 19);
    // The bucketed step (what CUDA graphs replay): padded rows write only to the scratch block, never into a block an
    // evicted or recomputed sequence takes over.
    GenerationStats bucketed;
    expect_same_records(
        want,
        generate_continuous(m, tok, reqs, options({.block_size = 4, .cache_blocks = 20, .eager_buckets = true}),
                            &bucketed),
        "cache of 20 blocks, bucketed step");
    EXPECT_GT(bucketed.preemptions, 0);
}

TEST(EngineTest, TeacherForcedRecomputationReproducesTheRecordedLogprobs) {
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    const std::vector<Sample> got =
        generate_continuous(m, tok, requests(4, 3, m.config().vocab_size), options({.block_size = 8}), nullptr);
    double worst = 0;
    for (const Sample& s : got) {
        ASSERT_FALSE(s.response.empty());
        const at::Tensor lp = recompute_logprobs(m, s, 0.9, /*replay_routes=*/true, /*apply_kept=*/true,
                                                 /*replay_indexer=*/true);
        worst = std::max(worst, (lp - at::tensor(s.logprobs, at::kFloat)).abs().max().item<double>());
    }
    EXPECT_LE(worst, 1e-5);
}

// Under autocast, generate() runs either engine on weights cast once per call (rollout.cast_weights_once): every
// record must be what casting each weight in every forward gives, bit for bit.
TEST(EngineTest, WeightsCastOnceGiveTheSameRecordsUnderAutocast) {
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    const auto reqs = requests(4, 3, m.config().vocab_size);
    const std::vector<Sample> plain = generate(m, tok, reqs, options({}), nullptr);
    const AutocastScope amp(at::kCPU, /*enabled=*/true, /*on_cpu=*/true);  // bf16 autocast on the CPU
    for (const EngineOptions& e :
         {EngineOptions{.kind = "static"}, EngineOptions{.block_size = 5}, EngineOptions{.eager_buckets = true}}) {
        EngineOptions every_step = e;
        every_step.cast_weights_once = false;
        const std::vector<Sample> want = generate(m, tok, reqs, options(every_step), nullptr);
        const std::vector<Sample> got = generate(m, tok, reqs, options(e), nullptr);
        SCOPED_TRACE(
            absl::StrCat("engine ", e.kind, ", block size ", e.block_size, e.eager_buckets ? ", bucketed" : ""));
        ASSERT_EQ(want.size(), got.size());
        bool autocast_changed_something = false;
        for (size_t i = 0; i < want.size(); ++i) {
            EXPECT_EQ(got[i].response, want[i].response) << "sample " << i;
            EXPECT_EQ(got[i].logprobs, want[i].logprobs) << "sample " << i;
            EXPECT_EQ(got[i].routes, want[i].routes) << "sample " << i;
            ASSERT_EQ(got[i].kept.size(), want[i].kept.size());
            for (size_t t = 0; t < want[i].kept.size(); ++t) EXPECT_EQ(got[i].kept[t].bytes(), want[i].kept[t].bytes());
            ASSERT_EQ(got[i].indexer.size(), want[i].indexer.size());
            for (size_t l = 0; l < want[i].indexer.size(); ++l) {
                EXPECT_TRUE(at::equal(got[i].indexer_sets(static_cast<int32_t>(l)),
                                      want[i].indexer_sets(static_cast<int32_t>(l))));
            }
            autocast_changed_something |= want[i].logprobs != plain[i].logprobs;
        }
        EXPECT_TRUE(autocast_changed_something) << "the records under autocast equal the fp32 ones: a vacuous test";
    }
}

TEST(EngineTest, ACacheTooSmallForOneSequenceNamesTheKey) {
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    EXPECT_THAT([&] { generate_continuous(m, tok, requests(1, 2, 320), options({.cache_blocks = 2}), nullptr); },
                ::testing::ThrowsMessage<ConfigError>(::testing::HasSubstr("rollout.cache_blocks")));
}

}  // namespace
}  // namespace dsrl::rollout
