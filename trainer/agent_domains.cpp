#include "trainer/agent_domains.h"

#include <ATen/ops/tensor.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "agent/config.h"
#include "agent/plugin.h"
#include "agent/search_env.h"
#include "core/error.h"
#include "core/fs.h"

namespace dsrl::trainer {

namespace {

// Whether execvp would find `program`: a path with a slash is taken as is, a bare name is looked up in PATH.
bool executable_in_path(const std::string& program) {
    if (program.empty()) return false;
    const auto runnable = [](const std::string& p) { return ::access(p.c_str(), X_OK) == 0 && !fs::is_dir(p); };
    if (program.find('/') != std::string::npos) return runnable(program);
    const char* path = std::getenv("PATH");
    for (absl::string_view dir : absl::StrSplit(path != nullptr ? path : "/usr/bin:/bin", ':')) {
        if (runnable(absl::StrCat(dir.empty() ? "." : std::string(dir), "/", program))) return true;
    }
    return false;
}

}  // namespace

AgentEnvironments AgentEnvironments::build(const JobConfig& job) {
    AgentEnvironments out;
    out.registry_ = std::make_shared<agent::EnvRegistry>();
    bool any = false;
    for (const DomainConfig& d : job.domains) any |= d.environment.enabled();
    if (!any) return out;
    agent::register_builtin_environments(*out.registry_);
    std::map<std::string, std::string> plugin_names;  // path -> registered name (each plugin loads once)
    for (const DomainConfig& d : job.domains) {
        if (!d.environment.enabled()) continue;
        std::string plugin_name;
        if (!d.environment.plugin.empty()) {
            auto it = plugin_names.find(d.environment.plugin);
            if (it == plugin_names.end()) {
                it = plugin_names
                         .emplace(d.environment.plugin, agent::load_env_plugin(d.environment.plugin, *out.registry_))
                         .first;
            }
            plugin_name = it->second;
        }
        agent::EnvSpec spec = agent::env_spec(d.name, d.environment, plugin_name);
        if (spec.command.empty() && !out.registry_->contains(spec.module)) {
            std::vector<std::string> known;
            for (const auto& [name, doc] : out.registry_->list()) known.push_back(name);
            throw ConfigError(absl::StrCat("domains[", d.name, "].environment.module: unknown environment '",
                                           spec.module, "' (known: ", absl::StrJoin(known, ", "), ")"));
        }
        if (!spec.command.empty() && !executable_in_path(spec.command[0])) {
            throw ConfigError(absl::StrCat("domains[", d.name, "].environment.command: '", spec.command[0], "' ",
                                           spec.command[0].find('/') != std::string::npos
                                               ? "does not exist or is not executable"
                                               : "is not an executable found in PATH",
                                           " (every trajectory of the domain would fail)"));
        }
        if (spec.command.empty()) {
            try {  // the parameters are checked by creating one instance (a subprocess starts only per trajectory)
                out.registry_->create(spec.module, spec.params);
            } catch (const Error& e) {
                throw ConfigError(absl::StrCat("domains[", d.name, "].environment: ", e.what()));
            }
        }
        out.specs_.emplace(d.name, std::move(spec));
    }
    return out;
}

agent::Json task_of(const data::PromptItem& item) {
    if (!item.task.is_null()) return agent::Json::parse(item.task.dump());
    agent::Json t = agent::Json::object();
    for (const auto& [k, v] : item.meta) t[k] = v;
    t["question"] = item.prompt;
    if (!t.contains("answer")) t["answer"] = "";
    return t;
}

namespace {

class DemonstrationSource final : public data::PromptSource {
public:
    DemonstrationSource(std::shared_ptr<const data::PromptSource> tasks,
                        const agent::EnvRegistry& registry,
                        agent::EnvSpec spec)
        : tasks_(std::move(tasks)), registry_(registry), spec_(std::move(spec)) {}
    std::string name() const override { return absl::StrCat("demonstrations of ", tasks_->name()); }
    int64_t size() const override { return tasks_->size(); }
    data::PromptItem get(int64_t index) const override {
        data::PromptItem task = tasks_->get(index);
        data::PromptItem item;
        item.domain = task.domain;
        item.id = task.id;
        item.meta = task.meta;
        agent::Json demo;
        try {
            if (spec_.module.empty()) {
                throw agent::EnvironmentError("a subprocess environment cannot demonstrate its tasks");
            }
            demo = registry_.create(spec_.module, spec_.params)->demonstrate(task_of(task));
        } catch (const Error& e) {
            throw ConfigError(absl::StrCat("domain '", spec_.name, "': the cold start (SFT on the environment's ",
                                           "demonstrations) needs a solver: ", e.what(),
                                           "; give sft.data a JSONL file of conversations instead"));
        }
        item.conversation = text::OrderedJson::parse(demo.dump());
        for (const auto& m : demo.at("messages")) {
            item.messages.push_back({m.at("role").get<std::string>(), m.contains("content") && m["content"].is_string()
                                                                          ? m["content"].get<std::string>()
                                                                          : std::string()});
            if (item.messages.back().role == "user") item.prompt = item.messages.back().content;
        }
        return item;
    }

private:
    std::shared_ptr<const data::PromptSource> tasks_;
    const agent::EnvRegistry& registry_;
    agent::EnvSpec spec_;
};

}  // namespace

std::shared_ptr<const data::PromptSource> demonstration_source(std::shared_ptr<const data::PromptSource> tasks,
                                                               const AgentEnvironments& envs,
                                                               const std::string& domain) {
    return std::make_shared<DemonstrationSource>(std::move(tasks), envs.registry(), envs.spec(domain));
}

rollout::MultiTurnOptions multi_turn_options(const JobConfig& job, const rollout::GenerateOptions& generate) {
    const RolloutConfig& ro = job.rollout;
    rollout::MultiTurnOptions o;
    o.generate = generate;
    o.max_tool_calls = ro.max_tool_calls;
    o.context = rollout::parse_context_strategy(ro.context);
    o.context_threshold = ro.context_threshold;
    o.parallel_trajectories = ro.parallel_trajectories;
    if (!ro.summary_prompt.empty()) o.summary_prompt = ro.summary_prompt;
    o.env_threads = ro.env_threads;
    return o;
}

void add_agent_metrics(const rollout::MultiTurnStats& s,
                       const dist::Communicator* comm,
                       std::map<std::string, double>& metrics) {
    std::vector<double> v = {static_cast<double>(s.trajectories),     static_cast<double>(s.turns),
                             static_cast<double>(s.tool_calls),       static_cast<double>(s.context_events),
                             static_cast<double>(s.env_errors),       static_cast<double>(s.tool_limit),
                             static_cast<double>(s.context_limit),    static_cast<double>(s.parallel_discarded),
                             static_cast<double>(s.untrained_tokens), static_cast<double>(s.env_tokens)};
    at::Tensor t = at::tensor(v, at::TensorOptions().dtype(at::kDouble));
    at::Tensor secs = at::tensor(std::vector<double>{s.env_seconds}, at::TensorOptions().dtype(at::kDouble));
    if (comm != nullptr && comm->size() > 1) {
        comm->all_reduce(t, dist::ReduceOp::kSum);
        comm->all_reduce(secs, dist::ReduceOp::kMax);
    }
    const double* p = t.data_ptr<double>();
    const double n = std::max(1.0, p[0]);
    metrics["agent/trajectories"] = p[0];
    metrics["agent/turns_per_trajectory"] = p[1] / n;
    metrics["agent/tool_calls_per_trajectory"] = p[2] / n;
    metrics["agent/context_events"] = p[3];
    metrics["agent/env_errors"] = p[4];
    metrics["agent/tool_limit"] = p[5];
    metrics["agent/context_limit"] = p[6];
    metrics["agent/parallel_discarded"] = p[7];
    metrics["agent/untrained_tokens"] = p[8];
    metrics["agent/env_tokens"] = p[9];
    metrics["agent/env_seconds"] = secs.item<double>();
}

}  // namespace dsrl::trainer
