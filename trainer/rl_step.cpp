#include "trainer/rl_step.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros_like.h>

#include <absl/strings/str_cat.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "core/error.h"
#include "core/rng.h"
#include "grpo/update.h"
#include "rollout/generator.h"

namespace dsrl::trainer {

std::vector<DomainRuntime> build_domains(const JobConfig& job, const std::string& base_dir) {
    std::vector<DomainRuntime> out;
    const auto agents = std::make_shared<const AgentEnvironments>(AgentEnvironments::build(job));
    for (const DomainConfig& d : job.domains) {
        DomainRuntime r;
        r.name = d.name;
        r.weight = d.weight;
        r.beta = d.beta;
        const data::Rows rows = d.environment.enabled() ? data::Rows::kTasks : data::Rows::kPrompts;
        r.sampler = std::make_shared<data::PromptSampler>(data::make_prompt_source(d.data, d.name, base_dir, rows),
                                                          rng::derive_seed(job.run.seed, 0, "prompts." + d.name));
        if (d.environment.enabled()) {
            r.agents = agents;
        } else {
            r.reward = std::make_shared<rewards::DomainReward>(
                rewards::DomainReward::create(rewards::Registry::global(), d.rewards, job.rewards.timeout_s));
        }
        out.push_back(std::move(r));
    }
    if (out.empty()) throw ConfigError("a grpo stage needs at least one entry in domains");
    return out;
}

double data_parallel_denominator(double count, const dist::Communicator* comm) {
    if (comm == nullptr || comm->size() <= 1) return std::max(count, 1.0);
    at::Tensor t = at::full({1}, count, at::TensorOptions().dtype(at::kDouble));
    comm->all_reduce(t, dist::ReduceOp::kSum);
    return std::max(t.item<double>(), 1.0) / static_cast<double>(comm->size());
}

RlStep::RlStep(const JobConfig& job,
               dsa::Model& policy,
               const dsa::Model* reference,
               const text::Tokenizer& tokenizer,
               std::vector<DomainRuntime>& domains,
               AdamW& optimizer,
               const dist::Communicator* comm,
               dsa::MoeBalance* balance)
    : job_(job),
      policy_(policy),
      reference_(reference),
      tokenizer_(tokenizer),
      domains_(domains),
      optimizer_(optimizer),
      comm_(comm),
      balance_(balance) {
    // Gradients are averaged by the optimizer: one built without the job's group would let the ranks diverge.
    DSRL_INTERNAL_ASSERT(comm == nullptr || comm->size() <= 1 || optimizer.comm() == comm,
                         "RlStep: the optimizer must average over the same group as the step (AdamW's ShardOptions)");
}

RlStepResult RlStep::run(int64_t step) {
    const int rank = comm_ != nullptr ? comm_->rank() : 0;
    const int world = comm_ != nullptr ? comm_->size() : 1;
    const RolloutConfig& ro = job_.rollout;
    // 1. Prompts from the domain mixture (weights). The step's global batch is world × prompts_per_step slots,
    // deterministic in (seed, step, global slot) only: every rank draws all of them (its samplers advance
    // alike, so checkpoint cursors agree) and keeps slots [rank · P, (rank + 1) · P). A job on N ranks thus sees
    // the same prompts, prompt ids and sample seeds as one rank with N times prompts_per_step.
    std::vector<double> weights;
    for (const DomainRuntime& d : domains_) weights.push_back(d.weight);
    uint64_t state = rng::derive_seed(job_.run.seed, 0, absl::StrCat("mixture.", step));
    std::vector<rollout::Prompt> prompts;
    std::vector<rollout::AgentTask> tasks;      // agent domains' prompts
    std::map<int64_t, data::PromptItem> items;  // by prompt id
    std::map<std::string, const DomainRuntime*> by_name;
    const int64_t first = rank * ro.prompts_per_step, end = first + ro.prompts_per_step;
    for (int64_t i = 0; i < world * ro.prompts_per_step; ++i) {
        state = rng::mix64(state + 0x9E3779B97F4A7C15ull);
        DomainRuntime* chosen = &domains_[rng::weighted_index(weights, state)];
        data::PromptItem item = chosen->sampler->next();
        if (i < first || i >= end) continue;  // another rank's slot
        // Prompt ids unique within the job: (step, global slot).
        const int64_t id = step * 100000007 + i;
        if (chosen->agent()) {
            tasks.push_back({chosen->name, id, task_of(item), &chosen->agents->spec(chosen->name)});
        } else {
            const std::vector<int64_t> toks = data::prompt_ids(tokenizer_, item, chosen->sampler->source().name());
            prompts.push_back({chosen->name, id, std::vector<int32_t>(toks.begin(), toks.end())});
        }
        item.domain = chosen->name;
        items[id] = std::move(item);
        by_name[chosen->name] = chosen;
    }
    // 2. Rollout.
    rollout::GenerateOptions gopt{.sampling = ro.sampling,
                                  .max_new_tokens = ro.max_new_tokens,
                                  .stop = ro.stop,
                                  .max_batch_size = ro.max_batch_size,
                                  .policy_version = step,
                                  .record_indexer = ro.record_indexer};
    rollout::GenerationStats gstats;
    RlStepResult out;
    const uint64_t rollout_seed = rng::derive_seed(job_.run.seed, 0, absl::StrCat("rollout.", step));
    out.groups = rollout::generate_groups(policy_, tokenizer_, prompts, ro.group_size, gopt, rollout_seed, &gstats);
    // Agent domains: multi-turn trajectories, rewarded by their environments' verify. Every rank runs this when the
    // job has agent domains (expert parallelism joins forwards across ranks), with or without tasks of its own.
    const AgentEnvironments* agents = nullptr;
    for (const DomainRuntime& d : domains_) {
        if (d.agents != nullptr && d.agents->any()) agents = d.agents.get();
    }
    rollout::MultiTurnStats astats;
    if (agents != nullptr) {
        std::vector<rollout::SampleGroup> agent_groups =
            rollout::generate_agent_groups(policy_, tokenizer_, agents->registry(), tasks, ro.group_size,
                                           multi_turn_options(job_, gopt), rollout_seed, &astats);
        gstats.generated_tokens += astats.generation.generated_tokens;
        for (rollout::SampleGroup& g : agent_groups) out.groups.push_back(std::move(g));
    }
    // 3. Rewards, per domain.
    std::map<std::string, std::vector<rollout::Sample*>> per_domain;
    int64_t failed = 0;
    for (rollout::SampleGroup& g : out.groups) {
        for (rollout::Sample& s : g.samples) {
            if (by_name.at(s.domain)->agent()) {
                failed += !std::isfinite(s.reward);  // scored (or failed) by its environment
            } else {
                per_domain[s.domain].push_back(&s);
            }
        }
    }
    for (auto& [name, samples] : per_domain) {
        std::vector<rewards::RewardInput> inputs;
        for (const rollout::Sample* s : samples) {
            const data::PromptItem& item = items.at(s->prompt_id);
            inputs.push_back(
                {.domain = name,
                 .prompt_id = s->prompt_id,
                 .prompt = item.prompt,
                 .response = tokenizer_.decode(std::vector<int64_t>(s->response.begin(), s->response.end())),
                 .response_tokens = static_cast<int64_t>(s->response.size()),
                 .finish_reason = rollout::finish_reason_name(s->finish),
                 .meta = item.meta});
        }
        const std::vector<rewards::ScoredSample> scores = by_name.at(name)->reward->score(inputs);
        for (size_t i = 0; i < samples.size(); ++i) {
            samples[i]->reward = scores[i].ok() ? static_cast<float>(scores[i].value) : std::nanf("");
            failed += !scores[i].ok();
        }
    }
    // 4. The GRPO update phase; every optimizer step averages gradients over the ranks first (the optimizer's
    // reduce_and_clip).
    std::map<std::string, double> betas;
    for (const DomainRuntime& d : domains_) betas[d.name] = d.beta;
    const int64_t total_opt_steps = job_.trainer.total_steps * job_.grpo.updates_per_batch * job_.grpo.mini_batches;
    std::vector<double> norms;
    const auto opt_step = [&] {
        const ClipResult c = optimizer_.reduce_and_clip(job_.trainer.optimizer.grad_clip);
        if (c.finite) {
            optimizer_.step(lr_at(job_.trainer.optimizer, optimizer_.steps(), total_opt_steps));
            norms.push_back(c.norm);
            ++out.optimizer_steps;
        } else {
            ++out.skipped_steps;
        }
        optimizer_.zero_grad();
    };
    std::function<double(double)> denominator;  // one rank: grpo_loss's own count
    if (comm_ != nullptr && comm_->size() > 1) {
        denominator = [this](double count) { return data_parallel_denominator(count, comm_); };
    }
    const std::vector<grpo::Metrics> mb = grpo::grpo_update(policy_, reference_, out.groups, job_.grpo, betas,
                                                            ro.sampling.temperature, opt_step, denominator, balance_);
    for (const grpo::Metrics& m : mb) {
        for (const auto& [k, v] : m) out.metrics[k] += v / static_cast<double>(mb.size());
    }
    double norm_mean = 0;
    for (const double n : norms) norm_mean += n / static_cast<double>(std::max<size_t>(1, norms.size()));
    out.metrics["grad_norm"] = norm_mean;
    out.metrics["lr"] = lr_at(job_.trainer.optimizer, std::max<int64_t>(0, optimizer_.steps() - 1), total_opt_steps);
    out.metrics["skipped_steps"] = static_cast<double>(out.skipped_steps);
    out.metrics["reward_failed"] = static_cast<double>(failed);
    out.metrics["generated_tokens"] = static_cast<double>(gstats.generated_tokens);
    if (agents != nullptr) add_agent_metrics(astats, comm_, out.metrics);
    out.metrics.erase("update");
    out.metrics.erase("mini_batch");
    return out;
}

}  // namespace dsrl::trainer
