#include "data/sft_data.h"

#include <absl/strings/str_cat.h>

#include "core/rng.h"

namespace dsrl::data {

SftMixture::SftMixture(const std::vector<SourceSpec>& sources, uint64_t seed) : seed_(seed) {
    for (const SourceSpec& s : sources) {
        sources_.push_back(
            {s, std::make_unique<PromptSampler>(
                    s.source != nullptr ? s.source : make_prompt_source(s.spec, s.domain, "", Rows::kConversations),
                    rng::derive_seed(seed, 0, s.key))});
        weights_.push_back(s.weight);
    }
}

PromptItem SftMixture::next(int64_t step, int64_t slot, std::string* spec) {
    const uint64_t r = rng::mix64(rng::derive_seed(seed_, 0, absl::StrCat("sft.mixture.", step)) +
                                  static_cast<uint64_t>(slot) * 0x9E3779B97F4A7C15ull);
    Source& chosen = sources_[rng::weighted_index(weights_, r)];
    if (spec != nullptr) *spec = chosen.spec.spec;
    return chosen.sampler->next();
}

void SftMixture::check(const text::Tokenizer& tokenizer) const {
    for (const Source& s : sources_) check_conversations(s.sampler->source(), tokenizer, Rows::kConversations);
}

void SftMixture::save_cursors(std::map<std::string, std::string>& cursors) const {
    for (const Source& s : sources_) cursors[s.spec.key] = cursor_of(*s.sampler);
}

void SftMixture::restore_cursors(const std::map<std::string, std::string>& cursors) {
    for (Source& s : sources_) restore_cursor(*s.sampler, cursors, s.spec.key);
}

}  // namespace dsrl::data
