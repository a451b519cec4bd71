// The standard groups of a dsrl job, derived from DistConfig (SPEC §8, docs/distributed.md "Groups"):
//   world    every rank
//   rollout  colocated: every rank; disaggregated: the last rollout_ranks ranks [T, world)
//   trainer  colocated: every rank; disaggregated: ranks [0, T), T = world - rollout_ranks
//   ep       expert parallel: consecutive blocks of expert_parallel_size trainer ranks
//   dp       data parallel: trainer ranks with the same position within their ep block
// Rollout-worker ranks of a disaggregated job are not members of dp/ep.
#pragma once

#include <string>
#include <vector>

#include "core/dist/communicator.h"

namespace dsrl {
struct DistConfig;
}

namespace dsrl::dist {

/// One group of a layout: color[r] for world rank r (-1: not a member); members are ordered by world rank.
struct GroupSpec {
    std::string name;
    std::vector<int> color;
};

/// The standard layout (banner) for `world_size` ranks, without MPI. Throws dsrl::ConfigError naming the
/// key and values when the trainer ranks are not divisible by dist.expert_parallel_size, when
/// dist.rollout_ranks is outside [0, world_size) or is 0 in disaggregated mode.
std::vector<GroupSpec> standard_layout(const DistConfig& cfg, int world_size);

struct StandardGroups {
    Communicator world, rollout, trainer, dp, ep;
    /// The group named `name`; throws dsrl::DistError for an unknown name.
    const Communicator& get(const std::string& name) const;
};

/// Splits `world` (collective) into the standard layout.
StandardGroups make_standard_groups(const Communicator& world, const DistConfig& cfg);

}  // namespace dsrl::dist
