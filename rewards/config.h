// Reward configuration (SPEC §6), owned by the rewards library: one reward term of a domain and the job-wide
// reward settings (`rewards:` in a job: plugins, time limit).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/config_binder.h"

namespace dsrl {

struct RewardTermConfig {
    std::string module;
    double weight = 1.0;
    std::map<std::string, std::string> params;
};

struct RewardsConfig {
    std::vector<std::string> plugins;
    double timeout_s = 30.0;
};

void bind(config::Binder& b, RewardTermConfig& c);
void bind(config::Binder& b, RewardsConfig& c);

}  // namespace dsrl
