// Loading reward plugins (rewards/plugin_api.h): dlopen, ABI version check, registration.
#pragma once

#include <string>
#include <vector>

#include "rewards/reward.h"

namespace dsrl::rewards {

/// Loads the plugin at `path` and lets it register its modules into `reg`; returns the names it added.
/// Errors are PluginError naming the path: the library cannot be opened (with the loader's reason), a
/// required symbol is missing, the ABI version differs, registration throws or adds nothing.
std::vector<std::string> load_plugin(const std::string& path, Registry& reg);

/// load_plugin for every path (relative paths resolved against `base_dir`), in order.
void load_plugins(const std::vector<std::string>& paths, const std::string& base_dir, Registry& reg);

}  // namespace dsrl::rewards
