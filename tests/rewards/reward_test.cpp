// The reward interface (issue 7): params, registry, weighted per-domain composition, and isolation of
// modules that throw, return NaN or the wrong count, or exceed the time limit.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "core/error.h"
#include "rewards/reward.h"

namespace dsrl::rewards {
namespace {

// A module whose behaviour comes from its params (for the isolation tests).
class Scripted final : public RewardModule {
public:
    explicit Scripted(const Params& p)
        : mode_(p.str("mode", "ok")), value_(p.num("value", 1.0)), sleep_s_(p.num("sleep_s", 0)) {}
    std::vector<RewardResult> score(const std::vector<RewardInput>& batch) override {
        if (sleep_s_ > 0) std::this_thread::sleep_for(std::chrono::duration<double>(sleep_s_));
        if (mode_ == "throw") throw std::runtime_error("scripted failure");
        std::vector<RewardResult> out;
        for (const RewardInput& in : batch) {
            if (mode_ == "nan") {
                out.push_back(RewardResult::of(in.response == "bad" ? std::nan("") : value_));
            } else if (mode_ == "error_on_bad") {
                out.push_back(in.response == "bad" ? RewardResult::failure("cannot parse") : RewardResult::of(value_));
            } else {
                out.push_back(RewardResult::of(value_ + static_cast<double>(in.response.size())));
            }
        }
        if (mode_ == "short" && !out.empty()) out.pop_back();
        return out;
    }

private:
    std::string mode_;
    double value_;
    double sleep_s_;
};

Registry make_registry() {
    Registry reg;
    reg.add("scripted", "test module", [](const Params& p) { return std::make_unique<Scripted>(p); });
    reg.add("scripted2", "test module", [](const Params& p) { return std::make_unique<Scripted>(p); });
    return reg;
}

std::vector<RewardInput> inputs(const std::vector<std::string>& responses) {
    std::vector<RewardInput> out;
    for (const std::string& r : responses) out.push_back({.domain = "d", .response = r});
    return out;
}

TEST(RewardRegistryTest, CreatesByNameAndRejectsUnknownNamesAndParams) {
    const Registry reg = make_registry();
    EXPECT_TRUE(reg.contains("scripted"));
    try {
        reg.create("scriptd", Params("scriptd", {}));
        FAIL();
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("did you mean 'scripted'"), std::string::npos) << e.what();
    }
    try {
        reg.create("scripted", Params("scripted", {{"valeu", "2"}}));
        FAIL();
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("valeu"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("known: "), std::string::npos) << e.what();
    }
    EXPECT_THROW(reg.create("scripted", Params("scripted", {{"value", "x"}})), ConfigError);
    Registry r2 = make_registry();
    EXPECT_THROW(r2.add("scripted", "again", {}), ConfigError);
    // The global registry holds the built-ins and the judge.
    EXPECT_TRUE(Registry::global().contains("math_answer"));
    EXPECT_FALSE(Registry::global().contains("judge"));  // needs a model: the trainer registers it
}

TEST(DomainRewardTest, WeightedSumWithComponents) {
    const Registry reg = make_registry();
    DomainReward d = DomainReward::create(reg,
                                          {{.module = "scripted", .weight = 1.0, .params = {{"value", "1"}}},
                                           {.module = "scripted2", .weight = 0.5, .params = {{"value", "10"}}}},
                                          0);
    const auto s = d.score(inputs({"ab", ""}));
    ASSERT_EQ(s.size(), 2u);
    EXPECT_DOUBLE_EQ(s[0].value, 1.0 * 3 + 0.5 * 12);
    EXPECT_DOUBLE_EQ(s[1].value, 1.0 * 1 + 0.5 * 10);
    EXPECT_DOUBLE_EQ(s[0].components.at("scripted2"), 12);
    EXPECT_THROW(DomainReward::create(reg, {}, 0), ConfigError);
}

TEST(DomainRewardTest, ThrowingNanShortAndErroringModulesFailOnlyWhatTheyMust) {
    const Registry reg = make_registry();
    const auto run = [&](const std::string& mode) {
        DomainReward d =
            DomainReward::create(reg, {{.module = "scripted", .params = {{"mode", mode}}}, {.module = "scripted2"}}, 0);
        return d.score(inputs({"good", "bad"}));
    };
    auto s = run("throw");
    EXPECT_FALSE(s[0].ok());
    EXPECT_FALSE(s[1].ok());
    EXPECT_NE(s[0].error.find("scripted: threw: scripted failure"), std::string::npos) << s[0].error;
    s = run("nan");
    EXPECT_TRUE(s[0].ok());
    EXPECT_FALSE(s[1].ok());
    EXPECT_TRUE(std::isnan(s[1].value));
    EXPECT_NE(s[1].error.find("non-finite"), std::string::npos) << s[1].error;
    s = run("error_on_bad");
    EXPECT_TRUE(s[0].ok());
    EXPECT_NE(s[1].error.find("cannot parse"), std::string::npos) << s[1].error;
    s = run("short");
    EXPECT_FALSE(s[0].ok());
    EXPECT_NE(s[0].error.find("returned 1 results for 2 samples"), std::string::npos) << s[0].error;
}

TEST(DomainRewardTest, AModuleOverItsTimeLimitFailsItsSamplesAndTheJobGoesOn) {
    const Registry reg = make_registry();
    DomainReward d = DomainReward::create(reg, {{.module = "scripted", .params = {{"sleep_s", "1.5"}}}}, 0.2);
    const auto t0 = std::chrono::steady_clock::now();
    auto s = d.score(inputs({"a", "b"}));
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(took, 1.0) << "the caller must not wait for the slow module";
    EXPECT_FALSE(s[0].ok());
    EXPECT_NE(s[0].error.find("timed out after 0.2 s"), std::string::npos) << s[0].error;
    // While the timed-out call still runs, the module is not re-entered.
    s = d.score(inputs({"c"}));
    EXPECT_NE(s[0].error.find("still running"), std::string::npos) << s[0].error;
    std::this_thread::sleep_for(std::chrono::milliseconds(1600));
    // A fast module with a limit works normally.
    DomainReward fast = DomainReward::create(reg, {{.module = "scripted"}}, 5.0);
    EXPECT_TRUE(fast.score(inputs({"x"}))[0].ok());
}

}  // namespace
}  // namespace dsrl::rewards
