#include "rewards/plugin.h"

#include <dlfcn.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "rewards/plugin_api.h"

namespace dsrl::rewards {

std::vector<std::string> load_plugin(const std::string& path, Registry& reg) {
    if (!fs::exists(path)) throw PluginError(absl::StrCat("reward plugin ", path, ": no such file"));
    // RTLD_NOW: every missing symbol shows up here, not in the middle of a run. The handle is never closed:
    // registered factories and the modules they create live in the library.
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
        const char* why = ::dlerror();
        throw PluginError(absl::StrCat("reward plugin ", path, ": cannot load it: ", why ? why : "unknown reason"));
    }
    using VersionFn = int (*)();
    using RegisterFn = void (*)(Registry*);
    const auto symbol = [&](const char* name) {
        ::dlerror();
        void* sym = ::dlsym(handle, name);
        if (sym == nullptr) {
            throw PluginError(absl::StrCat("reward plugin ", path, ": missing symbol '", name,
                                           "' (export it with DSRL_REWARD_PLUGIN_EXPORT; see rewards/plugin_api.h)"));
        }
        return sym;
    };
    const auto version = reinterpret_cast<VersionFn>(symbol("dsrl_reward_plugin_abi_version"));
    const auto do_register = reinterpret_cast<RegisterFn>(symbol("dsrl_register_rewards"));
    const int v = version();
    if (v != DSRL_REWARD_PLUGIN_ABI_VERSION) {
        throw PluginError(absl::StrCat("reward plugin ", path, ": built for plugin ABI version ", v,
                                       ", this dsrl has version ", DSRL_REWARD_PLUGIN_ABI_VERSION,
                                       "; rebuild the plugin against this dsrl's rewards/plugin_api.h"));
    }
    std::set<std::string> before;
    for (const auto& [name, desc] : reg.list()) before.insert(name);
    try {
        do_register(&reg);
    } catch (const std::exception& e) {
        throw PluginError(absl::StrCat("reward plugin ", path, ": registration failed: ", e.what()));
    }
    std::vector<std::string> added;
    for (const auto& [name, desc] : reg.list()) {
        if (!before.count(name)) added.push_back(name);
    }
    if (added.empty()) throw PluginError(absl::StrCat("reward plugin ", path, ": registered no reward module"));
    DSRL_LOG(info) << "reward plugin " << path << ": registered " << absl::StrJoin(added, ", ");
    return added;
}

void load_plugins(const std::vector<std::string>& paths, const std::string& base_dir, Registry& reg) {
    for (const std::string& p : paths) {
        load_plugin(!p.empty() && p[0] != '/' && !base_dir.empty() ? fs::join(base_dir, p) : p, reg);
    }
}

}  // namespace dsrl::rewards
