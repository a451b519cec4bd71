// Held-out accuracy per domain (the demo's "before and after RL" figures, and `trainer.eval_every`): greedy
// responses to a fixed set of `trainer.eval_prompts` prompts per domain, scored by the domain's reward
// modules. A domain's accuracy is the mean score of its first reward term (its verifier: 1 correct, 0 wrong);
// its reward is the mean of the whole weighted sum. An agent domain runs greedy multi-turn trajectories with its
// environment; its reward is the mean verify reward and its accuracy the fraction of trajectories scored >= 0.5. The
// prompts are the same at every evaluation: items [0, n) of the domain's `eval_data` source (default: its training
// data; synthetic tasks draw a separate stream, seed 1000003, so the items differ from the training ones where the task
// has enough of them). The ranks split the prompts and the sums are all-reduced, so every rank returns the same
// figures.
//
//   Evaluator eval(job, tokenizer, "");
//   std::map<std::string, double> m = eval.run(policy, &comm);   // "accuracy/<domain>", "eval_reward/<domain>"
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dist/communicator.h"
#include "data/prompts.h"
#include "dsa/model.h"
#include "rewards/reward.h"
#include "text/tokenizer.h"
#include "trainer/agent_domains.h"
#include "trainer/config.h"

namespace dsrl::trainer {

class Evaluator {
public:
    /// Builds each domain's eval source and reward modules (plugins must be loaded first).
    Evaluator(const JobConfig& job, const text::Tokenizer& tokenizer, const std::string& base_dir);
    /// Greedy generation + scoring; keys "accuracy/<domain>", "eval_reward/<domain>", "eval_failed".
    std::map<std::string, double> run(const dsa::Model& policy, const dist::Communicator* comm);

private:
    struct Domain {
        std::string name;
        std::string verifier;  ///< the first reward term's module
        std::shared_ptr<const data::PromptSource> source;
        std::shared_ptr<rewards::DomainReward> reward;  ///< null for an agent domain (its environment verifies)
    };
    /// An agent domain's sums [accuracy, reward, count, failed] on this rank: greedy multi-turn trajectories, each
    /// scored by its environment's verify (accuracy: reward >= 0.5).
    std::vector<double> run_agent(const Domain& d, const dsa::Model& policy, int rank, int world);
    const JobConfig& job_;
    const text::Tokenizer& tokenizer_;
    std::shared_ptr<const AgentEnvironments> agents_;
    std::vector<Domain> domains_;
};

/// The eval data spec of a domain: `eval_data` when set, else `data` (synthetic specs get seed=1000003 unless
/// they name a seed).
std::string eval_data_spec(const DomainConfig& d);

}  // namespace dsrl::trainer
