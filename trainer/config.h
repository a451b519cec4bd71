// The job configuration of dsrl_train (SPEC §7): the trainer's own sections (run, trainer, domains, sft, dsa)
// and JobConfig, which assembles every library's section (model: dsa/config.h, dist: core/dist/config.h,
// rollout: rollout/config.h, grpo: grpo/config.h, rewards: rewards/config.h), bound to YAML by
// core/config_binder.h. The defaults are the embedded demo job: a tiny DeepSeek-V3.2-style model (every
// mechanism of the full model at toy size), synthetic tasks, 2 CPU ranks.
//
//   JobConfig cfg = dsrl::load_job_config("configs/demo.yaml", {"grpo.beta=0.01"});
//
// The full reference (generated from the bind() functions) is docs/configuration.md; `dsrl_train
// --print-schema` prints it. Unknown keys are always errors.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "agent/config.h"
#include "core/config.h"
#include "core/config_binder.h"
#include "core/dist/config.h"
#include "dsa/config.h"
#include "grpo/config.h"
#include "rewards/config.h"
#include "rollout/config.h"

namespace dsrl {

enum class LrSchedule { kCosine, kConstant };

struct RunConfig {
    std::string name = "demo";
    std::string output_dir = "runs/demo";
    int64_t seed = 1234;
    std::vector<std::string> stages = {"sft", "grpo"};
    std::string log_level = "info";
    std::string device = "auto";  ///< auto | cpu | cuda
    double lock_wait_s = 30.0;    ///< how long a job waits for another job's lock on output_dir
    bool overwrite = false;       ///< a fresh start may delete an earlier job's checkpoints and outputs
};

/// The dtype of the exported model (<run.output_dir>/final).
enum class SaveDType { kFloat32, kBFloat16, kFloat8 };

struct CheckpointConfig {
    std::string dir;  ///< default: <run.output_dir>/checkpoints
    int64_t every_steps = 50;
    int64_t keep_last = 3;
    SaveDType save_dtype = SaveDType::kBFloat16;
};

/// AdamW's constants (trainer/optimizer.h). `trainer.optimizer` holds one (OptimizerConfig::adamw, bound flat:
/// weight_decay, beta1, beta2, eps); the defaults below are the only ones.
struct AdamWOptions {
    double beta1 = 0.9;
    double beta2 = 0.95;
    double eps = 1e-8;
    double weight_decay = 0.1;
};

struct OptimizerConfig {
    double lr = 5e-5;  ///< the tiny demo model's; real models want ~1e-6 (configs/single_gpu.yaml)
    double min_lr_ratio = 0.1;
    AdamWOptions adamw;
    int64_t warmup_steps = 5;
    LrSchedule schedule = LrSchedule::kCosine;
    double grad_clip = 1.0;
};

struct TrainerConfig {
    int64_t total_steps = 100;
    int64_t micro_batch_size = 8;
    int64_t zero_stage = 0;  ///< sharded optimizer state over the data-parallel ranks (trainer/optimizer.h)
    int64_t log_every = 1;
    int64_t max_skipped_steps =
        10;  ///< consecutive steps with a skipped (non-finite) update that stop the job; 0: never
    OptimizerConfig optimizer;
    CheckpointConfig checkpoint;
    std::string metrics_file = "metrics.jsonl";
    bool tensorboard = true;
    bool autocast = true;       ///< bf16 autocast on CUDA (fp32 parameters); no effect on CPU
    int64_t eval_prompts = 64;  ///< per domain; 0 disables evaluation
    int64_t eval_every = 25;    ///< RL steps between evaluations; 0: before and after the grpo stage only
};

struct DomainConfig {
    std::string name;
    double weight = 1.0;
    std::string data;       ///< JSONL file, or synthetic:<task>
    std::string eval_data;  ///< held-out prompts for accuracy; empty: `data` (another stream when synthetic)
    double beta = 0.0;      ///< KL coefficient for this domain
    std::vector<RewardTermConfig> rewards;
    EnvironmentConfig environment;  ///< set: an agent domain (multi-turn tool use; its reward is the verify)
};

struct SftConfig {
    std::string data;  ///< empty: the domains' data mixed by weight
    int64_t steps = 1000;
    int64_t max_seq_len = 256;
    double lr = 1e-3;
};

/// The DSA training stages (SPEC §3, docs/dsa_training.md): indexer_warmup and sparse_train.
struct DsaTrainConfig {
    std::string data = "synthetic:retrieval";  ///< token stream: synthetic:retrieval?... or a JSONL {"text"} file
    int64_t seq_len = 64;
    int64_t batch_size = 8;      ///< sequences per rank and step
    int64_t dense_lm_steps = 0;  ///< dense LM steps before the warm-up (tests/experiments from scratch)
    double dense_lm_lr = 1e-3;
    int64_t warmup_steps = 200;  ///< steps of the indexer_warmup stage
    int64_t sparse_steps = 200;  ///< steps of the sparse_train stage
    double indexer_lr = 1e-3;    ///< SPEC §3
    double lr = 1e-4;            ///< the rest of the model in sparse_train (tiny model; real models 7.3e-6)
    int64_t query_tile = 128;
    int64_t eval_batches = 4;
};

/// Expert balance in training (SPEC §2.4; trainer/moe_balance.h). Both off by default: post-training usually keeps
/// the pre-trained routing bias (DeepSeek-V3 turned its bias update off for the last 500B pre-training tokens).
struct MoeTrainConfig {
    double bias_update_speed = 0.0;   ///< γ of the aux-loss-free bias update after each optimizer step (0 = off)
    double seq_aux_loss_alpha = 0.0;  ///< α of the sequence-wise balance loss (0 = off; DeepSeek-V3: 1e-4)
};

struct JobConfig {
    RunConfig run;
    ModelConfig model;
    DistConfig dist;
    TrainerConfig trainer;
    RolloutConfig rollout;
    GrpoConfig grpo;
    RewardsConfig rewards;
    std::vector<DomainConfig> domains = default_domains();
    SftConfig sft;
    DsaTrainConfig dsa;
    MoeTrainConfig moe;

    static std::vector<DomainConfig> default_domains();
};

void bind(config::Binder& b, RunConfig& c);
void bind(config::Binder& b, CheckpointConfig& c);
void bind(config::Binder& b, OptimizerConfig& c);
void bind(config::Binder& b, TrainerConfig& c);
void bind(config::Binder& b, DomainConfig& c);
void bind(config::Binder& b, SftConfig& c);
void bind(config::Binder& b, DsaTrainConfig& c);
void bind(config::Binder& b, MoeTrainConfig& c);
void bind(config::Binder& b, JobConfig& c);

/// Every key path of the job schema (for "did you mean" across sections).
const std::vector<std::string>& job_config_paths();

/// Loads a job config: the file (empty path: the embedded defaults), then each `key=value` override in
/// order. Throws dsrl::ConfigError with a one-line message naming file:line, key and value.
JobConfig load_job_config(const std::string& path, const std::vector<std::string>& overrides);

/// The job config as resolved YAML.
std::string to_yaml(JobConfig& cfg);

}  // namespace dsrl
