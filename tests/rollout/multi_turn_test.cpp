// Multi-turn tool-use rollout (issue 20 items 2-4, 8): token in / token out (the trajectory's ids are the model's
// turns and the environment's parts, concatenated, and equal the rendered conversation), the loss mask, teacher-forced
// log-probs of a whole trajectory equal the per-turn recorded ones (fp32 CPU), environment failures marked and
// excluded while the others go on, the tool-call limit, every context strategy on scripted trajectories, and the
// record's round trip. Model turns are scripted with forced decoding (GenerationRequest::forced) through the real
// prefill/decode path of a tiny random model, so the records are the model's.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/tensor.h>
#include <absl/strings/str_cat.h>

#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "agent/environment.h"
#include "grpo/logprobs.h"
#include "rollout/generator.h"
#include "rollout/multi_turn.h"
#include "tests/model_fixtures.h"
#include "text/byte_chat_tokenizer.h"
#include "text/conversation.h"

namespace dsrl::rollout {
namespace {

using agent::Json;
using text::OrderedJson;

ModelConfig tiny() {
    ModelConfig c;  // the embedded default's architecture, a longer window
    c.index_topk = 16;
    c.max_position_embeddings = 1024;
    return c;
}

dsa::Model make_model() {
    dsa::Model m = dsa::Model::random(tiny(), 23, at::kCPU);
    testing::scale_weights(m, 24, 0.08, 0.02);
    return m;
}

// An environment with one tool, add(a, b). params: "fail" = reset | step | verify | hang | short (fewer results than
// calls); "pad" = characters of filler appended to every result (long results fill the window).
class AddEnv final : public agent::Environment {
public:
    explicit AddEnv(const Json& params) : fail_(params.value("fail", "")), pad_(params.value("pad", 0)) {}
    Json reset(const Json& task) override {
        if (fail_ == "reset") throw std::runtime_error("reset exploded");
        return {
            {"messages", Json::array({{{"role", "user"}, {"content", task.at("question")}}})},
            {"tools", Json::array({{{"type", "function"},
                                    {"function",
                                     {{"name", "add"},
                                      {"description", "a + b"},
                                      {"parameters",
                                       {{"type", "object"},
                                        {"properties", {{"a", {{"type", "integer"}}}, {"b", {{"type", "integer"}}}}},
                                        {"required", {"a", "b"}}}}}}}})}};
    }
    Json step(const Json& calls) override {
        if (fail_ == "step") throw std::runtime_error("step exploded");
        if (fail_ == "hang") std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        Json results = Json::array();
        for (const Json& c : calls) {
            const Json& a = c.at("arguments");
            const auto num = [&](const char* k) { return a.contains(k) && a[k].is_number() ? a[k].get<int>() : 0; };
            results.push_back(
                {{"tool_call_id", c.at("id")}, {"content", absl::StrCat(num("a") + num("b"), std::string(pad_, '.'))}});
        }
        if (fail_ == "short") results.erase(results.begin());
        return {{"results", results}, {"done", false}};
    }
    Json verify(const Json& trajectory) override {
        if (fail_ == "verify") throw std::runtime_error("verify exploded");
        const bool right = agent::final_answer(trajectory).find("is 5") != std::string::npos;
        return {{"reward", right ? 1.0 : 0.0}};
    }

private:
    std::string fail_;
    int pad_;
};

agent::EnvRegistry registry() {
    agent::EnvRegistry reg;
    reg.add("add", "add(a, b)", [](const Json& p) { return std::make_unique<AddEnv>(p); });
    return reg;
}

constexpr const char* kCall =
    "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"add\">\n<｜DSML｜parameter name=\"a\" "
    "string=\"false\">2</｜DSML｜parameter>\n<｜DSML｜parameter name=\"b\" string=\"false\">3</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n</｜DSML｜function_calls>";

size_t count(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

// Scripted model turns: a trajectory makes `calls` tool calls and then answers "The answer is 5."; in thinking mode
// each turn reasons first. The calls made are counted per (prompt, sample) — so a discard does not make the script
// start over — unless `plan` is set: then each trajectory picks its number of calls (1-3) from its first request's seed
// and writes it into its first reasoning, and calls are counted in the prompt (parallel copies share the key). A
// summary request is answered with a summary.
struct Script {
    const text::Tokenizer* tok;
    bool thinking = true;
    int calls = 2;
    bool plan = false;
    std::mutex mu;
    std::map<std::pair<int64_t, int32_t>, int> made;
    std::map<std::pair<int64_t, int32_t>, std::vector<int>> plans;  // (prompt, sample) -> planned calls per copy

    std::string turn(const std::string& prompt, uint64_t seed, int64_t prompt_id, int32_t g) {
        const std::string think = thinking ? "</think>" : "";
        if (prompt.find(MultiTurnOptions::kDefaultSummaryPrompt) != std::string::npos) {
            return absl::StrCat(thinking ? "Summing up." : "", think, "Found 5 so far.");
        }
        // The conversation after the tools block (whose instructions show the markers too).
        const size_t tools_end = prompt.find("</functions>");
        const std::string body = tools_end == std::string::npos ? prompt : prompt.substr(tools_end);
        std::lock_guard<std::mutex> lock(mu);
        std::string reason = "I add.";
        bool call = false;
        if (plan) {
            const size_t at = body.find("plan ");
            int want = 0;
            if (at == std::string::npos) {
                want = 1 + static_cast<int>(seed % 3);
                plans[{prompt_id, g}].push_back(want);
                reason = absl::StrCat("I add, plan ", want, ".");
            } else {
                want = body[at + 5] - '0';
            }
            call = static_cast<int>(count(body, "<｜DSML｜function_calls>")) < want;
        } else {
            int& n = made[{prompt_id, g}];
            call = n < calls;
            n += call;
        }
        if (call) return absl::StrCat(thinking ? reason : "", think, kCall);
        return absl::StrCat(thinking ? "Got it." : "", think, "The answer is 5.");
    }

    TurnGenerator generator(const dsa::Model& m, const GenerateOptions& gopt) {
        return [this, &m, gopt](const std::vector<GenerationRequest>& reqs, GenerationStats* stats) {
            std::vector<GenerationRequest> forced = reqs;
            for (GenerationRequest& r : forced) {
                const std::string prompt = tok->decode(std::vector<int64_t>(r.prompt.begin(), r.prompt.end()), true);
                std::vector<int64_t> ids = tok->encode(turn(prompt, r.seed, r.prompt_id, r.sample_index));
                ids.push_back(tok->eos_id());
                r.forced.assign(ids.begin(), ids.end());
            }
            return generate(m, *tok, forced, gopt, stats);
        };
    }
};

GenerateOptions gen_options() {
    return {.sampling = {.temperature = 1.0}, .max_new_tokens = 200, .max_batch_size = 16, .record_indexer = true};
}

std::vector<AgentTask> tasks_for(const std::vector<agent::EnvSpec>& specs) {
    std::vector<AgentTask> out;
    for (size_t i = 0; i < specs.size(); ++i) {
        out.push_back({"agent", static_cast<int64_t>(100 + i), Json{{"question", "What is 2 + 3?"}}, &specs[i]});
    }
    return out;
}

std::vector<int64_t> ids_of(const Sample& s) {
    std::vector<int64_t> ids(s.prompt.begin(), s.prompt.end());
    ids.insert(ids.end(), s.response.begin(), s.response.end());
    return ids;
}

class MultiTurnTest : public ::testing::TestWithParam<bool> {};

TEST_P(MultiTurnTest, TokenInTokenOutLossMaskAndTeacherForcedLogprobs) {
    const bool thinking = GetParam();
    const dsa::Model m = make_model();
    const text::ByteChatTokenizer tok(m.config().vocab_size, thinking);
    const agent::EnvRegistry reg = registry();
    const std::vector<agent::EnvSpec> specs = {{.name = "add", .module = "add"}};
    Script script{.tok = &tok, .thinking = thinking, .calls = 2};
    MultiTurnOptions opt{.generate = gen_options()};
    opt.turn_generator = script.generator(m, opt.generate);
    MultiTurnStats stats;
    const auto groups = generate_agent_groups(m, tok, reg, tasks_for(specs), 2, opt, 99, &stats);
    ASSERT_EQ(groups.size(), 1u);
    ASSERT_EQ(groups[0].samples.size(), 2u);
    EXPECT_EQ(stats.trajectories, 2);
    EXPECT_EQ(stats.tool_calls, 4);
    EXPECT_EQ(stats.turns, 6);
    EXPECT_EQ(stats.env_errors, 0);
    for (const Sample& s : groups[0].samples) {
        SCOPED_TRACE(s.sample_index);
        EXPECT_EQ(s.turns, 3);
        EXPECT_EQ(s.tool_calls, 2);
        EXPECT_EQ(s.finish, FinishReason::kEos);
        EXPECT_EQ(s.reward, 1.0f);
        EXPECT_TRUE(s.env_error.empty());
        // Token in, token out: the ids are the rendered conversation exactly (the scripted turns are canonical).
        const OrderedJson conv = OrderedJson::parse(s.trajectory);
        EXPECT_EQ(ids_of(s), text::render_conversation(tok, conv).ids);
        ASSERT_EQ(conv["messages"].size(), 6u);  // user, (call, result) x 2, answer
        if (thinking) {                          // retention: the reasoning of every turn stays across tool results
            EXPECT_EQ(conv["messages"][1]["reasoning_content"], "I add.");
        }
        // The response is turn, environment, turn, environment, turn; the mask marks the turns.
        const std::string results = absl::StrCat("\n\n<function_results>\n<result>5</result>\n</function_results>\n\n",
                                                 thinking ? "<think>" : "</think>");
        std::vector<int64_t> expected;
        std::vector<uint8_t> mask;
        for (int t = 0; t < 3; ++t) {
            std::vector<int64_t> turn =
                tok.encode(t < 2 ? absl::StrCat(thinking ? "I add.</think>" : "", kCall)
                                 : absl::StrCat(thinking ? "Got it.</think>" : "", "The answer is 5."));
            turn.push_back(tok.eos_id());
            expected.insert(expected.end(), turn.begin(), turn.end());
            mask.insert(mask.end(), turn.size(), 1);
            if (t < 2) {
                const std::vector<int64_t> env = tok.encode(results);
                expected.insert(expected.end(), env.begin(), env.end());
                mask.insert(mask.end(), env.size(), 0);
            }
        }
        EXPECT_EQ(std::vector<int64_t>(s.response.begin(), s.response.end()), expected);
        EXPECT_EQ(s.loss_mask, mask);
        ASSERT_EQ(s.logprobs.size(), s.response.size());
        ASSERT_EQ(s.kept.size(), s.response.size());
        for (size_t t = 0; t < mask.size(); ++t) {
            if (mask[t] == 0) {
                EXPECT_EQ(s.logprobs[t], 0.0f);
                EXPECT_EQ(s.kept[t].size(), m.config().vocab_size);
            }
        }
        // Teacher forcing over the whole trajectory in one forward reproduces every turn's recorded log-probs.
        for (const bool indexer : {false, true}) {
            const at::Tensor re = recompute_logprobs(m, s, 1.0, true, true, indexer);
            double worst = 0;
            for (size_t t = 0; t < mask.size(); ++t) {
                if (mask[t])
                    worst = std::max(worst, std::fabs(re[static_cast<int64_t>(t)].item<double>() - s.logprobs[t]));
            }
            EXPECT_LE(worst, 1e-5) << "replay_indexer " << indexer;
        }
        // GRPO packs the environment's tokens as invalid.
        const grpo::PackedBatch b = grpo::pack_samples({&s}, 0);
        for (size_t t = 0; t < mask.size(); ++t) EXPECT_EQ(b.valid[0][static_cast<int64_t>(t)].item<float>(), mask[t]);
    }
    // The record keeps every multi-turn field.
    const auto back = deserialize_groups(serialize_groups(groups));
    const Sample& a = groups[0].samples[1];
    const Sample& r = back[0].samples[1];
    EXPECT_EQ(r.loss_mask, a.loss_mask);
    EXPECT_EQ(r.turns, a.turns);
    EXPECT_EQ(r.tool_calls, a.tool_calls);
    EXPECT_EQ(r.trajectory, a.trajectory);
    EXPECT_EQ(r.response, a.response);
}

INSTANTIATE_TEST_SUITE_P(ThinkingAndChat, MultiTurnTest, ::testing::Bool());

TEST(MultiTurnFailureTest, FailedEnvironmentsAreMarkedExcludedAndTheOthersGoOn) {
    const dsa::Model m = make_model();
    const text::ByteChatTokenizer tok(m.config().vocab_size, true);
    const agent::EnvRegistry reg = registry();
    std::vector<agent::EnvSpec> specs;
    for (const char* fail : {"", "reset", "step", "hang", "short", "verify"}) {
        specs.push_back(
            {.name = absl::StrCat("env-", fail), .module = "add", .params = {{"fail", fail}}, .timeout_s = 0.5});
    }
    Script script{.tok = &tok, .calls = 1};
    MultiTurnOptions opt{.generate = gen_options()};
    opt.turn_generator = script.generator(m, opt.generate);
    MultiTurnStats stats;
    const auto groups = generate_agent_groups(m, tok, reg, tasks_for(specs), 1, opt, 5, &stats);
    ASSERT_EQ(groups.size(), specs.size());
    EXPECT_EQ(groups[0].samples[0].reward, 1.0f);
    EXPECT_TRUE(groups[0].samples[0].env_error.empty());
    for (size_t i = 1; i < specs.size(); ++i) {
        const Sample& s = groups[i].samples[0];
        SCOPED_TRACE(specs[i].name);
        EXPECT_TRUE(std::isnan(s.reward));
        EXPECT_NE(s.env_error.find(specs[i].name), std::string::npos) << s.env_error;
    }
    EXPECT_EQ(stats.env_errors, 5);
    EXPECT_NE(groups[3].samples[0].env_error.find("time"), std::string::npos) << groups[3].samples[0].env_error;
    // The failure before the first turn is a one-token placeholder; everything packs and replays together.
    EXPECT_EQ(groups[1].samples[0].prompt, std::vector<int32_t>{static_cast<int32_t>(tok.bos_id())});
    EXPECT_TRUE(groups[1].samples[0].response.empty());
    std::vector<const Sample*> all;
    for (const auto& g : groups) all.push_back(&g.samples[0]);
    const grpo::PackedBatch b = grpo::pack_samples(all, 0);
    const grpo::LogprobResult lp =
        grpo::sequence_logprobs(m, b, {.replay_routes = true, .apply_kept = true, .replay_indexer = true});
    EXPECT_TRUE(lp.logp.isfinite().all().item<bool>());
}

TEST(MultiTurnLimitTest, ToolCallLimitEndsTheTrajectory) {
    const dsa::Model m = make_model();
    const text::ByteChatTokenizer tok(m.config().vocab_size, true);
    const agent::EnvRegistry reg = registry();
    const std::vector<agent::EnvSpec> specs = {{.name = "add", .module = "add"}};
    Script script{.tok = &tok, .calls = 100};
    MultiTurnOptions opt{.generate = gen_options(), .max_tool_calls = 2};
    opt.turn_generator = script.generator(m, opt.generate);
    MultiTurnStats stats;
    const Sample s = generate_agent_groups(m, tok, reg, tasks_for(specs), 1, opt, 5, &stats)[0].samples[0];
    EXPECT_EQ(s.finish, FinishReason::kToolLimit);
    EXPECT_EQ(s.tool_calls, 2);
    EXPECT_EQ(s.turns, 3);
    EXPECT_EQ(stats.tool_limit, 1);
    EXPECT_EQ(s.reward, 0.0f);  // verified: no answer
}

struct ContextRun {
    std::vector<SampleGroup> groups;
    MultiTurnStats stats;
};

ContextRun run_context(
    const dsa::Model& m, const text::Tokenizer& tok, ContextStrategy strategy, Script& script, int64_t group_size = 1) {
    const agent::EnvRegistry reg = registry();
    static const std::vector<agent::EnvSpec> specs = {{.name = "add", .module = "add"}};
    MultiTurnOptions opt{.generate = gen_options(),
                         .max_tool_calls = 40,
                         .context = strategy,
                         .context_threshold = 0.6,
                         .context_window = 1000,
                         .parallel_trajectories = 3};
    opt.turn_generator = script.generator(m, opt.generate);
    ContextRun r;
    r.groups = generate_agent_groups(m, tok, reg, tasks_for(specs), group_size, opt, 11, &r.stats);
    return r;
}

TEST(MultiTurnContextTest, EveryStrategyOnScriptedTrajectories) {
    const dsa::Model m = make_model();
    const text::ByteChatTokenizer tok(m.config().vocab_size, true);
    const auto decode = [&](const std::vector<int32_t>& ids) {
        return tok.decode(std::vector<int64_t>(ids.begin(), ids.end()), true);
    };
    const std::vector<int64_t> first =
        text::render_conversation(
            tok, OrderedJson::parse(AddEnv(Json::object()).reset({{"question", "What is 2 + 3?"}}).dump()))
            .ids;
    {  // none: the window fills up
        Script script{.tok = &tok, .calls = 30};
        const ContextRun r = run_context(m, tok, ContextStrategy::kNone, script);
        const Sample& s = r.groups[0].samples[0];
        EXPECT_EQ(s.finish, FinishReason::kContext);
        EXPECT_EQ(s.context_events, 0);
        EXPECT_LT(s.tool_calls, 30);
        EXPECT_EQ(r.stats.context_limit, 1);
    }
    {  // discard_all: every tool round goes, the context restarts from the task's messages
        Script script{.tok = &tok, .calls = 10};
        const ContextRun r = run_context(m, tok, ContextStrategy::kDiscardAll, script);
        const Sample& s = r.groups[0].samples[0];
        EXPECT_GE(s.context_events, 1);
        EXPECT_EQ(std::vector<int64_t>(s.prompt.begin(), s.prompt.end()), first);
        EXPECT_GT(r.stats.untrained_tokens, 0);
        EXPECT_EQ(s.finish, FinishReason::kEos);
        EXPECT_EQ(s.reward, 1.0f);
        EXPECT_EQ(s.loss_mask.front(), 1);  // the response starts with the model's turn after the reset
    }
    {  // discard_75: the newest quarter of the rounds stays in the new context
        Script script{.tok = &tok, .calls = 10};
        const ContextRun r = run_context(m, tok, ContextStrategy::kDiscard75, script);
        const Sample& s = r.groups[0].samples[0];
        EXPECT_GE(s.context_events, 1);
        const std::string prompt = decode(s.prompt);
        EXPECT_EQ(prompt.rfind(decode(std::vector<int32_t>(first.begin(), first.end())), 0), 0u);
        EXPECT_GE(count(prompt, "<result>"), 1u);  // a kept round
        EXPECT_LT(count(prompt, "<result>"), static_cast<size_t>(s.tool_calls));
        EXPECT_EQ(s.finish, FinishReason::kEos);
    }
    {  // summary: the model summarizes, the context restarts with the summary
        Script script{.tok = &tok, .calls = 10};
        const ContextRun r = run_context(m, tok, ContextStrategy::kSummary, script);
        const Sample& s = r.groups[0].samples[0];
        EXPECT_GE(s.context_events, 1);
        const std::string prompt = decode(s.prompt);
        EXPECT_NE(prompt.find("Summary of the work so far:\nFound 5 so far."), std::string::npos) << prompt;
        EXPECT_EQ(count(prompt, "<result>"), 0u);
        EXPECT_EQ(s.finish, FinishReason::kEos);
        EXPECT_EQ(s.reward, 1.0f);
    }
    {  // parallel_fewest_step: of 3 trajectories per sample the one with the fewest calls is kept
        Script script{.tok = &tok, .plan = true};
        const ContextRun r = run_context(m, tok, ContextStrategy::kParallelFewestStep, script, 2);
        EXPECT_EQ(r.stats.parallel_discarded, 4);
        for (const Sample& s : r.groups[0].samples) {
            const std::vector<int>& plans = script.plans.at({s.prompt_id, s.sample_index});
            ASSERT_EQ(plans.size(), 3u);
            EXPECT_EQ(s.tool_calls, *std::min_element(plans.begin(), plans.end()));
            EXPECT_EQ(s.context_events, 0);
        }
    }
}

// Model text is any bytes: invalid UTF-8 in a tool call's arguments and in the answer reaches the environment and the
// record replaced by U+FFFD, never as an exception.
TEST(MultiTurnFailureTest, InvalidUtf8FromTheModelIsReplacedNotFatal) {
    const dsa::Model m = make_model();
    const text::ByteChatTokenizer tok(m.config().vocab_size, false);
    const agent::EnvRegistry reg = registry();
    const std::vector<agent::EnvSpec> specs = {{.name = "add", .module = "add"}};
    int turn = 0;
    MultiTurnOptions opt{.generate = gen_options()};
    opt.turn_generator = [&](const std::vector<GenerationRequest>& reqs, GenerationStats* stats) {
        std::vector<GenerationRequest> forced = reqs;
        const std::string text =
            turn++ == 0 ? "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"add\">\n<｜DSML｜parameter name=\"a\" "
                          "string=\"true\">\xfd\xfe</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>"
                        : "The answer is 5 \xff.";
        std::vector<int64_t> ids = tok.encode(text);
        ids.push_back(tok.eos_id());
        forced[0].forced.assign(ids.begin(), ids.end());
        return generate(m, tok, forced, opt.generate, stats);
    };
    const Sample s = generate_agent_groups(m, tok, reg, tasks_for(specs), 1, opt, 3)[0].samples[0];
    EXPECT_TRUE(s.env_error.empty()) << s.env_error;
    EXPECT_EQ(s.tool_calls, 1);
    EXPECT_EQ(s.reward, 1.0f);
    EXPECT_NE(s.trajectory.find("\xef\xbf\xbd"), std::string::npos);  // U+FFFD
}

TEST(MultiTurnConfigTest, NeedsAChatFormatAndNamesBadStrategies) {
    const dsa::Model m = make_model();
    const text::ByteTokenizer plain(m.config().vocab_size);
    const agent::EnvRegistry reg = registry();
    EXPECT_THROW(generate_agent_groups(m, plain, reg, {}, 1, {}, 0), ConfigError);
    try {
        parse_context_strategy("discard_half");
        FAIL();
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("rollout.context"), std::string::npos);
    }
}

}  // namespace
}  // namespace dsrl::rollout
