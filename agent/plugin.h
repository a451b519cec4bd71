// Loading environment plugins (agent/plugin_api.h): dlopen, ABI check, registration under the plugin's name.
#pragma once

#include <string>

#include "agent/environment.h"

namespace dsrl::agent {

/// Loads the environment plugin at `path` and registers it in `reg`; returns its name. PluginError naming the path:
/// it cannot be opened (with the loader's reason), a symbol is missing, the ABI version differs, or the name is
/// empty or taken.
std::string load_env_plugin(const std::string& path, EnvRegistry& reg);

}  // namespace dsrl::agent
