// Keep-indexer records (issue 24): the DSA top-k key sets a rollout's forwards selected, coded compactly, so the
// training forwards can replay them (grpo.keep_indexer) — the indexer's analogue of keep-routing.
//
// Per DSA layer, a token at position p (0-based, prompt then response) selects k = index_topk keys among the p + 1
// it sees. Positions p < k see at most k keys and select them all: they are implicit (not stored). From p = k on,
// each set — k sorted key positions in [0, p] — is coded against the previous position's set of the same layer
// (for p = k the implicit {0, …, k − 1}): consecutive queries share most keys, so a token costs a few bytes instead
// of 4k. Note [Indexer-set encoding] in indexer_sets.cpp has the bytes.
//
//   std::string bytes = encode_indexer_layer(sets, k);               // sets [N, k] key positions of one layer
//   at::Tensor back = decode_indexer_layer(bytes, N, k, "sample 3 layer 0");   // [N, k] int32, −1 padded
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dsrl::rollout {

/// Codes one layer's sets: `sets` [N, k'] integer, row p = the keys position p selected, in any order, −1 entries
/// ignored; rows p < k are not stored. Rows p >= k must hold exactly k distinct keys in [0, p] (c10::Error naming
/// the position otherwise).
std::string encode_indexer_layer(const at::Tensor& sets, int64_t k);

/// One layer's sets over `num_tokens` positions: [num_tokens, k] int32, row p sorted ascending — for p < k the keys
/// 0..p then −1. A malformed encoding (truncated, trailing bytes, a key out of range or repeated, a removed key that
/// was not selected) is a DataError naming `what` and the position.
at::Tensor decode_indexer_layer(const std::string& bytes, int64_t num_tokens, int64_t k, const std::string& what);

/// decode_indexer_layer's checks without the tensor (O(k) memory, and none when no position is coded): what a reader
/// of untrusted records runs.
void check_indexer_layer(const std::string& bytes, int64_t num_tokens, int64_t k, const std::string& what);

}  // namespace dsrl::rollout
