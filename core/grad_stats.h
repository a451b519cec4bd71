// Fused gradient statistics for the trainer (SPEC §7: global-norm clipping; a step with non-finite
// gradients is skipped): over a list of tensors, the sum of squares of the finite elements and the number
// of non-finite elements, in one pass and one host synchronization.
//   GradStats s = dsrl::grad_stats(grads);            // impl: auto | reference | cuda
//   if (s.num_nonfinite > 0) skip_step(); else clip(max_norm / s.norm());
// Inputs: floating tensors (fp32, bf16, fp16), any shape, all on one device; accumulation in fp64.
// The ATen reference (grad_stats_ref.cpp) is the oracle of the CUDA kernel (kernels/grad_stats.cu).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/config.h"

namespace dsrl {

struct GradStats {
    double sum_sq = 0.0;        ///< sum of x^2 over the finite elements
    int64_t num_nonfinite = 0;  ///< elements that are NaN or +-inf
    double norm() const { return std::sqrt(sum_sq); }
};

/// Statistics over all elements of `tensors`. Throws c10::Error for non-floating tensors or tensors on
/// different devices; Impl::kCuda with CPU tensors (or a build without CUDA) is an error, never a fallback.
GradStats grad_stats(const std::vector<at::Tensor>& tensors, Impl impl = Impl::kAuto);

namespace ref {
/// Pure-ATen reference; runs on CPU and GPU.
GradStats grad_stats(const std::vector<at::Tensor>& tensors);
}  // namespace ref

namespace cuda {
/// The CUDA path (requires CUDA tensors); defined only when built with CUDA.
GradStats grad_stats(const std::vector<at::Tensor>& tensors);
}  // namespace cuda

}  // namespace dsrl
