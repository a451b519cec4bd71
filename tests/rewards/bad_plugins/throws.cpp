// A plugin whose registration throws (here: it registers a name twice).
#include <memory>

#include "rewards/plugin_api.h"

DSRL_REWARD_PLUGIN_EXPORT int dsrl_reward_plugin_abi_version() { return DSRL_REWARD_PLUGIN_ABI_VERSION; }
DSRL_REWARD_PLUGIN_EXPORT void dsrl_register_rewards(dsrl::rewards::Registry* reg) {
    reg->add("math_answer", "clashes with a built-in",
             [](const dsrl::rewards::Params&) { return std::unique_ptr<dsrl::rewards::RewardModule>(); });
}
