#include "trainer/stages.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/tensor.h>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_split.h>

#include "core/error.h"
#include "core/logging.h"
#include "data/sft_data.h"
#include "grpo/logprobs.h"
#include "text/conversation.h"
#include "trainer/rl_step.h"

namespace dsrl::trainer {
namespace {

// The SFT data: `sft.data`, or (when empty) every domain's training data mixed by the domain weights.
// An agent domain's share is its environment's demonstrations of its tasks (the cold start).
data::SftMixture sft_mixture(const JobConfig& job, const std::shared_ptr<const AgentEnvironments>& agents) {
    std::vector<data::SftMixture::SourceSpec> sources;
    if (!job.sft.data.empty()) {
        sources.push_back({"prompts.sft", 1.0, job.sft.data, "sft"});
    } else {
        for (const DomainConfig& d : job.domains) {
            data::SftMixture::SourceSpec spec{"prompts.sft." + d.name, d.weight, d.data, d.name};
            if (d.environment.enabled()) {
                spec.source = demonstration_source(data::make_prompt_source(d.data, d.name, "", data::Rows::kTasks),
                                                   *agents, d.name);
                // An environment without a solver (a subprocess, a plugin, one that cannot demonstrate) has no cold
                // start: it is left out, said once.
                try {
                    spec.source->get(0);
                } catch (const ConfigError& e) {
                    DSRL_LOG(warn) << "sft: domain '" << d.name << "' is left out of the cold start: " << e.what();
                    continue;
                }
            }
            sources.push_back(std::move(spec));
        }
        if (sources.empty()) {
            throw ConfigError(
                "sft: no domain has SFT data (every agent domain's environment lacks a solver for the cold start); "
                "set sft.data to a JSONL file of conversations");
        }
    }
    return data::SftMixture(sources, static_cast<uint64_t>(job.run.seed));
}

}  // namespace

SftExample sft_example(const text::Tokenizer& tok,
                       const data::PromptItem& item,
                       const std::string& spec,
                       int64_t max_seq_len,
                       int64_t vocab_size) {
    std::vector<int64_t> ids;
    std::vector<uint8_t> loss;
    const bool conversation = !item.messages.empty() && item.messages.back().role == "assistant";
    if (conversation) {
        try {
            text::ChatIds c = text::render_conversation(tok, data::conversation_of(item));
            ids = std::move(c.ids);
            loss = std::move(c.generated);
        } catch (const DataError& e) {
            throw DataError(absl::StrCat("sft: ", spec, ": item ", item.id, ": ", e.what()));
        }
    } else {
        std::string target;
        if (const auto it = item.meta.find("response"); it != item.meta.end()) {
            target = it->second;
        } else if (const auto a = item.meta.find("answer"); a != item.meta.end()) {
            target =
                item.prompt.find("\\boxed") != std::string::npos ? absl::StrCat("\\boxed{", a->second, "}") : a->second;
        } else {
            throw DataError(absl::StrCat("sft: ", spec, ": item ", item.id,
                                         ": has neither 'response' nor 'answer' (nor ends with an assistant message)"));
        }
        ids = data::prompt_ids(tok, item, spec);
        loss.assign(ids.size(), 0);
        for (const int64_t id : tok.encode(target)) ids.push_back(id);
        ids.push_back(tok.eos_id());
        loss.resize(ids.size(), 1);
    }
    SftExample ex;
    if (static_cast<int64_t>(ids.size()) > max_seq_len) {
        ids.resize(static_cast<size_t>(max_seq_len));
        loss.resize(ids.size());
        ex.truncated = true;
    }
    // The first token is never a target (nothing predicts it).
    size_t first = 1;
    while (first < loss.size() && loss[first] == 0) ++first;
    first = std::min(first, ids.size() - 1);
    rollout::Sample& s = ex.sample;
    s.prompt.assign(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(first));
    s.response.assign(ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end());
    ex.loss.assign(loss.begin() + static_cast<std::ptrdiff_t>(first), loss.end());
    s.vocab_size = vocab_size;
    return ex;
}

namespace {

std::map<std::string, double> sft_step(dsa::Model& model,
                                       AdamW& opt,
                                       const text::Tokenizer& tok,
                                       data::SftMixture& sources,
                                       int64_t step,
                                       const JobConfig& job,
                                       const dist::Communicator& comm,
                                       dsa::MoeBalance* balance,
                                       bool& no_targets) {
    // The global batch is world × micro_batch_size slots; every rank draws them all (its streams advance alike)
    // and trains on slots [rank · m, (rank + 1) · m) — the same data as one rank with world × m sequences.
    const int64_t per_rank = job.trainer.micro_batch_size;
    DSRL_INTERNAL_ASSERT(comm.size() <= 1 || opt.comm() == &comm,
                         "sft: the optimizer must average over the job's group");
    std::vector<SftExample> examples(static_cast<size_t>(per_rank));
    double truncated = 0;
    for (int64_t g = 0; g < comm.size() * per_rank; ++g) {
        std::string spec;
        const data::PromptItem item = sources.next(step, g, &spec);
        if (g / per_rank != comm.rank()) continue;
        SftExample& ex = examples[static_cast<size_t>(g % per_rank)];
        ex = sft_example(tok, item, spec, job.sft.max_seq_len, job.model.vocab_size);
        truncated += ex.truncated;
    }
    std::vector<const rollout::Sample*> ptrs;
    for (const SftExample& ex : examples) ptrs.push_back(&ex.sample);
    grpo::PackedBatch b = grpo::pack_samples(ptrs, tok.pad_id());
    for (size_t i = 0; i < examples.size(); ++i) {
        const std::vector<uint8_t>& l = examples[i].loss;
        auto row = b.valid[static_cast<int64_t>(i)].narrow(0, 0, static_cast<int64_t>(l.size()));
        row.mul_(at::tensor(std::vector<float>(l.begin(), l.end()), at::kFloat));
    }
    const grpo::LogprobResult lp = grpo::sequence_logprobs(
        model, b,
        {.replay_routes = false, .apply_kept = false, .chunk_tokens = job.grpo.logp_chunk_tokens, .balance = balance});
    const at::Tensor valid = b.valid.to(lp.logp.device());
    // Mean over the global batch's target tokens (data_parallel_denominator: every rank's loss sum over the
    // global count / world, so the averaged gradient and the ranks' mean of `loss` are the global mean).
    double targets = 0;  // the global batch's, unclamped
    const double denominator = data_parallel_denominator(valid.sum().item<double>(), &comm, &targets);
    // A batch whose examples were all truncated before their first target token has nothing to learn.
    const at::Tensor loss = -(lp.logp * valid).sum() / std::max(denominator, 1e-9);
    (balance != nullptr ? balance->add_aux_loss(loss) : loss).backward();
    const ClipResult c = opt.reduce_and_clip(job.trainer.optimizer.grad_clip);
    std::map<std::string, double> m{{"loss", loss.item<double>()},
                                    {"grad_norm", c.norm},
                                    {"skipped_steps", 0},
                                    {"tokens", denominator},
                                    {"truncated", truncated}};
    // Not one target token in the global batch (the same on every rank): no update, whose weight decay alone would
    // shrink the weights for nothing. The stage loop counts it (trainer.max_skipped_steps) and names why.
    no_targets = targets <= 0;
    if (!no_targets && c.finite) {
        opt.step(job.sft.lr);
    } else if (!no_targets) {
        m["skipped_steps"] = 1;
    }
    opt.zero_grad();
    return m;
}

class SftStage final : public Stage {
public:
    SftStage(JobContext& ctx, const text::Tokenizer& tok)
        : ctx_(ctx),
          tok_(tok),
          agents_(std::make_shared<const AgentEnvironments>(AgentEnvironments::build(ctx.job))),
          sources_(sft_mixture(ctx.job, agents_)) {
        sources_.check(tok);  // bad rows fail before the first step
    }

    std::string name() const override { return "sft"; }
    int64_t total_steps() const override { return ctx_.job.sft.steps; }
    void begin(bool fresh) override {
        if (fresh) ctx_.optimizer.reset_state();  // fresh moments and step count for the stage
    }
    StepOutput step(int64_t step) override {
        StepOutput out;
        bool no_targets = false;
        out.metrics = sft_step(ctx_.policy, ctx_.optimizer, tok_, sources_, step, ctx_.job, ctx_.comm, ctx_.balance(),
                               no_targets);
        out.skipped_steps = static_cast<int64_t>(out.metrics.at("skipped_steps"));
        if (no_targets) {
            out.nothing_to_train =
                absl::StrCat("no example kept a response token once sft.max_seq_len (", ctx_.job.sft.max_seq_len,
                             " tokens) cut it (longer prompts?): nothing trained, no update made");
            if (ctx_.comm.rank() == 0) {
                DSRL_LOG(warn) << "sft step " << step + 1 << ": " << out.nothing_to_train;
            }
        }
        return out;
    }
    double globalize(std::map<std::string, double>& m, int world) const override {
        m["tokens"] *= world;  // the global batch's target tokens (reduce_metrics averages)
        m["truncated"] *= world;
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
    std::shared_ptr<const AgentEnvironments> agents_;  // before sources_: the demonstrations use its registry
    data::SftMixture sources_;
};

}  // namespace

std::unique_ptr<Stage> make_sft_stage(JobContext& ctx, const text::Tokenizer& tok) {
    return std::make_unique<SftStage>(ctx, tok);
}

}  // namespace dsrl::trainer
