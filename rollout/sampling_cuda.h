// A decode step's sampling on CUDA as one kernel (rollout/sampling.h's processed_logprobs + sample_with_uniforms are
// the oracle): per row the processed distribution (temperature, top-k, min-p, top-p, greedy), the inverse-CDF draw
// from the row's uniform, forced ids, the token's processed log-prob and the kept-set bitmap — with no host sync, so
// the rollout engine's graphed decode step captures it. Vocabularies up to 4096 ids (a row sorts in shared memory);
// larger ones keep the ATen ops. Builds without CUDA define only sample_kernel_fits (false).
#pragma once

#include <ATen/core/Tensor.h>

#include "rollout/config.h"

namespace dsrl::rollout::cuda {

struct Sampled {
    at::Tensor tokens;  ///< [R] int64
    at::Tensor logp;  ///< [R] fp32, the processed log-prob of each token (−inf for a forced id outside the kept set)
    at::Tensor kept;  ///< [R, ceil(V / 8)] uint8 kept-set bitmaps (pack_mask_bits' layout), when asked for
};

/// Whether the kernel takes these logits: CUDA fp32 [R, V] contiguous with V <= 4096.
bool sample_kernel_fits(const at::Tensor& logits);

/// Samples every row of `logits` with `uniform` ([R, 1] fp64, one draw per row) as processed_logprobs then
/// sample_with_uniforms do; `forced` ([R] int64, −1: sample) replaces the drawn ids. The same ids and kept sets up to
/// sums that land within rounding of a top-p or CDF threshold; log-probs to fp32 rounding.
Sampled sample(const at::Tensor& logits,
               const at::Tensor& uniform,
               const at::Tensor& forced,
               const SamplingParams& p,
               bool kept_bits);

}  // namespace dsrl::rollout::cuda
