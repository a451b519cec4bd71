// tokenizer.json parity with Python `tokenizers` (the oracle, tests/text/tokenizer_oracle.py): the real
// DeepSeek-V3 tokenizer and four tokenizers trained with other normalizers, pre-tokenizer families and
// post-processors, on a corpus of many scripts, control characters, emoji sequences, added-token strings inside
// text and 50K-character runs; ids without and with the post-processor's special tokens.
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "tests/oracle_util.h"
#include "tests/test_util.h"
#include "text/chat_format.h"
#include "text/hf_tokenizer.h"

namespace dsrl::text {
namespace {

using Json = nlohmann::json;

std::string excerpt(const std::string& s) {
    const std::string head = s.size() > 60 ? s.substr(0, 60) + "..." : s;
    return Json(utf8_lossy(head)).dump() + " (" + std::to_string(s.size()) + " bytes)";
}

TEST(HfTokenizerParityTest, SameIdsAndTextsAsPythonTokenizers) {
    const Json index = testing::load_oracle("tokenizer");
    ASSERT_FALSE(index.is_null());
    ASSERT_GE(index.size(), 5u);
    for (const auto& name_json : index) {
        const std::string name = name_json.get<std::string>();
        SCOPED_TRACE(name);
        const std::string dir = testing::oracle_path("tokenizers/" + name);
        const Json cases = Json::parse(fs::read_file(dir + ".json"));
        const std::unique_ptr<HfTokenizer> tok = HfTokenizer::load(dir);
        EXPECT_EQ(tok->vocab_size(), cases["vocab_size"].get<int64_t>());
        const auto& texts = cases["texts"];
        int mismatches = 0;
        // Without special tokens (the Tokenizer interface) and with them (the post-processor's, as Python's
        // encode(text, add_special_tokens=True)).
        for (const bool special : {false, true}) {
            const auto& all_want = cases[special ? "ids_special" : "ids"];
            ASSERT_EQ(all_want.size(), texts.size());
            for (size_t i = 0; i < texts.size(); ++i) {
                const std::string text = texts[i].get<std::string>();
                const std::vector<int64_t> want = all_want[i].get<std::vector<int64_t>>();
                const std::vector<int64_t> got = special ? tok->encode(text, true) : tok->encode(text);
                if (got != want && ++mismatches <= 5) {
                    size_t k = 0;
                    while (k < got.size() && k < want.size() && got[k] == want[k]) ++k;
                    ADD_FAILURE() << "text " << i << " " << excerpt(text) << (special ? " with" : " without")
                                  << " special tokens: first difference at token " << k << ": got "
                                  << (k < got.size() ? tok->token_string(got[k]) : "<end>") << " ("
                                  << (k < got.size() ? got[k] : -1) << "), want "
                                  << (k < want.size() ? tok->token_string(want[k]) : "<end>") << " ("
                                  << (k < want.size() ? want[k] : -1) << ")";
                }
            }
        }
        EXPECT_EQ(mismatches, 0) << "texts encoded differently from tokenizers";
        const auto& decode_ids = cases["decode_ids"];
        int decode_mismatches = 0;
        for (size_t i = 0; i < decode_ids.size(); ++i) {
            const std::vector<int64_t> ids = decode_ids[i].get<std::vector<int64_t>>();
            const std::string kept = tok->decode(ids, /*keep_special=*/true);
            const std::string skipped = tok->decode(ids, /*keep_special=*/false);
            if ((kept != cases["decoded"][i].get<std::string>() ||
                 skipped != cases["decoded_skip"][i].get<std::string>()) &&
                ++decode_mismatches <= 5) {
                ADD_FAILURE() << "decode " << i << ": got " << excerpt(kept) << " / " << excerpt(skipped) << ", want "
                              << excerpt(cases["decoded"][i].get<std::string>()) << " / "
                              << excerpt(cases["decoded_skip"][i].get<std::string>());
            }
        }
        EXPECT_EQ(decode_mismatches, 0);
    }
}

// DSV32_FORMAT.md §A.9: known answers of the real tokenizer (raw tokenizers, no special tokens added).
TEST(HfTokenizerParityTest, DeepSeekKnownAnswers) {
    const std::unique_ptr<HfTokenizer> tok = HfTokenizer::load(testing::oracle_path("tokenizers/deepseek_v3"));
    const std::vector<std::pair<std::string, std::vector<int64_t>>> cases = {
        {"Hello, world!", {19923, 14, 2058, 3}},
        {"  leading spaces", {223, 6646, 13564}},
        {"tabs\tand\nnewlines\r\n\r\n", {86, 10284, 200, 458, 201, 2839, 12678, 204, 201, 204, 201}},
        {"1234567890", {6895, 18009, 25744, 18}},
        {"3.14159", {21, 16, 9926, 3318}},
        {"你好，世界！", {30594, 303, 3427, 1175}},
        {"한국어 문장", {5634, 17564, 9227, 22426, 14301}},
        {"naïve café", {2720, 91223, 57664}},
        {"emoji 😀👍🏽", {18872, 7063, 53769, 225, 92526, 40965, 124}},
        {"don't stop", {20385, 1664, 6409}},
        {"a.b_c", {67, 6229, 4941}},
        {"</think>\n\n<｜DSML｜function_calls>\n",
         {128799, 271, 30, 28217, 10525, 7398, 28217, 8701, 4941, 12548, 1018}},
        {"<function_results>\n<result>", {30, 8701, 80757, 1018, 30, 9001, 32}},
        {"x<think>y</think>z", {90, 128798, 91, 128799, 92}},
        {"a<｜User｜>b", {67, 128803, 68}},
    };
    for (const auto& [text, ids] : cases) {
        EXPECT_EQ(tok->encode(text), ids) << text;
        EXPECT_EQ(tok->encode(text, /*add_special_tokens=*/true), ids) << text;  // ByteLevel post-processor: no BOS
    }
    EXPECT_EQ(tok->bos_id(), 0);
    EXPECT_EQ(tok->eos_id(), 1);
    EXPECT_EQ(tok->vocab_size(), 128815);
    EXPECT_EQ(tok->decode({128803, 33310, 128804}, true), "<｜User｜>hello<｜Assistant｜>");
    EXPECT_TRUE(tok->is_special(0));
    EXPECT_FALSE(tok->is_special(128798));  // <think> is an added, non-special token
    EXPECT_EQ(tok->decode({28927}), "\xEF\xBF\xBD") << "half an emoji decodes as U+FFFD";
}

// The official chat fixture through the real tokenizer: segment-wise ids (the loss mask's) equal the ids of the
// whole prompt, the prompt starts with BOS id 0, and the generated ids decode back to the assistant turns.
TEST(HfTokenizerParityTest, DeepSeekChatFixtureTokenizesSegmentWise) {
    const std::unique_ptr<HfTokenizer> tok = HfTokenizer::load(testing::oracle_path("tokenizers/deepseek_v3"));
    const OrderedJson conv =
        OrderedJson::parse(fs::read_file(testing::source_dir() + "/tests/text/dsv32/test_input.json"));
    const std::vector<ChatSegment> segs = make_chat_format("deepseek_v32")->render(conv, {});
    const ChatIds ids = tokenize_segments(*tok, segs);
    EXPECT_EQ(ids.ids, tok->encode(join_segments(segs)));
    ASSERT_FALSE(ids.ids.empty());
    EXPECT_EQ(ids.ids[0], 0);
    std::vector<int64_t> generated;
    for (size_t i = 0; i < ids.ids.size(); ++i) {
        if (ids.generated[i]) generated.push_back(ids.ids[i]);
    }
    std::string want;
    for (const ChatSegment& s : segs) {
        if (s.generated) want += s.text;
    }
    EXPECT_EQ(tok->decode(generated, /*keep_special=*/true), want);
}

// model.chat_format: auto picks deepseek_v32 from config.json's model_type; apply_chat then renders DeepSeek's
// prompt; a choice that does not fit the tokenizer (byte with a tokenizer.json) is an error.
TEST(HfTokenizerParityTest, MakeTokenizerPicksTheChatFormat) {
    const std::string src = testing::oracle_path("tokenizers/deepseek_v3");
    testing::TempDir dir;
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
        fs::write_file_atomic(fs::join(dir.path(), f), {fs::read_file(fs::join(src, f))});
    }
    EXPECT_THROW(make_tokenizer(dir.path(), 129280)->apply_chat({{"user", "hi"}}, true), ConfigError);  // no format
    dir.write("config.json", R"({"model_type": "deepseek_v32"})");
    const auto tok = make_tokenizer(dir.path(), 129280);
    EXPECT_EQ(tok->apply_chat({{"user", "hi"}}, true),
              tok->encode("<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>"));
    EXPECT_EQ(make_tokenizer(dir.path(), 129280, {.thinking = false})->apply_chat({{"user", "hi"}}, true),
              tok->encode("<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜></think>"));
    EXPECT_THROW(make_tokenizer(dir.path(), 129280, {.format = "byte"}), ConfigError);
    EXPECT_THROW(make_tokenizer(dir.path(), 1000), ConfigError);  // 128815 ids do not fit vocab_size 1000
    // Without a tokenizer.json, deepseek_v32 is the byte-level tokenizer with its markers (byte_chat_tokenizer_test).
    EXPECT_EQ(make_tokenizer("", 320, {.format = "deepseek_v32"})->chat_format(nullptr)->name(), "deepseek_v32");
    EXPECT_THROW(make_tokenizer("", 320, {.format = "chatml"}), ConfigError);
}

}  // namespace
}  // namespace dsrl::text
