#include "agent/environment.h"

#include <absl/strings/ascii.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <thread>

#include "agent/subprocess.h"
#include "core/logging.h"

namespace dsrl::agent {
namespace {

[[noreturn]] void bad(const std::string& name, const char* op, const std::string& what) {
    throw EnvironmentError(absl::StrCat("environment '", name, "' ", op, ": ", what));
}

std::string excerpt(const Json& j) {
    std::string s = j.dump();
    if (s.size() > 200) s = s.substr(0, 200) + "...";
    return s;
}

std::string collapsed(const std::string& s) {
    std::string out;
    bool space = false;
    for (const char ch : s) {
        if (absl::ascii_isspace(static_cast<unsigned char>(ch))) {
            space = !out.empty();
            continue;
        }
        if (space) out.push_back(' ');
        space = false;
        out.push_back(absl::ascii_tolower(static_cast<unsigned char>(ch)));
    }
    return out;
}

}  // namespace

Json Environment::demonstrate(const Json& task) {
    (void)task;
    throw EnvironmentError("this environment has no solver: it cannot demonstrate its tasks for the cold start");
}

bool contains_answer(const std::string& text, const std::string& answer) {
    const std::string a = collapsed(answer);
    return !a.empty() && collapsed(text).find(a) != std::string::npos;
}

std::string final_answer(const Json& trajectory) {
    std::string last;
    if (!trajectory.is_object() || !trajectory.contains("messages") || !trajectory["messages"].is_array()) return last;
    for (const Json& m : trajectory["messages"]) {
        if (m.is_object() && m.value("role", "") == "assistant" && m.contains("content") && m["content"].is_string()) {
            last = m["content"].get<std::string>();
        }
    }
    return last;
}

void EnvRegistry::add(const std::string& name,
                      const std::string& description,
                      EnvFactory factory,
                      std::optional<std::vector<std::string>> params) {
    if (name.empty()) throw ConfigError("environment registry: an environment needs a name");
    if (!factories_.emplace(name, Entry{description, std::move(factory), std::move(params)}).second) {
        throw ConfigError(absl::StrCat("environment registry: '", name, "' is registered twice"));
    }
}

std::unique_ptr<Environment> EnvRegistry::create(const std::string& name, const Json& params) const {
    const auto it = factories_.find(name);
    if (it == factories_.end()) {
        std::vector<std::string> known;
        for (const auto& [n, f] : factories_) known.push_back(n);
        throw ConfigError(absl::StrCat("unknown environment module '", name,
                                       "' (known: ", known.empty() ? "none" : absl::StrJoin(known, ", "), ")"));
    }
    if (it->second.params && params.is_object()) {
        std::vector<std::string> unknown;
        for (const auto& [key, value] : params.items()) {
            const auto& known = *it->second.params;
            if (std::find(known.begin(), known.end(), key) == known.end()) unknown.push_back(key);
        }
        if (!unknown.empty()) {
            throw ConfigError(absl::StrCat(
                "environment '", name, "': unknown param(s) ", absl::StrJoin(unknown, ", "),
                " (known: ", it->second.params->empty() ? "none" : absl::StrJoin(*it->second.params, ", "), ")"));
        }
    }
    std::unique_ptr<Environment> env = it->second.factory(params);
    if (!env) throw ConfigError(absl::StrCat("environment module '", name, "' created nothing"));
    return env;
}

std::vector<std::pair<std::string, std::string>> EnvRegistry::list() const {
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& [name, f] : factories_) out.emplace_back(name, f.description);
    return out;
}

std::unique_ptr<Environment> make_environment(const EnvSpec& spec, const EnvRegistry& reg) {
    if (spec.module.empty() == spec.command.empty()) {
        throw ConfigError(absl::StrCat("environment '", spec.name,
                                       "': give exactly one of module (a registered environment) or command (a "
                                       "subprocess speaking JSON lines)"));
    }
    if (!spec.module.empty()) return reg.create(spec.module, spec.params);
    return std::make_unique<SubprocessEnvironment>(spec.command, spec.params, spec.name, spec.timeout_s);
}

Json check_reset(const Json& answer, const std::string& name) {
    if (!answer.is_object()) bad(name, "reset", absl::StrCat("expected an object, got ", excerpt(answer)));
    const auto m = answer.find("messages");
    if (m == answer.end() || !m->is_array() || m->empty()) {
        bad(name, "reset", absl::StrCat("expected a non-empty \"messages\" array, got ", excerpt(answer)));
    }
    for (size_t i = 0; i < m->size(); ++i) {
        const Json& msg = (*m)[i];
        if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string()) {
            bad(name, "reset", absl::StrCat("message ", i, " needs a string \"role\", got ", excerpt(msg)));
        }
    }
    Json out = {{"messages", *m}, {"tools", Json::array()}};
    if (const auto t = answer.find("tools"); t != answer.end() && !t->is_null()) {
        if (!t->is_array()) bad(name, "reset", absl::StrCat("\"tools\" must be an array, got ", excerpt(*t)));
        out["tools"] = *t;
    }
    return out;
}

Json check_step(const Json& answer, const Json& tool_calls, const std::string& name) {
    if (!answer.is_object()) bad(name, "step", absl::StrCat("expected an object, got ", excerpt(answer)));
    const auto r = answer.find("results");
    if (r == answer.end() || !r->is_array()) {
        bad(name, "step", absl::StrCat("expected a \"results\" array, got ", excerpt(answer)));
    }
    if (r->size() != tool_calls.size()) {
        bad(name, "step", absl::StrCat(r->size(), " results for ", tool_calls.size(), " tool calls"));
    }
    for (size_t i = 0; i < r->size(); ++i) {
        const Json& res = (*r)[i];
        if (!res.is_object() || !res.contains("content") || !res["content"].is_string()) {
            bad(name, "step", absl::StrCat("result ", i, " needs a string \"content\", got ", excerpt(res)));
        }
    }
    bool done = false;
    if (const auto d = answer.find("done"); d != answer.end() && !d->is_null()) {
        if (!d->is_boolean()) bad(name, "step", absl::StrCat("\"done\" must be true or false, got ", excerpt(*d)));
        done = d->get<bool>();
    }
    Json results = Json::array();
    for (size_t i = 0; i < r->size(); ++i) {
        const Json& call = tool_calls[i];
        const Json id = (*r)[i].value("tool_call_id", call.is_object() ? call.value("id", Json("")) : Json(""));
        results.push_back({{"tool_call_id", id}, {"content", (*r)[i]["content"]}});
    }
    return {{"results", results}, {"done", done}};
}

Json check_verify(const Json& answer, const std::string& name) {
    if (!answer.is_object()) bad(name, "verify", absl::StrCat("expected an object, got ", excerpt(answer)));
    const auto r = answer.find("reward");
    if (r == answer.end() || !r->is_number() || !std::isfinite(r->get<double>())) {
        bad(name, "verify", absl::StrCat("expected a finite number \"reward\", got ", excerpt(answer)));
    }
    Json out = {{"reward", r->get<double>()}, {"details", Json::object()}};
    if (const auto d = answer.find("details"); d != answer.end() && !d->is_null()) out["details"] = *d;
    return out;
}

GuardedEnvironment::GuardedEnvironment(std::unique_ptr<Environment> env, std::string name, double timeout_s)
    : env_(std::move(env)), name_(std::move(name)), timeout_s_(timeout_s) {
    if (!env_) throw InternalError(absl::StrCat("GuardedEnvironment '", name_, "': no environment"));
}

GuardedEnvironment::~GuardedEnvironment() = default;
GuardedEnvironment::GuardedEnvironment(GuardedEnvironment&&) noexcept = default;
GuardedEnvironment& GuardedEnvironment::operator=(GuardedEnvironment&&) noexcept = default;

Json GuardedEnvironment::call(const char* op, const std::function<Json(Environment&)>& fn) {
    if (poisoned_) bad(name_, op, "an earlier call timed out; this environment is no longer used");
    try {
        if (timeout_s_ <= 0) return fn(*env_);
        // The call runs on its own thread holding the environment, so one that never returns only leaks that
        // thread and its environment (subprocess environments also enforce the limit themselves and kill the
        // process).
        std::packaged_task<Json()> task([env = env_, fn] { return fn(*env); });
        std::future<Json> fut = task.get_future();
        std::thread(std::move(task)).detach();
        if (fut.wait_for(std::chrono::duration<double>(timeout_s_)) != std::future_status::ready) {
            poisoned_ = true;
            DSRL_LOG(warn) << "environment '" << name_ << "' " << op << " exceeded its " << timeout_s_ << " s limit";
            bad(name_, op, absl::StrCat("timed out after ", timeout_s_, " s"));
        }
        return fut.get();
    } catch (const EnvironmentError&) {
        throw;
    } catch (const std::exception& e) {
        bad(name_, op, absl::StrCat("threw: ", e.what()));
    } catch (...) {
        bad(name_, op, "threw a non-standard exception");
    }
}

Json GuardedEnvironment::reset(const Json& task) {
    // Requests are captured by value: a call that outlives its time limit must not hold the caller's objects.
    return check_reset(call("reset", [task](Environment& e) { return e.reset(task); }), name_);
}

Json GuardedEnvironment::step(const Json& tool_calls) {
    if (!tool_calls.is_array()) bad(name_, "step", "tool_calls must be an array");
    return check_step(call("step", [tool_calls](Environment& e) { return e.step(tool_calls); }), tool_calls, name_);
}

Json GuardedEnvironment::verify(const Json& trajectory) {
    return check_verify(call("verify", [trajectory](Environment& e) { return e.verify(trajectory); }), name_);
}

}  // namespace dsrl::agent
