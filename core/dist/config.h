// The distributed layout's configuration (`dist:` in a job, SPEC §8), owned by the dist library.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/config_binder.h"

namespace dsrl {

enum class DistMode { kColocated, kDisaggregated };

struct DistConfig {
    DistMode mode = DistMode::kColocated;
    int64_t timeout_s = 600;
    int64_t expert_parallel_size = 1;
    int64_t rollout_ranks = 0;  ///< disaggregated: the last rollout_ranks ranks roll out, ranks [0, T) train
    int64_t max_policy_lag = 1;
};

void bind(config::Binder& b, DistConfig& c);

}  // namespace dsrl
