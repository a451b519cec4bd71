#include "rewards/judge.h"

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_replace.h>

#include <regex>

#include "core/error.h"

namespace dsrl::rewards {

const std::string& default_judge_template() {
    static const std::string t =
        "You are a strict grader. Judge the response to the prompt against the rubric.\n"
        "Prompt:\n{prompt}\n\nRubric:\n{rubric}\n\nResponse:\n{response}\n\n"
        "Reply with one line of the form 'Score: N' where N is from 0 to 10.\nScore:";
    return t;
}

GenerativeJudge::GenerativeJudge(std::shared_ptr<JudgeBackend> backend, JudgeOptions opt)
    : backend_(std::move(backend)), opt_(std::move(opt)) {
    if (opt_.prompt_template.empty()) opt_.prompt_template = default_judge_template();
    if (!(opt_.max_score > opt_.min_score)) {
        throw ConfigError(absl::StrCat("reward module 'judge': max_score (", opt_.max_score,
                                       ") must exceed min_score (", opt_.min_score, ")"));
    }
    try {
        const std::regex re(opt_.score_pattern);
        if (re.mark_count() < 1) throw std::regex_error(std::regex_constants::error_badrepeat);
    } catch (const std::regex_error&) {
        throw ConfigError(absl::StrCat("reward module 'judge': score_pattern '", opt_.score_pattern,
                                       "' is not a regular expression with a capture group for the score"));
    }
    if (opt_.prompt_template.find("{response}") == std::string::npos) {
        throw ConfigError("reward module 'judge': the template must contain {response}");
    }
}

std::string GenerativeJudge::render(const RewardInput& in) const {
    const auto it = in.meta.find("rubric");
    return absl::StrReplaceAll(
        opt_.prompt_template,
        {{"{prompt}", in.prompt}, {"{response}", in.response}, {"{rubric}", it == in.meta.end() ? "" : it->second}});
}

std::vector<RewardResult> GenerativeJudge::score(const std::vector<RewardInput>& batch) {
    std::vector<RewardResult> out(batch.size());
    std::vector<std::string> prompts;
    std::vector<size_t> which;
    for (size_t i = 0; i < batch.size(); ++i) {
        if (opt_.require_rubric && !batch[i].meta.count("rubric")) {
            out[i] = RewardResult::failure("judge: the sample has no rubric (meta 'rubric')");
            continue;
        }
        prompts.push_back(render(batch[i]));
        which.push_back(i);
    }
    if (prompts.empty()) return out;
    const std::vector<std::string> texts = backend_->generate(prompts, opt_.max_new_tokens, opt_.max_batch_size);
    DSRL_INTERNAL_ASSERT(texts.size() == prompts.size(), "judge backend returned ", texts.size(), " completions for ",
                         prompts.size(), " prompts");
    const std::regex re(opt_.score_pattern);
    for (size_t j = 0; j < texts.size(); ++j) {
        const std::string& text = texts[j];
        std::smatch m;
        double s = 0;
        RewardResult& r = out[which[j]];
        if (!std::regex_search(text, m, re) || !absl::SimpleAtod(m[1].str(), &s)) {
            r = RewardResult::failure(absl::StrCat("judge: no score in its output '", text.substr(0, 80), "'"));
        } else if (s < opt_.min_score || s > opt_.max_score) {
            r = RewardResult::failure(
                absl::StrCat("judge: score ", s, " outside [", opt_.min_score, ", ", opt_.max_score, "]"));
        } else {
            r = RewardResult::of((s - opt_.min_score) / (opt_.max_score - opt_.min_score));
            r.components["score"] = s;
        }
    }
    return out;
}

void register_judge(Registry& reg, JudgeBackendFactory open) {
    if (reg.contains("judge")) return;
    reg.add("judge", "generative reward model: an LLM grades the response against the rubric",
            [open = std::move(open)](const Params& p) -> std::unique_ptr<RewardModule> {
                const std::string path = p.str("model", "");
                if (path.empty())
                    throw ConfigError("reward module 'judge': param 'model' (a checkpoint directory) is required");
                JudgeOptions o;
                o.prompt_template = p.str("template", "");
                o.score_pattern = p.str("score_pattern", o.score_pattern);
                o.min_score = p.num("min_score", o.min_score);
                o.max_score = p.num("max_score", o.max_score);
                o.max_new_tokens = p.integer("max_new_tokens", o.max_new_tokens);
                o.max_batch_size = p.integer("max_batch_size", o.max_batch_size);
                o.require_rubric = p.flag("require_rubric", o.require_rubric);
                const std::string device = p.str("device", "cpu");
                if (device != "cpu" && device != "cuda") {
                    throw ConfigError(
                        absl::StrCat("reward module 'judge': device must be cpu or cuda, got '", device, "'"));
                }
                if (o.max_new_tokens < 1 || o.max_batch_size < 1) {
                    throw ConfigError("reward module 'judge': max_new_tokens and max_batch_size must be >= 1");
                }
                return std::make_unique<GenerativeJudge>(open(path, device), std::move(o));
            });
}

}  // namespace dsrl::rewards
