// MLA attention in the MQA (absorbed) form (SPEC §2.1, §2.3), pure ATen references:
//   score(t, h, s) = (q̃[t, h] · c_kv[s] + q_pe[t, h] · k_pe[s]) · scale
//   o_lat[t, h]    = Σ_s softmax_s(score) · c_kv[s]          (then o_h = W_UV · o_lat outside)
// Every key entry [c_kv | k_pe] is shared by all heads.
//  - sparse_mla_attention: over the entries selected per query (top-k indices, −1 = invalid), gathered,
//    so memory is O(T · k), never O(T · S); computed in query chunks.
//  - dense_mla_attention: all causal, non-padding keys (the exact "masked MHA" path for short sequences and
//    the oracle of the sparse path).
// Shapes: q_lat [B, T, H, C], q_pe [B, T, H, R], c_kv [B, S, C], k_pe [B, S, R], indices [B, T, K] int32/int64,
// query_pos [B, T] int64, key_valid [B, S] bool (optional). Outputs in the dtype of q_lat; lse fp32.
// A query with no valid key gets out = 0 and lse = −inf.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace dsrl::dsa {

struct AttentionOutput {
    at::Tensor out;  ///< [B, T, H, C]
    at::Tensor lse;  ///< [B, T, H] fp32 log-sum-exp of the scaled scores
};

AttentionOutput sparse_mla_attention(const at::Tensor& q_lat,
                                     const at::Tensor& q_pe,
                                     const at::Tensor& c_kv,
                                     const at::Tensor& k_pe,
                                     const at::Tensor& indices,
                                     double scale,
                                     int64_t query_chunk = 256);

AttentionOutput dense_mla_attention(const at::Tensor& q_lat,
                                    const at::Tensor& q_pe,
                                    const at::Tensor& c_kv,
                                    const at::Tensor& k_pe,
                                    const at::Tensor& query_pos,
                                    const at::Tensor& key_valid,
                                    double scale);

}  // namespace dsrl::dsa
