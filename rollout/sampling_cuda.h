// A decode step's sampling on CUDA as one kernel (rollout/sampling.h's processed_logprobs + sample_with_uniforms are
// the oracle): per row the processed distribution (temperature, top-k, min-p, top-p, greedy), the inverse-CDF draw
// from the row's uniform, forced ids, the token's processed log-prob and the kept-set bitmap — with no host sync, so
// the rollout engine's graphed decode step captures it. Vocabularies up to 4096 ids (a row sorts in shared memory);
// larger ones keep the ATen ops. Builds without CUDA define only sample_kernel_fits (false).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "rollout/config.h"

namespace dsrl::rollout::cuda {

struct Sampled {
    at::Tensor tokens;  ///< [R] int64
    at::Tensor logp;  ///< [R] fp32, the processed log-prob of each token (−inf for a forced id outside the kept set)
    at::Tensor kept;  ///< [R, ceil(V / 8)] uint8 kept-set bitmaps (pack_mask_bits' layout), when asked for
};

/// A window of decode steps kept on the device (the rollout engine's graphed steps): arrays of C slots, one per step;
/// row r's slot in a step is (pos[r] − base[r]) mod C, so a step's slot moves on with the positions and needs no host.
struct SampleWindow {
    at::Tensor pos;     ///< [R] int64, the positions fed this step
    at::Tensor base;    ///< [R] int64, the positions of the window's first step
    at::Tensor tokens;  ///< [C, R] int64: each step's tokens
    at::Tensor logp;    ///< [C, R] fp32
    at::Tensor kept;    ///< [C, R, ceil(V / 8)] uint8, or undefined (no kept sets)
};

/// Whether the kernel's sort runs its stages of stride < 32 by warp shuffles where a row fits one element a thread
/// (V <= 512; the default) or every stage through shared memory with a barrier (DSRL_SAMPLE_SORT=block in the
/// environment; tests and measurements). The same compare-exchanges either way: the same records, bit for bit.
void set_sample_warp_stages(bool on);

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

/// The same with a window: `uniform` is [C, R, 1] fp64 and `forced` [C, R] int64 (or undefined), each row reading its
/// slot; the tokens, log-probs and kept sets go to the window's slots (kept when window.kept is defined). Returns the
/// step's tokens [R] (the model's next input); Sampled::logp and kept stay undefined.
Sampled sample(const at::Tensor& logits,
               const at::Tensor& uniform,
               const at::Tensor& forced,
               const SamplingParams& p,
               const SampleWindow& window);

/// Closes a windowed step in one kernel: row r's rows of `routes` (one tensor per MoE layer, [R, ...]) and of
/// `topk` (one per layer) copied into `routes_dst` [C, R, M, ...] and `topk_dst` [C, R, L, ...] at the row's slot,
/// then pos[r] += 1. Returns false, launching nothing, where the kernel does not take the tensors (a source not
/// contiguous on the window's device, of another size or type than its destination's rows, more than 64 of them):
/// the caller then does the same with ATen ops.
bool step_records(const std::vector<at::Tensor>& routes,
                  const at::Tensor& routes_dst,
                  const std::vector<at::Tensor>& topk,
                  const at::Tensor& topk_dst,
                  const at::Tensor& pos,
                  const at::Tensor& base);

}  // namespace dsrl::rollout::cuda
