// The DSA phases as stages of the one loop (SPEC §3, docs/dsa_training.md): dense_lm (the optional dense LM
// pre-phase of indexer_warmup), indexer_warmup and sparse_train share one token stream and one set of held-out
// batches; indexer_warmup and sparse_train evaluate (task loss, attention recall) at their start and end.
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <chrono>
#include <cstdio>

#include "data/token_data.h"
#include "trainer/dsa_stages.h"
#include "trainer/stages.h"

namespace dsrl::trainer {
namespace {

using Clock = std::chrono::steady_clock;

// The DSA phases' token stream and held-out batches: a synthetic task draws them from another seed; a file keeps
// its first eval_batches·batch_size·world windows for evaluation and trains on the rest.
struct DsaData {
    std::unique_ptr<data::TokenStream> stream;
    std::vector<data::TokenBatch> eval_batches;
    bool synthetic = false;

    DsaData(const JobConfig& job, const text::Tokenizer& tok, const dist::Communicator& comm) {
        synthetic = job.dsa.data.rfind("synthetic:", 0) == 0;
        auto src = data::make_token_source(job.dsa.data, job.dsa.seq_len, tok, "");
        const int64_t held_out = synthetic ? 0 : job.dsa.eval_batches * job.dsa.batch_size * comm.size();
        data::TokenStream eval_stream(
            synthetic ? data::make_token_source(job.dsa.data, job.dsa.seq_len, tok, "", 1000003) : src, comm.rank(),
            comm.size());
        for (int64_t i = 0; i < job.dsa.eval_batches; ++i) eval_batches.push_back(eval_stream.next(job.dsa.batch_size));
        stream = std::make_unique<data::TokenStream>(src, comm.rank(), comm.size(), held_out);
    }
};

using DsaStepFn = std::map<std::string, double> (*)(dsa::Model&,
                                                    AdamW&,
                                                    const data::TokenBatch&,
                                                    const JobConfig&,
                                                    const dist::Communicator*,
                                                    double,
                                                    dsa::MoeBalance*);

class DsaStage final : public Stage {
public:
    DsaStage(
        JobContext& ctx, std::shared_ptr<DsaData> data, std::string name, int64_t total, DsaStepFn fn, bool with_eval)
        : ctx_(ctx), data_(std::move(data)), name_(std::move(name)), total_(total), fn_(fn), with_eval_(with_eval) {}

    std::string name() const override { return name_; }
    int64_t total_steps() const override { return total_; }
    void begin(bool fresh) override {
        if (!fresh) return;
        ctx_.optimizer.reset_state();  // each stage starts with fresh moments and step count
        if (with_eval_) evaluate(false);
    }
    StepOutput step(int64_t step) override {
        const data::TokenBatch batch = data_->stream->next(ctx_.job.dsa.batch_size);
        batch_tokens_ = static_cast<double>(batch.input_ids.numel());
        StepOutput out;
        out.metrics = fn_(ctx_.policy, ctx_.optimizer, batch, ctx_.job, &ctx_.comm,
                          dsa_lr_factor(ctx_.job.trainer.optimizer, step, total_), ctx_.balance());
        out.skipped_steps = static_cast<int64_t>(out.metrics.at("skipped_steps"));
        return out;
    }
    double globalize(std::map<std::string, double>&, int world) const override { return batch_tokens_ * world; }
    std::string console_text(const std::map<std::string, double>& m) const override {
        std::string extra;
        if (m.count("lm_loss"))
            absl::StrAppendFormat(&extra, " (lm %.4f indexer %.4f)", m.at("lm_loss"), m.at("indexer_loss"));
        if (m.count("recall_mean")) absl::StrAppendFormat(&extra, "  recall %.3f", m.at("recall_mean"));
        return absl::StrFormat("loss %.4f%s  grad_norm %.3f", m.at("loss"), extra, m.at("grad_norm"));
    }
    void after_step(int64_t done) override {
        if (with_eval_ && done == total_) evaluate(true);
    }
    void save_cursors(std::map<std::string, std::string>& cursors) const override {
        cursors["tokens.dsa.windows"] = std::to_string(data_->stream->cursor());
    }
    void restore_cursors(const std::map<std::string, std::string>& cursors) override {
        // The job's windows taken; a checkpoint before that cursor kept this rank's count ("tokens.dsa").
        int64_t windows = int_cursor(cursors, "tokens.dsa.windows", -1);
        if (windows < 0) windows = int_cursor(cursors, "tokens.dsa", 0) * ctx_.state.resumed_world_size;
        const auto done = ctx_.state.stage_steps.find(name_);
        const bool unfinished = done == ctx_.state.stage_steps.end() || done->second < total_;
        if (!data_->synthetic && windows > 0 && unfinished && ctx_.state.resumed_world_size != ctx_.comm.size()) {
            // A file's held-out windows are its first eval_batches x batch_size x world: on another world size the
            // evaluation would take windows this stream trained on, and training would start elsewhere.
            throw CheckpointError(absl::StrCat("stage ", name_, " resumes a checkpoint of ",
                                               ctx_.state.resumed_world_size, " ranks on ", ctx_.comm.size(),
                                               ": dsa.data '", ctx_.job.dsa.data,
                                               "' is a file whose held-out windows depend on the "
                                               "world size, so a DSA stage on it resumes only on the world size that "
                                               "began it (resume with mpirun -np ",
                                               ctx_.state.resumed_world_size, ", or after the DSA stages)"));
        }
        data_->stream->restore(windows);
    }

private:
    // Held-out task loss and attention recall at the start and the end of the stage (a "dsa_eval" row).
    void evaluate(bool at_end) {
        if (data_->eval_batches.empty()) return;
        const auto t0 = Clock::now();
        std::map<std::string, double> m = dsa_evaluate(ctx_.policy, data_->eval_batches, ctx_.job, &ctx_.comm);
        m["stage_id"] = name_ == "indexer_warmup" ? 1 : 2;
        m["at_end"] = at_end ? 1 : 0;
        m["eval_seconds"] = std::chrono::duration<double>(Clock::now() - t0).count();
        ctx_.metrics->write("dsa_eval", ctx_.state.job_step(), m);
        if (ctx_.comm.rank() == 0) {
            std::printf(
                "[dsa_eval] %s %s: task_loss dense %.4f sparse %.4f  recall %.3f (best possible %.3f)  "
                "(k=%ld, %ld batches, %.1fs)\n",
                name_.c_str(), at_end ? "end" : "start", m["task_loss_dense"], m["task_loss_sparse"], m["recall_mean"],
                m["recall_oracle_mean"], long(ctx_.policy.config().index_topk), long(data_->eval_batches.size()),
                m["eval_seconds"]);
            std::fflush(stdout);
        }
    }

    JobContext& ctx_;
    std::shared_ptr<DsaData> data_;
    std::string name_;
    int64_t total_;
    DsaStepFn fn_;
    bool with_eval_;
    double batch_tokens_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<Stage>> make_dsa_stages(JobContext& ctx, const text::Tokenizer& tok) {
    const JobConfig& job = ctx.job;
    auto data = std::make_shared<DsaData>(job, tok, ctx.comm);
    std::vector<std::unique_ptr<Stage>> out;
    for (const std::string& name : job.run.stages) {
        if (name == "indexer_warmup") {
            // dsa.dense_lm_steps: dense LM training first (a dense-trained model to convert, for experiments).
            out.push_back(
                std::make_unique<DsaStage>(ctx, data, "dense_lm", job.dsa.dense_lm_steps, &dense_lm_step, false));
            out.push_back(
                std::make_unique<DsaStage>(ctx, data, name, job.dsa.warmup_steps, &indexer_warmup_step, true));
        } else if (name == "sparse_train") {
            out.push_back(std::make_unique<DsaStage>(ctx, data, name, job.dsa.sparse_steps, &sparse_train_step, true));
        }
    }
    return out;
}

}  // namespace dsrl::trainer
