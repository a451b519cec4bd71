// CUDA kernel of dsa/indexer_cuda.h indexer_paged_topk: a paged decode step's lightning-indexer scores, each query
// against its row's keys read in place from the cache pool through the row's slot table (no gathered copy of them):
//   I(n, s) = Σ_j w[n, j] · ReLU(scale · q[n, j] · k[read[b, s]])     (fp32 arithmetic on fp32 / bf16 / fp16 inputs)
// −inf where key s is invisible to query n (s > query_pos[n], !key_valid[b, s], or a slot outside the pool). Any head
// dim D (a multiple of 8) and head count H with H·D small enough to keep q in shared memory; the CUDA cores do the
// products (a decode step's H·D·S multiply-adds per query are few; the keys' bytes are what cost). topk.cuh's kernel
// then selects, or for rows of at most 512 keys the same launch does (launch_indexer_paged_rank). Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "core/kernels/elem.cuh"
#include "dsa/kernels/topk.cuh"

namespace dsrl::dsa::kernels {

constexpr int kPagedIndexerMaxQ = 8192;  // H rounded up to 8, times D: q's fp32 copy in shared memory (32 KB)

struct IndexerPagedParams {
    const void* q;  // [B, L, H, D]: element (b, l, j, d) at b * q_batch_stride + l * q_len_stride + j * D + d
    dsrl::kernels::Elem q_type;
    const void* pool;  // [pool_rows, D] bf16 or fp32: key of slot r at r * pool_stride (16-byte aligned rows)
    bool pool_bf16;
    const void* w;  // [B, L, H]: element (b, l, j) at b * w_batch_stride + l * w_len_stride + j
    dsrl::kernels::Elem w_type;
    const int64_t* read;                  // [B, S] slot of each key position
    const bool* key_valid;                // [B, S]; nullptr: every key valid
    const int64_t* query_pos;             // [B, L] key position of each query
    float* out;                           // [B · L, S] fp32 scores
    int64_t batch, len, keys, pool_rows;  // B, L, S
    int heads, dim;                       // H, D
    int64_t q_batch_stride, q_len_stride, w_batch_stride, w_len_stride, pool_stride;
    float scale;
    // Optional: each head's first q_rope dims of q rotated as they are staged (the indexer query's RoPE,
    // dsa/kernels/rope_pair.cuh, in q_type), pairs interleaved or half split, by q_cos / q_sin [B · L, q_rope / 2]
    // fp32.
    const float* q_cos = nullptr;
    const float* q_sin = nullptr;
    int q_rope = 0;
    bool q_rope_interleaved = false;
};

/// Launches the scores kernel on `stream` (`sms`: the device's multiprocessors, for the grid's shape).
cudaError_t launch_indexer_paged(const IndexerPagedParams& p, int sms, cudaStream_t stream);

/// Rows of at most 512 keys (topk_rank.cuh kRankMax): the scores and their top-k in one launch — a block per query, a
/// thread per key scores it as the scores kernel does (the same bits) and ranks it in shared memory as topk.cuh's
/// kernel does; p.out is not written. `t` is the selection's TopkParams (its logits unused; num_cols = p.keys, a row
/// per query, rows_per_group = p.len).
cudaError_t launch_indexer_paged_rank(const IndexerPagedParams& p, const TopkParams& t, cudaStream_t stream);

}  // namespace dsrl::dsa::kernels
