// y = x · wᵀ on the tensor cores for a decode step's small projections (dsa/linear_cuda.h), in place of cuBLAS where
// the weights are small enough to be read once per 32 or 64 rows from L2. What it adds over cuBLAS is programmatic
// dependent launch (core/kernels/launch.cuh): a block starts while the kernel before it runs, stages the first chunks
// of its weight columns (which no kernel of the step writes) and only then waits for x — and the kernel after it may
// start in turn. cuBLAS's kernels do neither, so each one in a decode step's chain of small kernels costs its full
// launch and its first weight loads. Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "core/kernels/elem.cuh"

namespace dsrl::kernels {

struct LinearParams {
    const void* x;  // [rows, k] rows at x_row_stride elements (16-byte aligned)
    int64_t x_row_stride;
    const void* w;  // [n, k] contiguous
    void* y;        // [rows, n] rows at y_row_stride elements: x's type, or fp32 (y_f32)
    int64_t y_row_stride;
    Elem type;   // kBF16 or kF16: x and w
    bool y_f32;  // y in fp32: each value rounded to x's type first (at::linear(x, w).float())
    int64_t rows;
    int n;
    int k;
    // Optional: `batches` products side by side (the absorbed attention's per-head W_UV: grid z), batch b reading x,
    // w and writing y at b times these strides (elements); w's rows at w_row_stride (0: k).
    int batches = 1;
    int64_t x_batch_stride = 0, w_batch_stride = 0, y_batch_stride = 0;
    int64_t w_row_stride = 0;
};

/// k a multiple of this, n of kLinearCols; pointers 16-byte aligned, strides multiples of 8 elements.
constexpr int kLinearAlignK = 64;
constexpr int kLinearCols = 32;

/// Whether the kernel takes the shape (types, alignments and strides aside).
constexpr bool linear_takes(int64_t n, int64_t k) {
    return n > 0 && k > 0 && n % kLinearCols == 0 && k % kLinearAlignK == 0 && n <= (int64_t{1} << 30) &&
           k <= (int64_t{1} << 30);
}

cudaError_t launch_linear(const LinearParams& p, int sms, cudaStream_t stream);

}  // namespace dsrl::kernels
