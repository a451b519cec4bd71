// The GRPO objective's configuration (`grpo:` in a job, SPEC §5), owned by the grpo library.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/config_binder.h"

namespace dsrl {

enum class AdvNorm { kNone, kStd };
enum class LossAgg { kSeqMean, kTokenMean };
enum class LogpOld { kRecorded, kRecompute };

namespace grpo {

/// The loss's knobs (grpo/loss.h). A job's `grpo:` section holds one (GrpoConfig::loss, bound flat: loss_agg,
/// eps_low, eps_high, delta, off_policy_mask); the defaults below are the only ones.
struct LossOptions {
    double eps_low = 0.2;
    double eps_high = 0.2;
    double delta = 0.1;
    bool off_policy_mask = true;
    LossAgg agg = LossAgg::kSeqMean;
    /// > 0: the aggregated sums are divided by this instead of this batch's own count (Σ contributing sequences,
    /// or their tokens for token_mean). Data-parallel ranks pass (the count summed over ranks) / world, so that
    /// averaging the ranks' gradients gives the global batch's mean (loss_denominator, grpo_update's denominator).
    /// Set per call, never from YAML.
    double denominator = 0;
};

}  // namespace grpo

struct GrpoConfig {
    AdvNorm adv_norm = AdvNorm::kNone;
    grpo::LossOptions loss;
    bool keep_routing = true;
    bool keep_sampling_mask = true;
    bool ref_keep_routing = true;
    bool ref_keep_sampling_mask = true;
    bool keep_indexer = false;  ///< policy and reference forwards replay the recorded DSA key sets
    LogpOld logp_old = LogpOld::kRecorded;
    int64_t updates_per_batch = 1;
    int64_t mini_batches = 1;
    int64_t logp_chunk_tokens = 1024;
    bool ref_on_cpu = false;
};

void bind(config::Binder& b, GrpoConfig& c);

}  // namespace dsrl
