// The DeepSeekMoE feed-forward block (SPEC §2.4), functional form over explicit weights:
//   y = Σ_k w_k · Expert_{idx_k}(x) + SharedExperts(x),   Expert(x) = down(silu(gate(x)) ⊙ up(x))
// Routed experts run grouped by expert (tokens sorted by expert id, one batched SwiGLU per expert that
// received tokens), never token by token. Differentiable in x and every weight; CPU and GPU.
//
//   MoeWeights w{...};                                  // stacked expert weights, HF-named pieces
//   MoeOutput out = moe_forward(x, w, router_options(cfg));          // out.route.indices recorded
//   MoeOutput again = moe_forward(x, w, opt, decode_route(record, E));    // keep-routing replay
#pragma once

#include <ATen/core/Tensor.h>

#include "core/add_norm_rows.h"
#include "core/config.h"
#include "moe/router.h"

namespace dsrl::moe {

struct ExpertParallel;

/// SwiGLU weights in nn.Linear layout (out, in): gate/up [I, H], down [H, I]; stacked over experts with a
/// leading [E] dimension for the routed experts.
struct SwiGluWeights {
    at::Tensor gate_proj;
    at::Tensor up_proj;
    at::Tensor down_proj;
};

struct MoeWeights {
    at::Tensor gate;        ///< router weight [E, H] fp32 (mlp.gate.weight)
    at::Tensor bias;        ///< e_score_correction_bias [E] fp32 (a buffer: selection only)
    SwiGluWeights experts;  ///< [E, I, H], [E, I, H], [E, H, I]
    SwiGluWeights shared;   ///< [I_s, H], [I_s, H], [H, I_s]; undefined when n_shared_experts == 0
};

struct MoeOutput {
    at::Tensor y;    ///< [T, H], dtype of x; undefined where `pairs` holds it
    Route route;     ///< the routing decision (indices are the record for keep-routing)
    PairRows pairs;  ///< with moe_forward's defer_sum, where the routed-experts kernels ran: y unsummed (y undefined)
};

/// down(silu(gate(x)) ⊙ up(x)) for x [T, H] and one expert's weights. Without autograd on CUDA (impl not reference)
/// silu(·) ⊙ up is one kernel (moe/moe_cuda.h) that rounds as the two ATen ops do.
at::Tensor swiglu(const at::Tensor& x,
                  const at::Tensor& gate_proj,
                  const at::Tensor& up_proj,
                  const at::Tensor& down_proj,
                  Impl impl = Impl::kAuto);

/// swiglu with gate_proj and up_proj stacked into one matrix, gate_up = [gate_proj | up_proj] (rows 2 · I, H): one GEMM
/// for both, then silu(·) ⊙ up over its two column halves — the same products as swiglu's two GEMMs (summed as one
/// GEMM may sum them, so equal to GEMM rounding). For forwards without autograd (the decode's stacks,
/// dsa::Model::fuse_projections).
at::Tensor swiglu_stacked(const at::Tensor& x, const at::Tensor& gate_up, const at::Tensor& down_proj, Impl impl);

/// Σ_k weights[t, k] · Expert_{indices[t, k]}(x[t]) for x [T, H], indices/weights [T, k].
at::Tensor routed_experts(const at::Tensor& x,
                          const at::Tensor& indices,
                          const at::Tensor& weights,
                          const SwiGluWeights& experts);

/// routed_experts as three grouped matmuls (at::_grouped_mm: each over every expert's rows at once) in `dtype`: the
/// (token, slot) pairs sorted by expert on the device, no host sync, about ten kernels whatever the number of experts
/// (the loop launches about eight per expert and syncs once). The pairs are summed in fp32, in slot order, then cast;
/// equal to routed_experts up to rounding. moe_forward runs it on CUDA without autograd (a rollout's prefill) in bf16
/// compute with impl not reference; any device and dtype _grouped_mm takes work (CPU tests).
at::Tensor routed_experts_grouped(const at::Tensor& x,
                                  const at::Tensor& indices,
                                  const at::Tensor& weights,
                                  const SwiGluWeights& experts,
                                  c10::ScalarType dtype);

/// routed_experts with every expert run on every token — three matmuls batched over the expert dimension, the
/// unselected pairs weighted 0 — so a fixed handful of kernels and no host sync, whatever the routes. For small
/// token counts on a GPU (the rollout engine's decode steps), where a batch reaches most experts anyway and the
/// grouped loop's per-expert launches and its host sync dominate; E/k times the loop's FLOPs. Equal to
/// routed_experts up to summation order.
at::Tensor routed_experts_dense(const at::Tensor& x,
                                const at::Tensor& indices,
                                const at::Tensor& weights,
                                const SwiGluWeights& experts);

/// The whole block for x [T, H]; `replay` ([T, k] ids) replays recorded routes. With `ep` (moe/expert_parallel.h)
/// of more than one rank, w.experts holds this rank's experts only and the routed experts run across the group
/// (collective). `dense` runs routed_experts_dense (not under expert parallelism); on CUDA without autograd or
/// replay (a rollout decode step) and impl not reference, it runs on the kernels instead (moe/moe_cuda.h): the router's
/// selection as one kernel, the experts' SwiGLU weighted before their down projections, out.route.scores undefined.
/// Otherwise, on CUDA without autograd in bf16 compute (impl not reference), routed_experts_grouped runs the experts.
/// `routed`: x's routing as the router kernel already computed it (moe/moe_cuda.h add_norm_route, which also produced
/// x), used where the block routes on the kernels (routes_on_kernels) instead of routing again; ignored elsewhere.
/// `defer_sum`: where the routed-experts kernels run and give y in x's type with the shared expert in their sum, y is
/// left as their pair rows (out.pairs, out.y undefined) for a consumer that sums them as it reads them (the next
/// residual add + norm; moe/moe_cuda.h combine_pairs otherwise).
MoeOutput moe_forward(const at::Tensor& x,
                      const MoeWeights& w,
                      const RouterOptions& opt,
                      const at::Tensor& replay = {},
                      const ExpertParallel* ep = nullptr,
                      bool dense = false,
                      Impl impl = Impl::kAuto,
                      const Route* routed = nullptr,
                      bool defer_sum = false);

/// Whether moe_forward(x, w, opt, replay, ep, dense, impl) routes x with the router kernel (the dense decode step's
/// path): where a caller may hand it the route as `routed`. x stands for the block's input: any tensor of its shape,
/// device and a type the kernels take.
bool routes_on_kernels(const at::Tensor& x,
                       const MoeWeights& w,
                       const RouterOptions& opt,
                       const at::Tensor& replay,
                       const ExpertParallel* ep,
                       bool dense,
                       Impl impl);

}  // namespace dsrl::moe
