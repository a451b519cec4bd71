// CUDA path of the lightning indexer and top-k selection (SPEC §2.2 steps 5-6, §9); dsa/indexer_topk.h is
// the oracle. Shapes as there: q [B, T, H, D], k [B, S, D], w [B, T, H], query_pos [B, T] int64 (key index of
// each query), key_valid [B, S] bool or undefined. Key s is visible to query t iff s <= query_pos[t] and
// key_valid[s]. Kernels: D = 128, H a multiple of 16 up to 64, bf16 (or e4m3) q and k, fp32 w.
//   at::Tensor logits = dsa::cuda::indexer_logits(q, k, w, 1 / sqrt(D), query_pos, key_valid);  // [B, T, S]
//   at::Tensor idx = dsa::cuda::indexer_topk(q, k, w, 1 / sqrt(D), query_pos, key_valid, 2048); // [B, T, 2048]
// Top-k outputs are ordered like the reference: descending score, ties to the lower key index, −1 padding,
// so dsa::indexer_topk and dsa::cuda::indexer_topk agree element for element wherever the scores agree.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dsa/rope.h"

namespace dsrl::dsa::cuda {

/// Indexer logits [B, T, S] fp32: Σ_j w[t, j] · scale · ReLU(q[t, j] · k[s]), −inf where key s is invisible
/// to query t. q, k bf16 (CUDA, D = 128, H % 16 == 0, H <= 64); w fp32 or bf16; scale >= 0. Throws
/// c10::Error naming the tensor on a bad shape, dtype or device.
at::Tensor indexer_logits(const at::Tensor& q,
                          const at::Tensor& k,
                          const at::Tensor& w,
                          double scale,
                          const at::Tensor& query_pos,
                          const at::Tensor& key_valid);

/// Rows quantized to float8 e4m3: values = x / scales (saturated to ±448), scales = amax(|x|) / 448 per
/// row of the last dimension (an all-zero row gets the scale of amax = 1e-10, so values stay 0).
struct Fp8Rows {
    at::Tensor values;  // like x, at::kFloat8_e4m3fn
    at::Tensor scales;  // x.shape[:-1], fp32
};
/// Quantizes x [..., D] (bf16 or fp32, CUDA or CPU) per row; see Fp8Rows.
Fp8Rows quantize_fp8_rows(const at::Tensor& x);

/// FP8 indexer logits [B, T, S] fp32: Σ_j w · scale · ReLU(q_scale[t, j] · k_scale[s] · (q8[t, j] · k8[s])),
/// −inf where invisible. q8 [B, T, H, D] and k8 [B, S, D] e4m3 (from quantize_fp8_rows), q_scale [B, T, H]
/// and k_scale [B, S] fp32. Needs sm_89+.
at::Tensor indexer_logits_fp8(const at::Tensor& q8,
                              const at::Tensor& q_scale,
                              const at::Tensor& k8,
                              const at::Tensor& k_scale,
                              const at::Tensor& w,
                              double scale,
                              const at::Tensor& query_pos,
                              const at::Tensor& key_valid);

/// Exact per-row top-k of logits [R, S] fp32 (CUDA; rows contiguous): [R, topk] int32 column indices of the
/// largest non-(−inf) entries, ordered by descending score with ties to the lower column (the first topk of
/// a stable descending sort); slots past the number of selectable entries are −1. NaN ranks above +inf.
/// 1 <= topk <= 2048, S < 2^31.
at::Tensor topk_rows(const at::Tensor& logits, int64_t topk);

/// Causal top-k key indices [B, T, topk] int32, the contract of dsa::indexer_topk: logits per query chunk
/// (memory O(B · query_chunk · S) fp32), then topk_rows over each row's visible prefix. With fp8, q and k
/// (bf16 or fp32) are quantized per row with quantize_fp8_rows first and scored with the e4m3 kernel;
/// otherwise q and k must be bf16.
at::Tensor indexer_topk(const at::Tensor& q,
                        const at::Tensor& k,
                        const at::Tensor& w,
                        double scale,
                        const at::Tensor& query_pos,
                        const at::Tensor& key_valid,
                        int64_t topk,
                        int64_t query_chunk = 1024,
                        bool fp8 = false);

/// Whether indexer_paged_topk takes these operands: CUDA q [B, L, H, D] (fp32 / bf16 / fp16, heads and dims dense)
/// with D a multiple of 8 and H rounded up to 8 times D at most 8192; the pool's keys [P, D] bf16 or fp32, rows
/// contiguous and 16-byte aligned; w [B, L, H] fp32 / bf16 / fp16 (last dim dense); read [B, S] int64 contiguous;
/// 1 <= topk <= 2048.
bool indexer_paged_fits(
    const at::Tensor& q, const at::Tensor& pool_k, const at::Tensor& w, const at::Tensor& read, int64_t topk);

/// A paged decode step's indexer and top-k (the contract of dsa::indexer_topk over the keys the rows' slot tables
/// name): query (b, l) scores key s of row b, pool_k[read[b, s]], visible iff s <= query_pos[b, l] and
/// key_valid[b, s]; then topk_rows. The keys read in place from the pool; rows of at most 512 keys (a decode's) are
/// scored and selected in one kernel (one_launch; false: the scores kernel then the top-k kernel, the same result).
/// Returns the key positions [B, L, topk] int32 (−1 padding) and their slots [B, L, topk] int64 (read[b, position],
/// −1 padding). With q_rope (its cos / sin B · L rows of rope / 2 fp32), each head's query is rotated by it as the
/// kernels stage it (dsa::rotate_query's bits).
struct PagedTopk {
    at::Tensor keys;
    at::Tensor slots;
};
PagedTopk indexer_paged_topk(const at::Tensor& q,
                             const at::Tensor& pool_k,
                             const at::Tensor& read,
                             const at::Tensor& w,
                             double scale,
                             const at::Tensor& query_pos,
                             const at::Tensor& key_valid,
                             int64_t topk,
                             bool one_launch = true,
                             const QueryRope* q_rope = nullptr);

/// Gradients of the (masked) indexer logits: dq like q, dk like k (accumulated in fp32, then cast), dw fp32.
struct IndexerGrads {
    at::Tensor dq;
    at::Tensor dk;
    at::Tensor dw;
};
/// Backward of indexer_logits for grad_logits [B, T, S] (entries at invisible positions are ignored):
///   dq[t, j] = scale · w[t, j] · Σ_s g[t, s] · 1[q[t, j]·k[s] > 0] · k[s]
///   dw[t, j] = scale · Σ_s g[t, s] · ReLU(q[t, j]·k[s])
///   dk[s]    = scale · Σ_t Σ_j g[t, s] · w[t, j] · 1[q[t, j]·k[s] > 0] · q[t, j]
/// bf16 q and k: two tensor-core kernels (dq + dw per query pair, dk per 64-key tile; no atomics, bitwise
/// deterministic; G = g·w·scale·1[q·k > 0] is rounded to bf16 before its products). Other dtypes: fp32 ATen
/// matrix products over query chunks (memory O(B · chunk · H · S), chunk ≈ 256M elements).
IndexerGrads indexer_logits_backward(const at::Tensor& q,
                                     const at::Tensor& k,
                                     const at::Tensor& w,
                                     double scale,
                                     const at::Tensor& query_pos,
                                     const at::Tensor& key_valid,
                                     const at::Tensor& grad_logits);

}  // namespace dsrl::dsa::cuda
