#include "text/chat_format.h"

#include <algorithm>
#include <cctype>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

#include "core/error.h"
#include "text/tokenizer.h"

namespace dsrl::text {
namespace {

constexpr const char* kBos = "<｜begin▁of▁sentence｜>";
constexpr const char* kEos = "<｜end▁of▁sentence｜>";
constexpr const char* kUser = "<｜User｜>";
constexpr const char* kAssistant = "<｜Assistant｜>";
constexpr const char* kThinkOpen = "<think>";
constexpr const char* kThinkClose = "</think>";
constexpr const char* kDsml = "｜DSML｜";
constexpr const char* kCallsOpen = "\n\n<｜DSML｜function_calls";  // the block opener, as the parser looks for it
constexpr const char* kCallsClose = "</｜DSML｜function_calls>";
constexpr const char* kInvokeOpen = "<｜DSML｜invoke";
constexpr const char* kInvokeClose = "</｜DSML｜invoke>";
constexpr const char* kParamOpen = "<｜DSML｜parameter";
constexpr const char* kParamClose = "</｜DSML｜parameter>";

// TOOLS_BLOCK (DSV32_FORMAT.md §B.4.6), up to the schemas; the golden fixture's blank lines included.
constexpr const char* kToolsHead =
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
constexpr const char* kResponseFormatHead =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

[[noreturn]] void bad_message(size_t index, const std::string& what) {
    throw DataError(absl::StrCat("chat format deepseek_v32: message ", index, ": ", what));
}

std::string text_field(const OrderedJson& m, const char* key, size_t index) {
    const auto it = m.find(key);
    if (it == m.end() || it->is_null()) return "";
    if (!it->is_string()) bad_message(index, absl::StrCat("'", key, "' must be a string, got ", it->type_name()));
    return it->get<std::string>();
}

std::string tools_block(const OrderedJson& tools, size_t index) {
    if (!tools.is_array()) bad_message(index, "'tools' must be a list");
    std::vector<std::string> lines;
    for (const OrderedJson& t : tools) {
        const OrderedJson& fn = t.is_object() && t.contains("function") ? t["function"] : t;
        if (!fn.is_object()) bad_message(index, "each tool must be an object (OpenAI layout)");
        lines.push_back(python_json(fn));
    }
    return absl::StrCat(kToolsHead, absl::StrJoin(lines, "\n"), "\n</functions>\n");
}

// "\n\n" + TOOLS_BLOCK and/or "\n\n" + RESPONSE_FORMAT_BLOCK of a system or developer message.
std::string attachments(const OrderedJson& m, size_t index) {
    std::string out;
    if (const auto t = m.find("tools"); t != m.end() && !t->is_null() && !t->empty()) {
        out += "\n\n" + tools_block(*t, index);
    }
    if (const auto rf = m.find("response_format"); rf != m.end() && !rf->is_null()) {
        out += absl::StrCat("\n\n", kResponseFormatHead, python_json(*rf));
    }
    return out;
}

OrderedJson arguments_of(const OrderedJson& call, size_t index) {
    const OrderedJson& fn = call.contains("function") ? call["function"] : call;
    const auto args = fn.find("arguments");
    if (args == fn.end() || args->is_null()) return OrderedJson::object();
    if (args->is_object()) return *args;
    if (!args->is_string()) bad_message(index, "tool call 'arguments' must be a JSON string or an object");
    OrderedJson parsed;
    try {
        parsed = OrderedJson::parse(args->get<std::string>());
    } catch (const OrderedJson::exception& e) {
        bad_message(index, absl::StrCat("tool call arguments are not JSON: ", e.what()));
    }
    if (!parsed.is_object()) bad_message(index, "tool call arguments must be a JSON object");
    return parsed;
}

std::string render_tool_calls(const OrderedJson& calls, size_t index) {
    std::vector<std::string> invokes;
    for (const OrderedJson& call : calls) {
        const OrderedJson& fn = call.contains("function") ? call["function"] : call;
        if (!fn.contains("name") || !fn["name"].is_string()) bad_message(index, "a tool call needs a string 'name'");
        std::vector<std::string> params;
        const OrderedJson args = arguments_of(call, index);  // kept alive: items() refers to it
        for (const auto& [key, value] : args.items()) {
            const bool is_string = value.is_string();
            params.push_back(absl::StrCat("<｜DSML｜parameter name=\"", key, "\" string=\"",
                                          is_string ? "true" : "false", "\">",
                                          is_string ? value.get<std::string>() : python_json(value), kParamClose));
        }
        invokes.push_back(absl::StrCat("<｜DSML｜invoke name=\"", fn["name"].get<std::string>(), "\">\n",
                                       absl::StrJoin(params, "\n"), "\n", kInvokeClose));
    }
    return absl::StrCat("\n\n<｜DSML｜function_calls>\n", absl::StrJoin(invokes, "\n"), "\n", kCallsClose);
}

size_t tool_calls_count(const OrderedJson& m) {
    const auto it = m.find("tool_calls");
    return it == m.end() || !it->is_array() ? 0 : it->size();
}

// ---- Parsing ----------------------------------------------------------------------------------------------

[[noreturn]] void bad_completion(const std::string& what) {
    throw DataError(absl::StrCat("chat format deepseek_v32: completion: ", what));
}

size_t find_first(const std::string& s, size_t from, std::initializer_list<const char*> needles, const char** which) {
    size_t best = std::string::npos;
    for (const char* n : needles) {
        const size_t at = s.find(n, from);
        if (at < best) {
            best = at;
            *which = n;
        }
    }
    return best;
}

// A cursor over the tool-call block. Strict: the reference grammar byte for byte (DSV32_FORMAT.md §C.1, the
// rendering of §B.4.4); lenient: whitespace between elements is skipped.
class CallsReader {
public:
    CallsReader(const std::string& s, size_t pos, bool strict) : s_(s), pos_(pos), strict_(strict) {}
    size_t pos() const { return pos_; }
    bool at_end() const { return pos_ >= s_.size(); }
    void skip_space() {
        if (!strict_) {
            while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) {
                ++pos_;
            }
        }
    }
    // Consumes `lit` when it is next (after whitespace in lenient mode).
    bool accept(const std::string& lit) {
        const size_t save = pos_;
        skip_space();
        if (s_.compare(pos_, lit.size(), lit) == 0) {
            pos_ += lit.size();
            return true;
        }
        pos_ = save;
        return false;
    }
    [[noreturn]] void fail(const std::string& what) const {
        bad_completion(absl::StrCat(what, " at byte ", pos_, " of the completion: \"", s_.substr(pos_, 40), "\""));
    }
    // name="..." (and string="..."): the attribute's value.
    std::string attribute(const std::string& key) {
        if (!accept(strict_ ? " " + key + "=\"" : key + "=\"")) fail(absl::StrCat("expected ", key, "=\"...\""));
        const size_t end = s_.find('"', pos_);
        if (end == std::string::npos) fail("unterminated attribute");
        std::string v = s_.substr(pos_, end - pos_);
        pos_ = end + 1;
        return v;
    }
    std::string until(const std::string& close) {
        const size_t end = s_.find(close, pos_);
        if (end == std::string::npos) fail(absl::StrCat("missing ", close));
        std::string v = s_.substr(pos_, end - pos_);
        pos_ = end + close.size();
        return v;
    }

private:
    const std::string& s_;
    size_t pos_;
    bool strict_;
};

// Parses the tool-call block after "\n\n<｜DSML｜function_calls"; returns the index past its closing tag, or npos
// when the text ends inside the block (lenient mode keeps the complete invokes; strict mode fails).
size_t parse_calls(const std::string& s, size_t pos, bool strict, std::vector<ToolCall>& calls) {
    CallsReader r(s, pos, strict);
    try {
        if (!r.accept(">\n") && !(!strict && r.accept(">"))) r.fail("expected >\\n after <｜DSML｜function_calls");
        while (true) {
            if (r.accept(kCallsClose)) return r.pos();
            if (!r.accept(kInvokeOpen)) r.fail("expected <｜DSML｜invoke or </｜DSML｜function_calls>");
            ToolCall call{r.attribute("name"), OrderedJson::object()};
            if (!r.accept(">\n") && !(!strict && r.accept(">"))) r.fail("expected \">\\n\" after the invoke name");
            bool first = true;
            while (true) {
                if (!first && !r.accept("\n") && strict) r.fail("expected a newline between parameters");
                if (r.accept(kInvokeClose) || (first && r.accept(std::string("\n") + kInvokeClose))) break;
                if (!r.accept(kParamOpen)) r.fail("expected <｜DSML｜parameter or </｜DSML｜invoke>");
                const std::string key = r.attribute("name");
                const std::string flag = r.attribute("string");
                if (!r.accept(">")) r.fail("expected > after the parameter's attributes");
                const std::string raw = r.until(kParamClose);
                if (call.arguments.contains(key)) r.fail(absl::StrCat("duplicate parameter \"", key, "\""));
                if (flag == "true") {
                    call.arguments[key] = raw;
                } else if (flag == "false" || !strict) {
                    try {
                        call.arguments[key] = OrderedJson::parse(raw);
                    } catch (const OrderedJson::exception&) {
                        if (strict) r.fail(absl::StrCat("parameter \"", key, "\" is not valid JSON: ", raw));
                        call.arguments[key] = raw;
                    }
                } else {
                    r.fail(absl::StrCat("string=\"", flag, "\": expected true or false"));
                }
                first = false;
                if (r.accept(std::string("\n") + kInvokeClose) || (!strict && r.accept(kInvokeClose))) break;
            }
            calls.push_back(std::move(call));
            if (!r.accept("\n") && strict) r.fail("expected a newline after </｜DSML｜invoke>");
        }
    } catch (const DataError&) {
        // Lenient: a text that ends inside the block (a stream cut off, a length limit) keeps its complete calls.
        if (!strict && s.find(kCallsClose, pos) == std::string::npos) return std::string::npos;
        throw;
    }
}

void reject_markers(const std::string& field, const std::string& text) {
    for (const char* m : {kBos, kEos, kThinkOpen, kThinkClose, kDsml}) {
        if (text.find(m) != std::string::npos) {
            bad_completion(absl::StrCat(field, " contains \"", m, "\""));
        }
    }
}

class DeepSeekV32 final : public ChatFormat {
public:
    std::string name() const override { return "deepseek_v32"; }

    std::vector<ChatSegment> render(const OrderedJson& conversation, const ChatOptions& opt) const override {
        OrderedJson messages = conversation.is_array() ? conversation : conversation.value("messages", OrderedJson());
        if (!messages.is_array()) {
            throw DataError("chat format deepseek_v32: expected {\"messages\": [...]} or a list of messages");
        }
        // Request-level tools and response_format go to the first system/developer message (a system message is
        // put first when there is none), as the reference encoder reads them there.
        for (const char* key : {"tools", "response_format"}) {
            if (!conversation.is_object() || !conversation.contains(key) || conversation[key].is_null()) continue;
            auto host = std::find_if(messages.begin(), messages.end(), [](const OrderedJson& m) {
                return m.is_object() && (m.value("role", "") == "system" || m.value("role", "") == "developer");
            });
            if (host == messages.end()) {
                messages.insert(messages.begin(), OrderedJson{{"role", "system"}, {"content", ""}});
                host = messages.begin();
            }
            (*host)[key] = conversation[key];
        }
        int64_t last_user = -1;
        for (size_t i = 0; i < messages.size(); ++i) {
            if (!messages[i].is_object() || !messages[i].contains("role") || !messages[i]["role"].is_string()) {
                bad_message(i, "expected an object with a string 'role'");
            }
            const std::string role = messages[i]["role"].get<std::string>();
            if (role == "user" || role == "developer") last_user = static_cast<int64_t>(i);
        }
        std::vector<ChatSegment> out;
        auto prompt = [&](const std::string& text) {
            if (text.empty()) return;
            if (!out.empty() && !out.back().generated) {
                out.back().text += text;
            } else {
                out.push_back({text, false});
            }
        };
        if (opt.add_bos) prompt(kBos);
        int64_t assistant = -1;  // the assistant message the following tool results answer
        size_t results = 0;      // tool results given so far for it
        for (size_t i = 0; i < messages.size(); ++i) {
            const OrderedJson& m = messages[i];
            const std::string role = m["role"].get<std::string>();
            const bool after_last_user = static_cast<int64_t>(i) > last_user;
            if (role == "system") {
                prompt(text_field(m, "content", i) + attachments(m, i));
            } else if (role == "user" || role == "developer") {
                std::string body = text_field(m, "content", i);
                if (role == "developer") {
                    if (body.empty()) bad_message(i, "a developer message needs content");
                    body = attachments(m, i) + "\n\n# The user's message is: " + body;
                }
                const bool open = opt.thinking && static_cast<int64_t>(i) == last_user;
                prompt(absl::StrCat(kUser, body, kAssistant, open ? kThinkOpen : kThinkClose));
            } else if (role == "assistant") {
                std::string text;
                if (opt.thinking && after_last_user) {
                    const std::string reasoning = text_field(m, "reasoning_content", i);
                    if (reasoning.empty() && tool_calls_count(m) == 0) {
                        bad_message(i,
                                    "in thinking mode an assistant message after the last user message needs "
                                    "reasoning_content or tool_calls");
                    }
                    text = reasoning + kThinkClose;
                }
                text += text_field(m, "content", i);
                if (tool_calls_count(m) > 0) text += render_tool_calls(m["tool_calls"], i);
                text += kEos;
                out.push_back({text, true});
                assistant = static_cast<int64_t>(i);
                results = 0;
            } else if (role == "tool") {
                const size_t n = assistant >= 0 ? tool_calls_count(messages[static_cast<size_t>(assistant)]) : 0;
                if (n == 0) bad_message(i, "a tool result must follow an assistant message with tool_calls");
                if (++results > n) {
                    bad_message(i,
                                absl::StrCat("more tool results than the ", n, " tool call(s) of message ", assistant));
                }
                std::string text = results == 1 ? "\n\n<function_results>" : "";
                text += absl::StrCat("\n<result>", text_field(m, "content", i), "</result>");
                if (results == n) {
                    const bool open = opt.thinking && static_cast<int64_t>(i) >= last_user;
                    text += absl::StrCat("\n</function_results>\n\n", open ? kThinkOpen : kThinkClose);
                }
                prompt(text);
            } else {
                bad_message(
                    i, absl::StrCat("unknown role '", role, "' (expected system, developer, user, assistant or tool)"));
            }
        }
        return out;
    }

    ParsedMessage parse(const std::string& text, const ChatOptions& opt, bool strict) const override {
        ParsedMessage msg;
        size_t pos = 0;
        const char* which = nullptr;
        if (opt.thinking) {
            const size_t at = find_first(text, 0, {kThinkClose, kCallsOpen}, &which);
            if (at != std::string::npos && which == kThinkClose) {
                msg.reasoning_content = text.substr(0, at);
                pos = at + std::string(kThinkClose).size();
            } else if (strict) {
                bad_completion("thinking mode: no </think> before the answer");
            } else if (at == std::string::npos) {
                // still thinking (or cut off): everything so far is reasoning
                const size_t eos = text.find(kEos);
                msg.reasoning_content = text.substr(0, eos);
                msg.finished = eos != std::string::npos;
                return msg;
            }
        }
        const size_t end = find_first(text, pos, {kEos, kCallsOpen}, &which);
        if (end == std::string::npos) {
            msg.content = text.substr(pos);
        } else {
            msg.content = text.substr(pos, end - pos);
            if (which == kEos) {
                msg.finished = true;
                if (strict && end + std::string(kEos).size() != text.size()) {
                    bad_completion("text after the end-of-sentence marker");
                }
            } else {
                const size_t after = parse_calls(text, end + std::string(kCallsOpen).size(), strict, msg.tool_calls);
                if (after != std::string::npos) {
                    const std::string rest = text.substr(after);
                    msg.finished = rest.rfind(kEos, 0) == 0;
                    if (strict && !(rest.empty() || rest == kEos)) {
                        bad_completion(absl::StrCat("text after the tool-call block: \"", rest, "\""));
                    }
                }
            }
        }
        if (strict) {
            reject_markers("reasoning_content", msg.reasoning_content);
            reject_markers("content", msg.content);
        }
        return msg;
    }
};

}  // namespace

std::string python_json(const OrderedJson& v) {
    if (v.is_object()) {
        std::vector<std::string> items;
        for (const auto& [k, x] : v.items()) items.push_back(absl::StrCat(OrderedJson(k).dump(), ": ", python_json(x)));
        return absl::StrCat("{", absl::StrJoin(items, ", "), "}");
    }
    if (v.is_array()) {
        std::vector<std::string> items;
        for (const auto& x : v) items.push_back(python_json(x));
        return absl::StrCat("[", absl::StrJoin(items, ", "), "]");
    }
    return v.dump();
}

std::string join_segments(const std::vector<ChatSegment>& segments) {
    std::string out;
    for (const ChatSegment& s : segments) out += s.text;
    return out;
}

ChatIds tokenize_segments(const Tokenizer& tokenizer, const std::vector<ChatSegment>& segments) {
    ChatIds out;
    for (const ChatSegment& s : segments) {
        const std::vector<int64_t> ids = tokenizer.encode(s.text);
        out.ids.insert(out.ids.end(), ids.begin(), ids.end());
        out.generated.insert(out.generated.end(), ids.size(), s.generated ? 1 : 0);
    }
    return out;
}

OrderedJson ParsedMessage::to_json() const {
    OrderedJson calls = OrderedJson::array();
    for (const ToolCall& c : tool_calls) calls.push_back({{"name", c.name}, {"arguments", c.arguments}});
    return {{"reasoning_content", reasoning_content}, {"content", content}, {"tool_calls", calls}};
}

std::unique_ptr<ChatFormat> make_chat_format(const std::string& name) {
    if (name == "deepseek_v32") return std::make_unique<DeepSeekV32>();
    throw ConfigError(absl::StrCat("chat format '", name, "' is not known (known: deepseek_v32)"));
}

}  // namespace dsrl::text
