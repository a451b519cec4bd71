// The generative reward model (rewards/judge.h) with scripted backends: rubric handling, score parsing, range
// checks, template and config errors. rewards/ links no model; the model backend is tested in
// tests/trainer/judge_backend_test.cpp.
#include "rewards/judge.h"

#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/error.h"

namespace dsrl::rewards {
namespace {

// Answers every prompt with `reply`, recording what it was asked.
class ScriptedBackend final : public JudgeBackend {
public:
    explicit ScriptedBackend(std::string reply) : reply_(std::move(reply)) {}
    std::vector<std::string> generate(const std::vector<std::string>& prompts,
                                      int64_t max_new_tokens,
                                      int64_t max_batch_size) override {
        asked.insert(asked.end(), prompts.begin(), prompts.end());
        last_max_new_tokens = max_new_tokens;
        last_max_batch_size = max_batch_size;
        return std::vector<std::string>(prompts.size(), reply_);
    }
    std::vector<std::string> asked;
    int64_t last_max_new_tokens = 0, last_max_batch_size = 0;

private:
    std::string reply_;
};

std::vector<RewardInput> batch() {
    return {{.domain = "alignment", .prompt = "Say hi.", .response = "hi", .meta = {{"rubric", "Greets politely."}}},
            {.domain = "alignment", .prompt = "Say bye.", .response = "bye", .meta = {{"rubric", "Says goodbye."}}},
            {.domain = "alignment", .prompt = "No rubric here.", .response = "ok"}};
}

// A registry whose judge backends answer `reply`; `opened` records the params the factory was called with.
Registry registry_replying(const std::string& reply,
                           std::vector<std::string>* opened,
                           std::shared_ptr<ScriptedBackend>* last = nullptr) {
    Registry reg;
    register_judge(reg, [=](const std::string& model, const std::string& device) {
        opened->push_back(model + "@" + device);
        auto b = std::make_shared<ScriptedBackend>(reply);
        if (last != nullptr) *last = b;
        return b;
    });
    return reg;
}

TEST(JudgeTest, ScoresFromTheBackendsOutputAndFailsWithoutRubricOrScore) {
    std::vector<std::string> opened;
    std::shared_ptr<ScriptedBackend> backend;
    Registry reg = registry_replying(" Score: 7\n", &opened, &backend);
    const auto judge = reg.create(
        "judge",
        Params("judge", {{"model", "/ckpt/j"}, {"max_new_tokens", "4"}, {"max_batch_size", "2"}, {"device", "cpu"}}));
    EXPECT_EQ(opened, std::vector<std::string>{"/ckpt/j@cpu"});
    const auto r = judge->score(batch());
    ASSERT_EQ(r.size(), 3u);
    for (int i = 0; i < 2; ++i) {
        ASSERT_TRUE(r[i].ok()) << r[i].error;
        EXPECT_DOUBLE_EQ(r[i].components.at("score"), 7);
        EXPECT_DOUBLE_EQ(r[i].value, 0.7);
    }
    EXPECT_THAT(r[2].error, ::testing::HasSubstr("no rubric"));
    ASSERT_EQ(backend->asked.size(), 2u);  // the sample without a rubric is never sent
    EXPECT_THAT(backend->asked[0], ::testing::HasSubstr("Greets politely."));
    EXPECT_EQ(backend->last_max_new_tokens, 4);
    EXPECT_EQ(backend->last_max_batch_size, 2);
}

TEST(JudgeTest, MissingOrOutOfRangeScoresAreFailuresNotZeros) {
    std::vector<std::string> opened;
    Registry digits = registry_replying("3", &opened);
    const auto bad = digits.create("judge", Params("judge", {{"model", "m"}}))->score(batch());
    EXPECT_FALSE(bad[0].ok());
    EXPECT_TRUE(std::isnan(bad[0].value));
    EXPECT_THAT(bad[0].error, ::testing::HasSubstr("no score in its output '3'"));
    Registry high = registry_replying("Score: 9", &opened);
    const auto narrow = high.create("judge", Params("judge", {{"model", "m"}, {"max_score", "2"}}))->score(batch());
    EXPECT_THAT(narrow[0].error, ::testing::HasSubstr("outside [0, 2]"));
    const auto lenient =
        digits
            .create("judge",
                    Params("judge", {{"model", "m"}, {"score_pattern", "([0-9])"}, {"require_rubric", "false"}}))
            ->score(batch());
    EXPECT_TRUE(lenient[2].ok()) << lenient[2].error;
    EXPECT_DOUBLE_EQ(lenient[2].value, 0.3);
}

TEST(JudgeTest, TemplateAndConfigErrors) {
    std::vector<std::string> opened;
    Registry reg = registry_replying("Score: 1", &opened);
    EXPECT_THROW(reg.create("judge", Params("judge", {})), ConfigError);  // no model
    EXPECT_THROW(reg.create("judge", Params("judge", {{"model", "m"}, {"score_pattern", "no group"}})), ConfigError);
    EXPECT_THROW(reg.create("judge", Params("judge", {{"model", "m"}, {"template", "no slot"}})), ConfigError);
    EXPECT_THROW(reg.create("judge", Params("judge", {{"model", "m"}, {"device", "tpu"}})), ConfigError);
    const auto j =
        reg.create("judge", Params("judge", {{"model", "m"}, {"template", "P={prompt} R={response} U={rubric}"}}));
    EXPECT_EQ(dynamic_cast<GenerativeJudge&>(*j).render(batch()[0]), "P=Say hi. R=hi U=Greets politely.");
}

}  // namespace
}  // namespace dsrl::rewards
