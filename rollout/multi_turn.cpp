#include "rollout/multi_turn.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <thread>

#include "agent/context.h"
#include "core/error.h"
#include "core/rng.h"
#include "text/chat_format.h"
#include "text/conversation.h"

namespace dsrl::rollout {
namespace {

using OJson = text::OrderedJson;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Runs fn(i) for i in [0, n) on up to `threads` threads. fn must not throw (each call catches its own).
template <typename Fn>
void parallel_for(size_t n, int64_t threads, const Fn& fn) {
    const size_t workers = std::min<size_t>(n, static_cast<size_t>(std::max<int64_t>(1, threads)));
    if (workers <= 1) {
        for (size_t i = 0; i < n; ++i) fn(i);
        return;
    }
    std::atomic<size_t> next{0};
    std::vector<std::thread> pool;
    pool.reserve(workers);
    for (size_t w = 0; w < workers; ++w) {
        pool.emplace_back([&] {
            for (size_t i = next++; i < n; i = next++) fn(i);
        });
    }
    for (std::thread& t : pool) t.join();
}

// Model text may be any bytes: JSON text is written with invalid UTF-8 replaced by U+FFFD (nlohmann throws otherwise).
template <typename J>
std::string dump(const J& j) {
    return j.dump(-1, ' ', false, J::error_handler_t::replace);
}
// agent::Json (the environments' protocol) <-> the chat format's key-ordered JSON.
OJson ordered(const agent::Json& j) { return OJson::parse(dump(j)); }
agent::Json unordered(const OJson& j) { return agent::Json::parse(dump(j)); }

OJson conversation(const OJson& messages, const OJson& tools) {
    OJson c = OJson::object();
    c["messages"] = messages;
    if (!tools.empty()) c["tools"] = tools;
    return c;
}

std::vector<int32_t> to_i32(const std::vector<int64_t>& ids) { return {ids.begin(), ids.end()}; }

// One trajectory's state.
struct Trajectory {
    const AgentTask* task = nullptr;
    int32_t g = 0;  // sample index within the group
    int32_t p = 0;  // parallel_fewest_step: which of the parallel trajectories
    uint64_t seed = 0;
    std::unique_ptr<agent::GuardedEnvironment> env;
    OJson tools = OJson::array();
    OJson initial = OJson::array();   // the task's first messages
    OJson messages = OJson::array();  // the current context's conversation
    OJson full = OJson::array();      // every message of the trajectory (verify, the record)
    std::vector<int32_t> ctx;         // ids of the current context's start (its rendered conversation)
    std::vector<int32_t> resp;        // ids after ctx: model turns and environment parts
    std::vector<uint8_t> mask;
    std::vector<float> logp;
    std::vector<KeptSet> kept;
    Sample snap;  // the sample as of the last regular turn: prompt ctx, response resp (routes cover both)
    bool has_snap = false;
    std::vector<int32_t> summary_ids;  // the summary request's prompt, while a summary turn is pending
    bool summary_turn = false;
    int32_t turn_index = 0;  // model calls so far (seeds each)
    int32_t turns = 0, tool_calls = 0, events = 0;
    int64_t model_tokens = 0;  // every model token generated (summary turns included)
    bool active = true;
    FinishReason finish = FinishReason::kEos;
    std::string error;  // environment failure
    float reward = std::nanf("");
    // A pending tool round: the calls (protocol layout) and the environment's answer.
    agent::Json calls;
    agent::Json answer;
    std::string step_error;

    // A new context (a discard or a summary): `messages` rendered as the prompt, nothing generated in it yet.
    void restart(const text::Tokenizer& tok) {
        ctx = to_i32(text::render_conversation(tok, conversation(messages, tools)).ids);
        resp.clear();
        mask.clear();
        logp.clear();
        kept.clear();
        ++events;
    }
    void end(FinishReason why) {
        finish = why;
        active = false;
    }
    void fail(std::string why) {
        error = std::move(why);
        active = false;
    }
};

// The one-token sample of a trajectory that failed before the model's first turn: BOS, no response, routes and
// key sets of that one token, so it packs with the others and carries no loss.
Sample placeholder_sample(const dsa::Model& model, const text::Tokenizer& tok, const GenerateOptions& gopt) {
    const ModelConfig& cfg = model.config();
    Sample s;
    s.prompt = {static_cast<int32_t>(tok.bos_id())};
    s.vocab_size = cfg.vocab_size;
    if (gopt.record_routes) {
        const int64_t moe_layers = cfg.num_hidden_layers - std::min(cfg.first_k_dense_replace, cfg.num_hidden_layers);
        std::vector<at::Tensor> per_layer(static_cast<size_t>(moe_layers),
                                          at::arange(cfg.num_experts_per_tok, at::kLong).unsqueeze(0));
        s.set_routes(per_layer, cfg.n_routed_experts);
    }
    if (gopt.record_indexer) {
        at::Tensor one = at::full({1, cfg.index_topk}, -1, at::kInt);
        one[0][0] = 0;
        s.set_indexer(std::vector<at::Tensor>(static_cast<size_t>(cfg.num_hidden_layers), one), cfg.index_topk);
    }
    return s;
}

}  // namespace

ContextStrategy parse_context_strategy(const std::string& name, const std::string& key) {
    if (name == "none") return ContextStrategy::kNone;
    if (name == "summary") return ContextStrategy::kSummary;
    if (name == "discard_75") return ContextStrategy::kDiscard75;
    if (name == "discard_all") return ContextStrategy::kDiscardAll;
    if (name == "parallel_fewest_step") return ContextStrategy::kParallelFewestStep;
    throw ConfigError(absl::StrCat(key, ": unknown context strategy '", name,
                                   "' (expected none, summary, discard_75, discard_all or parallel_fewest_step)"));
}

const char* context_strategy_name(ContextStrategy s) {
    switch (s) {
        case ContextStrategy::kNone:
            return "none";
        case ContextStrategy::kSummary:
            return "summary";
        case ContextStrategy::kDiscard75:
            return "discard_75";
        case ContextStrategy::kDiscardAll:
            return "discard_all";
        case ContextStrategy::kParallelFewestStep:
            return "parallel_fewest_step";
    }
    return "unknown";
}

std::vector<int64_t> appended_ids(const text::Tokenizer& tokenizer,
                                  const text::ChatFormat& format,
                                  const text::ChatOptions& options,
                                  const OJson& before,
                                  const OJson& with_results) {
    const std::string a = text::join_segments(format.render(before, options));
    const std::string b = text::join_segments(format.render(with_results, options));
    if (b.size() < a.size() || b.compare(0, a.size(), a) != 0) {
        throw InternalError(absl::StrCat("multi-turn rollout: chat format ", format.name(),
                                         " rendered the conversation with tool results so that it does not extend the "
                                         "rendering without them; token in, token out is impossible here"));
    }
    return tokenizer.encode(b.substr(a.size()));
}

std::vector<SampleGroup> generate_agent_groups(const dsa::Model& model,
                                               const text::Tokenizer& tokenizer,
                                               const agent::EnvRegistry& registry,
                                               const std::vector<AgentTask>& tasks,
                                               int64_t group_size,
                                               const MultiTurnOptions& opt,
                                               uint64_t base_seed,
                                               MultiTurnStats* stats_out) {
    if (group_size < 1) throw ConfigError(absl::StrCat("rollout.group_size must be >= 1, got ", group_size));
    if (opt.max_tool_calls < 0) {
        throw ConfigError(absl::StrCat("rollout.max_tool_calls must be >= 0, got ", opt.max_tool_calls));
    }
    if (!(opt.context_threshold > 0 && opt.context_threshold <= 1)) {
        throw ConfigError(absl::StrCat("rollout.context_threshold must be in (0, 1], got ", opt.context_threshold));
    }
    if (opt.context == ContextStrategy::kParallelFewestStep && opt.parallel_trajectories < 1) {
        throw ConfigError(absl::StrCat("rollout.parallel_trajectories must be >= 1, got ", opt.parallel_trajectories));
    }
    text::ChatOptions copt;
    const text::ChatFormat* format = tokenizer.chat_format(&copt);
    if (format == nullptr) {
        throw ConfigError(
            "agent domains need a chat format with tool calls: the byte-level template cannot show them "
            "(set model.chat_format: deepseek_v32)");
    }
    const ModelConfig& cfg = model.config();
    const int64_t window = opt.context_window > 0 ? std::min(opt.context_window, cfg.max_position_embeddings)
                                                  : cfg.max_position_embeddings;
    const int64_t parallel = opt.context == ContextStrategy::kParallelFewestStep ? opt.parallel_trajectories : 1;
    MultiTurnStats stats;

    // 1. One trajectory per (task, sample, parallel copy); reset every environment.
    std::vector<Trajectory> trajs;
    trajs.reserve(tasks.size() * static_cast<size_t>(group_size * parallel));
    for (const AgentTask& t : tasks) {
        DSRL_INTERNAL_ASSERT(t.env != nullptr, "generate_agent_groups: task without an environment");
        for (int32_t g = 0; g < group_size; ++g) {
            for (int32_t p = 0; p < parallel; ++p) {
                Trajectory tr;
                tr.task = &t;
                tr.g = g;
                tr.p = p;
                const uint64_t s = sample_seed(base_seed, t.prompt_id, g);
                tr.seed = p == 0 ? s : rng::mix64(s ^ rng::mix64(0x70A11E1ull + static_cast<uint64_t>(p)));
                trajs.push_back(std::move(tr));
            }
        }
    }
    std::vector<agent::Json> first(trajs.size());
    auto t0 = Clock::now();
    parallel_for(trajs.size(), opt.env_threads, [&](size_t i) {
        Trajectory& tr = trajs[i];
        const agent::EnvSpec& spec = *tr.task->env;
        try {
            tr.env = std::make_unique<agent::GuardedEnvironment>(agent::make_environment(spec, registry), spec.name,
                                                                 spec.timeout_s);
            first[i] = tr.env->reset(tr.task->task);
        } catch (const agent::EnvironmentError& e) {
            tr.fail(e.what());
        } catch (const std::exception& e) {  // a factory rejecting its params: the environment's failure too
            tr.fail(absl::StrCat("environment '", spec.name, "': reset: ", e.what()));
        }
    });
    stats.env_seconds += seconds_since(t0);
    for (size_t i = 0; i < trajs.size(); ++i) {
        Trajectory& tr = trajs[i];
        if (!tr.active) continue;
        try {
            tr.initial = ordered(first[i]["messages"]);
            tr.tools = ordered(first[i]["tools"]);
            tr.messages = tr.initial;
            tr.full = tr.initial;
            tr.ctx = to_i32(text::render_conversation(tokenizer, conversation(tr.messages, tr.tools)).ids);
        } catch (const DataError& e) {
            tr.fail(absl::StrCat("environment '", tr.task->env->name,
                                 "': its first messages cannot be rendered: ", e.what()));
            continue;
        }
        if (static_cast<int64_t>(tr.ctx.size()) + 1 >= window) {
            tr.fail(absl::StrCat("environment '", tr.task->env->name, "': the task's first messages take ",
                                 tr.ctx.size(), " tokens; the context window is ", window));
        }
    }

    // 2. Turns: every active trajectory generates one model turn per round, batched.
    const dsa::ForwardLockstep lock(model);
    const double threshold = opt.context_threshold;
    while (true) {
        std::vector<size_t> who;
        std::vector<GenerationRequest> reqs;
        for (size_t i = 0; i < trajs.size(); ++i) {
            Trajectory& tr = trajs[i];
            if (!tr.active) continue;
            GenerationRequest r{tr.task->domain,
                                tr.task->prompt_id,
                                tr.g,
                                rng::mix64(tr.seed ^ rng::mix64(static_cast<uint64_t>(tr.turn_index) + 1)),
                                {}};
            if (tr.summary_turn) {
                r.prompt = tr.summary_ids;
            } else {
                r.prompt = tr.ctx;
                r.prompt.insert(r.prompt.end(), tr.resp.begin(), tr.resp.end());
            }
            who.push_back(i);
            reqs.push_back(std::move(r));
        }
        // Under expert parallelism the group's ranks agree on whether anyone has a turn left.
        if (!lock.any(!reqs.empty())) break;
        std::vector<Sample> out = opt.turn_generator
                                      ? opt.turn_generator(reqs, &stats.generation)
                                      : generate(model, tokenizer, reqs, opt.generate, &stats.generation);
        DSRL_INTERNAL_ASSERT(out.size() == reqs.size(), "multi-turn rollout: the turn generator returned ", out.size(),
                             " samples for ", reqs.size(), " requests");

        std::vector<size_t> stepping;
        for (size_t k = 0; k < who.size(); ++k) {
            Trajectory& tr = trajs[who[k]];
            Sample& s = out[k];
            ++tr.turn_index;
            tr.model_tokens += static_cast<int64_t>(s.response.size());
            std::vector<int64_t> ids(s.response.begin(), s.response.end());
            const text::ParsedMessage parsed = format->parse(tokenizer.decode(ids, /*keep_special=*/true), copt, false);
            if (tr.summary_turn) {
                // The summary replaces the context: the task's first messages and the summary as a user message.
                tr.summary_turn = false;
                std::string summary = parsed.content.empty() ? parsed.reasoning_content : parsed.content;
                if (s.finish != FinishReason::kEos || summary.empty()) {
                    tr.end(FinishReason::kContext);
                    continue;
                }
                tr.full.push_back({{"role", "assistant"}, {"content", summary}});
                tr.messages = tr.initial;
                tr.messages.push_back({{"role", "user"},
                                       {"content", absl::StrCat("Summary of the work so far:\n", summary,
                                                                "\n\nContinue the task from this summary.")}});
                tr.full.push_back(tr.messages.back());
                tr.restart(tokenizer);
                if (static_cast<int64_t>(tr.ctx.size()) + 1 >= window) tr.end(FinishReason::kContext);
                continue;
            }
            // A regular turn: append what the model produced, exactly.
            ++tr.turns;
            tr.resp.insert(tr.resp.end(), s.response.begin(), s.response.end());
            tr.mask.insert(tr.mask.end(), s.response.size(), 1);
            tr.logp.insert(tr.logp.end(), s.logprobs.begin(), s.logprobs.end());
            tr.kept.insert(tr.kept.end(), s.kept.begin(), s.kept.end());
            tr.snap = std::move(s);
            tr.snap.prompt = tr.ctx;
            tr.snap.response = tr.resp;
            tr.snap.loss_mask = tr.mask;
            tr.snap.logprobs = tr.logp;
            if (opt.generate.record_kept) tr.snap.kept = tr.kept;
            tr.has_snap = true;
            if (tr.snap.finish != FinishReason::kEos) {  // cut off (length, context, a stop string): no answer
                tr.end(tr.snap.finish);
                continue;
            }
            OJson msg = {{"role", "assistant"}, {"content", parsed.content}};
            if (copt.thinking) msg["reasoning_content"] = parsed.reasoning_content;
            if (parsed.tool_calls.empty()) {  // the final answer
                tr.messages.push_back(msg);
                tr.full.push_back(std::move(msg));
                tr.end(FinishReason::kEos);
                continue;
            }
            const int64_t n = static_cast<int64_t>(parsed.tool_calls.size());
            OJson calls = OJson::array();
            tr.calls = agent::Json::array();
            for (int64_t c = 0; c < n; ++c) {
                const text::ToolCall& call = parsed.tool_calls[static_cast<size_t>(c)];
                const std::string id = absl::StrCat("call_", tr.turns, "_", c);
                calls.push_back({{"id", id},
                                 {"type", "function"},
                                 {"function", {{"name", call.name}, {"arguments", call.arguments}}}});
                tr.calls.push_back({{"id", id}, {"name", call.name}, {"arguments", unordered(call.arguments)}});
            }
            msg["tool_calls"] = std::move(calls);
            tr.messages.push_back(msg);
            tr.full.push_back(std::move(msg));
            if (tr.tool_calls + n > opt.max_tool_calls) {
                tr.end(FinishReason::kToolLimit);
                continue;
            }
            stepping.push_back(who[k]);
        }

        // 3. The environments answer the tool calls (concurrently).
        t0 = Clock::now();
        parallel_for(stepping.size(), opt.env_threads, [&](size_t j) {
            Trajectory& tr = trajs[stepping[j]];
            try {
                tr.answer = tr.env->step(tr.calls);
            } catch (const std::exception& e) {  // EnvironmentError; anything else is the environment's too
                tr.step_error = e.what();
            }
        });
        stats.env_seconds += seconds_since(t0);
        for (const size_t i : stepping) {
            Trajectory& tr = trajs[i];
            if (!tr.step_error.empty()) {
                tr.fail(std::move(tr.step_error));
                continue;
            }
            const OJson before = conversation(tr.messages, tr.tools);
            const agent::Json& results = tr.answer["results"];
            for (size_t c = 0; c < results.size(); ++c) {
                OJson m = {{"role", "tool"},
                           {"tool_call_id", tr.calls[c]["id"].get<std::string>()},
                           {"content", results[c]["content"].get<std::string>()}};
                tr.messages.push_back(m);
                tr.full.push_back(std::move(m));
            }
            tr.tool_calls += static_cast<int32_t>(results.size());
            if (tr.answer.value("done", false)) {
                tr.end(FinishReason::kEos);
                continue;
            }
            std::vector<int64_t> env_ids;
            try {
                env_ids = appended_ids(tokenizer, *format, copt, before, conversation(tr.messages, tr.tools));
            } catch (const DataError& e) {  // a result the format cannot show
                tr.fail(absl::StrCat("environment '", tr.task->env->name,
                                     "': its tool results cannot be rendered: ", e.what()));
                continue;
            }
            const int64_t total = static_cast<int64_t>(tr.ctx.size() + tr.resp.size() + env_ids.size());
            bool reset = false;
            if (agent::context_exceeded(total, window, threshold)) {
                if (opt.context == ContextStrategy::kDiscard75 || opt.context == ContextStrategy::kDiscardAll) {
                    int64_t removed = 0;
                    OJson kept = agent::discard_tool_rounds(
                        tr.messages, opt.context == ContextStrategy::kDiscard75 ? 0.75 : 1.0, &removed);
                    if (removed > 0) {  // nothing to drop: as none
                        tr.messages = std::move(kept);
                        tr.restart(tokenizer);
                        reset = true;
                    }
                } else if (opt.context == ContextStrategy::kSummary) {
                    OJson request = tr.messages;
                    request.push_back({{"role", "user"}, {"content", opt.summary_prompt}});
                    tr.full.push_back(request.back());
                    tr.summary_ids = to_i32(text::render_conversation(tokenizer, conversation(request, tr.tools)).ids);
                    if (static_cast<int64_t>(tr.summary_ids.size()) + 1 >= window) {
                        tr.end(FinishReason::kContext);
                        continue;
                    }
                    tr.summary_turn = true;
                    continue;  // the next round generates the summary
                }
            }
            if (!reset) {
                tr.resp.insert(tr.resp.end(), env_ids.begin(), env_ids.end());
                tr.mask.insert(tr.mask.end(), env_ids.size(), 0);
                tr.logp.insert(tr.logp.end(), env_ids.size(), 0.0f);
                if (opt.generate.record_kept)
                    tr.kept.insert(tr.kept.end(), env_ids.size(), KeptSet::all(cfg.vocab_size));
            }
            if (static_cast<int64_t>(tr.ctx.size() + tr.resp.size()) + 1 >= window) tr.end(FinishReason::kContext);
        }
    }

    // 4. Parallel-fewest-step: per sample, keep the trajectory with the fewest tool calls among those that gave a
    // final answer (else among all), the first on ties.
    std::vector<size_t> chosen;
    for (size_t base = 0; base < trajs.size(); base += static_cast<size_t>(parallel)) {
        size_t best = base;
        auto rank = [&](const Trajectory& t) {
            const bool answered = t.error.empty() && t.finish == FinishReason::kEos;
            return std::make_pair(answered ? 0 : 1, t.tool_calls);
        };
        for (size_t i = base + 1; i < base + static_cast<size_t>(parallel); ++i) {
            if (rank(trajs[i]) < rank(trajs[best])) best = i;
        }
        chosen.push_back(best);
        stats.parallel_discarded += parallel - 1;
    }

    // 5. Verify the kept trajectories.
    t0 = Clock::now();
    parallel_for(chosen.size(), opt.env_threads, [&](size_t j) {
        Trajectory& tr = trajs[chosen[j]];
        if (!tr.error.empty()) return;
        try {
            agent::Json traj = {{"messages", unordered(tr.full)}};
            tr.reward = static_cast<float>(tr.env->verify(traj)["reward"].get<double>());
        } catch (const std::exception& e) {
            tr.error = e.what();
        }
    });
    stats.env_seconds += seconds_since(t0);

    // 6. Samples, grouped in task order.
    std::vector<SampleGroup> groups;
    size_t c = 0;
    for (const AgentTask& t : tasks) {
        SampleGroup group{t.domain, t.prompt_id, {}};
        for (int64_t g = 0; g < group_size; ++g) {
            Trajectory& tr = trajs[chosen[c++]];
            Sample s = tr.has_snap ? std::move(tr.snap) : placeholder_sample(model, tokenizer, opt.generate);
            s.domain = t.domain;
            s.prompt_id = t.prompt_id;
            s.sample_index = tr.g;
            s.seed = tr.seed;
            s.policy_version = opt.generate.policy_version;
            s.vocab_size = cfg.vocab_size;
            s.finish = tr.finish;
            s.loss_mask.resize(s.response.size(), 0);  // a placeholder has none
            s.turns = tr.turns;
            s.tool_calls = tr.tool_calls;
            s.context_events = tr.events;
            s.env_error = tr.error;
            s.reward = tr.error.empty() ? tr.reward : std::nanf("");
            s.trajectory = dump(conversation(tr.full, tr.tools));
            int64_t trained = 0, env = 0;
            for (const uint8_t m : s.loss_mask) (m != 0 ? trained : env) += 1;
            ++stats.trajectories;
            stats.turns += tr.turns;
            stats.tool_calls += tr.tool_calls;
            stats.context_events += tr.events;
            stats.env_errors += !tr.error.empty();
            stats.tool_limit += tr.finish == FinishReason::kToolLimit;
            stats.context_limit += tr.finish == FinishReason::kContext && tr.error.empty();
            stats.untrained_tokens += tr.model_tokens - trained;
            stats.env_tokens += env;
            group.samples.push_back(std::move(s));
        }
        groups.push_back(std::move(group));
    }
    if (stats_out != nullptr) {
        stats_out->generation += stats.generation;
        stats_out->trajectories += stats.trajectories;
        stats_out->turns += stats.turns;
        stats_out->tool_calls += stats.tool_calls;
        stats_out->context_events += stats.context_events;
        stats_out->env_errors += stats.env_errors;
        stats_out->tool_limit += stats.tool_limit;
        stats_out->context_limit += stats.context_limit;
        stats_out->parallel_discarded += stats.parallel_discarded;
        stats_out->untrained_tokens += stats.untrained_tokens;
        stats_out->env_tokens += stats.env_tokens;
        stats_out->env_seconds += stats.env_seconds;
    }
    return groups;
}

}  // namespace dsrl::rollout
