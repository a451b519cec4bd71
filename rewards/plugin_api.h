// The reward plugin ABI (SPEC §6). A plugin is a shared library built against this header (and
// rewards/reward.h, which depends only on the C++ standard library) that exports two C-linkage functions:
//
//   extern "C" int dsrl_reward_plugin_abi_version(void) { return DSRL_REWARD_PLUGIN_ABI_VERSION; }
//   extern "C" void dsrl_register_rewards(dsrl::rewards::Registry* registry) {
//       registry->add("my_reward", "what it scores", [](const dsrl::rewards::Params& p) { ... });
//   }
//
// dsrl loads every library of `rewards.plugins` at start-up, refuses one whose ABI version differs from its
// own, and then lets it register its modules. A complete example: examples/reward_plugin/.
#pragma once

#include "rewards/reward.h"

/// Bumped whenever reward.h changes in a way that breaks compiled plugins.
#define DSRL_REWARD_PLUGIN_ABI_VERSION 1

#define DSRL_REWARD_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))
