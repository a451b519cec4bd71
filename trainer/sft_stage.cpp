#include "trainer/stages.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_split.h>

#include "core/error.h"
#include "data/sft_data.h"
#include "grpo/logprobs.h"
#include "trainer/rl_step.h"

namespace dsrl::trainer {
namespace {

// The SFT data: `sft.data`, or (when empty) every domain's training data mixed by the domain weights.
data::SftMixture sft_mixture(const JobConfig& job) {
    std::vector<data::SftMixture::SourceSpec> sources;
    if (!job.sft.data.empty()) {
        sources.push_back({"prompts.sft", 1.0, job.sft.data, "sft"});
    } else {
        for (const DomainConfig& d : job.domains)
            sources.push_back({"prompts.sft." + d.name, d.weight, d.data, d.name});
    }
    return data::SftMixture(sources, static_cast<uint64_t>(job.run.seed));
}

// One SFT batch: chat prompt + target response (meta "response", else "\boxed{answer}" when the prompt asks
// for a boxed answer, else the answer) + EOS; NLL over the response tokens.
std::map<std::string, double> sft_step(dsa::Model& model,
                                       AdamW& opt,
                                       const text::Tokenizer& tok,
                                       data::SftMixture& sources,
                                       int64_t step,
                                       const JobConfig& job,
                                       const dist::Communicator& comm) {
    // The global batch is world × micro_batch_size slots; every rank draws them all (its streams advance alike)
    // and trains on slots [rank · m, (rank + 1) · m) — the same data as one rank with world × m sequences.
    const int64_t per_rank = job.trainer.micro_batch_size;
    std::vector<rollout::Sample> samples(static_cast<size_t>(per_rank));
    for (int64_t g = 0; g < comm.size() * per_rank; ++g) {
        std::string spec;
        const data::PromptItem item = sources.next(step, g, &spec);
        if (g / per_rank != comm.rank()) continue;
        rollout::Sample& s = samples[static_cast<size_t>(g % per_rank)];
        std::string target;
        if (const auto it = item.meta.find("response"); it != item.meta.end()) {
            target = it->second;
        } else if (const auto a = item.meta.find("answer"); a != item.meta.end()) {
            target =
                item.prompt.find("\\boxed") != std::string::npos ? absl::StrCat("\\boxed{", a->second, "}") : a->second;
        } else {
            throw DataError(
                absl::StrCat("sft: prompt ", item.id, " of ", spec, " has neither 'response' nor 'answer'"));
        }
        for (const int64_t id : tok.apply_chat(data::chat_of(item), true)) s.prompt.push_back(static_cast<int32_t>(id));
        for (const int64_t id : tok.encode(target)) s.response.push_back(static_cast<int32_t>(id));
        s.response.push_back(static_cast<int32_t>(tok.eos_id()));
        s.vocab_size = job.model.vocab_size;
    }
    std::vector<const rollout::Sample*> ptrs;
    for (const rollout::Sample& s : samples) ptrs.push_back(&s);
    const grpo::PackedBatch b = grpo::pack_samples(ptrs, tok.pad_id());
    const grpo::LogprobResult lp = grpo::sequence_logprobs(
        model, b, {.replay_routes = false, .apply_kept = false, .chunk_tokens = job.grpo.logp_chunk_tokens});
    const at::Tensor valid = b.valid.to(lp.logp.device());
    // Mean over the global batch's target tokens (data_parallel_denominator: every rank's loss sum over the
    // global count / world, so the averaged gradient and the ranks' mean of `loss` are the global mean).
    const double denominator = data_parallel_denominator(valid.sum().item<double>(), &comm);
    const at::Tensor loss = -(lp.logp * valid).sum() / denominator;
    loss.backward();
    average_gradients(opt.params(), &comm);
    const ClipResult c = clip_grad_norm(opt.params(), job.trainer.optimizer.grad_clip);
    std::map<std::string, double> m{
        {"loss", loss.item<double>()}, {"grad_norm", c.norm}, {"skipped_steps", 0}, {"tokens", denominator}};
    if (c.finite) {
        opt.step(job.sft.lr);
    } else {
        m["skipped_steps"] = 1;
    }
    opt.zero_grad();
    return m;
}

class SftStage final : public Stage {
public:
    SftStage(JobContext& ctx, const text::Tokenizer& tok) : ctx_(ctx), tok_(tok), sources_(sft_mixture(ctx.job)) {}

    std::string name() const override { return "sft"; }
    int64_t total_steps() const override { return ctx_.job.sft.steps; }
    void begin(bool fresh) override {
        if (fresh) ctx_.optimizer.reset_state();  // fresh moments and step count for the stage
    }
    StepOutput step(int64_t step) override {
        StepOutput out;
        out.metrics = sft_step(ctx_.policy, ctx_.optimizer, tok_, sources_, step, ctx_.job, ctx_.comm);
        out.skipped_steps = static_cast<int64_t>(out.metrics.at("skipped_steps"));
        return out;
    }
    double globalize(std::map<std::string, double>& m, int world) const override {
        m["tokens"] *= world;  // the global batch's target tokens (reduce_metrics averages)
        return m["tokens"];
    }
    std::string console_text(const std::map<std::string, double>& m) const override {
        return absl::StrFormat("loss %.4f  grad_norm %.3f", m.at("loss"), m.at("grad_norm"));
    }
    void save_cursors(std::map<std::string, std::string>& cursors) const override { sources_.save_cursors(cursors); }
    void restore_cursors(const std::map<std::string, std::string>& cursors) override {
        sources_.restore_cursors(cursors);
    }

private:
    JobContext& ctx_;
    const text::Tokenizer& tok_;
    data::SftMixture sources_;
};

}  // namespace

std::unique_ptr<Stage> make_sft_stage(JobContext& ctx, const text::Tokenizer& tok) {
    return std::make_unique<SftStage>(ctx, tok);
}

}  // namespace dsrl::trainer
