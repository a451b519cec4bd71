// Chat formats (SPEC §4; ../shared/DSV32_FORMAT.md §B–D): a conversation in the OpenAI layout rendered to text —
// as segments that say which text the model produced, so training can put the loss on those tokens only — and
// a completion parsed back into reasoning, content and tool calls, whole or as it streams in.
//
//   auto fmt = make_chat_format("deepseek_v32");
//   // conversation = {"messages": [...], "tools": [...]}
//   std::string prompt = join_segments(fmt->render(conversation, {.thinking = true}));
//   ParsedMessage m = fmt->parse(completion_text, {.thinking = true}, /*strict=*/false);
//
//   auto stream = fmt->stream_parser({.thinking = true});
//   for (const std::string& piece : detokenized_pieces) {
//       ChatStreamParser::Delta d = stream->feed(piece);   // new reasoning / content text, completed tool calls
//   }
//   stream->finish();                                       // stream->message() == fmt->parse(all, opt, false)
//
// deepseek_v32 is DeepSeek's reference encoder (encoding_dsv32.py) exactly: no role token for system text, DSML
// tool calls, <think>/</think> after user turns and tool results, reasoning shown only after the last user
// message (the thinking-retention rule), Python json.dumps for tool schemas and non-string arguments.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsrl::text {

using OrderedJson = nlohmann::ordered_json;

/// deepseek_v32's fixed strings (DSV32_FORMAT.md §B): the renderer emits each of them whole, between the variable
/// parts, and the parser looks for them in the decoded completion. The byte-level chat tokenizer
/// (text/byte_chat_tokenizer.h) makes each one a single token.
namespace dsv32 {
inline constexpr const char* kBos = "<｜begin▁of▁sentence｜>";
inline constexpr const char* kEos = "<｜end▁of▁sentence｜>";
inline constexpr const char* kUser = "<｜User｜>";
inline constexpr const char* kAssistant = "<｜Assistant｜>";
inline constexpr const char* kThinkOpen = "<think>";
inline constexpr const char* kThinkClose = "</think>";
// A tool-call block: "\n\n" kCallsTag "\n", per call kInvokeName NAME "\">\n", per argument kParamName KEY
// (kStringTrue | kStringFalse) VALUE kParamClose "\n", then kInvokeClose "\n", and kCallsClose.
inline constexpr const char* kCallsTag = "<｜DSML｜function_calls>";
inline constexpr const char* kCallsClose = "</｜DSML｜function_calls>";
inline constexpr const char* kInvokeName = "<｜DSML｜invoke name=\"";
inline constexpr const char* kInvokeClose = "</｜DSML｜invoke>";
inline constexpr const char* kParamName = "<｜DSML｜parameter name=\"";
inline constexpr const char* kParamClose = "</｜DSML｜parameter>";
inline constexpr const char* kStringTrue = "\" string=\"true\">";
inline constexpr const char* kStringFalse = "\" string=\"false\">";
// Tool results: "\n\n" kResultsOpen, per result "\n" kResultOpen TEXT kResultClose, "\n" kResultsClose "\n\n".
inline constexpr const char* kResultsOpen = "<function_results>";
inline constexpr const char* kResultsClose = "</function_results>";
inline constexpr const char* kResultOpen = "<result>";
inline constexpr const char* kResultClose = "</result>";
// TOOLS_BLOCK (§B.4.6) up to the schemas, the golden fixture's blank lines included; the schemas (one
// json.dumps per line) and "\n" kFunctionsClose "\n" follow.
inline constexpr const char* kToolsHead =
    "## Tools\n\nYou have access to a set of tools you can use to answer the user's question.\n"
    "You can invoke functions by writing a \"<｜DSML｜function_calls>\" block like the following as part of your "
    "reply to the user:\n"
    "<｜DSML｜function_calls>\n"
    "<｜DSML｜invoke name=\"$FUNCTION_NAME\">\n"
    "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter>\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"$FUNCTION_NAME2\">\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜function_calls>\n\n"
    "String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects "
    "should use JSON format. The \"string\" attribute should be set to \"true\" for string type parameters and "
    "\"false\" for other types (numbers, booleans, arrays, objects).\n\n"
    "If the thinking_mode is enabled, then after function results you should strongly consider outputting a "
    "thinking block. Here is an example:\n\n"
    "<｜DSML｜function_calls>\n...\n</｜DSML｜function_calls>\n\n"
    "<function_results>\n...\n</function_results>\n\n"
    "<think>...thinking about results</think>\n\n"
    "Here are the functions available in JSONSchema format:\n<functions>\n";
inline constexpr const char* kFunctionsClose = "</functions>";
// RESPONSE_FORMAT_BLOCK (§B.4.7) up to the schema's json.dumps.
inline constexpr const char* kResponseFormatHead =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";
}  // namespace dsv32

/// Python's json.dumps(value, ensure_ascii=False): ", " and ": " separators, keys in their order, non-ASCII kept.
std::string python_json(const OrderedJson& value);

struct ChatOptions {
    bool thinking = true;  ///< thinking mode (reasoning, <think>) or chat mode (</think> right away)
    bool add_bos = true;   ///< BOS text at the start
};

struct ChatSegment {
    std::string text;
    bool generated = false;  ///< produced by the model (an assistant turn): the tokens that carry the loss
};

/// The rendered text of all segments.
std::string join_segments(const std::vector<ChatSegment>& segments);

class Tokenizer;
/// Ids of a rendered conversation and, per id, whether the model produced it (the loss mask). Each segment is
/// tokenized on its own; for deepseek_v32 segment borders fall on added tokens (</think>, EOS, <｜User｜>, ...), so
/// the ids equal those of the whole text (tested with the real tokenizer).
struct ChatIds {
    std::vector<int64_t> ids;
    std::vector<uint8_t> generated;
};
ChatIds tokenize_segments(const Tokenizer& tokenizer, const std::vector<ChatSegment>& segments);

struct ToolCall {
    std::string name;
    OrderedJson arguments = OrderedJson::object();
};

struct ParsedMessage {
    std::string reasoning_content;
    std::string content;
    std::vector<ToolCall> tool_calls;
    bool finished = false;  ///< the end-of-sentence marker was seen
    /// Lenient parsing only: why the tool-call block was abandoned (a grammar violation inside it; the complete
    /// calls before it are kept and the rest of the completion is ignored); empty when nothing was abandoned.
    std::string error;
    /// {"reasoning_content", "content", "tool_calls": [{"name", "arguments": {...}}]}.
    OrderedJson to_json() const;
};

/// A completion parsed as it streams in, under the lenient rules of ChatFormat::parse: feed it the generated text
/// in pieces of any size (cut anywhere, inside a marker or a UTF-8 character) and it hands out what is new.
/// Text that may still turn out to be the start of a marker (`</thi`, `\n\n<｜DSML｜fun`, the start of the
/// end-of-sentence marker) or is an incomplete UTF-8 character is held back until the following text decides;
/// nothing is ever handed out and then taken back. For any completion and any way of cutting it, the
/// concatenated deltas and the list of their tool calls equal `parse(completion, opt, /*strict=*/false)`, which
/// is this parser fed the whole text at once. Feeding is linear in the text's length (a marker-sized window is
/// rescanned per call, never the whole buffer). Made by ChatFormat::stream_parser.
class ChatStreamParser {
public:
    struct Delta {
        std::string reasoning_content;     ///< reasoning text new since the previous call
        std::string content;               ///< content text new since the previous call
        std::vector<ToolCall> tool_calls;  ///< tool calls whose invoke block this call completed, in order
        bool finished = false;             ///< the end-of-sentence marker has been seen (now or earlier)
    };
    virtual ~ChatStreamParser() = default;
    /// The next piece of the completion. Text after the end-of-sentence marker is ignored.
    virtual Delta feed(std::string_view chunk) = 0;
    /// End of the stream: hands out the held-back text (a cut-off marker is text; an unterminated tool-call
    /// block keeps only its complete calls). Later calls return an empty delta; feed() after it is a dsrl bug.
    virtual Delta finish() = 0;
    /// Everything handed out so far (the sum of the deltas); after finish() the lenient parse of the completion.
    virtual const ParsedMessage& message() const = 0;
};

class ChatFormat {
public:
    virtual ~ChatFormat() = default;
    virtual std::string name() const = 0;
    /// `conversation`: {"messages": [...], "tools": [...]} (tools optional) or a bare list of messages. A message
    /// the format cannot render (unknown role, a tool result without a call, ...) is a DataError naming its index.
    virtual std::vector<ChatSegment> render(const OrderedJson& conversation, const ChatOptions& opt) const = 0;
    /// A completion (generated text, special-token strings kept; the trailing end-of-sentence marker optional).
    /// strict: DeepSeek's reference grammar, a DataError on any deviation (whole text only). lenient: never
    /// throws; whitespace between tags tolerated, bad JSON values kept as strings, complete tool calls of an
    /// unterminated or malformed block kept (ParsedMessage::error says what was abandoned); it is
    /// stream_parser(opt) fed the whole completion, so both agree by construction. docs/text.md has the rules.
    virtual ParsedMessage parse(const std::string& completion, const ChatOptions& opt, bool strict) const = 0;
    /// An incremental lenient parser for one completion.
    virtual std::unique_ptr<ChatStreamParser> stream_parser(const ChatOptions& opt) const = 0;
};

/// "deepseek_v32"; ConfigError naming the known formats otherwise.
std::unique_ptr<ChatFormat> make_chat_format(const std::string& name);

}  // namespace dsrl::text
