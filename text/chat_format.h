// Chat formats (SPEC §4; ../shared/DSV32_FORMAT.md §B–D): a conversation in the OpenAI layout rendered to text —
// as segments that say which text the model produced, so training can put the loss on those tokens only — and
// a completion parsed back into reasoning, content and tool calls.
//
//   auto fmt = make_chat_format("deepseek_v32");
//   std::vector<ChatSegment> segs = fmt->render(conversation, {.thinking = true});   // {"messages": [...], "tools":
//   [...]} std::string prompt = join_segments(segs); ParsedMessage m = fmt->parse(completion_text, {.thinking = true},
//   /*strict=*/false);
//
// deepseek_v32 is DeepSeek's reference encoder (encoding_dsv32.py) exactly: no role token for system text, DSML
// tool calls, <think>/</think> after user turns and tool results, reasoning shown only after the last user
// message (the thinking-retention rule), Python json.dumps for tool schemas and non-string arguments.
#pragma once

#include <memory>
#include <string>
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
    /// {"reasoning_content", "content", "tool_calls": [{"name", "arguments": {...}}]}.
    OrderedJson to_json() const;
};

class ChatFormat {
public:
    virtual ~ChatFormat() = default;
    virtual std::string name() const = 0;
    /// `conversation`: {"messages": [...], "tools": [...]} (tools optional) or a bare list of messages. A message
    /// the format cannot render (unknown role, a tool result without a call, ...) is a DataError naming its index.
    virtual std::vector<ChatSegment> render(const OrderedJson& conversation, const ChatOptions& opt) const = 0;
    /// A completion (generated text, special-token strings kept; the trailing end-of-sentence marker optional).
    /// strict: DeepSeek's reference grammar, a DataError on any deviation; lenient: whitespace and missing
    /// markers tolerated, complete tool calls of an unterminated block kept, bad JSON values kept as strings.
    virtual ParsedMessage parse(const std::string& completion, const ChatOptions& opt, bool strict) const = 0;
};

/// "deepseek_v32"; ConfigError naming the known formats otherwise.
std::unique_ptr<ChatFormat> make_chat_format(const std::string& name);

}  // namespace dsrl::text
