// Built-in rule-based reward modules (SPEC §6): math/numeric answer verification, exact and regex match, the
// `<think>…</think>` format check, a length penalty and language consistency. register_builtins() (declared in
// rewards/reward.h) adds them to a Registry under these names:
//
//   math_answer           1/0 (params correct/wrong): last \boxed{…} (or `Answer:` line) vs meta["answer"]
//   exact_match           1/0: the answer part of the response equals meta["answer"]
//   regex_match           1/0: param `pattern` (or meta["pattern"]) found in the answer part
//   format                1/0: exactly one reasoning block at the start, then a non-empty answer
//   length_penalty        in [-scale, 0] (minus `truncated` when cut off): tokens over `target`
//   language_consistency  share in [0, 1] of the response's letters in the prompt's dominant script
//
// Responses are untrusted model output: no module throws or fails because of a response's text (any bytes,
// any length); failures are data problems (no reference answer, a bad per-sample pattern). Bad params throw
// ConfigError at creation. The pure helpers below are the modules' building blocks, exposed for tests.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "rewards/reward.h"

namespace dsrl::rewards {

/// The answer part of a response: the text after the LAST `close_tag` when there is one; else, when an
/// `open_tag` is present (reasoning never finished), the text before the first `open_tag`; else all of it.
std::string_view strip_reasoning(std::string_view text,
                                 std::string_view open_tag = "<think>",
                                 std::string_view close_tag = "</think>");

/// The final answer of `text` (reasoning already stripped): the content of the last complete `\boxed{…}` or
/// `\fbox{…}` (balanced braces, nesting allowed); else, when `allow_answer_line`, the rest of the last line
/// that starts with `Answer:` (case-insensitive, optionally wrapped in `**`). nullopt when there is none,
/// when the last `\boxed` is unterminated (a cut-off answer is no answer) or when the answer is empty.
std::optional<std::string> extract_final_answer(std::string_view text, bool allow_answer_line);

/// A canonical form of a math answer for string comparison: drops `$`, `\(` `\)` `\[` `\]`, whitespace, LaTeX
/// spacing (`\! \, \; \: \quad`), `\left`/`\right`, degree signs, `%`, trailing `.`, a leading `+`, a single-
/// letter left-hand side (`x=5` → `5`), wrapping braces and `\boxed`; `\dfrac`/`\tfrac` → `\frac`; unwraps
/// `\text{…}` (and `\mathrm`, `\textbf`, `\mbox`, …), dropping it entirely when it is a unit after a number.
std::string normalize_answer(std::string_view answer);

/// A number parsed from a normalized answer.
struct ParsedNumber {
    double value = 0;
    bool is_integer = false;  ///< a plain integer literal; `digits` then holds its canonical form
    std::string digits;       ///< e.g. "-1000" for "-1,000", "0" for "-0" / "000"
};

/// Parses a normalized answer as a number: an integer or decimal with an optional sign (thousands groups
/// `1,234,567` accepted only when every group after the first has exactly 3 digits and the first has 1-3 digits
/// without a leading zero), `a/b` or `\frac{a}{b}` / `\frac12` of such numbers (b ≠ 0), with an optional sign
/// in front. nullopt for anything else (expressions, intervals, words).
std::optional<ParsedNumber> normalize_number(std::string_view normalized);

/// True when two answers agree: both numbers → integers compare exactly (any size), otherwise
/// |a − b| ≤ tol · max(|a|, |b|); else the normalized strings are equal. An empty answer never matches.
bool answers_equal(std::string_view response_answer, std::string_view reference, double tol);

/// Scripts counted by language_consistency (letters only; digits, punctuation and symbols are no script).
enum class Script : uint8_t {
    kNone = 0,
    kLatin,
    kCyrillic,
    kGreek,
    kArabic,
    kHebrew,
    kHan,
    kKana,
    kHangul,
    kDevanagari,
    kThai,
};
constexpr int kNumScripts = static_cast<int>(Script::kThai) + 1;

/// The script of one Unicode code point (kNone for non-letters and scripts not listed).
Script script_of(char32_t cp);

/// Decodes UTF-8 and counts letters per script (indexed by Script); invalid bytes are skipped one at a time.
struct ScriptCounts {
    int64_t count[kNumScripts] = {};
    int64_t letters() const;
};
ScriptCounts count_scripts(std::string_view utf8);

}  // namespace dsrl::rewards
