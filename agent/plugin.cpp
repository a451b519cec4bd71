#include "agent/plugin.h"

#include <dlfcn.h>

#include <absl/strings/str_cat.h>

#include "agent/plugin_api.h"
#include "core/fs.h"
#include "core/logging.h"

namespace dsrl::agent {
namespace {

struct PluginFns {
    std::string path;
    void* (*create)(const char*, char**) = nullptr;
    char* (*call)(void*, const char*, const char*, char**) = nullptr;
    void (*destroy)(void*) = nullptr;
    void (*free_text)(char*) = nullptr;
};

// One plugin environment instance: the plugin's handle, called through the C functions with JSON text.
class PluginEnvironment : public Environment {
public:
    PluginEnvironment(const PluginFns& fns, const std::string& name, const Json& params) : fns_(fns), name_(name) {
        char* error = nullptr;
        env_ = fns_.create(params.dump().c_str(), &error);
        if (env_ == nullptr) {
            throw EnvironmentError(absl::StrCat("environment plugin '", name_, "' (", fns_.path,
                                                ") could not create an instance: ", take(error, "no reason given")));
        }
    }
    ~PluginEnvironment() override { fns_.destroy(env_); }
    PluginEnvironment(const PluginEnvironment&) = delete;
    PluginEnvironment& operator=(const PluginEnvironment&) = delete;

    Json reset(const Json& task) override { return call("reset", {{"task", task}}); }
    Json step(const Json& tool_calls) override { return call("step", {{"tool_calls", tool_calls}}); }
    Json verify(const Json& trajectory) override { return call("verify", {{"trajectory", trajectory}}); }

private:
    std::string take(char* text, const char* fallback) const {
        if (text == nullptr) return fallback;
        std::string s(text);
        fns_.free_text(text);
        return s;
    }
    Json call(const char* op, const Json& request) {
        char* error = nullptr;
        char* answer = fns_.call(env_, op, request.dump().c_str(), &error);
        if (answer == nullptr) {
            throw EnvironmentError(
                absl::StrCat("environment plugin '", name_, "' ", op, " failed: ", take(error, "no reason given")));
        }
        const std::string text = take(answer, "");
        try {
            return Json::parse(text);
        } catch (const Json::exception& e) {
            throw EnvironmentError(absl::StrCat("environment plugin '", name_, "' ", op, " answered malformed JSON (",
                                                e.what(), "): ", text.substr(0, 200)));
        }
    }
    PluginFns fns_;
    std::string name_;
    void* env_ = nullptr;
};

}  // namespace

std::string load_env_plugin(const std::string& path, EnvRegistry& reg) {
    if (!fs::exists(path)) throw PluginError(absl::StrCat("environment plugin ", path, ": no such file"));
    // RTLD_NOW: a missing symbol shows up here; the handle is never closed (instances live in the library).
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
        const char* why = ::dlerror();
        throw PluginError(
            absl::StrCat("environment plugin ", path, ": cannot load it: ", why ? why : "unknown reason"));
    }
    const auto symbol = [&](const char* name) {
        ::dlerror();
        void* sym = ::dlsym(handle, name);
        if (sym == nullptr) {
            throw PluginError(
                absl::StrCat("environment plugin ", path, ": missing symbol '", name, "' (see agent/plugin_api.h)"));
        }
        return sym;
    };
    const int version = reinterpret_cast<int (*)()>(symbol("dsrl_env_plugin_abi_version"))();
    if (version != DSRL_ENV_PLUGIN_ABI_VERSION) {
        throw PluginError(absl::StrCat("environment plugin ", path, ": built for plugin ABI version ", version,
                                       ", this dsrl has version ", DSRL_ENV_PLUGIN_ABI_VERSION,
                                       "; rebuild it against this dsrl's agent/plugin_api.h"));
    }
    const char* name_c = reinterpret_cast<const char* (*)()>(symbol("dsrl_env_plugin_name"))();
    const std::string name = name_c != nullptr ? name_c : "";
    if (name.empty()) throw PluginError(absl::StrCat("environment plugin ", path, ": dsrl_env_plugin_name is empty"));
    PluginFns fns;
    fns.path = path;
    fns.create = reinterpret_cast<void* (*)(const char*, char**)>(symbol("dsrl_env_create"));
    fns.call = reinterpret_cast<char* (*)(void*, const char*, const char*, char**)>(symbol("dsrl_env_call"));
    fns.destroy = reinterpret_cast<void (*)(void*)>(symbol("dsrl_env_destroy"));
    fns.free_text = reinterpret_cast<void (*)(char*)>(symbol("dsrl_env_free"));
    if (reg.contains(name)) {
        throw PluginError(
            absl::StrCat("environment plugin ", path, ": an environment named '", name, "' is already registered"));
    }
    reg.add(name, absl::StrCat("plugin ", path),
            [fns, name](const Json& params) { return std::make_unique<PluginEnvironment>(fns, name, params); });
    DSRL_LOG(info) << "environment plugin " << path << ": registered '" << name << "'";
    return name;
}

}  // namespace dsrl::agent
