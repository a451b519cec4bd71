// Generation and sampling configuration (`rollout:` in a job, SPEC §4), owned by the rollout library.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/config_binder.h"

namespace dsrl {

struct RolloutConfig {
    int64_t group_size = 8;
    int64_t prompts_per_step = 8;
    int64_t max_new_tokens = 24;
    double temperature = 1.0;
    double top_p = 1.0;
    int64_t top_k = 0;  ///< 0 disables top-k truncation
    double min_p = 0.0;
    int64_t max_batch_size = 64;
    std::vector<std::string> stop;
};

void bind(config::Binder& b, RolloutConfig& c);

}  // namespace dsrl
