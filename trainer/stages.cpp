#include "trainer/stages.h"

#include <algorithm>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>

#include "core/error.h"

namespace dsrl::trainer {

bool has_stage(const JobConfig& job, std::string_view stage) {
    return std::find(job.run.stages.begin(), job.run.stages.end(), stage) != job.run.stages.end();
}

bool uses_dsa_stages(const JobConfig& job) {
    return has_stage(job, "indexer_warmup") || has_stage(job, "sparse_train");
}

std::vector<std::unique_ptr<Stage>> make_stages(JobContext& ctx, const text::Tokenizer& tok) {
    std::vector<std::unique_ptr<Stage>> out;
    std::vector<std::unique_ptr<Stage>> dsa =
        uses_dsa_stages(ctx.job) ? make_dsa_stages(ctx, tok) : std::vector<std::unique_ptr<Stage>>{};
    for (const std::string& name : ctx.job.run.stages) {
        if (name == "sft") {
            out.push_back(make_sft_stage(ctx, tok));
        } else if (name == "grpo") {
            out.push_back(make_grpo_stage(ctx, tok));
        } else {
            // make_dsa_stages returned the DSA phases in run.stages order; move this name's phases over.
            for (auto& s : dsa) {
                if (s && (s->name() == name || (name == "indexer_warmup" && s->name() == "dense_lm"))) {
                    out.push_back(std::move(s));
                }
            }
        }
    }
    return out;
}

}  // namespace dsrl::trainer
