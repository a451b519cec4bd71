// CUDA path of the MoE block's decode-step pieces, for forwards without autograd (moe/router.cpp route() and the ATen
// SwiGLU are the oracles): the router's whole selection as one kernel instead of about 18 ATen ops, and SwiGLU's
// silu(gate) · up as one kernel instead of two (optionally times each routed expert's gate weight, so that the
// routed experts' down projections sum over the experts in one batched matmul and one reduction).
//   if (cuda::route_kernel_fits(logits, opt)) r = cuda::route_select(logits, bias, opt, &dense_weights);
// Builds without CUDA define only the *_fits functions (false).
#pragma once

#include <ATen/core/Tensor.h>

#include "core/add_norm_rows.h"
#include "moe/moe_block.h"
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

/// Whether route_select_rows takes x [T, H] and the router's gate [E, H]: CUDA fp32/bf16/fp16 tensors on one device, x
/// with contiguous rows, the gate contiguous and 16-byte aligned, H a multiple of 4 up to 2048, E · H at most 64K, no
/// autograd — small routers (each token's block reads the whole gate); a large one (DeepSeek-V3's 256 × 7168) takes an
/// fp32 GEMM and route_select.
bool route_rows_fit(const at::Tensor& x, const at::Tensor& gate, const RouterOptions& opt);

/// route_select over the logits x · gateᵀ computed in fp32 by the same kernel (r.logits [T, E] written): what
/// route_select(at::linear(x.float(), gate.float()), ...) returns, the dot products summed in another order. One kernel
/// instead of four (x's cast, the fp32 GEMM, its split-K reduction, the selection).
Route route_select_rows(
    const at::Tensor& x, const at::Tensor& gate, const at::Tensor& bias, const RouterOptions& opt, at::Tensor* dense);

/// Whether add_norm_route takes the residual stream x [T, H], the sublayer's output delta and the norm's weight [H]
/// with this router: x and delta as the residual add's kernel takes them (dsa/norm_rope_cuda.h add_rms_norm), the
/// router's rows as route_rows_fit, and the router small enough for the tile kernel (eight tokens' rows, logits and
/// selection scratch within 48 KiB of shared memory: single_gpu.yaml's 32 × 768 is 27 KiB).
bool add_norm_route_fits(const at::Tensor& x,
                         const at::Tensor& delta,
                         const at::Tensor& norm_weight,
                         const at::Tensor& gate,
                         const RouterOptions& opt);

/// The residual add, the RMSNorm after it and the router on its output as one kernel — what
///   auto [sum, normed] = dsa::cuda::add_rms_norm(x, delta, norm_weight, eps);
///   Route route = route_select_rows(normed, gate, bias, opt, nullptr);
/// give, sum and normed bit for bit (the same arithmetic in the same order), the route as route_select_rows's. A
/// decode step's MoE layer starts with one launch instead of two.
struct NormedRoute {
    at::Tensor sum;     ///< x + delta, x's type [T, H]
    at::Tensor normed;  ///< the norm's output [T, H], result_type(norm_weight, x)
    Route route;        ///< logits, indices, weights (scores undefined, as route_select_rows)
};
NormedRoute add_norm_route(const at::Tensor& x,
                           const at::Tensor& delta,
                           const at::Tensor& norm_weight,
                           double eps,
                           const at::Tensor& gate,
                           const at::Tensor& bias,
                           const RouterOptions& opt);

/// Whether the SwiGLU kernel takes gate and up: CUDA tensors of one fp32/bf16/fp16 type and shape [T, C] with
/// contiguous rows, in a forward that records no autograd graph for them.
bool silu_mul_fits(const at::Tensor& gate, const at::Tensor& up);

/// silu(gate) · up rounded op by op as ATen rounds at::silu(gate) * up: [T, C] contiguous, gate's type. With
/// `weight` ([T, C / group] fp32), each element then times weight[t, c / group], rounded again.
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up, const at::Tensor& weight = {}, int64_t group = 1);

/// Whether the routed-experts kernels take x [T, H] and the stacked experts (gate / up [E, I, H], down [E, H, I]) with
/// k experts a token: CUDA bf16 / fp16 tensors of x's type, contiguous and 16-byte aligned, H and I multiples of 64,
/// T · k <= 32768, E <= 1024, in a forward that records no autograd graph for them.
bool routed_experts_fit(const at::Tensor& x, const SwiGluWeights& experts, int64_t k);

/// Whether routed_experts can add the shared expert in the same kernels: gate / up [I, H] and down [H, I] of the routed
/// experts' width I (n_shared_experts = 1), x's type, contiguous and aligned.
bool shared_expert_fuses(const at::Tensor& x, const SwiGluWeights& experts, const SwiGluWeights& shared);

/// Σ_j w[t, j] · down_e(silu(gate_e · x[t]) · up_e · x[t]) over each token's experts e = indices[t, j], on the tensor
/// cores: each (token, expert) pair's SwiGLU rounded op by op to x's type as the ATen ops round it, weighted and
/// summed over the slots in fp32 in slot order and rounded, as routed_experts_grouped computes it (the products
/// accumulate in another order than cuBLAS's, so results can differ in the last bit of an intermediate). With
/// `shared` (shared_expert_fuses), plus the shared expert's SwiGLU, rounded again: moe_forward's sum. Three kernels,
/// no host sync. indices int64 [T, k] (an id outside [0, E) adds nothing), weights fp32 [T, k]; returns [T, H].
at::Tensor routed_experts(const at::Tensor& x,
                          const at::Tensor& indices,
                          const at::Tensor& weights,
                          const SwiGluWeights& experts,
                          const SwiGluWeights* shared = nullptr);

/// routed_experts without its last kernel: the pairs' rows and what sums them (core/add_norm_rows.h PairRows), for a
/// consumer that sums them as it reads them (the next residual add + norm: dsa/norm_rope_cuda.h) — bit for bit
/// routed_experts's y, one launch fewer. Same arguments and checks.
PairRows routed_experts_pairs(const at::Tensor& x,
                              const at::Tensor& indices,
                              const at::Tensor& weights,
                              const SwiGluWeights& experts,
                              const SwiGluWeights* shared = nullptr);

/// The sum routed_experts would have returned for `pairs` (k <= 8): [T, H], the rows' type.
at::Tensor combine_pairs(const PairRows& pairs);

}  // namespace dsrl::moe::cuda
