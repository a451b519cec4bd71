// The DeepSeek-V3.2 chat format against DeepSeek's official fixture and DSV32_FORMAT.md's worked examples (§B.6),
// and its parser (§C.1) on the completions they contain; the stream parser fed those completions (and the edge
// cases of §E.3) cut at every byte, at random places and byte by byte, against the whole-text lenient parse.
#include "text/chat_format.h"

#include <algorithm>
#include <random>

#include <absl/strings/str_cat.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/fs.h"
#include "tests/test_util.h"

namespace dsrl::text {
namespace {

using ::testing::HasSubstr;

const std::string kTool =
    R"({"type":"function","function":{"name":"get_weather","description":"Get weather","parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}}})";

std::string tools_block() {
    return "## Tools\n\nYou have access to a set of tools you can use to answer the user's question.\nYou can invoke "
           "functions by writing a \"<｜DSML｜function_calls>\" block like the following as part of your reply to the "
           "user:\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"$FUNCTION_NAME\">\n<｜DSML｜parameter "
           "name=\"$PARAMETER_NAME\" "
           "string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter>\n...\n</｜DSML｜invoke>\n"
           "<｜DSML｜invoke name=\"$FUNCTION_NAME2\">\n...\n</｜DSML｜invoke>\n</｜DSML｜function_calls>\n\nString and "
           "scalar parameters should be specified as is without any escaping or quotes, while lists and objects should "
           "use JSON format. The \"string\" attribute should be set to \"true\" for string type parameters and "
           "\"false\" for other types (numbers, booleans, arrays, objects).\n\nIf the thinking_mode is enabled, then "
           "after function results you should strongly consider outputting a thinking block. Here is an example:\n\n"
           "<｜DSML｜function_calls>\n...\n</｜DSML｜function_calls>\n\n<function_results>\n...\n</"
           "function_results>\n\n"
           "<think>...thinking about results</think>\n\nHere are the functions available in JSONSchema format:\n"
           "<functions>\n{\"name\": \"get_weather\", \"description\": \"Get weather\", \"parameters\": {\"type\": "
           "\"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\"}}, "
           "\"required\": [\"city\"]}}\n</functions>\n";
}

const std::string kCall =
    "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" "
    "string=\"true\">Paris</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" "
    "string=\"false\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";

OrderedJson conversation(int n) {
    OrderedJson all = OrderedJson::array();
    all.push_back({{"role", "system"}, {"content", "You are a helpful assistant."}});
    all.push_back({{"role", "user"}, {"content", "Weather in Paris?"}});
    all.push_back({{"role", "assistant"},
                   {"reasoning_content", "Need the tool."},
                   {"content", ""},
                   {"tool_calls",
                    {{{"type", "function"},
                      {"function", {{"name", "get_weather"}, {"arguments", "{\"city\": \"Paris\", \"days\": 2}"}}}}}}});
    all.push_back({{"role", "tool"}, {"content", "{\"temp_c\": 18}"}});
    all.push_back({{"role", "assistant"}, {"reasoning_content", "Tool says 18."}, {"content", "It is 18°C in Paris."}});
    all.push_back({{"role", "user"}, {"content", "And tomorrow?"}});
    OrderedJson msgs(all.begin(), all.begin() + n);
    return {{"messages", msgs}, {"tools", OrderedJson::array({OrderedJson::parse(kTool)})}};
}

TEST(ChatFormatTest, OfficialFixtureByteForByte) {
    const std::string dir = testing::source_dir() + "/tests/text/dsv32";
    const OrderedJson input = OrderedJson::parse(fs::read_file(dir + "/test_input.json"));
    std::string want = fs::read_file(dir + "/test_output.txt");
    ASSERT_EQ(want.back(), '\n');
    want.pop_back();  // the official test strips the file's final newline
    const auto fmt = make_chat_format("deepseek_v32");
    EXPECT_EQ(join_segments(fmt->render(input, {.thinking = true})), want);
}

TEST(ChatFormatTest, WorkedExamplesOfTheSpec) {
    const auto fmt = make_chat_format("deepseek_v32");
    const std::string bos = "<｜begin▁of▁sentence｜>";
    const std::string p1 =
        bos + "You are a helpful assistant.\n\n" + tools_block() + "<｜User｜>Weather in Paris?<｜Assistant｜><think>";
    EXPECT_EQ(join_segments(fmt->render(conversation(2), {})), p1);
    const std::string out3 = "Need the tool.</think>" + kCall + "<｜end▁of▁sentence｜>";
    const std::string p2 =
        p1 + out3 + "\n\n<function_results>\n<result>{\"temp_c\": 18}</result>\n</function_results>\n\n<think>";
    EXPECT_EQ(join_segments(fmt->render(conversation(4), {})), p2);  // P1 is a prefix of P2: append-only in a turn
    const std::string p3 = bos + "You are a helpful assistant.\n\n" + tools_block() +
                           "<｜User｜>Weather in Paris?<｜Assistant｜></think>" + kCall +
                           "<｜end▁of▁sentence｜>\n\n<function_results>\n<result>{\"temp_c\": 18}</result>\n"
                           "</function_results>\n\n</think>It is 18°C in Paris.<｜end▁of▁sentence｜><｜User｜>And "
                           "tomorrow?<｜Assistant｜>";
    EXPECT_EQ(join_segments(fmt->render(conversation(6), {})), p3 + "<think>");  // turn 1's reasoning dropped
    EXPECT_EQ(join_segments(fmt->render(conversation(6), {.thinking = false})), p3 + "</think>");

    // Segments: the assistant turns are what the model produced (the loss mask); everything else is prompt.
    const std::vector<ChatSegment> segs = fmt->render(conversation(5), {});
    ASSERT_EQ(segs.size(), 4u);
    EXPECT_FALSE(segs[0].generated);
    EXPECT_TRUE(segs[1].generated);
    EXPECT_EQ(segs[1].text, out3);
    EXPECT_TRUE(segs[3].generated);
    EXPECT_EQ(segs[3].text, "Tool says 18.</think>It is 18°C in Paris.<｜end▁of▁sentence｜>");

    // Non-string arguments as Python's json.dumps; strings raw.
    OrderedJson c = conversation(3);
    c["messages"][2]["tool_calls"][0]["function"]["arguments"] =
        R"({"s":"a\nb \"q\" <x>","n":1.5,"b":true,"z":null,"arr":[1,"two",{"k":"ü"}],"obj":{"a":1}})";
    const std::string text = join_segments(fmt->render(c, {}));
    EXPECT_THAT(text, HasSubstr("string=\"true\">a\nb \"q\" <x></｜DSML｜parameter>"));
    EXPECT_THAT(text, HasSubstr("name=\"n\" string=\"false\">1.5<"));
    EXPECT_THAT(text, HasSubstr("name=\"b\" string=\"false\">true<"));
    EXPECT_THAT(text, HasSubstr("name=\"z\" string=\"false\">null<"));
    EXPECT_THAT(text, HasSubstr(">[1, \"two\", {\"k\": \"ü\"}]<"));
    EXPECT_THAT(text, HasSubstr(">{\"a\": 1}<"));

    // system + response_format in chat mode; a developer-only conversation carries the tools in its turn.
    const OrderedJson rf = {{"messages",
                             {{{"role", "system"}, {"content", "S"}, {"response_format", {{"type", "json_object"}}}},
                              {{"role", "user"}, {"content", "hi"}}}}};
    EXPECT_EQ(join_segments(fmt->render(rf, {.thinking = false})),
              bos +
                  "S\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
                  "{\"type\": \"json_object\"}<｜User｜>hi<｜Assistant｜></think>");
    const OrderedJson dev = {{"messages", {{{"role", "developer"}, {"content", "Find X."}}}},
                             {"tools", OrderedJson::array({OrderedJson::parse(kTool)})}};
    EXPECT_EQ(join_segments(fmt->render(dev, {})),
              bos + "<｜User｜>\n\n" + tools_block() + "\n\n# The user's message is: Find X.<｜Assistant｜><think>");
}

TEST(ChatFormatTest, ParsesCompletionsStrictAndLenient) {
    const auto fmt = make_chat_format("deepseek_v32");
    const std::string out = "Need the tool.</think>" + kCall + "<｜end▁of▁sentence｜>";
    for (const bool strict : {true, false}) {
        const ParsedMessage m = fmt->parse(out, {}, strict);
        EXPECT_EQ(m.reasoning_content, "Need the tool.");
        EXPECT_EQ(m.content, "");
        ASSERT_EQ(m.tool_calls.size(), 1u);
        EXPECT_EQ(m.tool_calls[0].name, "get_weather");
        EXPECT_EQ(m.tool_calls[0].arguments.dump(), R"({"city":"Paris","days":2})");
        EXPECT_TRUE(m.finished);
    }
    const ParsedMessage plain = fmt->parse("It is 18°C.<｜end▁of▁sentence｜>", {.thinking = false}, true);
    EXPECT_EQ(plain.content, "It is 18°C.");
    EXPECT_TRUE(plain.tool_calls.empty());
    // Zero-parameter invokes and several invokes, as the encoder renders them.
    const std::string two =
        "</think>ok\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"g\">\n\n</｜DSML｜invoke>\n<｜DSML｜invoke "
        "name=\"h\">\n<｜DSML｜parameter name=\"x\" string=\"false\">[1, 2]</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
        "</｜DSML｜function_calls><｜end▁of▁sentence｜>";
    const ParsedMessage m2 = fmt->parse(two, {}, true);
    EXPECT_EQ(m2.content, "ok");
    ASSERT_EQ(m2.tool_calls.size(), 2u);
    EXPECT_EQ(m2.tool_calls[0].arguments, OrderedJson::object());
    EXPECT_EQ(m2.tool_calls[1].arguments["x"], OrderedJson::parse("[1, 2]"));
    // Strict refuses what lenient accepts.
    const std::string sloppy =
        "r</think>x\n\n<｜DSML｜function_calls>\n  <｜DSML｜invoke name=\"g\" >\n"
        "<｜DSML｜parameter name=\"a\" string=\"false\">not json</｜DSML｜parameter>\n"
        "</｜DSML｜invoke></｜DSML｜function_calls>";
    EXPECT_THROW(fmt->parse(sloppy, {}, true), DataError);
    const ParsedMessage lenient = fmt->parse(sloppy, {}, false);
    ASSERT_EQ(lenient.tool_calls.size(), 1u);
    EXPECT_EQ(lenient.tool_calls[0].arguments["a"], "not json");
    EXPECT_FALSE(lenient.finished);
    EXPECT_THROW(fmt->parse("no close tag", {}, true), DataError);
    EXPECT_EQ(fmt->parse("still thinking", {}, false).reasoning_content, "still thinking");
    EXPECT_THROW(fmt->parse("a</think>b<think>c<｜end▁of▁sentence｜>", {}, true), DataError);
    EXPECT_THROW(fmt->parse("a</think>b<｜end▁of▁sentence｜>junk", {}, true), DataError);

    // Every prefix of a completion (a stream cut anywhere, inside a 3-byte ｜ too) parses leniently, and the calls
    // it holds are complete calls of the whole completion.
    for (size_t cut = 0; cut <= out.size(); ++cut) {
        const ParsedMessage p = fmt->parse(out.substr(0, cut), {}, false);
        ASSERT_LE(p.tool_calls.size(), 1u) << cut;
        if (!p.tool_calls.empty()) {
            EXPECT_EQ(p.tool_calls[0].arguments.dump(), R"({"city":"Paris","days":2})") << cut;
        }
    }
}

TEST(ChatFormatTest, RoundTripsTheFixturesAssistantTurns) {
    const std::string dir = testing::source_dir() + "/tests/text/dsv32";
    const OrderedJson input = OrderedJson::parse(fs::read_file(dir + "/test_input.json"));
    const auto fmt = make_chat_format("deepseek_v32");
    const std::vector<ChatSegment> segs = fmt->render(input, {});
    std::vector<OrderedJson> assistants;
    for (const auto& m : input["messages"]) {
        if (m["role"] == "assistant") assistants.push_back(m);
    }
    size_t k = 0;
    for (const ChatSegment& s : segs) {
        if (!s.generated) continue;
        ASSERT_LT(k, assistants.size());
        const OrderedJson& want = assistants[k++];
        const bool shows_reasoning = s.text.find("</think>") != std::string::npos;
        const ParsedMessage m = fmt->parse(s.text, {.thinking = shows_reasoning}, /*strict=*/true);
        EXPECT_EQ(m.content, want.value("content", ""));
        if (shows_reasoning) {
            EXPECT_EQ(m.reasoning_content, want["reasoning_content"].get<std::string>());
        }
        const size_t n = want.contains("tool_calls") ? want["tool_calls"].size() : 0;
        ASSERT_EQ(m.tool_calls.size(), n);
        for (size_t i = 0; i < n; ++i) {
            EXPECT_EQ(m.tool_calls[i].name, want["tool_calls"][i]["function"]["name"].get<std::string>());
            EXPECT_EQ(m.tool_calls[i].arguments,
                      OrderedJson::parse(want["tool_calls"][i]["function"]["arguments"].get<std::string>()));
        }
    }
    EXPECT_EQ(k, assistants.size());
}

TEST(ChatFormatTest, BadConversationsNameTheMessage) {
    const auto fmt = make_chat_format("deepseek_v32");
    auto error_of = [&](const OrderedJson& messages, bool thinking = true) {
        try {
            fmt->render({{"messages", messages}}, {.thinking = thinking});
        } catch (const DataError& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    EXPECT_THAT(error_of({{{"role", "robot"}, {"content", "x"}}}), HasSubstr("message 0: unknown role 'robot'"));
    EXPECT_THAT(error_of({{{"role", "user"}, {"content", "x"}}, {{"role", "tool"}, {"content", "r"}}}),
                HasSubstr("message 1: a tool result must follow an assistant message with tool_calls"));
    EXPECT_THAT(error_of({{{"role", "developer"}, {"content", ""}}}),
                HasSubstr("message 0: a developer message needs"));
    EXPECT_THAT(error_of({{{"role", "user"}, {"content", "x"}}, {{"role", "assistant"}, {"content", "y"}}}),
                HasSubstr("message 1: in thinking mode"));
    EXPECT_EQ(error_of({{{"role", "user"}, {"content", "x"}}, {{"role", "assistant"}, {"content", "y"}}}, false),
              "no error");
    EXPECT_THROW(make_chat_format("chatml"), ConfigError);
}

// ---- ChatStreamParser ----------------------------------------------------------------------------------------

// Everything a parse says, as one comparable string.
std::string describe(const ParsedMessage& m) {
    OrderedJson calls = OrderedJson::array();
    for (const ToolCall& c : m.tool_calls) calls.push_back({{"name", c.name}, {"arguments", c.arguments}});
    return absl::StrCat("reasoning=", m.reasoning_content, "\ncontent=", m.content,
                        "\ncalls=", calls.dump(-1, ' ', false, OrderedJson::error_handler_t::replace),
                        "\nfinished=", m.finished, "\nerror=", m.error);
}

// The completion fed in pieces cut at `cuts` (ascending byte offsets), then finish(); the message rebuilt from
// the deltas alone. Checks on the way that message() is always the sum of the deltas so far and that
// Delta::finished never goes back.
ParsedMessage stream_parse(const ChatFormat& fmt,
                           const std::string& text,
                           const ChatOptions& opt,
                           const std::vector<size_t>& cuts) {
    const std::unique_ptr<ChatStreamParser> parser = fmt.stream_parser(opt);
    ParsedMessage sum;
    auto add = [&](const ChatStreamParser::Delta& d) {
        sum.reasoning_content += d.reasoning_content;
        sum.content += d.content;
        sum.tool_calls.insert(sum.tool_calls.end(), d.tool_calls.begin(), d.tool_calls.end());
        EXPECT_TRUE(d.finished || !sum.finished) << "finished went back";
        sum.finished = d.finished;
        const ParsedMessage& m = parser->message();
        EXPECT_EQ(m.reasoning_content, sum.reasoning_content);
        EXPECT_EQ(m.content, sum.content);
        EXPECT_EQ(m.tool_calls.size(), sum.tool_calls.size());
    };
    size_t from = 0;
    for (const size_t cut : cuts) {
        add(parser->feed(std::string_view(text).substr(from, cut - from)));
        from = cut;
    }
    add(parser->feed(std::string_view(text).substr(from)));
    add(parser->finish());
    sum.error = parser->message().error;
    EXPECT_EQ(describe(parser->message()), describe(sum));
    return sum;
}

const std::string kEosText = "<｜end▁of▁sentence｜>";

// Completions for the split tests: DSV32_FORMAT.md §B.6 and §E.3's cases, and the lenient rules' edge cases.
std::vector<std::string> completions() {
    std::vector<std::string> out = {
        "Need the tool.</think>" + kCall + kEosText,
        "Tool says 18.</think>It is 18°C in Paris." + kEosText,
        "</think>ok\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"g\">\n\n</｜DSML｜invoke>\n<｜DSML｜invoke "
        "name=\"h\">\n<｜DSML｜parameter name=\"x\" string=\"false\">[1, 2]</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
        "</｜DSML｜function_calls>" +
            kEosText,
        // values with <, >, quotes, newlines, non-ASCII, nested JSON, a partial closing tag
        "r</think>Let me check.\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter "
        "name=\"s\" string=\"true\">a\nb \"q\" <x> </｜DSML｜param 😀</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"o\" string=\"false\">{\"a\": [1, {\"k\": \"ü\"}], \"b\": null}"
        "</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
        "</｜DSML｜function_calls>" +
            kEosText,
        // sloppy whitespace, an unparsable non-string value, no end marker
        "r</think>x\n\n<｜DSML｜function_calls>\n  <｜DSML｜invoke name=\"g\" >\n<｜DSML｜parameter name=\"a\" "
        "string=\"false\">not json</｜DSML｜parameter>\n</｜DSML｜invoke></｜DSML｜function_calls>",
        "still thinking",
        "no close tag",
        "a</think>b<think>c" + kEosText,
        "a</think>b" + kEosText + "junk</think>more",
        // DSML inside reasoning (no </think>): the block is read as calls
        "thinking\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"g\">\n</｜DSML｜invoke>\n"
        "</｜DSML｜function_calls>" +
            kEosText,
        // garbage after the block, then the end marker
        "r</think>" + kCall + "\nI will wait." + kEosText,
        // an unterminated block at the end marker (one complete call, one cut)
        "r</think>c\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"a\">\n</｜DSML｜invoke>\n<｜DSML｜invoke "
        "name=\"b\">\n<｜DSML｜parameter name=\"k\" string=\"true\">v" +
            kEosText,
        // a malformed block that is closed: abandoned after its complete call
        "r</think>c\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"a\">\n</｜DSML｜invoke>\n<bogus>\n"
        "</｜DSML｜function_calls>" +
            kEosText,
        // a duplicate parameter
        "r</think>\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"a\">\n<｜DSML｜parameter name=\"k\" "
        "string=\"true\">1</｜DSML｜parameter>\n<｜DSML｜parameter name=\"k\" string=\"true\">2</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜function_calls>",
        // held-back text that turns out not to be a marker, and cut-off markers at the end
        "a</thinx>\n\n<｜DSML｜functionXcalls>\n<｜end▁of▁sentenc>\n\n\n</think>b\n\n<｜end",
        "x</thi",
        "<think>echoed</think>answer" + kEosText,
        "<thin",
        "😀😀 é\xC3",  // ends inside a character
        "",
    };
    // The official fixture: each assistant turn, and the whole rendered conversation as one (marker-rich) text.
    const std::string dir = testing::source_dir() + "/tests/text/dsv32";
    const OrderedJson input = OrderedJson::parse(fs::read_file(dir + "/test_input.json"));
    const std::vector<ChatSegment> segs = make_chat_format("deepseek_v32")->render(input, {});
    for (const ChatSegment& s : segs) {
        if (s.generated) out.push_back(s.text);
    }
    out.push_back(join_segments(segs));
    return out;
}

TEST(ChatStreamParserTest, EverySplitEqualsTheWholeLenientParse) {
    const auto fmt = make_chat_format("deepseek_v32");
    for (const std::string& text : completions()) {
        for (const bool thinking : {true, false}) {
            SCOPED_TRACE(::testing::Message() << "thinking=" << thinking << " completion " << text.substr(0, 80));
            const ChatOptions opt{.thinking = thinking};
            const std::string whole = describe(fmt->parse(text, opt, /*strict=*/false));
            for (size_t cut = 0; cut <= text.size(); ++cut) {
                ASSERT_EQ(describe(stream_parse(*fmt, text, opt, {cut})), whole) << "cut at byte " << cut;
            }
            std::vector<size_t> every(text.size());
            for (size_t i = 0; i < text.size(); ++i) every[i] = i;
            ASSERT_EQ(describe(stream_parse(*fmt, text, opt, every)), whole) << "byte by byte";
            std::mt19937 rng(7);
            for (int trial = 0; trial < 200 && !text.empty(); ++trial) {
                std::uniform_int_distribution<size_t> pick(0, text.size());
                std::vector<size_t> cuts = {pick(rng), pick(rng)};
                std::sort(cuts.begin(), cuts.end());
                ASSERT_EQ(describe(stream_parse(*fmt, text, opt, cuts)), whole)
                    << "cuts at " << cuts[0] << " and " << cuts[1];
            }
        }
    }
}

TEST(ChatStreamParserTest, HandsOutTextAsSoonAsItIsUnambiguous) {
    const auto fmt = make_chat_format("deepseek_v32");
    const auto p = fmt->stream_parser({.thinking = true});
    EXPECT_EQ(p->feed("Need").reasoning_content, "Need");  // the prompt ended in <think>: reasoning right away
    EXPECT_EQ(p->feed(" the tool.</thi").reasoning_content, " the tool.");  // "</thi" may be </think>: held
    ChatStreamParser::Delta d = p->feed("nk>Let me");
    EXPECT_EQ(d.reasoning_content, "");
    EXPECT_EQ(d.content, "Let me");
    EXPECT_EQ(p->feed(" check\n").content, " check");  // "\n" may begin "\n\n<｜DSML｜function_calls"
    EXPECT_EQ(p->feed("\n<｜DS").content, "");
    EXPECT_EQ(p->feed("ML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" "
                      "string=\"true\">Paris</｜DSML｜parameter>\n</｜DSML｜invoke")
                  .tool_calls.size(),
              0u);
    d = p->feed(">");  // the invoke's end hands out the call, before the block closes
    ASSERT_EQ(d.tool_calls.size(), 1u);
    EXPECT_EQ(d.tool_calls[0].name, "get_weather");
    EXPECT_EQ(d.tool_calls[0].arguments.dump(), R"({"city":"Paris"})");
    EXPECT_FALSE(d.finished);
    EXPECT_FALSE(p->feed("\n</｜DSML｜function_calls><｜end▁of").finished);
    EXPECT_TRUE(p->feed("▁sentence｜>").finished);
    EXPECT_EQ(p->feed("ignored after the end").content, "");
    EXPECT_TRUE(p->finish().finished);
    EXPECT_EQ(p->message().reasoning_content, "Need the tool.");
    EXPECT_EQ(p->message().content, "Let me check");
    EXPECT_THROW(p->feed("x"), InternalError);

    // Chat mode: content at once; a character cut in two waits for its second byte; the end marker's start waits.
    const auto c = fmt->stream_parser({.thinking = false});
    EXPECT_EQ(c->feed("It is 18\xC2").content, "It is 18");
    EXPECT_EQ(c->feed("\xB0"
                      "C.<｜end")
                  .content,
              "°C.");
    d = c->feed("▁of▁sentence｜>");
    EXPECT_EQ(d.content, "");
    EXPECT_TRUE(d.finished);

    // An echoed leading <think> is skipped; finish() hands out held-back text as text.
    const auto e = fmt->stream_parser({.thinking = true});
    EXPECT_EQ(e->feed("<thi").reasoning_content, "");
    EXPECT_EQ(e->feed("nk>abc</th").reasoning_content, "abc");
    EXPECT_EQ(e->finish().reasoning_content, "</th");
    EXPECT_FALSE(e->message().finished);
}

TEST(ChatStreamParserTest, LenientRules) {
    const auto fmt = make_chat_format("deepseek_v32");
    // DSML inside reasoning: the reasoning so far stays reasoning, the block is read as calls.
    ParsedMessage m = fmt->parse(
        "hmm\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"g\">\n</｜DSML｜invoke>\n</｜DSML｜function_calls>" +
            kEosText,
        {}, false);
    EXPECT_EQ(m.reasoning_content, "hmm");
    EXPECT_EQ(m.content, "");
    ASSERT_EQ(m.tool_calls.size(), 1u);
    EXPECT_TRUE(m.finished);
    EXPECT_EQ(m.error, "");
    // A malformed block keeps its complete calls and says where it was abandoned; text after it is ignored.
    m = fmt->parse(
        "r</think>c\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"a\">\n</｜DSML｜invoke>\n<bogus>"
        "</｜DSML｜function_calls>after" +
            kEosText,
        {}, false);
    EXPECT_EQ(m.content, "c");
    ASSERT_EQ(m.tool_calls.size(), 1u);
    EXPECT_EQ(m.tool_calls[0].name, "a");
    EXPECT_THAT(m.error, HasSubstr("expected <｜DSML｜invoke or </｜DSML｜function_calls>"));
    EXPECT_TRUE(m.finished);
    EXPECT_THROW(fmt->parse("r</think>c\n\n<｜DSML｜function_calls>\n<bogus></｜DSML｜function_calls>", {}, true),
                 DataError);
    // The end marker ends the completion anywhere, even inside a value; text after it is ignored.
    m = fmt->parse(
        "r</think>\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"a\">\n<｜DSML｜parameter "
        "name=\"k\" string=\"true\">v" +
            kEosText + "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>",
        {}, false);
    EXPECT_TRUE(m.tool_calls.empty());
    EXPECT_TRUE(m.finished);
    EXPECT_THAT(m.error, HasSubstr("end-of-sentence marker inside"));
    m = fmt->parse("a" + kEosText + "b</think>c", {}, false);
    EXPECT_EQ(m.reasoning_content, "a");
    EXPECT_EQ(m.content, "");
    // Cut off inside the block: complete calls only, no error, not finished.
    m = fmt->parse(
        "r</think>\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"a\">\n</｜DSML｜invoke>\n<｜DSML｜inv", {},
        false);
    EXPECT_EQ(m.tool_calls.size(), 1u);
    EXPECT_EQ(m.error, "");
    EXPECT_FALSE(m.finished);
}

// 200 KB fed one byte at a time: each byte is looked at a bounded number of times (no re-parse of the buffer),
// so this takes milliseconds; a quadratic parser would take minutes. Not a timing assertion.
TEST(ChatStreamParserTest, ByteByByteFeedingIsLinear) {
    std::string reasoning, value;
    while (reasoning.size() < 100000) reasoning += "a < b\n</th x\n\n<｜DS 😀 <｜end▁of ";
    while (value.size() < 100000) value += "line <x> </｜DSML｜param \"q\"\n";
    const std::string text = reasoning +
                             "</think>ok\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n"
                             "<｜DSML｜parameter name=\"v\" string=\"true\">" +
                             value + "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>" + kEosText;
    const auto fmt = make_chat_format("deepseek_v32");
    const auto p = fmt->stream_parser({});
    size_t calls = 0;
    for (const char c : text) calls += p->feed(std::string_view(&c, 1)).tool_calls.size();
    p->finish();
    EXPECT_EQ(calls, 1u);
    EXPECT_EQ(p->message().reasoning_content, reasoning);
    EXPECT_EQ(p->message().content, "ok");
    ASSERT_EQ(p->message().tool_calls.size(), 1u);
    EXPECT_EQ(p->message().tool_calls[0].arguments["v"], value);
    EXPECT_TRUE(p->message().finished);
}

}  // namespace
}  // namespace dsrl::text
