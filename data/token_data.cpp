#include "data/token_data.h"

#include <ATen/ops/from_blob.h>
#include <ATen/ops/stack.h>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <nlohmann/json.hpp>

#include <map>
#include <utility>

#include "core/error.h"
#include "core/fs.h"
#include "core/rng.h"

namespace dsrl::data {
namespace {

constexpr int64_t kFirstId = 16;  // ids below are the tokenizer's specials

// A counter-based generator: draw j of window i is mix64(state + j·golden), no state beyond the counter.
class WindowRng {
public:
    explicit WindowRng(uint64_t seed) : state_(seed) {}
    uint64_t next() { return rng::mix64(state_ += 0x9E3779B97F4A7C15ull); }
    int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }

private:
    uint64_t state_;
};

class RetrievalSource final : public TokenSource {
public:
    RetrievalSource(std::string name, int64_t seq_len, int64_t keys, uint64_t seed, int64_t bos)
        : name_(std::move(name)), seq_len_(seq_len), keys_(keys), seed_(seed), bos_(bos) {}
    std::string name() const override { return name_; }
    int64_t seq_len() const override { return seq_len_; }

    TokenWindow get(int64_t index) const override {
        const int64_t K = keys_;
        WindowRng r(rng::mix64(seed_ ^ rng::mix64(static_cast<uint64_t>(index) + 0x5151ull)));
        // Sattolo's algorithm: a uniformly random cyclic permutation, so the chain visits all K symbols
        // before repeating (no short cycle to copy from nearby).
        std::vector<int64_t> perm(static_cast<size_t>(K));
        for (int64_t i = 0; i < K; ++i) perm[i] = i;
        for (int64_t i = K - 1; i > 0; --i) std::swap(perm[i], perm[r.below(i)]);
        std::vector<int64_t> order(static_cast<size_t>(K));
        for (int64_t i = 0; i < K; ++i) order[i] = i;
        for (int64_t i = K - 1; i > 0; --i) std::swap(order[i], order[r.below(i + 1)]);

        TokenWindow w;
        w.ids.reserve(static_cast<size_t>(seq_len_));
        w.loss_mask.assign(static_cast<size_t>(seq_len_), 0);
        w.ids.push_back(bos_);
        for (const int64_t a : order) w.ids.push_back(kFirstId + K + a * K + perm[a]);
        int64_t x = r.below(K);
        const int64_t x0_pos = static_cast<int64_t>(w.ids.size());
        while (static_cast<int64_t>(w.ids.size()) < seq_len_) {
            w.ids.push_back(kFirstId + x);
            x = perm[x];
        }
        for (int64_t t = x0_pos; t + 1 < seq_len_; ++t) w.loss_mask[t] = 1;
        return w;
    }

private:
    std::string name_;
    int64_t seq_len_, keys_;
    uint64_t seed_;
    int64_t bos_;
};

class PackedTextSource final : public TokenSource {
public:
    PackedTextSource(std::string path, std::vector<int64_t> tokens, int64_t seq_len)
        : path_(std::move(path)), tokens_(std::move(tokens)), seq_len_(seq_len) {}
    std::string name() const override { return path_; }
    int64_t seq_len() const override { return seq_len_; }
    TokenWindow get(int64_t index) const override {
        // Windows of seq_len tokens, consecutive; past the end the stream starts over (the next epoch).
        const int64_t n = static_cast<int64_t>(tokens_.size());
        const int64_t per_epoch = n / seq_len_;
        const int64_t start = (index % per_epoch) * seq_len_;
        TokenWindow w;
        w.ids.assign(tokens_.begin() + start, tokens_.begin() + start + seq_len_);
        w.loss_mask.assign(static_cast<size_t>(seq_len_), 1);
        w.loss_mask.back() = 0;
        return w;
    }

private:
    std::string path_;
    std::vector<int64_t> tokens_;
    int64_t seq_len_;
};

std::shared_ptr<const TokenSource> make_retrieval(const std::string& spec,
                                                  int64_t seq_len,
                                                  const text::Tokenizer& tok,
                                                  int64_t seed_offset) {
    const std::string body = spec.substr(std::string("synthetic:").size());
    const size_t q = body.find('?');
    const std::string task = body.substr(0, q);
    if (task != "retrieval") {
        throw ConfigError(absl::StrCat("dsa.data: unknown synthetic token task '", task, "' in '", spec,
                                       "'; known: retrieval (or give a JSONL file of {\"text\": ...} rows)"));
    }
    std::map<std::string, int64_t> params{{"keys", 16}, {"seed", 0}};
    if (q != std::string::npos) {
        const std::vector<std::string> kvs = absl::StrSplit(body.substr(q + 1), '&', absl::SkipEmpty());
        for (const std::string& kv : kvs) {
            const std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
            int64_t v = 0;
            if (p.size() != 2 || !params.count(p[0]) || !absl::SimpleAtoi(p[1], &v) || v < 0) {
                throw ConfigError(absl::StrCat("dsa.data: bad parameter '", kv, "' in '", spec,
                                               "'; synthetic:retrieval takes keys=<int >= 2> and seed=<int >= 0>"));
            }
            params[p[0]] = v;
        }
    }
    const int64_t K = params["keys"];
    if (K < 2) throw ConfigError(absl::StrCat("dsa.data: '", spec, "': expected keys >= 2, but got ", K));
    if (kFirstId + K + K * K > tok.vocab_size()) {
        throw ConfigError(absl::StrCat("dsa.data: '", spec, "' needs vocab_size >= ", kFirstId + K + K * K,
                                       " (16 specials + K symbols + K² records), but model.vocab_size is ",
                                       tok.vocab_size(), "; lower keys or raise model.vocab_size"));
    }
    if (seq_len < K + 3) {
        throw ConfigError(absl::StrCat("dsa.seq_len = ", seq_len, " is too short for '", spec,
                                       "': need >= keys + 3 = ", K + 3, " (BOS, the dictionary, a chain of >= 2)"));
    }
    const uint64_t seed = static_cast<uint64_t>(params["seed"] + seed_offset);
    return std::make_shared<RetrievalSource>(absl::StrCat("synthetic:retrieval?keys=", K, "&seed=", seed), seq_len, K,
                                             rng::mix64(seed ^ 0xD5A7ull), tok.bos_id());
}

std::shared_ptr<const TokenSource> make_packed(const std::string& path, int64_t seq_len, const text::Tokenizer& tok) {
    std::unique_ptr<fs::LineReader> in;
    try {
        in = std::make_unique<fs::LineReader>(path);
    } catch (const fs::IoError& e) {
        throw DataError(absl::StrCat("dsa.data: cannot open the token data file ", path, ": ", e.reason()));
    }
    std::vector<int64_t> tokens;
    std::string text;
    while (in->next(text)) {
        const int64_t line = in->line_number();
        if (text.find_first_not_of(" \t\r\n") == std::string::npos) continue;
        nlohmann::json row;
        try {
            row = nlohmann::json::parse(text);
        } catch (const nlohmann::json::exception& e) {
            throw DataError(absl::StrCat(path, ":", line, ": invalid JSON: ", e.what()));
        }
        if (!row.is_object() || !row.contains("text") || !row["text"].is_string()) {
            throw DataError(absl::StrCat(path, ":", line, ": expected an object with a string 'text'"));
        }
        for (const int64_t id : tok.encode(row["text"].get<std::string>())) tokens.push_back(id);
        tokens.push_back(tok.eos_id());
    }
    if (static_cast<int64_t>(tokens.size()) < seq_len + 1) {
        throw DataError(absl::StrCat("dsa.data: ", path, " holds ", tokens.size(),
                                     " tokens, fewer than dsa.seq_len + 1 = ", seq_len + 1));
    }
    return std::make_shared<PackedTextSource>(path, std::move(tokens), seq_len);
}

}  // namespace

std::shared_ptr<const TokenSource> make_token_source(const std::string& spec,
                                                     int64_t seq_len,
                                                     const text::Tokenizer& tokenizer,
                                                     const std::string& base_dir,
                                                     int64_t seed_offset) {
    if (spec.rfind("synthetic:", 0) == 0) return make_retrieval(spec, seq_len, tokenizer, seed_offset);
    if (spec.empty()) throw ConfigError("dsa.data: empty; give synthetic:retrieval or a JSONL file");
    const std::string path = base_dir.empty() || spec.front() == '/' ? spec : fs::join(base_dir, spec);
    return make_packed(path, seq_len, tokenizer);
}

TokenStream::TokenStream(std::shared_ptr<const TokenSource> source, int rank, int world, int64_t first)
    : source_(std::move(source)), rank_(rank), world_(world), first_(first) {}

TokenBatch TokenStream::next(int64_t batch) {
    std::vector<TokenWindow> w;
    for (int64_t j = 0; j < batch; ++j) w.push_back(source_->get(first_ + base_ + (taken_ + j) * world_ + rank_));
    taken_ += batch;
    return make_batch(w);
}

void TokenStream::restore(int64_t cursor) {
    if (cursor < 0) throw DataError(absl::StrCat("token stream ", source_->name(), ": negative cursor ", cursor));
    base_ = cursor;
    taken_ = 0;
}

TokenBatch make_batch(const std::vector<TokenWindow>& windows) {
    std::vector<at::Tensor> ids, mask;
    for (const TokenWindow& w : windows) {
        const int64_t L = static_cast<int64_t>(w.ids.size());
        ids.push_back(at::from_blob(const_cast<int64_t*>(w.ids.data()), {L}, at::kLong).clone());
        mask.push_back(at::from_blob(const_cast<uint8_t*>(w.loss_mask.data()), {L}, at::kByte).to(at::kBool));
    }
    return {at::stack(ids), at::stack(mask)};
}

}  // namespace dsrl::data
