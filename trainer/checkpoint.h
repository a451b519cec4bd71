// Training checkpoints (SPEC §7): everything an exact resume needs, written so that a crash at any moment
// leaves either the previous checkpoint or the new one, never a half-written one under its final name.
//
//   <root>/step-00000120/model/          the policy in the HF layout, at its training dtype (exact resume)
//                        optimizer.safetensors   AdamW moments (ZeRO 0), or with trainer.zero_stage 1/2
//                        optimizer.rank<r>.safetensors   each rank's shard; by parameter name either way, so a
//                                        checkpoint resumes at any ZeRO stage
//                        state.json      step, policy version, skipped steps, world size, the resolved config
//                        rng.rank<r>.bin each rank's generator state
//                        cursors.rank<r>.json  each rank's data cursors (every rank draws the whole global batch,
//                                        so they agree; a rank of a larger job resuming reads rank 0's)
//                        reference/      the frozen KL reference of the GRPO stage, when there is one
//                        manifest.json   written last: size and CRC-32C of every other file (verified on resume)
//   <root>/latest                        "step-00000120", replaced atomically after the rename
//
// Writing: rank 0 prepares <root>/.step-00000120.tmp, every rank writes its own files into it (so <root>
// must be on a file system all ranks share), then rank 0 fsyncs, renames it into place, updates `latest`
// and keeps the newest `keep_last`. Leftover .tmp directories of an interrupted save are removed by the
// job start (trainer/run_dir.h, under the run lock) and by the next save, and ignored by resume.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/dist/communicator.h"
#include "dsa/model.h"
#include "trainer/optimizer.h"

namespace dsrl::trainer {

struct TrainingState {
    int64_t step = 0;  ///< RL steps completed
    /// Steps completed by the other stages: "sft", "indexer_warmup", "sparse_train".
    std::map<std::string, int64_t> stage_steps;
    int64_t policy_version = 0;
    int64_t skipped_steps = 0;                   ///< steps skipped for non-finite loss or gradients
    std::map<std::string, std::string> cursors;  ///< this rank's data positions (opaque strings per source)
    int world_size = 1;
    int rollout_ranks = 0;    ///< dist.rollout_ranks of a disaggregated job (0: colocated)
    std::string config_yaml;  ///< the resolved job config
    /// Not saved: the world size of the checkpoint this job resumed from (0: a fresh start). Another than
    /// world_size means the job was resharded (load_checkpoint); stages whose data layout depends on it check it.
    int resumed_world_size = 0;
    /// Steps of the whole job (every stage's): checkpoint directories are numbered by it.
    int64_t job_step() const {
        int64_t n = step;
        for (const auto& [stage, k] : stage_steps) n += k;
        return n;
    }
};

/// Name of the directory of job step `step` (TrainingState::job_step): "step-00000120".
std::string step_dir_name(int64_t step);
/// The names of the step directories under `root` ("step-NNNNNNNN"), oldest first; none when `root` is missing.
std::vector<std::string> step_dirs(const std::string& root);

/// Throws an Error naming the first tensor with NaN or infinite values of `model` and `what` was not written;
/// collective over `comm` (null: one process). `holds` false: this rank holds no weights to check (a rollout worker).
/// Every checkpoint and the final export pass it first: a diverged policy is never written as if it were good.
void check_finite_weights(const dsa::Model& model, bool holds, const dist::Communicator* comm, const std::string& what);

/// Saves a checkpoint collectively (every rank of `comm` calls it; `comm` may be null for one process).
/// `rng_state` is this rank's generator state. `trains` false: a rollout worker of a disaggregated job, which writes
/// its generator state and cursors but no optimizer state (it holds none; the trainers' shards are the optimizer's)
/// and no model files (the trainers write the model). Trainers must be ranks [0, T) of `comm`. Returns the final
/// directory.
std::string save_checkpoint(const std::string& root,
                            const dsa::Model& model,
                            const AdamW& optimizer,
                            const TrainingState& state,
                            const at::Tensor& rng_state,
                            int64_t keep_last,
                            const dist::Communicator* comm,
                            const dsa::Model* reference = nullptr,
                            bool trains = true);

/// `--resume auto|PATH`, collective over `comm` (null: one process). Every candidate is verified against its
/// manifest (verify_checkpoint) before it is chosen. auto: <root>/latest's checkpoint, or when that is corrupt or
/// incomplete the newest other one that verifies (each skipped one is a warning naming it and its bad file); "" when
/// there is no checkpoint (a fresh start); a CheckpointError when checkpoints exist but none verifies. PATH: a
/// complete checkpoint that verifies, else a CheckpointError naming the path and the bad file.
std::string resolve_resume(const std::string& root, const std::string& spec, const dist::Communicator* comm = nullptr);

/// Checks `dir` against its manifest.json (every listed file present, with its size and CRC-32C): "" when it
/// verifies, else what is wrong, naming the file. Collective over `comm` (the ranks hash a share each; null: one
/// process). A checkpoint written before manifests existed (state.json without "manifest") is accepted with
/// `*legacy` set; one whose manifest is missing or corrupt is not.
std::string verify_checkpoint(const std::string& dir, const dist::Communicator* comm, bool* legacy = nullptr);

struct LoadedCheckpoint {
    TrainingState state;
    std::map<std::string, at::Tensor> optimizer;  ///< for AdamW::load_state
    at::Tensor rng_state;                         ///< this rank's
    std::string reference_dir;                    ///< the frozen reference model (HF layout), "" if none
};

/// Reads `dir` for `rank` and loads the model weights into `model`. A checkpoint of another model config is refused
/// with a CheckpointError saying which. A checkpoint of another world size is resharded (docs/distributed.md,
/// "Resuming on another layout"): the model and the optimizer state are stored by name and split by this job's
/// layout; a rank the writing job did not have takes rank 0's data cursors (they agree: every rank draws the whole
/// global batch) and keeps its freshly seeded generator. A disaggregated job — this one (`rollout_ranks` > 0) or
/// the writer — resumes only on the writer's layout (its rollout workers' queued groups belong to their trainer
/// ranks): anything else is a CheckpointError naming both layouts.
LoadedCheckpoint load_checkpoint(
    const std::string& dir, dsa::Model& model, int world_size, int rank, int rollout_ranks = 0);

}  // namespace dsrl::trainer
