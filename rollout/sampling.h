// Sampling (SPEC §4): temperature, top-k, min-p, top-p and greedy over a batch of logits, drawing each row
// from its own generator so a sample depends only on its seed, never on the batch it shares. The same
// processing gives the behaviour log-prob a rollout records and the log-prob GRPO recomputes under the
// recorded kept set (keep-sampling-mask), so the two agree by construction.
//
//   const SamplingParams& p = job.rollout.sampling;
//   at::Tensor logp = processed_logprobs(logits, p);       // [B, V]; -inf outside each row's kept set
//   at::Tensor tok = sample_rows(logp, generators);          // [B] int64, one draw per row generator
//   at::Tensor lp = token_logprobs(logits, tokens, kept_mask, p.temperature);   // recomputation
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "rollout/config.h"

namespace dsrl::rollout {

/// Whether top-k, min-p or top-p drop any of `vocab` ids (greedy aside): processed_logprobs then keeps a subset.
bool truncates(const SamplingParams& p, int64_t vocab);

/// The processed distribution of each row of `logits` [B, V]: log-softmax of logits / T restricted to the
/// kept set (top-k, then min-p, then top-p on the tempered probabilities; the most likely token is always
/// kept; ties keep the lower id) and renormalized over it. Entries outside the kept set are −inf. Greedy
/// keeps only the argmax (log-prob 0). Returns fp32 [B, V].
at::Tensor processed_logprobs(const at::Tensor& logits, const SamplingParams& p);

/// One token per row from exp(logp) (rows of processed_logprobs), row b drawing from `gens[b]` only (an
/// inverse-CDF draw of one uniform). Returns int64 [B] on the CPU.
at::Tensor sample_rows(const at::Tensor& logp, std::vector<at::Generator>& gens);

/// One uniform per generator, as sample_rows draws it: 1 − U[0, 1) in (0, 1], so a zero-probability id is never
/// chosen. Returns fp64 [B, 1] on the CPU.
at::Tensor draw_uniforms(std::vector<at::Generator>& gens);

/// sample_rows' inverse-CDF draw with the uniforms given ([B, 1] fp64 on any device): the first id whose cumulative
/// mass reaches u · total, falling back to the row's last kept id under rounding. Runs on logp's device with no host
/// sync; int64 [B] there.
at::Tensor sample_with_uniforms(const at::Tensor& logp, const at::Tensor& u);

/// log π(tokens) under logits / T renormalized over `kept` (bool [N, V], true = kept; undefined = full
/// vocabulary): logit/T of the token minus logsumexp of logit/T over the kept ids. logits [N, V] (any float
/// dtype; computed in fp32), tokens [N] integer. T = 0 (greedy) counts as 1. Differentiable in logits.
at::Tensor token_logprobs(const at::Tensor& logits,
                          const at::Tensor& tokens,
                          const at::Tensor& kept,
                          double temperature);

}  // namespace dsrl::rollout
