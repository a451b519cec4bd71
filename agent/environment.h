// Agent environments (issue 20, item 1): what a multi-turn rollout talks to. An environment holds one
// trajectory's state: reset(task) gives the initial messages and the tools (JSON schemas), step(tool_calls)
// answers the model's tool calls (and may say the episode is done), verify(trajectory) scores the finished
// trajectory. Requests and answers are JSON in one protocol for the three ways to provide an environment:
//   - in-process C++: a class implementing Environment, registered by name in an EnvRegistry;
//   - a plugin .so with a C ABI (agent/plugin_api.h: strings of JSON in and out — C, C++, Rust, Zig ...);
//   - a subprocess speaking JSON lines over stdin/stdout, in any language (agent/subprocess.h).
// Every call goes through a GuardedEnvironment: a time limit, the answer's shape checked, and every failure — a
// throw, a crash, a hang, malformed JSON, a missing field — an EnvironmentError naming the environment and the
// operation, which the rollout turns into a failed trajectory (marked, excluded from the loss, counted; never a
// silent 0 reward). Protocol (docs/agentic.md):
//   reset  {"task": T}                         -> {"messages": [...], "tools": [...]}       (tools optional)
//   step   {"tool_calls": [{"id", "name", "arguments"}]}
//                                              -> {"results": [{"tool_call_id", "content"}], "done": bool}
//   verify {"trajectory": {"messages": [...]}} -> {"reward": number, "details": {...}}       (details optional)
//
//   EnvRegistry reg;  reg.add("calculator", "...", [](const Json& params) { return std::make_unique<Calc>(); });
//   GuardedEnvironment env(make_environment({.name = "calc", .module = "calculator"}, reg), "calc", 10.0);
//   Json first = env.reset(task);   Json answer = env.step(calls);   double r = env.verify(traj).at("reward");
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsrl::agent {

using Json = nlohmann::json;

/// An environment failed: threw, crashed, hung past its limit, or answered malformed JSON or the wrong shape. The
/// message names the environment and the operation.
class EnvironmentError : public Error {
public:
    using Error::Error;
};

class Environment {
public:
    virtual ~Environment() = default;
    virtual Json reset(const Json& task) = 0;
    virtual Json step(const Json& tool_calls) = 0;
    virtual Json verify(const Json& trajectory) = 0;
    /// A solver's demonstration of `task` for the cold start (issue 20 item 6): a whole conversation {"messages":
    /// [..., the final assistant answer], "tools": [...]} that verifies 1 — an SFT row. In-process environments only;
    /// the default is an EnvironmentError saying the environment has no solver.
    virtual Json demonstrate(const Json& task);
};

using EnvFactory = std::function<std::unique_ptr<Environment>(const Json& params)>;

/// In-process environments by name (built-ins and plugins register here).
class EnvRegistry {
public:
    /// ConfigError when `name` is taken. `params`: the parameter names the factory reads — create() refuses others,
    /// naming them (a typo would otherwise be a default silently); nullopt (plugins): any.
    void add(const std::string& name,
             const std::string& description,
             EnvFactory factory,
             std::optional<std::vector<std::string>> params = std::nullopt);
    bool contains(const std::string& name) const { return factories_.count(name) != 0; }
    /// ConfigError naming the known environments when `name` is unknown.
    std::unique_ptr<Environment> create(const std::string& name, const Json& params) const;
    std::vector<std::pair<std::string, std::string>> list() const;

private:
    struct Entry {
        std::string description;
        EnvFactory factory;
        std::optional<std::vector<std::string>> params;
    };
    std::map<std::string, Entry> factories_;
};

/// How a job names an environment: exactly one of `module` (registered in-process, plugins included) or `command`
/// (a subprocess: argv, the first entry the program), with `params` passed to the factory or the subprocess's
/// reset.
struct EnvSpec {
    std::string name;                  ///< for messages and metrics
    std::string module;                ///< registered name
    std::vector<std::string> command;  ///< subprocess argv
    Json params = Json::object();
    double timeout_s = 30.0;  ///< per call (0 = none)
};

/// A fresh environment instance for one trajectory. ConfigError for a spec that names neither or both; a subprocess
/// that cannot be started is an EnvironmentError.
std::unique_ptr<Environment> make_environment(const EnvSpec& spec, const EnvRegistry& reg);

/// The guarded front of an environment (see the header comment). Not thread-safe; one per trajectory. After a
/// call timed out the environment is not called again (every later call is an EnvironmentError at once): an
/// in-process call cannot be interrupted, and its state is unknown.
class GuardedEnvironment {
public:
    GuardedEnvironment(std::unique_ptr<Environment> env, std::string name, double timeout_s);
    ~GuardedEnvironment();
    GuardedEnvironment(GuardedEnvironment&&) noexcept;
    GuardedEnvironment& operator=(GuardedEnvironment&&) noexcept;

    /// {"messages": [...non-empty, each an object with a string "role"...], "tools": [...]} ("tools" [] if absent).
    Json reset(const Json& task);
    /// {"results": [one per call, in order, each {"tool_call_id", "content" string}], "done": bool}.
    Json step(const Json& tool_calls);
    /// {"reward": finite number, "details": object} ("details" {} if absent).
    Json verify(const Json& trajectory);
    const std::string& name() const { return name_; }

private:
    Json call(const char* op, const std::function<Json(Environment&)>& fn);
    std::shared_ptr<Environment> env_;  // shared with a call that outlives its time limit
    std::string name_;
    double timeout_s_;
    bool poisoned_ = false;
};

/// The built-in verifiers' rule: whether `text` contains `answer`, both lower-cased with whitespace collapsed (an
/// empty answer is never contained).
bool contains_answer(const std::string& text, const std::string& answer);

/// The content of the last assistant message of a trajectory ({"messages": [...]}), "" when there is none.
std::string final_answer(const Json& trajectory);

/// The answers' shapes, checked (EnvironmentError naming `name`, the operation and what is wrong); exposed for
/// environments that want to check themselves.
Json check_reset(const Json& answer, const std::string& name);
Json check_step(const Json& answer, const Json& tool_calls, const std::string& name);
Json check_verify(const Json& answer, const std::string& name);

}  // namespace dsrl::agent
