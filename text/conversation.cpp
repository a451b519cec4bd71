#include "text/conversation.h"

#include <absl/strings/str_cat.h>

#include "core/error.h"

namespace dsrl::text {
namespace {

const OrderedJson& messages_of(const OrderedJson& conversation) {
    static const OrderedJson kNone;
    const OrderedJson& m = conversation.is_array()                                         ? conversation
                           : conversation.is_object() && conversation.contains("messages") ? conversation["messages"]
                                                                                           : kNone;
    if (!m.is_array()) throw DataError("conversation: expected {\"messages\": [...]} or a list of messages");
    return m;
}

}  // namespace

std::vector<ChatMessage> plain_messages(const OrderedJson& conversation) {
    if (conversation.is_object()) {
        for (const char* key : {"tools", "response_format"}) {
            if (conversation.contains(key) && !conversation[key].is_null() && !conversation[key].empty()) {
                throw DataError(absl::StrCat("conversation: '", key,
                                             "' needs a chat format (model.chat_format, e.g. deepseek_v32); this "
                                             "tokenizer's template shows only plain system/user/assistant text"));
            }
        }
    }
    std::vector<ChatMessage> out;
    const OrderedJson& messages = messages_of(conversation);
    for (size_t i = 0; i < messages.size(); ++i) {
        const OrderedJson& m = messages[i];
        const auto bad = [&](const std::string& why) {
            throw DataError(absl::StrCat("conversation message ", i, ": ", why));
        };
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) bad("expected an object with a 'role'");
        for (const char* key : {"tool_calls", "reasoning_content"}) {
            if (m.contains(key) && !m[key].is_null() && !m[key].empty()) {
                bad(absl::StrCat("'", key,
                                 "' needs a chat format (model.chat_format, e.g. deepseek_v32); this tokenizer's "
                                 "template shows only plain system/user/assistant text"));
            }
        }
        const OrderedJson content = m.value("content", OrderedJson());
        if (!content.is_null() && !content.is_string()) bad("'content' must be a string");
        out.push_back({m["role"].get<std::string>(), content.is_string() ? content.get<std::string>() : ""});
    }
    return out;
}

ChatIds render_conversation(const Tokenizer& tokenizer, const OrderedJson& conversation) {
    ChatOptions options;
    if (const ChatFormat* format = tokenizer.chat_format(&options)) {
        return tokenize_segments(tokenizer, format->render(conversation, options));
    }
    // The fixed template: apply_chat of a prefix is a prefix of the whole (one role token, content, end markers
    // per message), so message k spans [len(chat(m[:k])), len(chat(m[:k+1]))); an assistant message's tokens after
    // its role token (the generation prompt of m[:k]) are the model's.
    const std::vector<ChatMessage> messages = plain_messages(conversation);
    const bool prompt = messages.empty() || messages.back().role != "assistant";
    ChatIds out;
    out.ids = tokenizer.apply_chat(messages, prompt);
    out.generated.assign(out.ids.size(), 0);
    std::vector<ChatMessage> prefix;
    for (const ChatMessage& m : messages) {
        if (m.role == "assistant") {
            const size_t begin = tokenizer.apply_chat(prefix, true).size();
            prefix.push_back(m);
            const size_t end = tokenizer.apply_chat(prefix, false).size();
            for (size_t i = begin; i < end && i < out.generated.size(); ++i) out.generated[i] = 1;
        } else {
            prefix.push_back(m);
        }
    }
    return out;
}

}  // namespace dsrl::text
