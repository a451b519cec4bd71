#include "trainer/evaluate.h"

#include <ATen/ops/tensor.h>

#include <absl/strings/str_cat.h>

#include <cmath>

#include "core/error.h"
#include "rollout/generator.h"
#include "rollout/multi_turn.h"

namespace dsrl::trainer {

std::string eval_data_spec(const DomainConfig& d) {
    const std::string spec = d.eval_data.empty() ? d.data : d.eval_data;
    if (spec.rfind("synthetic:", 0) != 0 || spec.find("seed=") != std::string::npos) return spec;
    return absl::StrCat(spec, spec.find('?') == std::string::npos ? "?" : "&", "seed=1000003");
}

Evaluator::Evaluator(const JobConfig& job, const text::Tokenizer& tokenizer, const std::string& base_dir)
    : job_(job),
      tokenizer_(tokenizer),
      agents_(std::make_shared<const AgentEnvironments>(AgentEnvironments::build(job))) {
    for (const DomainConfig& d : job.domains) {
        Domain e;
        e.name = d.name;
        if (d.environment.enabled()) {
            e.source = data::make_prompt_source(eval_data_spec(d), d.name, base_dir, data::Rows::kTasks);
        } else {
            e.verifier = d.rewards.empty() ? "" : d.rewards.front().module;
            e.source = data::make_prompt_source(eval_data_spec(d), d.name, base_dir);
            data::check_conversations(*e.source, tokenizer, data::Rows::kPrompts);
            e.reward = std::make_shared<rewards::DomainReward>(
                rewards::DomainReward::create(rewards::Registry::global(), d.rewards, job.rewards.timeout_s));
        }
        domains_.push_back(std::move(e));
    }
}

std::vector<double> Evaluator::run_agent(const Domain& d, const dsa::Model& policy, int rank, int world) {
    int64_t n = job_.trainer.eval_prompts;
    if (d.source->size() >= 0) n = std::min<int64_t>(n, d.source->size());
    std::vector<rollout::AgentTask> tasks;
    for (int64_t i = rank; i < n; i += world) {
        tasks.push_back({d.name, i, task_of(d.source->get(i)), &agents_->spec(d.name)});
    }
    const rollout::GenerateOptions gen{.sampling = {.temperature = 0.0},
                                       .max_new_tokens = job_.rollout.max_new_tokens,
                                       .stop = job_.rollout.stop,
                                       .max_batch_size = job_.rollout.max_batch_size,
                                       .record_kept = false,
                                       .record_routes = false,
                                       .engine = job_.rollout.engine};
    rollout::MultiTurnOptions opt = multi_turn_options(job_, gen);
    if (opt.context == rollout::ContextStrategy::kParallelFewestStep) opt.parallel_trajectories = 1;  // greedy
    double acc = 0, reward = 0, failed = 0;
    for (const rollout::SampleGroup& g :
         rollout::generate_agent_groups(policy, tokenizer_, agents_->registry(), tasks, 1, opt, 0)) {
        for (const rollout::Sample& s : g.samples) {
            if (!std::isfinite(s.reward)) {
                ++failed;
                continue;
            }
            reward += s.reward;
            acc += s.reward >= 0.5 ? 1.0 : 0.0;
        }
    }
    return {acc, reward, static_cast<double>(tasks.size()) - failed, failed};
}

std::map<std::string, double> Evaluator::run(const dsa::Model& policy, const dist::Communicator* comm) {
    const int rank = comm != nullptr ? comm->rank() : 0;
    const int world = comm != nullptr ? comm->size() : 1;
    // Per domain: [accuracy sum, reward sum, count, failed] on this rank, summed over ranks below.
    std::vector<double> sums;
    for (Domain& d : domains_) {
        if (d.reward == nullptr) {
            const std::vector<double> v = run_agent(d, policy, rank, world);
            sums.insert(sums.end(), v.begin(), v.end());
            continue;
        }
        int64_t n = job_.trainer.eval_prompts;
        if (d.source->size() >= 0) n = std::min<int64_t>(n, d.source->size());
        std::vector<rollout::GenerationRequest> requests;
        std::vector<data::PromptItem> items;
        for (int64_t i = rank; i < n; i += world) {
            data::PromptItem item = d.source->get(i);
            const std::vector<int64_t> toks = data::prompt_ids(tokenizer_, item, d.source->name());
            requests.push_back({.domain = d.name,
                                .prompt_id = i,
                                .sample_index = 0,
                                .seed = 0,
                                .prompt = std::vector<int32_t>(toks.begin(), toks.end())});
            items.push_back(std::move(item));
        }
        double acc = 0, reward = 0, failed = 0;
        // Under expert parallelism a rank without prompts still joins its group's decoding (rollout::generate).
        if (!requests.empty() || policy.expert_parallel() != nullptr) {
            rollout::GenerateOptions opt{.sampling = {.temperature = 0.0},
                                         .max_new_tokens = job_.rollout.max_new_tokens,
                                         .stop = job_.rollout.stop,
                                         .max_batch_size = job_.rollout.max_batch_size,
                                         .record_kept = false,
                                         .record_routes = false,
                                         .engine = job_.rollout.engine};
            const std::vector<rollout::Sample> samples = rollout::generate(policy, tokenizer_, requests, opt);
            std::vector<rewards::RewardInput> inputs;
            for (size_t i = 0; i < samples.size(); ++i) {
                const rollout::Sample& s = samples[i];
                inputs.push_back(
                    {.domain = d.name,
                     .prompt_id = s.prompt_id,
                     .prompt = items[i].prompt,
                     .response = tokenizer_.decode(std::vector<int64_t>(s.response.begin(), s.response.end())),
                     .response_tokens = static_cast<int64_t>(s.response.size()),
                     .finish_reason = rollout::finish_reason_name(s.finish),
                     .meta = items[i].meta});
            }
            for (const rewards::ScoredSample& r :
                 inputs.empty() ? std::vector<rewards::ScoredSample>{} : d.reward->score(inputs)) {
                if (!r.ok()) {
                    ++failed;
                    continue;
                }
                reward += r.value;
                const auto it = r.components.find(d.verifier);
                acc += it != r.components.end() ? it->second : 0.0;
            }
        }
        sums.insert(sums.end(), {acc, reward, static_cast<double>(requests.size()) - failed, failed});
    }
    at::Tensor t = at::tensor(sums, at::TensorOptions().dtype(at::kDouble));
    if (world > 1) comm->all_reduce(t, dist::ReduceOp::kSum);
    std::map<std::string, double> out;
    double failed = 0;
    for (size_t i = 0; i < domains_.size(); ++i) {
        const double* v = t.data_ptr<double>() + 4 * i;
        const double count = std::max(1.0, v[2]);
        out["accuracy/" + domains_[i].name] = v[0] / count;
        out["eval_reward/" + domains_[i].name] = v[1] / count;
        failed += v[3];
    }
    out["eval_failed"] = failed;
    return out;
}

}  // namespace dsrl::trainer
