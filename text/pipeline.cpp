#include "text/pipeline.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <map>
#include <utility>

#include <absl/strings/str_cat.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsrl::text {
namespace {

using Json = nlohmann::json;

[[noreturn]] void bad(const std::string& file, const std::string& field, const std::string& what) {
    throw ConfigError(absl::StrCat(file, ": ", field, ": ", what));
}

std::string type_of(const Json& j, const std::string& file, const std::string& field) {
    if (!j.is_object()) bad(file, field, absl::StrCat("expected an object, got ", j.type_name()));
    const auto t = j.find("type");
    if (t == j.end() || !t->is_string()) bad(file, field + ".type", "missing or not a string");
    return t->get<std::string>();
}

bool get_bool(const Json& j, const char* key, bool dflt, const std::string& file, const std::string& field) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) bad(file, absl::StrCat(field, ".", key), "expected true or false");
    return it->get<bool>();
}

std::string get_string(const Json& j, const char* key, const std::string& file, const std::string& field) {
    const auto it = j.find(key);
    if (it == j.end() || !it->is_string()) bad(file, absl::StrCat(field, ".", key), "missing or not a string");
    return it->get<std::string>();
}

bool is_numeric(char32_t c) {  // Rust char::is_numeric: general categories Nd, Nl, No
    const utf8proc_category_t cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
    return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

// ---- Normalizers ------------------------------------------------------------------------------------------

class UnicodeForm final : public Normalizer {
public:
    explicit UnicodeForm(utf8proc_option_t options) : options_(options) {}
    std::string apply(const std::string& text) const override {
        utf8proc_uint8_t* out = nullptr;
        const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                                static_cast<utf8proc_ssize_t>(text.size()), &out, options_);
        if (n < 0) {
            throw DataError(absl::StrCat("tokenizer normalizer: ", utf8proc_errmsg(n)));
        }
        std::string s(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
        std::free(out);
        return s;
    }

private:
    utf8proc_option_t options_;
};

// Rust's char::to_lowercase per code point (as tokenizers' Lowercase): the Unicode lowercase mapping, with
// İ (U+0130) becoming "i̇" (its one multi-character mapping).
class Lowercase final : public Normalizer {
public:
    std::string apply(const std::string& text) const override {
        std::string out;
        out.reserve(text.size());
        for (size_t p = 0; p < text.size();) {
            const char32_t c = next_code_point(text, p);
            if (c == 0x130) {
                append_utf8(out, 'i');
                append_utf8(out, 0x307);
            } else {
                append_utf8(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
            }
        }
        return out;
    }
};

class Replace final : public Normalizer {
public:
    Replace(std::unique_ptr<Regex> regex, std::string literal, std::string content)
        : regex_(std::move(regex)), literal_(std::move(literal)), content_(std::move(content)) {}
    std::string apply(const std::string& text) const override {
        std::string out;
        size_t prev = 0;
        if (regex_) {
            for (const auto& [b, e] : regex_->find_all(text)) {
                out.append(text, prev, b - prev).append(content_);
                prev = e;
            }
        } else if (!literal_.empty()) {
            for (size_t at = text.find(literal_); at != std::string::npos; at = text.find(literal_, prev)) {
                out.append(text, prev, at - prev).append(content_);
                prev = at + literal_.size();
            }
        }
        return out.append(text, prev, std::string::npos);
    }

private:
    std::unique_ptr<Regex> regex_;
    std::string literal_, content_;
};

class Prepend final : public Normalizer {
public:
    explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
    std::string apply(const std::string& text) const override { return text.empty() ? text : prefix_ + text; }

private:
    std::string prefix_;
};

class Strip final : public Normalizer {
public:
    Strip(bool left, bool right) : left_(left), right_(right) {}
    std::string apply(const std::string& text) const override {
        std::vector<std::pair<size_t, char32_t>> cps;
        for (size_t p = 0; p < text.size();) {
            const size_t at = p;
            cps.emplace_back(at, next_code_point(text, p));
        }
        size_t b = 0, e = cps.size();
        while (left_ && b < e && is_white_space(cps[b].second)) ++b;
        while (right_ && e > b && is_white_space(cps[e - 1].second)) --e;
        if (b == e) return "";
        const size_t end = e < cps.size() ? cps[e].first : text.size();
        return text.substr(cps[b].first, end - cps[b].first);
    }

private:
    bool left_, right_;
};

class NormalizerSequence final : public Normalizer {
public:
    explicit NormalizerSequence(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
    std::string apply(const std::string& text) const override {
        std::string s = text;
        for (const auto& n : steps_) s = n->apply(s);
        return s;
    }

private:
    std::vector<std::unique_ptr<Normalizer>> steps_;
};

// A tokenizers `pattern`: {"String": "..."} or {"Regex": "..."}; returns the regex (null for a literal).
std::unique_ptr<Regex> read_pattern(const Json& j,
                                    std::string& literal,
                                    const std::string& file,
                                    const std::string& field) {
    const auto p = j.find("pattern");
    if (p == j.end() || !p->is_object())
        bad(file, field + ".pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
    if (const auto s = p->find("String"); s != p->end() && s->is_string()) {
        literal = s->get<std::string>();
        return nullptr;
    }
    if (const auto r = p->find("Regex"); r != p->end() && r->is_string()) {
        return std::make_unique<Regex>(r->get<std::string>(), absl::StrCat(file, ": ", field, ".pattern"));
    }
    bad(file, field + ".pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
}

// The steps of a Sequence: j[key] must be a list; `step(element, field)` reads element i at "<field>.<key>[i]".
template <class T, class Step>
std::vector<std::unique_ptr<T>> sequence_steps(
    const Json& j, const char* key, const std::string& file, const std::string& field, Step&& step) {
    const auto list = j.find(key);
    if (list == j.end() || !list->is_array()) bad(file, absl::StrCat(field, ".", key), "expected a list");
    std::vector<std::unique_ptr<T>> steps;
    for (size_t i = 0; i < list->size(); ++i)
        steps.push_back(step((*list)[i], absl::StrCat(field, ".", key, "[", i, "]")));
    return steps;
}

std::unique_ptr<Normalizer> normalizer_of(const Json& j, const std::string& file, const std::string& field) {
    const std::string type = type_of(j, file, field);
    const auto form = [](int options) {
        return std::make_unique<UnicodeForm>(static_cast<utf8proc_option_t>(options));
    };
    if (type == "NFC") return form(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (type == "NFD") return form(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
    if (type == "NFKC") return form(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    if (type == "NFKD") return form(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
    if (type == "Lowercase") return std::make_unique<Lowercase>();
    if (type == "Prepend") return std::make_unique<Prepend>(get_string(j, "prepend", file, field));
    if (type == "Strip") {
        return std::make_unique<Strip>(get_bool(j, "strip_left", true, file, field),
                                       get_bool(j, "strip_right", true, file, field));
    }
    if (type == "Replace") {
        std::string literal;
        std::unique_ptr<Regex> re = read_pattern(j, literal, file, field);
        return std::make_unique<Replace>(std::move(re), literal, get_string(j, "content", file, field));
    }
    if (type == "Sequence") {
        return std::make_unique<NormalizerSequence>(
            sequence_steps<Normalizer>(j, "normalizers", file, field,
                                       [&](const Json& e, const std::string& f) { return normalizer_of(e, file, f); }));
    }
    bad(file, field + ".type",
        absl::StrCat("normalizer \"", type,
                     "\" is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, Replace, Prepend, Strip, "
                     "Sequence)"));
}

// ---- Pre-tokenizers ---------------------------------------------------------------------------------------

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `s` at the ranges where is_match holds, as tokenizers' NormalizedString::split does.
void split_by(const std::string& s,
              std::vector<std::pair<std::pair<size_t, size_t>, bool>> parts,
              Behavior behavior,
              std::vector<std::string>& out) {
    using Part = std::pair<std::pair<size_t, size_t>, bool>;  // ((begin, end), is_match)
    std::vector<Part> acc;
    switch (behavior) {
        case Behavior::kRemoved:
        case Behavior::kIsolated:
            acc = std::move(parts);
            break;
        case Behavior::kMergedWithPrevious: {
            bool previous_match = false;
            for (const Part& p : parts) {
                if (p.second && !previous_match && !acc.empty()) {
                    acc.back().first.second = p.first.second;
                } else {
                    acc.push_back({p.first, false});
                }
                previous_match = p.second;
            }
            break;
        }
        case Behavior::kMergedWithNext: {
            bool previous_match = false;
            for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
                if (it->second && !previous_match && !acc.empty()) {
                    acc.back().first.first = it->first.first;
                } else {
                    acc.push_back({it->first, false});
                }
                previous_match = it->second;
            }
            std::reverse(acc.begin(), acc.end());
            break;
        }
        case Behavior::kContiguous: {
            bool previous_match = false;
            for (const Part& p : parts) {
                if (p.second == previous_match && !acc.empty()) {
                    acc.back().first.second = p.first.second;
                } else {
                    acc.push_back({p.first, false});
                }
                previous_match = p.second;
            }
            break;
        }
    }
    for (const Part& p : acc) {
        if (behavior == Behavior::kRemoved && p.second) continue;
        if (p.first.second > p.first.first) out.push_back(s.substr(p.first.first, p.first.second - p.first.first));
    }
}

std::vector<std::pair<std::pair<size_t, size_t>, bool>> parts_of(const std::string& s,
                                                                 const std::vector<std::pair<size_t, size_t>>& matches,
                                                                 bool invert) {
    std::vector<std::pair<std::pair<size_t, size_t>, bool>> parts;
    size_t prev = 0;
    for (const auto& [b, e] : matches) {
        if (b > prev) parts.push_back({{prev, b}, invert});
        parts.push_back({{b, e}, !invert});
        prev = e;
    }
    if (prev < s.size()) parts.push_back({{prev, s.size()}, invert});
    return parts;
}

class Split final : public PreTokenizer {
public:
    Split(std::unique_ptr<Regex> regex, std::string literal, Behavior behavior, bool invert)
        : regex_(std::move(regex)), literal_(std::move(literal)), behavior_(behavior), invert_(invert) {}
    std::vector<std::string> split(std::vector<std::string> pieces) const override {
        std::vector<std::string> out;
        for (const std::string& s : pieces) {
            std::vector<std::pair<size_t, size_t>> matches;
            if (regex_) {
                matches = regex_->find_all(s);
            } else if (!literal_.empty()) {
                for (size_t at = s.find(literal_); at != std::string::npos;
                     at = s.find(literal_, at + literal_.size())) {
                    matches.emplace_back(at, at + literal_.size());
                }
            }
            split_by(s, parts_of(s, matches, invert_), behavior_, out);
        }
        return out;
    }

private:
    std::unique_ptr<Regex> regex_;
    std::string literal_;
    Behavior behavior_;
    bool invert_;
};

// Splits on a predicate of code points (Digits, WhitespaceSplit).
class CharSplit final : public PreTokenizer {
public:
    CharSplit(std::function<bool(char32_t)> pred, Behavior behavior) : pred_(std::move(pred)), behavior_(behavior) {}
    std::vector<std::string> split(std::vector<std::string> pieces) const override {
        std::vector<std::string> out;
        for (const std::string& s : pieces) {
            std::vector<std::pair<size_t, size_t>> matches;
            for (size_t p = 0; p < s.size();) {
                const size_t at = p;
                if (pred_(next_code_point(s, p))) matches.emplace_back(at, p);
            }
            split_by(s, parts_of(s, matches, false), behavior_, out);
        }
        return out;
    }

private:
    std::function<bool(char32_t)> pred_;
    Behavior behavior_;
};

constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevel final : public PreTokenizer {
public:
    ByteLevel(bool add_prefix_space, bool use_regex, const std::string& what) : add_prefix_space_(add_prefix_space) {
        if (use_regex) regex_ = std::make_unique<Regex>(kGpt2Pattern, what);
    }
    std::vector<std::string> split(std::vector<std::string> pieces) const override {
        const ByteAlphabet& alphabet = ByteAlphabet::get();
        std::vector<std::string> split;
        for (std::string& s : pieces) {
            if (add_prefix_space_ && (s.empty() || s[0] != ' ')) s.insert(s.begin(), ' ');
            if (regex_) {
                split_by(s, parts_of(s, regex_->find_all(s), false), Behavior::kIsolated, split);
            } else if (!s.empty()) {
                split.push_back(std::move(s));
            }
        }
        std::vector<std::string> out;
        out.reserve(split.size());
        for (const std::string& s : split) {
            std::string mapped;
            mapped.reserve(s.size() * 2);
            for (const char c : s) mapped += alphabet.encode(static_cast<uint8_t>(c));
            out.push_back(std::move(mapped));
        }
        return out;
    }

private:
    bool add_prefix_space_;
    std::unique_ptr<Regex> regex_;
};

class Whitespace final : public PreTokenizer {
public:
    explicit Whitespace(const std::string& what) : regex_(R"(\w+|[^\w\s]+)", what) {}  // \w as Rust's regex
    std::vector<std::string> split(std::vector<std::string> pieces) const override {
        std::vector<std::string> out;
        for (const std::string& s : pieces) split_by(s, parts_of(s, regex_.find_all(s), true), Behavior::kRemoved, out);
        return out;
    }

private:
    Regex regex_;
};

class PreTokenizerSequence final : public PreTokenizer {
public:
    explicit PreTokenizerSequence(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
    std::vector<std::string> split(std::vector<std::string> pieces) const override {
        for (const auto& step : steps_) pieces = step->split(std::move(pieces));
        return pieces;
    }

private:
    std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

Behavior behavior_of(const Json& j, const std::string& file, const std::string& field) {
    const std::string b = get_string(j, "behavior", file, field);
    if (b == "Removed") return Behavior::kRemoved;
    if (b == "Isolated") return Behavior::kIsolated;
    if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
    if (b == "MergedWithNext") return Behavior::kMergedWithNext;
    if (b == "Contiguous") return Behavior::kContiguous;
    bad(file, field + ".behavior", absl::StrCat("unknown behavior \"", b, "\""));
}

std::unique_ptr<PreTokenizer> pre_tokenizer_of(const Json& j, const std::string& file, const std::string& field) {
    const std::string type = type_of(j, file, field);
    if (type == "Split") {
        std::string literal;
        std::unique_ptr<Regex> re = read_pattern(j, literal, file, field);
        return std::make_unique<Split>(std::move(re), literal, behavior_of(j, file, field),
                                       get_bool(j, "invert", false, file, field));
    }
    if (type == "ByteLevel") {
        return std::make_unique<ByteLevel>(get_bool(j, "add_prefix_space", true, file, field),
                                           get_bool(j, "use_regex", true, file, field), file + ": " + field);
    }
    if (type == "Digits") {
        return std::make_unique<CharSplit>(is_numeric, get_bool(j, "individual_digits", false, file, field)
                                                           ? Behavior::kIsolated
                                                           : Behavior::kContiguous);
    }
    if (type == "WhitespaceSplit") return std::make_unique<CharSplit>(is_white_space, Behavior::kRemoved);
    if (type == "Whitespace") return std::make_unique<Whitespace>(file + ": " + field);
    if (type == "Sequence") {
        return std::make_unique<PreTokenizerSequence>(sequence_steps<PreTokenizer>(
            j, "pretokenizers", file, field,
            [&](const Json& e, const std::string& f) { return pre_tokenizer_of(e, file, f); }));
    }
    bad(file, field + ".type",
        absl::StrCat("pre-tokenizer \"", type,
                     "\" is not supported (supported: Split, ByteLevel, Digits, Whitespace, WhitespaceSplit, "
                     "Sequence)"));
}

// ---- Post-processors --------------------------------------------------------------------------------------

using Sequences = PostProcessor::Sequences;

// ByteLevel: trims offsets only; the ids stay as they are.
class KeepIds final : public PostProcessor {
public:
    Sequences process(Sequences seqs, bool) const override { return seqs; }
    bool plain_identity() const override { return true; }
};

// BertProcessing and RobertaProcessing, as tokenizers applies them to every sequence of the list: the first
// becomes cls + ids + sep, each later one ids + sep (Bert) or sep + ids + sep (Roberta).
class ClsSep final : public PostProcessor {
public:
    ClsSep(int64_t cls, int64_t sep, bool roberta) : cls_(cls), sep_(sep), roberta_(roberta) {}
    Sequences process(Sequences seqs, bool add_special) const override {
        if (!add_special) return seqs;
        for (size_t i = 0; i < seqs.size(); ++i) {
            std::vector<int64_t> s;
            s.reserve(seqs[i].size() + 3);
            if (i == 0) {
                s.push_back(cls_);
            } else if (roberta_) {
                s.push_back(sep_);
            }
            s.insert(s.end(), seqs[i].begin(), seqs[i].end());
            s.push_back(sep_);
            seqs[i] = std::move(s);
        }
        return seqs;
    }
    bool plain_identity() const override { return true; }

private:
    int64_t cls_, sep_;
    bool roberta_;
};

// TemplateProcessing: the "single" template for one sequence, "pair" for two; one output sequence per piece —
// $A / $B a copy of that input, a special token its ids (only with add_special).
class Template final : public PostProcessor {
public:
    struct Piece {
        int sequence = -1;         // 0 for $A, 1 for $B, -1 for a special token
        std::vector<int64_t> ids;  // the special token's ids
    };
    Template(std::vector<Piece> single, std::vector<Piece> pair, bool has_pair, std::string where)
        : single_(std::move(single)), pair_(std::move(pair)), has_pair_(has_pair), where_(std::move(where)) {}
    Sequences process(Sequences seqs, bool add_special) const override {
        const std::vector<Piece>* t = seqs.size() == 1 ? &single_ : seqs.size() == 2 && has_pair_ ? &pair_ : nullptr;
        if (t == nullptr) {
            // tokenizers panics here (a TemplateProcessing after a processor that returned another count).
            throw ConfigError(absl::StrCat(where_, ": TemplateProcessing was given ", seqs.size(),
                                           " sequences; its templates take 1", has_pair_ ? " or 2" : ""));
        }
        Sequences out;
        for (const Piece& p : *t) {
            if (p.sequence >= 0) {
                out.push_back(seqs[static_cast<size_t>(p.sequence)]);
            } else if (add_special) {
                out.push_back(p.ids);
            }
        }
        return out;
    }
    bool plain_identity() const override {
        return std::count_if(single_.begin(), single_.end(), [](const Piece& p) { return p.sequence >= 0; }) == 1;
    }

private:
    std::vector<Piece> single_, pair_;
    bool has_pair_;
    std::string where_;
};

class PostProcessorSequence final : public PostProcessor {
public:
    explicit PostProcessorSequence(std::vector<std::unique_ptr<PostProcessor>> steps) : steps_(std::move(steps)) {}
    Sequences process(Sequences seqs, bool add_special) const override {
        for (const auto& s : steps_) seqs = s->process(std::move(seqs), add_special);
        return seqs;
    }
    bool plain_identity() const override {
        return std::all_of(steps_.begin(), steps_.end(), [](const auto& s) { return s->plain_identity(); });
    }

private:
    std::vector<std::unique_ptr<PostProcessor>> steps_;
};

int64_t token_id_of(const Json& v, int64_t vocab_size, const std::string& file, const std::string& field) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab_size) {
        bad(file, field, absl::StrCat("expected a token id in [0, ", vocab_size, "), got ", v.dump()));
    }
    return v.get<int64_t>();
}

std::vector<Template::Piece> template_of(const Json& j,
                                         const char* key,
                                         const std::map<std::string, std::vector<int64_t>>& specials,
                                         const std::string& file,
                                         const std::string& field) {
    const std::string f = absl::StrCat(field, ".", key);
    const auto list = j.find(key);
    if (list == j.end() || !list->is_array()) {
        bad(file, f, "expected a list of {\"Sequence\": {\"id\": \"A\"}} and {\"SpecialToken\": {\"id\": ...}} pieces");
    }
    std::vector<Template::Piece> pieces;
    for (size_t i = 0; i < list->size(); ++i) {
        const Json& p = (*list)[i];
        const std::string pf = absl::StrCat(f, "[", i, "]");
        if (!p.is_object() || p.size() != 1 || !(p.contains("Sequence") || p.contains("SpecialToken"))) {
            bad(file, pf, absl::StrCat("expected {\"Sequence\": {...}} or {\"SpecialToken\": {...}}, got ", p.dump()));
        }
        const bool sequence = p.contains("Sequence");
        const Json& body = sequence ? p["Sequence"] : p["SpecialToken"];
        const std::string idf = absl::StrCat(pf, sequence ? ".Sequence" : ".SpecialToken", ".id");
        if (!body.is_object() || !body.contains("id") || !body["id"].is_string())
            bad(file, idf, "missing or not a string");
        const std::string id = body["id"].get<std::string>();
        if (sequence) {
            if (id != "A" && id != "B") bad(file, idf, absl::StrCat("expected \"A\" or \"B\", got \"", id, "\""));
            if (id == "B" && std::string(key) == "single") {
                bad(file, idf, "the single template has one sequence, $A; it cannot use $B");
            }
            pieces.push_back({id == "A" ? 0 : 1, {}});
        } else {
            const auto it = specials.find(id);
            if (it == specials.end()) {
                bad(file, idf, absl::StrCat("\"", id, "\" is not one of ", field, ".special_tokens"));
            }
            pieces.push_back({-1, it->second});
        }
    }
    return pieces;
}

std::unique_ptr<PostProcessor> post_processor_of(const Json& j,
                                                 int64_t vocab_size,
                                                 const std::string& file,
                                                 const std::string& field) {
    const std::string type = type_of(j, file, field);
    if (type == "ByteLevel") {
        for (const char* key : {"add_prefix_space", "trim_offsets", "use_regex"}) get_bool(j, key, true, file, field);
        return std::make_unique<KeepIds>();
    }
    if (type == "BertProcessing" || type == "RobertaProcessing") {
        auto token = [&](const char* key) {
            const std::string f = absl::StrCat(field, ".", key);
            const auto it = j.find(key);
            if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[0].is_string()) {
                bad(file, f, "expected [\"token\", id]");
            }
            return token_id_of((*it)[1], vocab_size, file, f + "[1]");
        };
        for (const char* key : {"add_prefix_space", "trim_offsets"}) get_bool(j, key, true, file, field);
        return std::make_unique<ClsSep>(token("cls"), token("sep"), type == "RobertaProcessing");
    }
    if (type == "TemplateProcessing") {
        const auto sp = j.find("special_tokens");
        if (sp == j.end() || !sp->is_object()) {
            bad(file, field + ".special_tokens", "expected {\"name\": {\"id\": \"name\", \"ids\": [...], ...}}");
        }
        std::map<std::string, std::vector<int64_t>> specials;
        for (const auto& [name, v] : sp->items()) {
            const std::string f = absl::StrCat(field, ".special_tokens.", name, ".ids");
            if (!v.is_object() || !v.contains("ids") || !v["ids"].is_array()) bad(file, f, "expected a list of ids");
            std::vector<int64_t>& ids = specials[name];
            for (size_t i = 0; i < v["ids"].size(); ++i) {
                ids.push_back(token_id_of(v["ids"][i], vocab_size, file, absl::StrCat(f, "[", i, "]")));
            }
        }
        const bool has_pair = j.contains("pair") && !j["pair"].is_null();
        return std::make_unique<Template>(
            template_of(j, "single", specials, file, field),
            has_pair ? template_of(j, "pair", specials, file, field) : std::vector<Template::Piece>{}, has_pair,
            absl::StrCat(file, ": ", field));
    }
    if (type == "Sequence") {
        return std::make_unique<PostProcessorSequence>(sequence_steps<PostProcessor>(
            j, "processors", file, field,
            [&](const Json& e, const std::string& f) { return post_processor_of(e, vocab_size, file, f); }));
    }
    bad(file, field + ".type",
        absl::StrCat("post-processor \"", type,
                     "\" is not supported (supported: ByteLevel, TemplateProcessing, BertProcessing, "
                     "RobertaProcessing, Sequence)"));
}

}  // namespace

// ---- UTF-8 ------------------------------------------------------------------------------------------------

bool is_white_space(char32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

char32_t next_code_point(std::string_view s, size_t& pos) {
    const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
    const unsigned char b0 = byte(pos);
    if (b0 < 0x80) {
        ++pos;
        return b0;
    }
    // Expected length and the allowed range of the second byte (the rest are 80..BF); an ill-formed sequence
    // is replaced by one U+FFFD per maximal subpart, as Rust's from_utf8_lossy and Python do.
    int n = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    char32_t cp = 0;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        n = 1, cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        n = 2, cp = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        n = 3, cp = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
    } else {
        ++pos;
        return 0xFFFD;
    }
    int i = 1;
    for (; i <= n && pos + i < s.size(); ++i) {
        const unsigned char b = byte(pos + i);
        if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF)) break;
        cp = (cp << 6) | (b & 0x3F);
    }
    pos += i;
    return i == n + 1 ? cp : 0xFFFD;
}

void append_utf8(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

std::string utf8_lossy(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size());
    for (size_t p = 0; p < bytes.size();) {
        const size_t at = p;
        const char32_t cp = next_code_point(bytes, p);
        if (cp == 0xFFFD && !(p - at == 3 && bytes.substr(at, 3) == "\xEF\xBF\xBD")) {
            append_utf8(out, cp);
        } else {
            out.append(bytes.substr(at, p - at));
        }
    }
    return out;
}

// ---- Byte alphabet ----------------------------------------------------------------------------------------

const ByteAlphabet& ByteAlphabet::get() {
    static const ByteAlphabet alphabet;
    return alphabet;
}

ByteAlphabet::ByteAlphabet() {
    from_cp_.fill(-1);
    int next = 0x100;
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(next++);
        append_utf8(to_char_[b], cp);
        from_cp_[cp] = static_cast<int16_t>(b);
    }
}

bool ByteAlphabet::decode(std::string_view s, std::string& out) const {
    std::string bytes;
    for (size_t p = 0; p < s.size();) {
        const char32_t cp = next_code_point(s, p);
        if (cp >= from_cp_.size() || from_cp_[cp] < 0) return false;
        bytes += static_cast<char>(from_cp_[cp]);
    }
    out += bytes;
    return true;
}

// ---- Regex ------------------------------------------------------------------------------------------------

namespace {

// Oniguruma (tokenizers' regex engine) and Rust's regex take \w as letters, marks, decimal digits and connector
// punctuation; PCRE2 10.42's UCP \w lacks the marks. Spell \w out (and \W outside classes) so both agree.
std::string unicode_word_classes(const std::string& pattern) {
    constexpr const char* kWord = R"(\p{L}\p{M}\p{Nd}\p{Pc})";
    std::string out;
    bool in_class = false;
    for (size_t i = 0; i < pattern.size(); ++i) {
        const char c = pattern[i];
        if (c == '\\' && i + 1 < pattern.size()) {
            const char e = pattern[i + 1];
            if (e == 'w') {
                out += in_class ? std::string(kWord) : absl::StrCat("[", kWord, "]");
            } else if (e == 'W' && !in_class) {
                out += absl::StrCat("[^", kWord, "]");
            } else {
                out += c;
                out += e;
            }
            ++i;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            out += c;
            if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
            if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];  // a leading ] is literal
            continue;
        }
        if (c == ']' && in_class) in_class = false;
        out += c;
    }
    return out;
}

}  // namespace

Regex::Regex(const std::string& source, const std::string& what) : what_(what) {
    const std::string pattern = unicode_word_classes(source);
    int err = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &err, &offset, nullptr);
    if (code == nullptr) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        throw ConfigError(absl::StrCat(what, ": invalid regex at offset ", offset, ": ",
                                       reinterpret_cast<const char*>(msg), " (pattern: ", source, ")"));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // best effort: the interpreter runs when JIT is unavailable
    code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
    // Per thread, made once (this runs for every piece of every text): a JIT stack large enough for long runs (the
    // default 32 KiB is not) and match data for the whole match only (pcre2_match returns 0 and still sets it
    // when the pattern has capture groups).
    struct MatchState {
        pcre2_jit_stack* stack = pcre2_jit_stack_create(32 << 10, 64 << 20, nullptr);
        pcre2_match_context* context = pcre2_match_context_create(nullptr);
        pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
        MatchState() { pcre2_jit_stack_assign(context, nullptr, stack); }
        ~MatchState() {
            pcre2_match_data_free(data);
            pcre2_match_context_free(context);
            pcre2_jit_stack_free(stack);
        }
    };
    thread_local MatchState jit;
    auto* code = static_cast<pcre2_code*>(code_);
    pcre2_match_data* md = jit.data;
    std::vector<std::pair<size_t, size_t>> out;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t start = 0;
    uint32_t options = PCRE2_NO_UTF_CHECK;
    while (start <= text.size()) {
        int rc = pcre2_match(code, subject, text.size(), start, options, md, jit.context);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
            rc = pcre2_match(code, subject, text.size(), start, options | PCRE2_NO_JIT, md, jit.context);
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            throw DataError(absl::StrCat(what_, ": regex match failed: ", reinterpret_cast<const char*>(msg)));
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        const size_t b = ov[0], e = ov[1];
        if (e > b) {
            out.emplace_back(b, e);
            start = e;
        } else {
            // An empty match: step over one code point so the scan advances.
            if (b >= text.size()) break;
            size_t p = b;
            next_code_point(text, p);
            start = p;
        }
    }
    return out;
}

// ---- Factories --------------------------------------------------------------------------------------------

std::unique_ptr<Normalizer> make_normalizer(const Json& json, const std::string& file) {
    if (json.is_null()) return nullptr;
    return normalizer_of(json, file, "normalizer");
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& json, const std::string& file) {
    if (json.is_null()) return nullptr;
    return pre_tokenizer_of(json, file, "pre_tokenizer");
}

std::unique_ptr<PostProcessor> make_post_processor(const Json& json, const std::string& file, int64_t vocab_size) {
    if (json.is_null()) return nullptr;
    return post_processor_of(json, vocab_size, file, "post_processor");
}

}  // namespace dsrl::text
