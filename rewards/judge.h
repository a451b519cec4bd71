// The generative reward model (SPEC §6): an LLM judges each response against the prompt's rubric. The judge's
// prompt is a template filled with {prompt}, {response} and {rubric}; its greedy output is searched for a score
// with a regular expression; a missing or out-of-range score is a failure (never a silent zero).
//
// rewards/ knows no model: the judge generates through an injected JudgeBackend. The trainer registers the
// model-backed one (trainer/judge_backend.h: a dsrl checkpoint, its tokenizer and the rollout engine), so
//   rewards: [{module: judge, params: {model: /ckpt/judge, max_score: "10"}}]
// works in dsrl_train; tests inject scripted backends.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "rewards/reward.h"

namespace dsrl::rewards {

/// Greedy generation for the judge.
class JudgeBackend {
public:
    virtual ~JudgeBackend() = default;
    /// One greedy completion (decoded text, at most `max_new_tokens` tokens) per prompt, generated in batches of
    /// at most `max_batch_size`. A prompt longer than the model's context keeps its end (the instruction and
    /// "Score:" are last).
    virtual std::vector<std::string> generate(const std::vector<std::string>& prompts,
                                              int64_t max_new_tokens,
                                              int64_t max_batch_size) = 0;
};

/// Opens the judge model named by the module's params: `model` (a checkpoint directory) on `device` (cpu|cuda).
/// Throws CheckpointError for a checkpoint it cannot load.
using JudgeBackendFactory =
    std::function<std::shared_ptr<JudgeBackend>(const std::string& model, const std::string& device)>;

struct JudgeOptions {
    std::string prompt_template;  ///< with {prompt}, {response}, {rubric}; empty = the default template
    std::string score_pattern = R"(Score:\s*(-?[0-9]+(?:\.[0-9]+)?))";  ///< first capture group = the score
    double min_score = 0;
    double max_score = 10;
    int64_t max_new_tokens = 32;
    int64_t max_batch_size = 16;
    bool require_rubric = true;  ///< a sample without meta "rubric" fails (rubrics are per prompt)
};

/// The default judge prompt.
const std::string& default_judge_template();

class GenerativeJudge final : public RewardModule {
public:
    GenerativeJudge(std::shared_ptr<JudgeBackend> backend, JudgeOptions opt);
    /// Reward = (score − min_score) / (max_score − min_score) in [0, 1]; components: "score" (raw).
    std::vector<RewardResult> score(const std::vector<RewardInput>& batch) override;
    /// The filled-in judge prompt for one sample (for tests and debugging).
    std::string render(const RewardInput& in) const;

private:
    std::shared_ptr<JudgeBackend> backend_;
    JudgeOptions opt_;
};

/// Registers `judge` (params: model (checkpoint dir, required), template, score_pattern, min_score, max_score,
/// max_new_tokens, max_batch_size, require_rubric, device (cpu|cuda)) whose model `open` loads; idempotent.
void register_judge(Registry& reg, JudgeBackendFactory open);

}  // namespace dsrl::rewards
