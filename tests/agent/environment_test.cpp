// Agent environments (issue 20, item 1): the three transports — in-process C++, a C-ABI plugin, a subprocess
// speaking JSON lines — through GuardedEnvironment. The protocol works end to end in each; every fault (a throw, a
// crash, a hang, malformed JSON, a wrong shape, the environment's own error) is an EnvironmentError naming the
// environment and the operation; a hung subprocess is killed; a timed-out in-process environment is not called again.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "agent/environment.h"
#include "agent/plugin.h"
#include "agent/subprocess.h"
#include "core/error.h"

namespace dsrl::agent {
namespace {

using ::testing::HasSubstr;

const Json kCall = Json::array({{{"id", "c1"}, {"name", "calc"}, {"arguments", "{\"expr\": \"2+3\"}"}}});
const Json kTask = {{"question", "What is 2+3?"}};
const Json kTrajectory = {{"messages", Json::array({{{"role", "user"}, {"content", "2+3?"}},
                                                    {{"role", "assistant"}, {"content", "It is 5."}}})}};

std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const EnvironmentError& e) {
        return e.what();
    }
    return "<no EnvironmentError>";
}

// An in-process calculator; `mode` picks a fault for step.
class Calc : public Environment {
public:
    explicit Calc(std::string mode) : mode_(std::move(mode)) {}
    Json reset(const Json& task) override {
        return {{"messages", Json::array({{{"role", "user"}, {"content", task.at("question")}}})}};
    }
    Json step(const Json& calls) override {
        if (mode_ == "throw") throw std::runtime_error("division by zero");
        if (mode_ == "hang") std::this_thread::sleep_for(std::chrono::seconds(3));
        if (mode_ == "short") return {{"results", Json::array()}};
        Json results = Json::array();
        for (const Json& c : calls) results.push_back({{"tool_call_id", c.at("id")}, {"content", "5"}});
        return {{"results", results}};
    }
    Json verify(const Json&) override {
        if (mode_ == "nan") return {{"reward", "high"}};
        return {{"reward", 1.0}};
    }

private:
    std::string mode_;
};

EnvRegistry registry() {
    EnvRegistry reg;
    reg.add("calc", "an in-process calculator",
            [](const Json& p) { return std::make_unique<Calc>(p.value("mode", std::string("none"))); });
    return reg;
}

void expect_calculator_round_trip(GuardedEnvironment& env) {
    const Json first = env.reset(kTask);
    ASSERT_EQ(first.at("messages").size(), 1u);
    EXPECT_EQ(first.at("messages")[0].at("content"), "What is 2+3?");
    EXPECT_TRUE(first.at("tools").is_array());
    const Json answer = env.step(kCall);
    ASSERT_EQ(answer.at("results").size(), 1u);
    EXPECT_EQ(answer.at("results")[0].at("content"), "5");
    EXPECT_EQ(answer.at("results")[0].at("tool_call_id"), "c1");
    EXPECT_TRUE(answer.at("done").is_boolean());
    EXPECT_EQ(env.verify(kTrajectory).at("reward"), 1.0);
}

TEST(EnvironmentTest, InProcessRoundTripAndShapeErrors) {
    const EnvRegistry reg = registry();
    GuardedEnvironment env(make_environment({.name = "calc", .module = "calc"}, reg), "calc", 5.0);
    expect_calculator_round_trip(env);
    GuardedEnvironment thrower(reg.create("calc", {{"mode", "throw"}}), "calc", 5.0);
    thrower.reset(kTask);
    EXPECT_THAT(error_of([&] { thrower.step(kCall); }), HasSubstr("environment 'calc' step: threw: division by zero"));
    GuardedEnvironment shorter(reg.create("calc", {{"mode", "short"}}), "calc", 5.0);
    EXPECT_THAT(error_of([&] { shorter.step(kCall); }), HasSubstr("step: 0 results for 1 tool calls"));
    GuardedEnvironment nan(reg.create("calc", {{"mode", "nan"}}), "calc", 5.0);
    EXPECT_THAT(error_of([&] { nan.verify(kTrajectory); }), HasSubstr("verify: expected a finite number \"reward\""));
    EXPECT_THROW(reg.create("nope", {}), ConfigError);
    EXPECT_THROW(make_environment({.name = "x"}, reg), ConfigError) << "neither module nor command";
}

TEST(EnvironmentTest, AHungInProcessCallTimesOutAndTheEnvironmentIsRetired) {
    const EnvRegistry reg = registry();
    GuardedEnvironment env(reg.create("calc", {{"mode", "hang"}}), "calc", 0.2);
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_THAT(error_of([&] { env.step(kCall); }), HasSubstr("environment 'calc' step: timed out after 0.2 s"));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
    EXPECT_THAT(error_of([&] { env.reset(kTask); }), HasSubstr("an earlier call timed out"));
}

EnvSpec subprocess_spec(const std::string& fault, double timeout_s = 10.0) {
    return {.name = "py_calc",
            .command = {"python3", std::string(DSRL_TEST_AGENT_DIR) + "/calc_env.py"},
            .params = {{"fault", fault}},
            .timeout_s = timeout_s};
}

TEST(EnvironmentTest, SubprocessRoundTrip) {
    GuardedEnvironment env(make_environment(subprocess_spec("none"), EnvRegistry()), "py_calc", 10.0);
    expect_calculator_round_trip(env);
}

TEST(EnvironmentTest, SubprocessFaultsAreErrorsNamingTheEnvironment) {
    const EnvRegistry reg;
    auto run_step = [&](const std::string& fault, double timeout_s = 10.0) {
        GuardedEnvironment env(make_environment(subprocess_spec(fault, timeout_s), reg), "py_calc", timeout_s + 5);
        env.reset(kTask);
        return error_of([&] { env.step(kCall); });
    };
    const std::string crash = run_step("crash");
    EXPECT_THAT(crash, HasSubstr("environment 'py_calc' step: the subprocess"));
    EXPECT_THAT(crash, HasSubstr("exited with status 3"));
    EXPECT_THAT(crash, HasSubstr("about to crash")) << "the stderr tail is quoted";
    EXPECT_THAT(run_step("garbage"), HasSubstr("answered malformed JSON"));
    EXPECT_THAT(run_step("error"), HasSubstr("step reported an error: the tool is broken"));
    EXPECT_THAT(run_step("exit_quietly"), HasSubstr("closed its stdout without an answer: it exited with status 0"));
    const auto t0 = std::chrono::steady_clock::now();
    // The limit covers the reset too (a Python start, over 0.3 s on a loaded 2-core machine): 2.5 s, not less.
    EXPECT_THAT(run_step("hang", 2.5), HasSubstr("gave no answer within 2.5 s and was killed"));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
    EXPECT_THAT(error_of([&] { make_environment({.name = "gone", .command = {"/no/such/program"}}, reg); }),
                HasSubstr("cannot run '/no/such/program'"));
}

TEST(EnvironmentTest, AKilledSubprocessLeavesNoProcess) {
    auto env = std::make_unique<SubprocessEnvironment>(subprocess_spec("hang").command, Json{{"fault", "hang"}},
                                                       "py_calc", 2.5);  // the reset's Python start fits
    const pid_t pid = env->pid();
    env->reset(kTask);
    EXPECT_THROW(env->step(kCall), EnvironmentError);
    EXPECT_NE(::kill(pid, 0), 0) << "the hung process was killed and reaped";
    env.reset();
}

TEST(EnvironmentTest, CAbiPluginRoundTripAndErrors) {
    EnvRegistry reg;
    const std::string name = load_env_plugin(DSRL_TEST_ENV_PLUGIN, reg);
    EXPECT_EQ(name, "c_calculator");
    GuardedEnvironment env(make_environment({.name = "c", .module = "c_calculator"}, reg), "c", 5.0);
    expect_calculator_round_trip(env);
    GuardedEnvironment garbage(reg.create("c_calculator", {{"mode", "garbage"}}), "c", 5.0);
    EXPECT_THAT(error_of([&] { garbage.step(kCall); }), HasSubstr("step answered malformed JSON"));
    GuardedEnvironment failing(reg.create("c_calculator", {{"mode", "fail"}}), "c", 5.0);
    EXPECT_THAT(error_of([&] { failing.step(kCall); }), HasSubstr("step failed: the C calculator failed"));
    EXPECT_THAT(error_of([&] {
                    reg.create("c_calculator", {{"mode", "refuse"}});
                }),
                HasSubstr("could not create an instance: refused by its params"));
    EXPECT_THROW(load_env_plugin(DSRL_TEST_ENV_PLUGIN, reg), PluginError) << "registered twice";
    EXPECT_THROW(load_env_plugin("/no/such/plugin.so", reg), PluginError);
}

}  // namespace
}  // namespace dsrl::agent
