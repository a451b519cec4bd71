#include "rewards/reward.h"

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>

#include "core/config_binder.h"
#include "core/error.h"
#include "core/logging.h"

namespace dsrl::rewards {

// --- Params ------------------------------------------------------------------------------------------------

Params::Params(std::string module, std::map<std::string, std::string> values)
    : module_(std::move(module)), values_(std::move(values)) {}

std::string Params::str(const std::string& key, const std::string& fallback) const {
    used_[key] = true;
    const auto it = values_.find(key);
    return it == values_.end() ? fallback : it->second;
}

double Params::num(const std::string& key, double fallback) const {
    used_[key] = true;
    const auto it = values_.find(key);
    if (it == values_.end()) return fallback;
    double v = 0;
    if (!absl::SimpleAtod(it->second, &v) || !std::isfinite(v)) {
        throw ConfigError(
            absl::StrCat("reward module '", module_, "': param '", key, "' must be a number, got '", it->second, "'"));
    }
    return v;
}

int64_t Params::integer(const std::string& key, int64_t fallback) const {
    used_[key] = true;
    const auto it = values_.find(key);
    if (it == values_.end()) return fallback;
    int64_t v = 0;
    if (!absl::SimpleAtoi(it->second, &v)) {
        throw ConfigError(absl::StrCat("reward module '", module_, "': param '", key, "' must be an integer, got '",
                                       it->second, "'"));
    }
    return v;
}

bool Params::flag(const std::string& key, bool fallback) const {
    used_[key] = true;
    const auto it = values_.find(key);
    if (it == values_.end()) return fallback;
    if (it->second == "true" || it->second == "1") return true;
    if (it->second == "false" || it->second == "0") return false;
    throw ConfigError(
        absl::StrCat("reward module '", module_, "': param '", key, "' must be true or false, got '", it->second, "'"));
}

void Params::check_all_used() const {
    std::vector<std::string> unknown, known;
    for (const auto& [k, v] : values_) {
        if (!used_.count(k)) unknown.push_back(k);
    }
    for (const auto& [k, v] : used_) known.push_back(k);
    if (!unknown.empty()) {
        throw ConfigError(absl::StrCat("reward module '", module_, "': unknown param(s) ", absl::StrJoin(unknown, ", "),
                                       known.empty() ? std::string(" (it takes none)")
                                                     : absl::StrCat(" (known: ", absl::StrJoin(known, ", "), ")")));
    }
}

// --- Registry ----------------------------------------------------------------------------------------------

Registry& Registry::global() {
    static Registry* reg = [] {
        auto* r = new Registry();
        register_builtins(*r);  // `judge` needs a model: the trainer registers it (trainer/judge_backend.h)
        return r;
    }();
    return *reg;
}

void Registry::add(const std::string& name, const std::string& description, ModuleFactory factory) {
    if (name.empty()) throw ConfigError("reward registry: a module needs a non-empty name");
    if (entries_.count(name))
        throw ConfigError(absl::StrCat("reward registry: module '", name, "' is already registered"));
    entries_[name] = {description, std::move(factory)};
}

bool Registry::contains(const std::string& name) const { return entries_.count(name) != 0; }

std::unique_ptr<RewardModule> Registry::create(const std::string& name, const Params& params) const {
    const auto it = entries_.find(name);
    if (it == entries_.end()) {
        std::vector<std::string> names;
        std::string best;
        size_t best_d = 3;
        for (const auto& [n, e] : entries_) {
            names.push_back(n);
            const size_t d = config::edit_distance(n, name);
            if (d < best_d) {
                best_d = d;
                best = n;
            }
        }
        throw ConfigError(absl::StrCat("unknown reward module '", name, "'",
                                       best.empty() ? std::string() : absl::StrCat(" (did you mean '", best, "'?)"),
                                       "; registered: ", absl::StrJoin(names, ", "),
                                       ". Plugins register theirs through rewards.plugins."));
    }
    std::unique_ptr<RewardModule> m = it->second.factory(params);
    if (!m) throw ConfigError(absl::StrCat("reward module '", name, "': its factory returned nothing"));
    params.check_all_used();
    return m;
}

std::vector<std::pair<std::string, std::string>> Registry::list() const {
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& [n, e] : entries_) out.emplace_back(n, e.description);
    return out;
}

// --- DomainReward ------------------------------------------------------------------------------------------

namespace {

// A module call with a time limit. A call that times out keeps running on its own thread (C++ cannot stop
// it); the module is then marked busy and later calls fail fast until it returns, since modules need not be
// reentrant.
struct Guarded {
    std::shared_ptr<RewardModule> module;
    std::shared_ptr<std::atomic<bool>> busy = std::make_shared<std::atomic<bool>>(false);
};

std::vector<RewardResult> run_guarded(const std::string& name,
                                      Guarded& g,
                                      const std::vector<RewardInput>& batch,
                                      double timeout_s) {
    const auto fail_all = [&](const std::string& why) {
        return std::vector<RewardResult>(batch.size(), RewardResult::failure(absl::StrCat(name, ": ", why)));
    };
    if (g.busy->load()) return fail_all("still running a call that timed out earlier");
    auto call = [module = g.module, busy = g.busy, batch]() {
        struct Done {
            std::atomic<bool>* b;
            ~Done() { b->store(false); }
        } done{busy.get()};
        return module->score(batch);
    };
    std::vector<RewardResult> out;
    try {
        if (timeout_s <= 0) {
            g.busy->store(true);
            out = call();
        } else {
            g.busy->store(true);
            std::packaged_task<std::vector<RewardResult>()> task(std::move(call));
            std::future<std::vector<RewardResult>> fut = task.get_future();
            std::thread(std::move(task)).detach();
            if (fut.wait_for(std::chrono::duration<double>(timeout_s)) != std::future_status::ready) {
                DSRL_LOG(warn) << "reward module '" << name << "' exceeded its " << timeout_s
                               << " s limit on a batch of " << batch.size() << "; those samples are marked failed";
                return fail_all(absl::StrCat("timed out after ", timeout_s, " s"));
            }
            out = fut.get();
        }
    } catch (const std::exception& e) {
        return fail_all(absl::StrCat("threw: ", e.what()));
    } catch (...) {
        return fail_all("threw a non-standard exception");
    }
    if (out.size() != batch.size()) {
        return fail_all(absl::StrCat("returned ", out.size(), " results for ", batch.size(), " samples"));
    }
    for (RewardResult& r : out) {
        if (r.error.empty() && !std::isfinite(r.value)) r.error = absl::StrCat("non-finite value ", r.value);
        if (!r.error.empty() && r.error.rfind(name + ":", 0) != 0) r.error = absl::StrCat(name, ": ", r.error);
    }
    return out;
}

}  // namespace

DomainReward DomainReward::create(const Registry& reg, const std::vector<RewardTermConfig>& terms, double timeout_s) {
    if (terms.empty()) throw ConfigError("a domain needs at least one reward module (domains[].rewards)");
    DomainReward d;
    d.timeout_s_ = timeout_s;
    for (const RewardTermConfig& t : terms) {
        if (!std::isfinite(t.weight))
            throw ConfigError(absl::StrCat("reward module '", t.module, "': weight must be finite"));
        d.terms_.push_back({t.module, t.weight, reg.create(t.module, Params(t.module, t.params)),
                            std::make_shared<std::atomic<bool>>(false)});
    }
    return d;
}

std::vector<ScoredSample> DomainReward::score(const std::vector<RewardInput>& batch) {
    std::vector<ScoredSample> out(batch.size());
    for (ScoredSample& s : out) s.value = 0;
    for (Term& t : terms_) {
        Guarded g{t.module, t.busy};
        const std::vector<RewardResult> res = run_guarded(t.name, g, batch, timeout_s_);
        for (size_t i = 0; i < batch.size(); ++i) {
            ScoredSample& s = out[i];
            if (!res[i].ok()) {
                if (s.error.empty()) s.error = res[i].error;
                s.value = std::numeric_limits<double>::quiet_NaN();
                continue;
            }
            if (s.error.empty()) s.value += t.weight * res[i].value;
            s.components[t.name] = res[i].value;
            for (const auto& [k, v] : res[i].components) s.components[absl::StrCat(t.name, ".", k)] = v;
        }
    }
    return out;
}

}  // namespace dsrl::rewards
