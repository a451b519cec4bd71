// Math-answer extraction and normalisation (SPEC §6), the building blocks of the `math_answer`, `exact_match`,
// `regex_match` and `format` reward modules (rewards/builtins.h): the answer part of a response (reasoning
// stripped), its final \boxed{…} or `Answer:` line, a canonical string form, numbers, and answer equality.
// Pure functions of untrusted text: they never throw on a response's content.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace dsrl::rewards {

/// `s` without leading and trailing ASCII whitespace.
std::string_view trim_ascii(std::string_view s);

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

}  // namespace dsrl::rewards
