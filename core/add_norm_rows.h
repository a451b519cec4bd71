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

/// A residual delta left as the routed experts' pair rows (moe/moe_cuda.h routed_experts_pairs): the kernel that reads
/// it sums each token's rows as the combine kernel would (core/kernels/pair_sum.cuh), so the combine needs no launch.
struct PairRows {
    at::Tensor out;      ///< [T · slots, H] of the compute type: k pair rows a token, then the shared expert's
    at::Tensor indices;  ///< [T, k] int64 (an id outside [0, experts) adds nothing)
    at::Tensor weights;  ///< [T, k] fp32
    int64_t slots = 0;   ///< k, or k + 1 with the shared expert's row
    int64_t experts = 0;

    bool defined() const { return out.defined(); }
    int64_t tokens() const { return indices.size(0); }
    int64_t hidden() const { return out.size(1); }
    /// The kernels' view of it.
    ::dsrl::kernels::PairSum params() const {
        return {.out = out.data_ptr(),
                .type = kernel_elem(out.scalar_type()),
                .indices = indices.data_ptr<int64_t>(),
                .weights = weights.data_ptr<float>(),
                .k = static_cast<int>(indices.size(1)),
                .slots = static_cast<int>(slots),
                .experts = static_cast<int>(experts),
                .hidden = out.size(1)};
    }
};

/// Whether the kernels take `pairs` as they are: CUDA bf16 / fp16 rows [T · slots, H] (H a multiple of 8, 16-byte
/// aligned, slots k or k + 1), int64 indices and fp32 weights [T, k] contiguous on the rows' device.
inline bool pair_rows_valid(const PairRows& pairs) {
    if (!pairs.defined()) return false;
    const at::Tensor& o = pairs.out;
    const int64_t k = pairs.indices.dim() == 2 ? pairs.indices.size(1) : 0;
    return o.is_cuda() && o.dim() == 2 && o.is_contiguous() &&
           (o.scalar_type() == at::kBFloat16 || o.scalar_type() == at::kHalf) && o.size(1) % 8 == 0 &&
           aligned16(o.data_ptr()) && k >= 1 && pairs.slots >= k && pairs.slots <= k + 1 &&
           o.size(0) == pairs.tokens() * pairs.slots && pairs.indices.scalar_type() == at::kLong &&
           pairs.indices.is_contiguous() && pairs.indices.device() == o.device() &&
           pairs.weights.scalar_type() == at::kFloat && pairs.weights.sizes() == pairs.indices.sizes() &&
           pairs.weights.is_contiguous() && pairs.weights.device() == o.device();
}

/// Whether a kernel that reads x [..., D] (rows of one stride) with a residual can take `pairs` for it: valid pair rows
/// of x's type and width on its device, a token per row of x.
inline bool pair_rows_fit(const at::Tensor& x, const PairRows& pairs) {
    return x.defined() && x.dim() >= 1 && pair_rows_valid(pairs) && pairs.out.scalar_type() == x.scalar_type() &&
           pairs.out.device() == x.device() && pairs.hidden() == x.size(-1) && x.numel() / x.size(-1) == pairs.tokens();
}

struct AddNormOutputs {
    ::dsrl::kernels::AddNormRows params;
    at::Tensor sum;     ///< x + delta in x's type (undefined without delta)
    at::Tensor normed;  ///< RMSNorm(sum or x) · w, x's shape, result_type(w, x)
};

/// Allocates the sum (with delta or pairs defined) and the normalized rows of x [..., D] (+ delta, or + the pairs' sum:
/// pair_rows_fit) under the weight w, and the kernels' parameters for them; the strides count elements between rows of
/// x and of delta.
inline AddNormOutputs add_norm_outputs(const at::Tensor& x,
                                       int64_t x_row_stride,
                                       const at::Tensor& delta,
                                       int64_t delta_row_stride,
                                       const at::Tensor& w,
                                       double eps,
                                       const PairRows* pairs = nullptr) {
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
    } else if (pairs != nullptr && pairs->defined()) {
        o.sum = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
        o.params.residual_pairs = pairs->params();
        o.params.sum_out = o.sum.data_ptr();
    }
    return o;
}

}  // namespace dsrl
