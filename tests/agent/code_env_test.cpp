// The code-interpreter environment (issue 20 item 5a, agent/code_env.h): the python tool runs the model's code in the
// sandbox and returns its output, limits show in the result, bad calls are answered as tool results, verify checks the
// final answer.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/sandbox.h"
#include "agent/search_env.h"

namespace dsrl::agent {
namespace {

using ::testing::HasSubstr;

Json call(const std::string& id, const std::string& name, const Json& args) {
    return {{"id", id}, {"name", name}, {"arguments", args.dump()}};
}

TEST(CodeEnvTest, RunsCodeInTheSandboxAndVerifiesTheAnswer) {
    std::string why;
    if (!sandbox_available(&why)) GTEST_SKIP() << "no sandbox on this machine: " << why;
    EnvRegistry reg;
    register_builtin_environments(reg);
    GuardedEnvironment env(reg.create("code_interpreter", {{"cpu_s", 2}, {"wall_s", 1.0}}), "code", 30.0);
    const Json first = env.reset({{"question", "What is 2**20?"}, {"answer", "1048576"}});
    EXPECT_EQ(first.at("tools")[0].at("function").at("name"), "python");
    const Json r = env.step(Json::array({call("a", "python", {{"code", "print(2**20)"}}),
                                         call("b", "python", {{"code", "import sys; sys.exit('bad input')"}}),
                                         call("c", "python", {{"code", "import time; time.sleep(5)"}}),
                                         call("d", "python", {{"code", 3}}), call("e", "shell", {{"cmd", "ls"}})}))
                       .at("results");
    EXPECT_EQ(r[0].at("content"), "1048576\n");
    EXPECT_THAT(r[1].at("content").get<std::string>(), HasSubstr("bad input\n(exit status 1)"));
    EXPECT_THAT(r[2].at("content").get<std::string>(), HasSubstr("(killed: time limit)"));
    EXPECT_THAT(r[3].at("content").get<std::string>(), HasSubstr("python needs a string \"code\""));
    EXPECT_THAT(r[4].at("content").get<std::string>(), HasSubstr("unknown tool 'shell'"));
    const Json right = {{"messages", Json::array({{{"role", "assistant"}, {"content", "2**20 = 1048576"}}})}};
    EXPECT_EQ(env.verify(right).at("reward"), 1.0);
    EXPECT_EQ(env.verify({{"messages", Json::array()}}).at("reward"), 0.0);
    EXPECT_THROW(reg.create("code_interpreter", {{"cpu_s", 0}}), ConfigError);
}

TEST(CodeEnvTest, TheAnswerRule) {
    EXPECT_TRUE(contains_answer("The answer is  ROME.", "rome"));
    EXPECT_TRUE(contains_answer("a\n  b c", "A\n B"));
    EXPECT_FALSE(contains_answer("Paris", "Rome"));
    EXPECT_FALSE(contains_answer("anything", "   ")) << "an empty answer is never contained";
    EXPECT_EQ(final_answer({{"messages", Json::array({{{"role", "assistant"}, {"content", "x"}},
                                                      {{"role", "tool"}, {"content", "y"}}})}}),
              "x");
}

}  // namespace
}  // namespace dsrl::agent
