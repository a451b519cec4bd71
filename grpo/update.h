// One GRPO update phase over a rollout batch (SPEC §5): advantages per group, then `updates_per_batch`
// passes over `mini_batches` mini-batches; each mini-batch runs the policy forward (keep-routing,
// keep-sampling-mask), the reference forward (no gradient) when any beta > 0, the loss (off-policy mask
// recomputed against the current policy), backward, and the caller's optimizer step.
//
//   auto metrics = grpo_update(policy, &reference, groups, job.grpo, betas, temperature,
//                              [&] { optimizer.step(); optimizer.zero_grad(); });
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "dsa/model.h"
#include "grpo/config.h"
#include "grpo/logprobs.h"
#include "grpo/loss.h"
#include "rollout/record.h"

namespace dsrl::grpo {

using Metrics = std::map<std::string, double>;

/// Runs the update phase. `reference` may be null when every beta is 0. `domain_beta` maps a sample's
/// domain to its KL coefficient (a domain missing from the map is a ConfigError). `step` is called after
/// each mini-batch's backward. `denominator`, when set, maps this rank's count of a mini-batch (loss_denominator)
/// to what its loss sum is divided by — under data parallelism the global count over the number of ranks, so
/// the ranks' averaged gradient is the global mini-batch's mean (trainer::data_parallel_denominator). Returns one
/// metrics map per mini-batch step (loss terms, kl, clip and mask fractions, ratio statistics, entropy_mean,
/// failed_samples, dropped_groups, reward_mean/<domain> and reward_std/<domain> over valid rewards). `balance`, when
/// set, tracks the policy's training forwards (expert loads; the MoE balance loss is added to each mini-batch's
/// loss).
std::vector<Metrics> grpo_update(dsa::Model& policy,
                                 const dsa::Model* reference,
                                 const std::vector<rollout::SampleGroup>& groups,
                                 const GrpoConfig& cfg,
                                 const std::map<std::string, double>& domain_beta,
                                 double temperature,
                                 const std::function<void()>& step,
                                 const std::function<double(double)>& denominator = {},
                                 dsa::MoeBalance* balance = nullptr);

}  // namespace dsrl::grpo
