// Per-token log-probs of rollout samples under a model (SPEC §5): one teacher-forced forward over prompt +
// response with the recorded routes replayed (keep-routing) and the token log-prob renormalized over the
// recorded kept set (keep-sampling-mask).
//
// Memory: the vocabulary projection runs in chunks of `chunk_tokens` response tokens inside one autograd
// function that recomputes each chunk's logits in backward, so no [tokens × vocab] float tensor exists in
// forward or backward — at most [chunk_tokens × vocab]. The kept sets are expanded per chunk too.
//
//   PackedBatch b = pack_samples(samples, tokenizer.pad_id());
//   LogprobResult pi = sequence_logprobs(policy, b, {.replay_routes = true, .apply_kept = true});
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dsa/model.h"
#include "rollout/record.h"

namespace dsrl::grpo {

/// Samples as one right-padded batch.
struct PackedBatch {
    at::Tensor input_ids;            ///< [N, L] int64 prompt + response, right-padded
    at::Tensor attention_mask;       ///< [N, L] int64
    std::vector<at::Tensor> routes;  ///< per MoE layer [N, L, k] int64 (recorded)
    at::Tensor targets;              ///< [N, T] int64 response tokens (T = longest response), 0-padded
    at::Tensor valid;                ///< [N, T] fp32 0/1
    at::Tensor logp_old;             ///< [N, T] fp32 recorded behaviour log-probs
    at::Tensor predict_pos;          ///< [N, T] int64: position whose logits predict targets[i, t]
    std::vector<std::vector<const rollout::KeptSet*>> kept;  ///< [N][T_i]
    std::vector<const rollout::Sample*> samples;             ///< the packed samples (keep-indexer decodes lazily)
    int64_t vocab = 0;
};

/// Packs samples (non-empty prompts; every sample must carry routes and kept sets for the options that use
/// them — checked in sequence_logprobs).
PackedBatch pack_samples(const std::vector<const rollout::Sample*>& samples, int64_t pad_id);

struct LogprobOptions {
    bool replay_routes = true;
    bool apply_kept = true;
    double temperature = 1.0;  ///< the rollout temperature (0 = greedy counts as 1)
    int64_t chunk_tokens = 1024;
    bool entropy = false;         ///< also the entropy of each token's (kept-set) distribution
    bool replay_indexer = false;  ///< keep-indexer: replay the recorded DSA key sets (the indexer is skipped)
    /// Training forwards: expert loads and the balance loss (dsa::MoeBalance); null: not tracked.
    dsa::MoeBalance* balance = nullptr;
};

struct LogprobResult {
    at::Tensor logp;     ///< [N, T] fp32, differentiable in the model's weights (0 at invalid positions)
    at::Tensor entropy;  ///< [N, T] fp32 detached, when requested
};

/// log π(targets) per token. A sample without routes (replay), kept sets (apply_kept) or indexer sets
/// (replay_indexer), or an empty kept set, is a DataError naming the sample.
LogprobResult sequence_logprobs(const dsa::Model& model, const PackedBatch& batch, const LogprobOptions& opt);

/// The chunked autograd function on its own: log softmax(hidden·Wᵀ / T) at `tokens`, renormalized over
/// `kept(start, len)` ([len, V] bool; an empty callback = full vocabulary). hidden [M, H], weight [V, H].
using KeptChunkFn = std::function<at::Tensor(int64_t start, int64_t len)>;
std::pair<at::Tensor, at::Tensor> chunked_token_logprobs(const at::Tensor& hidden,
                                                         const at::Tensor& weight,
                                                         const at::Tensor& tokens,
                                                         const KeptChunkFn& kept,
                                                         double temperature,
                                                         int64_t chunk_tokens,
                                                         bool entropy);

}  // namespace dsrl::grpo
