#include "rewards/answer.h"

#include <absl/strings/ascii.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_replace.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// Parsers of untrusted model output: single forward scans with bounded recursion; see Note [Untrusted
// responses] in rewards/builtins.cpp.
namespace dsrl::rewards {
namespace {

constexpr int kMaxTextDepth = 16;  // nesting of \text{\text{...}} unwrapped recursively; deeper is kept raw

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

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
    const std::string plain = absl::StrCat(negative ? "-" : "", digits.empty() ? "0" : digits,
                                           frac_part.empty() ? "" : ".", std::string(frac_part));
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

}  // namespace

std::string_view trim_ascii(std::string_view s) {
    while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
    return s;
}

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
    const std::string_view a = trim_ascii(*last);
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
                             parse_plain_number(body.substr(a_end + 2, b_end - a_end - 2)), negate);
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

}  // namespace dsrl::rewards
