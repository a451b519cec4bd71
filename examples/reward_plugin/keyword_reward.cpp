// An example reward plugin: `keyword` scores 1 when the response contains every comma-separated word of its
// `words` param (or of the sample's meta "keywords"), else the fraction found. Build it as a shared library
// against dsrl's headers (see CMakeLists.txt here) and list it in the job config:
//
//   rewards: {plugins: [build/examples/reward_plugin/libdsrl_keyword_reward.so]}
//   domains: [{name: chat, data: ..., rewards: [{module: keyword, params: {words: "hello,world"}}]}]
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "rewards/plugin_api.h"

namespace {

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream in(s);
    for (std::string w; std::getline(in, w, ',');) {
        if (!w.empty()) out.push_back(w);
    }
    return out;
}

class KeywordReward final : public dsrl::rewards::RewardModule {
public:
    explicit KeywordReward(std::vector<std::string> words) : words_(std::move(words)) {}

    std::vector<dsrl::rewards::RewardResult> score(const std::vector<dsrl::rewards::RewardInput>& batch) override {
        std::vector<dsrl::rewards::RewardResult> out;
        for (const auto& in : batch) {
            std::vector<std::string> words = words_;
            if (words.empty()) {
                const auto it = in.meta.find("keywords");
                if (it == in.meta.end()) {
                    out.push_back(
                        dsrl::rewards::RewardResult::failure("no words param and no 'keywords' in the sample"));
                    continue;
                }
                words = split(it->second);
            }
            int found = 0;
            for (const auto& w : words) found += in.response.find(w) != std::string::npos;
            auto r = dsrl::rewards::RewardResult::of(words.empty() ? 0.0 : double(found) / double(words.size()));
            r.components["found"] = found;
            out.push_back(r);
        }
        return out;
    }

private:
    std::vector<std::string> words_;
};

}  // namespace

DSRL_REWARD_PLUGIN_EXPORT int dsrl_reward_plugin_abi_version() { return DSRL_REWARD_PLUGIN_ABI_VERSION; }

DSRL_REWARD_PLUGIN_EXPORT void dsrl_register_rewards(dsrl::rewards::Registry* registry) {
    registry->add(
        "keyword", "fraction of the given keywords present in the response (example plugin)",
        [](const dsrl::rewards::Params& p) { return std::make_unique<KeywordReward>(split(p.str("words", ""))); });
}
