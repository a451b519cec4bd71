#include "text/tokenizer.h"
#include "text/hf_tokenizer.h"

#include <absl/strings/str_cat.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "core/fs.h"
#include "tests/test_util.h"

namespace dsrl::text {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ByteTokenizerTest, RoundTripsArbitraryBytes) {
    const ByteTokenizer tok(320);
    std::string all;
    for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
    const std::string utf8 = "héllo, мир — 数学 ∑ 🙂";
    const std::string with_nul("a\0b\0\0c", 6);
    std::mt19937 rng(3);
    std::string random(1000, '\0');
    for (char& c : random) c = static_cast<char>(rng() % 256);
    for (const std::string& text : {std::string(), all, utf8, with_nul, random}) {
        const std::vector<int64_t> ids = tok.encode(text);
        ASSERT_EQ(ids.size(), text.size());
        for (size_t i = 0; i < ids.size(); ++i) {
            EXPECT_EQ(ids[i], ByteTokenizer::kByteOffset + static_cast<unsigned char>(text[i]));
            EXPECT_FALSE(tok.is_special(ids[i]));
        }
        EXPECT_EQ(tok.decode(ids), text);
        EXPECT_EQ(tok.decode(ids, /*keep_special=*/true), text);
    }
    EXPECT_THAT(tok.encode(std::string("A\0", 2)), ElementsAre(16 + 'A', 16));
}

TEST(ByteTokenizerTest, DecodeSkipsOrKeepsSpecials) {
    const ByteTokenizer tok(320);
    std::vector<int64_t> ids{ByteTokenizer::kBos, ByteTokenizer::kUser};
    for (const int64_t id : tok.encode("hi")) ids.push_back(id);
    ids.push_back(ByteTokenizer::kEnd);
    ids.push_back(9);    // reserved
    ids.push_back(300);  // unused: not special, always visible
    ids.push_back(ByteTokenizer::kEos);
    EXPECT_EQ(tok.decode(ids), "hi<unused_300>");
    EXPECT_EQ(tok.decode(ids, /*keep_special=*/true), "<bos><|user|>hi<|end|><reserved_9><unused_300><eos>");
    for (int64_t id = 0; id < 16; ++id) EXPECT_TRUE(tok.is_special(id)) << id;
    EXPECT_FALSE(tok.is_special(16));
    EXPECT_FALSE(tok.is_special(271));
    EXPECT_FALSE(tok.is_special(300));
    EXPECT_EQ(tok.bos_id(), 0);
    EXPECT_EQ(tok.eos_id(), 1);
    EXPECT_EQ(tok.pad_id(), 2);
    EXPECT_EQ(tok.vocab_size(), 320);
}

TEST(ByteTokenizerTest, TokenStringNamesSpecialsAndEscapesBytes) {
    const ByteTokenizer tok(300);
    EXPECT_EQ(tok.token_string(0), "<bos>");
    EXPECT_EQ(tok.token_string(1), "<eos>");
    EXPECT_EQ(tok.token_string(2), "<pad>");
    EXPECT_EQ(tok.token_string(3), "<|system|>");
    EXPECT_EQ(tok.token_string(4), "<|user|>");
    EXPECT_EQ(tok.token_string(5), "<|assistant|>");
    EXPECT_EQ(tok.token_string(6), "<|end|>");
    EXPECT_EQ(tok.token_string(15), "<reserved_15>");
    EXPECT_EQ(tok.token_string(16 + 'a'), "a");
    EXPECT_EQ(tok.token_string(16 + ' '), " ");
    EXPECT_EQ(tok.token_string(16 + '~'), "~");
    EXPECT_EQ(tok.token_string(16 + 0), "\\x00");
    EXPECT_EQ(tok.token_string(16 + '\n'), "\\x0A");
    EXPECT_EQ(tok.token_string(16 + 0x7F), "\\x7F");
    EXPECT_EQ(tok.token_string(16 + 0xC3), "\\xC3");
    EXPECT_EQ(tok.token_string(272), "<unused_272>");
    EXPECT_EQ(tok.token_string(299), "<unused_299>");
}

TEST(ByteTokenizerTest, ApplyChatLayout) {
    const ByteTokenizer tok(320);
    const auto b = [](char c) { return ByteTokenizer::kByteOffset + static_cast<unsigned char>(c); };
    const std::vector<ChatMessage> chat{{"system", "S"}, {"user", "2+3?"}, {"assistant", "5"}};
    EXPECT_THAT(tok.apply_chat(chat, /*add_generation_prompt=*/false),
                ElementsAre(0, 3, b('S'), 6, 1, 4, b('2'), b('+'), b('3'), b('?'), 6, 1, 5, b('5'), 6, 1));
    EXPECT_THAT(tok.apply_chat({{"user", "x"}}, /*add_generation_prompt=*/true), ElementsAre(0, 4, b('x'), 6, 1, 5));
    EXPECT_THAT(tok.apply_chat({}, /*add_generation_prompt=*/true), ElementsAre(0, 5));
    EXPECT_EQ(tok.decode(tok.apply_chat(chat, false)), "S2+3?5");
    EXPECT_EQ(tok.decode(tok.apply_chat(chat, true), /*keep_special=*/true),
              "<bos><|system|>S<|end|><eos><|user|>2+3?<|end|><eos><|assistant|>5<|end|><eos><|assistant|>");
}

TEST(ByteTokenizerTest, RejectsUnknownRoleOutOfRangeIdsAndSmallVocab) {
    const ByteTokenizer tok(320);
    try {
        tok.apply_chat({{"user", "a"}, {"tool", "b"}}, true);
        FAIL() << "expected a DataError";
    } catch (const DataError& e) {
        EXPECT_THAT(e.what(), HasSubstr("'tool'"));
        EXPECT_THAT(e.what(), HasSubstr("message 1"));
    }
    for (const int64_t id : {int64_t{-1}, int64_t{320}, int64_t{100000}}) {
        try {
            tok.decode({16, id});
            FAIL() << "expected a DataError for id " << id;
        } catch (const DataError& e) {
            EXPECT_THAT(e.what(), HasSubstr(absl::StrCat("token id ", id)));
        }
        EXPECT_THROW(tok.token_string(id), DataError);
        EXPECT_FALSE(tok.is_special(id));
    }
    try {
        ByteTokenizer small(271);
        FAIL() << "expected a ConfigError";
    } catch (const ConfigError& e) {
        EXPECT_THAT(e.what(), HasSubstr("271"));
        EXPECT_THAT(e.what(), HasSubstr("272"));
    }
    EXPECT_NO_THROW(ByteTokenizer(272));
}

TEST(TokenizerTest, MakeTokenizerIsByteLevelUnlessACheckpointHasTokenizerJson) {
    auto tok = make_tokenizer("", 320);
    ASSERT_NE(dynamic_cast<ByteTokenizer*>(tok.get()), nullptr);
    EXPECT_EQ(tok->vocab_size(), 320);

    testing::TempDir dir;
    // a checkpoint directory without tokenizer.json: byte-level
    EXPECT_EQ(make_tokenizer(dir.path(), 320)->vocab_size(), 320);
    dir.write("tokenizer.json", "{}");
    try {
        make_tokenizer(dir.path(), 320);
        FAIL() << "expected a ConfigError";
    } catch (const ConfigError& e) {
        EXPECT_THAT(e.what(), HasSubstr(fs::join(dir.path(), "tokenizer.json") + ": model: missing"));
    }

    EXPECT_THROW(make_tokenizer("", 100), ConfigError);
}

// A hand-made byte-level BPE file: merges apply by rank (not left to right), added tokens are matched in the raw
// text first, and every malformed field is an error naming the file and the field.
constexpr const char* kTinyTokenizer = R"({
  "added_tokens": [{"id": 9, "content": "<eos>", "special": true, "normalized": false},
                   {"id": 10, "content": "<t>", "special": false, "normalized": false, "lstrip": true}],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "bc": 5, "abc": 6, "Ġa": 7, "Ġab": 8},
            "merges": ["b c", "a b", "a bc", ["Ġ", "a"], "Ġa b"]}
})";

TEST(HfTokenizerTest, MergesByRankAddedTokensFirstAndNamedErrors) {
    testing::TempDir dir;
    dir.write("tokenizer.json", kTinyTokenizer);
    dir.write("tokenizer_config.json", R"({"eos_token": "<eos>"})");
    const std::unique_ptr<HfTokenizer> tok = HfTokenizer::load(dir.path());
    EXPECT_EQ(tok->encode("abc"), (std::vector<int64_t>{6}));          // "b c" (rank 0) first, then "a bc"
    EXPECT_EQ(tok->encode("ab ab"), (std::vector<int64_t>{4, 3, 4}));  // "a b" (rank 1) before "Ġ a" (rank 3)
    EXPECT_EQ(tok->encode(" a"), (std::vector<int64_t>{7}));
    EXPECT_EQ(tok->encode("ab <t>c<eos>"), (std::vector<int64_t>{4, 10, 2, 9}));  // lstrip takes the space
    EXPECT_EQ(tok->encode("xa"), (std::vector<int64_t>{0}));  // 'x' is not in the vocabulary: dropped
    EXPECT_EQ(tok->decode({4, 10, 2, 9}), "ab<t>c");
    EXPECT_EQ(tok->decode({4, 10, 2, 9}, true), "ab<t>c<eos>");
    EXPECT_EQ(tok->eos_id(), 9);
    EXPECT_EQ(tok->bos_id(), -1);
    // The file given directly: tokenizer_config.json beside it still names EOS.
    EXPECT_EQ(HfTokenizer::load(fs::join(dir.path(), "tokenizer.json"))->eos_id(), 9);
    EXPECT_EQ(tok->vocab_size(), 11);
    EXPECT_THROW(tok->decode({11}), DataError);
    EXPECT_THROW(tok->apply_chat({{"user", "hi"}}, true), ConfigError);

    auto error_of = [&](const std::string& from, const std::string& to) {
        std::string text = kTinyTokenizer;
        const size_t at = text.find(from);
        EXPECT_NE(at, std::string::npos) << from;
        text.replace(at, from.size(), to);
        dir.write("tokenizer.json", text);
        try {
            HfTokenizer::load(dir.path());
        } catch (const ConfigError& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    const std::string file = fs::join(dir.path(), "tokenizer.json");
    EXPECT_THAT(error_of("\"a bc\"", "\"a zz\""), HasSubstr(file + ": model.merges[2]: \"a\" + \"zz\""));
    EXPECT_THAT(error_of("\"a bc\"", "\"abc\""), HasSubstr("model.merges[2]: expected \"left right\""));
    EXPECT_THAT(error_of("\"ByteLevel\", \"add", "\"Metaspace\", \"add"),
                HasSubstr("pre_tokenizer.type: pre-tokenizer \"Metaspace\" is not supported"));
    EXPECT_THAT(error_of("\"model\": {", "\"model: {"), HasSubstr(file + ": not valid JSON"));
    EXPECT_THAT(error_of("\"normalizer\": null", "\"normalizer\": {\"type\": \"Precompiled\"}"),
                HasSubstr("normalizer.type: normalizer \"Precompiled\" is not supported"));
    EXPECT_THAT(
        error_of(
            "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}",
            "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a\"}, \"behavior\": \"Isolated\"}"),
        HasSubstr("pre_tokenizer.pattern: invalid regex"));
    EXPECT_THAT(error_of("\"id\": 9,", "\"id\": -9,"), HasSubstr("added_tokens[0]"));
    EXPECT_THAT(error_of("\"type\": \"BPE\"", "\"type\": \"Unigram\""), HasSubstr("only BPE models are supported"));
}

// Post-processors on the tiny file, with the rules Python tokenizers follows (checked there): TemplateProcessing
// emits one sequence per piece — special tokens only with add_special_tokens, $A either way — and a later
// processor of a Sequence sees them all (Bert: cls + first + sep, then each further one + sep). The oracle
// (tokenizer_oracle.py) covers the same on trained tokenizers; here are the errors naming file and field.
TEST(HfTokenizerTest, PostProcessorsAndNamedErrors) {
    testing::TempDir dir;
    auto load_with = [&](const std::string& post) {
        std::string text = kTinyTokenizer;
        const std::string anchor = "\"decoder\": {\"type\": \"ByteLevel\"},";
        text.replace(text.find(anchor), anchor.size(), anchor + " \"post_processor\": " + post + ",");
        dir.write("tokenizer.json", text);
        return HfTokenizer::load(dir.path());
    };
    auto error_of = [&](const std::string& post) {
        try {
            load_with(post);
        } catch (const ConfigError& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    const std::string specials =
        R"("special_tokens": {"<t>": {"id": "<t>", "ids": [10], "tokens": ["<t>"]},
                              "<eos>": {"id": "<eos>", "ids": [9, 9], "tokens": ["<eos>", "<eos>"]}})";
    const std::string bos_a_eos =
        R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<t>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<eos>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}], )" +
        specials + "}";
    auto tok = load_with(bos_a_eos);
    EXPECT_EQ(tok->encode("abc"), (std::vector<int64_t>{6}));
    EXPECT_EQ(tok->encode("abc", true), (std::vector<int64_t>{10, 6, 9, 9}));
    EXPECT_EQ(tok->encode("", true), (std::vector<int64_t>{10, 9, 9}));

    const std::string a_eos_a =
        R"({"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<t>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], )" +
        specials + "}";
    const std::string bert = R"({"type": "BertProcessing", "sep": ["<eos>", 9], "cls": ["<t>", 10]})";
    tok = load_with(R"({"type": "Sequence", "processors": [)" + a_eos_a + ", " + bert + "]}");
    EXPECT_EQ(tok->encode("abc"), (std::vector<int64_t>{6, 6}));  // the template repeats $A even so
    EXPECT_EQ(tok->encode("abc", true), (std::vector<int64_t>{10, 6, 9, 10, 9, 6, 9}));
    tok = load_with(R"({"type": "RobertaProcessing", "sep": ["<eos>", 9], "cls": ["<t>", 10]})");
    EXPECT_EQ(tok->encode("abc", true), (std::vector<int64_t>{10, 6, 9}));
    tok = load_with(R"({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})");
    EXPECT_EQ(tok->encode("abc", true), (std::vector<int64_t>{6}));
    // A template given three sequences (tokenizers panics there).
    tok = load_with(R"({"type": "Sequence", "processors": [)" + a_eos_a + ", " + bos_a_eos + "]}");
    try {
        tok->encode("abc", true);
        ADD_FAILURE() << "expected a ConfigError";
    } catch (const ConfigError& e) {
        EXPECT_THAT(e.what(), HasSubstr("post_processor.processors[1]: TemplateProcessing was given 3 sequences"));
    }

    const std::string file = fs::join(dir.path(), "tokenizer.json");
    EXPECT_THAT(error_of(R"({"type": "Metaspace"})"),
                HasSubstr(file + ": post_processor.type: post-processor \"Metaspace\" is not supported"));
    EXPECT_THAT(
        error_of(R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<x>"}}], )" + specials + "}"),
        HasSubstr("post_processor.single[0].SpecialToken.id: \"<x>\" is not one of "
                  "post_processor.special_tokens"));
    EXPECT_THAT(error_of(R"({"type": "TemplateProcessing", "single": [{"Sequence": {"id": "B"}}], )" + specials + "}"),
                HasSubstr("post_processor.single[0].Sequence.id: the single template has one sequence"));
    EXPECT_THAT(error_of(R"({"type": "TemplateProcessing", "single": ["<t>", "$A"], )" + specials + "}"),
                HasSubstr("post_processor.single[0]: expected {\"Sequence\": {...}} or {\"SpecialToken\": {...}}"));
    EXPECT_THAT(error_of(R"({"type": "TemplateProcessing", "single": [],
                             "special_tokens": {"<t>": {"id": "<t>", "ids": [11]}}})"),
                HasSubstr("post_processor.special_tokens.<t>.ids[0]: expected a token id in [0, 11), got 11"));
    EXPECT_THAT(error_of(R"({"type": "TemplateProcessing", "single": []})"),
                HasSubstr("post_processor.special_tokens: expected"));
    EXPECT_THAT(error_of(R"({"type": "BertProcessing", "sep": ["<eos>"], "cls": ["<t>", 10]})"),
                HasSubstr("post_processor.sep: expected [\"token\", id]"));
    EXPECT_THAT(error_of(R"({"type": "Sequence", "processors": [{"type": "ByteLevel", "trim_offsets": 1}]})"),
                HasSubstr("post_processor.processors[0].trim_offsets: expected true or false"));
}

}  // namespace
}  // namespace dsrl::text
