// A forward-only sparse MLA kernel on the tensor cores (mma.sync m16n8k16, sm_80+) for the shapes the Hopper kernels
// (sparse_mla.cuh, entry 512 + 64, 64-head blocks) do not take: bf16 or fp16 operands, heads H <= 64, latent C a
// multiple of 16, rope R a multiple of 8, rows 16-byte aligned. Same parameters and contract as the SIMT kernel
// (sparse_mla_simt.cuh), which stays the path for fp32 operands and the shapes this one refuses.
//
// A block takes one query and one split of its K selected entries, `tile` entries of shared rows at a time, staged in
// sub-tiles: the rows are copied from the cache into shared memory by cp.async (every sub-tile of the tile in flight at
// once, a warp's lanes loading its rows' entries in one round trip, invalid rows zero-filled), each sub-tile's
// scores S = Q · Kᵀ of the H heads (padded to 16-row m tiles) and its entries are one mma chain per warp, an
// online softmax per head (fp32) writes P in the operand type, and O_lat += P · V with V the same shared rows read
// transposed. Rows are padded to an odd number of 16-byte chunks, so the ldmatrix reads are free of bank conflicts
// without a swizzle. Splits write unnormalized partials that the SIMT kernel's merge combines in split order.
//
// Napkin math for the `single_gpu.yaml` decode at batch 256 (H 12, C 256, R 32, K 128): 74 KB of entries per query,
// 19 MB per layer, a few µs of HBM traffic; 288 + 256 mma per query. The SIMT kernel did 12 · 128 · 288 · 2 FMAs per
// query out of shared memory, about 60 µs per layer at best on an H100.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "dsa/kernels/sparse_mla_simt.cuh"

namespace dsrl::kernels {

constexpr int kMmaThreads = 256;
constexpr int kMmaMaxHeads = 64;  // four 16-row m tiles
constexpr int kMmaMaxUnits = 4;   // o_lat accumulators per warp, each a 16-row × 16-channel tile

/// Entries per shared-memory tile (16, 32, 64 or 128; 0 = the kernel does not take the shape) and splits per query.
struct SparseMlaMmaPlan {
    int64_t tile = 0;
    int64_t splits = 1;
};

/// Whether the kernel takes p's types, shape and alignment (p.splits and the workspaces aside).
bool sparse_mla_mma_takes(const SparseMlaSimtParams& p);

/// Dynamic shared memory of one block (bytes).
int64_t sparse_mla_mma_smem(int64_t heads, int64_t latent, int64_t rope, int64_t tile);

/// The tile and split count for num_queries queries of topk entries: the largest tile within `smem_limit` bytes
/// (two blocks per multiprocessor where they fit), smaller tiles and several splits per query when there are too few
/// queries to fill `sms` multiprocessors (a decode batch).
SparseMlaMmaPlan sparse_mla_mma_plan(
    int64_t num_queries, int64_t heads, int64_t latent, int64_t rope, int64_t topk, int sms, int64_t smem_limit);

/// Launches num_queries × p.splits blocks of `tile` entries on `stream` (and the merge when p.splits > 1; workspaces as
/// for the SIMT kernel); raises the block's shared-memory limit first when needed. `stages` (1, 2 or 4, each sub-tile
/// of at least 16 entries) stages a tile as a ring of sub-tiles whose first one's math runs while the others land,
/// each refilled once consumed; 1 (the tile staged whole) measured fastest at single_gpu.yaml's decode
/// (docs/kernel_notes.md, session 29).
cudaError_t launch_sparse_mla_mma(const SparseMlaSimtParams& p, int64_t tile, int64_t stages, cudaStream_t stream);

}  // namespace dsrl::kernels
