// Unicode scripts of letters (SPEC §6), the building block of the `language_consistency` reward module
// (rewards/builtins.h): the script of a code point and per-script letter counts of UTF-8 text (invalid bytes are
// skipped, never an error).
#pragma once

#include <cstdint>
#include <string_view>

namespace dsrl::rewards {

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
