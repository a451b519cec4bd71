// DeepSeekMoE routing (SPEC §2.4): sigmoid scores in fp32, e_score_correction_bias for selection only,
// group-limited top-k, normalized gate weights × routed_scaling_factor; routing record (compact expert ids)
// and replay (recorded ids, weights recomputed from the current scores so the router still learns);
// aux-loss-free bias balancing. Pure ATen, differentiable in `x` and `weight`, CPU and GPU.
//
//   RouterOptions opt{.n_routed_experts = 256, .num_experts_per_tok = 8, .n_group = 8, .topk_group = 4};
//   Route r = route(x, gate_weight, bias, opt);            // x [T, H]; r.indices [T, k] int64
//   Route again = route(x, gate_weight, bias, opt, r.indices);  // replay: same ids, fresh weights
//
// Shapes: x [T, H] (any float dtype; cast to fp32), weight [E, H] fp32, bias [E] fp32.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace dsrl::moe {

/// Routing knobs under their Hugging Face names. dsa's ModelArch inherits them (they are config.json fields), so
/// the defaults below — the tiny demo model's — are the only ones.
struct RouterOptions {
    int64_t n_routed_experts = 8;
    int64_t num_experts_per_tok = 2;
    int64_t n_group = 2;
    int64_t topk_group = 1;
    double routed_scaling_factor = 2.5;
    bool norm_topk_prob = true;

    bool operator==(const RouterOptions&) const = default;
};

struct Route {
    at::Tensor logits;   ///< [T, E] fp32, x·Wᵀ
    at::Tensor scores;   ///< [T, E] fp32, sigmoid(logits)
    at::Tensor indices;  ///< [T, k] int64 expert ids (selected by score + bias, or replayed)
    at::Tensor weights;  ///< [T, k] fp32 gate weights (from scores, never from the bias)
};

/// Group-limited top-k selection (no gradient): groups scored by the sum of their top-2 biased scores,
/// the best `topk_group` groups kept, then the top-k experts among them. `biased` is [T, E].
at::Tensor select_experts(const at::Tensor& biased, const RouterOptions& opt);

/// Routes `x`. With `replay` ([T, k] integer ids, e.g. decoded from a rollout record) the ids are used as
/// given (checked to be in [0, E)) and only the weights are recomputed.
Route route(const at::Tensor& x,
            const at::Tensor& weight,
            const at::Tensor& bias,
            const RouterOptions& opt,
            const at::Tensor& replay = {});

/// Tokens routed to each expert: [E] int64 (the load used for bias balancing and metrics). With `valid` (one
/// bool/0-1 entry per row of `indices`), only the valid rows count (padding is routed too but is no load).
at::Tensor expert_load(const at::Tensor& indices, int64_t n_routed_experts, const at::Tensor& valid = {});

/// DeepSeek-V3's sequence-wise balance loss, per sequence (SPEC §2.4): Σ_e f_e·P_e over the T_b real tokens of
/// sequence b, with f_e = E/(k·T_b)·Σ_t 1(e ∈ indices_t) and P_e = (1/T_b)·Σ_t s_te/Σ_j s_tj (scores normalized
/// per token). scores [B, L, E] fp32 (differentiable), indices [B, L, k], mask [B, L] (1 = real token) -> [B]
/// fp32; a sequence without real tokens gives 0. Minimal (1) when every expert gets the same share.
at::Tensor sequence_balance_loss(const at::Tensor& scores, const at::Tensor& indices, const at::Tensor& mask);

/// Aux-loss-free balancing step, in place: b_e -= gamma · sign(load_e − mean(load)).
void update_bias(at::Tensor& bias, const at::Tensor& load, double gamma);

/// Routing record encoding: uint8 ids when E ≤ 256, else uint16 stored as int16 bit patterns
/// (ATen has no uint16 arithmetic). `decode_route` returns int64 ids.
at::Tensor encode_route(const at::Tensor& indices, int64_t n_routed_experts);
at::Tensor decode_route(const at::Tensor& encoded, int64_t n_routed_experts);

}  // namespace dsrl::moe
