// The DeepSeek-V3.2 chat format against DeepSeek's official fixture and DSV32_FORMAT.md's worked examples (§B.6),
// and its parser (§C.1) on the completions they contain.
#include "text/chat_format.h"

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
            EXPECT_EQ(m.reasoning_content, want["reasoning_content"]);
        }
        const size_t n = want.contains("tool_calls") ? want["tool_calls"].size() : 0;
        ASSERT_EQ(m.tool_calls.size(), n);
        for (size_t i = 0; i < n; ++i) {
            EXPECT_EQ(m.tool_calls[i].name, want["tool_calls"][i]["function"]["name"]);
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

}  // namespace
}  // namespace dsrl::text
