// One step of the mixed-RL loop (SPEC §5-7): draw prompts from the domain mixture, roll out G samples per prompt,
// score them with each domain's reward modules (an agent domain: its environment), then the GRPO update phase, where
// each optimizer step averages gradients over the data-parallel ranks, clips them by global norm and skips (and
// counts) a step whose gradients are not finite. Colocated, every rank does all of it for its slots of the global
// batch. Disaggregated (issue 22, synchronous: dist.max_policy_lag 0), rollout rank T + j generates and scores the
// slots of the trainer ranks t with t mod R = j and sends each its groups (serialized records) and rollout counters
// over MPI; the trainers train; then the trainers send the new weights to the rollout workers (trainer rank 0, and
// under expert parallelism each rank of the first expert-parallel group its experts: trainer/weight_sync.h).
//
//   RlStep step(job, policy, &reference, tokenizer, domains, optimizer, &world);
//   RlStepResult r = step.run(/*step=*/s);            // r.metrics: loss terms, rewards per domain, ...
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
#include "rollout/record.h"
#include "text/tokenizer.h"
#include "trainer/agent_domains.h"
#include "trainer/config.h"
#include "trainer/optimizer.h"
#include "trainer/stage_loop.h"

namespace dsrl::trainer {

struct DomainRuntime {
    std::string name;
    double weight = 1.0;
    double beta = 0.0;
    std::shared_ptr<data::PromptSampler> sampler;
    std::shared_ptr<rewards::DomainReward> reward;    ///< null for an agent domain (its environment verifies)
    std::shared_ptr<const AgentEnvironments> agents;  ///< the job's environments (shared by its agent domains)
    bool agent() const { return agents != nullptr && agents->is_agent(name); }
};

/// Builds every domain of `job` (prompt source + sampler seeded by the job, the same on every rank: each rank
/// draws the whole global batch and keeps its slots; reward modules) from the global
/// registry (plugins must be loaded first).
std::vector<DomainRuntime> build_domains(const JobConfig& job, const std::string& base_dir);

struct RlStepResult {
    std::map<std::string, double> metrics;     ///< averaged over mini-batch steps and ranks where noted
    std::vector<rollout::SampleGroup> groups;  ///< this rank's groups (for --dump-rollouts)
    int64_t optimizer_steps = 0;
    int64_t skipped_steps = 0;
};

class RlStep {
public:
    RlStep(const JobConfig& job,
           dsa::Model& policy,
           const dsa::Model* reference,
           const text::Tokenizer& tokenizer,
           std::vector<DomainRuntime>& domains,
           AdamW& optimizer,
           const dist::Communicator* comm,
           dsa::MoeBalance* balance = nullptr,
           const Roles* roles = nullptr);
    /// Runs RL step `step` (0-based) of job.trainer.total_steps.
    RlStepResult run(int64_t step);
    /// A rollout worker's batches generated ahead (dist.max_policy_lag >= 1) in / from the checkpoint's cursors, so a
    /// resumed job trains the groups the uninterrupted one would.
    void save_queue(std::map<std::string, std::string>& cursors) const;
    void restore_queue(const std::map<std::string, std::string>& cursors);

private:
    const JobConfig& job_;
    dsa::Model& policy_;
    const dsa::Model* reference_;
    const text::Tokenizer& tokenizer_;
    std::vector<DomainRuntime>& domains_;
    AdamW& optimizer_;
    const dist::Communicator* comm_;
    dsa::MoeBalance* balance_;
    Roles roles_;
    const dist::Communicator* train_comm_;  // the trainers' group (gradients, denominators, sums)
    struct Queued {
        std::string groups;    // serialized records, one trainer's slots
        std::string counters;  // RolloutCounters::encode
    };
    std::map<int64_t, std::map<int, Queued>> queue_;  // rollout worker: step -> trainer -> its batch
};

/// What a rank divides its local loss sum by so that, after the optimizer averages the gradients, the step is the
/// global batch's mean: `count` (this rank's tokens or sequences) summed over the ranks, over their number — one
/// all-reduce of a number; max(count, 1) on one rank. SFT and GRPO use it, so N ranks train as one rank with N× the
/// batch. `global`, when given, receives the unclamped sum over the ranks.
double data_parallel_denominator(double count, const dist::Communicator* comm, double* global = nullptr);

}  // namespace dsrl::trainer
