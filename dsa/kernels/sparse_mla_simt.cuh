// A forward-only sparse MLA kernel for the shapes the Hopper kernels (sparse_mla.cuh, entry 512 + 64) do not take:
// any latent C and rope R, any heads H (H·C ≤ 8192), fp32/bf16/fp16 operands, fp32 arithmetic. One block per query;
// the query's selected entries are read straight from the cache in tiles (no gathered copy), every head scores each
// tile, and an online softmax accumulates o_lat. Contract of dsa::sparse_mla_attention: −1 (or an index outside
// [0, S)) is an invalid entry; a query with none gets out = 0 and lse = −inf. Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "core/kernels/elem.cuh"

namespace dsrl::kernels {  // beside the Hopper kernels (sparse_mla.cuh)

constexpr int kSimtThreads = 256;
constexpr int kSimtAccumulators = 32;  // per thread: H · C <= kSimtThreads · kSimtAccumulators
constexpr int kSimtTile = 16;          // entries per shared-memory tile

struct SparseMlaSimtParams {
    const void* q_lat;  // [N, H, C] contiguous; query n = b · T + t
    const void* q_pe;   // [N, H, R] contiguous
    Elem q_type;
    const void* c_kv;  // entry s of batch b at c_kv + b · kv_batch_stride + s · kv_row_stride ([C] contiguous)
    const void* k_pe;  // same layout with pe strides ([R] contiguous)
    Elem kv_type;
    int64_t kv_batch_stride, kv_row_stride, pe_batch_stride, pe_row_stride;
    const int64_t* indices;  // [N, K] contiguous
    int64_t num_queries, queries_per_batch, heads, latent, rope, topk, keys;
    float scale;
    void* out;  // [N, H, C] contiguous, out_type
    Elem out_type;
    float* lse;  // [N, H]
};

/// Dynamic shared memory one block needs (bytes).
int64_t sparse_mla_simt_smem(int64_t heads, int64_t latent, int64_t rope);

/// Launches one block per query on `stream`; raises the block's shared-memory limit first when needed.
cudaError_t launch_sparse_mla_simt(const SparseMlaSimtParams& p, cudaStream_t stream);

}  // namespace dsrl::kernels
