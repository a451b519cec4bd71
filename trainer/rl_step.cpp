#include "trainer/rl_step.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros_like.h>

#include <absl/strings/escaping.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_split.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>

#include "core/error.h"
#include "core/logging.h"
#include "core/rng.h"
#include "grpo/update.h"
#include "rollout/generator.h"
#include "trainer/weight_sync.h"

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

double data_parallel_denominator(double count, const dist::Communicator* comm, double* global) {
    if (comm == nullptr || comm->size() <= 1) {
        if (global != nullptr) *global = count;
        return std::max(count, 1.0);
    }
    at::Tensor t = at::full({1}, count, at::TensorOptions().dtype(at::kDouble));
    comm->all_reduce(t, dist::ReduceOp::kSum);
    if (global != nullptr) *global = t.item<double>();
    return std::max(t.item<double>(), 1.0) / static_cast<double>(comm->size());
}

RlStep::RlStep(const JobConfig& job,
               dsa::Model& policy,
               const dsa::Model* reference,
               const text::Tokenizer& tokenizer,
               std::vector<DomainRuntime>& domains,
               AdamW& optimizer,
               const dist::Communicator* comm,
               dsa::MoeBalance* balance,
               const Roles* roles)
    : job_(job),
      policy_(policy),
      reference_(reference),
      tokenizer_(tokenizer),
      domains_(domains),
      optimizer_(optimizer),
      comm_(comm),
      balance_(balance),
      roles_(roles != nullptr && roles->disaggregated
                 ? *roles
                 : Roles{.trainers = comm != nullptr ? comm->size() : 1, .group = comm}),
      train_comm_(roles_.disaggregated ? roles_.group : comm) {
    // Gradients are averaged by the optimizer: one built without the trainers' group would let the ranks diverge.
    DSRL_INTERNAL_ASSERT(
        train_comm_ == nullptr || train_comm_->size() <= 1 || optimizer.comm() == train_comm_,
        "RlStep: the optimizer must average over the same group as the step's trainers (AdamW's ShardOptions)");
    DSRL_INTERNAL_ASSERT(
        !roles_.disaggregated || roles_.weights != nullptr,
        "RlStep: a disaggregated job needs Roles::weights (the trainers' weights to the rollout workers)");
}

namespace {

// What the rollout of one trainer rank's slots yields besides its groups: the counters its metrics need. Sent with
// the groups from a rollout worker to its trainer in disaggregated mode, as "key value" lines.
struct RolloutCounters {
    int64_t generated_tokens = 0;
    int64_t failed = 0;  // samples whose reward (or environment) failed
    rollout::MultiTurnStats agent;
    bool has_agent = false;

    std::string encode() const {
        const rollout::MultiTurnStats& a = agent;
        return metrics_text({{"generated_tokens", generated_tokens},
                             {"failed", failed},
                             {"has_agent", has_agent ? 1 : 0},
                             {"trajectories", a.trajectories},
                             {"turns", a.turns},
                             {"tool_calls", a.tool_calls},
                             {"context_events", a.context_events},
                             {"env_errors", a.env_errors},
                             {"tool_limit", a.tool_limit},
                             {"context_limit", a.context_limit},
                             {"parallel_discarded", a.parallel_discarded},
                             {"untrained_tokens", a.untrained_tokens},
                             {"env_tokens", a.env_tokens},
                             {"env_seconds", a.env_seconds}});
    }
    static RolloutCounters decode(const std::string& text, int from) {
        const std::map<std::string, double> kv = parse_metrics_text(text);
        const auto get = [&](const char* k) {
            const auto it = kv.find(k);
            if (it == kv.end()) throw DistError(absl::StrCat("disaggregated: rank ", from, " sent no '", k, "'"));
            return it->second;
        };
        const auto n = [&](const char* k) { return static_cast<int64_t>(get(k)); };
        RolloutCounters c;
        c.generated_tokens = n("generated_tokens");
        c.failed = n("failed");
        c.has_agent = n("has_agent") != 0;
        rollout::MultiTurnStats& a = c.agent;
        a.trajectories = n("trajectories");
        a.turns = n("turns");
        a.tool_calls = n("tool_calls");
        a.context_events = n("context_events");
        a.env_errors = n("env_errors");
        a.tool_limit = n("tool_limit");
        a.context_limit = n("context_limit");
        a.parallel_discarded = n("parallel_discarded");
        a.untrained_tokens = n("untrained_tokens");
        a.env_tokens = n("env_tokens");
        a.env_seconds = get("env_seconds");
        return c;
    }
};

constexpr int kTagGroups = 7101;
constexpr int kTagCounters = 7102;

}  // namespace

RlStepResult RlStep::run(int64_t step) {
    const int rank = comm_ != nullptr ? comm_->rank() : 0;
    const RolloutConfig& ro = job_.rollout;
    const int trainers = roles_.trainers;
    const int64_t per_rank = ro.prompts_per_step;
    // 1. Prompts from the domain mixture (weights). The step's global batch is trainers × prompts_per_step slots,
    // deterministic in (seed, step, global slot) only: every rank draws all of them (its samplers advance alike, so
    // checkpoint cursors agree). Slot i belongs to trainer rank i / P. A job on N trainer ranks thus sees the same
    // prompts, prompt ids and sample seeds as one rank with N times prompts_per_step. Colocated, a rank rolls out its
    // own slots; disaggregated, rollout worker j rolls out the slots of the trainers t with t mod R = j.
    std::vector<double> weights;
    for (const DomainRuntime& d : domains_) weights.push_back(d.weight);
    const auto rolls_out_for = [&](int t) {
        if (!roles_.disaggregated) return t == rank;
        return roles_.rollout && t % roles_.rollout_workers == rank - trainers;
    };
    std::map<std::string, const DomainRuntime*> by_name;
    for (const DomainRuntime& d : domains_) by_name[d.name] = &d;
    struct Batch {
        int64_t step = 0;
        std::map<int, std::vector<rollout::Prompt>> prompts;   // by trainer rank
        std::map<int, std::vector<rollout::AgentTask>> tasks;  // agent domains' prompts, by trainer rank
        std::map<int64_t, data::PromptItem> items;             // by prompt id
    };
    // The global batch of step `s` (advancing every domain's sampler), keeping this rank's slots to roll out.
    const auto draw = [&](int64_t s) {
        Batch b;
        b.step = s;
        uint64_t state = rng::derive_seed(job_.run.seed, 0, absl::StrCat("mixture.", s));
        for (int64_t i = 0; i < trainers * per_rank; ++i) {
            state = rng::mix64(state + 0x9E3779B97F4A7C15ull);
            DomainRuntime* chosen = &domains_[rng::weighted_index(weights, state)];
            data::PromptItem item = chosen->sampler->next();
            const int owner = static_cast<int>(i / per_rank);
            if (!rolls_out_for(owner)) continue;  // another rank's slot
            // Prompt ids unique within the job: (step, global slot).
            const int64_t id = s * 100000007 + i;
            if (chosen->agent()) {
                b.tasks[owner].push_back({chosen->name, id, task_of(item), &chosen->agents->spec(chosen->name)});
            } else {
                const std::vector<int64_t> toks = data::prompt_ids(tokenizer_, item, chosen->sampler->source().name());
                b.prompts[owner].push_back({chosen->name, id, std::vector<int32_t>(toks.begin(), toks.end())});
            }
            item.domain = chosen->name;
            b.items[id] = std::move(item);
        }
        return b;
    };
    Batch current = draw(step);
    const AgentEnvironments* agents = nullptr;
    for (const DomainRuntime& d : domains_) {
        if (d.agents != nullptr && d.agents->any()) agents = d.agents.get();
    }

    // 2. Rollout and rewards of one trainer rank's slots.
    // The weights are those of policy version `step` (the updates of steps 0..step-1); a batch's seeds are its own
    // step's, so the same batch generated at another version differs only through the weights.
    rollout::GenerateOptions gopt{.sampling = ro.sampling,
                                  .max_new_tokens = ro.max_new_tokens,
                                  .stop = ro.stop,
                                  .max_batch_size = ro.max_batch_size,
                                  .policy_version = step,
                                  .record_indexer = ro.record_indexer,
                                  .engine = ro.engine};
    const auto roll_out = [&](Batch& batch, int t, RolloutCounters& c) {
        auto& prompts = batch.prompts;
        auto& tasks = batch.tasks;
        auto& items = batch.items;
        std::string first_failure;
        const uint64_t rollout_seed = rng::derive_seed(job_.run.seed, 0, absl::StrCat("rollout.", batch.step));
        rollout::GenerationStats gstats;
        std::vector<rollout::SampleGroup> groups =
            rollout::generate_groups(policy_, tokenizer_, prompts[t], ro.group_size, gopt, rollout_seed, &gstats);
        c.generated_tokens = gstats.generated_tokens;
        // Agent domains: multi-turn trajectories, rewarded by their environments' verify. Every rank of an expert
        // parallel group runs this when the job has agent domains, with or without tasks of its own.
        if (agents != nullptr) {
            c.has_agent = true;
            std::vector<rollout::SampleGroup> agent_groups =
                rollout::generate_agent_groups(policy_, tokenizer_, agents->registry(), tasks[t], ro.group_size,
                                               multi_turn_options(job_, gopt), rollout_seed, &c.agent);
            c.generated_tokens += c.agent.generation.generated_tokens;
            for (rollout::SampleGroup& g : agent_groups) groups.push_back(std::move(g));
        }
        // Rewards, per plain domain (agent samples are scored, or failed, by their environments).
        std::map<std::string, std::vector<rollout::Sample*>> per_domain;
        for (rollout::SampleGroup& g : groups) {
            for (rollout::Sample& s : g.samples) {
                if (by_name.at(s.domain)->agent()) {
                    c.failed += !std::isfinite(s.reward);
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
                c.failed += !scores[i].ok();
                if (!scores[i].ok() && first_failure.empty()) {
                    first_failure = absl::StrCat(
                        "domain '", name, "': ", scores[i].error.empty() ? "a non-finite reward" : scores[i].error);
                }
            }
        }
        // Failed samples are excluded and counted (reward_failed); the log says why, once a step.
        int64_t total = 0;
        for (const rollout::SampleGroup& g : groups) {
            for (const rollout::Sample& smp : g.samples) {
                ++total;
                if (!smp.env_error.empty() && first_failure.empty()) {
                    first_failure = absl::StrCat("domain '", smp.domain, "': ", smp.env_error);
                }
            }
        }
        if (c.failed > 0) {
            DSRL_LOG(warn) << "step " << batch.step + 1 << ": " << c.failed << " of " << total
                           << " samples failed (excluded from the loss, counted in reward_failed); the first: "
                           << first_failure;
        }
        return groups;
    };

    RlStepResult out;
    RolloutCounters counters;
    if (!roles_.disaggregated) {
        out.groups = roll_out(current, rank, counters);
    } else if (roles_.rollout) {
        // A rollout worker. Batches are generated up to max_policy_lag steps ahead (queue_), each with the weights it
        // has then, so batch b is trained at version <= its own + L; a batch missing from the queue (the first steps,
        // or after a resume whose checkpoint had none queued) is generated now.
        const int64_t lag = job_.dist.max_policy_lag;
        const int64_t total = job_.trainer.total_steps;
        const auto generate_batch = [&](Batch& b) {
            std::map<int, Queued>& q = queue_[b.step];
            for (int t = 0; t < trainers; ++t) {
                if (!rolls_out_for(t)) continue;
                RolloutCounters c;
                q[t] = {rollout::serialize_groups(roll_out(b, t, c)), c.encode()};
            }
        };
        // Batches of later steps are drawn without moving the samplers (every rank's cursors stay at this step).
        const auto peek = [&](int64_t s) {
            std::vector<data::SamplerState> saved;
            for (const DomainRuntime& d : domains_) saved.push_back(d.sampler->state());
            Batch b;
            for (int64_t k = step + 1; k <= s; ++k) b = draw(k);
            for (size_t i = 0; i < domains_.size(); ++i) domains_[i].sampler->restore(saved[i]);
            return b;
        };
        if (queue_.count(step) == 0) generate_batch(current);
        for (int64_t s = step + 1; s < std::min(step + lag, total); ++s) {
            if (queue_.count(s) == 0) {
                Batch b = peek(s);
                generate_batch(b);
            }
        }
        for (const auto& [t, q] : queue_.at(step)) {
            comm_->send_bytes(q.groups, t, kTagGroups);
            comm_->send_bytes(q.counters, t, kTagCounters);
        }
        queue_.erase(step);
        // While the trainers train this step: the batch `lag` steps ahead, at this version.
        if (lag > 0 && step + lag < total && queue_.count(step + lag) == 0) {
            Batch b = peek(step + lag);
            generate_batch(b);
        }
        roles_.weights->broadcast(policy_);
        return out;  // no metrics: run_stage averages the trainers'
    } else {
        const int from = trainers + rank % roles_.rollout_workers;
        const auto t0 = std::chrono::steady_clock::now();
        out.groups = rollout::deserialize_groups(comm_->recv_bytes(from, kTagGroups), absl::StrCat("rank ", from));
        counters = RolloutCounters::decode(comm_->recv_bytes(from, kTagCounters), from);
        // The trainer's idle time: waiting for its rollout worker's groups.
        out.metrics["trainer_wait_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        // Staleness: how many versions behind this step's policy the groups were sampled.
        double lag_sum = 0, n = 0;
        for (const rollout::SampleGroup& g : out.groups) {
            for (const rollout::Sample& smp : g.samples) {
                lag_sum += static_cast<double>(step - smp.policy_version);
                n += 1;
            }
        }
        out.metrics["staleness_mean"] = n > 0 ? lag_sum / n : 0.0;
    }

    // 3. The GRPO update phase; every optimizer step averages gradients over the trainer ranks first (the
    // optimizer's reduce_and_clip).
    std::map<std::string, double> betas;
    for (const DomainRuntime& d : domains_) betas[d.name] = d.beta;
    // A mini-batch holds whole groups: the update runs at most a rank's groups of them (grpo_update), and the schedule
    // counts the steps that run.
    const int64_t total_opt_steps = job_.trainer.total_steps * job_.grpo.updates_per_batch *
                                    std::min(job_.grpo.mini_batches, job_.rollout.prompts_per_step);
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
    if (train_comm_ != nullptr && train_comm_->size() > 1) {
        denominator = [this](double count) { return data_parallel_denominator(count, train_comm_); };
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
    out.metrics["reward_failed"] = static_cast<double>(counters.failed);
    int64_t samples = 0;
    for (const rollout::SampleGroup& g : out.groups) samples += static_cast<int64_t>(g.samples.size());
    out.metrics["samples"] = static_cast<double>(samples);
    out.metrics["generated_tokens"] = static_cast<double>(counters.generated_tokens);
    if (counters.has_agent) add_agent_metrics(counters.agent, train_comm_, out.metrics);
    out.metrics.erase("update");
    out.metrics.erase("mini_batch");
    // 4. Disaggregated: the trainers' new weights to the rollout workers (policy version step + 1); under expert
    // parallelism each rank of the first expert-parallel group sends its experts.
    if (roles_.disaggregated) roles_.weights->broadcast(policy_);
    return out;
}

void RlStep::save_queue(std::map<std::string, std::string>& cursors) const {
    if (!roles_.rollout) return;
    // "step trainer groups_len counters_len\n" then the bytes, per entry; base64 in the cursor file.
    std::string text;
    for (const auto& [step, per] : queue_) {
        for (const auto& [t, q] : per) {
            absl::StrAppend(&text, step, " ", t, " ", q.groups.size(), " ", q.counters.size(), "\n", q.groups,
                            q.counters);
        }
    }
    cursors["rollout_queue"] = absl::Base64Escape(text);
}

void RlStep::restore_queue(const std::map<std::string, std::string>& cursors) {
    queue_.clear();
    const auto it = cursors.find("rollout_queue");
    if (!roles_.rollout || it == cursors.end()) return;
    std::string text;
    if (!absl::Base64Unescape(it->second, &text))
        throw CheckpointError("checkpoint cursor 'rollout_queue' is not base64");
    size_t pos = 0;
    while (pos < text.size()) {
        const size_t nl = text.find('\n', pos);
        int64_t step = 0, t = 0, ng = 0, nc = 0;
        const std::vector<std::string> head =
            absl::StrSplit(text.substr(pos, nl == std::string::npos ? 0 : nl - pos), ' ');
        if (nl == std::string::npos || head.size() != 4 || !absl::SimpleAtoi(head[0], &step) ||
            !absl::SimpleAtoi(head[1], &t) || !absl::SimpleAtoi(head[2], &ng) || !absl::SimpleAtoi(head[3], &nc) ||
            ng < 0 || nc < 0 || nl + 1 + static_cast<size_t>(ng + nc) > text.size()) {
            throw CheckpointError("checkpoint cursor 'rollout_queue' is malformed");
        }
        queue_[step][static_cast<int>(t)] = {text.substr(nl + 1, static_cast<size_t>(ng)),
                                             text.substr(nl + 1 + static_cast<size_t>(ng), static_cast<size_t>(nc))};
        pos = nl + 1 + static_cast<size_t>(ng + nc);
    }
}

}  // namespace dsrl::trainer
