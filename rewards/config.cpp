#include "rewards/config.h"

#include <absl/strings/str_cat.h>

#include "core/error.h"

namespace dsrl {

using config::Binder;

void bind(Binder& b, RewardTermConfig& c) {
    b.field("module", c.module, {.doc = "Registered reward module name.", .required = true});
    b.field("weight", c.weight, {.doc = "Weight in the domain's weighted sum."});
    b.field("params", c.params, {.doc = "Module-specific parameters."});
}

void bind(Binder& b, RewardsConfig& c) {
    b.field("plugins", c.plugins, {.doc = "Shared libraries that register reward modules."});
    b.field("timeout_s", c.timeout_s,
            {.doc = "Per-batch time limit of a reward module.", .min = 0.0, .min_open = true});
}

}  // namespace dsrl
