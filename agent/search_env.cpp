#include "agent/search_env.h"

#include "agent/calculator_env.h"
#include "agent/code_env.h"
#include "agent/question_env.h"
#include "agent/synth_env.h"

#include <absl/strings/ascii.h>
#include <absl/strings/str_cat.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <mutex>

namespace dsrl::agent {
namespace {

constexpr double kK1 = 1.2, kB = 0.75;

class SearchEnvironment : public QuestionEnvironment {
public:
    SearchEnvironment(std::shared_ptr<const SearchIndex> index, int64_t top_k)
        : QuestionEnvironment("search"), index_(std::move(index)), k_(top_k) {}

private:
    Json tools() const override {
        return Json::array(
            {tool_schema("search", "Search the document collection; returns the best documents' ids and titles.",
                         {{"query", {{"type", "string"}}}, {"k", {{"type", "integer"}}}}, {"query"}),
             tool_schema("open", "Return one document's text by its id.", {{"id", {{"type", "string"}}}}, {"id"})});
    }

    std::string answer(const std::string& name, const Json& args) const override {
        if (name == "search") {
            if (!args.contains("query") || !args["query"].is_string()) return "error: search needs a string \"query\"";
            const int64_t k = args.contains("k") && args["k"].is_number_integer()
                                  ? std::clamp<int64_t>(args["k"].get<int64_t>(), 1, 20)
                                  : k_;
            Json hits = Json::array();
            for (const SearchIndex::Hit& h : index_->search(args["query"].get<std::string>(), k)) {
                hits.push_back({{"id", h.id}, {"title", h.title}});
            }
            return hits.empty() ? std::string("no document matches") : hits.dump();
        }
        if (name == "open") {
            if (!args.contains("id") || !args["id"].is_string()) return "error: open needs a string \"id\"";
            const std::string* text = index_->text(args["id"].get<std::string>());
            return text != nullptr ? *text : absl::StrCat("error: no document '", args["id"].get<std::string>(), "'");
        }
        return absl::StrCat("error: unknown tool '", name, "' (tools: search, open)");
    }

    std::shared_ptr<const SearchIndex> index_;
    int64_t k_;
};

}  // namespace

std::vector<std::string> search_words(const std::string& text) {
    std::vector<std::string> out;
    std::string word;
    for (const char c : text) {
        if (absl::ascii_isalnum(static_cast<unsigned char>(c))) {
            word.push_back(absl::ascii_tolower(static_cast<unsigned char>(c)));
        } else if (!word.empty()) {
            out.push_back(std::move(word));
            word.clear();
        }
    }
    if (!word.empty()) out.push_back(std::move(word));
    return out;
}

std::shared_ptr<const SearchIndex> SearchIndex::load(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw ConfigError(absl::StrCat("search environment: cannot open the corpus '", path, "'"));
    auto index = std::make_shared<SearchIndex>();
    std::string line;
    int64_t total = 0;
    for (int64_t n = 1; std::getline(in, line); ++n) {
        if (absl::StripAsciiWhitespace(line).empty()) continue;
        Json row;
        try {
            row = Json::parse(line);
        } catch (const Json::exception& e) {
            throw DataError(absl::StrCat(path, ":", n, ": not JSON: ", e.what()));
        }
        if (!row.is_object() || !row.contains("id") || !row["id"].is_string() || !row.contains("text") ||
            !row["text"].is_string()) {
            throw DataError(absl::StrCat(path, ":", n, ": a document needs string \"id\" and \"text\""));
        }
        Doc d{row["id"].get<std::string>(), row.value("title", std::string()), row["text"].get<std::string>(), {}, 0};
        if (!index->by_id_.emplace(d.id, index->docs_.size()).second) {
            throw DataError(absl::StrCat(path, ":", n, ": document id '", d.id, "' appears twice"));
        }
        for (const std::string& w : search_words(d.title + " " + d.text)) {
            if (d.tf[w]++ == 0) ++index->df_[w];
            ++d.length;
        }
        total += d.length;
        index->docs_.push_back(std::move(d));
    }
    if (index->docs_.empty()) throw DataError(absl::StrCat(path, ": the corpus holds no document"));
    index->avg_length_ = static_cast<double>(total) / static_cast<double>(index->docs_.size());
    return index;
}

std::vector<SearchIndex::Hit> SearchIndex::search(const std::string& query, int64_t k) const {
    const double n = static_cast<double>(docs_.size());
    std::vector<Hit> hits;
    const std::vector<std::string> words = search_words(query);
    for (const Doc& d : docs_) {
        double score = 0;
        for (const std::string& w : words) {
            const auto tf = d.tf.find(w);
            if (tf == d.tf.end()) continue;
            const double df = df_.at(w);
            const double idf = std::log(1.0 + (n - df + 0.5) / (df + 0.5));
            const double f = tf->second;
            score += idf * f * (kK1 + 1) / (f + kK1 * (1 - kB + kB * d.length / std::max(avg_length_, 1e-9)));
        }
        if (score > 0) hits.push_back({d.id, d.title, score});
    }
    std::stable_sort(hits.begin(), hits.end(), [](const Hit& a, const Hit& b) { return a.score > b.score; });
    if (static_cast<int64_t>(hits.size()) > k) hits.resize(static_cast<size_t>(std::max<int64_t>(k, 0)));
    return hits;
}

const std::string* SearchIndex::text(const std::string& id) const {
    const auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &docs_[it->second].text;
}

void register_builtin_environments(EnvRegistry& reg) {
    register_search_environment(reg);
    register_code_environment(reg);
    register_calculator_environment(reg);
    register_synthetic_environment(reg);
}

void register_search_environment(EnvRegistry& reg) {
    reg.add(
        "search", "BM25 search over a local JSONL collection: tools search(query, k) and open(id)",
        [](const Json& params) -> std::unique_ptr<Environment> {
            if (!params.is_object() || !params.contains("corpus") || !params["corpus"].is_string()) {
                throw ConfigError("environment 'search': params need a string \"corpus\" (a JSONL file)");
            }
            // One index per corpus file, shared by every trajectory's instance.
            static std::mutex mu;
            static std::map<std::string, std::shared_ptr<const SearchIndex>> cache;
            const std::string path = params["corpus"].get<std::string>();
            std::shared_ptr<const SearchIndex> index;
            {
                const std::lock_guard<std::mutex> lock(mu);
                auto& slot = cache[path];
                if (!slot) slot = SearchIndex::load(path);
                index = slot;
            }
            const int64_t k = params.value("top_k", int64_t{5});
            if (k < 1) throw ConfigError("environment 'search': top_k must be >= 1");
            return std::make_unique<SearchEnvironment>(index, k);
        },
        std::vector<std::string>{"corpus", "top_k"});
}

}  // namespace dsrl::agent
