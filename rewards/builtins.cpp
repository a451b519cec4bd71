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
// reward). Every parser (here and in rewards/answer.cpp) is a single forward scan with bounded recursion
// (kMaxTextDepth), never throws on response text, and each sample is scored in its own try block, so one pathological
// sample cannot take its batch down. Only configuration (params, at creation) and data (meta of the sample) produce
// errors.
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
        return RewardResult::failure(absl::StrCat(name_, ": sample (domain '", in.domain, "', prompt_id ", in.prompt_id,
                                                  ") has no meta[\"", key, "\"]; check the dataset's '", key,
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
            return RewardResult::failure(absl::StrCat(name(), ": sample (prompt_id ", in.prompt_id,
                                                      ") has an empty reference answer '", ref->second, "'"));
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
        s = trim_ascii(s);
        std::string out;
        out.reserve(s.size());
        for (size_t i = 0; i < s.size(); ++i) {
            if (normalize_whitespace_ && absl::ascii_isspace(s[i])) {
                while (i + 1 < s.size() && absl::ascii_isspace(s[i + 1])) ++i;
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
                bad_param(p, "pattern",
                          absl::StrCat("is not a usable ECMAScript regex (", e.what(), "): '", pattern_,
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
                return RewardResult::failure(absl::StrCat(name(), ": no param 'pattern' and sample (prompt_id ",
                                                          in.prompt_id, ") has no meta[\"pattern\"]"));
            }
            try {
                per_sample = std::make_unique<std::regex>(compile_pattern(it->second));
            } catch (const std::regex_error& e) {
                return RewardResult::failure(absl::StrCat(name(), ": meta[\"pattern\"] of prompt_id ", in.prompt_id,
                                                          " is not a usable ECMAScript regex (", e.what(), "): '",
                                                          it->second, "'"));
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
            bad_param(p, "close_tag",
                      absl::StrCat("'", close_, "' must differ from open_tag '", open_,
                                   "' and neither may contain the other"));
        }
    }

    RewardResult score_one(const RewardInput& in) override {
        std::string_view s = in.response;
        if (open_in_prompt_) {
            // The chat template already opened the block: the response starts inside it.
            if (count_occurrences(s, open_) != 0) return RewardResult::of(0.0);
        } else {
            while (!s.empty() && absl::ascii_isspace(s.front())) s.remove_prefix(1);
            if (!s.starts_with(open_) || count_occurrences(s, open_) != 1) return RewardResult::of(0.0);
        }
        if (count_occurrences(s, close_) != 1) return RewardResult::of(0.0);
        const std::string_view answer = trim_ascii(s.substr(s.find(close_) + close_.size()));
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
            bad_param(p, "threshold",
                      absl::StrCat("must be in [0, 1] (0 = reward the share itself), got ", threshold_));
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

void register_builtins(Registry& reg) {
    const auto add = [&reg](const std::string& name, const std::string& description, ModuleFactory f) {
        if (!reg.contains(name)) reg.add(name, description, std::move(f));
    };
    add("math_answer", "final \\boxed{} (or 'Answer:' line) vs meta answer; params tol, correct, wrong, require_boxed",
        factory<MathAnswer>());
    add("exact_match", "answer part equals meta answer; params strip_reasoning, case_sensitive, normalize_whitespace",
        factory<ExactMatch>());
    add("regex_match",
        "ECMAScript regex (param pattern or meta pattern) found in the answer part; param strip_reasoning",
        factory<RegexMatch>());
    add("format",
        "one reasoning block at the start, then an answer; params open_tag, close_tag, require_answer, "
        "open_in_prompt",
        factory<Format>());
    add("length_penalty", "penalty in [-scale, 0] over a token target; params target, limit, shape, scale, truncated",
        factory<LengthPenalty>());
    add("language_consistency",
        "share of response letters in the prompt's dominant script; params threshold, strip_reasoning",
        factory<LanguageConsistency>());
}

}  // namespace dsrl::rewards
