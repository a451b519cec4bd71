// The one stage loop (SPEC §7): every stage of a job — `sft`, the DSA phases (`dense_lm`, `indexer_warmup`,
// `sparse_train`) and `grpo` — is a Stage, and run_stage owns what they share, once: the fault point, the step
// meter, metrics averaged over the ranks, metrics.jsonl and TensorBoard, the console line with ETA, stop
// requests (SIGTERM/SIGINT/SIGUSR1 on any rank), the checkpoint cadence and the step counters that resume reads. A new
// stage (multi-turn agentic GRPO, a disaggregated role) implements Stage; it never copies the loop.
//
//   JobContext ctx{job, comm, device, policy, optimizer, state};
//   ctx.metrics = &log;  ctx.checkpoint = [&] { ... };
//   for (auto& stage : stages) if (!run_stage(*stage, ctx)) return 0;   // false: stopped by a signal
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include <c10/core/Device.h>

#include "core/dist/communicator.h"
#include "dsa/model.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/optimizer.h"

namespace dsrl::trainer {

class ExpertBalance;
class TensorBoardWriter;
class WeightSync;

/// Rank 0's metrics: one JSON line per step in metrics.jsonl and, with a TensorBoard directory, scalars
/// "<stage>/<key>" there (a resumed run appends a new event file; TensorBoard merges them). Other ranks: no-op.
class MetricsLog {
public:
    MetricsLog(const std::string& path, const std::string& tb_dir, bool active);
    ~MetricsLog();
    void write(const std::string& stage, int64_t step, const std::map<std::string, double>& m);

private:
    bool active_;
    std::string path_;
    std::ofstream out_;
    std::unique_ptr<TensorBoardWriter> tb_;
};

/// What every stage shares: the job, its ranks and device, the policy and optimizer, the checkpoint state, the
/// metrics log and the checkpoint writer (the job's, over every stage's cursors).
/// Who does what (issue 22): colocated, every rank rolls out and trains; disaggregated (dist.mode), the first
/// `trainers` ranks train and the last `rollout_workers` ranks generate and score groups for them.
struct Roles {
    bool disaggregated = false;
    int trainers = 1;         ///< data-parallel training ranks (the world size when colocated)
    int rollout_workers = 0;  ///< disaggregated: rollout ranks
    bool rollout = false;     ///< this rank is a rollout worker
    /// This rank's role group (the trainers' or the rollout workers'); the world when colocated.
    const dist::Communicator* group = nullptr;
    /// Disaggregated: the trainers' weights to the rollout workers after every RL step (trainer/weight_sync.h).
    const WeightSync* weights = nullptr;
};

struct JobContext {
    const JobConfig& job;
    const dist::Communicator& comm;
    c10::Device device;
    dsa::Model& policy;
    AdamW& optimizer;
    TrainingState& state;
    MetricsLog* metrics = nullptr;
    std::function<void()> checkpoint;
    /// The frozen KL reference (the GRPO stage creates it; checkpoints keep it) and, after a resume, where the
    /// checkpoint holds it.
    std::unique_ptr<dsa::Model> reference;
    std::string reference_dir;
    /// --dump-rollouts: where the GRPO stage writes each step's rollout records ("" = nowhere).
    std::string dump_rollouts;
    /// MoE balance in training (trainer/moe_balance.h); run_stage adds its metrics to every step's. Null: none.
    ExpertBalance* expert_balance = nullptr;
    /// What the stages' training forwards pass as ForwardOptions::balance (null without MoE layers).
    dsa::MoeBalance* balance() const;
    Roles roles;  ///< set by run_job; a default (colocated) one means every rank of `comm` trains
    /// The ranks that train data-parallel: the trainers when disaggregated, else every rank.
    int data_parallel_size() const { return roles.disaggregated ? roles.trainers : comm.size(); }
};

/// Metrics as text lines "key value" (%.17g: NaN and Inf survive, unlike JSON numbers) and back; a malformed line is
/// skipped. What ranks exchange (reduce_metrics, a rollout worker's counters) and checkpoint cursors keep.
std::string metrics_text(const std::map<std::string, double>& m);
std::map<std::string, double> parse_metrics_text(std::string_view text);

/// One step's outcome on this rank.
struct StepOutput {
    std::map<std::string, double> metrics;  ///< this rank's; run_stage averages them over the ranks
    int64_t skipped_steps = 0;              ///< optimizer steps skipped for non-finite gradients
    /// Why the step had nothing to train on, the same on every rank (its update not made); empty: it had. Steps in a
    /// row like it count towards trainer.max_skipped_steps, and the error then gives this reason.
    std::string nothing_to_train;
};

class Stage {
public:
    virtual ~Stage() = default;
    /// The name in metrics.jsonl, console lines and the checkpoint's step counters.
    virtual std::string name() const = 0;
    virtual int64_t total_steps() const = 0;
    /// The counter of completed steps in the checkpoint state: stage_steps[name()] unless overridden.
    virtual int64_t& steps_done(TrainingState& state) { return state.stage_steps[name()]; }
    /// Before the first step this process runs of the stage; `fresh`: no step of it has run yet.
    virtual void begin(bool fresh) { (void)fresh; }
    /// Step `step` (0-based).
    virtual StepOutput step(int64_t step) = 0;
    /// After the metrics were averaged over the ranks: per-rank counts become the global batch's totals; returns
    /// the global token count that tokens_per_s divides.
    virtual double globalize(std::map<std::string, double>& m, int world) const = 0;
    /// The stage's part of the console line: "[name] step i/n  <this><tok/s, memory>  eta h:mm:ss".
    virtual std::string console_text(const std::map<std::string, double>& m) const = 0;
    /// After the step's metrics row and console line, before the checkpoint (evaluations); `done` steps done.
    virtual void after_step(int64_t done) { (void)done; }
    /// This stage's data cursors, for checkpoints (every stage of the job is asked, whichever runs).
    virtual void save_cursors(std::map<std::string, std::string>& cursors) const { (void)cursors; }
    virtual void restore_cursors(const std::map<std::string, std::string>& cursors) { (void)cursors; }
};

/// Runs `stage` from its checkpointed step count to total_steps(). Returns false when a signal stopped the job
/// (after checkpointing); true when the stage is complete.
bool run_stage(Stage& stage, JobContext& ctx);

/// SIGTERM, SIGINT and SIGUSR1 (which mpirun forwards to every rank; scripts/dsrl_mpirun turns SIGTERM/SIGINT to
/// itself into it) set a flag that run_stage polls after every step: the job checkpoints and exits 0.
void install_stop_handlers();

/// Per-rank metrics averaged on every rank (keys a rank lacks, e.g. a domain it did not draw, are averaged over
/// the ranks that have them; NaN and Inf survive), except keys ending in _min / _max: the minimum / maximum over the
/// ranks. Stages turn counts into global totals afterwards (Stage::globalize).
std::map<std::string, double> reduce_metrics(const std::map<std::string, double>& local,
                                             const dist::Communicator& comm);

/// An integer cursor of a checkpoint (`fallback` when absent); a malformed one is a CheckpointError naming it.
int64_t int_cursor(const std::map<std::string, std::string>& cursors, const std::string& name, int64_t fallback);

}  // namespace dsrl::trainer
