// The model behind the generative reward model (rewards/judge.h): a dsrl checkpoint (HF layout), its tokenizer
// and the rollout engine, greedy. rewards/ knows no model; the trainer injects this backend when it registers
// the `judge` module (dsrl_train calls register_model_judge before loading plugins and checking the job).
#pragma once

#include <memory>
#include <string>

#include "dsa/model.h"
#include "rewards/judge.h"
#include "text/tokenizer.h"

namespace dsrl::trainer {

class ModelJudgeBackend final : public rewards::JudgeBackend {
public:
    ModelJudgeBackend(std::shared_ptr<const dsa::Model> model, std::shared_ptr<const text::Tokenizer> tokenizer);
    /// Loads the checkpoint at `path` on `device` ("cpu" or "cuda"); CheckpointError when it cannot.
    static std::shared_ptr<ModelJudgeBackend> open(const std::string& path, const std::string& device);

    /// BOS + the prompt's tokens (the end of an over-long prompt, so that max_new_tokens fit the context), then
    /// greedy generation; ConfigError when max_new_tokens leaves no room for a prompt.
    std::vector<std::string> generate(const std::vector<std::string>& prompts,
                                      int64_t max_new_tokens,
                                      int64_t max_batch_size) override;

private:
    std::shared_ptr<const dsa::Model> model_;
    std::shared_ptr<const text::Tokenizer> tokenizer_;
};

/// Registers rewards' `judge` module in `reg` with ModelJudgeBackend::open; idempotent.
void register_model_judge(rewards::Registry& reg);

}  // namespace dsrl::trainer
