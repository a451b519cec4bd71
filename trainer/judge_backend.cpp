#include "trainer/judge_backend.h"

#include "core/error.h"
#include "rollout/generator.h"

namespace dsrl::trainer {

ModelJudgeBackend::ModelJudgeBackend(std::shared_ptr<const dsa::Model> model,
                                     std::shared_ptr<const text::Tokenizer> tokenizer)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)) {}

std::shared_ptr<ModelJudgeBackend> ModelJudgeBackend::open(const std::string& path, const std::string& device) {
    auto model = std::make_shared<const dsa::Model>(dsa::Model::load(path, ModelRuntime{}, c10::Device(device)));
    std::shared_ptr<const text::Tokenizer> tok = text::make_tokenizer(model->config().path, model->config().vocab_size);
    return std::make_shared<ModelJudgeBackend>(std::move(model), std::move(tok));
}

std::vector<std::string> ModelJudgeBackend::generate(const std::vector<std::string>& prompts,
                                                     int64_t max_new_tokens,
                                                     int64_t max_batch_size) {
    const int64_t room = model_->config().max_position_embeddings - max_new_tokens - 1;
    if (room < 1) throw ConfigError("reward module 'judge': max_new_tokens leaves no room for the prompt");
    std::vector<rollout::GenerationRequest> reqs;
    for (size_t i = 0; i < prompts.size(); ++i) {
        const std::vector<int64_t> ids = tokenizer_->encode(prompts[i]);
        std::vector<int32_t> prompt{static_cast<int32_t>(tokenizer_->bos_id())};
        const size_t start = ids.size() > static_cast<size_t>(room) ? ids.size() - static_cast<size_t>(room) : 0;
        for (size_t k = start; k < ids.size(); ++k) prompt.push_back(static_cast<int32_t>(ids[k]));
        reqs.push_back({"judge", static_cast<int64_t>(i), 0, 0, std::move(prompt)});
    }
    const rollout::GenerateOptions gopt{.sampling = {.temperature = 0.0},
                                        .max_new_tokens = max_new_tokens,
                                        .max_batch_size = max_batch_size,
                                        .record_kept = false,
                                        .record_routes = false};
    const std::vector<rollout::Sample> samples = rollout::generate(*model_, *tokenizer_, reqs, gopt);
    std::vector<std::string> out;
    out.reserve(samples.size());
    for (const rollout::Sample& s : samples) {
        out.push_back(tokenizer_->decode(std::vector<int64_t>(s.response.begin(), s.response.end())));
    }
    return out;
}

void register_model_judge(rewards::Registry& reg) {
    rewards::register_judge(reg, [](const std::string& path, const std::string& device) {
        return std::static_pointer_cast<rewards::JudgeBackend>(ModelJudgeBackend::open(path, device));
    });
}

}  // namespace dsrl::trainer
