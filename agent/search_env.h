// The built-in search environment (issue 20 item 5b): a local JSONL document collection ({"id", "title", "text"}
// per line) indexed with BM25 (k1 1.2, b 0.75 over lower-cased alphanumeric words of title and text), and two
// tools — search(query, k) lists the best documents (id, title, a snippet), open(id) returns one document's text.
// A task is {"question", "answer"}; verify gives 1 when the last assistant message contains the answer
// (case-insensitive, whitespace collapsed), else 0, with the details. A bad tool call (unknown tool, malformed
// arguments, unknown id) is answered as a tool result saying so — the model's mistake, not the environment's.
//
//   EnvRegistry reg; register_builtin_environments(reg);     // search, code_interpreter, synthetic
//   auto env = reg.create("search", {{"corpus", "docs.jsonl"}, {"top_k", 5}});
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/environment.h"

namespace dsrl::agent {

/// A BM25 index over a JSONL collection (immutable; shared by every instance of the environment).
class SearchIndex {
public:
    /// DataError naming the file and line for a malformed row or a duplicate id; ConfigError when the file is missing.
    static std::shared_ptr<const SearchIndex> load(const std::string& path);
    struct Hit {
        std::string id;
        std::string title;
        double score = 0;
    };
    /// The `k` best documents for `query` (score > 0), best first; ties by collection order.
    std::vector<Hit> search(const std::string& query, int64_t k) const;
    /// The document's text, or nullptr.
    const std::string* text(const std::string& id) const;
    size_t size() const { return docs_.size(); }

private:
    struct Doc {
        std::string id, title, text;
        std::map<std::string, int> tf;
        int length = 0;
    };
    std::vector<Doc> docs_;
    std::map<std::string, size_t> by_id_;
    std::map<std::string, int> df_;
    double avg_length_ = 0;
};

/// Words for BM25: lower-cased runs of ASCII letters and digits (other bytes separate words).
std::vector<std::string> search_words(const std::string& text);

/// Registers "search" in `reg` (register_builtin_environments calls it).
void register_search_environment(EnvRegistry& reg);

/// Registers every built-in environment in `reg`: "search" (this file), "code_interpreter" (agent/code_env.h),
/// "calculator" (agent/calculator_env.h) and "synthetic" (agent/synth_env.h).
void register_builtin_environments(EnvRegistry& reg);

}  // namespace dsrl::agent
