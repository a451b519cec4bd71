// The calculator environment (issue 20's demo domain) and the environment config: expressions evaluated exactly,
// bad ones answered as tool results; the demonstration (the cold start's SFT row) replays through the environment
// and verifies 1, and renders with the deepseek_v32 format; params from a job's YAML become JSON values.
#include <gtest/gtest.h>

#include "agent/calculator_env.h"
#include "agent/config.h"
#include "agent/search_env.h"
#include "core/error.h"
#include "text/chat_format.h"

namespace dsrl::agent {
namespace {

TEST(CalculatorEnvTest, EvaluatesExpressions) {
    EXPECT_EQ(evaluate_expression("37 * 58"), "2146");
    EXPECT_EQ(evaluate_expression("(12 + 3) * 4 - -2"), "62");
    EXPECT_EQ(evaluate_expression("7 / 2"), "3.5");
    EXPECT_EQ(evaluate_expression("8 / 2"), "4");
    EXPECT_EQ(evaluate_expression("17 % 5"), "2");
    EXPECT_EQ(evaluate_expression("0.1 + 0.2"), "0.3");
    EXPECT_EQ(evaluate_expression("9223372036854775807 + 1"), "9.223372037e+18");  // leaves int64: a decimal
    EXPECT_EQ(evaluate_expression("1 / 0"), "error: division by zero");
    EXPECT_EQ(evaluate_expression("2 +"), "error: the expression ends too early");
    EXPECT_EQ(evaluate_expression("2 $ 3"), "error: unexpected '$' at position 3");
    EXPECT_EQ(evaluate_expression("(1"), "error: missing ')'");
    EXPECT_EQ(evaluate_expression(std::string(200, '(') + "1" + std::string(200, ')')),
              "error: parentheses nested too deeply");
}

TEST(CalculatorEnvTest, DemonstrationReplaysVerifiesAndRenders) {
    EnvRegistry reg;
    register_builtin_environments(reg);
    const Json task = {{"question", "What is 37 * 58? Put the final answer in \\boxed{}."},
                       {"answer", "2146"},
                       {"expression", "37 * 58"}};
    GuardedEnvironment env(reg.create("calculator", Json::object()), "calc", 5.0);
    const Json first = env.reset(task);
    const Json demo = reg.create("calculator", Json::object())->demonstrate(task);
    ASSERT_EQ(demo["messages"].size(), 5u);
    EXPECT_EQ(demo["messages"][0], first["messages"][0]);  // the same system prompt as RL sees
    EXPECT_EQ(demo["tools"], first["tools"]);
    // The demonstration's tool result is what the environment answers to its call.
    const Json& call = demo["messages"][2]["tool_calls"][0];
    const Json answer = env.step(Json::array(
        {{{"id", call["id"]}, {"name", call["function"]["name"]}, {"arguments", call["function"]["arguments"]}}}));
    EXPECT_EQ(answer["results"][0]["content"], demo["messages"][3]["content"]);
    EXPECT_EQ(env.verify({{"messages", demo["messages"]}})["reward"], 1.0);
    // A wrong answer verifies 0; a bad call is the model's mistake, answered as a result.
    Json wrong = demo["messages"];
    wrong.back()["content"] = "\\boxed{2147}";
    EXPECT_EQ(env.verify({{"messages", wrong}})["reward"], 0.0);
    const Json bad = env.step(Json::array({{{"id", "c"}, {"name", "calc"}, {"arguments", Json::object()}}}));
    EXPECT_EQ(bad["results"][0]["content"], "error: unknown tool 'calc' (the tool is calculator)");
    for (const bool thinking : {true, false}) {
        const auto fmt = text::make_chat_format("deepseek_v32");
        const std::string text =
            text::join_segments(fmt->render(text::OrderedJson::parse(demo.dump()), {.thinking = thinking}));
        EXPECT_NE(text.find("<｜DSML｜parameter name=\"expression\" string=\"true\">37 * 58</"), std::string::npos);
        EXPECT_EQ(text.find("I use the calculator.") != std::string::npos, thinking);
    }
    EXPECT_THROW(calculator_solution({{"question", "q"}, {"answer", "1"}}), DataError);
}

// A built-in environment's params are the ones it reads: a typo is an error naming it, not a default in silence.
TEST(EnvironmentConfigTest, UnknownParamsOfABuiltinAreRefused) {
    EnvRegistry reg;
    register_builtin_environments(reg);
    EXPECT_NE(reg.create("calculator", {{"system_prompt", false}}), nullptr);
    try {
        reg.create("calculator", {{"system_promt", false}, {"tool_schema", true}});
        FAIL() << "an unknown param was accepted";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find(
                      "environment 'calculator': unknown param(s) system_promt (known: system_prompt, tool_schema)"),
                  std::string::npos)
            << e.what();
    }
    reg.add("open", "accepts anything (no list given, as a plugin)",
            [&reg](const Json&) { return reg.create("calculator", Json::object()); });
    EXPECT_NE(reg.create("open", {{"anything", 1}}), nullptr);
}

TEST(EnvironmentConfigTest, ParamsBecomeJsonValues) {
    EnvironmentConfig c;
    c.module = "search";
    c.params = {{"corpus", "docs.jsonl"}, {"top_k", "5"}, {"flag", "true"}, {"list", "[1, 2]"}, {"text", "a b"}};
    const EnvSpec s = env_spec("dom", c);
    EXPECT_EQ(s.name, "dom");
    EXPECT_EQ(s.module, "search");
    EXPECT_EQ(s.params["corpus"], "docs.jsonl");
    EXPECT_EQ(s.params["top_k"], 5);
    EXPECT_EQ(s.params["flag"], true);
    EXPECT_EQ(s.params["list"], Json::array({1, 2}));
    EXPECT_EQ(s.params["text"], "a b");
    EnvironmentConfig p;
    p.plugin = "libx.so";
    EXPECT_EQ(env_spec("d", p, "registered").module, "registered");
}

}  // namespace
}  // namespace dsrl::agent
