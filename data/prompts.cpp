#include "data/prompts.h"

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "core/config_binder.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/rng.h"
#include "text/conversation.h"

namespace dsrl::data {
namespace {

using Json = nlohmann::json;

// A SplitMix64 stream. Note [Portable shuffles]: the sampler's order and the synthetic items are part of what
// "resume is exact" promises, so they use this fixed generator and our own bounded draw instead of
// std::uniform_int_distribution / std::shuffle, whose algorithms differ between standard libraries.
class SplitMix {
public:
    explicit SplitMix(uint64_t seed) : state_(seed) {}
    uint64_t next() {
        state_ += 0x9E3779B97F4A7C15ull;
        return rng::mix64(state_);
    }
    /// Uniform in [0, n), n > 0, without modulo bias (Lemire's multiply-and-reject).
    uint64_t below(uint64_t n) {
        unsigned __int128 m = static_cast<unsigned __int128>(next()) * n;
        auto low = static_cast<uint64_t>(m);
        if (low < n) {
            const uint64_t threshold = (0 - n) % n;
            while (low < threshold) {
                m = static_cast<unsigned __int128>(next()) * n;
                low = static_cast<uint64_t>(m);
            }
        }
        return static_cast<uint64_t>(m >> 64);
    }

private:
    uint64_t state_;
};

uint64_t hash_string(std::string_view s) {
    uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a, then mixed
    for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001B3ull;
    return rng::mix64(h);
}

std::string short_dump(const Json& v) {
    std::string s = v.dump();
    if (s.size() > 80) s = s.substr(0, 77) + "...";
    return s;
}

// ---------------------------------------------------------------------------------------------------------
// JSONL

[[noreturn]] void fail_line(const std::string& path, int64_t line, const std::string& what) {
    throw DataError(absl::StrCat(path, ":", line, ": ", what));
}

// A field that must be a string when present; null counts as absent.
std::optional<std::string> optional_string(const Json& obj, const char* key, const std::string& path, int64_t line) {
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return std::nullopt;
    // Numeric answers (GSM8K-style files) are accepted as their JSON text: 42 -> "42", 0.5 -> "0.5".
    if (std::string_view(key) == "answer" && it->is_number()) return it->dump();
    if (!it->is_string()) {
        fail_line(path, line,
                  absl::StrCat("expected '", key, "' to be a string, but got ", it->type_name(), " ", short_dump(*it),
                               " (hint: quote the value)"));
    }
    return it->get<std::string>();
}

// A row's chat `messages` (and `tools`) in the OpenAI layout: the conversation goes to item.conversation as given
// (the chat format renders and checks tool calls, tool results and reasoning); the plain {role, content} view to
// item.messages; the last user/developer message is the prompt the rewards see.
void read_messages(
    const Json& obj, const std::string& raw, const std::string& path, int64_t line, Rows rows, PromptItem& item) {
    const Json& messages = obj["messages"];
    if (!messages.is_array() || messages.empty()) {
        fail_line(
            path, line,
            absl::StrCat("expected 'messages' to be a non-empty list of {\"role\", \"content\"} objects, but got ",
                         short_dump(messages)));
    }
    for (size_t k = 0; k < messages.size(); ++k) {
        const Json& m = messages[k];
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
            fail_line(path, line,
                      absl::StrCat("messages[", k, "]: expected {\"role\": string, \"content\": string}, but got ",
                                   short_dump(m)));
        }
        const std::string role = m["role"].get<std::string>();
        if (role != "system" && role != "user" && role != "assistant" && role != "developer" && role != "tool") {
            fail_line(path, line,
                      absl::StrCat("messages[", k, "]: role '", role,
                                   "' (expected system, developer, user, assistant or tool)"));
        }
        const auto content = m.find("content");
        const bool calls = m.contains("tool_calls") && !m["tool_calls"].is_null();
        // An assistant turn that only calls tools may leave content out (or null), as OpenAI-layout data does.
        const bool may_omit = role == "assistant" && calls;
        if (content == m.end() || content->is_null() ? !may_omit : !content->is_string()) {
            fail_line(path, line,
                      absl::StrCat("messages[", k, "]: expected a string 'content', but got ",
                                   content == m.end() ? std::string("none") : short_dump(*content)));
        }
        if (calls && (role != "assistant" || !m["tool_calls"].is_array())) {
            fail_line(path, line,
                      absl::StrCat("messages[", k, "]: 'tool_calls' must be a list, on an assistant message"));
        }
        for (const char* key : {"reasoning_content", "tool_call_id", "name"}) {
            if (m.contains(key) && !m[key].is_null() && !m[key].is_string()) {
                fail_line(path, line, absl::StrCat("messages[", k, "]: '", key, "' must be a string"));
            }
        }
        if (role == "tool") {
            const std::string& before = k == 0 ? std::string() : item.messages.back().role;
            const bool after_calls =
                before == "tool" || (before == "assistant" && messages[k - 1].contains("tool_calls") &&
                                     !messages[k - 1]["tool_calls"].empty());
            if (!after_calls) {
                fail_line(
                    path, line,
                    absl::StrCat("messages[", k, "]: a tool result must follow an assistant message with tool_calls"));
            }
        }
        item.messages.push_back({role, content != m.end() && content->is_string() ? content->get<std::string>() : ""});
        if (role == "user" || role == "developer") item.prompt = item.messages.back().content;
    }
    if (obj.contains("tools") && !obj["tools"].is_null() && !obj["tools"].is_array()) {
        fail_line(path, line,
                  absl::StrCat("expected 'tools' to be a list of tool schemas, but got ", short_dump(obj["tools"])));
    }
    const std::string& last = item.messages.back().role;
    if (rows == Rows::kPrompts && last != "user" && last != "developer" && last != "tool") {
        fail_line(path, line,
                  "'messages' must end with a user or developer message (or tool results): the model answers it");
    }
    if (rows == Rows::kConversations && last == "system") {
        fail_line(path, line, "'messages' must not end with a system message");
    }
    // Parsed again keeping key order: tool schemas and call arguments render in their given order.
    item.conversation = text::OrderedJson::parse(raw);
    text::OrderedJson conv = text::OrderedJson::object();
    conv["messages"] = std::move(item.conversation["messages"]);
    if (item.conversation.contains("tools") && !item.conversation["tools"].is_null()) {
        conv["tools"] = std::move(item.conversation["tools"]);
    }
    item.conversation = std::move(conv);
}

}  // namespace

std::shared_ptr<const JsonlPromptSource> JsonlPromptSource::open(const std::string& path,
                                                                 const std::string& domain,
                                                                 Rows rows) {
    std::unique_ptr<fs::LineReader> in;
    try {
        in = std::make_unique<fs::LineReader>(path);
    } catch (const fs::IoError& e) {
        throw DataError(absl::StrCat("prompts file ", path, ": cannot open: ", e.reason()));
    }

    std::shared_ptr<JsonlPromptSource> src(new JsonlPromptSource());
    src->path_ = path;
    std::map<int64_t, int64_t> line_of_id;
    std::string text;
    while (in->next(text)) {
        const int64_t line = in->line_number();
        if (text.find_first_not_of(" \t\r\n\f\v") == std::string::npos) continue;

        Json obj;
        try {
            obj = Json::parse(text);
        } catch (const Json::exception& e) {
            // The parser sees one line at a time; its "line 1, " would contradict our line number.
            std::string why = e.what();
            if (const size_t at = why.find("at line 1, column "); at != std::string::npos) why.erase(at + 3, 8);
            fail_line(path, line, absl::StrCat("invalid JSON: ", why));
        }
        if (!obj.is_object()) {
            fail_line(path, line,
                      absl::StrCat("expected a JSON object, but got ", obj.type_name(), " ", short_dump(obj)));
        }

        PromptItem item;
        item.domain = domain;
        if (rows == Rows::kTasks) {
            item.id = static_cast<int64_t>(src->items_.size());
            const auto id = obj.find("id");
            if (id != obj.end() && id->is_number_integer() &&
                !(id->is_number_unsigned() &&
                  id->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
                item.id = id->get<int64_t>();
            }
            const auto [it, inserted] = line_of_id.emplace(item.id, line);
            if (!inserted) {
                fail_line(path, line, absl::StrCat("duplicate id ", item.id, " (first used at line ", it->second, ")"));
            }
            for (const char* key : {"question", "prompt"}) {
                if (item.prompt.empty() && obj.contains(key) && obj[key].is_string())
                    item.prompt = obj[key].get<std::string>();
            }
            if (obj.contains("answer") && obj["answer"].is_string())
                item.meta["answer"] = obj["answer"].get<std::string>();
            item.task = text::OrderedJson::parse(text);
            src->items_.push_back(std::move(item));
            continue;
        }
        const auto prompt = obj.find("prompt");
        const auto messages = obj.find("messages");
        const bool has_messages = messages != obj.end() && !messages->is_null();
        if (has_messages && prompt != obj.end() && !prompt->is_null()) {
            fail_line(path, line, "give either 'prompt' or 'messages', not both");
        }
        if (has_messages) {
            read_messages(obj, text, path, line, rows, item);
        } else {
            if (prompt == obj.end() || prompt->is_null()) {
                fail_line(path, line, "missing the required string 'prompt' (or a list of chat 'messages')");
            }
            if (!prompt->is_string()) {
                fail_line(path, line,
                          absl::StrCat("expected 'prompt' to be a string, but got ", prompt->type_name(), " ",
                                       short_dump(*prompt)));
            }
            item.prompt = prompt->get<std::string>();
            if (item.prompt.empty()) fail_line(path, line, "'prompt' is empty");
        }

        if (auto d = optional_string(obj, "domain", path, line)) {
            if (d->empty()) fail_line(path, line, "'domain' is empty (leave it out to use the config's domain)");
            item.domain = std::move(*d);
        }

        item.id = static_cast<int64_t>(src->items_.size());
        const auto id = obj.find("id");
        if (id != obj.end() && !id->is_null()) {
            const bool fits = id->is_number_integer() &&
                              !(id->is_number_unsigned() &&
                                id->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
            if (!fits) {
                fail_line(path, line,
                          absl::StrCat("expected 'id' to be a 64-bit integer, but got ", id->type_name(), " ",
                                       short_dump(*id)));
            }
            item.id = id->get<int64_t>();
        }
        const auto [it, inserted] = line_of_id.emplace(item.id, line);
        if (!inserted) {
            fail_line(path, line, absl::StrCat("duplicate id ", item.id, " (first used at line ", it->second, ")"));
        }

        // answer/rubric are text for the verifiers and the judge (a numeric answer is kept as its JSON text);
        // the other fields are free metadata.
        for (const char* key : {"answer", "rubric"}) {
            if (auto v = optional_string(obj, key, path, line)) item.meta[key] = std::move(*v);
        }
        for (const auto& [key, value] : obj.items()) {
            if (key == "prompt" || key == "messages" || key == "tools" || key == "domain" || key == "id" ||
                key == "answer" || key == "rubric") {
                continue;
            }
            item.meta[key] = value.is_string() ? value.get<std::string>() : value.dump();
        }
        src->items_.push_back(std::move(item));
    }
    if (src->items_.empty()) {
        throw DataError(absl::StrCat("prompts file ", path, ": no prompts (",
                                     in->line_number() == 0 ? "the file is empty" : "only blank lines",
                                     "); expected one JSON object per line with a string 'prompt'"));
    }
    return src;
}

std::vector<text::ChatMessage> chat_of(const PromptItem& item) {
    if (!item.messages.empty()) return item.messages;
    return {{"user", item.prompt}};
}

text::OrderedJson conversation_of(const PromptItem& item) {
    if (!item.conversation.is_null()) return item.conversation;
    text::OrderedJson conv = text::OrderedJson::object();
    conv["messages"] = text::OrderedJson::array({{{"role", "user"}, {"content", item.prompt}}});
    return conv;
}

std::vector<int64_t> prompt_ids(const text::Tokenizer& tokenizer, const PromptItem& item, const std::string& source) {
    try {
        // A prompt ends with the generation prompt and carries no loss mask: the fixed template renders it directly.
        if (tokenizer.chat_format(nullptr) == nullptr) {
            return tokenizer.apply_chat(text::plain_messages(conversation_of(item)), /*add_generation_prompt=*/true);
        }
        return text::render_conversation(tokenizer, conversation_of(item)).ids;
    } catch (const DataError& e) {
        throw DataError(absl::StrCat(source, ": prompt ", item.id, ": ", e.what()));
    }
}

void check_conversations(const PromptSource& source, const text::Tokenizer& tokenizer, Rows rows) {
    text::ChatOptions options;
    const text::ChatFormat* format = tokenizer.chat_format(&options);
    for (int64_t i = 0; i < source.size(); ++i) {
        const PromptItem item = source.get(i);
        const bool learned = !item.messages.empty() && item.messages.back().role == "assistant";
        if (rows == Rows::kConversations && !learned && item.meta.count("response") == 0 &&
            item.meta.count("answer") == 0) {
            throw DataError(absl::StrCat(source.name(), ": item ", item.id,
                                         ": an SFT row needs 'response' or 'answer', or 'messages' ending with the "
                                         "assistant turn to learn"));
        }
        if (item.conversation.is_null()) continue;
        try {
            if (format != nullptr) {
                format->render(item.conversation, options);
            } else {
                const std::vector<text::ChatMessage> plain = text::plain_messages(item.conversation);
                tokenizer.apply_chat(plain, !learned);
            }
        } catch (const DataError& e) {
            throw DataError(absl::StrCat(source.name(), ": item ", item.id, ": ", e.what()));
        }
    }
}

PromptItem JsonlPromptSource::get(int64_t index) const {
    DSRL_INTERNAL_ASSERT(index >= 0 && index < size(), "prompt index ", index, " out of range [0, ", size(), ") of ",
                         path_);
    return items_[static_cast<size_t>(index)];
}

// ---------------------------------------------------------------------------------------------------------
// Synthetic tasks

namespace {

// Short, distinct lowercase words (ASCII: one byte-tokenizer token per character).
constexpr const char* kWords[] = {
    "apple", "river", "stone", "blue",  "cloud",  "green", "house", "light", "music",  "north", "ocean",
    "paper", "quiet", "road",  "salt",  "tiger",  "under", "voice", "water", "yellow", "zebra", "bread",
    "chair", "dream", "eagle", "flame", "grape",  "heart", "iron",  "jolly", "kite",   "lemon", "maple",
    "night", "olive", "piano", "queen", "robin",  "sugar", "train", "uncle", "violet", "wheel", "amber",
    "bell",  "coral", "delta", "ember", "frost",  "glass", "honey", "ivory", "jade",   "karma", "lunar",
    "mango", "nest",  "orbit", "pearl", "quartz", "rain",  "storm", "tulip", "vapor"};
constexpr uint64_t kNumWords = sizeof(kWords) / sizeof(kWords[0]);

enum class Task { kArithmetic, kEcho, kCount };

struct TaskInfo {
    const char* name;
    Task task;
    std::vector<std::string> params;  // sorted
};

const std::vector<TaskInfo>& task_infos() {
    static const std::vector<TaskInfo> infos = {
        {"arithmetic", Task::kArithmetic, {"digits", "ops", "seed"}},
        {"count", Task::kCount, {"seed", "words"}},
        {"echo", Task::kEcho, {"seed", "words"}},
    };
    return infos;
}

constexpr const char* kBoxedHint = " Put the final answer in \\boxed{}.";
constexpr const char* kOpOrder = "+-*";

class SyntheticPromptSource final : public PromptSource {
public:
    SyntheticPromptSource(
        Task task, std::string domain, std::string name, int64_t digits, std::string ops, int64_t words, uint64_t seed)
        : task_(task),
          domain_(std::move(domain)),
          name_(std::move(name)),
          digits_(digits),
          ops_(std::move(ops)),
          words_(words),
          stream_(rng::mix64(hash_string(name_) ^ rng::mix64(seed))) {}

    std::string name() const override { return name_; }
    int64_t size() const override { return -1; }

    PromptItem get(int64_t index) const override {
        DSRL_INTERNAL_ASSERT(index >= 0, "prompt index ", index, " is negative (", name_, ")");
        SplitMix r(rng::mix64(stream_ ^ rng::mix64(static_cast<uint64_t>(index))));
        PromptItem item;
        item.domain = domain_;
        item.id = index;
        switch (task_) {
            case Task::kArithmetic:
                arithmetic(r, item);
                break;
            case Task::kEcho: {
                const std::string text = word_sequence(r);
                item.prompt = absl::StrCat("Repeat exactly: ", text);
                item.meta["answer"] = text;
                break;
            }
            case Task::kCount: {
                const std::string text = word_sequence(r);
                // The letter is one of the text's own, so the answer is at least 1.
                char letter = ' ';
                while (letter == ' ') letter = text[r.below(text.size())];
                const auto n = std::count(text.begin(), text.end(), letter);
                item.prompt = absl::StrCat("How many times does the letter '", std::string(1, letter), "' appear in \"",
                                           text, "\"?", kBoxedHint);
                item.meta["answer"] = std::to_string(n);
                break;
            }
        }
        return item;
    }

private:
    void arithmetic(SplitMix& r, PromptItem& item) const {
        int64_t hi = 1;
        for (int64_t i = 0; i < digits_; ++i) hi *= 10;
        const int64_t lo = digits_ == 1 ? 0 : hi / 10;
        const auto operand = [&] { return lo + static_cast<int64_t>(r.below(static_cast<uint64_t>(hi - lo))); };
        const int64_t a = operand();
        const int64_t b = operand();
        const char op = ops_[r.below(ops_.size())];
        // |result| < 10^18 for digits <= 9, so int64 is exact.
        const int64_t result = op == '+' ? a + b : op == '-' ? a - b : a * b;
        item.prompt = absl::StrCat("What is ", a, " ", std::string(1, op), " ", b, "?", kBoxedHint);
        item.meta["answer"] = std::to_string(result);
        item.meta["expression"] = absl::StrCat(a, " ", std::string(1, op), " ", b);  // what a calculator tool computes
    }

    std::string word_sequence(SplitMix& r) const {
        std::vector<const char*> words;
        for (int64_t i = 0; i < words_; ++i) words.push_back(kWords[r.below(kNumWords)]);
        return absl::StrJoin(words, " ");
    }

    Task task_;
    std::string domain_;
    std::string name_;
    int64_t digits_;
    std::string ops_;
    int64_t words_;
    uint64_t stream_;
};

int64_t int_param(const std::string& spec,
                  const std::map<std::string, std::string>& kv,
                  const std::string& key,
                  int64_t fallback,
                  int64_t lo,
                  int64_t hi) {
    const auto it = kv.find(key);
    if (it == kv.end()) return fallback;
    int64_t v = 0;
    if (!absl::SimpleAtoi(it->second, &v) || v < lo || v > hi) {
        throw ConfigError(absl::StrCat("data spec '", spec, "': expected ", key, " to be an integer in [", lo, ", ", hi,
                                       "], but got '", it->second, "'"));
    }
    return v;
}

std::shared_ptr<const PromptSource> make_synthetic(const std::string& spec, const std::string& domain) {
    const std::string body = spec.substr(std::string("synthetic:").size());
    const size_t q = body.find('?');
    const std::string task_name = body.substr(0, q);

    const TaskInfo* info = nullptr;
    for (const TaskInfo& t : task_infos()) {
        if (task_name == t.name) info = &t;
    }
    if (info == nullptr) {
        std::string hint;
        if (auto near = config::nearest(task_name, synthetic_task_names()))
            hint = absl::StrCat("; did you mean '", *near, "'?");
        throw ConfigError(absl::StrCat("data spec '", spec, "': unknown synthetic task '", task_name,
                                       "'; known tasks: ", absl::StrJoin(synthetic_task_names(), ", "), hint));
    }

    std::map<std::string, std::string> kv;
    if (q != std::string::npos) {
        const std::vector<std::string> parts = absl::StrSplit(body.substr(q + 1), '&');
        for (const std::string& part : parts) {
            const size_t eq = part.find('=');
            if (eq == std::string::npos || eq == 0) {
                throw ConfigError(absl::StrCat("data spec '", spec, "': expected key=value parameters after '?', ",
                                               "but got '", part, "'; parameters of ", info->name, ": ",
                                               absl::StrJoin(info->params, ", ")));
            }
            const std::string key = part.substr(0, eq);
            if (std::find(info->params.begin(), info->params.end(), key) == info->params.end()) {
                std::string hint;
                if (auto near = config::nearest(key, info->params))
                    hint = absl::StrCat("; did you mean '", *near, "'?");
                throw ConfigError(absl::StrCat("data spec '", spec, "': unknown parameter '", key, "' of task ",
                                               info->name, "; known parameters: ", absl::StrJoin(info->params, ", "),
                                               hint));
            }
            if (!kv.emplace(key, part.substr(eq + 1)).second) {
                throw ConfigError(absl::StrCat("data spec '", spec, "': parameter '", key, "' is given twice"));
            }
        }
    }

    int64_t digits = 0;
    std::string ops;
    int64_t words = 0;
    const int64_t seed = int_param(spec, kv, "seed", 0, 0, std::numeric_limits<int64_t>::max());
    std::vector<std::string> normalized;
    if (info->task == Task::kArithmetic) {
        digits = int_param(spec, kv, "digits", 2, 1, 9);
        const auto it = kv.find("ops");
        const std::string given = it == kv.end() ? kOpOrder : it->second;
        // Canonical order, so "ops=-+" and "ops=+-" name (and generate) the same dataset.
        for (const char* c = kOpOrder; *c != '\0'; ++c) {
            const auto n = std::count(given.begin(), given.end(), *c);
            if (n > 1) {
                throw ConfigError(absl::StrCat("data spec '", spec, "': ops repeats '", std::string(1, *c), "'"));
            }
            if (n == 1) ops += *c;
        }
        if (ops.empty() || ops.size() != given.size()) {
            throw ConfigError(absl::StrCat("data spec '", spec, "': expected ops to be a non-empty subset of \"",
                                           kOpOrder, "\", but got '", given, "'"));
        }
        normalized = {absl::StrCat("digits=", digits), absl::StrCat("ops=", ops)};
    } else {
        words = int_param(spec, kv, "words", 4, 1, 64);
        normalized = {absl::StrCat("words=", words)};
    }
    normalized.push_back(absl::StrCat("seed=", seed));
    std::sort(normalized.begin(), normalized.end());
    const std::string name = absl::StrCat("synthetic:", info->name, "?", absl::StrJoin(normalized, "&"));
    return std::make_shared<SyntheticPromptSource>(info->task, domain, name, digits, ops, words,
                                                   static_cast<uint64_t>(seed));
}

}  // namespace

std::vector<std::string> synthetic_task_names() {
    std::vector<std::string> names;
    for (const TaskInfo& t : task_infos()) names.emplace_back(t.name);
    return names;
}

std::shared_ptr<const PromptSource> make_prompt_source(const std::string& spec,
                                                       const std::string& domain,
                                                       const std::string& base_dir,
                                                       Rows rows) {
    if (spec.empty()) {
        throw ConfigError(absl::StrCat("domain '", domain, "': empty data spec; expected a JSONL path or ",
                                       "synthetic:<task> (tasks: ", absl::StrJoin(synthetic_task_names(), ", "), ")"));
    }
    if (spec.rfind("synthetic:", 0) == 0) return make_synthetic(spec, domain);
    const std::string path = spec.front() == '/' ? spec : fs::join(base_dir, spec);
    return JsonlPromptSource::open(path, domain, rows);
}

// ---------------------------------------------------------------------------------------------------------
// Sampler

PromptSampler::PromptSampler(std::shared_ptr<const PromptSource> source, uint64_t seed)
    : source_(std::move(source)), seed_(seed) {
    DSRL_INTERNAL_ASSERT(source_ != nullptr, "PromptSampler: null source");
    DSRL_INTERNAL_ASSERT(source_->size() != 0, "PromptSampler: empty source ", source_->name());
    build_order();
}

void PromptSampler::build_order() {
    const int64_t n = source_->size();
    if (n < 0) return;
    order_.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order_[static_cast<size_t>(i)] = i;
    SplitMix r(rng::mix64(seed_ ^ rng::mix64(static_cast<uint64_t>(state_.epoch) + 0x5EED)));
    for (int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates
        std::swap(order_[static_cast<size_t>(i)], order_[r.below(static_cast<uint64_t>(i) + 1)]);
    }
}

PromptItem PromptSampler::next() {
    if (source_->size() < 0) return source_->get(state_.position++);
    PromptItem item = source_->get(order_[static_cast<size_t>(state_.position)]);
    if (++state_.position == source_->size()) {
        ++state_.epoch;
        state_.position = 0;
        build_order();
    }
    return item;
}

void PromptSampler::restore(const SamplerState& state) {
    const int64_t n = source_->size();
    const bool ok = state.epoch >= 0 && state.position >= 0 && (n < 0 ? state.epoch == 0 : state.position < n);
    if (!ok) {
        throw DataError(absl::StrCat("prompt sampler of ", source_->name(), ": cannot restore cursor {epoch ",
                                     state.epoch, ", position ", state.position, "}: expected ",
                                     n < 0 ? "epoch 0 and position >= 0 (infinite source)"
                                           : absl::StrCat("epoch >= 0 and position in [0, ", n, ")"),
                                     " (hint: did the dataset change since the checkpoint?)"));
    }
    const bool rebuild = n >= 0 && state.epoch != state_.epoch;
    state_ = state;
    if (rebuild) build_order();
}

std::string cursor_of(const PromptSampler& s) { return absl::StrCat(s.epoch(), ":", s.position()); }

void restore_cursor(PromptSampler& s, const std::string& text, const std::string& what) {
    const std::vector<std::string> parts = absl::StrSplit(text, ':');
    int64_t epoch = 0, position = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &epoch) || !absl::SimpleAtoi(parts[1], &position)) {
        throw CheckpointError(absl::StrCat("checkpoint cursor '", what, "' is malformed: '", text, "'"));
    }
    s.restore({epoch, position});
}

void restore_cursor(PromptSampler& s, const std::map<std::string, std::string>& cursors, const std::string& key) {
    if (const auto it = cursors.find(key); it != cursors.end()) restore_cursor(s, it->second, it->first);
}

}  // namespace dsrl::data
