// CUDA kernel for core/grad_stats.h: sum of squares of finite elements + count of non-finite elements of
// one buffer, accumulated atomically into device scalars (fp64 / u64) so that several buffers can share
// one accumulator and one final copy. Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace dsrl::kernels {

enum class GradDType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

struct GradStatsParams {
    const void* x;  // [n] fp32 | bf16 | fp16, contiguous
    int64_t n;      // elements
    GradDType dtype;
    double* sum_sq;                     // [1] fp64 accumulator (added to, not overwritten)
    unsigned long long* num_nonfinite;  // [1] u64 accumulator (added to)
    int num_sms;                        // grid sizing
};

/// Adds the statistics of params.x into the accumulators. An empty buffer launches nothing.
cudaError_t launch_grad_stats(const GradStatsParams& params, cudaStream_t stream);

}  // namespace dsrl::kernels
