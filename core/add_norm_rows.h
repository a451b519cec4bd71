// Host side of core/kernels/row_norm.cuh: the outputs and parameters of a fused residual add + RMSNorm, for the
// kernels that stage their rows with it (moe/moe_cuda.h add_norm_route, dsa/norm_rope_cuda.h add_norm_proj). The
// caller has checked the tensors (CUDA, kernel dtypes, one device, w a contiguous [D]).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/result_type.h>

#include <cstdint>

#include "core/kernel_elem.h"
#include "core/kernels/row_norm.cuh"

namespace dsrl {

struct AddNormOutputs {
    ::dsrl::kernels::AddNormRows params;
    at::Tensor sum;     ///< x + delta in x's type (undefined without delta)
    at::Tensor normed;  ///< RMSNorm(sum or x) · w, x's shape, result_type(w, x)
};

/// Allocates the sum (with delta defined) and the normalized rows of x [..., D] (+ delta) under the weight w, and the
/// kernels' parameters for them; the strides count elements between rows of x and of delta.
inline AddNormOutputs add_norm_outputs(const at::Tensor& x,
                                       int64_t x_row_stride,
                                       const at::Tensor& delta,
                                       int64_t delta_row_stride,
                                       const at::Tensor& w,
                                       double eps) {
    AddNormOutputs o;
    o.normed = at::empty(x.sizes(), x.options().dtype(at::result_type(w, x)));
    o.params = {.x = x.data_ptr(),
                .x_type = kernel_elem(x.scalar_type()),
                .x_row_stride = x_row_stride,
                .w = w.data_ptr(),
                .w_type = kernel_elem(w.scalar_type()),
                .eps = static_cast<float>(eps),
                .out = o.normed.data_ptr(),
                .out_type = kernel_elem(o.normed.scalar_type())};
    if (delta.defined()) {
        o.sum = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
        o.params.residual = delta.data_ptr();
        o.params.residual_type = kernel_elem(delta.scalar_type());
        o.params.residual_row_stride = delta_row_stride;
        o.params.sum_out = o.sum.data_ptr();
    }
    return o;
}

}  // namespace dsrl
