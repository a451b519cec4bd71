// Whole conversations as model input (SPEC §4; ../shared/DSV32_FORMAT.md §B): a conversation in the OpenAI layout
// ({"messages": [...], "tools": [...]}, with tool calls, tool results and reasoning_content) rendered to ids with
// the tokenizer's chat format, plus the mask of the tokens the model produced — what SFT puts the loss on, and the
// prompt of a generation request when the conversation ends with a user/developer message or tool results.
//
//   ChatIds c = render_conversation(*tok, row);     // row = {"messages": [..., {"role": "assistant", ...}]}
//   // c.ids: the rendered conversation (BOS included); c.generated[i] = 1 for the assistant turns' tokens
//
// With a chat format (deepseek_v32) the format renders the conversation as segments (text/chat_format.h) and
// each is tokenized on its own. Without one (the byte-level tokenizer's fixed template) the messages go through
// apply_chat: an assistant message's tokens after its role token are generated; tools, tool calls, tool results
// and reasoning_content cannot be shown in that template and are a DataError naming the message.
#pragma once

#include "text/chat_format.h"
#include "text/tokenizer.h"

namespace dsrl::text {

/// Renders `conversation` ({"messages": [...], "tools": [...]} or a bare list of messages). A conversation that
/// does not end with an assistant message ends with the generation prompt (the model's turn comes next).
/// DataError naming the message for anything the chat format cannot render.
ChatIds render_conversation(const Tokenizer& tokenizer, const OrderedJson& conversation);

/// The plain {role, content} messages of a conversation (for apply_chat); DataError naming the message index for
/// a field the fixed template cannot show (tool_calls, reasoning_content, a tool role) or a non-string content.
std::vector<ChatMessage> plain_messages(const OrderedJson& conversation);

}  // namespace dsrl::text
