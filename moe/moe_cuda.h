// CUDA path of the MoE block's decode-step pieces, for forwards without autograd (moe/router.cpp route() and the ATen
// SwiGLU are the oracles): the router's whole selection as one kernel instead of about 18 ATen ops, and SwiGLU's
// silu(gate) · up as one kernel instead of two (optionally times each routed expert's gate weight, so that the
// routed experts' down projections sum over the experts in one batched matmul and one reduction).
//   if (cuda::route_kernel_fits(logits, opt)) r = cuda::route_select(logits, bias, opt, &dense_weights);
// Builds without CUDA define only the *_fits functions (false).
#pragma once

#include <ATen/core/Tensor.h>

#include "moe/router.h"

namespace dsrl::moe::cuda {

/// Whether the router kernel takes this router: n_routed_experts <= 1024 and num_experts_per_tok <= 32.
bool route_kernel_takes(const RouterOptions& opt);

/// Whether the router kernel takes these logits: CUDA fp32 [T, E] contiguous with E <= 1024 and
/// num_experts_per_tok <= 32, in a forward that records no autograd graph for them.
bool route_kernel_fits(const at::Tensor& logits, const RouterOptions& opt);

/// The routing of fp32 logits [T, E] with bias [E] (route()'s selection and weights; ties to the lower expert id):
/// r.logits = logits, r.indices [T, k] int64 in descending order of score + bias, r.weights [T, k] fp32. r.scores is
/// left undefined (nothing a decode step reads). With `dense`, also each token's weight per expert [T, E] fp32 (0
/// where not routed).
Route route_select(const at::Tensor& logits, const at::Tensor& bias, const RouterOptions& opt, at::Tensor* dense);

/// Whether the SwiGLU kernel takes gate and up: CUDA tensors of one fp32/bf16/fp16 type and shape [T, C] with
/// contiguous rows, in a forward that records no autograd graph for them.
bool silu_mul_fits(const at::Tensor& gate, const at::Tensor& up);

/// silu(gate) · up rounded op by op as ATen rounds at::silu(gate) * up: [T, C] contiguous, gate's type. With
/// `weight` ([T, C / group] fp32), each element then times weight[t, c / group], rounded again.
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up, const at::Tensor& weight = {}, int64_t group = 1);

}  // namespace dsrl::moe::cuda
