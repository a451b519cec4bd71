// Prompt datasets (SPEC §6-7): where the prompts of a domain (`domains[i].data`) and of the SFT stage
// (`sft.data`) come from, plus the per-epoch shuffled sampler whose cursor goes into checkpoints.
//
//   auto src = make_prompt_source(domain.data, domain.name, config_dir);  // "prompts.jsonl" or "synthetic:echo"
//   PromptSampler sampler(src, rng::derive_seed(cfg.run.seed, rank, "prompts/" + domain.name));
//   PromptItem item = sampler.next();              // item.meta["answer"] feeds RewardInput.meta
//   SamplerState cursor = sampler.state();         // saved with the checkpoint; sampler.restore(cursor) resumes
//
// Sources are immutable and deterministic in the index: get(i) always returns the same item. Finite sources
// (JSONL files) are read whole at open; synthetic ones (`synthetic:<task>[?key=value&...]`) are infinite and
// generate item i from a hash of (task, seed, i), so no state beyond the index exists.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "text/chat_format.h"
#include "text/tokenizer.h"

namespace dsrl::data {

/// One prompt of a dataset.
struct PromptItem {
    std::string domain;
    int64_t id = 0;
    std::string prompt;  ///< the text the rewards see: the row's "prompt", or the last user message of "messages"
    std::vector<text::ChatMessage> messages;  ///< a row's chat messages (system, user, ...); empty for a "prompt" row
    /// A "messages" row as the chat formats take it: {"messages": [...], "tools": [...]} in the OpenAI layout (tool
    /// calls, tool results, reasoning_content kept, keys in the file's order); null for a "prompt" row.
    text::OrderedJson conversation;
    std::map<std::string, std::string> meta;  ///< "answer", "rubric" and every other field of the JSONL line
    /// A task row (Rows::kTasks, an agent domain's environment task): the whole JSON object of the line; null
    /// otherwise.
    text::OrderedJson task;
};

/// The conversation a prompt starts: its messages, or one user message with its prompt.
std::vector<text::ChatMessage> chat_of(const PromptItem& item);
/// The same as a chat-format conversation: item.conversation, or {"messages": [{"role": "user", ...}]}.
text::OrderedJson conversation_of(const PromptItem& item);
/// The prompt ids of an item: its conversation rendered with the tokenizer's chat format (text/conversation.h),
/// ending with the generation prompt; DataError naming the item for a conversation the format cannot render.
std::vector<int64_t> prompt_ids(const text::Tokenizer& tokenizer, const PromptItem& item, const std::string& source);

/// What the rows of a JSONL file are for: prompts the model answers (a "messages" row ends with a user or developer
/// message or tool results), or SFT conversations (a "messages" row may also end with the assistant turns to learn).
/// kTasks: an agent domain's tasks — any JSON object per line, handed whole to the environment's reset (a string
/// "question" or "prompt" is shown in logs, a string "answer" kept in meta; an integer "id" is the item's id, any other
/// "id" stays in the task only).
enum class Rows { kPrompts, kConversations, kTasks };

/// A dataset of prompts, addressed by index.
class PromptSource {
public:
    virtual ~PromptSource() = default;
    /// The file path, or the normalized synthetic spec ("synthetic:arithmetic?digits=3&ops=+-*&seed=0").
    virtual std::string name() const = 0;
    /// The number of items; -1 for an infinite (synthetic) source.
    virtual int64_t size() const = 0;
    /// The item at `index` (0 <= index < size(), or index >= 0 when infinite); the same index always gives
    /// the same item. Throws InternalError when out of range: epochs are the caller's business (PromptSampler).
    virtual PromptItem get(int64_t index) const = 0;
};

/// JSON Lines prompts: one object per non-blank line with a required string `prompt` and optional `answer`,
/// `rubric`, `domain` (overrides the domain given to open()) and integer `id` (default: the index of the line
/// among non-blank lines). Every other field goes to meta (strings as-is, other values as compact JSON).
/// A null optional field counts as absent.
class JsonlPromptSource final : public PromptSource {
public:
    /// Reads and validates the whole file. Throws DataError naming "path:line" on invalid JSON (with the
    /// parser's message), a line that is not an object, a missing/non-string/empty prompt, a non-string
    /// answer/rubric/domain, a non-integer id, a duplicate id (naming the first line); and naming the path
    /// when it cannot be read or holds no items.
    static std::shared_ptr<const JsonlPromptSource> open(const std::string& path,
                                                         const std::string& domain,
                                                         Rows rows = Rows::kPrompts);

    std::string name() const override { return path_; }
    int64_t size() const override { return static_cast<int64_t>(items_.size()); }
    PromptItem get(int64_t index) const override;

private:
    JsonlPromptSource() = default;
    std::string path_;
    std::vector<PromptItem> items_;
};

/// The synthetic tasks and their parameters (all integers unless noted), for help texts and errors:
///   arithmetic  "What is 4821 + 397? Put the final answer in \boxed{}."; answer the exact integer result.
///               digits (1..9, default 2): operands have exactly this many digits (0..9 for 1);
///               ops (string, a non-empty subset of "+-*", default "+-*"); seed (default 0).
///   echo        "Repeat exactly: <words>"; answer the words. words (1..64, default 4); seed.
///   count       "How many times does the letter 'e' appear in \"<words>\"? Put the final answer in \boxed{}.";
///               answer the count. words (1..64, default 4); seed.
std::vector<std::string> synthetic_task_names();

/// A source from a `data` spec: `synthetic:<task>[?key=value&...]`, or a JSONL path (a relative path is
/// resolved against `base_dir`, usually the config file's directory; empty: the working directory).
/// Throws ConfigError on an unknown task (listing the known ones), an unknown, repeated or malformed
/// parameter (listing the task's parameters), or an out-of-range value; DataError from JsonlPromptSource.
std::shared_ptr<const PromptSource> make_prompt_source(const std::string& spec,
                                                       const std::string& domain,
                                                       const std::string& base_dir,
                                                       Rows rows = Rows::kPrompts);

/// Renders every conversation of a finite source with the tokenizer's chat format (text only, no tokenization), so
/// one the format cannot render fails before any step — a DataError naming the source and the item; for SFT rows
/// (kConversations) a row that neither ends with an assistant turn nor has a `response` or `answer` too. Synthetic
/// sources hold only plain prompts and are skipped.
void check_conversations(const PromptSource& source, const text::Tokenizer& tokenizer, Rows rows);

/// The cursor of a PromptSampler: `position` items of epoch `epoch` have been handed out.
struct SamplerState {
    int64_t epoch = 0;
    int64_t position = 0;
    bool operator==(const SamplerState&) const = default;
};

/// Yields the items of a finite source in a fresh shuffled order each epoch, every item exactly once per
/// epoch; the order depends only on (seed, epoch), so two samplers with the same seed agree and a sampler
/// restored to a saved state continues exactly as the original would have. Infinite sources are read
/// sequentially (epoch stays 0, position is the next index). Not thread-safe.
class PromptSampler {
public:
    PromptSampler(std::shared_ptr<const PromptSource> source, uint64_t seed);

    PromptItem next();
    int64_t epoch() const { return state_.epoch; }
    /// Items already handed out in the current epoch (in [0, size) for finite sources: finishing an epoch
    /// moves the cursor to the start of the next one).
    int64_t position() const { return state_.position; }
    SamplerState state() const { return state_; }
    /// Continues from `state` (from state() of a sampler over the same source and seed). Throws DataError
    /// when it does not fit the source (negative, or position >= size), e.g. a resume after the dataset shrank.
    void restore(const SamplerState& state);
    const PromptSource& source() const { return *source_; }

private:
    void build_order();  // order_ := the permutation of epoch state_.epoch

    std::shared_ptr<const PromptSource> source_;
    uint64_t seed_ = 0;
    SamplerState state_;
    std::vector<int64_t> order_;  // finite sources only
};

/// A sampler's position as a checkpoint cursor ("epoch:position") and back; a malformed cursor is a
/// CheckpointError naming `what` (the cursor's key).
std::string cursor_of(const PromptSampler& s);
void restore_cursor(PromptSampler& s, const std::string& text, const std::string& what);
/// Restores `s` from cursors[key] when the checkpoint has that cursor (else leaves it where it is).
void restore_cursor(PromptSampler& s, const std::map<std::string, std::string>& cursors, const std::string& key);

}  // namespace dsrl::data
