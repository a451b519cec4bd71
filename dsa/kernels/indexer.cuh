// CUDA kernels for dsa/indexer_cuda.h (SPEC §2.2 step 5, §9): lightning-indexer logits
//   I(t, s) = Σ_j w[t, j] · scale · ReLU(q[t, j] · k[s])          (bf16 q, k)
//   I(t, s) = Σ_j w[t, j] · scale · ReLU(qs[t, j] · ks[s] · (q8[t, j] · k8[s]))   (e4m3 q8, k8, fp32 scales)
// with −inf where key s is invisible to query t (s > query_pos[t] or !key_valid[s]); and the backward of the
// bf16 logits (dq, dw per query tile; dk per key tile, no atomics). Tensor cores (mma.sync
// bf16 m16n8k16 / e4m3 m16n8k32, fp32 accumulation); ReLU and the weighted head sum are fused into the
// epilogue, so the per-head [T, H, S] tensor never exists. Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace dsrl::dsa::kernels {

constexpr int kIndexerDim = 128;      // d_I supported by the kernels
constexpr int kIndexerMaxHeads = 64;  // H_I <= 64, a multiple of 16

struct IndexerLogitsParams {
    const void* q;             // [B, T, H, D] bf16 | e4m3; batch stride q_batch_stride, token stride H*D
    const void* k;             // [B, S, D] bf16 | e4m3, contiguous
    const float* w;            // [B, T, H] fp32; batch stride w_batch_stride, token stride H
    const float* q_scale;      // fp8 only: [B, T, H] fp32, strides as w
    const float* k_scale;      // fp8 only: [B, S] fp32, contiguous
    const int64_t* query_pos;  // [B, T] int64; batch stride qpos_batch_stride
    const bool* key_valid;     // [B, S] bool, contiguous; nullptr: every key valid
    float* out;                // [B, T, S] fp32, contiguous (T = num_queries)
    int64_t batch;
    int64_t num_queries;        // T
    int64_t num_keys;           // S
    int heads;                  // H: multiple of 16, <= kIndexerMaxHeads
    int64_t q_batch_stride;     // elements
    int64_t w_batch_stride;     // elements
    int64_t qpos_batch_stride;  // elements
    float scale;                // >= 0
    bool fp8;                   // q, k are e4m3 with scales
    // true: every output element is written (−inf where invisible). false: columns s > query_pos[t] are left
    // untouched (the fused top-k reads only [0, query_pos[t]]), which skips the masked half of causal rows.
    bool write_invisible;
};

/// Launches the logits kernel on `stream`. Empty input launches nothing.
cudaError_t launch_indexer_logits(const IndexerLogitsParams& params, cudaStream_t stream);

struct IndexerBackwardParams {
    const void* q;             // [B, T, H, D] bf16, contiguous
    const void* k;             // [B, S, D] bf16, contiguous
    const float* w;            // [B, T, H] fp32, contiguous
    const int64_t* query_pos;  // [B, T] int64, contiguous
    const bool* key_valid;     // [B, S] bool, contiguous; nullptr: every key valid
    const float* grad;         // [B, T, S] fp32, contiguous: dL/dI (ignored where invisible)
    // Per pair of queries (the dk kernel's query tile): the running max of query_pos from the left and from
    // the right, [B, ceil(T / 2)] int64 each (a dk block visits only query tiles that can see its keys).
    const int64_t* tile_prefix_max;
    const int64_t* tile_suffix_max;
    float* dq;  // [B, T, H, D] fp32, written
    float* dk;  // [B, S, D] fp32, written
    float* dw;  // [B, T, H] fp32, written
    int64_t batch;
    int64_t num_queries;  // T
    int64_t num_keys;     // S
    int heads;            // H: multiple of 16, <= kIndexerMaxHeads
    float scale;          // >= 0
};
constexpr int kIndexerBwdQueryTile = 2;  // queries per tile_max entry

/// Launches the two backward kernels (dq + dw, then dk) on `stream`. Empty input launches nothing.
cudaError_t launch_indexer_logits_backward(const IndexerBackwardParams& params, cudaStream_t stream);

}  // namespace dsrl::dsa::kernels
