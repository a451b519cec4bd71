// CUDA kernels for DSA's sparse MLA attention in the absorbed (MQA) form (SPEC §2.1, §2.3, §9), sm_90.
// Sees no torch types; dsa/sparse_attention_cuda.cpp wraps it.
//
//   score(t, h, s) = (q_lat[t, h] · c_kv[s] + q_pe[t, h] · k_pe[s]) · scale      over s ∈ indices[t] (−1 = skip)
//   out[t, h]      = Σ_s softmax_s(score) · c_kv[s];  lse[t, h] = log Σ_s exp(score)
// Fixed entry shape: c_kv 512 | k_pe 64 (d_v 512), bf16 operands, fp32 accumulation (tensor cores, mma.sync).
// A block owns one query token and 64 heads; the token's selected entries are gathered 64 at a time into shared
// memory (cp.async, double-buffered; on sm_90a by a producer warpgroup of its own) and shared by all 64 heads.
// A row with no valid entry gets out 0, lse −inf.
// Tensors contiguous (c_kv and k_pe: dense rows, any batch stride, e.g. a decode cache): q_lat [B, T, H, 512], q_pe [B,
// T, H, 64], c_kv [B, S, 512], k_pe [B, S, 64], indices [B, T, K] int32, out [B, T, H, 512] bf16, lse [B, T, H] fp32.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace dsrl::kernels {

inline constexpr int kMlaLatentDim = 512;  ///< c_kv width (= d_v)
inline constexpr int kMlaRopeDim = 64;     ///< k_pe width

struct SparseMlaFwdParams {
    const void* q_lat;       // bf16 [B, T, H, 512]
    const void* q_pe;        // bf16 [B, T, H, 64]
    const void* c_kv;        // bf16 [B, S, 512]
    const void* k_pe;        // bf16 [B, S, 64]
    const int32_t* indices;  // [B, T, K], entries in [-1, S)
    void* out;               // bf16 [B, T, H, 512]
    float* lse;              // [B, T, H]
    int64_t batch, num_queries, num_heads, num_keys, topk;
    int64_t ckv_batch_stride, kpe_batch_stride;  // elements between batches (rows themselves are dense)
    float scale;
    /// Split-KV (decode): each query's K entries are split over num_splits blocks; partial results go to
    /// workspace (fp32 [splits, B, T, H, 512] + [splits, B, T, H]) and a combine kernel writes out/lse.
    int num_splits = 1;
    /// true: the wgmma kernel (sm_90a); false: the mma.sync kernel (sm_80+, the baseline of the benchmark).
    bool use_wgmma = true;
    float* partial_out = nullptr;
    float* partial_lse = nullptr;
};

struct SparseMlaBwdParams {
    const void* q_lat;       // bf16 [B, T, H, 512]
    const void* q_pe;        // bf16 [B, T, H, 64]
    const void* c_kv;        // bf16 [B, S, 512]
    const void* k_pe;        // bf16 [B, S, 64]
    const int32_t* indices;  // [B, T, K]
    const void* grad_out;    // bf16 [B, T, H, 512]
    const float* lse;        // [B, T, H] (forward's)
    const float* delta;      // [B, T, H] = Σ_c grad_out · out (fp32)
    void* grad_q_lat;        // bf16 [B, T, H, 512] (written)
    void* grad_q_pe;         // bf16 [B, T, H, 64]  (written)
    float* grad_kv;          // fp32 [B, S, 576] (added to atomically: zero it first)
    int64_t batch, num_queries, num_heads, num_keys, topk;
    int64_t ckv_batch_stride, kpe_batch_stride;  // elements between batches of c_kv / k_pe
    float scale;
};

/// Forward. num_splits > 1 needs the workspace pointers. Returns the launch error, if any.
cudaError_t launch_sparse_mla_fwd(const SparseMlaFwdParams& p, cudaStream_t stream);

/// Backward: grad_q_* written, grad_kv accumulated. Returns the launch error, if any.
cudaError_t launch_sparse_mla_bwd(const SparseMlaBwdParams& p, cudaStream_t stream);

/// δ[row] = Σ_c grad_out[row, c] · out[row, c] for rows × 512 bf16 (the backward's softmax correction), fp32.
cudaError_t launch_sparse_mla_delta(
    const void* grad_out, const void* out, float* delta, int64_t rows, cudaStream_t stream);

/// Splits worth using for a forward of this size on `num_sms` multiprocessors (1 when the grid already
/// fills the device, e.g. prefill; more for decode).
int sparse_mla_num_splits(int64_t batch, int64_t num_queries, int64_t num_heads, int64_t topk, int num_sms);

}  // namespace dsrl::kernels
