// The BPE model of a Hugging Face tokenizer.json (`model.type` "BPE"; DSV32_FORMAT.md §A.5): vocabulary,
// merges ranked by their order (as "a b" strings or ["a", "b"] pairs), unk_token, fuse_unk, byte_fallback and
// ignore_merges. Encoding a pre-token merges the adjacent pair of lowest rank first (the leftmost among equal
// ranks) until none applies, in O(n log n), so pre-tokens of any length are fine.
//
//   Bpe bpe = Bpe::from_json(json["model"], "tokenizer.json");
//   std::vector<int64_t> ids;
//   bpe.encode("Ġhello", ids);
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <absl/synchronization/mutex.h>
#include <nlohmann/json_fwd.hpp>

namespace dsrl::text {

class Bpe {
public:
    /// ConfigError naming `file` and the field for a malformed model (a merge of tokens outside the vocabulary,
    /// a merge result outside it, dropout, continuing_subword_prefix or end_of_word_suffix).
    static std::unique_ptr<Bpe> from_json(const nlohmann::json& model, const std::string& file);

    /// Appends the ids of one pre-token. Characters outside the vocabulary become unk_token (fused when
    /// fuse_unk), their bytes as <0xXX> tokens with byte_fallback, or are dropped when there is neither.
    void encode(std::string_view word, std::vector<int64_t>& out) const;

    /// The vocabulary's id of `token`, -1 when absent.
    int64_t id_of(std::string_view token) const;
    /// Largest id + 1.
    int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
    /// The token of `id` ("" for an id without one).
    const std::string& token(int64_t id) const { return tokens_[static_cast<size_t>(id)]; }

private:
    Bpe() = default;
    void encode_uncached(std::string_view word, std::vector<int64_t>& out) const;

    struct Merge {
        int32_t rank;
        int32_t result;
    };
    absl::flat_hash_map<std::string, int64_t> vocab_;
    std::vector<std::string> tokens_;
    absl::flat_hash_map<uint64_t, Merge> merges_;  // (left << 32 | right) -> rank, result
    int64_t unk_ = -1;
    bool fuse_unk_ = false;
    bool byte_fallback_ = false;
    bool ignore_merges_ = false;

    mutable absl::Mutex cache_mu_;
    mutable absl::flat_hash_map<std::string, std::vector<int64_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace dsrl::text
