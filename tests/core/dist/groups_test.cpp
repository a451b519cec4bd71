// The standard group layout (pure) and the groups built from it under mpirun -np 2 / 3.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/dist/config.h"
#include "core/dist/groups.h"
#include "core/error.h"
#include "tests/core/dist/dist_test_util.h"
#include "tests/test_util.h"

namespace dsrl::dist {
namespace {

using ::testing::ElementsAre;
using testing::filled;
using ::testing::HasSubstr;

const GroupSpec& find(const std::vector<GroupSpec>& layout, const std::string& name) {
    for (const GroupSpec& g : layout) {
        if (g.name == name) return g;
    }
    throw std::runtime_error("no group " + name);
}

TEST(StandardLayoutTest, ColocatedSplitsEpBlocksAndDpStrides) {
    DistConfig cfg;
    cfg.expert_parallel_size = 2;
    const auto layout = standard_layout(cfg, 6);
    EXPECT_THAT(find(layout, "world").color, ElementsAre(0, 0, 0, 0, 0, 0));
    EXPECT_THAT(find(layout, "rollout").color, ElementsAre(0, 0, 0, 0, 0, 0));
    EXPECT_THAT(find(layout, "trainer").color, ElementsAre(0, 0, 0, 0, 0, 0));
    EXPECT_THAT(find(layout, "ep").color, ElementsAre(0, 0, 1, 1, 2, 2));
    EXPECT_THAT(find(layout, "dp").color, ElementsAre(0, 1, 0, 1, 0, 1));
}

TEST(StandardLayoutTest, DisaggregatedKeepsRolloutRanksOutOfTrainerGroups) {
    DistConfig cfg;
    cfg.mode = DistMode::kDisaggregated;
    cfg.rollout_ranks = 2;
    cfg.expert_parallel_size = 2;
    const auto layout = standard_layout(cfg, 6);
    // Trainers first (ranks [0, T)), rollout workers last, as dsrl_train's roles.
    EXPECT_THAT(find(layout, "rollout").color, ElementsAre(-1, -1, -1, -1, 0, 0));
    EXPECT_THAT(find(layout, "trainer").color, ElementsAre(0, 0, 0, 0, -1, -1));
    EXPECT_THAT(find(layout, "ep").color, ElementsAre(0, 0, 1, 1, -1, -1));
    EXPECT_THAT(find(layout, "dp").color, ElementsAre(0, 1, 0, 1, -1, -1));
}

TEST(StandardLayoutTest, InvalidLayoutsAreConfigErrorsNamingKeyAndValues) {
    DistConfig cfg;
    cfg.expert_parallel_size = 4;
    try {
        standard_layout(cfg, 6);
        ADD_FAILURE() << "expected a ConfigError";
    } catch (const ConfigError& e) {
        EXPECT_THAT(e.what(), HasSubstr("dist.expert_parallel_size=4"));
        EXPECT_THAT(e.what(), HasSubstr("trainer ranks 6 (world size 6)"));
    }
    cfg.expert_parallel_size = 0;
    EXPECT_THROW(standard_layout(cfg, 4), ConfigError);
    cfg = DistConfig{};
    cfg.rollout_ranks = 3;
    try {
        standard_layout(cfg, 3);
        ADD_FAILURE() << "expected a ConfigError";
    } catch (const ConfigError& e) {
        EXPECT_THAT(e.what(), HasSubstr("dist.rollout_ranks=3 must be in [0, world size 3)"));
    }
    cfg = DistConfig{};
    cfg.mode = DistMode::kDisaggregated;
    try {
        standard_layout(cfg, 4);
        ADD_FAILURE() << "expected a ConfigError";
    } catch (const ConfigError& e) {
        EXPECT_THAT(e.what(), HasSubstr("dist.rollout_ranks=0 with dist.mode=disaggregated"));
    }
    cfg.rollout_ranks = 1;
    cfg.expert_parallel_size = 2;
    try {
        standard_layout(cfg, 4);  // 3 trainer ranks
        ADD_FAILURE() << "expected a ConfigError";
    } catch (const ConfigError& e) {
        EXPECT_THAT(e.what(), HasSubstr("trainer ranks 3 (world size 4 minus dist.rollout_ranks=1)"));
    }
}

// Each member contributes its world rank; the group's sum must equal the sum over the layout's members.
void expect_group_sums(const StandardGroups& groups, const std::vector<GroupSpec>& layout, int rank) {
    for (const GroupSpec& spec : layout) {
        const Communicator& c = groups.get(spec.name);
        const int color = spec.color[rank];
        ASSERT_EQ(c.is_member(), color >= 0) << spec.name;
        if (color < 0) continue;
        std::vector<int> members;
        for (size_t q = 0; q < spec.color.size(); ++q) {
            if (spec.color[q] == color) members.push_back(static_cast<int>(q));
        }
        EXPECT_EQ(c.world_ranks(), members) << spec.name;
        EXPECT_EQ(c.name(), spec.name);
        at::Tensor t = filled({3}, at::kLong, [&](int64_t) { return rank; });
        c.all_reduce(t);
        int64_t sum = 0;
        for (int q : members) sum += q;
        EXPECT_ALL_CLOSE(spec.name, t, filled({3}, at::kLong, [&](int64_t) { return sum; }), 0);
    }
}

TEST(StandardGroupsTest, ColocatedGroupsMatchTheLayout) {
    Communicator world = Communicator::world(120);
    const int n = world.size();
    for (int64_t ep : {int64_t{1}, int64_t{n}}) {
        DistConfig cfg;
        cfg.expert_parallel_size = ep;
        const StandardGroups groups = make_standard_groups(world, cfg);
        expect_group_sums(groups, standard_layout(cfg, n), world.rank());
    }
}

TEST(StandardGroupsTest, DisaggregatedGroupsMatchTheLayout) {
    Communicator world = Communicator::world(120);
    DistConfig cfg;
    cfg.mode = DistMode::kDisaggregated;
    cfg.rollout_ranks = 1;
    const StandardGroups groups = make_standard_groups(world, cfg);
    expect_group_sums(groups, standard_layout(cfg, world.size()), world.rank());
    EXPECT_EQ(groups.rollout.is_member(), world.rank() == world.size() - 1);
    EXPECT_EQ(groups.trainer.is_member(), world.rank() != world.size() - 1);
    EXPECT_THROW(groups.get("tp"), DistError);
}

TEST(StandardGroupsTest, InvalidWorldLayoutThrowsOnEveryRank) {
    Communicator world = Communicator::world(120);
    DistConfig cfg;
    cfg.expert_parallel_size = world.size() + 1;
    EXPECT_THROW(make_standard_groups(world, cfg), ConfigError);
}

}  // namespace
}  // namespace dsrl::dist
