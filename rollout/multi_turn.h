// Multi-turn tool-use rollout (issue 20 item 2; SPEC §10): G trajectories per task, each a loop of
//   generate a model turn -> parse its tool calls (the tokenizer's chat format) -> run them in the task's environment
//   -> append the results -> generate the next turn
// until a final answer (a turn without tool calls), rollout.max_tool_calls, the environment saying done, or the
// context limit; then the environment verifies the trajectory and its reward is the sample's.
//
// Token in, token out: a trajectory's ids are exactly what the model saw and produced. A model turn appends the
// sampled ids as they were sampled (never re-tokenized); the environment's part appends the ids of the text the chat
// format renders after the turn (tool results and the markers around them: the rendered conversation with the results
// minus the rendered conversation without them, which within one user turn is a prefix — DSV32_FORMAT.md D.2 — so
// the split falls after the turn's end-of-sentence token). Sample::loss_mask marks the model's tokens (1) and the
// environment's (0); log-probs, kept sets and routes are recorded for the model's tokens as in single-turn rollout.
//
// Context management (rollout.context, DSV32_FORMAT.md D.3): when a trajectory's tokens pass context_threshold × the
// window after a tool round,
//   none                 nothing; the trajectory ends when the window is full (finish "context");
//   discard_75           the oldest 75% of its tool rounds are dropped (agent::discard_tool_rounds) and the kept
//                        conversation is re-rendered as a new context;
//   discard_all          all its tool rounds are dropped (the task's first messages stay);
//   summary              the model is asked (rollout.summary_prompt, a user message) to summarize the trajectory;
//                        the new context is the task's first messages plus a user message with the summary;
//   parallel_fewest_step each sample is the fewest-tool-call trajectory of rollout.parallel_trajectories
//                        independent ones (preferring those that gave a final answer), without any reset.
// After a reset the sample that trains is the last context: its re-rendered conversation is the prompt (no loss)
// and the turns generated in it are the response; the model's tokens of earlier contexts (and a summary turn's) are
// counted (MultiTurnStats::untrained_tokens) but not trained — no single token sequence holds both what the model saw
// then and what it saw after (docs/agentic.md).
//
// Failures: an environment error (agent::EnvironmentError: crash, hang, malformed answer) marks the trajectory
// failed — Sample::env_error says why, its reward is NaN (excluded from the loss and counted by GRPO) — and the
// others go on. A trajectory that failed before its first model turn is a one-token placeholder (BOS) carrying no
// loss.
//
//   MultiTurnOptions opt{.generate = gopt, .max_tool_calls = 20};
//   std::vector<AgentTask> tasks = {{"search", prompt_id, task_json, &env_spec}};
//   auto groups = generate_agent_groups(model, tokenizer, registry, tasks, /*group_size=*/8, opt, seed, &stats);
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "agent/environment.h"
#include "dsa/model.h"
#include "rollout/generator.h"
#include "rollout/record.h"
#include "text/chat_format.h"
#include "text/tokenizer.h"

namespace dsrl::rollout {

enum class ContextStrategy { kNone, kSummary, kDiscard75, kDiscardAll, kParallelFewestStep };
/// none | summary | discard_75 | discard_all | parallel_fewest_step; ConfigError naming `key` and the choices.
ContextStrategy parse_context_strategy(const std::string& name, const std::string& key = "rollout.context");
const char* context_strategy_name(ContextStrategy s);

/// Generates one model turn per request (rollout::generate's contract). The default runs rollout::generate with
/// MultiTurnOptions::generate; a test scripts turns with GenerationRequest::forced, a faster engine plugs in here.
using TurnGenerator =
    std::function<std::vector<Sample>(const std::vector<GenerationRequest>& requests, GenerationStats* stats)>;

struct MultiTurnOptions {
    GenerateOptions generate;  ///< per model turn: sampling, max_new_tokens (per turn), records
    int64_t max_tool_calls = 20;
    ContextStrategy context = ContextStrategy::kNone;
    double context_threshold = 0.8;     ///< fraction of the window that triggers context management
    int64_t context_window = 0;         ///< tokens; 0 = the model's max_position_embeddings
    int64_t parallel_trajectories = 4;  ///< parallel_fewest_step: trajectories sampled per sample
    std::string summary_prompt = kDefaultSummaryPrompt;
    int64_t env_threads = 8;       ///< environment calls run concurrently on this many threads
    TurnGenerator turn_generator;  ///< empty: rollout::generate with `generate`

    static constexpr const char* kDefaultSummaryPrompt =
        "The context is nearly full. Summarize what you have found so far — the facts, the tool results that "
        "matter and what is left to do — so that you can continue from the summary alone.";
};

/// One task of an agent domain: what the environment's reset receives, and which environment.
struct AgentTask {
    std::string domain;
    int64_t prompt_id = 0;
    agent::Json task;
    const agent::EnvSpec* env = nullptr;
};

struct MultiTurnStats {
    GenerationStats generation;      ///< every model turn (summary turns included)
    int64_t trajectories = 0;        ///< kept as samples
    int64_t turns = 0;               ///< model turns of the kept trajectories
    int64_t tool_calls = 0;          ///< tool calls answered, kept trajectories
    int64_t context_events = 0;      ///< discards and summaries, kept trajectories
    int64_t env_errors = 0;          ///< failed trajectories (kept ones; their reward is NaN)
    int64_t tool_limit = 0;          ///< trajectories ended by max_tool_calls
    int64_t context_limit = 0;       ///< trajectories ended by a full window
    int64_t parallel_discarded = 0;  ///< parallel_fewest_step: trajectories sampled but not kept
    int64_t untrained_tokens = 0;    ///< model tokens generated before a context reset (not trained)
    int64_t env_tokens = 0;          ///< environment tokens in the kept samples (no loss)
    double env_seconds = 0;          ///< wall time in environment calls (reset, step, verify)
};

/// G trajectories per task, grouped in task order, each sample's reward its environment's verify (NaN when the
/// environment failed). The tokenizer must have a chat format with tool calls (ConfigError otherwise). Under expert
/// parallelism every rank of the group runs the same number of turns (ranks without work join the others' forwards).
std::vector<SampleGroup> generate_agent_groups(const dsa::Model& model,
                                               const text::Tokenizer& tokenizer,
                                               const agent::EnvRegistry& registry,
                                               const std::vector<AgentTask>& tasks,
                                               int64_t group_size,
                                               const MultiTurnOptions& opt,
                                               uint64_t base_seed,
                                               MultiTurnStats* stats = nullptr);

/// The ids the environment appends after a model turn: the text `format` renders for `with_results` (the
/// conversation ending with tool results, rendered with the generation prompt) past the rendering of `before` (the
/// same conversation up to and including the assistant turn), tokenized on its own. An InternalError when the
/// rendering of `before` is not a prefix (the format is not append-only there).
std::vector<int64_t> appended_ids(const text::Tokenizer& tokenizer,
                                  const text::ChatFormat& format,
                                  const text::ChatOptions& options,
                                  const text::OrderedJson& before,
                                  const text::OrderedJson& with_results);

}  // namespace dsrl::rollout
