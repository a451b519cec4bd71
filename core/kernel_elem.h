// Host side of the kernels that take fp32, bf16 or fp16 operands (core/kernels/elem.cuh: the RMSNorm / RoPE kernels,
// the SIMT sparse attention): which dtypes they take, the element type of a tensor's dtype, the alignment vector loads
// need.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "core/kernels/elem.cuh"

namespace dsrl {

inline bool elem_kernel_takes(c10::ScalarType t) { return t == c10::kFloat || t == c10::kBFloat16 || t == c10::kHalf; }

/// Whether a kernel may read ptr in 16-byte vectors (cp.async, uint4 loads).
inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

inline ::dsrl::kernels::Elem kernel_elem(c10::ScalarType t) {
    using ::dsrl::kernels::Elem;
    return t == c10::kBFloat16 ? Elem::kBF16 : t == c10::kHalf ? Elem::kF16 : Elem::kF32;
}

/// The stride between x's rows when its dims before the last `inner` flatten to rows of one stride (0 for one row:
/// any stride reads it); -1 when they do not.
inline int64_t flat_row_stride(const at::Tensor& x, int64_t inner) {
    int64_t stride = -1;
    int64_t expect = -1;
    for (int64_t d = x.dim() - 1 - inner; d >= 0; --d) {
        if (x.size(d) == 1) continue;
        if (stride < 0) {
            stride = x.stride(d);
            expect = stride * x.size(d);
        } else if (x.stride(d) != expect) {
            return -1;
        } else {
            expect *= x.size(d);
        }
    }
    return stride < 0 ? 0 : stride;
}

}  // namespace dsrl
