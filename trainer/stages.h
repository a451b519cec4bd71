// The stages of a job (SPEC §7), each a Stage of the one stage loop (trainer/stage_loop.h):
//   sft             supervised fine-tuning on sft.data, or on the domains' training data mixed by weight;
//   dense_lm        the optional dense LM pre-phase of indexer_warmup (dsa.dense_lm_steps);
//   indexer_warmup  DSA stage 1: the indexer learns the dense attention (trainer/dsa_stages.h);
//   sparse_train    DSA stage 2: top-k sparse attention, LM loss + indexer KL;
//   grpo            mixed RL: rollouts per domain, rewards, the GRPO update (trainer/rl_step.h), held-out
//                   evaluation before, during and after.
// Each stage builds and owns its data (prompt samplers, token streams) and saves its cursors in checkpoints.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/prompts.h"
#include "rollout/record.h"
#include "text/tokenizer.h"
#include "trainer/stage_loop.h"

namespace dsrl::trainer {

/// Every stage of run.stages, in order ("indexer_warmup" is dense_lm, then indexer_warmup). Data sources are
/// opened here, so bad data fails before any step. `ctx` and `tok` must outlive the stages.
std::vector<std::unique_ptr<Stage>> make_stages(JobContext& ctx, const text::Tokenizer& tok);

std::unique_ptr<Stage> make_sft_stage(JobContext& ctx, const text::Tokenizer& tok);
std::unique_ptr<Stage> make_grpo_stage(JobContext& ctx, const text::Tokenizer& tok);
/// The DSA phases of run.stages, sharing one token stream and one set of held-out batches.
std::vector<std::unique_ptr<Stage>> make_dsa_stages(JobContext& ctx, const text::Tokenizer& tok);

/// One SFT example (the sft stage's unit): `sample.prompt` holds the tokens before the first target token,
/// `sample.response` the rest, `loss[t]` whether response token t carries the loss. A "messages" row ending with
/// an assistant turn learns every assistant turn through the chat format's mask (reasoning, content, tool calls,
/// end of turn; user turns and tool results are context); any other row learns meta "response" (else the answer,
/// as "\boxed{answer}" when the prompt asks for a boxed answer) + EOS after its chat prompt. Longer than
/// `max_seq_len` tokens: the first max_seq_len are kept (truncated = true). DataError naming `spec` and the row.
struct SftExample {
    rollout::Sample sample;
    std::vector<uint8_t> loss;
    bool truncated = false;
};
SftExample sft_example(const text::Tokenizer& tok,
                       const data::PromptItem& item,
                       const std::string& spec,
                       int64_t max_seq_len,
                       int64_t vocab_size);

/// True when run.stages lists `stage`.
bool has_stage(const JobConfig& job, std::string_view stage);
/// True when run.stages has indexer_warmup or sparse_train.
bool uses_dsa_stages(const JobConfig& job);

}  // namespace dsrl::trainer
