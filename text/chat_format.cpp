#include "text/chat_format.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <string_view>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/types/span.h>

#include "core/error.h"
#include "text/tokenizer.h"

namespace dsrl::text {
namespace {

using dsv32::kAssistant;
using dsv32::kBos;
using dsv32::kCallsClose;
using dsv32::kEos;
using dsv32::kInvokeClose;
using dsv32::kParamClose;
using dsv32::kThinkClose;
using dsv32::kThinkOpen;
using dsv32::kUser;
constexpr const char* kDsml = "｜DSML｜";
// What the parsers look for (a tag's attributes may follow after whitespace).
constexpr const char* kCallsOpen = "\n\n<｜DSML｜function_calls";  // the block opener, as the parser looks for it
constexpr const char* kInvokeOpen = "<｜DSML｜invoke";
constexpr const char* kParamOpen = "<｜DSML｜parameter";

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
    return absl::StrCat(dsv32::kToolsHead, absl::StrJoin(lines, "\n"), "\n", dsv32::kFunctionsClose, "\n");
}

// "\n\n" + TOOLS_BLOCK and/or "\n\n" + RESPONSE_FORMAT_BLOCK of a system or developer message.
std::string attachments(const OrderedJson& m, size_t index) {
    std::string out;
    if (const auto t = m.find("tools"); t != m.end() && !t->is_null() && !t->empty()) {
        out += "\n\n" + tools_block(*t, index);
    }
    if (const auto rf = m.find("response_format"); rf != m.end() && !rf->is_null()) {
        out += absl::StrCat("\n\n", dsv32::kResponseFormatHead, python_json(*rf));
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
            params.push_back(absl::StrCat(dsv32::kParamName, key, is_string ? dsv32::kStringTrue : dsv32::kStringFalse,
                                          is_string ? value.get<std::string>() : python_json(value), kParamClose));
        }
        invokes.push_back(absl::StrCat(dsv32::kInvokeName, fn["name"].get<std::string>(), "\">\n",
                                       absl::StrJoin(params, "\n"), "\n", kInvokeClose));
    }
    return absl::StrCat("\n\n", dsv32::kCallsTag, "\n", absl::StrJoin(invokes, "\n"), "\n", kCallsClose);
}

size_t tool_calls_count(const OrderedJson& m) {
    const auto it = m.find("tool_calls");
    return it == m.end() || !it->is_array() ? 0 : it->size();
}

// ---- Parsing: strict, the reference grammar on the whole text ---------------------------------------------

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

// A cursor over the tool-call block that follows DeepSeek's reference grammar byte for byte (DSV32_FORMAT.md
// §C.1, the rendering of §B.4.4).
class StrictReader {
public:
    StrictReader(const std::string& s, size_t pos) : s_(s), pos_(pos) {}
    size_t pos() const { return pos_; }
    // Consumes `lit` when it is next.
    bool accept(std::string_view lit) {
        if (s_.compare(pos_, lit.size(), lit) != 0) return false;
        pos_ += lit.size();
        return true;
    }
    [[noreturn]] void fail(const std::string& what) const {
        bad_completion(absl::StrCat(what, " at byte ", pos_, " of the completion: \"", s_.substr(pos_, 40), "\""));
    }
    // ` name="..."` (and ` string="..."`): the attribute's value.
    std::string attribute(const std::string& key) {
        if (!accept(absl::StrCat(" ", key, "=\""))) fail(absl::StrCat("expected ", key, "=\"...\""));
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
};

// Parses the tool-call block after "\n\n<｜DSML｜function_calls"; returns the index past its closing tag.
size_t parse_calls_strict(const std::string& s, size_t pos, std::vector<ToolCall>& calls) {
    StrictReader r(s, pos);
    if (!r.accept(">\n")) r.fail("expected >\\n after <｜DSML｜function_calls");
    while (true) {
        if (r.accept(kCallsClose)) return r.pos();
        if (!r.accept(kInvokeOpen)) r.fail("expected <｜DSML｜invoke or </｜DSML｜function_calls>");
        ToolCall call{r.attribute("name"), OrderedJson::object()};
        if (!r.accept(">\n")) r.fail("expected \">\\n\" after the invoke name");
        bool first = true;
        while (true) {
            if (!first && !r.accept("\n")) r.fail("expected a newline between parameters");
            if (r.accept(kInvokeClose) || (first && r.accept(std::string("\n") + kInvokeClose))) break;
            if (!r.accept(kParamOpen)) r.fail("expected <｜DSML｜parameter or </｜DSML｜invoke>");
            const std::string key = r.attribute("name");
            const std::string flag = r.attribute("string");
            if (!r.accept(">")) r.fail("expected > after the parameter's attributes");
            const std::string raw = r.until(kParamClose);
            if (call.arguments.contains(key)) r.fail(absl::StrCat("duplicate parameter \"", key, "\""));
            if (flag == "true") {
                call.arguments[key] = raw;
            } else if (flag == "false") {
                try {
                    call.arguments[key] = OrderedJson::parse(raw);
                } catch (const OrderedJson::exception&) {
                    r.fail(absl::StrCat("parameter \"", key, "\" is not valid JSON: ", raw));
                }
            } else {
                r.fail(absl::StrCat("string=\"", flag, "\": expected true or false"));
            }
            first = false;
            if (r.accept(std::string("\n") + kInvokeClose)) break;
        }
        calls.push_back(std::move(call));
        if (!r.accept("\n")) r.fail("expected a newline after </｜DSML｜invoke>");
    }
}

void reject_markers(const std::string& field, const std::string& text) {
    for (const char* m : {kBos, kEos, kThinkOpen, kThinkClose, kDsml}) {
        if (text.find(m) != std::string::npos) {
            bad_completion(absl::StrCat(field, " contains \"", m, "\""));
        }
    }
}

ParsedMessage parse_strict(const std::string& text, const ChatOptions& opt) {
    ParsedMessage msg;
    size_t pos = 0;
    const char* which = nullptr;
    if (opt.thinking) {
        const size_t at = find_first(text, 0, {kThinkClose, kCallsOpen}, &which);
        if (at == std::string::npos || which != kThinkClose) {
            bad_completion("thinking mode: no </think> before the answer");
        }
        msg.reasoning_content = text.substr(0, at);
        pos = at + std::strlen(kThinkClose);
    }
    const size_t end = find_first(text, pos, {kEos, kCallsOpen}, &which);
    if (end == std::string::npos) {
        msg.content = text.substr(pos);
    } else {
        msg.content = text.substr(pos, end - pos);
        if (which == kEos) {
            msg.finished = true;
            if (end + std::strlen(kEos) != text.size()) bad_completion("text after the end-of-sentence marker");
        } else {
            const size_t after = parse_calls_strict(text, end + std::strlen(kCallsOpen), msg.tool_calls);
            const std::string rest = text.substr(after);
            if (!(rest.empty() || rest == kEos)) {
                bad_completion(absl::StrCat("text after the tool-call block: \"", rest, "\""));
            }
            msg.finished = !rest.empty();
        }
    }
    reject_markers("reasoning_content", msg.reasoning_content);
    reject_markers("content", msg.content);
    return msg;
}

// ---- Parsing: lenient, incremental ------------------------------------------------------------------------

// Note [Lenient stream parse]
// The parser is a state machine over the text received so far (buf_, consumed up to pos_). It decides only what
// that text decides, so the result never depends on where the stream was cut:
//  - reasoning (thinking mode) runs to the first </think> (then content), "\n\n<｜DSML｜function_calls" or the
//    end-of-sentence marker; content runs to the block opener or that marker. Markers are matched leftmost-first
//    (the first position where one starts); a position where the text so far is a proper prefix of a marker stops
//    the scan, and text from there on is held back until more text arrives. So is an incomplete UTF-8 character
//    at the end. Only positions holding '<' or '\n' can start a marker, so scanning is a byte test per byte.
//  - a leading <think> in thinking mode is skipped (an engine that echoes the prompt's last token).
//  - inside the block, whitespace before each tag is skipped; a tag is taken when complete, refused when the
//    text cannot become it (the block is abandoned: ParsedMessage::error, complete calls kept, the rest ignored);
//    attribute values and parameter values run to their closing '"' / </｜DSML｜parameter>, found by a scan that
//    resumes where it stopped. A tool call is handed out when its </｜DSML｜invoke> arrives.
//  - the end-of-sentence marker ends the completion anywhere (an engine stops there); text after the block is
//    ignored up to it. At finish(), held-back text is text, and an unterminated block keeps its complete calls.
// Each byte is examined a bounded number of times (a held-back window is at most one marker long), and the
// consumed prefix of buf_ is dropped as it grows, so feeding is linear in the completion's length.

// Bytes at the end of `s` that start a UTF-8 character without completing it (0 at a character boundary).
size_t incomplete_utf8_tail(std::string_view s) {
    for (size_t k = 1; k <= 3 && k <= s.size(); ++k) {
        const auto c = static_cast<unsigned char>(s[s.size() - k]);
        if ((c & 0xC0) == 0x80) continue;  // a continuation byte: its lead byte is further back
        const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return len > k ? k : 0;
    }
    return 0;
}

class DeepSeekV32Stream final : public ChatStreamParser {
public:
    explicit DeepSeekV32Stream(bool thinking) : state_(thinking ? State::kStart : State::kContent) {}

    Delta feed(std::string_view chunk) override {
        DSRL_INTERNAL_ASSERT(!closed_, "ChatStreamParser::feed after finish()");
        Delta d;
        if (state_ != State::kDone) {
            buf_.append(chunk);
            run(d, /*at_end=*/false);
            // Drop the consumed prefix once it is most of the buffer (amortized linear).
            if (pos_ >= 4096 && 2 * pos_ >= buf_.size()) {
                buf_.erase(0, pos_);
                base_ += pos_;
                pos_ = 0;
            }
        }
        d.finished = msg_.finished;
        return d;
    }

    Delta finish() override {
        Delta d;
        if (!closed_) {
            closed_ = true;
            run(d, /*at_end=*/true);
            state_ = State::kDone;
            buf_.clear();
        }
        d.finished = msg_.finished;
        return d;
    }

    const ParsedMessage& message() const override { return msg_; }

private:
    enum class State {
        kStart,      // thinking mode, nothing decided yet: a leading <think> is skipped
        kReasoning,  // reasoning text
        kContent,    // content text
        kIgnore,     // after the tool-call block (or an abandoned one): text ignored up to the end marker
        kDone,       // the end-of-sentence marker was seen, or finish()
        // Inside "\n\n<｜DSML｜function_calls":
        kBlockOpen,   // ">"
        kBlockTop,    // <｜DSML｜invoke or </｜DSML｜function_calls>
        kInvokeName,  // name="..."
        kInvokeEnd,   // ">"
        kParams,      // <｜DSML｜parameter or </｜DSML｜invoke>
        kParamName,   // name="..."
        kParamFlag,   // string="..."
        kParamEnd,    // ">"
        kValue,       // the raw value up to </｜DSML｜parameter>
    };
    enum class Match { kYes, kNo, kMore };  // kMore: the text so far is a proper prefix; wait for more

    // The literal of `lits` that starts at buf_[p], if the text so far decides it.
    Match literal_at(size_t p, absl::Span<const std::string_view> lits, size_t* which) const {
        const std::string_view rest = std::string_view(buf_).substr(p);
        Match out = Match::kNo;
        size_t i = 0;
        for (const std::string_view lit : lits) {
            if (rest.size() >= lit.size()) {
                if (rest.compare(0, lit.size(), lit) == 0) {
                    *which = i;
                    return Match::kYes;
                }
            } else if (lit.compare(0, rest.size(), rest) == 0) {
                out = Match::kMore;
            }
            ++i;
        }
        return out;
    }

    // Whitespace, then one of `lits` (consumed on kYes).
    Match expect(absl::Span<const std::string_view> lits, size_t* which) {
        while (pos_ < buf_.size() &&
               (buf_[pos_] == ' ' || buf_[pos_] == '\n' || buf_[pos_] == '\r' || buf_[pos_] == '\t')) {
            ++pos_;
        }
        const Match m = literal_at(pos_, lits, which);
        if (m == Match::kYes) pos_ += lits[*which].size();
        return m;
    }

    // The first `close` or end-of-sentence marker at or after pos_ (*at; *eos says which), resuming the scan
    // where the previous call on this value stopped (scanned_).
    Match scan(std::string_view close, size_t* at, bool* eos) {
        const std::string_view eos_marker = kEos;
        const size_t from = pos_ + scanned_;
        const size_t c = buf_.find(close.data(), from, close.size());
        // The end marker counts only when it starts before `close`: search no further (linear overall).
        const size_t limit = c == std::string::npos ? buf_.size() : std::min(buf_.size(), c + eos_marker.size() - 1);
        const size_t e = std::string_view(buf_).substr(0, limit).find(eos_marker, from);
        if (c == std::string::npos && e == std::string::npos) {
            const size_t keep = std::max(close.size(), eos_marker.size()) - 1;
            scanned_ = buf_.size() - pos_ > keep ? buf_.size() - pos_ - keep : 0;
            return Match::kMore;
        }
        *eos = e < c;
        *at = std::min(c, e);
        return Match::kYes;
    }

    // key="value": the value into *out.
    Match attribute(std::string_view key, std::string* out) {
        if (!in_attribute_) {
            const std::string open = std::string(key) + "=\"";
            size_t which = 0;
            const Match m = expect({open}, &which);
            if (m != Match::kYes) return m;
            in_attribute_ = true;
            scanned_ = 0;
        }
        size_t at = 0;
        bool eos = false;
        const Match m = scan("\"", &at, &eos);
        if (m != Match::kYes) return m;
        if (eos) return end_marker_inside(at);
        *out = buf_.substr(pos_, at - pos_);
        pos_ = at + 1;
        in_attribute_ = false;
        return Match::kYes;
    }

    Match end_marker_inside(size_t at) {
        pos_ = at;
        abandon("the end-of-sentence marker inside a tag or value");
        return Match::kNo;
    }

    void abandon(const std::string& what) {
        if (msg_.error.empty()) {
            msg_.error = absl::StrCat("tool-call block abandoned at byte ", base_ + pos_, ": ", what);
        }
        state_ = State::kIgnore;
        in_attribute_ = false;
    }

    void emit(size_t from, size_t to, Delta& d) {
        if (to <= from) return;
        const std::string_view text = std::string_view(buf_).substr(from, to - from);
        if (state_ == State::kReasoning) {
            msg_.reasoning_content.append(text);
            d.reasoning_content.append(text);
        } else if (state_ == State::kContent) {
            msg_.content.append(text);
            d.content.append(text);
        }
    }

    // Reasoning, content or ignored text up to the state's first marker. True when a marker moved the state on;
    // false when the text so far is used up (what may begin a marker held back unless `at_end`).
    bool text(Delta& d, bool at_end) {
        // Reasoning ends at any of the three, content at the last two, ignored text at the end marker only.
        static constexpr std::string_view kMarkers[] = {kThinkClose, kCallsOpen, kEos};
        static constexpr State kNext[] = {State::kContent, State::kBlockOpen, State::kDone};
        const size_t first = state_ == State::kReasoning ? 0 : state_ == State::kContent ? 1 : 2;
        const absl::Span<const std::string_view> markers(kMarkers + first, 3 - first);
        for (size_t p = pos_; p < buf_.size(); ++p) {
            if (buf_[p] != '<' && buf_[p] != '\n') continue;
            size_t which = 0;
            const Match m = literal_at(p, markers, &which);
            if (m == Match::kYes) {
                emit(pos_, p, d);
                pos_ = p + markers[which].size();
                state_ = kNext[first + which];
                if (state_ == State::kDone) msg_.finished = true;
                return true;
            }
            if (m == Match::kMore && !at_end) {
                emit(pos_, p, d);
                pos_ = p;
                return false;
            }
        }
        const size_t end = buf_.size() - (at_end ? 0 : incomplete_utf8_tail(std::string_view(buf_).substr(pos_)));
        emit(pos_, end, d);
        pos_ = end;
        return false;
    }

    // Advances through the text as far as it decides; `at_end`: no more text will come.
    void run(Delta& d, bool at_end) {
        const std::string_view calls_close = kCallsClose, invoke_open = kInvokeOpen, invoke_close = kInvokeClose,
                               param_open = kParamOpen, param_close = kParamClose;
        while (true) {
            size_t which = 0;
            Match m = Match::kYes;
            switch (state_) {
                case State::kDone:
                    return;
                case State::kStart:
                    m = literal_at(pos_, {kThinkOpen}, &which);
                    if (m == Match::kMore && !at_end) return;
                    if (m == Match::kYes) pos_ += std::strlen(kThinkOpen);
                    state_ = State::kReasoning;
                    continue;
                case State::kReasoning:
                case State::kContent:
                case State::kIgnore:
                    if (!text(d, at_end)) return;
                    continue;
                case State::kBlockOpen:
                    m = expect({">"}, &which);
                    if (m == Match::kYes) state_ = State::kBlockTop;
                    break;
                case State::kBlockTop:
                    m = expect({calls_close, invoke_open}, &which);
                    if (m == Match::kYes) {
                        state_ = which == 0 ? State::kIgnore : State::kInvokeName;
                        call_ = ToolCall{};
                    }
                    break;
                case State::kInvokeName:
                    m = attribute("name", &call_.name);
                    if (m == Match::kYes) state_ = State::kInvokeEnd;
                    break;
                case State::kInvokeEnd:
                    m = expect({">"}, &which);
                    if (m == Match::kYes) state_ = State::kParams;
                    break;
                case State::kParams:
                    m = expect({invoke_close, param_open}, &which);
                    if (m == Match::kYes && which == 0) {
                        d.tool_calls.push_back(call_);
                        msg_.tool_calls.push_back(std::move(call_));
                        state_ = State::kBlockTop;
                    } else if (m == Match::kYes) {
                        state_ = State::kParamName;
                    }
                    break;
                case State::kParamName:
                    m = attribute("name", &key_);
                    if (m == Match::kYes) state_ = State::kParamFlag;
                    break;
                case State::kParamFlag:
                    m = attribute("string", &flag_);
                    if (m == Match::kYes) state_ = State::kParamEnd;
                    break;
                case State::kParamEnd:
                    m = expect({">"}, &which);
                    if (m == Match::kYes) {
                        state_ = State::kValue;
                        scanned_ = 0;
                    }
                    break;
                case State::kValue: {
                    size_t at = 0;
                    bool eos = false;
                    m = scan(param_close, &at, &eos);
                    if (m != Match::kYes) break;
                    if (eos) {
                        end_marker_inside(at);
                        continue;
                    }
                    std::string raw = buf_.substr(pos_, at - pos_);
                    pos_ = at + param_close.size();
                    if (call_.arguments.contains(key_)) {
                        abandon(absl::StrCat("duplicate parameter \"", key_, "\""));
                        continue;
                    }
                    OrderedJson value;
                    if (flag_ != "true") {
                        // string="false" (or garbled): JSON when it parses, else the raw text.
                        value = OrderedJson::parse(raw, nullptr, /*allow_exceptions=*/false);
                    }
                    call_.arguments[key_] =
                        value.is_discarded() || flag_ == "true" ? OrderedJson(std::move(raw)) : std::move(value);
                    state_ = State::kParams;
                    continue;
                }
            }
            if (m == Match::kMore) {
                if (!at_end) return;
                state_ = State::kDone;  // cut off inside the block: its complete calls stay
                return;
            }
            if (m == Match::kNo && state_ != State::kIgnore) abandon(expected());
        }
    }

    // What the block state expects next (for ParsedMessage::error).
    std::string expected() const {
        switch (state_) {
            case State::kBlockOpen:
                return "expected > after <｜DSML｜function_calls";
            case State::kBlockTop:
                return "expected <｜DSML｜invoke or </｜DSML｜function_calls>";
            case State::kInvokeName:
            case State::kParamName:
                return "expected name=\"...\"";
            case State::kParamFlag:
                return "expected string=\"...\"";
            case State::kInvokeEnd:
            case State::kParamEnd:
                return "expected >";
            case State::kParams:
                return "expected <｜DSML｜parameter or </｜DSML｜invoke>";
            default:
                return "unexpected text";
        }
    }

    State state_;
    std::string buf_;     // the text not yet dropped; buf_[pos_] is the first byte not yet consumed
    size_t pos_ = 0;      // into buf_
    size_t base_ = 0;     // bytes dropped from the front of buf_ (for byte offsets in messages)
    size_t scanned_ = 0;  // an attribute or value scan's progress, relative to pos_
    bool in_attribute_ = false;
    bool closed_ = false;  // finish() was called
    ToolCall call_;        // the invoke being read
    std::string key_, flag_;
    ParsedMessage msg_;
};

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
                std::string text = results == 1 ? absl::StrCat("\n\n", dsv32::kResultsOpen) : "";
                absl::StrAppend(&text, "\n", dsv32::kResultOpen, text_field(m, "content", i), dsv32::kResultClose);
                if (results == n) {
                    const bool open = opt.thinking && static_cast<int64_t>(i) >= last_user;
                    absl::StrAppend(&text, "\n", dsv32::kResultsClose, "\n\n", open ? kThinkOpen : kThinkClose);
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
        if (strict) return parse_strict(text, opt);
        DeepSeekV32Stream stream(opt.thinking);
        stream.feed(text);
        stream.finish();
        return stream.message();
    }

    std::unique_ptr<ChatStreamParser> stream_parser(const ChatOptions& opt) const override {
        return std::make_unique<DeepSeekV32Stream>(opt.thinking);
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
