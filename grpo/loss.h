// The GRPO objective of DeepSeek-V3.2 (SPEC §5) over per-token log-probs, pure ATen:
//
//   Â_i  = R_i − mean_group(R)                      (adv_norm none; `std` divides by the group std)
//   r_it = exp(logp_it − logp_old_it)
//   KL_it = r_it · (exp(logp_ref_it − logp_it) − (logp_ref_it − logp_it) − 1)      r kept in the graph
//   M_i  = 0 iff Â_i < 0 and mean_t(logp_old_it − logp_it) > δ    (logp detached; off-policy masking)
//   J    = mean_i (1/|o_i|) Σ_t [ min(r·Â, clip(r, 1−ε_low, 1+ε_high)·Â) · M_i − β_i · KL_it ]
//   loss = −J        (loss_agg token_mean: Σ_i Σ_t [...] / Σ_i |o_i| instead)
//
// Samples whose reward failed (NaN) are excluded; a group with fewer than two valid samples contributes
// nothing. Both are counted in the metrics.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <ATen/core/Tensor.h>

#include "grpo/config.h"

namespace dsrl::grpo {

struct Advantages {
    at::Tensor adv;          ///< [N] fp32 (0 where not contributing)
    at::Tensor contributes;  ///< [N] bool: valid reward in a group with >= 2 valid samples
    int64_t failed_samples = 0;
    int64_t dropped_groups = 0;  ///< groups with fewer than 2 valid samples
};

/// rewards [N] fp32 (NaN = failed), group [N] int64 ids. Non-finite rewards other than NaN (±Inf) are a
/// DataError naming the sample.
Advantages compute_advantages(const at::Tensor& rewards, const at::Tensor& group, AdvNorm norm);

struct LossInputs {
    at::Tensor logp;         ///< [N, T] log π_θ (in the graph)
    at::Tensor logp_old;     ///< [N, T] behaviour log-probs (recorded or recomputed)
    at::Tensor logp_ref;     ///< [N, T] reference log-probs; undefined when every beta is 0
    at::Tensor valid;        ///< [N, T] 0/1: real response tokens
    at::Tensor adv;          ///< [N]
    at::Tensor contributes;  ///< [N] bool (undefined = all)
    at::Tensor beta;         ///< [N] per-sample KL coefficient (undefined = 0)
};

struct LossOutput {
    at::Tensor loss;      ///< scalar
    at::Tensor seq_mask;  ///< [N] M_i as 0/1 fp32 (detached)
    std::map<std::string, double> metrics;
};

/// The loss and its metrics: policy_loss, kl_loss, kl_mean, clip_frac, clip_low_frac, clip_high_frac,
/// masked_seq_frac, ratio_min, ratio_mean, ratio_max, adv_mean, response_len_mean, tokens, sequences.
/// NaN or Inf in an input at a valid position is a DataError naming the tensor (never silently used).
LossOutput grpo_loss(const LossInputs& in, const LossOptions& opt);

/// The count grpo_loss divides by for `agg` (before any forward): the sequences with tokens that contribute, or
/// their tokens. valid [N, T] 0/1, contributes [N] bool (undefined = all).
double loss_denominator(const at::Tensor& valid, const at::Tensor& contributes, LossAgg agg);

}  // namespace dsrl::grpo
