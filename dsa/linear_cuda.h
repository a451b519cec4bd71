// A decode step's small projections y = x · wᵀ on dsrl's tensor-core kernel (dsa/kernels/linear.cuh) instead of
// cuBLAS, for forwards without autograd: the kernel launches under programmatic dependent launch and stages its first
// weight chunks while the kernel before it still runs, which cuBLAS's kernels cannot. at::linear is the oracle (the
// same products, summed over k in another order: a value may differ in its last bit).
//   if (cuda::decode_linear_fits(x, w)) y = cuda::decode_linear(x, w);  else y = at::linear(x, w);
// Builds without CUDA define decode_linear_fits as false.
#pragma once

#include <ATen/core/Tensor.h>

namespace dsrl::dsa::cuda {

/// Whether decode_linear takes x [..., k] and w [n, k]: CUDA bf16 / fp16 tensors of one type on one device, x's
/// leading dims flattening to rows of one stride (a multiple of 8 elements) with a contiguous last dim, w contiguous,
/// both 16-byte aligned, k a multiple of 64 and n of 32, autograd recording for neither, autocast off or both already
/// of its type — at most 1,024 rows (a decode step's; a prefill stays with cuBLAS) and w at most 2 MiB (every block of
/// rows reads all of it from L2: a small model's projections; larger weights stay with cuBLAS, whose larger tiles read
/// them fewer times). DSRL_DECODE_LINEAR=0 makes it false. Under autocast, x may also be fp32 with w of the autocast
/// type (a training job's rollout: fp32 residual stream, the matmul weights cast once): the functions below then cast
/// x to w's type first, as at::linear's autocast does.
bool decode_linear_fits(const at::Tensor& x, const at::Tensor& w);

/// x · wᵀ: [..., n] of x's type (`f32`: fp32, each value rounded to x's type first — at::linear(x, w).float()).
at::Tensor decode_linear(const at::Tensor& x, const at::Tensor& w, bool f32 = false);

/// decode_linear(x, w, true) written into `out` (contiguous fp32 with x's rows × n elements).
void decode_linear_f32_out(const at::Tensor& out, const at::Tensor& x, const at::Tensor& w);

/// Whether decode_heads takes x [..., H, k] and w [H, n, k]: as decode_linear_fits for each head's product (x's last
/// dim contiguous, its heads and rows at strides that are multiples of 8; w's rows contiguous at a stride that is a
/// multiple of 8, its heads too), all H weights at most 2 MiB.
bool decode_heads_fits(const at::Tensor& x, const at::Tensor& w);

/// y[..., h, :] = x[..., h, :] · w[h]ᵀ for every head h: [..., H, n] contiguous, x's type — the absorbed attention's
/// per-head products (W_UV) in one launch of the decode kernel.
at::Tensor decode_heads(const at::Tensor& x, const at::Tensor& w);

}  // namespace dsrl::dsa::cuda
