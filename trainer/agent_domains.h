// Agent domains in the trainer (issue 20): the environments of a job's `domains[i].environment` (built-ins and
// plugins in one registry), the task each prompt item becomes, the multi-turn rollout options from `rollout:`, and
// the rollout's counters as metrics (summed over the ranks).
//
//   AgentEnvironments envs = AgentEnvironments::build(job);          // ConfigError for an unknown module
//   if (envs.is_agent("calc")) task = task_of(item);                  // what the environment's reset receives
#pragma once

#include <map>
#include <memory>
#include <string>

#include "agent/environment.h"
#include "core/dist/communicator.h"
#include "data/prompts.h"
#include "rollout/multi_turn.h"
#include "trainer/config.h"

namespace dsrl::trainer {

class AgentEnvironments {
public:
    /// The built-in environments, every domain's plugin loaded, and each agent domain's EnvSpec; a module that is not
    /// registered is a ConfigError naming the domain and the known modules; a subprocess command whose program does
    /// not exist fails at its first reset (as an environment failure) — its path is checked here when absolute.
    static AgentEnvironments build(const JobConfig& job);
    bool any() const { return !specs_.empty(); }
    bool is_agent(const std::string& domain) const { return specs_.count(domain) != 0; }
    const agent::EnvSpec& spec(const std::string& domain) const { return specs_.at(domain); }
    const agent::EnvRegistry& registry() const { return *registry_; }

private:
    std::shared_ptr<agent::EnvRegistry> registry_;
    std::map<std::string, agent::EnvSpec> specs_;
};

/// What an environment's reset receives for `item`: a task row (data::Rows::kTasks) as it is; a prompt (a synthetic
/// task, a prompt row) as {"question": prompt, "answer": ..., and every other meta field} — the layout the built-in
/// question environments take.
agent::Json task_of(const data::PromptItem& item);

/// The cold start of agent domain `domain` (issue 20 item 6): a source over the domain's tasks (`tasks`) whose item i
/// is the environment's demonstration of task i (agent::Environment::demonstrate) as an SFT conversation. An
/// environment without a solver fails at the first item, naming the domain.
std::shared_ptr<const data::PromptSource> demonstration_source(std::shared_ptr<const data::PromptSource> tasks,
                                                               const AgentEnvironments& envs,
                                                               const std::string& domain);

/// The multi-turn rollout options of `job` around the single-turn `generate` options.
rollout::MultiTurnOptions multi_turn_options(const JobConfig& job, const rollout::GenerateOptions& generate);

/// The rollout's counters as metrics, summed over the ranks (`comm` may be null): agent/tool_calls_per_trajectory,
/// agent/turns_per_trajectory, agent/context_events, agent/env_errors, agent/tool_limit, agent/context_limit,
/// agent/parallel_discarded, agent/untrained_tokens, agent/env_tokens, agent/trajectories, agent/env_seconds (max).
void add_agent_metrics(const rollout::MultiTurnStats& stats,
                       const dist::Communicator* comm,
                       std::map<std::string, double>& metrics);

}  // namespace dsrl::trainer
