#include "text/bpe.h"

#include <queue>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/pipeline.h"

namespace dsrl::text {
namespace {

using Json = nlohmann::json;

constexpr size_t kCacheEntries = 1 << 16;  // pre-tokens remembered (natural text repeats its words)
constexpr size_t kCachedLength = 256;      // longer pre-tokens are not cached

[[noreturn]] void bad(const std::string& file, const std::string& field, const std::string& what) {
    throw ConfigError(absl::StrCat(file, ": model.", field, ": ", what));
}

uint64_t pair_key(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b); }

}  // namespace

std::unique_ptr<Bpe> Bpe::from_json(const Json& model, const std::string& file) {
    if (!model.is_object()) bad(file, "", "expected an object");
    const auto type = model.find("type");
    if (type != model.end() && !(type->is_string() && type->get<std::string>() == "BPE")) {
        bad(file, "type", absl::StrCat("only BPE models are supported, got ", type->dump()));
    }
    std::unique_ptr<Bpe> bpe(new Bpe());
    const auto vocab = model.find("vocab");
    if (vocab == model.end() || !vocab->is_object()) bad(file, "vocab", "missing or not an object");
    int64_t max_id = -1;
    for (const auto& [token, id] : vocab->items()) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (int64_t{1} << 31)) {
            bad(file, absl::StrCat("vocab[\"", token, "\"]"), "expected a non-negative integer id");
        }
        bpe->vocab_[token] = id.get<int64_t>();
        max_id = std::max(max_id, id.get<int64_t>());
    }
    bpe->tokens_.assign(static_cast<size_t>(max_id + 1), "");
    for (const auto& [token, id] : bpe->vocab_) bpe->tokens_[static_cast<size_t>(id)] = token;

    const auto merges = model.find("merges");
    if (merges == model.end() || !merges->is_array()) bad(file, "merges", "missing or not a list");
    bpe->merges_.reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
        const Json& m = (*merges)[i];
        std::string left, right;
        if (m.is_string()) {
            const std::string s = m.get<std::string>();
            const size_t sp = s.find(' ');
            if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
                bad(file, absl::StrCat("merges[", i, "]"), absl::StrCat("expected \"left right\", got \"", s, "\""));
            }
            left = s.substr(0, sp);
            right = s.substr(sp + 1);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
            left = m[0].get<std::string>();
            right = m[1].get<std::string>();
        } else {
            bad(file, absl::StrCat("merges[", i, "]"), "expected \"left right\" or [\"left\", \"right\"]");
        }
        const int64_t a = bpe->id_of(left), b = bpe->id_of(right), r = bpe->id_of(left + right);
        if (a < 0 || b < 0 || r < 0) {
            bad(file, absl::StrCat("merges[", i, "]"),
                absl::StrCat("\"", left, "\" + \"", right, "\": ",
                             a < 0   ? "the left token"
                             : b < 0 ? "the right token"
                                     : "the merged token",
                             " is not in the vocabulary"));
        }
        bpe->merges_.try_emplace(pair_key(a, b), Merge{static_cast<int32_t>(i), static_cast<int32_t>(r)});
    }

    const auto unk = model.find("unk_token");
    if (unk != model.end() && !unk->is_null()) {
        if (!unk->is_string()) bad(file, "unk_token", "expected a string or null");
        bpe->unk_ = bpe->id_of(unk->get<std::string>());
        if (bpe->unk_ < 0)
            bad(file, "unk_token", absl::StrCat("\"", unk->get<std::string>(), "\" is not in the vocabulary"));
    }
    auto flag = [&](const char* key) {
        const auto it = model.find(key);
        if (it == model.end() || it->is_null()) return false;
        if (!it->is_boolean()) bad(file, key, "expected true or false");
        return it->get<bool>();
    };
    bpe->fuse_unk_ = flag("fuse_unk");
    bpe->byte_fallback_ = flag("byte_fallback");
    bpe->ignore_merges_ = flag("ignore_merges");
    if (const auto d = model.find("dropout");
        d != model.end() && !d->is_null() && !(d->is_number() && d->get<double>() == 0)) {
        bad(file, "dropout", "BPE dropout is not supported (training-time randomness); expected null");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
        const auto it = model.find(key);
        if (it != model.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty())) {
            bad(file, key, "not supported (byte-level BPE files leave it null)");
        }
    }
    return bpe;
}

int64_t Bpe::id_of(std::string_view token) const {
    const auto it = vocab_.find(absl::string_view(token.data(), token.size()));
    return it == vocab_.end() ? -1 : it->second;
}

void Bpe::encode(std::string_view word, std::vector<int64_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges_) {
        if (const int64_t id = id_of(word); id >= 0) {
            out.push_back(id);
            return;
        }
    }
    if (word.size() > kCachedLength) {
        encode_uncached(word, out);
        return;
    }
    {
        absl::MutexLock lock(&cache_mu_);
        if (const auto it = cache_.find(absl::string_view(word.data(), word.size())); it != cache_.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    std::vector<int64_t> ids;
    encode_uncached(word, ids);
    out.insert(out.end(), ids.begin(), ids.end());
    absl::MutexLock lock(&cache_mu_);
    if (cache_.size() < kCacheEntries) cache_.try_emplace(std::string(word), std::move(ids));
}

void Bpe::encode_uncached(std::string_view word, std::vector<int64_t>& out) const {
    // Symbols: one per character (or byte-fallback byte), linked so merges are O(1).
    struct Symbol {
        int64_t id;
        int32_t prev, next;
    };
    std::vector<Symbol> sym;
    sym.reserve(word.size());
    bool last_unk = false;
    for (size_t p = 0; p < word.size();) {
        const size_t at = p;
        next_code_point(word, p);
        const std::string_view ch = word.substr(at, p - at);
        if (const int64_t id = id_of(ch); id >= 0) {
            sym.push_back({id, 0, 0});
            last_unk = false;
            continue;
        }
        if (byte_fallback_) {
            bool all = true;
            std::vector<int64_t> bytes;
            for (const char c : ch) {
                const int64_t id = id_of(absl::StrFormat("<0x%02X>", static_cast<unsigned char>(c)));
                if (id < 0) all = false;
                bytes.push_back(id);
            }
            if (all) {
                for (const int64_t id : bytes) sym.push_back({id, 0, 0});
                last_unk = false;
                continue;
            }
        }
        if (unk_ >= 0) {
            if (!(fuse_unk_ && last_unk)) sym.push_back({unk_, 0, 0});
            last_unk = true;
        }
    }
    const int32_t n = static_cast<int32_t>(sym.size());
    for (int32_t i = 0; i < n; ++i) {
        sym[i].prev = i - 1;
        sym[i].next = i + 1 < n ? i + 1 : -1;
    }
    // (rank, position of the left symbol, the pair's ids when queued); stale entries are skipped.
    struct Candidate {
        int32_t rank, pos;
        int64_t left, right;
        bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    auto push = [&](int32_t i) {
        if (i < 0 || sym[i].next < 0) return;
        const auto it = merges_.find(pair_key(sym[i].id, sym[sym[i].next].id));
        if (it != merges_.end()) queue.push({it->second.rank, i, sym[i].id, sym[sym[i].next].id});
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i);
    std::vector<bool> dead(static_cast<size_t>(n), false);
    while (!queue.empty()) {
        const Candidate c = queue.top();
        queue.pop();
        if (dead[c.pos] || sym[c.pos].id != c.left) continue;
        const int32_t r = sym[c.pos].next;
        if (r < 0 || sym[r].id != c.right) continue;
        sym[c.pos].id = merges_.at(pair_key(c.left, c.right)).result;
        dead[r] = true;
        sym[c.pos].next = sym[r].next;
        if (sym[r].next >= 0) sym[sym[r].next].prev = c.pos;
        push(sym[c.pos].prev);
        push(c.pos);
    }
    for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

}  // namespace dsrl::text
