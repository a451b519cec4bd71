// Token streams of the DSA training stages (SPEC §3, docs/dsa_training.md): fixed-length windows of token ids
// with a loss mask, deterministic in the window index, so a cursor (one integer) is all a checkpoint keeps.
//
//   synthetic:retrieval[?keys=K&seed=S]  a long-range retrieval task (below), infinite;
//   <file>.jsonl                         rows {"text": ...} tokenized with the job tokenizer, each followed by
//                                        EOS, concatenated and cut into seq_len windows (finite; wraps around).
//
// The retrieval task, window i: a hash of (seed, i) draws a random cyclic permutation π of K symbols, then
//   [BOS] [rec(a_1, π(a_1))] ... [rec(a_K, π(a_K))] [x_0] [π(x_0)] [π²(x_0)] ...   up to seq_len tokens
// The K dictionary records are single tokens encoding a key and its value, in random order; the chain after it
// follows π from a random x_0, so every chain token is the value of the previous token's record: predicting it
// needs a content lookup K..seq_len positions back (a previous chain occurrence, ≥ K back, also works). The
// loss mask marks the predictable targets (the chain after x_0); the mean NLL there is the "task loss".
// Token ids: symbols 16 + s (s < K), records 16 + K + a·K + v; needs vocab_size >= 16 + K + K².
//
//   TokenStream train(make_token_source(job.dsa.data, job.dsa.seq_len, tok, ""), rank, world, /*first=*/0);
//   TokenBatch b = train.next(job.dsa.batch_size);   // b.input_ids [B, L] int64, b.loss_mask [B, L] bool
//   int64_t c = train.cursor();  ...  train.restore(c);
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "text/tokenizer.h"

namespace dsrl::data {

struct TokenWindow {
    std::vector<int64_t> ids;        ///< seq_len token ids
    std::vector<uint8_t> loss_mask;  ///< seq_len: 1 where the prediction of the NEXT token (ids[t + 1]) counts
};

struct TokenBatch {
    at::Tensor input_ids;  ///< [B, L] int64 (CPU)
    at::Tensor loss_mask;  ///< [B, L] bool (CPU): position t's next-token prediction counts (last column false)
};

/// Windows addressed by index; get(i) always returns the same window.
class TokenSource {
public:
    virtual ~TokenSource() = default;
    virtual std::string name() const = 0;
    virtual int64_t seq_len() const = 0;
    virtual TokenWindow get(int64_t index) const = 0;
};

/// A source from a `dsa.data` spec (see the banner). Throws ConfigError naming dsa.data on an unknown task or
/// parameter, an out-of-range value, or a vocabulary too small for the task; DataError naming "path:line" on a
/// malformed JSONL row, and naming the path when it cannot be read or holds fewer than seq_len + 1 tokens.
/// `seed_offset` shifts the synthetic seed (held-out streams); a relative path is resolved against base_dir.
std::shared_ptr<const TokenSource> make_token_source(const std::string& spec,
                                                     int64_t seq_len,
                                                     const text::Tokenizer& tokenizer,
                                                     const std::string& base_dir,
                                                     int64_t seed_offset = 0);

/// Rank `rank` of `world` reads windows first + (cursor + j)·world + rank, so the ranks never share a window.
class TokenStream {
public:
    TokenStream(std::shared_ptr<const TokenSource> source, int rank, int world, int64_t first = 0);
    /// The next `batch` windows of this rank.
    TokenBatch next(int64_t batch);
    /// Windows the whole job has taken (every rank's `next` takes the same number): the same figure on every rank
    /// and on any world size, so a stream of another world size continues from it.
    int64_t cursor() const { return base_ + taken_ * world_; }
    /// Continues from cursor() of a stream over the same source and `first`, of any world size; a negative value is
    /// a DataError.
    void restore(int64_t cursor);
    const TokenSource& source() const { return *source_; }

private:
    std::shared_ptr<const TokenSource> source_;
    int rank_, world_;
    int64_t first_;
    int64_t base_ = 0;   // windows taken before the restore
    int64_t taken_ = 0;  // windows this rank has taken since
};

/// Stacks windows into a batch.
TokenBatch make_batch(const std::vector<TokenWindow>& windows);

}  // namespace dsrl::data
