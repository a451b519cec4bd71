#include "core/dist/groups.h"

#include <absl/strings/str_cat.h>

#include "core/dist/config.h"
#include "core/error.h"

namespace dsrl::dist {

std::vector<GroupSpec> standard_layout(const DistConfig& cfg, int world_size) {
    if (world_size < 1) throw DistError(absl::StrCat("dist layout: world size must be >= 1, got ", world_size));
    const bool disaggregated = cfg.mode == DistMode::kDisaggregated;
    if (cfg.rollout_ranks < 0 || cfg.rollout_ranks >= world_size) {
        throw ConfigError(absl::StrCat("dist.rollout_ranks=", cfg.rollout_ranks, " must be in [0, world size ",
                                       world_size, "); at least one rank must train"));
    }
    if (disaggregated && cfg.rollout_ranks == 0) {
        throw ConfigError(
            absl::StrCat("dist.rollout_ranks=0 with dist.mode=disaggregated: set rollout_ranks to the "
                         "number of rollout-worker ranks (1..",
                         world_size - 1, ") or use dist.mode=colocated"));
    }
    // Disaggregated: ranks [0, T) train and the last rollout_ranks ranks roll out (as dsrl_train's roles).
    const int num_trainer = disaggregated ? world_size - static_cast<int>(cfg.rollout_ranks) : world_size;
    const int64_t ep = cfg.expert_parallel_size;
    if (ep < 1 || num_trainer % ep != 0) {
        throw ConfigError(absl::StrCat(
            "dist.expert_parallel_size=", ep, " must be >= 1 and divide the number of trainer ranks ", num_trainer,
            disaggregated
                ? absl::StrCat(" (world size ", world_size, " minus dist.rollout_ranks=", cfg.rollout_ranks, ")")
                : absl::StrCat(" (world size ", world_size, ")")));
    }
    std::vector<GroupSpec> out;
    out.push_back({"world", std::vector<int>(world_size, 0)});
    GroupSpec rollout{"rollout", std::vector<int>(world_size, -1)};
    GroupSpec trainer{"trainer", std::vector<int>(world_size, -1)};
    GroupSpec dp{"dp", std::vector<int>(world_size, -1)};
    GroupSpec eps{"ep", std::vector<int>(world_size, -1)};
    for (int r = 0; r < world_size; ++r) {
        if (!disaggregated || r >= num_trainer) rollout.color[r] = 0;
        if (r < num_trainer) {
            trainer.color[r] = 0;
            eps.color[r] = static_cast<int>(r / ep);  // block of consecutive ranks
            dp.color[r] = static_cast<int>(r % ep);   // same position within the block
        }
    }
    out.push_back(std::move(rollout));
    out.push_back(std::move(trainer));
    out.push_back(std::move(dp));
    out.push_back(std::move(eps));
    return out;
}

const Communicator& StandardGroups::get(const std::string& name) const {
    if (name == "world") return world;
    if (name == "rollout") return rollout;
    if (name == "trainer") return trainer;
    if (name == "dp") return dp;
    if (name == "ep") return ep;
    throw DistError(absl::StrCat("dist: unknown group '", name, "'; known: world, rollout, trainer, dp, ep"));
}

StandardGroups make_standard_groups(const Communicator& world, const DistConfig& cfg) {
    const std::vector<GroupSpec> layout = standard_layout(cfg, world.size());
    StandardGroups g;
    g.world = world;
    const int r = world.rank();
    for (const GroupSpec& spec : layout) {
        if (spec.name == "world") continue;
        Communicator c = world.split(spec.name, spec.color[r], r);
        if (spec.name == "rollout") g.rollout = c;
        if (spec.name == "trainer") g.trainer = c;
        if (spec.name == "dp") g.dp = c;
        if (spec.name == "ep") g.ep = c;
    }
    return g;
}

}  // namespace dsrl::dist
