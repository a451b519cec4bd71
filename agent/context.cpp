#include "agent/context.h"

#include <absl/strings/str_cat.h>

#include <cmath>

namespace dsrl::agent {
namespace {

template <typename J>
const std::string& role_of(const J& messages, size_t i) {
    const J& m = messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
        throw DataError(absl::StrCat("context management: message ", i, " has no string \"role\""));
    }
    return m["role"].template get_ref<const std::string&>();
}

template <typename J>
bool makes_tool_calls(const J& m) {
    const auto it = m.find("tool_calls");
    return it != m.end() && it->is_array() && !it->empty();
}

template <typename J>
std::vector<ToolRound> rounds_of(const J& messages) {
    if (!messages.is_array()) throw DataError("context management: messages must be an array");
    std::vector<ToolRound> rounds;
    for (size_t i = 0; i < messages.size(); ++i) {
        if (role_of(messages, i) != "assistant" || !makes_tool_calls(messages[i])) continue;
        ToolRound r{i, i};
        while (r.last + 1 < messages.size() && role_of(messages, r.last + 1) == "tool") ++r.last;
        rounds.push_back(r);
        i = r.last;
    }
    return rounds;
}

template <typename J>
J discard(const J& messages, double fraction, int64_t* removed) {
    if (!(fraction >= 0 && fraction <= 1)) {
        throw ConfigError(
            absl::StrCat("context management: the fraction to discard must be in [0, 1], got ", fraction));
    }
    const std::vector<ToolRound> rounds = rounds_of(messages);
    const auto drop = static_cast<size_t>(std::ceil(fraction * static_cast<double>(rounds.size()) - 1e-9));
    std::vector<bool> gone(messages.size(), false);
    for (size_t k = 0; k < drop; ++k) {
        for (size_t i = rounds[k].first; i <= rounds[k].last; ++i) gone[i] = true;
    }
    J out = J::array();
    for (size_t i = 0; i < messages.size(); ++i) {
        if (!gone[i]) out.push_back(messages[i]);
    }
    if (removed != nullptr) *removed = static_cast<int64_t>(drop);
    return out;
}

}  // namespace

std::vector<ToolRound> tool_rounds(const Json& messages) { return rounds_of(messages); }

Json discard_tool_rounds(const Json& messages, double fraction, int64_t* removed) {
    return discard(messages, fraction, removed);
}

OrderedJson discard_tool_rounds(const OrderedJson& messages, double fraction, int64_t* removed) {
    return discard(messages, fraction, removed);
}

bool context_exceeded(int64_t tokens, int64_t window, double threshold) {
    return window > 0 && static_cast<double>(tokens) > threshold * static_cast<double>(window);
}

}  // namespace dsrl::agent
