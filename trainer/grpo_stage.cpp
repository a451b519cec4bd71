// The grpo stage (SPEC §5-7): RlStep per step, the frozen KL reference, held-out evaluation before, during and
// after RL with the before -> after summary (eval.json).
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_split.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>

#include "core/fs.h"
#include "rollout/record.h"
#include "trainer/evaluate.h"
#include "trainer/rl_step.h"
#include "trainer/stages.h"

namespace dsrl::trainer {
namespace {

using Clock = std::chrono::steady_clock;

double get_or_zero(const std::map<std::string, double>& m, const std::string& key) {
    const auto it = m.find(key);
    return it != m.end() ? it->second : 0.0;
}

std::string eval_text(const std::map<std::string, double>& m) {
    std::string text;
    for (const auto& [k, v] : m) {
        if (k.rfind("accuracy/", 0) == 0) absl::StrAppendFormat(&text, " %s %.3f", k.substr(9), v);
    }
    return text;
}

class GrpoStage final : public Stage {
public:
    GrpoStage(JobContext& ctx, const text::Tokenizer& tok)
        : ctx_(ctx), tok_(tok), domains_(build_domains(ctx.job, "")) {
        // A conversation the chat format cannot render fails now, not at the step that draws it.
        for (const DomainRuntime& d : domains_)
            data::check_conversations(d.sampler->source(), tok, data::Rows::kPrompts);
    }

    std::string name() const override { return "grpo"; }
    int64_t total_steps() const override { return ctx_.job.trainer.total_steps; }
    int64_t& steps_done(TrainingState& state) override { return state.step; }

    void begin(bool fresh) override {
        const JobConfig& job = ctx_.job;
        bool any_kl = false;
        for (const DomainConfig& d : job.domains) any_kl |= d.beta > 0;
        // The KL reference is the policy as the GRPO stage starts (after SFT); checkpoints keep it, so a resumed
        // run uses the same one. grpo.ref_on_cpu keeps it in host memory (its log-probs are computed there). A
        // disaggregated job's rollout workers never train: they hold none.
        if (any_kl && !ctx_.reference && !ctx_.roles.rollout) {
            const c10::Device ref_device = job.grpo.ref_on_cpu ? c10::Device(c10::kCPU) : ctx_.device;
            ctx_.reference =
                ctx_.reference_dir.empty()
                    ? std::make_unique<dsa::Model>(ctx_.policy.clone(ref_device))
                    : std::make_unique<dsa::Model>(dsa::Model::load(ctx_.reference_dir, job.model, ref_device));
            // Under expert parallelism the reference keeps the same experts as the policy.
            if (!ctx_.reference_dir.empty() && ctx_.policy.expert_parallel() != nullptr)
                ctx_.reference->set_expert_parallel(*ctx_.policy.expert_parallel());
        }
        // Fresh moments and step count: the lr schedule (warm-up, cosine) counts the stage's own optimizer steps.
        if (fresh) ctx_.optimizer.reset_state();
        if (job.trainer.eval_prompts > 0) evaluator_ = std::make_unique<Evaluator>(job, tok_, "");
        rl_ = std::make_unique<RlStep>(job, ctx_.policy, ctx_.reference.get(), tok_, domains_, ctx_.optimizer,
                                       &ctx_.comm, ctx_.balance(), &ctx_.roles);
        rl_->restore_queue(ctx_.state.cursors);  // a rollout worker's batches generated ahead, after a resume
        if (evaluator_ && fresh && !ctx_.state.cursors.count("eval_before")) {
            // The figures before RL are kept in the checkpoint state, so the final summary survives a resume.
            ctx_.state.cursors["eval_before"] = metrics_text(evaluate(0, "before RL"));
        }
    }

    StepOutput step(int64_t step) override {
        RlStepResult r = rl_->run(step);
        ctx_.state.policy_version = step + 1;
        if (!ctx_.dump_rollouts.empty() && !ctx_.roles.rollout) {  // a rollout worker's groups are its trainers' files
            fs::make_dirs(ctx_.dump_rollouts);
            rollout::write_groups_file(
                fs::join(ctx_.dump_rollouts, absl::StrFormat("step-%08d.rank-%d.dsrlroll", step + 1, ctx_.comm.rank())),
                r.groups);
        }
        return {std::move(r.metrics), r.skipped_steps};
    }

    double globalize(std::map<std::string, double>& m, int world) const override {
        // Counts are totals over the ranks (reduce_metrics averages), so a job reports the same figures on any number
        // of ranks: the global batch's generated tokens, its sequences and loss tokens per mini-batch, its samples,
        // its failed samples and the groups they emptied.
        m["generated_tokens"] *= world;
        for (const char* count :
             {"sequences", "tokens", "failed_samples", "dropped_groups", "reward_failed", "samples"}) {
            if (m.count(count)) m[count] *= world;
        }
        return m["generated_tokens"];
    }

    std::string console_text(const std::map<std::string, double>& m) const override {
        std::string rewards_text;
        for (const auto& [k, v] : m) {
            if (k.rfind("reward_mean/", 0) == 0) absl::StrAppendFormat(&rewards_text, " %s %.3f", k.substr(12), v);
        }
        return absl::StrFormat("reward%s  kl %.4f  clip %.3f  masked %.3f", rewards_text, get_or_zero(m, "kl_mean"),
                               get_or_zero(m, "clip_frac"), get_or_zero(m, "masked_seq_frac"));
    }

    void after_step(int64_t done) override {
        if (!evaluator_) return;
        if (done == total_steps()) {
            final_summary(evaluate(done, "after RL"));
        } else if (ctx_.job.trainer.eval_every > 0 && done % ctx_.job.trainer.eval_every == 0) {
            evaluate(done, "during RL");
        }
    }

    void save_cursors(std::map<std::string, std::string>& cursors) const override {
        for (const DomainRuntime& d : domains_) cursors["prompts." + d.name] = data::cursor_of(*d.sampler);
        if (rl_) rl_->save_queue(cursors);
    }
    void restore_cursors(const std::map<std::string, std::string>& cursors) override {
        for (DomainRuntime& d : domains_) data::restore_cursor(*d.sampler, cursors, "prompts." + d.name);
    }

private:
    // Evaluation at RL step `step`: a metrics row "eval" and an [eval] console line.
    std::map<std::string, double> evaluate(int64_t step, const char* when) {
        const auto t0 = Clock::now();
        std::map<std::string, double> m = evaluator_->run(ctx_.policy, &ctx_.comm);
        m["eval_seconds"] = std::chrono::duration<double>(Clock::now() - t0).count();
        ctx_.metrics->write("eval", step, m);
        if (ctx_.comm.rank() == 0) {
            std::printf("[eval] %s (step %ld): accuracy%s  (%ld prompts per domain, greedy, %.1fs)\n", when, long(step),
                        eval_text(m).c_str(), long(ctx_.job.trainer.eval_prompts), m["eval_seconds"]);
            std::fflush(stdout);
        }
        return m;
    }

    // Rank 0 prints accuracy before -> after RL per domain and writes <output_dir>/eval.json.
    void final_summary(const std::map<std::string, double>& after) const {
        if (ctx_.comm.rank() != 0) return;
        std::map<std::string, double> before;
        if (const auto it = ctx_.state.cursors.find("eval_before"); it != ctx_.state.cursors.end()) {
            before = parse_metrics_text(it->second);
        }
        nlohmann::json j;
        std::printf("[eval] accuracy before -> after RL (%ld held-out prompts per domain, greedy):\n",
                    long(ctx_.job.trainer.eval_prompts));
        for (const auto& [k, v] : after) {
            if (k.rfind("accuracy/", 0) != 0) continue;
            const std::string domain = k.substr(9);
            const auto b = before.find(k);
            j[domain] = {{"before", b != before.end() ? nlohmann::json(b->second) : nlohmann::json(nullptr)},
                         {"after", v}};
            if (b != before.end()) {
                std::printf("[eval]   %-12s %.3f -> %.3f  (%+.3f)\n", domain.c_str(), b->second, v, v - b->second);
            } else {
                std::printf("[eval]   %-12s ? -> %.3f\n", domain.c_str(), v);
            }
        }
        std::fflush(stdout);
        const std::string text = j.dump(2) + "\n";
        fs::write_file_atomic(fs::join(ctx_.job.run.output_dir, "eval.json"), {text});
    }

    JobContext& ctx_;
    const text::Tokenizer& tok_;
    std::vector<DomainRuntime> domains_;
    std::unique_ptr<Evaluator> evaluator_;
    std::unique_ptr<RlStep> rl_;
};

}  // namespace

std::unique_ptr<Stage> make_grpo_stage(JobContext& ctx, const text::Tokenizer& tok) {
    return std::make_unique<GrpoStage>(ctx, tok);
}

}  // namespace dsrl::trainer
