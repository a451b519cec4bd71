#include "agent/config.h"

#include <absl/strings/str_cat.h>

namespace dsrl {

using config::Binder;

void bind(Binder& b, EnvironmentConfig& c) {
    b.field("module", c.module,
            {.doc = "A registered environment: calculator, search, code_interpreter, synthetic (docs/agentic.md), or "
                    "the name a plugin registers. Setting module, command or plugin makes the domain an agent domain: "
                    "its data rows are tasks and its reward is the environment's verify."});
    b.field("command", c.command,
            {.doc = "Or a subprocess environment speaking JSON lines on stdin/stdout (argv; any language)."});
    b.field("plugin", c.plugin, {.doc = "A C-ABI environment plugin (.so) to load; module defaults to its name."});
    b.field("params", c.params,
            {.doc = "Environment parameters (values that parse as JSON numbers, booleans, lists or objects are passed "
                    "as such)."});
    b.field("timeout_s", c.timeout_s,
            {.doc = "Per-call time limit of the environment (reset, step, verify); 0 = none.", .min = 0.0});
    if (b.reading() && !c.module.empty() && !c.command.empty()) {
        b.fail("command", "give either module (or plugin) or command, not both");
    }
    if (b.reading() && !c.plugin.empty() && !c.command.empty()) {
        b.fail("plugin", "a plugin environment runs in-process; command is a subprocess: give one of them");
    }
}

namespace agent {

EnvSpec env_spec(const std::string& name, const EnvironmentConfig& c, const std::string& plugin_name) {
    EnvSpec s;
    s.name = name;
    s.module = c.module.empty() ? plugin_name : c.module;
    s.command = c.command;
    s.timeout_s = c.timeout_s;
    s.params = Json::object();
    for (const auto& [key, value] : c.params) {
        Json v = value;
        try {
            Json parsed = Json::parse(value);
            if (!parsed.is_string()) v = std::move(parsed);
        } catch (const Json::exception&) {
        }
        s.params[key] = std::move(v);
    }
    return s;
}

}  // namespace agent
}  // namespace dsrl
