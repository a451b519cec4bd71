// The generative reward model (SPEC §6): a dsrl checkpoint judges each response against the prompt's rubric.
// The judge's prompt is a template filled with {prompt}, {response} and {rubric}; its greedy output is
// searched for a score with a regular expression; a missing or out-of-range score is a failure (never a
// silent zero). Generation is batched through the rollout engine; the time limit is DomainReward's.
//
//   rewards: [{module: judge, params: {model: /ckpt/judge, max_score: "10"}}]
#pragma once

#include <memory>
#include <string>

#include "dsa/model.h"
#include "rewards/reward.h"
#include "rollout/tokenizer.h"

namespace dsrl::rewards {

struct JudgeOptions {
    std::string prompt_template;   ///< with {prompt}, {response}, {rubric}; empty = the default template
    std::string score_pattern = R"(Score:\s*(-?[0-9]+(?:\.[0-9]+)?))";  ///< first capture group = the score
    double min_score = 0;
    double max_score = 10;
    int64_t max_new_tokens = 32;
    int64_t max_batch_size = 16;
    bool require_rubric = true;    ///< a sample without meta "rubric" fails (rubrics are per prompt)
};

/// The default judge prompt.
const std::string& default_judge_template();

class GenerativeJudge final : public RewardModule {
public:
    GenerativeJudge(std::shared_ptr<const dsa::Model> model, std::shared_ptr<const rollout::Tokenizer> tokenizer,
                    JudgeOptions opt);
    /// Reward = (score − min_score) / (max_score − min_score) in [0, 1]; components: "score" (raw).
    std::vector<RewardResult> score(const std::vector<RewardInput>& batch) override;
    /// The filled-in judge prompt for one sample (for tests and debugging).
    std::string render(const RewardInput& in) const;

private:
    std::shared_ptr<const dsa::Model> model_;
    std::shared_ptr<const rollout::Tokenizer> tokenizer_;
    JudgeOptions opt_;
};

/// Registers `judge` (params: model (checkpoint dir, required), template, score_pattern, min_score,
/// max_score, max_new_tokens, max_batch_size, require_rubric, device (cpu|cuda)); idempotent.
void register_judge(Registry& reg);

}  // namespace dsrl::rewards
