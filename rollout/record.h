// Rollout records (SPEC §4): what a rollout worker keeps for every sample so GRPO stays consistent with the
// behaviour policy — per response token the behaviour log-prob and the kept set of the top-p/top-k
// truncation, per prompt+response token the MoE routing path and (keep-indexer) the DSA top-k key sets — and their
// binary format.
//
// Format (little-endian): magic "DSRLROLL", u32 version (3; 1 and 2 are read too), u64 payload size, payload, u32
// CRC-32 (IEEE) of the payload. Readers reject another magic, a newer version, a truncated file or a checksum mismatch
// with a DataError naming the file (or "<buffer>") and what is wrong. Writing a file is atomic (tmp + fsync + rename).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "rollout/kept_set.h"

namespace dsrl::rollout {

/// Why a sample (or a multi-turn trajectory) ended. kToolLimit: a multi-turn trajectory asked for more tool calls
/// than rollout.max_tool_calls allows (rollout/multi_turn.h).
enum class FinishReason : uint8_t { kEos = 0, kStop = 1, kLength = 2, kContext = 3, kToolLimit = 4 };
const char* finish_reason_name(FinishReason r);

struct Sample {
    std::string domain;
    int64_t prompt_id = 0;
    int32_t sample_index = 0;  ///< 0..G-1 within the group
    uint64_t seed = 0;         ///< the sampling seed of this sample
    int64_t policy_version = 0;
    std::vector<int32_t> prompt;    ///< prompt token ids
    std::vector<int32_t> response;  ///< generated ids (including the final EOS when finished by EOS)
    FinishReason finish = FinishReason::kLength;
    std::vector<float> logprobs;  ///< [response.size()] behaviour log-prob of each response token
    std::vector<KeptSet> kept;    ///< [response.size()] kept set of each sampling step
    int64_t vocab_size = 0;       ///< vocabulary of the kept sets
    /// Routing path: [num_moe_layers, prompt.size() + response.size(), top_k] expert ids, row-major,
    /// stored as uint8 when n_routed_experts <= 256 else uint16 (route_bytes says which: 1 or 2).
    int32_t num_moe_layers = 0;
    int32_t route_top_k = 0;
    int32_t route_bytes = 1;
    std::vector<uint8_t> routes;  ///< raw little-endian ids, route_bytes per id
    /// Keep-indexer: per DSA layer the top-k key sets of every prompt+response position, coded by
    /// encode_indexer_layer (rollout/indexer_sets.h) with k = indexer_topk; empty when not recorded.
    int32_t indexer_topk = 0;
    std::vector<std::string> indexer;
    float reward = 0.0f;  ///< filled by the reward stage (NaN = failed)
    /// Multi-turn trajectories (rollout/multi_turn.h): per response token 1 when the model produced it (it carries
    /// the loss) and 0 when the environment inserted it (tool results and the chat format's text around them; their
    /// log-probs are 0 and kept sets "all"). Empty: every response token is the model's (single-turn samples).
    std::vector<uint8_t> loss_mask;
    int32_t turns = 0;           ///< model turns (0 for single-turn samples)
    int32_t tool_calls = 0;      ///< tool calls the environment answered
    int32_t context_events = 0;  ///< context-management resets (discards, summaries)
    std::string env_error;       ///< why the environment failed (the reward is then NaN); empty when it did not
    std::string trajectory;      ///< the conversation as JSON ({"messages", "tools"}), multi-turn only

    /// Whether response token t carries the loss.
    bool trained(size_t t) const { return loss_mask.empty() || loss_mask[t] != 0; }

    int64_t num_tokens() const { return static_cast<int64_t>(prompt.size() + response.size()); }
    /// Routes of MoE layer `layer` as int64 [num_tokens, top_k].
    at::Tensor route_tensor(int32_t layer) const;
    /// Stores routes from per-layer int64 tensors [num_tokens, top_k] (checked), choosing route_bytes from
    /// `n_routed_experts`.
    void set_routes(const std::vector<at::Tensor>& per_layer, int64_t n_routed_experts);
    /// The recorded key sets of DSA layer `layer` as int32 [num_tokens, indexer_topk] (rows p < k: keys 0..p then
    /// −1); a malformed record is a DataError naming the sample and layer.
    at::Tensor indexer_sets(int32_t layer) const;
    /// Records per-layer key sets ([num_tokens, k] integer key positions within this sample, −1 ignored).
    void set_indexer(const std::vector<at::Tensor>& per_layer, int64_t k);
    /// Bytes of the indexer record (all layers).
    int64_t indexer_bytes() const;
};

struct SampleGroup {
    std::string domain;
    int64_t prompt_id = 0;
    std::vector<Sample> samples;  ///< G samples of one prompt
};

/// Serialization of a batch of groups.
std::string serialize_groups(const std::vector<SampleGroup>& groups);
/// `what` names the source in errors (a path, a peer rank, "<buffer>").
std::vector<SampleGroup> deserialize_groups(const std::string& bytes, const std::string& what = "<buffer>");
void write_groups_file(const std::string& path, const std::vector<SampleGroup>& groups);
std::vector<SampleGroup> read_groups_file(const std::string& path);

/// CRC-32 (IEEE 802.3, reflected, as zlib's crc32) of `data`.
uint32_t crc32(const void* data, size_t size);

}  // namespace dsrl::rollout
