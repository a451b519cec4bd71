// Reward modules (SPEC §6): the interface every reward implements (built-ins, the generative reward model,
// users' plugins), the registry that creates them by name, and the per-domain composition with isolation.
//
//   Registry& reg = Registry::global();                       // built-ins registered by register_builtins()
//   DomainReward r = DomainReward::create(reg, domain_cfg.rewards, /*timeout_s=*/30);
//   std::vector<ScoredSample> scores = r.score(inputs);       // failed samples: value NaN + error
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "rewards/config.h"

namespace dsrl::rewards {

/// One sample to score. Strings are decoded text (special tokens removed).
struct RewardInput {
    std::string domain;
    int64_t prompt_id = 0;
    std::string prompt;
    std::string response;
    int64_t response_tokens = 0;
    std::string finish_reason;                ///< "eos", "stop", "length", "context"
    std::map<std::string, std::string> meta;  ///< "answer", "rubric" and free metadata from the dataset
};

/// A module's verdict for one sample: a finite value, or an error (the sample then counts as failed).
struct RewardResult {
    double value = std::numeric_limits<double>::quiet_NaN();
    std::string error;                         ///< non-empty = failed
    std::map<std::string, double> components;  ///< optional named parts, for logging
    bool ok() const { return error.empty() && std::isfinite(value); }
    static RewardResult of(double v) { return {v, "", {}}; }
    static RewardResult failure(std::string why) {
        return {std::numeric_limits<double>::quiet_NaN(), std::move(why), {}};
    }
};

class RewardModule {
public:
    virtual ~RewardModule() = default;
    /// Scores a batch; returns exactly one result per input, in order. May throw (then every sample of the
    /// batch is marked failed by the caller).
    virtual std::vector<RewardResult> score(const std::vector<RewardInput>& batch) = 0;
};

/// Parameters of a module instance (`rewards: [{module: x, params: {...}}]` in a domain). Helpers read typed
/// values and throw ConfigError naming the module and the key on a bad or unknown value.
class Params {
public:
    Params(std::string module, std::map<std::string, std::string> values);
    std::string str(const std::string& key, const std::string& fallback) const;
    double num(const std::string& key, double fallback) const;
    int64_t integer(const std::string& key, int64_t fallback) const;
    bool flag(const std::string& key, bool fallback) const;
    /// Throws ConfigError listing keys that no accessor read (call after reading every key).
    void check_all_used() const;
    const std::string& module() const { return module_; }

private:
    std::string module_;
    std::map<std::string, std::string> values_;
    mutable std::map<std::string, bool> used_;
};

using ModuleFactory = std::function<std::unique_ptr<RewardModule>(const Params& params)>;

class Registry {
public:
    /// The process-wide registry (built-ins are added on first use; plugins add theirs when loaded).
    static Registry& global();
    /// Throws ConfigError when `name` is already taken.
    void add(const std::string& name, const std::string& description, ModuleFactory factory);
    bool contains(const std::string& name) const;
    /// Throws ConfigError naming the unknown module and listing the known ones (with a suggestion).
    std::unique_ptr<RewardModule> create(const std::string& name, const Params& params) const;
    std::vector<std::pair<std::string, std::string>> list() const;  ///< (name, description), sorted

private:
    struct Entry {
        std::string description;
        ModuleFactory factory;
    };
    std::map<std::string, Entry> entries_;
};

/// Adds the built-in modules (rewards/builtins.h) to `reg`; idempotent.
void register_builtins(Registry& reg);

/// A sample's combined reward in one domain.
struct ScoredSample {
    double value = std::numeric_limits<double>::quiet_NaN();  ///< Σ weight · term; NaN when failed
    std::string error;                                        ///< first failing term's reason
    std::map<std::string, double> components;                 ///< "<module>" and "<module>.<part>"
    bool ok() const { return error.empty() && std::isfinite(value); }
};

/// Per-domain composition: a weighted sum of modules. Each module runs isolated: if it throws, returns the
/// wrong number of results, a non-finite value, or exceeds `timeout_s` (0 = no limit), the affected samples
/// are failed (value NaN, error says which module and why) and the job goes on.
class DomainReward {
public:
    static DomainReward create(const Registry& reg, const std::vector<RewardTermConfig>& terms, double timeout_s);
    std::vector<ScoredSample> score(const std::vector<RewardInput>& batch);
    size_t num_terms() const { return terms_.size(); }

    struct Term {
        std::string name;
        double weight = 1.0;
        std::shared_ptr<RewardModule> module;
        std::shared_ptr<std::atomic<bool>> busy;  ///< set while a (possibly timed-out) call runs
    };

private:
    std::vector<Term> terms_;
    double timeout_s_ = 0;
};

}  // namespace dsrl::rewards
