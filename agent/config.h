// An agent domain's environment (`domains[i].environment` in a job; issue 20), owned by the agent library: which
// environment serves the domain's tasks — a registered one (`module`: built-ins, or one a `plugin` .so registers) or a
// subprocess (`command`) — its parameters and the per-call time limit.
//
//   domains:
//     - name: calc
//       data: "synthetic:arithmetic?digits=2&ops=*"
//       environment: {module: calculator, timeout_s: 10}
#pragma once

#include <map>
#include <string>
#include <vector>

#include "agent/environment.h"
#include "core/config_binder.h"

namespace dsrl {

struct EnvironmentConfig {
    std::string module;                         ///< a registered environment (built-in or from `plugin`)
    std::vector<std::string> command;           ///< or a subprocess speaking JSON lines: argv
    std::string plugin;                         ///< a C-ABI environment plugin .so to load first (agent/plugin_api.h)
    std::map<std::string, std::string> params;  ///< values that parse as JSON (numbers, true, [..]) are passed as JSON
    double timeout_s = 30.0;
    /// Whether the domain is an agent domain (module, command or plugin given).
    bool enabled() const { return !module.empty() || !command.empty() || !plugin.empty(); }
};

void bind(config::Binder& b, EnvironmentConfig& c);

namespace agent {

/// The EnvSpec of domain `name`'s environment: params converted (a value that parses as a JSON number, boolean,
/// null, array or object is that value, anything else a string); `module` is what `plugin` registered when only the
/// plugin is given (`plugin_name`).
EnvSpec env_spec(const std::string& name, const EnvironmentConfig& c, const std::string& plugin_name = "");

}  // namespace agent
}  // namespace dsrl
