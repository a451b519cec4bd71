// A plugin without dsrl_register_rewards: the loader must name the missing symbol.
#include "rewards/plugin_api.h"

DSRL_REWARD_PLUGIN_EXPORT int dsrl_reward_plugin_abi_version() { return DSRL_REWARD_PLUGIN_ABI_VERSION; }
