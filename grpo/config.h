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

struct GrpoConfig {
    AdvNorm adv_norm = AdvNorm::kNone;
    LossAgg loss_agg = LossAgg::kSeqMean;
    double eps_low = 0.2;
    double eps_high = 0.2;
    double delta = 0.1;
    bool off_policy_mask = true;
    bool keep_routing = true;
    bool keep_sampling_mask = true;
    bool ref_keep_routing = true;
    bool ref_keep_sampling_mask = true;
    LogpOld logp_old = LogpOld::kRecorded;
    int64_t updates_per_batch = 1;
    int64_t mini_batches = 1;
    int64_t logp_chunk_tokens = 1024;
    bool ref_on_cpu = false;
};

void bind(config::Binder& b, GrpoConfig& c);

}  // namespace dsrl
