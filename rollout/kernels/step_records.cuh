// CUDA kernel closing a graphed decode step of the rollout engine: each row's routes and indexer sets (one source
// tensor per layer) copied into the window's slot for the row's step, and the row's position moved on — what the
// engine did with a stack, clones and an add outside the graph. Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace dsrl::rollout::kernels {

/// Most per-layer sources one group takes (the kernel's parameters hold their pointers).
constexpr int kMaxRecordSources = 64;

/// Per-layer rows of equal size: source j is [rows, words] of 4-byte words, contiguous; dst is
/// [capacity, rows, n, words].
struct RecordGroup {
    const uint32_t* src[kMaxRecordSources];
    int n = 0;
    int64_t words = 0;
    uint32_t* dst = nullptr;
};

struct StepRecordsParams {
    RecordGroup group[2];  // routes, indexer sets (n = 0: none)
    int64_t* pos;          // [rows]: the position fed this step, moved on by one
    const int64_t* base;   // [rows]: the position of the window's first step (slot 0)
    int64_t capacity;      // slots of the window
    int64_t rows;
};
cudaError_t launch_step_records(const StepRecordsParams& p, cudaStream_t stream);

}  // namespace dsrl::rollout::kernels
