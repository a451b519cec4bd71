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
