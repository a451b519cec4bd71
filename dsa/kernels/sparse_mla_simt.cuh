// A forward-only sparse MLA kernel for the shapes the Hopper kernels (sparse_mla.cuh, entry 512 + 64) do not take:
// any latent C and rope R, any heads H (H·C ≤ 8192), fp32/bf16/fp16 operands, fp32 arithmetic. A block takes one
// query and one split of its K selected entries; the entries are read straight from the cache in tiles (no gathered
// copy; each warp loads whole rows, several loads in flight per lane), each (head, entry) score is one warp's dot
// product, and an online softmax accumulates o_lat over the split's tiles. With one split the block writes the result;
// with several (few queries: a decode batch) each writes its unnormalized o_lat, max and sum, and a second kernel
// merges the splits in order (deterministic). Contract of dsa::sparse_mla_attention: −1 (or an index outside [0, S))
// is an invalid entry; a query with none gets out = 0 and lse = −inf. Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "core/kernels/elem.cuh"

namespace dsrl::kernels {  // beside the Hopper kernels (sparse_mla.cuh)

constexpr int kSimtThreads = 256;
constexpr int kSimtAccumulators = 32;  // per thread: H · C <= kSimtThreads · kSimtAccumulators
constexpr int kSimtTile = 16;          // entries per shared-memory tile

struct SparseMlaSimtParams {
    const void* q_lat;  // [N, H, C], [H, C] contiguous, query n = b · T + t at q_lat + n · q_lat_stride
    const void* q_pe;   // [N, H, R], [H, R] contiguous, query n at q_pe + n · q_pe_stride
    Elem q_type;
    const void* c_kv;  // entry s of batch b at c_kv + b · kv_batch_stride + s · kv_row_stride ([C] contiguous)
    const void* k_pe;  // same layout with pe strides ([R] contiguous)
    Elem kv_type;
    int64_t kv_batch_stride, kv_row_stride, pe_batch_stride, pe_row_stride;
    const int64_t* indices;  // [N, K] contiguous
    int64_t num_queries, queries_per_batch, heads, latent, rope, topk, keys;
    int64_t q_lat_stride, q_pe_stride;  // elements between queries: H · C and H · R when contiguous
    float scale;
    // Optional (the tensor-core kernel only): q_pe rotated as it is staged, interleaved pairs of all R dims (the MLA
    // query's RoPE, dsa/kernels/rope_pair.cuh), by q_cos / q_sin [N, R / 2] fp32.
    const float* q_cos = nullptr;
    const float* q_sin = nullptr;
    void* out;  // [N, H, C] contiguous, out_type
    Elem out_type;
    float* lse;  // [N, H]
    // Splits of the K entries per query (sparse_mla_simt_splits); with more than one, workspaces of
    // sparse_mla_simt_workspace floats: part_out [N, splits, H, C] and part_ml [N, splits, H, 2].
    int64_t splits = 1;
    float* part_out = nullptr;
    float* part_ml = nullptr;
};

/// Dynamic shared memory one block needs (bytes).
int64_t sparse_mla_simt_smem(int64_t heads, int64_t latent, int64_t rope);

/// Splits per query that give `sms` multiprocessors about four blocks each (1 for many queries; at most one per tile).
int64_t sparse_mla_simt_splits(int64_t num_queries, int64_t topk, int sms);

/// Floats of part_out and part_ml together for `splits` > 1 (0 for one split).
int64_t sparse_mla_simt_workspace(int64_t num_queries, int64_t splits, int64_t heads, int64_t latent);

/// Launches num_queries × splits blocks on `stream` (and the merge when splits > 1); raises the block's
/// shared-memory limit first when needed.
cudaError_t launch_sparse_mla_simt(const SparseMlaSimtParams& p, cudaStream_t stream);

/// The merge alone: out and lse of each query from its p.splits partials in part_out / part_ml, in split order
/// (also the tensor-core kernel's, sparse_mla_mma.cuh). Nothing to do for one split.
cudaError_t launch_sparse_mla_merge(const SparseMlaSimtParams& p, cudaStream_t stream);

}  // namespace dsrl::kernels
