// The job configuration of dsrl_train (SPEC §7): typed structs with in-class defaults, bound to YAML by
// core/config_binder.h. The defaults are the embedded demo job: a tiny DeepSeek-V3.2-style model (every
// mechanism of the full model at toy size), synthetic tasks, 2 CPU ranks.
//
//   JobConfig cfg = dsrl::load_job_config("configs/demo.yaml", {"grpo.beta=0.01"});
//
// Field names in `model` are those of the Hugging Face config.json of deepseek-ai/DeepSeek-V3.2. The full
// reference (generated from the bind() functions) is docs/configuration.md; `dsrl_train --print-schema` prints it.
// Sections grow with the issues that need them; unknown keys are always errors.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/config_binder.h"

namespace dsrl {

enum class AdvNorm { kNone, kStd };
enum class LossAgg { kSeqMean, kTokenMean };
enum class LrSchedule { kCosine, kConstant };
enum class DistMode { kColocated, kDisaggregated };
enum class DType { kFloat32, kBFloat16 };
enum class Impl { kAuto, kReference, kCuda };
enum class LogpOld { kRecorded, kRecompute };

struct RunConfig {
    std::string name = "demo";
    std::string output_dir = "runs/demo";
    int64_t seed = 1234;
    std::vector<std::string> stages = {"sft", "grpo"};
    std::string log_level = "info";
    std::string device = "auto";  ///< auto | cpu | cuda
    double lock_wait_s = 30.0;     ///< how long a job waits for another job's lock on output_dir
    bool overwrite = false;        ///< a fresh start may delete an earlier job's checkpoints and outputs
};

struct RopeScalingConfig {
    std::string type = "yarn";
    double factor = 40.0;
    int64_t original_max_position_embeddings = 4096;
    double beta_fast = 32.0;
    double beta_slow = 1.0;
    double mscale = 1.0;
    double mscale_all_dim = 1.0;
};

struct ModelConfig {
    std::string path;  ///< HF checkpoint directory; empty: random init from the fields below
    DType dtype = DType::kFloat32;
    Impl impl = Impl::kAuto;
    int64_t vocab_size = 320;
    int64_t hidden_size = 64;
    int64_t intermediate_size = 128;
    int64_t moe_intermediate_size = 32;
    int64_t num_hidden_layers = 3;
    int64_t first_k_dense_replace = 1;
    int64_t num_attention_heads = 4;
    int64_t q_lora_rank = 32;
    int64_t kv_lora_rank = 32;
    int64_t qk_nope_head_dim = 16;
    int64_t qk_rope_head_dim = 8;
    int64_t v_head_dim = 16;
    int64_t n_routed_experts = 8;
    int64_t n_shared_experts = 1;
    int64_t num_experts_per_tok = 2;
    int64_t n_group = 2;
    int64_t topk_group = 1;
    double routed_scaling_factor = 2.5;
    bool norm_topk_prob = true;
    int64_t index_n_heads = 4;
    int64_t index_head_dim = 16;
    int64_t index_topk = 32;
    double rms_norm_eps = 1e-6;
    double rope_theta = 10000.0;
    int64_t max_position_embeddings = 1024;
    RopeScalingConfig rope_scaling;
    double initializer_range = 0.02;
    bool tie_word_embeddings = false;
    int64_t bos_token_id = 0;
    int64_t eos_token_id = 1;
};

struct DistConfig {
    DistMode mode = DistMode::kColocated;
    int64_t timeout_s = 600;
    int64_t expert_parallel_size = 1;
    int64_t rollout_ranks = 0;  ///< disaggregated: ranks [0, rollout_ranks) roll out, the rest train
    int64_t max_policy_lag = 1;
};

struct CheckpointConfig {
    std::string dir;  ///< default: <run.output_dir>/checkpoints
    int64_t every_steps = 50;
    int64_t keep_last = 3;
    DType save_dtype = DType::kBFloat16;
};

struct OptimizerConfig {
    double lr = 5e-5;  ///< the tiny demo model's; real models want ~1e-6 (configs/single_gpu.yaml)
    double min_lr_ratio = 0.1;
    double weight_decay = 0.1;
    double beta1 = 0.9;
    double beta2 = 0.95;
    double eps = 1e-8;
    int64_t warmup_steps = 5;
    LrSchedule schedule = LrSchedule::kCosine;
    double grad_clip = 1.0;
};

struct TrainerConfig {
    int64_t total_steps = 100;
    int64_t micro_batch_size = 8;
    int64_t log_every = 1;
    OptimizerConfig optimizer;
    CheckpointConfig checkpoint;
    std::string metrics_file = "metrics.jsonl";
    bool tensorboard = true;
    bool autocast = true;       ///< bf16 autocast on CUDA (fp32 parameters); no effect on CPU
    int64_t eval_prompts = 64;  ///< per domain; 0 disables evaluation
    int64_t eval_every = 25;     ///< RL steps between evaluations; 0: before and after the grpo stage only
};

struct RolloutConfig {
    int64_t group_size = 8;
    int64_t prompts_per_step = 8;
    int64_t max_new_tokens = 24;
    double temperature = 1.0;
    double top_p = 1.0;
    int64_t top_k = 0;  ///< 0 disables top-k truncation
    double min_p = 0.0;
    int64_t max_batch_size = 64;
    std::vector<std::string> stop;
};

struct GrpoConfig {
    AdvNorm adv_norm = AdvNorm::kNone;
    LossAgg loss_agg = LossAgg::kSeqMean;
    double eps_low = 0.2;
    double eps_high = 0.2;
    double delta = 0.1;
    bool off_policy_mask = true;
    bool keep_routing = true;
    bool keep_sampling_mask = true;
    bool ref_keep_routing = true;
    bool ref_keep_sampling_mask = true;
    LogpOld logp_old = LogpOld::kRecorded;
    int64_t updates_per_batch = 1;
    int64_t mini_batches = 1;
    int64_t logp_chunk_tokens = 1024;
    bool ref_on_cpu = false;
};

struct RewardTermConfig {
    std::string module;
    double weight = 1.0;
    std::map<std::string, std::string> params;
};

struct DomainConfig {
    std::string name;
    double weight = 1.0;
    std::string data;  ///< JSONL file, or synthetic:<task>
    std::string eval_data;  ///< held-out prompts for accuracy; empty: `data` (another stream when synthetic)
    double beta = 0.0;  ///< KL coefficient for this domain
    std::vector<RewardTermConfig> rewards;
};

struct RewardsConfig {
    std::vector<std::string> plugins;
    double timeout_s = 30.0;
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
    int64_t batch_size = 8;          ///< sequences per rank and step
    int64_t dense_lm_steps = 0;      ///< dense LM steps before the warm-up (tests/experiments from scratch)
    double dense_lm_lr = 1e-3;
    int64_t warmup_steps = 200;      ///< steps of the indexer_warmup stage
    int64_t sparse_steps = 200;      ///< steps of the sparse_train stage
    double indexer_lr = 1e-3;        ///< SPEC §3
    double lr = 1e-4;                ///< the rest of the model in sparse_train (tiny model; real models 7.3e-6)
    int64_t query_tile = 128;
    int64_t eval_batches = 4;
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

    static std::vector<DomainConfig> default_domains();
};

void bind(config::Binder& b, RunConfig& c);
void bind(config::Binder& b, RopeScalingConfig& c);
void bind(config::Binder& b, ModelConfig& c);
void bind(config::Binder& b, DistConfig& c);
void bind(config::Binder& b, CheckpointConfig& c);
void bind(config::Binder& b, OptimizerConfig& c);
void bind(config::Binder& b, TrainerConfig& c);
void bind(config::Binder& b, RolloutConfig& c);
void bind(config::Binder& b, GrpoConfig& c);
void bind(config::Binder& b, RewardTermConfig& c);
void bind(config::Binder& b, DomainConfig& c);
void bind(config::Binder& b, RewardsConfig& c);
void bind(config::Binder& b, SftConfig& c);
void bind(config::Binder& b, DsaTrainConfig& c);
void bind(config::Binder& b, JobConfig& c);

/// Every key path of the job schema (for "did you mean" across sections).
const std::vector<std::string>& job_config_paths();

/// Loads a job config: the file (empty path: the embedded defaults), then each `key=value` override in
/// order. Throws dsrl::ConfigError with a one-line message naming file:line, key and value.
JobConfig load_job_config(const std::string& path, const std::vector<std::string>& overrides);

/// The job config as resolved YAML.
std::string to_yaml(JobConfig& cfg);

}  // namespace dsrl
