// The job runner of dsrl_train (SPEC §7): builds the model, reference, tokenizer, optimizer and domains,
// resumes from a checkpoint when asked, and runs the configured stages (`sft`, `grpo`) on every rank,
// printing one line per step on rank 0, appending to metrics.jsonl, checkpointing every N steps, at the end
// and after SIGTERM/SIGINT (then exiting 0); a completed job exports the policy to <run.output_dir>/final (HF
// layout at trainer.checkpoint.save_dtype, with the tokenizer files of model.path).
#pragma once

#include <string>

#include <c10/core/ScalarType.h>

#include "core/dist/communicator.h"
#include "trainer/config.h"

namespace dsrl::trainer {

struct RunOptions {
    std::string resume;          ///< "", "auto" or a checkpoint directory
    std::string config_yaml;     ///< the resolved config, stored in checkpoints
    bool handle_signals = true;  ///< SIGTERM/SIGINT: finish the step, checkpoint, exit 0
    std::string dump_rollouts;   ///< --dump-rollouts: directory for every GRPO step's records ("" = none)
};

/// Start-up checks beyond the YAML schema, before any compute (dsrl_train runs them before MPI starts): the
/// stages and options this build can run, every domain's reward modules (plugins loaded first) and their
/// params, and every data source (domains' data and eval_data, sft.data) opens and parses. Throws
/// ConfigError / DataError naming the key or file.
void check_job(const JobConfig& job);
/// Collective: a ConfigError on every rank when a rank's resolved configuration (`config_yaml`) differs from rank 0's,
/// naming the rank and the first differing line.
void check_same_job(const std::string& config_yaml, const dist::Communicator& comm);

/// Where a completed job exports the trained policy, under run.output_dir.
inline constexpr const char* kFinalModelDir = "final";

/// trainer.checkpoint.save_dtype as the dtype save_hf_checkpoint writes (float8: at::kFloat8_e4m3fn).
at::ScalarType save_scalar_type(SaveDType d);

/// Runs the job; every rank of `comm` calls it. Returns the process exit code.
int run_job(const JobConfig& job, const RunOptions& opt, const dist::Communicator& comm);

}  // namespace dsrl::trainer
