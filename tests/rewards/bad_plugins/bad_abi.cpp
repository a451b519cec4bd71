// A plugin that claims another ABI version: the loader must refuse it before calling anything else.
#include "rewards/plugin_api.h"

DSRL_REWARD_PLUGIN_EXPORT int dsrl_reward_plugin_abi_version() { return DSRL_REWARD_PLUGIN_ABI_VERSION + 41; }
DSRL_REWARD_PLUGIN_EXPORT void dsrl_register_rewards(dsrl::rewards::Registry*) {}
