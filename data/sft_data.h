// The SFT data (SPEC §7): prompt/response items for supervised fine-tuning, from one source (`sft.data`) or from
// several mixed by weight (every domain's training data). Seeded by the job alone, so every rank holds the same
// streams and draws the whole global batch by global slot (a job on N ranks sees the data of one rank with N×
// the batch); a checkpoint keeps one cursor per source.
//
//   SftMixture mix({{"prompts.sft", 1.0, "data/sft.jsonl", "sft"}}, job_seed);
//   data::PromptItem item = mix.next(step, slot, &spec);    // item.meta["response"] or ["answer"]
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "data/prompts.h"

namespace dsrl::data {

class SftMixture {
public:
    struct SourceSpec {
        std::string key;  ///< cursor key in checkpoints, e.g. "prompts.sft.reasoning"
        double weight = 1.0;
        std::string spec;    ///< JSONL path or synthetic:<task>
        std::string domain;  ///< the domain name items carry
        /// A source built by the caller (an agent domain's demonstrations); when set, `spec` only names it.
        std::shared_ptr<const PromptSource> source;
    };

    /// Opens every source (DataError / ConfigError naming the spec); `seed` is the job's run.seed.
    SftMixture(const std::vector<SourceSpec>& sources, uint64_t seed);

    /// The item of step `step`, global slot `slot`: its source drawn by weight, deterministically in (seed, step,
    /// slot); `*spec` receives the source's spec (for messages).
    PromptItem next(int64_t step, int64_t slot, std::string* spec);

    /// check_conversations on every source (SFT rows), so bad rows fail before the first step.
    void check(const text::Tokenizer& tokenizer) const;

    void save_cursors(std::map<std::string, std::string>& cursors) const;
    void restore_cursors(const std::map<std::string, std::string>& cursors);

private:
    struct Source {
        SourceSpec spec;
        std::unique_ptr<PromptSampler> sampler;
    };
    std::vector<Source> sources_;
    std::vector<double> weights_;
    uint64_t seed_;
};

}  // namespace dsrl::data
