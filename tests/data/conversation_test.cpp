// text/conversation.h: whole conversations to ids + the mask of the model's tokens (SFT's loss mask), for the
// byte-level template and for the deepseek_v32 chat format (on DeepSeek's official fixture).
#include "text/conversation.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "tests/test_util.h"
#include "text/tokenizer.h"

namespace dsrl::text {
namespace {

std::string generated_text(const Tokenizer& tok, const ChatIds& c) {
    std::vector<int64_t> ids;
    for (size_t i = 0; i < c.ids.size(); ++i) {
        if (c.generated[i]) ids.push_back(c.ids[i]);
    }
    return tok.decode(ids, /*keep_special=*/true);
}

TEST(ConversationTest, ByteTemplateMasksTheAssistantTurns) {
    const ByteTokenizer tok(320);
    const OrderedJson conv = OrderedJson::parse(R"({"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]})");
    const ChatIds c = render_conversation(tok, conv);
    EXPECT_EQ(c.ids,
              tok.apply_chat(
                  {{"system", "S"}, {"user", "q1"}, {"assistant", "a1"}, {"user", "q2"}, {"assistant", "a2"}}, false));
    ASSERT_EQ(c.generated.size(), c.ids.size());
    // Each assistant turn after its role token: content, <|end|>, <eos>.
    EXPECT_EQ(generated_text(tok, c), "a1<|end|><eos>a2<|end|><eos>");
    // Ending with a user message: the generation prompt follows; nothing is generated.
    const ChatIds p = render_conversation(tok, OrderedJson::parse(R"([{"role": "user", "content": "q"}])"));
    EXPECT_EQ(p.ids, tok.apply_chat({{"user", "q"}}, true));
    EXPECT_EQ(generated_text(tok, p), "");
}

TEST(ConversationTest, ByteTemplateRefusesWhatItCannotShow) {
    const ByteTokenizer tok(320);
    const auto err = [&](const char* json) -> std::string {
        try {
            render_conversation(tok, OrderedJson::parse(json));
        } catch (const DataError& e) {
            return e.what();
        }
        ADD_FAILURE() << "no DataError for " << json;
        return "";
    };
    EXPECT_NE(err(R"({"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function"}]})")
                  .find("'tools' needs a chat format (model.chat_format"),
              std::string::npos);
    EXPECT_NE(err(R"([{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [{}]}])")
                  .find("conversation message 1: 'tool_calls'"),
              std::string::npos);
    EXPECT_NE(err(R"([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                      "reasoning_content": "r"}])")
                  .find("conversation message 1: 'reasoning_content'"),
              std::string::npos);
    EXPECT_NE(err(R"([{"role": "user", "content": 3}])").find("message 0: 'content' must be a string"),
              std::string::npos);
    EXPECT_NE(err(R"({"turns": []})").find("expected {\"messages\": [...]}"), std::string::npos);
}

// A tokenizer that encodes text byte by byte (so ids map back to exact text) and renders with a chat format.
class BytesWithFormat final : public Tokenizer {
public:
    explicit BytesWithFormat(const std::string& format) : base_(320), format_(make_chat_format(format)) {}
    int64_t vocab_size() const override { return base_.vocab_size(); }
    int64_t bos_id() const override { return base_.bos_id(); }
    int64_t eos_id() const override { return base_.eos_id(); }
    int64_t pad_id() const override { return base_.pad_id(); }
    std::vector<int64_t> encode(const std::string& t) const override { return base_.encode(t); }
    std::string decode(const std::vector<int64_t>& ids, bool keep) const override { return base_.decode(ids, keep); }
    std::string token_string(int64_t id) const override { return base_.token_string(id); }
    bool is_special(int64_t id) const override { return base_.is_special(id); }
    std::vector<int64_t> apply_chat(const std::vector<ChatMessage>& m, bool g) const override {
        return base_.apply_chat(m, g);
    }
    const ChatFormat* chat_format(ChatOptions* options) const override {
        if (options != nullptr) *options = {.thinking = true};
        return format_.get();
    }

private:
    ByteTokenizer base_;
    std::unique_ptr<ChatFormat> format_;
};

// DeepSeek's official multi-turn tool-use fixture: the ids are exactly the reference rendering, and the generated
// tokens are exactly the assistant turns (reasoning shown after the last user message, </think>, content, DSML tool
// calls, end-of-sentence) — never the system prompt, user turns or tool results.
TEST(ConversationTest, DeepSeekV32MasksTheAssistantTurnsOfTheOfficialFixture) {
    const std::string dir = testing::source_dir() + "/tests/text/dsv32";
    const OrderedJson input = OrderedJson::parse(fs::read_file(dir + "/test_input.json"));
    std::string want = fs::read_file(dir + "/test_output.txt");
    want.pop_back();  // the official test strips the final newline
    const BytesWithFormat tok("deepseek_v32");
    const ChatIds c = render_conversation(tok, input);
    EXPECT_EQ(tok.decode(c.ids, true), want);

    std::string expected;
    for (const ChatSegment& s : make_chat_format("deepseek_v32")->render(input, {.thinking = true})) {
        if (s.generated) expected += s.text;
    }
    const std::string got = generated_text(tok, c);
    EXPECT_EQ(got, expected);
    EXPECT_NE(got.find("<｜DSML｜function_calls>"), std::string::npos);
    EXPECT_NE(got.find("<｜end▁of▁sentence｜>"), std::string::npos);
    for (const OrderedJson& m : input["messages"]) {
        const std::string role = m["role"];
        const std::string content = m.value("content", "");
        if (role == "assistant" || content.size() < 8) continue;
        EXPECT_EQ(got.find(content), std::string::npos) << role << " text in the loss mask: " << content;
    }
}

}  // namespace
}  // namespace dsrl::text
