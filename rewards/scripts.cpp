#include "rewards/scripts.h"

#include <algorithm>
#include <iterator>

namespace dsrl::rewards {
namespace {

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

}  // namespace

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

}  // namespace dsrl::rewards
