// RoPE for DeepSeek-V3.2 (SPEC §2.1, §2.2): YaRN inverse frequencies and attention factor, the MLA softmax
// scale, and the two rotation conventions the model uses:
//  - MLA (q_pe, k_pe): INTERLEAVED pairs (x0, x1), (x2, x3), ... — pair i rotates by angle i and stays in
//    place (DeepSeek's reference layout). transformers emits the same rotation de-interleaved
//    ([evens | odds]); q·k is identical because q and k share the layout.
//  - Lightning indexer: HALF-SPLIT — dim i pairs with dim i + d/2 (rotate_half).
//
//   RopeTable t = rope_table(cfg);                 // inv_freq [d/2] fp32, attention_factor
//   auto [cos, sin] = rope_cos_sin(t, positions);  // positions [...] int64 -> [..., d/2] fp32
//   q_pe = apply_rope_interleaved(q_pe, cos.unsqueeze(-2), sin.unsqueeze(-2));   // [..., H, d]
#pragma once

#include <utility>

#include <ATen/core/Tensor.h>

#include "core/dispatch.h"
#include "dsa/config.h"

namespace dsrl::dsa {

struct RopeTable {
    at::Tensor inv_freq;          ///< [qk_rope_head_dim / 2] fp32
    double attention_factor = 1;  ///< multiplies cos and sin (YaRN mscale ratio; 1 for DeepSeek-V3.2)
};

/// Inverse frequencies for `dim` rotary dims: plain RoPE, or YaRN (rope_scaling.type == "yarn") with the
/// ramp between beta_fast and beta_slow rotations over original_max_position_embeddings (truncated).
RopeTable rope_table(const ModelArch& cfg);

/// cos/sin of position × inv_freq, times the attention factor: [..., d/2] fp32 each.
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const RopeTable& table, const at::Tensor& positions);

/// Rotates interleaved pairs of the last dim of x ([..., d]); cos/sin broadcast to [..., d/2].
at::Tensor apply_rope_interleaved(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

/// Rotates dim i with dim i + d/2 of the last dim of x ([..., d]); cos/sin broadcast to [..., d/2].
at::Tensor apply_rope_half_split(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

/// x [..., D] with its first `rope` dims rotated by cos / sin (broadcast to [..., rope / 2]): interleaved pairs
/// (apply_rope_interleaved; rope == D) or half split (apply_rope_half_split of the first `rope` dims, the rest copied).
at::Tensor apply_rope(
    const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t rope, bool interleaved);

/// A query rotation its consumer applies as it reads the query (the sparse attention and the paged indexer: a decode
/// step's query RoPE without a launch of its own): the first `rope` dims of each head of q [B, L, H, D] rotated by
/// cos / sin of B · L rows of rope / 2 fp32 (a row per query in q's order, shared by its heads; [B, L, rope / 2], or
/// any shape of those rows), as apply_rope rotates them.
struct QueryRope {
    at::Tensor cos, sin;
    int64_t rope = 0;
    bool interleaved = true;
};

/// Checks r for a consumer of `rows` queries of `dim` dims a head on `device`: even rope dims, at most dim (all of them
/// when interleaved), fp32 cos / sin of rows · rope / 2 values on that device; a c10::Error naming `op` otherwise.
void check_query_rope(const char* op, const QueryRope& r, int64_t rows, int64_t dim, c10::Device device);

/// q [B, L, H, D] rotated by r, for a consumer that does not rotate it itself: the rope kernel where it fits (CUDA,
/// impl not reference; the same bits), else apply_rope.
at::Tensor rotate_query(const at::Tensor& q, const QueryRope& r, Impl impl);

/// YaRN attention-temperature term: 0.1·mscale·ln(scale) + 1 for scale > 1, else 1.
double yarn_mscale(double scale, double mscale);

/// MLA softmax scale: (qk_nope + qk_rope)^-1/2, times yarn_mscale(factor, mscale_all_dim)^2 under YaRN.
double mla_softmax_scale(const ModelArch& cfg);

}  // namespace dsrl::dsa
