// The byte-level tokenizer with the deepseek_v32 markers as added tokens (text/byte_chat_tokenizer.h): its fixed id
// table, leftmost-longest marker matching, round trips, the segment property of tokenize_segments (DeepSeek's
// official fixture and a multi-turn tool conversation, both modes), the appending property the multi-turn rollout
// relies on, and a decoded tool-call completion through the stream parser.
#include "text/byte_chat_tokenizer.h"

#include <algorithm>
#include <random>

#include <absl/strings/str_cat.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/fs.h"
#include "tests/test_util.h"
#include "text/conversation.h"

namespace dsrl::text {
namespace {

using ::testing::HasSubstr;

constexpr int64_t b(char c) { return ByteChatTokenizer::kByteOffset + static_cast<unsigned char>(c); }

std::vector<int64_t> bytes(const std::string& s) {
    std::vector<int64_t> out;
    for (const char c : s) out.push_back(b(c));
    return out;
}

std::vector<int64_t> cat(std::initializer_list<std::vector<int64_t>> parts) {
    std::vector<int64_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

OrderedJson fixture() {
    return OrderedJson::parse(fs::read_file(testing::source_dir() + "/tests/text/dsv32/test_input.json"));
}

// A multi-turn agentic conversation: tools, two rounds of tool calls (several calls, string and non-string
// arguments, values with markup), results, a final answer, then a new user turn and another call.
OrderedJson tool_conversation() {
    return OrderedJson::parse(R"json({
      "tools": [
        {"type": "function", "function": {"name": "search", "description": "Search the web",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "top_k": {"type": "integer"}},
                         "required": ["query"]}}},
        {"type": "function", "function": {"name": "python", "description": "Run code",
          "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}
      ],
      "messages": [
        {"role": "system", "content": "You are a careful agent."},
        {"role": "user", "content": "What is 6*7, and who wrote <think> tags?"},
        {"role": "assistant", "reasoning_content": "Compute, then search.",
         "tool_calls": [
           {"type": "function", "function": {"name": "python", "arguments": "{\"code\": \"print(6*7)\\nx = '<a>'\"}"}},
           {"type": "function", "function": {"name": "search",
                                             "arguments": "{\"query\": \"think tags\", \"top_k\": 3}"}}]},
        {"role": "tool", "content": "42\n"},
        {"role": "tool", "content": "DeepSeek uses <think> and </think>."},
        {"role": "assistant", "reasoning_content": "Both known.", "content": "6*7 = 42; DeepSeek."},
        {"role": "user", "content": "Now 2**10?"},
        {"role": "assistant", "reasoning_content": "Run it.",
         "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": {"code": "print(2**10)"}}}]},
        {"role": "tool", "content": "1024"},
        {"role": "assistant", "reasoning_content": "Done.", "content": "1024"}
      ]})json");
}

// The conversation's first `n` messages (tools kept).
OrderedJson first_messages(const OrderedJson& conv, size_t n) {
    OrderedJson out = conv;
    out["messages"] = OrderedJson(conv["messages"].begin(), conv["messages"].begin() + static_cast<std::ptrdiff_t>(n));
    return out;
}

// The text of the byte ids between markers: no marker may be spelled out in bytes there.
std::string byte_runs(const std::vector<int64_t>& ids) {
    std::string out;
    for (const int64_t id : ids) {
        out += id >= ByteChatTokenizer::kByteOffset && id < ByteChatTokenizer::kFirstMarker
                   ? std::string(1, static_cast<char>(id - ByteChatTokenizer::kByteOffset))
                   : std::string("\x01");  // a marker separates runs
    }
    return out;
}

void expect_segment_wise(const ByteChatTokenizer& tok, const OrderedJson& conv, bool thinking) {
    SCOPED_TRACE(thinking ? "thinking" : "chat");
    const auto fmt = make_chat_format("deepseek_v32");
    const std::vector<ChatSegment> segs = fmt->render(conv, {.thinking = thinking});
    const std::string whole = join_segments(segs);
    const ChatIds c = tokenize_segments(tok, segs);
    EXPECT_EQ(c.ids, tok.encode(whole));
    EXPECT_EQ(tok.decode(c.ids, /*keep_special=*/true), whole);
    EXPECT_EQ(std::count(c.ids.begin(), c.ids.end(), ByteChatTokenizer::kBos), 1);
    EXPECT_EQ(c.ids.front(), ByteChatTokenizer::kBos);
    // Every fixed string of the format is one id: none is left spelled in bytes.
    const std::string runs = byte_runs(c.ids);
    for (const char* s : {"｜", "<think>", "</think>", "<result>", "</result>", "function_results>", "string=\"",
                          "## Tools", "</functions>"}) {
        EXPECT_EQ(runs.find(s), std::string::npos) << s;
    }
    // The generated ids are exactly the assistant turns' text.
    std::vector<int64_t> generated;
    std::string want;
    for (size_t i = 0; i < c.ids.size(); ++i) {
        if (c.generated[i]) generated.push_back(c.ids[i]);
    }
    for (const ChatSegment& s : segs) {
        if (s.generated) want += s.text;
    }
    EXPECT_EQ(tok.decode(generated, /*keep_special=*/true), want);
}

TEST(ByteChatTokenizerTest, IdTableIsFixed) {
    EXPECT_EQ(ByteChatTokenizer::kFirstMarker, 272);
    EXPECT_EQ(ByteChatTokenizer::kMinVocab, 291);
    const std::vector<std::pair<std::string, int64_t>> table = {
        {"<｜begin▁of▁sentence｜>", 0},
        {"<｜end▁of▁sentence｜>", 1},
        {"<｜User｜>", 272},
        {"<｜Assistant｜>", 273},
        {"<think>", 274},
        {"</think>", 275},
        {"<｜DSML｜function_calls>", 276},
        {"</｜DSML｜function_calls>", 277},
        {"<｜DSML｜invoke name=\"", 278},
        {"</｜DSML｜invoke>", 279},
        {"<｜DSML｜parameter name=\"", 280},
        {"</｜DSML｜parameter>", 281},
        {"\" string=\"true\">", 282},
        {"\" string=\"false\">", 283},
        {"<function_results>", 284},
        {"</function_results>", 285},
        {"<result>", 286},
        {"</result>", 287},
        {dsv32::kToolsHead, 288},
        {"</functions>", 289},
        {"## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n", 290},
    };
    const ByteChatTokenizer tok(320);
    for (const auto& [text, id] : table) {
        SCOPED_TRACE(text.substr(0, 40));
        EXPECT_EQ(ByteChatTokenizer::marker_id(text), id);
        EXPECT_EQ(tok.encode(text), std::vector<int64_t>{id});
        EXPECT_EQ(tok.token_string(id), text);
        EXPECT_EQ(tok.decode({id}, /*keep_special=*/true), text);
    }
    EXPECT_EQ(ByteChatTokenizer::marker_id("<think"), -1);
    EXPECT_EQ(ByteChatTokenizer::marker_id("<think>x"), -1);
    EXPECT_EQ(ByteChatTokenizer::marker_id(""), -1);
    EXPECT_THAT(dsv32::kToolsHead, ::testing::StartsWith("## Tools\n\n"));
    EXPECT_THAT(dsv32::kToolsHead, ::testing::EndsWith("<functions>\n"));
}

TEST(ByteChatTokenizerTest, SpecialsAndDecode) {
    const ByteChatTokenizer tok(320);
    EXPECT_EQ(tok.vocab_size(), 320);
    EXPECT_EQ(tok.bos_id(), 0);
    EXPECT_EQ(tok.eos_id(), 1);
    EXPECT_EQ(tok.pad_id(), 2);
    for (int64_t id = 0; id < 16; ++id) EXPECT_TRUE(tok.is_special(id)) << id;
    for (const int64_t id : {16, 271, 272, 275, 290, 291, 319}) EXPECT_FALSE(tok.is_special(id)) << id;
    EXPECT_FALSE(tok.is_special(-1));
    EXPECT_FALSE(tok.is_special(320));
    EXPECT_EQ(tok.token_string(2), "<pad>");
    EXPECT_EQ(tok.token_string(b('a')), "a");
    EXPECT_EQ(tok.token_string(b('\n')), "\\x0A");
    EXPECT_EQ(tok.token_string(300), "<unused_300>");
    // Without keep_special: ids 0..15 dropped, markers and unused ids kept as text (a reward reads them).
    const std::vector<int64_t> ids = cat({{0, 274}, bytes("r"), {275}, bytes("42"), {2, 300, 1}});
    EXPECT_EQ(tok.decode(ids), "<think>r</think>42<unused_300>");
    EXPECT_EQ(tok.decode(ids, /*keep_special=*/true),
              "<｜begin▁of▁sentence｜><think>r</think>42<pad><unused_300><｜end▁of▁sentence｜>");
    EXPECT_THROW(tok.decode({320}), DataError);
    EXPECT_THROW(tok.decode({-1}), DataError);
    EXPECT_THROW(tok.token_string(320), DataError);
    try {
        tok.decode({0, 5000});
        ADD_FAILURE() << "no error";
    } catch (const DataError& e) {
        EXPECT_THAT(e.what(), HasSubstr("5000"));
    }
}

TEST(ByteChatTokenizerTest, MarkersMatchInsideText) {
    const ByteChatTokenizer tok(320);
    EXPECT_EQ(tok.encode("a<｜User｜>b"), cat({bytes("a"), {272}, bytes("b")}));
    EXPECT_EQ(tok.encode("x<think>y</think>z"), cat({bytes("x"), {274}, bytes("y"), {275}, bytes("z")}));
    EXPECT_EQ(tok.encode("<<think>>"), cat({bytes("<"), {274}, bytes(">")}));
    EXPECT_EQ(tok.encode("stop<｜end▁of▁sentence｜>go<｜begin▁of▁sentence｜>"),
              cat({bytes("stop"), {1}, bytes("go"), {0}}));
    EXPECT_EQ(tok.encode("say \" string=\"true\">"), cat({bytes("say "), {282}}));
    // Adjacent markers, no separator.
    EXPECT_EQ(tok.encode("</think></｜DSML｜parameter></result>"), (std::vector<int64_t>{275, 281, 287}));
    // Leftmost wins over longer later: the head of the tools block is one token, the markers in it are not split out.
    EXPECT_EQ(tok.encode(absl::StrCat("\n\n", dsv32::kToolsHead, "{}\n</functions>\n")),
              cat({bytes("\n\n"), {288}, bytes("{}\n"), {289}, bytes("\n")}));
    EXPECT_EQ(tok.encode(""), std::vector<int64_t>{});
}

TEST(ByteChatTokenizerTest, PartialMarkersAreBytes) {
    const ByteChatTokenizer tok(320);
    for (const std::string s :
         {"<think", "</think", "<｜User｜", "｜User｜>", "<｜DSML｜invoke",
          "<｜DSML｜invoke name=", "</｜DSML｜function_calls", "\" string=\"maybe\">", "<functions>",
          "<function_results", "<｜end▁of▁sentence", "## Tools\n\nYou have access", "<result >", "<Think>"}) {
        EXPECT_EQ(tok.encode(s), bytes(s)) << s;
    }
    // A partial marker followed by a whole one: the bytes, then the marker.
    EXPECT_EQ(tok.encode("</thi</think>"), cat({bytes("</thi"), {275}}));
    EXPECT_EQ(tok.encode("<｜DSML｜invoke name=\"f\">"), cat({{278}, bytes("f\">")}));
    EXPECT_EQ(tok.encode("<｜DSML｜invoke>"), bytes("<｜DSML｜invoke>"));
}

TEST(ByteChatTokenizerTest, RoundTrips) {
    const ByteChatTokenizer tok(320);
    // Random texts of bytes (any, UTF-8 included), marker pieces and whole markers: encode then decode gives the
    // text back, and decoding the ids re-encodes to the same ids.
    std::vector<std::string> pieces = {"a",         " ",       "\n",   "<",      ">",   "\"",
                                       "｜",        "é",       "\xff", "<think", "</",  "DSML",
                                       "string=\"", "name=\"", "##",   "🙂",   "<｜", std::string(1, '\0')};
    for (const char* m : ByteChatTokenizer::kMarkers) pieces.emplace_back(m);
    pieces.emplace_back(dsv32::kBos);
    pieces.emplace_back(dsv32::kEos);
    std::mt19937 rng(20);
    for (int trial = 0; trial < 500; ++trial) {
        std::string text;
        const int n = static_cast<int>(rng() % 30);
        for (int i = 0; i < n; ++i) text += pieces[rng() % pieces.size()];
        const std::vector<int64_t> ids = tok.encode(text);
        ASSERT_EQ(tok.decode(ids, /*keep_special=*/true), text) << trial;
        ASSERT_EQ(tok.encode(tok.decode(ids, /*keep_special=*/true)), ids) << trial;
        // Without keep_special only BOS and EOS go.
        std::string plain;
        for (const int64_t id : ids) {
            if (id != ByteChatTokenizer::kBos && id != ByteChatTokenizer::kEos) plain += tok.decode({id}, true);
        }
        ASSERT_EQ(tok.decode(ids), plain) << trial;
    }
    // Every byte alone.
    for (int c = 0; c < 256; ++c) {
        const std::string s(1, static_cast<char>(c));
        EXPECT_EQ(tok.encode(s), std::vector<int64_t>{16 + c});
        EXPECT_EQ(tok.decode({16 + c}), s);
    }
}

TEST(ByteChatTokenizerTest, VocabTooSmallIsAConfigError) {
    EXPECT_NO_THROW(ByteChatTokenizer(291));
    for (const int64_t v : {290, 272, 100}) {
        try {
            ByteChatTokenizer tok(v);
            ADD_FAILURE() << "no error for vocab_size " << v;
        } catch (const ConfigError& e) {
            EXPECT_THAT(e.what(), HasSubstr("model.vocab_size"));
            EXPECT_THAT(e.what(), HasSubstr("at least 291"));
            EXPECT_THAT(e.what(), HasSubstr(absl::StrCat("got ", v)));
        }
    }
    EXPECT_THROW(make_tokenizer("", 280, {.format = "deepseek_v32"}), ConfigError);
    EXPECT_NO_THROW(make_tokenizer("", 280));  // the byte template needs 272 only
}

// model.chat_format deepseek_v32 without a tokenizer.json is this tokenizer; auto and byte stay the byte template.
TEST(ByteChatTokenizerTest, MakeTokenizerPicksIt) {
    for (const bool thinking : {true, false}) {
        const auto tok = make_tokenizer("", 320, {.format = "deepseek_v32", .thinking = thinking});
        ASSERT_NE(dynamic_cast<const ByteChatTokenizer*>(tok.get()), nullptr);
        ChatOptions opt{.thinking = !thinking, .add_bos = false};
        const ChatFormat* fmt = tok->chat_format(&opt);
        ASSERT_NE(fmt, nullptr);
        EXPECT_EQ(fmt->name(), "deepseek_v32");
        EXPECT_EQ(opt.thinking, thinking);
        EXPECT_TRUE(opt.add_bos);
        EXPECT_EQ(tok->chat_format(nullptr), fmt);
        // BOS once, from the rendered text; the generation prompt after the user turn.
        EXPECT_EQ(tok->apply_chat({{"user", "hi"}}, true), cat({{0, 272}, bytes("hi"), {273, thinking ? 274 : 275}}));
        const std::vector<ChatMessage> answered = {{"system", "s"}, {"user", "q"}, {"assistant", "a"}};
        if (thinking) {  // an answer after the last user turn needs reasoning, which apply_chat cannot carry
            EXPECT_THROW(tok->apply_chat(answered, false), DataError);
        } else {
            EXPECT_EQ(tok->apply_chat(answered, false),
                      cat({{0}, bytes("s"), {272}, bytes("q"), {273, 275}, bytes("a"), {1}}));
        }
        const OrderedJson conv = {{"messages", {{{"role", "user"}, {"content", "q"}}}}};
        EXPECT_EQ(render_conversation(*tok, conv).ids, tok->apply_chat({{"user", "q"}}, true));
    }
    for (const char* format : {"auto", "byte"}) {
        const auto tok = make_tokenizer("", 320, {.format = format});
        EXPECT_NE(dynamic_cast<const ByteTokenizer*>(tok.get()), nullptr) << format;
        EXPECT_EQ(tok->chat_format(nullptr), nullptr) << format;
    }
}

TEST(ByteChatTokenizerTest, OfficialFixtureTokenizesSegmentWise) {
    const ByteChatTokenizer tok(320);
    expect_segment_wise(tok, fixture(), /*thinking=*/true);
    expect_segment_wise(tok, fixture(), /*thinking=*/false);
    // render_conversation is the same ids.
    const ByteChatTokenizer chat(320, /*thinking=*/false);
    const auto fmt = make_chat_format("deepseek_v32");
    EXPECT_EQ(render_conversation(chat, fixture()).ids,
              tok.encode(join_segments(fmt->render(fixture(), {.thinking = false}))));
}

TEST(ByteChatTokenizerTest, ToolConversationTokenizesSegmentWise) {
    const ByteChatTokenizer tok(320);
    const OrderedJson conv = tool_conversation();
    for (const bool thinking : {true, false}) {
        // Every prefix that renders (in thinking mode an answer after the last user turn needs its reasoning,
        // which all have here).
        for (size_t n = 1; n <= conv["messages"].size(); ++n) {
            SCOPED_TRACE(n);
            expect_segment_wise(tok, first_messages(conv, n), thinking);
        }
    }
    // The markers keep the prompt short: the tools head alone is ~1,400 bytes.
    const std::string text = join_segments(make_chat_format("deepseek_v32")->render(conv, {.thinking = true}));
    EXPECT_LT(tok.encode(text).size() * 3, text.size());
}

// The multi-turn rollout appends tool results to a conversation that ends with the model's tool calls: the longer
// conversation's text starts with the shorter one's and its ids are the shorter one's ids followed by the suffix's
// ids tokenized alone.
TEST(ByteChatTokenizerTest, AppendingToolResultsExtendsTheIds) {
    const OrderedJson tool_conv = tool_conversation();
    const OrderedJson fix = fixture();
    int checked = 0;
    for (const bool thinking : {true, false}) {
        const ByteChatTokenizer tok(320, thinking);
        ChatOptions opt;
        const ChatFormat* fmt = tok.chat_format(&opt);
        for (const OrderedJson* conv : {&tool_conv, &fix}) {
            const OrderedJson& msgs = (*conv)["messages"];
            for (size_t n = 1; n < msgs.size(); ++n) {
                if (msgs[n - 1]["role"] != "assistant" || !msgs[n - 1].contains("tool_calls")) continue;
                size_t end = n;
                while (end < msgs.size() && msgs[end]["role"] == "tool") ++end;
                SCOPED_TRACE(absl::StrCat(thinking ? "thinking" : "chat", ", messages ", n, "..", end));
                const OrderedJson before = first_messages(*conv, n);
                const OrderedJson after = first_messages(*conv, end);
                const std::string prefix = join_segments(fmt->render(before, opt));
                const std::string whole = join_segments(fmt->render(after, opt));
                ASSERT_EQ(whole.compare(0, prefix.size(), prefix), 0);
                const std::string suffix = whole.substr(prefix.size());
                EXPECT_THAT(suffix, ::testing::StartsWith("\n\n<function_results>"));
                EXPECT_THAT(suffix, ::testing::EndsWith(thinking ? "\n\n<think>" : "\n\n</think>"));
                const ChatIds a = render_conversation(tok, before);
                const ChatIds w = render_conversation(tok, after);
                EXPECT_EQ(a.ids.back(), ByteChatTokenizer::kEos);
                const std::vector<int64_t> tail = tok.encode(suffix);
                EXPECT_EQ(w.ids, cat({a.ids, tail}));
                EXPECT_EQ(std::vector<uint8_t>(w.generated.begin(), w.generated.begin() + a.ids.size()), a.generated);
                ++checked;
            }
        }
    }
    EXPECT_EQ(checked, 2 * (2 + 3));  // both modes: two tool rounds here, three in the fixture
}

// A generation's ids decoded with keep_special and fed to the stream parser one token at a time give the reasoning,
// the content and the tool calls back, finished at EOS; the whole text parses strictly to the same message.
TEST(ByteChatTokenizerTest, StreamParsesADecodedToolCallCompletion) {
    for (const bool thinking : {true, false}) {
        SCOPED_TRACE(thinking ? "thinking" : "chat");
        const ByteChatTokenizer tok(320, thinking);
        ChatOptions opt;
        const ChatFormat* fmt = tok.chat_format(&opt);
        const OrderedJson conv = first_messages(tool_conversation(), 3);  // ... user, assistant with two calls
        const ChatIds c = render_conversation(tok, conv);
        std::vector<int64_t> completion;
        for (size_t i = 0; i < c.ids.size(); ++i) {
            if (c.generated[i]) completion.push_back(c.ids[i]);
        }
        ASSERT_EQ(completion.back(), ByteChatTokenizer::kEos);

        const auto stream = fmt->stream_parser(opt);
        ParsedMessage streamed;
        std::vector<ToolCall> calls;
        bool finished = false;
        for (const int64_t id : completion) {
            EXPECT_FALSE(finished);
            const ChatStreamParser::Delta d = stream->feed(tok.decode({id}, /*keep_special=*/true));
            streamed.reasoning_content += d.reasoning_content;
            streamed.content += d.content;
            calls.insert(calls.end(), d.tool_calls.begin(), d.tool_calls.end());
            finished = d.finished;
        }
        stream->finish();
        EXPECT_TRUE(finished);
        EXPECT_EQ(streamed.reasoning_content, thinking ? "Compute, then search." : "");
        EXPECT_EQ(streamed.content, "");
        ASSERT_EQ(calls.size(), 2u);
        EXPECT_EQ(calls[0].name, "python");
        EXPECT_EQ(calls[0].arguments, OrderedJson({{"code", "print(6*7)\nx = '<a>'"}}));
        EXPECT_EQ(calls[1].name, "search");
        EXPECT_EQ(calls[1].arguments, OrderedJson::parse(R"({"query": "think tags", "top_k": 3})"));
        EXPECT_TRUE(stream->message().error.empty()) << stream->message().error;

        const std::string text = tok.decode(completion, /*keep_special=*/true);
        EXPECT_LT(2 * completion.size(), text.size());  // the markers are most of the block's bytes
        const ParsedMessage strict = fmt->parse(text, opt, /*strict=*/true);
        EXPECT_EQ(strict.to_json(), stream->message().to_json());
        // What a reward reads (keep_special false) still holds the calls; only EOS is gone.
        const std::string reward_text = tok.decode(completion);
        EXPECT_EQ(reward_text + dsv32::kEos, text);
        EXPECT_EQ(fmt->parse(reward_text, opt, /*strict=*/false).to_json(), strict.to_json());
    }
}

}  // namespace
}  // namespace dsrl::text
