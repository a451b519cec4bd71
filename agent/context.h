// Context management for long agent trajectories (issue 20 item 4; ../shared/DSV32_FORMAT.md D.3): when a
// trajectory's tokens pass `threshold` (0.8 in DeepSeek-V3.2) of the context window, Discard-75% drops the oldest
// 75% of its tool-call history and Discard-all drops all of it. The unit of tool-call history is a *tool round*: an
// assistant message that makes tool calls together with the tool messages answering it. System, developer and user
// messages, and assistant messages without tool calls (answers), are always kept. (Summary and
// Parallel-fewest-step need the model: they come with the multi-turn rollout.)
//
//   if (context_exceeded(tokens, window, 0.8)) messages = discard_tool_rounds(messages, 0.75, &dropped);
#pragma once

#include <cstdint>
#include <vector>

#include "agent/environment.h"

namespace dsrl::agent {

/// One tool round of a conversation: messages [first, last] (the assistant message with "tool_calls", then the
/// "tool" messages that follow it).
struct ToolRound {
    size_t first = 0;
    size_t last = 0;
};

/// The tool rounds of `messages` (an OpenAI-layout array), oldest first. DataError for a non-array or a message
/// without a string "role".
std::vector<ToolRound> tool_rounds(const Json& messages);

/// `messages` without the oldest ceil(fraction × rounds) tool rounds (fraction in [0, 1]: 0.75 is Discard-75%, 1 is
/// Discard-all); `removed` (when given) receives how many rounds went.
Json discard_tool_rounds(const Json& messages, double fraction, int64_t* removed = nullptr);
/// The same on key-ordered JSON (the chat formats' layout: tool arguments keep their order when re-rendered).
using OrderedJson = nlohmann::ordered_json;
OrderedJson discard_tool_rounds(const OrderedJson& messages, double fraction, int64_t* removed = nullptr);

/// True when `tokens` exceed `threshold` × `window` (the trigger of context management).
bool context_exceeded(int64_t tokens, int64_t window, double threshold);

}  // namespace dsrl::agent
