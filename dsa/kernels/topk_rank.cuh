// Device pieces of topk.cuh's selection shared with the kernels that select in the same launch as they score
// (indexer_paged.cu): the order-preserving key of a float score, a row's place in the output, and the rank selection of
// a row of at most kRankMax keys (a thread per key). Included by .cu files only.
#pragma once

#include <cstdint>

#include "dsa/kernels/topk.cuh"

namespace dsrl::dsa::kernels {

/// The float's bits made order-preserving as uint32 (negatives inverted, positives with the sign bit set); −0 folded
/// onto +0; NaN → 0xFFFFFFFF; −inf and below → 0, meaning "not selectable".
__device__ __forceinline__ uint32_t order_key(float f) {
    if (f != f) return 0xFFFFFFFFu;
    uint32_t b = __float_as_uint(f);
    if (b == 0x80000000u) b = 0;  // -0 ties with +0, as in a float comparison
    const uint32_t k = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return k <= 0x007FFFFFu ? 0u : k;  // ~bits(−inf) = 0x007FFFFF
}

/// Row r: its group member (g, m), its keys [0, len), and where its top-k goes.
struct TopkRow {
    int64_t g, m;
    int len;
    __device__ TopkRow(const TopkParams& p, int64_t r) : g(r / p.rows_per_group), m(r % p.rows_per_group) {
        int64_t n = p.num_cols;
        if (p.row_last != nullptr) {
            const int64_t last = p.row_last[g * p.last_group_stride + m];
            n = last + 1 < n ? last + 1 : n;
            if (n < 0) n = 0;
        }
        len = static_cast<int>(n);
    }
    // Output i of the row: column col (−1: none) and, with slots_out, that column's cache slot.
    __device__ void put(const TopkParams& p, int i, int32_t col) const {
        const int64_t at = (g * p.out_group_stride + m) * p.topk + i;
        p.out[at] = col;
        if (p.slots_out != nullptr) p.slots_out[at] = col >= 0 ? p.slot_of[g * p.slot_group_stride + col] : -1;
    }
};

/// The rank selection of one row of p.num_cols <= kRankMax keys, called by every thread of a block of at least
/// p.num_cols threads (a multiple of 32): thread tid holds key tid's order key `mine` (0 at or past out.len, or not
/// selectable), counts the keys ranked above it — a larger order key, or an equal one at a lower column — through
/// `keys` (shared memory, num_cols rounded up to 4, 16-byte aligned) and writes its column at its rank when that is
/// under topk; −1 fills the rest. The order of a stable descending sort, as the radix path. Contains a barrier.
__device__ __forceinline__ void rank_select_row(const TopkParams& p,
                                                const TopkRow& out,
                                                uint32_t mine,
                                                uint32_t* keys) {
    const int tid = threadIdx.x;
    const int padded = (static_cast<int>(p.num_cols) + 3) & ~3;
    if (tid < padded) keys[tid] = mine;
    const int selectable = __syncthreads_count(mine != 0u);
    if (mine != 0u) {
        int rank = 0;
        for (int j = 0; j < padded; j += 4) {
            const uint4 k = *reinterpret_cast<const uint4*>(keys + j);
            rank += (k.x > mine) + (k.x == mine && j < tid) + (k.y > mine) + (k.y == mine && j + 1 < tid) +
                    (k.z > mine) + (k.z == mine && j + 2 < tid) + (k.w > mine) + (k.w == mine && j + 3 < tid);
        }
        if (rank < p.topk) out.put(p, rank, tid);
    }
    for (int i = (selectable < p.topk ? selectable : p.topk) + tid; i < p.topk; i += blockDim.x) out.put(p, i, -1);
}

}  // namespace dsrl::dsa::kernels
