// The SFT stage's examples (trainer/stages.h sft_example): which tokens carry the loss for conversation rows
// (every assistant turn), prompt/answer rows (the response + EOS), and truncation at sft.max_seq_len.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/prompts.h"
#include "tests/test_util.h"
#include "text/tokenizer.h"
#include "trainer/stages.h"

namespace dsrl::trainer {
namespace {

using ::dsrl::testing::TempDir;

// The text of the tokens carrying the loss, and of those that do not.
struct Split {
    std::string target, context;
};
Split split(const text::Tokenizer& tok, const SftExample& ex) {
    std::vector<int64_t> target, context(ex.sample.prompt.begin(), ex.sample.prompt.end());
    EXPECT_EQ(ex.loss.size(), ex.sample.response.size());
    for (size_t t = 0; t < ex.sample.response.size(); ++t)
        (ex.loss[t] ? target : context).push_back(ex.sample.response[t]);
    return {tok.decode(target, true), tok.decode(context, true)};
}

// One JSONL row (line breaks in `json` become spaces).
data::PromptItem row(const TempDir& dir, std::string json) {
    std::replace(json.begin(), json.end(), '\n', ' ');
    return data::JsonlPromptSource::open(dir.write("rows.jsonl", json + "\n"), "d", data::Rows::kConversations)->get(0);
}

TEST(SftExampleTest, ConversationsLearnEveryAssistantTurn) {
    TempDir dir;
    const text::ByteTokenizer tok(320);
    const data::PromptItem item = row(dir,
                                      R"({"messages": [{"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]})");
    const SftExample ex = sft_example(tok, item, "rows.jsonl", 256, 320);
    EXPECT_FALSE(ex.truncated);
    const Split s = split(tok, ex);
    EXPECT_EQ(s.target, "a1<|end|><eos>a2<|end|><eos>");
    EXPECT_EQ(s.context,
              "<bos><|system|>sys<|end|><eos><|user|>q1<|end|><eos><|assistant|><|user|>q2<|end|><eos><|assistant|>");
    // The prompt ends right before the first target token.
    EXPECT_EQ(tok.decode({ex.sample.prompt.back()}, true), "<|assistant|>");
    EXPECT_EQ(ex.loss.front(), 1);
    EXPECT_EQ(ex.sample.vocab_size, 320);
}

TEST(SftExampleTest, PromptRowsLearnTheResponseAndEos) {
    TempDir dir;
    const text::ByteTokenizer tok(320);
    const Split boxed = split(
        tok, sft_example(tok, row(dir, R"({"prompt": "2+3? Use \\boxed{}.", "answer": "5"})"), "rows.jsonl", 256, 320));
    EXPECT_EQ(boxed.target, "\\boxed{5}<eos>");
    const Split plain =
        split(tok, sft_example(tok, row(dir, R"({"messages": [{"role": "user", "content": "hi"}], "response": "yo"})"),
                               "rows.jsonl", 256, 320));
    EXPECT_EQ(plain.target, "yo<eos>");
    EXPECT_EQ(plain.context, "<bos><|user|>hi<|end|><eos><|assistant|>");
    try {
        sft_example(tok, row(dir, R"({"prompt": "p", "id": 4})"), "rows.jsonl", 256, 320);
        ADD_FAILURE() << "no DataError";
    } catch (const DataError& e) {
        EXPECT_NE(std::string(e.what()).find("sft: rows.jsonl: item 4: has neither 'response' nor 'answer'"),
                  std::string::npos)
            << e.what();
    }
}

TEST(SftExampleTest, LongExamplesKeepTheirFirstTokens) {
    TempDir dir;
    const text::ByteTokenizer tok(320);
    const data::PromptItem item = row(dir, R"({"prompt": "abc", "response": "0123456789"})");
    const SftExample full = sft_example(tok, item, "r", 256, 320);
    const SftExample cut = sft_example(tok, item, "r", 10, 320);
    EXPECT_TRUE(cut.truncated);
    EXPECT_EQ(cut.sample.num_tokens(), 10);
    EXPECT_EQ(cut.sample.prompt, full.sample.prompt);
    EXPECT_EQ(split(tok, cut).target, "01");  // 8 prompt tokens: <bos><|user|>abc<|end|><eos><|assistant|>
    // Cut before the first target: nothing carries the loss.
    const SftExample none = sft_example(tok, item, "r", 3, 320);
    EXPECT_EQ(none.sample.num_tokens(), 3);
    EXPECT_EQ(split(tok, none).target, "");
}

TEST(SftExampleTest, ToolConversationsNeedAChatFormat) {
    TempDir dir;
    const text::ByteTokenizer tok(320);
    const data::PromptItem item = row(dir, R"({"id": 8, "messages": [{"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]})");
    try {
        sft_example(tok, item, "rows.jsonl", 256, 320);
        ADD_FAILURE() << "no DataError";
    } catch (const DataError& e) {
        EXPECT_NE(std::string(e.what()).find("sft: rows.jsonl: item 8: conversation message 1: 'tool_calls'"),
                  std::string::npos)
            << e.what();
    }
}

}  // namespace
}  // namespace dsrl::trainer
