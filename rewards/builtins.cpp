#include "rewards/builtins.h"

#include <absl/strings/ascii.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_replace.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <regex>
#include <vector>

#include "core/error.h"

// Note [Untrusted responses]
// A response is model output: any bytes, any length, adversarial by construction (RL optimizes against the
// reward). Every parser here is a single forward scan with bounded recursion (kMaxTextDepth), never throws on
// response text, and each sample is scored in its own try block, so one pathological sample cannot take its
// batch down. Only configuration (params, at creation) and data (meta of the sample) produce errors.
//
// Note [Regex engine]
// libstdc++'s std::regex matches ECMAScript patterns with a recursive backtracking executor whose depth grows
// with the input: `a.*b` over ~100k characters overflows an 8 MiB stack (a segfault, not an exception), and
// nested quantifiers backtrack exponentially. Model responses reach that size, so patterns are compiled with
// libstdc++'s `__polynomial` option, which selects its breadth-first (Thompson) executor: linear in the input
// and iterative. That executor cannot do back-references, so a pattern with one is rejected with a ConfigError.
// Leftmost-longest vs. ECMAScript's priority only changes *which* match is found, never *whether* one exists,
// and regex_match only asks whether. Other standard libraries get plain ECMAScript.

namespace dsrl::rewards {
namespace {

constexpr int kMaxTextDepth = 16;  // nesting of \text{\text{...}} unwrapped recursively; deeper is kept raw

bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
bool is_alpha(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

bool equals_ignore_case(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
        if (absl::ascii_tolower(static_cast<unsigned char>(a[i])) !=
            absl::ascii_tolower(static_cast<unsigned char>(b[i]))) {
            return false;
        }
    }
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
    return s;
}

// Index of the '}' closing the '{' at `open`, or npos when unbalanced. `\{` and `\}` are escaped braces.
size_t matching_brace(std::string_view s, size_t open) {
    int64_t depth = 0;
    for (size_t i = open; i < s.size(); ++i) {
        const char c = s[i];
        if (c == '\\') {
            ++i;
        } else if (c == '{') {
            ++depth;
        } else if (c == '}') {
            if (--depth == 0) return i;
        }
    }
    return std::string_view::npos;
}

// ---- Answer normalization ---------------------------------------------------------------------------------

bool is_text_command(std::string_view name) {
    return name == "text" || name == "textrm" || name == "textbf" || name == "textit" || name == "textnormal" ||
           name == "mathrm" || name == "mathbf" || name == "mathit" || name == "mbox" || name == "boxed" ||
           name == "fbox";
}

bool is_unit_text(std::string_view s) {
    bool any = false;
    for (const char c : s) {
        if (is_alpha(c)) {
            any = true;
        } else if (!is_space(c) && c != '.' && c != '^' && c != '2' && c != '3') {  // "cm^2", "m^3"
            return false;
        }
    }
    return any;
}

bool only_trailing_noise(std::string_view s) {
    for (const char c : s) {
        if (!is_space(c) && c != '.' && c != '$') return false;
    }
    return true;
}

// For each '{' of `s`, the index of its matching '}' (npos when unbalanced); other entries are npos. One pass
// with a stack, so scanning nested or unbalanced groups stays linear (Note [Untrusted responses]).
std::vector<size_t> brace_matches(std::string_view s) {
    std::vector<size_t> match(s.size(), std::string_view::npos);
    std::vector<size_t> open;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\') {
            ++i;
        } else if (s[i] == '{') {
            open.push_back(i);
        } else if (s[i] == '}' && !open.empty()) {
            match[open.back()] = i;
            open.pop_back();
        }
    }
    return match;
}

// First pass of normalize_answer over in[begin, end): drops presentation-only LaTeX and whitespace, unwraps
// text groups. `match` is brace_matches(in).
void emit_normalized(
    std::string_view in, size_t begin, size_t end, const std::vector<size_t>& match, std::string& out, int depth) {
    size_t i = begin;
    while (i < end) {
        const char c = in[i];
        if (is_space(c) || c == '$' || c == '~' || c == '%') {
            ++i;
            continue;
        }
        if (static_cast<unsigned char>(c) == 0xC2 && i + 1 < end && static_cast<unsigned char>(in[i + 1]) == 0xB0) {
            i += 2;  // U+00B0 degree sign
            continue;
        }
        if (c != '\\') {
            out.push_back(c);
            ++i;
            continue;
        }
        // A LaTeX command: a run of letters, or one other character.
        size_t j = i + 1;
        while (j < end && is_alpha(in[j])) ++j;
        if (j == i + 1 && j < end) ++j;
        const std::string_view name = in.substr(i + 1, j - i - 1);
        i = j;
        if (name == "!" || name == "," || name == ";" || name == ":" || name == " " || name == "quad" ||
            name == "qquad" || name == "(" || name == ")" || name == "[" || name == "]" || name == "%" || name == "$" ||
            name == "left" || name == "right" || name == "displaystyle" || name == "circ") {
            continue;
        }
        if (name == "dfrac" || name == "tfrac") {
            out += "\\frac";
            continue;
        }
        if (is_text_command(name)) {
            size_t k = i;
            while (k < end && is_space(in[k])) ++k;
            const size_t close = k < end && in[k] == '{' ? match[k] : std::string_view::npos;
            if (close == std::string_view::npos || close >= end || depth >= kMaxTextDepth) {
                out.push_back('\\');
                out.append(name);
                continue;
            }
            i = close + 1;
            // A unit after a number ("12\text{ cm}") carries no answer; anything else is part of it.
            const std::string_view content = in.substr(k + 1, close - k - 1);
            const bool unit = name != "boxed" && name != "fbox" && is_unit_text(content) &&
                              only_trailing_noise(in.substr(i, end - i)) && normalize_number(out).has_value();
            if (!unit) emit_normalized(in, k + 1, close, match, out, depth + 1);
            continue;
        }
        out.push_back('\\');
        out.append(name);
    }
}

void strip_trailing_dots(std::string& s) {
    while (!s.empty() && s.back() == '.') s.pop_back();
}

// ---- Numbers ----------------------------------------------------------------------------------------------

// An optionally signed integer or decimal, thousands groups allowed only when unambiguous.
std::optional<ParsedNumber> parse_plain_number(std::string_view s) {
    bool negative = false;
    if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
        negative = s[0] == '-';
        s.remove_prefix(1);
    }
    const size_t dot = s.find('.');
    const std::string_view int_part = s.substr(0, dot);
    const std::string_view frac_part = dot == std::string_view::npos ? std::string_view() : s.substr(dot + 1);
    if (dot != std::string_view::npos && frac_part.empty()) return std::nullopt;
    if (int_part.empty() && frac_part.empty()) return std::nullopt;
    for (const char c : frac_part) {
        if (!is_digit(c)) return std::nullopt;
    }
    std::string digits;
    size_t group = 0, num_groups = 1, first_group = 0;
    for (const char c : int_part) {
        if (c == ',') {
            if (num_groups == 1)
                first_group = group;
            else if (group != 3)
                return std::nullopt;
            ++num_groups;
            group = 0;
        } else if (is_digit(c)) {
            digits.push_back(c);
            ++group;
        } else {
            return std::nullopt;
        }
    }
    if (num_groups > 1) {
        // "1,000" is a thousands grouping; "1,00", "0,500", "12345,678" and "1,000,00" are not.
        if (group != 3 || first_group < 1 || first_group > 3 || int_part[0] == '0') return std::nullopt;
    }
    ParsedNumber n;
    n.is_integer = dot == std::string_view::npos;
    const std::string plain = absl::StrCat(
        negative ? "-" : "", digits.empty() ? "0" : digits, frac_part.empty() ? "" : ".", std::string(frac_part));
    if (!absl::SimpleAtod(plain, &n.value)) return std::nullopt;
    if (n.is_integer) {
        const size_t nz = digits.find_first_not_of('0');
        n.digits = nz == std::string::npos ? "0" : absl::StrCat(negative ? "-" : "", digits.substr(nz));
    } else if (!std::isfinite(n.value)) {
        return std::nullopt;
    }
    return n;
}

std::optional<ParsedNumber> make_fraction(const std::optional<ParsedNumber>& a,
                                          const std::optional<ParsedNumber>& b,
                                          bool negate) {
    if (!a || !b || b->value == 0) return std::nullopt;
    ParsedNumber n;
    n.value = (negate ? -a->value : a->value) / b->value;
    if (!std::isfinite(n.value)) return std::nullopt;
    return n;
}

// ---- Scripts ----------------------------------------------------------------------------------------------

struct Range {
    char32_t lo, hi;
    Script script;
};

// Letter ranges (sorted); digits, punctuation and combining marks shared by scripts are left out.
constexpr Range kScriptRanges[] = {
    {0x0041, 0x005A, Script::kLatin},      {0x0061, 0x007A, Script::kLatin},      {0x00C0, 0x00D6, Script::kLatin},
    {0x00D8, 0x00F6, Script::kLatin},      {0x00F8, 0x02AF, Script::kLatin},      {0x0370, 0x037D, Script::kGreek},
    {0x037F, 0x0386, Script::kGreek},      {0x0388, 0x03FF, Script::kGreek},      {0x0400, 0x052F, Script::kCyrillic},
    {0x05D0, 0x05F2, Script::kHebrew},     {0x0620, 0x064A, Script::kArabic},     {0x066E, 0x06D3, Script::kArabic},
    {0x06FA, 0x06FF, Script::kArabic},     {0x0750, 0x077F, Script::kArabic},     {0x08A0, 0x08FF, Script::kArabic},
    {0x0900, 0x0963, Script::kDevanagari}, {0x0970, 0x097F, Script::kDevanagari}, {0x0E01, 0x0E4E, Script::kThai},
    {0x1100, 0x11FF, Script::kHangul},     {0x1C80, 0x1C8F, Script::kCyrillic},   {0x1E00, 0x1EFF, Script::kLatin},
    {0x1F00, 0x1FFF, Script::kGreek},      {0x2C60, 0x2C7F, Script::kLatin},      {0x2DE0, 0x2DFF, Script::kCyrillic},
    {0x3005, 0x3005, Script::kHan},        {0x3007, 0x3007, Script::kHan},        {0x3041, 0x309F, Script::kKana},
    {0x30A1, 0x30FA, Script::kKana},       {0x30FC, 0x30FF, Script::kKana},       {0x3131, 0x318E, Script::kHangul},
    {0x31F0, 0x31FF, Script::kKana},       {0x3400, 0x4DBF, Script::kHan},        {0x4E00, 0x9FFF, Script::kHan},
    {0xA640, 0xA69F, Script::kCyrillic},   {0xA720, 0xA7FF, Script::kLatin},      {0xA960, 0xA97F, Script::kHangul},
    {0xAB30, 0xAB6F, Script::kLatin},      {0xAC00, 0xD7AF, Script::kHangul},     {0xD7B0, 0xD7FF, Script::kHangul},
    {0xF900, 0xFAFF, Script::kHan},        {0xFB1D, 0xFB4F, Script::kHebrew},     {0xFB50, 0xFDFF, Script::kArabic},
    {0xFE70, 0xFEFF, Script::kArabic},     {0xFF21, 0xFF3A, Script::kLatin},      {0xFF41, 0xFF5A, Script::kLatin},
    {0xFF66, 0xFF9F, Script::kKana},       {0x20000, 0x2FA1F, Script::kHan},
};

constexpr bool ranges_sorted_and_disjoint() {
    for (size_t i = 0; i < std::size(kScriptRanges); ++i) {
        if (kScriptRanges[i].lo > kScriptRanges[i].hi) return false;
        if (i > 0 && kScriptRanges[i - 1].hi >= kScriptRanges[i].lo) return false;
    }
    return true;
}
static_assert(ranges_sorted_and_disjoint(), "script_of binary-searches kScriptRanges");

// ---- Modules ----------------------------------------------------------------------------------------------

// Scores each sample on its own (Note [Untrusted responses]): an unexpected exception fails that sample only.
class PerSampleModule : public RewardModule {
  public:
    explicit PerSampleModule(std::string name) : name_(std::move(name)) {}

    std::vector<RewardResult> score(const std::vector<RewardInput>& batch) override {
        std::vector<RewardResult> out;
        out.reserve(batch.size());
        for (const RewardInput& in : batch) {
            try {
                out.push_back(score_one(in));
            } catch (const std::exception& e) {
                out.push_back(RewardResult::failure(absl::StrCat(name_, ": ", e.what())));
            }
        }
        return out;
    }

  protected:
    virtual RewardResult score_one(const RewardInput& in) = 0;
    const std::string& name() const { return name_; }

    RewardResult missing_meta(const RewardInput& in, const char* key) const {
        return RewardResult::failure(absl::StrCat(name_,
                                                  ": sample (domain '",
                                                  in.domain,
                                                  "', prompt_id ",
                                                  in.prompt_id,
                                                  ") has no meta[\"",
                                                  key,
                                                  "\"]; check the dataset's '",
                                                  key,
                                                  "' field"));
    }

  private:
    std::string name_;
};

[[noreturn]] void bad_param(const Params& p, const std::string& key, const std::string& what) {
    throw ConfigError(absl::StrCat("reward module '", p.module(), "': param '", key, "' ", what));
}

class MathAnswer final : public PerSampleModule {
  public:
    explicit MathAnswer(const Params& p)
        : PerSampleModule(p.module()),
          tol_(p.num("tol", 1e-6)),
          correct_(p.num("correct", 1.0)),
          wrong_(p.num("wrong", 0.0)),
          require_boxed_(p.flag("require_boxed", false)) {
        p.check_all_used();
        if (tol_ < 0) bad_param(p, "tol", absl::StrCat("must be >= 0 (a relative tolerance), got ", tol_));
    }

    RewardResult score_one(const RewardInput& in) override {
        const auto ref = in.meta.find("answer");
        if (ref == in.meta.end()) return missing_meta(in, "answer");
        if (normalize_answer(ref->second).empty()) {
            return RewardResult::failure(absl::StrCat(
                name(), ": sample (prompt_id ", in.prompt_id, ") has an empty reference answer '", ref->second, "'"));
        }
        const std::optional<std::string> got = extract_final_answer(strip_reasoning(in.response), !require_boxed_);
        const bool right = got && answers_equal(*got, ref->second, tol_);
        RewardResult r = RewardResult::of(right ? correct_ : wrong_);
        r.components["answered"] = got ? 1.0 : 0.0;
        return r;
    }

  private:
    double tol_, correct_, wrong_;
    bool require_boxed_;
};

class ExactMatch final : public PerSampleModule {
  public:
    explicit ExactMatch(const Params& p)
        : PerSampleModule(p.module()),
          strip_reasoning_(p.flag("strip_reasoning", true)),
          case_sensitive_(p.flag("case_sensitive", true)),
          normalize_whitespace_(p.flag("normalize_whitespace", true)) {
        p.check_all_used();
    }

    RewardResult score_one(const RewardInput& in) override {
        const auto ref = in.meta.find("answer");
        if (ref == in.meta.end()) return missing_meta(in, "answer");
        const std::string_view response = strip_reasoning_ ? strip_reasoning(in.response) : in.response;
        return RewardResult::of(canonical(response) == canonical(ref->second) ? 1.0 : 0.0);
    }

  private:
    std::string canonical(std::string_view s) const {
        s = trim(s);
        std::string out;
        out.reserve(s.size());
        for (size_t i = 0; i < s.size(); ++i) {
            if (normalize_whitespace_ && is_space(s[i])) {
                while (i + 1 < s.size() && is_space(s[i + 1])) ++i;
                out.push_back(' ');
            } else {
                out.push_back(s[i]);
            }
        }
        if (!case_sensitive_) absl::AsciiStrToLower(&out);
        return out;
    }

    bool strip_reasoning_, case_sensitive_, normalize_whitespace_;
};

// Compiles `pattern` (Note [Regex engine]); throws std::regex_error with a readable what().
std::regex compile_pattern(const std::string& pattern) {
    auto flags = std::regex::ECMAScript | std::regex::optimize;
#ifdef __GLIBCXX__
    flags |= std::regex_constants::__polynomial;
#endif
    return std::regex(pattern, flags);
}

class RegexMatch final : public PerSampleModule {
  public:
    explicit RegexMatch(const Params& p)
        : PerSampleModule(p.module()),
          pattern_(p.str("pattern", "")),
          strip_reasoning_(p.flag("strip_reasoning", true)) {
        p.check_all_used();
        if (!pattern_.empty()) {
            try {
                regex_ = std::make_unique<std::regex>(compile_pattern(pattern_));
            } catch (const std::regex_error& e) {
                bad_param(p,
                          "pattern",
                          absl::StrCat("is not a usable ECMAScript regex (",
                                       e.what(),
                                       "): '",
                                       pattern_,
                                       "'; back-references are not supported"));
            }
        }
    }

    RewardResult score_one(const RewardInput& in) override {
        std::unique_ptr<std::regex> per_sample;
        const std::regex* re = regex_.get();
        if (re == nullptr) {
            const auto it = in.meta.find("pattern");
            if (it == in.meta.end() || it->second.empty()) {
                return RewardResult::failure(absl::StrCat(
                    name(), ": no param 'pattern' and sample (prompt_id ", in.prompt_id, ") has no meta[\"pattern\"]"));
            }
            try {
                per_sample = std::make_unique<std::regex>(compile_pattern(it->second));
            } catch (const std::regex_error& e) {
                return RewardResult::failure(absl::StrCat(name(),
                                                          ": meta[\"pattern\"] of prompt_id ",
                                                          in.prompt_id,
                                                          " is not a usable ECMAScript regex (",
                                                          e.what(),
                                                          "): '",
                                                          it->second,
                                                          "'"));
            }
            re = per_sample.get();
        }
        const std::string_view text = strip_reasoning_ ? strip_reasoning(in.response) : in.response;
        return RewardResult::of(std::regex_search(text.begin(), text.end(), *re) ? 1.0 : 0.0);
    }

  private:
    std::string pattern_;
    bool strip_reasoning_;
    std::unique_ptr<std::regex> regex_;  // null: the pattern comes from each sample's meta
};

size_t count_occurrences(std::string_view s, std::string_view what) {
    size_t n = 0;
    for (size_t p = s.find(what); p != std::string_view::npos; p = s.find(what, p + what.size())) ++n;
    return n;
}

class Format final : public PerSampleModule {
  public:
    explicit Format(const Params& p)
        : PerSampleModule(p.module()),
          open_(p.str("open_tag", "<think>")),
          close_(p.str("close_tag", "</think>")),
          require_answer_(p.flag("require_answer", true)),
          open_in_prompt_(p.flag("open_in_prompt", false)) {
        p.check_all_used();
        if (open_.empty()) bad_param(p, "open_tag", "must be non-empty");
        if (close_.empty()) bad_param(p, "close_tag", "must be non-empty");
        if (open_ == close_ || absl::StrContains(open_, close_) || absl::StrContains(close_, open_)) {
            bad_param(p,
                      "close_tag",
                      absl::StrCat(
                          "'", close_, "' must differ from open_tag '", open_, "' and neither may contain the other"));
        }
    }

    RewardResult score_one(const RewardInput& in) override {
        std::string_view s = in.response;
        if (open_in_prompt_) {
            // The chat template already opened the block: the response starts inside it.
            if (count_occurrences(s, open_) != 0) return RewardResult::of(0.0);
        } else {
            while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
            if (!s.starts_with(open_) || count_occurrences(s, open_) != 1) return RewardResult::of(0.0);
        }
        if (count_occurrences(s, close_) != 1) return RewardResult::of(0.0);
        const std::string_view answer = trim(s.substr(s.find(close_) + close_.size()));
        return RewardResult::of(require_answer_ && answer.empty() ? 0.0 : 1.0);
    }

  private:
    std::string open_, close_;
    bool require_answer_, open_in_prompt_;
};

class LengthPenalty final : public PerSampleModule {
  public:
    enum class Shape { kLinear, kQuadratic, kStep };

    explicit LengthPenalty(const Params& p)
        : PerSampleModule(p.module()),
          target_(p.integer("target", 0)),
          limit_(p.integer("limit", 0)),
          scale_(p.num("scale", 1.0)),
          truncated_(p.num("truncated", 0.0)) {
        const std::string shape = p.str("shape", "linear");
        p.check_all_used();
        if (target_ <= 0) bad_param(p, "target", absl::StrCat("is required: a positive token count, got ", target_));
        if (limit_ < 0 || (limit_ > 0 && limit_ < target_)) {
            bad_param(p, "limit", absl::StrCat("must be 0 (none) or >= target ", target_, ", got ", limit_));
        }
        if (scale_ < 0) bad_param(p, "scale", absl::StrCat("must be >= 0, got ", scale_));
        if (truncated_ < 0) {
            bad_param(p, "truncated", absl::StrCat("is a penalty magnitude and must be >= 0, got ", truncated_));
        }
        if (shape == "linear")
            shape_ = Shape::kLinear;
        else if (shape == "quadratic")
            shape_ = Shape::kQuadratic;
        else if (shape == "step")
            shape_ = Shape::kStep;
        else
            bad_param(p, "shape", absl::StrCat("must be linear, quadratic or step, got '", shape, "'"));
    }

    RewardResult score_one(const RewardInput& in) override {
        const int64_t len = in.response_tokens;
        if (len < 0) {
            return RewardResult::failure(
                absl::StrCat(name(), ": response_tokens ", len, " is negative (prompt_id ", in.prompt_id, ")"));
        }
        double penalty = 0.0;
        if (limit_ > 0 && len > limit_) {
            penalty = -scale_;
        } else if (len > target_) {
            const double over = static_cast<double>(len - target_) / static_cast<double>(target_);
            switch (shape_) {
                case Shape::kLinear:
                    penalty = -scale_ * over;
                    break;
                case Shape::kQuadratic:
                    penalty = -scale_ * over * over;
                    break;
                case Shape::kStep:
                    penalty = -scale_;
                    break;
            }
            penalty = std::clamp(penalty, -scale_, 0.0);
        }
        if (in.finish_reason == "length") penalty -= truncated_;
        return RewardResult::of(penalty);
    }

  private:
    int64_t target_, limit_;
    double scale_, truncated_;
    Shape shape_ = Shape::kLinear;
};

class LanguageConsistency final : public PerSampleModule {
  public:
    explicit LanguageConsistency(const Params& p)
        : PerSampleModule(p.module()),
          strip_reasoning_(p.flag("strip_reasoning", true)),
          threshold_(p.num("threshold", 0.0)) {
        p.check_all_used();
        if (threshold_ < 0 || threshold_ > 1) {
            bad_param(
                p, "threshold", absl::StrCat("must be in [0, 1] (0 = reward the share itself), got ", threshold_));
        }
    }

    // Note [Language consistency choices]
    // - The dominant script is the prompt's most frequent one (ties: the first in Script order).
    // - Japanese mixes kana and kanji: a kana-dominant prompt also accepts Han letters, and a Han-dominant
    //   prompt that contains any kana (Japanese, not Chinese) also accepts kana.
    // - A prompt without letters imposes nothing: reward 1. A response (answer part) without letters scores 0:
    //   it shows no consistency, and scoring it 1 would reward empty or symbol-only output.
    RewardResult score_one(const RewardInput& in) override {
        const ScriptCounts prompt = count_scripts(in.prompt);
        if (prompt.letters() == 0) return result(1.0);
        int dominant = 1;
        for (int s = 1; s < kNumScripts; ++s) {
            if (prompt.count[s] > prompt.count[dominant]) dominant = s;
        }
        bool accept[kNumScripts] = {};
        accept[dominant] = true;
        constexpr int kHan = static_cast<int>(Script::kHan), kKana = static_cast<int>(Script::kKana);
        if (dominant == kKana || (dominant == kHan && prompt.count[kKana] > 0)) accept[kHan] = accept[kKana] = true;

        const ScriptCounts resp = count_scripts(strip_reasoning_ ? strip_reasoning(in.response) : in.response);
        if (resp.letters() == 0) return result(0.0);
        int64_t consistent = 0;
        for (int s = 1; s < kNumScripts; ++s) {
            if (accept[s]) consistent += resp.count[s];
        }
        return result(static_cast<double>(consistent) / static_cast<double>(resp.letters()));
    }

  private:
    RewardResult result(double share) const {
        RewardResult r = RewardResult::of(threshold_ > 0 ? (share >= threshold_ ? 1.0 : 0.0) : share);
        r.components["share"] = share;
        return r;
    }

    bool strip_reasoning_;
    double threshold_;
};

template <typename M>
ModuleFactory factory() {
    return [](const Params& p) -> std::unique_ptr<RewardModule> { return std::make_unique<M>(p); };
}

}  // namespace

// ---- Helpers ----------------------------------------------------------------------------------------------

std::string_view strip_reasoning(std::string_view text, std::string_view open_tag, std::string_view close_tag) {
    const size_t close = close_tag.empty() ? std::string_view::npos : text.rfind(close_tag);
    if (close != std::string_view::npos) return text.substr(close + close_tag.size());
    const size_t open = open_tag.empty() ? std::string_view::npos : text.find(open_tag);
    if (open != std::string_view::npos) return text.substr(0, open);
    return text;
}

std::optional<std::string> extract_final_answer(std::string_view text, bool allow_answer_line) {
    bool found_box = false;
    std::optional<std::string_view> last;
    for (size_t i = text.find('\\'); i != std::string_view::npos; i = text.find('\\', i)) {
        const std::string_view rest = text.substr(i + 1);
        const size_t len = rest.starts_with("boxed") ? 5 : rest.starts_with("fbox") ? 4 : 0;
        size_t j = i + 1 + len;
        if (len == 0 || (j < text.size() && is_alpha(text[j]))) {  // another command, e.g. \boxedtext
            ++i;
            continue;
        }
        found_box = true;
        while (j < text.size() && is_space(text[j])) ++j;
        if (j < text.size() && text[j] == '{') {
            const size_t close = matching_brace(text, j);
            if (close == std::string_view::npos) {
                last.reset();  // unterminated: it runs to the end, so it is the last box and it is no answer
                break;
            }
            last = text.substr(j + 1, close - j - 1);
            i = close + 1;
        } else {
            // "\boxed 5": the next run of characters other than space, '$' and braces.
            size_t k = j;
            while (k < text.size() && !is_space(text[k]) && text[k] != '$' && text[k] != '{' && text[k] != '}') ++k;
            if (k == j)
                last.reset();
            else
                last = text.substr(j, k - j);
            i = std::max(k, i + 1);
        }
    }
    if (!found_box && allow_answer_line) {
        size_t start = 0;
        while (start <= text.size()) {
            size_t end = text.find('\n', start);
            if (end == std::string_view::npos) end = text.size();
            std::string_view line = text.substr(start, end - start);
            while (!line.empty() && (is_space(line.front()) || line.front() == '*' || line.front() == '#')) {
                line.remove_prefix(1);
            }
            for (const std::string_view key : {std::string_view("answer:"), std::string_view("final answer:")}) {
                if (line.size() >= key.size() && equals_ignore_case(line.substr(0, key.size()), key)) {
                    std::string_view a = line.substr(key.size());
                    while (!a.empty() && (is_space(a.front()) || a.front() == '*')) a.remove_prefix(1);
                    while (!a.empty() && (is_space(a.back()) || a.back() == '*')) a.remove_suffix(1);
                    last = a;
                }
            }
            start = end + 1;
        }
    }
    if (!last) return std::nullopt;
    const std::string_view a = trim(*last);
    if (a.empty()) return std::nullopt;
    return std::string(a);
}

std::string normalize_answer(std::string_view answer) {
    std::string s;
    s.reserve(answer.size());
    emit_normalized(answer, 0, answer.size(), brace_matches(answer), s, 0);
    s = absl::StrReplaceAll(s, {{"^{}", ""}});
    while (!s.empty() && s.back() == '^') s.pop_back();  // "30^\circ" leaves a dangling '^'
    strip_trailing_dots(s);
    {
        const std::vector<size_t> match = brace_matches(s);
        size_t k = 0;  // peel k wrapping brace pairs: "{{7}}" -> "7"
        while (2 * k + 2 <= s.size() && s[k] == '{' && match[k] == s.size() - 1 - k) ++k;
        s = s.substr(k, s.size() - 2 * k);
    }
    if (s.size() > 2 && is_alpha(s[0]) && s[1] == '=' && s.find('=', 2) == std::string::npos) s.erase(0, 2);
    if (s.size() > 1 && s[0] == '+') s.erase(0, 1);
    strip_trailing_dots(s);
    return s;
}

std::optional<ParsedNumber> normalize_number(std::string_view s) {
    if (s.empty()) return std::nullopt;
    bool negate = false;
    std::string_view body = s;
    if (body[0] == '-' || body[0] == '+') {
        negate = body[0] == '-';
        body.remove_prefix(1);
    }
    if (body.starts_with("\\frac")) {
        body.remove_prefix(5);
        if (body.size() == 2 && is_digit(body[0]) && is_digit(body[1])) {  // \frac12
            return make_fraction(parse_plain_number(body.substr(0, 1)), parse_plain_number(body.substr(1)), negate);
        }
        if (body.empty() || body[0] != '{') return std::nullopt;
        const size_t a_end = matching_brace(body, 0);
        if (a_end == std::string_view::npos || a_end + 1 >= body.size() || body[a_end + 1] != '{') return std::nullopt;
        const size_t b_end = matching_brace(body, a_end + 1);
        if (b_end != body.size() - 1) return std::nullopt;
        return make_fraction(parse_plain_number(body.substr(1, a_end - 1)),
                             parse_plain_number(body.substr(a_end + 2, b_end - a_end - 2)),
                             negate);
    }
    const size_t slash = s.find('/');
    if (slash != std::string_view::npos) {
        return make_fraction(parse_plain_number(s.substr(0, slash)), parse_plain_number(s.substr(slash + 1)), false);
    }
    return parse_plain_number(s);
}

bool answers_equal(std::string_view response_answer, std::string_view reference, double tol) {
    const std::string a = normalize_answer(response_answer);
    const std::string b = normalize_answer(reference);
    if (a.empty() || b.empty()) return false;
    const std::optional<ParsedNumber> x = normalize_number(a);
    const std::optional<ParsedNumber> y = normalize_number(b);
    if (x && y) {
        if (x->is_integer && y->is_integer) return x->digits == y->digits;
        if (!std::isfinite(x->value) || !std::isfinite(y->value)) return false;
        return x->value == y->value ||
               std::abs(x->value - y->value) <= tol * std::max(std::abs(x->value), std::abs(y->value));
    }
    return a == b;
}

Script script_of(char32_t cp) {
    if (cp < 0x41) return Script::kNone;
    // Binary search over kScriptRanges by upper bound.
    const auto* end = std::end(kScriptRanges);
    const auto* it =
        std::lower_bound(std::begin(kScriptRanges), end, cp, [](const Range& r, char32_t v) { return r.hi < v; });
    return it != end && it->lo <= cp ? it->script : Script::kNone;
}

int64_t ScriptCounts::letters() const {
    int64_t n = 0;
    for (int s = 1; s < kNumScripts; ++s) n += count[s];
    return n;
}

ScriptCounts count_scripts(std::string_view utf8) {
    ScriptCounts counts;
    size_t i = 0;
    while (i < utf8.size()) {
        const auto b = static_cast<unsigned char>(utf8[i]);
        size_t len = 0;
        char32_t cp = 0, min = 0;
        if (b < 0x80) {
            len = 1, cp = b;
        } else if ((b & 0xE0) == 0xC0) {
            len = 2, cp = b & 0x1F, min = 0x80;
        } else if ((b & 0xF0) == 0xE0) {
            len = 3, cp = b & 0x0F, min = 0x800;
        } else if ((b & 0xF8) == 0xF0) {
            len = 4, cp = b & 0x07, min = 0x10000;
        }
        bool valid = len > 0 && i + len <= utf8.size();
        for (size_t k = 1; valid && k < len; ++k) {
            const auto c = static_cast<unsigned char>(utf8[i + k]);
            valid = (c & 0xC0) == 0x80;
            cp = (cp << 6) | (c & 0x3F);
        }
        valid = valid && cp >= min && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
        if (!valid) {
            ++i;  // skip one invalid byte and resynchronize
            continue;
        }
        ++counts.count[static_cast<int>(script_of(cp))];
        i += len;
    }
    counts.count[0] = 0;  // kNone is not a script
    return counts;
}

void register_builtins(Registry& reg) {
    const auto add = [&reg](const std::string& name, const std::string& description, ModuleFactory f) {
        if (!reg.contains(name)) reg.add(name, description, std::move(f));
    };
    add("math_answer",
        "final \\boxed{} (or 'Answer:' line) vs meta answer; params tol, correct, wrong, require_boxed",
        factory<MathAnswer>());
    add("exact_match",
        "answer part equals meta answer; params strip_reasoning, case_sensitive, normalize_whitespace",
        factory<ExactMatch>());
    add("regex_match",
        "ECMAScript regex (param pattern or meta pattern) found in the answer part; param strip_reasoning",
        factory<RegexMatch>());
    add("format",
        "one reasoning block at the start, then an answer; params open_tag, close_tag, require_answer, "
        "open_in_prompt",
        factory<Format>());
    add("length_penalty",
        "penalty in [-scale, 0] over a token target; params target, limit, shape, scale, truncated",
        factory<LengthPenalty>());
    add("language_consistency",
        "share of response letters in the prompt's dominant script; params threshold, strip_reasoning",
        factory<LanguageConsistency>());
}

}  // namespace dsrl::rewards
