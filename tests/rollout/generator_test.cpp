// Generation with records (issue 5): teacher-forced recomputation with replayed routes and the recorded kept
// sets reproduces the behaviour log-probs; without replay a perturbed router breaks it; samples do not depend
// on the batch they share; finish reasons; finished rows leave the batch.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randn_like.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/tensor.h>
#include <absl/strings/str_cat.h>
#include <gmock/gmock.h>

#include "core/error.h"
#include "core/rng.h"
#include "rollout/generator.h"
#include "tests/model_fixtures.h"
#include "tests/test_util.h"

namespace dsrl::rollout {
namespace {

ModelConfig tiny() {
    ModelConfig c;      // the embedded default: vocab 320, 3 layers (2 MoE)
    c.index_topk = 12;  // prompts + responses cross from the dense into the sparse regime
    c.max_position_embeddings = 128;
    return c;
}

dsa::Model make_model(const ModelConfig& c, double scale = 0.08) {
    dsa::Model m = dsa::Model::random(c, 17, at::kCPU);
    testing::scale_weights(m, 18, scale, 0.02);
    return m;
}

std::vector<Prompt> prompts(const text::Tokenizer& tok) {
    std::vector<Prompt> out;
    const char* texts[] = {"What is 2+3?", "Name a prime.", "Hi"};
    for (int i = 0; i < 3; ++i) {
        const auto ids = tok.apply_chat({{"user", texts[i]}}, true);
        out.push_back({"reasoning", 100 + i, std::vector<int32_t>(ids.begin(), ids.end())});
    }
    return out;
}

GenerateOptions options() {
    return {.sampling = {.temperature = 0.9, .top_p = 0.9, .top_k = 40}, .max_new_tokens = 16, .max_batch_size = 8};
}

double max_abs_diff(const at::Tensor& a, const std::vector<float>& b) {
    return (a - at::tensor(b, at::kFloat)).abs().max().item<double>();
}

TEST(GeneratorTest, TeacherForcingWithReplayedRoutesAndKeptSetsReproducesTheRecordedLogprobs) {
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    GenerationStats stats;
    const auto groups = generate_groups(m, tok, prompts(tok), 4, options(), 1234, &stats);
    ASSERT_EQ(groups.size(), 3u);
    double worst = 0;
    for (const SampleGroup& g : groups) {
        ASSERT_EQ(g.samples.size(), 4u);
        for (const Sample& s : g.samples) {
            ASSERT_FALSE(s.response.empty());
            ASSERT_EQ(s.logprobs.size(), s.response.size());
            ASSERT_EQ(s.kept.size(), s.response.size());
            EXPECT_EQ(s.num_moe_layers, 2);
            EXPECT_EQ(s.route_tensor(0).size(0), s.num_tokens()) << "a route for every prompt and response token";
            for (size_t t = 0; t < s.kept.size(); ++t) EXPECT_TRUE(s.kept[t].contains(s.response[t]));
            worst = std::max(worst, max_abs_diff(recompute_logprobs(m, s, 0.9, true, true), s.logprobs));
        }
    }
    EXPECT_LE(worst, 1e-5);
    RecordProperty("max_logprob_diff", std::to_string(worst));
    EXPECT_EQ(stats.decode_row_steps, stats.generated_tokens) << "finished rows must leave the batch";
}

TEST(GeneratorTest, WithoutReplayAPerturbedRouterBreaksTheLogprobsWithReplayTheyHold) {
    dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    const auto groups = generate_groups(m, tok, prompts(tok), 2, options(), 99);
    // The balancing bias moves after every step (aux-loss-free balancing). It only selects experts, so with the
    // recorded routes replayed nothing changes; a fresh routing picks other experts.
    for (dsa::LayerWeights& l : m.weights().layers) {
        if (l.is_moe) l.moe.bias.add_(at::randn_like(l.moe.bias) * 0.5);
    }
    double replayed = 0, fresh = 0;
    for (const SampleGroup& g : groups) {
        for (const Sample& s : g.samples) {
            replayed = std::max(replayed, max_abs_diff(recompute_logprobs(m, s, 0.9, true, true), s.logprobs));
            fresh = std::max(fresh, max_abs_diff(recompute_logprobs(m, s, 0.9, false, true), s.logprobs));
        }
    }
    EXPECT_LE(replayed, 1e-5);
    EXPECT_GT(fresh, 1e-3) << "re-routing should change the log-probs";
    RecordProperty("fresh_routing_logprob_diff", std::to_string(fresh));
}

// Keep-indexer (issue 24), the mirror of the routing test: the indexer is not trained in RL, but its weights can
// move (a DSA stage, another checkpoint's indexer) and its decode-time top-k can differ from the training forward's.
// With the recorded key sets replayed the recomputed log-probs hold; with a fresh selection they do not.
void perturb_indexer(dsa::Model& m) {
    at::NoGradGuard no_grad;
    for (dsa::LayerWeights& l : m.weights().layers) {
        for (at::Tensor* t : {&l.indexer.wq_b, &l.indexer.wk, &l.indexer.weights_proj})
            t->add_(at::randn_like(*t) * 0.5);
    }
}

GenerateOptions indexer_options() {
    GenerateOptions o = options();
    o.record_indexer = true;
    return o;
}

TEST(KeepIndexerTest, ReplayedKeySetsHoldTheLogprobsWhenTheIndexerMovesAFreshSelectionDoesNot) {
    dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    const auto groups = generate_groups(m, tok, prompts(tok), 2, indexer_options(), 7);
    int64_t sparse_positions = 0;
    double before = 0;
    for (const SampleGroup& g : groups) {
        for (const Sample& s : g.samples) {
            ASSERT_EQ(s.indexer.size(), static_cast<size_t>(m.config().num_hidden_layers));
            EXPECT_EQ(s.indexer_topk, m.config().index_topk);
            sparse_positions += std::max<int64_t>(0, s.num_tokens() - s.indexer_topk);
            before = std::max(before, max_abs_diff(recompute_logprobs(m, s, 0.9, true, true, true), s.logprobs));
        }
    }
    ASSERT_GT(sparse_positions, 20) << "the samples must reach the sparse regime";
    EXPECT_LE(before, 1e-5) << "replaying the sets the decode chose reproduces the behaviour log-probs";
    perturb_indexer(m);
    double replayed = 0, fresh = 0;
    for (const SampleGroup& g : groups) {
        for (const Sample& s : g.samples) {
            replayed = std::max(replayed, max_abs_diff(recompute_logprobs(m, s, 0.9, true, true, true), s.logprobs));
            fresh = std::max(fresh, max_abs_diff(recompute_logprobs(m, s, 0.9, true, true, false), s.logprobs));
        }
    }
    EXPECT_LE(replayed, 1e-5);
    EXPECT_GT(fresh, 1e-3) << "a new top-k should change the log-probs";
    RecordProperty("fresh_selection_logprob_diff", std::to_string(fresh));
}

TEST(KeepIndexerTest, RecordedSetsAreTheTeacherForcedSelections) {
    // The decode's top-k (one query against the cache) against the training forward's (all queries at once): on the
    // CPU in fp32 they agree except at near-ties of the k-th score.
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    const auto groups = generate_groups(m, tok, prompts(tok), 2, indexer_options(), 11);
    int64_t same = 0, total = 0;
    for (const SampleGroup& g : groups) {
        for (const Sample& s : g.samples) {
            std::vector<int64_t> ids(s.prompt.begin(), s.prompt.end());
            ids.insert(ids.end(), s.response.begin(), s.response.end());
            const dsa::ForwardOutput out =
                m.forward({at::tensor(ids, at::kLong).unsqueeze(0)}, {.return_logits = false, .return_topk = true});
            for (int32_t l = 0; l < static_cast<int32_t>(s.indexer.size()); ++l) {
                const at::Tensor recorded = s.indexer_sets(l);
                const at::Tensor forward = std::get<0>(out.topk[static_cast<size_t>(l)][0].sort(1));
                for (int64_t p = s.indexer_topk; p < s.num_tokens(); ++p) {
                    same += at::equal(recorded[p], forward[p].to(at::kInt)) ? 1 : 0;
                    ++total;
                }
            }
        }
    }
    ASSERT_GT(total, 0);
    EXPECT_GE(static_cast<double>(same) / static_cast<double>(total), 0.95) << same << " of " << total;
    RecordProperty("same_sets", absl::StrCat(same, "/", total));
}

TEST(KeepIndexerTest, ReplayNeedsMatchingRecords) {
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    const auto plain = generate_groups(m, tok, prompts(tok), 1, options(), 3);
    EXPECT_THROW(recompute_logprobs(m, plain[0].samples[0], 0.9, true, true, true), DataError);
    auto groups = generate_groups(m, tok, prompts(tok), 1, indexer_options(), 3);
    Sample s = groups[0].samples[0];
    s.indexer.pop_back();
    try {
        recompute_logprobs(m, s, 0.9, true, true, true);
        ADD_FAILURE() << "a record of fewer layers was replayed";
    } catch (const DataError& e) {
        EXPECT_THAT(e.what(), ::testing::HasSubstr("holds sets of 2 layers at k 12; the model has 3 layers"));
    }
}

TEST(GeneratorTest, SamplesDependOnTheirSeedNotOnTheBatch) {
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    GenerateOptions one = options(), eight = options();
    one.max_batch_size = 1;
    eight.max_batch_size = 8;
    const auto a = generate_groups(m, tok, prompts(tok), 4, one, 5);
    const auto b = generate_groups(m, tok, prompts(tok), 4, eight, 5);
    const auto c = generate_groups(m, tok, prompts(tok), 4, eight, 6);
    bool differs = false;
    for (size_t g = 0; g < a.size(); ++g) {
        for (size_t i = 0; i < a[g].samples.size(); ++i) {
            EXPECT_EQ(a[g].samples[i].response, b[g].samples[i].response) << "group " << g << " sample " << i;
            EXPECT_LE(max_abs_diff(at::tensor(a[g].samples[i].logprobs, at::kFloat), b[g].samples[i].logprobs), 1e-5);
            differs |= a[g].samples[i].response != c[g].samples[i].response;
        }
    }
    EXPECT_TRUE(differs) << "another base seed should give other samples";
    // Samples of one group differ from each other (independent seeds).
    EXPECT_NE(a[0].samples[0].response, a[0].samples[1].response);
}

// A tokenizer whose EOS is a chosen id (to make EOS happen on a known step).
class EosAt final : public text::Tokenizer {
public:
    EosAt(const text::ByteTokenizer& base, int64_t eos) : base_(base), eos_(eos) {}
    int64_t vocab_size() const override { return base_.vocab_size(); }
    int64_t bos_id() const override { return base_.bos_id(); }
    int64_t eos_id() const override { return eos_; }
    int64_t pad_id() const override { return base_.pad_id(); }
    std::vector<int64_t> encode(const std::string& t) const override { return base_.encode(t); }
    std::string decode(const std::vector<int64_t>& ids, bool keep) const override { return base_.decode(ids, keep); }
    std::string token_string(int64_t id) const override { return base_.token_string(id); }
    bool is_special(int64_t id) const override { return base_.is_special(id); }
    std::vector<int64_t> apply_chat(const std::vector<text::ChatMessage>& m, bool g) const override {
        return base_.apply_chat(m, g);
    }

private:
    const text::ByteTokenizer& base_;
    int64_t eos_;
};

TEST(GeneratorTest, FinishReasonsEosStopLengthAndContext) {
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    const GenerationRequest req{"reasoning", 1, 0, 42, {0, 4, 30, 40, 50, 6, 5}};
    GenerateOptions opt = options();
    opt.sampling = {.temperature = 0};  // greedy: deterministic continuation
    const Sample base = generate(m, tok, {req}, opt)[0];
    ASSERT_EQ(base.response.size(), 16u);
    EXPECT_EQ(base.finish, FinishReason::kLength);
    for (const float lp : base.logprobs) EXPECT_EQ(lp, 0.0f);  // greedy keeps one token
    // EOS: declare the 4th greedy token the EOS id (the first step that emits it ends the sample).
    const int64_t eos = base.response[3];
    size_t first = 0;
    while (base.response[first] != eos) ++first;
    const Sample e = generate(m, EosAt(tok, eos), {req}, opt)[0];
    EXPECT_EQ(e.finish, FinishReason::kEos);
    EXPECT_EQ(e.response.size(), first + 1);
    EXPECT_EQ(e.route_tensor(0).size(0), e.num_tokens()) << "the EOS token's route is recorded too";
    // Stop string: the decoded text of the first 5 tokens (when printable) ends the sample there or earlier.
    const std::string text = tok.decode(std::vector<int64_t>(base.response.begin(), base.response.begin() + 5));
    if (!text.empty()) {
        opt.stop = {text.substr(text.size() - 1)};
        const Sample s = generate(m, tok, {req}, opt)[0];
        EXPECT_EQ(s.finish, FinishReason::kStop);
        EXPECT_LE(s.response.size(), 5u);
        opt.stop.clear();
    }
    // Context: the model's window ends generation.
    ModelConfig small = m.config();
    small.max_position_embeddings = 10;
    const dsa::Model short_ctx(small, m.weights());
    const Sample c = generate(short_ctx, tok, {req}, opt)[0];
    EXPECT_EQ(c.finish, FinishReason::kContext);
    EXPECT_EQ(c.num_tokens(), 10);
}

TEST(GeneratorTest, BadPromptsAreClearErrors) {
    const dsa::Model m = make_model(tiny());
    const text::ByteTokenizer tok(m.config().vocab_size);
    try {
        generate(m, tok, {{"agent", 7, 0, 1, {}}}, options());
        FAIL() << "an empty prompt must be rejected";
    } catch (const DataError& e) {
        EXPECT_NE(std::string(e.what()).find("prompt 7"), std::string::npos) << e.what();
    }
    EXPECT_THROW(generate(m, tok, {{"agent", 8, 0, 1, std::vector<int32_t>(200, 20)}}, options()), DataError);
}

}  // namespace
}  // namespace dsrl::rollout
