// CUDA kernel of dsa/paged_slots_cuda.h: the pool slots a paged decode step's sparse attention reads, from the
// indexer's key sets (or every visible key) and the rows' slot tables, as one kernel. Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "core/kernels/elem.cuh"

namespace dsrl::dsa::kernels {

/// out[b, l, j] = read[b, key] for key = topk[b, l, j] (sparse) or key = j (dense: every key, visible when
/// key_valid[b, j] and j <= query_pos[b, l]); -1 for a key < 0 or not visible.
struct PagedSlotsParams {
    const int64_t* read;              // [B, S] slot of each key position
    const int32_t* topk;              // [B, L, K] key positions (-1: none), or null (dense, K = S)
    const bool* key_valid;            // [B, S], dense only
    const int64_t* query_pos;         // [B, L], dense only
    int64_t* out;                     // [B, L, K]
    int64_t batch, len, keys, width;  // B, L, S, K
};
cudaError_t launch_paged_slots(const PagedSlotsParams& p, cudaStream_t stream);

/// A step's new cache entries into the pool: for every row n with slots[n] in [0, pool_rows) and every part i,
/// part[i].pool[slots[n]] = part[i].src[n] (width values, cast to the pool's type); rows with other slots are skipped.
/// One kernel for a layer's latent, rope key and indexer key (three index_copy_ and their casts before).
constexpr int kPagedWriteParts = 3;
struct PagedWriteParams {
    const int64_t* slots;  // [rows]
    int64_t rows, pool_rows;
    int parts;
    struct Part {
        void* pool;  // [pool_rows, width], row stride pool_stride, contiguous rows
        dsrl::kernels::Elem pool_type;
        int64_t pool_stride;
        const void* src;  // [rows, width], row stride src_stride, contiguous rows
        dsrl::kernels::Elem src_type;
        int64_t src_stride, width;
    } part[kPagedWriteParts];
};
cudaError_t launch_paged_write(const PagedWriteParams& p, cudaStream_t stream);

/// A paged decode step's inputs from its rows' block tables and positions (one new token a row), as one kernel
/// (rollout/engine.cpp's ATen ops before: about fifteen a step):
///   read[r, j] = table[r, j / bs] · bs + j % bs for j < keys (keys <= blocks · bs);
///   key_valid[r, j] = j <= pos[r];
///   write[r] = table[r, pos[r] / bs] · bs + pos[r] % bs, or -1 for a position outside the table (paged_write skips
///   it); with inv_freq: cos / sin[r, i] = cos / sin(float(pos[r]) · inv_freq[i]), then · factor when `scaled`, each op
///   rounded to fp32 as dsa/rope.cpp's rope_cos_sin rounds it.
struct PagedStepParams {
    const int64_t* table;  // [rows, blocks]
    const int64_t* pos;    // [rows]
    int64_t rows, blocks, block_size, keys;
    int64_t* read;                    // [rows, keys]
    bool* key_valid;                  // [rows, keys]
    int64_t* write;                   // [rows]
    const float* inv_freq = nullptr;  // [half], or null: no rotary factors
    int half = 0;
    bool scaled = false;
    float factor = 1.f;
    float* cos = nullptr;  // [rows, half]
    float* sin = nullptr;  // [rows, half]
};
cudaError_t launch_paged_step(const PagedStepParams& p, cudaStream_t stream);

}  // namespace dsrl::dsa::kernels
