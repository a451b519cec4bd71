// The generative reward model (issue 7) on its model backend (trainer/judge_backend.h), with a tiny judge whose
// greedy output is known: its final norm keeps one hidden dim and lm_head maps that dim's sign to the digits
// '7' (positive) or '3' (negative), so the judge always writes digits. A pattern that reads a digit parses; the
// default "Score: N" pattern does not.
#include <gtest/gtest.h>

#include "core/error.h"
#include "tests/test_util.h"
#include "text/tokenizer.h"
#include "trainer/judge_backend.h"

namespace dsrl::trainer {
using namespace rewards;
namespace {

std::string save_digit_judge(const testing::TempDir& tmp) {
    ModelConfig c;
    c.max_position_embeddings = 512;
    dsa::Model m = dsa::Model::random(c, 3, at::kCPU);
    m.weights().norm.zero_();
    m.weights().norm[0] = 1.0;
    m.weights().lm_head.zero_();
    m.weights().lm_head[text::ByteTokenizer::kByteOffset + '7'][0] = 5.0;
    m.weights().lm_head[text::ByteTokenizer::kByteOffset + '3'][0] = -5.0;
    const std::string dir = tmp.path() + "/judge";
    m.save(dir, {.dtype = at::kFloat});
    return dir;
}

std::vector<RewardInput> batch() {
    return {{.domain = "alignment", .prompt = "Say hi.", .response = "hi", .meta = {{"rubric", "Greets politely."}}},
            {.domain = "alignment", .prompt = "Say bye.", .response = "bye", .meta = {{"rubric", "Says goodbye."}}},
            {.domain = "alignment", .prompt = "No rubric here.", .response = "ok"}};
}

TEST(ModelJudgeTest, ParsesAScoreFromTheJudgesOutputAndFailsWhenThereIsNone) {
    testing::TempDir tmp;
    const std::string dir = save_digit_judge(tmp);
    Registry reg;
    register_model_judge(reg);
    const auto digit =
        reg.create("judge", Params("judge", {{"model", dir}, {"score_pattern", "([0-9])"}, {"max_new_tokens", "4"}}));
    const auto ok = digit->score(batch());
    ASSERT_EQ(ok.size(), 3u);
    for (int i = 0; i < 2; ++i) {
        ASSERT_TRUE(ok[i].ok()) << ok[i].error;
        const double s = ok[i].components.at("score");
        EXPECT_TRUE(s == 7 || s == 3) << s;
        EXPECT_DOUBLE_EQ(ok[i].value, s / 10);
    }
    EXPECT_NE(ok[2].error.find("no rubric"), std::string::npos) << ok[2].error;
    // The default pattern wants "Score: N": digits alone are a parse failure, not a zero.
    const auto strict = reg.create("judge", Params("judge", {{"model", dir}, {"max_new_tokens", "4"}}));
    const auto bad = strict->score(batch());
    EXPECT_FALSE(bad[0].ok());
    EXPECT_TRUE(std::isnan(bad[0].value));
    EXPECT_NE(bad[0].error.find("no score in its output"), std::string::npos) << bad[0].error;
    // Out of range is a failure too.
    const auto narrow = reg.create(
        "judge",
        Params("judge", {{"model", dir}, {"score_pattern", "([0-9])"}, {"max_score", "2"}, {"max_new_tokens", "2"}}));
    EXPECT_NE(narrow->score(batch())[0].error.find("outside [0, 2]"), std::string::npos);
}

TEST(ModelJudgeTest, TemplateAndConfigErrors) {
    testing::TempDir tmp;
    const std::string dir = save_digit_judge(tmp);
    Registry reg;
    register_model_judge(reg);
    EXPECT_THROW(reg.create("judge", Params("judge", {})), ConfigError);  // no model
    EXPECT_THROW(reg.create("judge", Params("judge", {{"model", dir}, {"score_pattern", "no group"}})), ConfigError);
    EXPECT_THROW(reg.create("judge", Params("judge", {{"model", dir}, {"template", "no slot"}})), ConfigError);
    EXPECT_THROW(reg.create("judge", Params("judge", {{"model", tmp.path() + "/missing"}})), CheckpointError);
    const auto j =
        reg.create("judge", Params("judge", {{"model", dir}, {"template", "P={prompt} R={response} U={rubric}"}}));
    const std::string text = dynamic_cast<GenerativeJudge&>(*j).render(batch()[0]);
    EXPECT_EQ(text, "P=Say hi. R=hi U=Greets politely.");
}

}  // namespace
}  // namespace dsrl::trainer
