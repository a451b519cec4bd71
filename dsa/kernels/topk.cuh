// CUDA kernel for dsa/indexer_cuda.h topk_rows (SPEC §2.2 step 6, §9): exact per-row top-k of fp32 scores.
// Each row's keys are ranked by (score descending, column ascending) — the order of a stable descending sort —
// and the first min(topk, #selectable) are written as int32 column indices in that order; the remaining slots
// are −1. −inf entries (and columns past the row's length) are never selected; NaN ranks above +inf (as in
// torch.sort). One block per row: radix select on order-preserving uint32 keys (11-bit histograms in shared
// memory), an ordered compaction pass, then a bitonic sort of the ≤ 2048 winners. Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace dsrl::dsa::kernels {

constexpr int kTopkMax = 2048;
constexpr int kRankMax = 512;  // rows of at most this many keys: the rank selection, a thread per key

struct TopkParams {
    const float* logits;  // [num_rows, row_stride] fp32; row r's keys are columns [0, len_r)
    int64_t num_rows;
    int64_t num_cols;    // columns per row (S), < 2^31
    int64_t row_stride;  // elements between consecutive rows (>= num_cols)
    // Rows come in groups of rows_per_group (e.g. the queries of one batch element of a chunk). Row r is
    // group g = r / rows_per_group, member i = r % rows_per_group.
    int64_t rows_per_group;
    const int64_t* row_last;    // optional: len_r = clamp(row_last[g * last_group_stride + i] + 1, 0, num_cols);
    int64_t last_group_stride;  // nullptr row_last: len_r = num_cols
    int topk;                   // 1..kTopkMax
    int32_t* out;               // output row of r: out + (g * out_group_stride + i) * topk, topk int32
    int64_t out_group_stride;   // in rows
    // Optional (a paged decode): slots_out, laid out like out (int64), gets slot_of[g * slot_group_stride + column]
    // of each winner (−1 padding) — the cache slots the attention then reads.
    const int64_t* slot_of;
    int64_t slot_group_stride;
    int64_t* slots_out;
};

/// Launches one block per row on `stream`. Empty input launches nothing.
cudaError_t launch_topk_rows(const TopkParams& params, cudaStream_t stream);

}  // namespace dsrl::dsa::kernels
