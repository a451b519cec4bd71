#include "core/config.h"

#include <set>

#include "core/env.h"

namespace dsrl {

using config::Binder;
using config::Rule;

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
bool reading(Binder& b) { return b.mode() == Binder::Mode::kRead; }
}  // namespace

void bind(Binder& b, RunConfig& c) {
    b.field("name", c.name, {.doc = "Run name, shown in logs and metrics."});
    b.field("output_dir", c.output_dir, {.doc = "Directory for checkpoints, metrics.jsonl and TensorBoard events."});
    b.field("seed", c.seed, {.doc = "Base seed; every rank derives its own streams from it.", .min = 0});
    b.field("stages", c.stages,
            {.doc = "Stages run in order.", .choices = {"sft", "indexer_warmup", "sparse_train", "grpo"}});
    b.field("log_level", c.log_level, {.doc = "Console log level (the environment variable DSRL_LOG_LEVEL, when set, wins).", .choices = {"debug", "info", "warn", "error"}});
    b.field("device", c.device,
            {.doc = "auto: the GPU of the local rank when CUDA is available, else CPU.",
             .choices = {"auto", "cpu", "cuda"}});
    b.field("lock_wait_s", c.lock_wait_s,
            {.doc = "One job per run directory: a job whose output_dir (or checkpoint dir) is locked by another "
                    "running job waits this many seconds for it to end, then refuses to start, naming the holder.",
             .min = 0.0});
    b.field("overwrite", c.overwrite,
            {.doc = "A fresh start (no --resume) in a run directory holding an earlier job's checkpoints is refused "
                    "unless this is true; then that job's checkpoints, metrics file, eval.json and tb/ are deleted "
                    "first."});
    if (reading(b) && c.stages.empty()) b.fail("stages", "at least one stage is required");
}

void bind(Binder& b, RopeScalingConfig& c) {
    b.field("type", c.type, {.doc = "RoPE scaling: yarn (DeepSeek-V3.2) or none.", .choices = {"yarn", "none"}});
    b.field("factor", c.factor, {.doc = "YaRN context extension factor.", .min = 1.0});
    b.field("original_max_position_embeddings", c.original_max_position_embeddings,
            {.doc = "Context length before YaRN extension.", .min = 1});
    b.field("beta_fast", c.beta_fast, {.doc = "YaRN ramp: fast boundary (rotations).", .min = 0.0});
    b.field("beta_slow", c.beta_slow, {.doc = "YaRN ramp: slow boundary (rotations).", .min = 0.0});
    b.field("mscale", c.mscale, {.doc = "YaRN attention-temperature multiplier.", .min = 0.0});
    b.field("mscale_all_dim", c.mscale_all_dim, {.doc = "YaRN mscale applied to the softmax scale.", .min = 0.0});
}

void bind(Binder& b, ModelConfig& c) {
    b.field("path", c.path, {.doc = "Hugging Face checkpoint directory (config.json + safetensors). Empty: random "
                                    "init from the fields below."});
    b.choice("dtype", c.dtype, {{"float32", DType::kFloat32}, {"bfloat16", DType::kBFloat16}},
             {.doc = "Parameter dtype (float32: fp32 master weights, with trainer.autocast on GPU; bfloat16: bf16 parameters)."});
    b.choice("impl", c.impl, {{"auto", Impl::kAuto}, {"reference", Impl::kReference}, {"cuda", Impl::kCuda}},
             {.doc = "DSA kernels: auto (CUDA kernels for CUDA bf16 inputs of the full-size shapes, else ATen), "
                     "reference (ATen always), cuda (the kernels or an error); docs/kernels.md."});
    const Rule pos{.min = 1};
    auto pos_doc = [&](const char* doc) {
        Rule r = pos;
        r.doc = doc;
        return r;
    };
    b.field("vocab_size", c.vocab_size, pos_doc("Vocabulary size."));
    b.field("hidden_size", c.hidden_size, pos_doc("Model width."));
    b.field("intermediate_size", c.intermediate_size, pos_doc("Dense SwiGLU width (first_k_dense_replace layers)."));
    b.field("moe_intermediate_size", c.moe_intermediate_size, pos_doc("Width of each routed/shared expert."));
    b.field("num_hidden_layers", c.num_hidden_layers, pos_doc("Decoder layers (the MTP layer is not counted)."));
    b.field("first_k_dense_replace", c.first_k_dense_replace,
            {.doc = "Layers [0, k) use a dense MLP; the rest are MoE.", .min = 0});
    b.field("num_attention_heads", c.num_attention_heads, pos_doc("MLA heads."));
    b.field("q_lora_rank", c.q_lora_rank, pos_doc("Query latent rank."));
    b.field("kv_lora_rank", c.kv_lora_rank, pos_doc("Key/value latent rank (c_kv)."));
    b.field("qk_nope_head_dim", c.qk_nope_head_dim, pos_doc("Per-head query/key dims without RoPE."));
    b.field("qk_rope_head_dim", c.qk_rope_head_dim, pos_doc("Per-head RoPE dims (shared k_pe head); even."));
    b.field("v_head_dim", c.v_head_dim, pos_doc("Per-head value dims."));
    b.field("n_routed_experts", c.n_routed_experts, pos_doc("Routed experts per MoE layer."));
    b.field("n_shared_experts", c.n_shared_experts, {.doc = "Shared experts per MoE layer.", .min = 0});
    b.field("num_experts_per_tok", c.num_experts_per_tok, pos_doc("Routed experts per token (top-k)."));
    b.field("n_group", c.n_group, pos_doc("Expert groups for group-limited routing."));
    b.field("topk_group", c.topk_group, pos_doc("Groups kept per token."));
    b.field("routed_scaling_factor", c.routed_scaling_factor,
            {.doc = "Multiplier of the routed experts' weights.", .min = 0.0, .min_open = true});
    b.field("norm_topk_prob", c.norm_topk_prob, {.doc = "Normalize the selected experts' scores to sum 1."});
    b.field("index_n_heads", c.index_n_heads, pos_doc("Lightning indexer heads H_I."));
    b.field("index_head_dim", c.index_head_dim, pos_doc("Lightning indexer head dim d_I (>= qk_rope_head_dim)."));
    b.field("index_topk", c.index_topk, pos_doc("Keys each query attends to under DSA."));
    b.field("rms_norm_eps", c.rms_norm_eps, {.doc = "RMSNorm epsilon.", .min = 0.0, .min_open = true});
    b.field("rope_theta", c.rope_theta, {.doc = "RoPE base.", .min = 0.0, .min_open = true});
    b.field("max_position_embeddings", c.max_position_embeddings, pos_doc("Maximum context length."));
    b.section("rope_scaling", c.rope_scaling, "YaRN RoPE scaling (as in DeepSeek-V3.2's config.json).");
    b.field("initializer_range", c.initializer_range, {.doc = "Std of the random init.", .min = 0.0});
    b.field("tie_word_embeddings", c.tie_word_embeddings, {.doc = "Share embed_tokens and lm_head."});
    b.field("bos_token_id", c.bos_token_id, {.doc = "Beginning-of-sequence token.", .min = 0});
    b.field("eos_token_id", c.eos_token_id, {.doc = "End-of-sequence token.", .min = 0});
    if (!reading(b)) return;
    if (c.topk_group > c.n_group) {
        b.fail("topk_group", absl::StrCat("topk_group (", c.topk_group, ") must not exceed n_group (", c.n_group, ")"));
    }
    if (c.n_routed_experts % c.n_group != 0) {
        b.fail("n_group", absl::StrCat("n_routed_experts (", c.n_routed_experts, ") must be divisible by n_group (",
                                       c.n_group, ")"));
    }
    if (c.num_experts_per_tok > c.topk_group * (c.n_routed_experts / c.n_group)) {
        b.fail("num_experts_per_tok",
               absl::StrCat("num_experts_per_tok (", c.num_experts_per_tok, ") exceeds the experts in topk_group (",
                            c.topk_group, ") groups of ", c.n_routed_experts / c.n_group));
    }
    if (c.n_routed_experts / c.n_group < 2 && c.n_group > 1) {
        b.fail("n_group", "group-limited routing scores each group by its top-2 experts: need >= 2 experts per group");
    }
    if (c.qk_rope_head_dim % 2 != 0) b.fail("qk_rope_head_dim", absl::StrCat("must be even, got ", c.qk_rope_head_dim));
    if (c.index_head_dim < c.qk_rope_head_dim) {
        b.fail("index_head_dim", absl::StrCat("index_head_dim (", c.index_head_dim, ") must be >= qk_rope_head_dim (",
                                              c.qk_rope_head_dim, "): the indexer's rope part comes first"));
    }
    if (c.first_k_dense_replace > c.num_hidden_layers) {
        b.fail("first_k_dense_replace", absl::StrCat("first_k_dense_replace (", c.first_k_dense_replace,
                                                     ") exceeds num_hidden_layers (", c.num_hidden_layers, ")"));
    }
    if (c.bos_token_id >= c.vocab_size || c.eos_token_id >= c.vocab_size) {
        b.fail("eos_token_id", absl::StrCat("bos/eos token ids must be < vocab_size (", c.vocab_size, ")"));
    }
}

void bind(Binder& b, DistConfig& c) {
    b.choice("mode", c.mode, {{"colocated", DistMode::kColocated}, {"disaggregated", DistMode::kDisaggregated}},
             {.doc = "colocated: every rank rolls out then trains; disaggregated: rollout ranks stream groups to "
                     "trainer ranks."});
    b.field("timeout_s", c.timeout_s,
            {.doc = "A collective stuck this long aborts the job, naming the operation and group.", .min = 1});
    b.field("expert_parallel_size", c.expert_parallel_size, {.doc = "Ranks sharing one MoE layer's experts.", .min = 1});
    b.field("rollout_ranks", c.rollout_ranks, {.doc = "disaggregated: the first N ranks are rollout workers.", .min = 0});
    b.field("max_policy_lag", c.max_policy_lag,
            {.doc = "disaggregated: maximum policy versions a sample may lag the trainer.", .min = 0});
    if (reading(b) && c.mode == DistMode::kColocated && c.rollout_ranks != 0) {
        b.fail("rollout_ranks", "rollout_ranks is only meaningful with mode: disaggregated");
    }
}

void bind(Binder& b, CheckpointConfig& c) {
    b.field("dir", c.dir, {.doc = "Checkpoint directory (default: <run.output_dir>/checkpoints)."});
    b.field("every_steps", c.every_steps, {.doc = "Save every N steps (0: only at the end and on SIGTERM).", .min = 0});
    b.field("keep_last", c.keep_last, {.doc = "Checkpoints kept; older ones are deleted.", .min = 1});
    b.choice("save_dtype", c.save_dtype, {{"float32", DType::kFloat32}, {"bfloat16", DType::kBFloat16}},
             {.doc = "Dtype of the saved HF weights (optimizer state is always fp32)."});
}

void bind(Binder& b, OptimizerConfig& c) {
    b.field("lr", c.lr, {.doc = "Peak learning rate (AdamW).", .min = 0.0});
    b.field("min_lr_ratio", c.min_lr_ratio, {.doc = "Cosine floor as a fraction of lr.", .min = 0.0, .max = 1.0});
    b.field("weight_decay", c.weight_decay, {.doc = "Decoupled weight decay.", .min = 0.0});
    b.field("beta1", c.beta1, {.doc = "AdamW beta1.", .min = 0.0, .max = 1.0, .max_open = true});
    b.field("beta2", c.beta2, {.doc = "AdamW beta2.", .min = 0.0, .max = 1.0, .max_open = true});
    b.field("eps", c.eps, {.doc = "AdamW epsilon.", .min = 0.0, .min_open = true});
    b.field("warmup_steps", c.warmup_steps, {.doc = "Linear warm-up steps.", .min = 0});
    b.choice("schedule", c.schedule, {{"cosine", LrSchedule::kCosine}, {"constant", LrSchedule::kConstant}},
             {.doc = "Learning-rate schedule after warm-up."});
    b.field("grad_clip", c.grad_clip, {.doc = "Clip gradients to this global L2 norm (0: off).", .min = 0.0});
}

void bind(Binder& b, TrainerConfig& c) {
    b.field("total_steps", c.total_steps, {.doc = "Optimizer steps of the RL stage.", .min = 1});
    b.field("micro_batch_size", c.micro_batch_size, {.doc = "Sequences per rank per SFT step.", .min = 1});
    b.field("log_every", c.log_every, {.doc = "Console line every N steps.", .min = 1});
    b.section("optimizer", c.optimizer, "AdamW and the learning-rate schedule.");
    b.section("checkpoint", c.checkpoint, "Atomic checkpoints (SPEC §7).");
    b.field("metrics_file", c.metrics_file, {.doc = "JSON-lines metrics file, relative to run.output_dir."});
    b.field("tensorboard", c.tensorboard, {.doc = "Write TensorBoard event files to <run.output_dir>/tb."});
    b.field("autocast", c.autocast,
            {.doc = "bf16 autocast on CUDA: fp32 parameters, bf16 matmuls (router and indexer weights stay fp32). No effect on CPU."});
    b.field("eval_prompts", c.eval_prompts,
            {.doc = "Held-out prompts per domain for greedy accuracy (trainer/evaluate.h); 0 disables.", .min = 0});
    b.field("eval_every", c.eval_every,
            {.doc = "Evaluate every N RL steps; 0: only before and after the grpo stage.", .min = 0});
}

void bind(Binder& b, RolloutConfig& c) {
    b.field("group_size", c.group_size, {.doc = "Samples per prompt (G).", .min = 1});
    b.field("prompts_per_step", c.prompts_per_step, {.doc = "Prompts per RL step, per data-parallel rank.", .min = 1});
    b.field("max_new_tokens", c.max_new_tokens, {.doc = "Response length limit.", .min = 1});
    b.field("temperature", c.temperature, {.doc = "Sampling temperature (0: greedy).", .min = 0.0});
    b.field("top_p", c.top_p, {.doc = "Nucleus truncation.", .min = 0.0, .max = 1.0, .min_open = true});
    b.field("top_k", c.top_k, {.doc = "Top-k truncation (0: off).", .min = 0});
    b.field("min_p", c.min_p, {.doc = "Min-p truncation relative to the top probability (0: off).", .min = 0.0,
                               .max = 1.0, .max_open = true});
    b.field("max_batch_size", c.max_batch_size, {.doc = "Sequences decoded together.", .min = 1});
    b.field("stop", c.stop, {.doc = "Stop strings (the response ends after the first match)."});
}

void bind(Binder& b, GrpoConfig& c) {
    b.choice("adv_norm", c.adv_norm, {{"none", AdvNorm::kNone}, {"std", AdvNorm::kStd}},
             {.doc = "none: A = R - mean (DeepSeek-V3.2); std: also divide by the group std."});
    b.choice("loss_agg", c.loss_agg, {{"seq_mean", LossAgg::kSeqMean}, {"token_mean", LossAgg::kTokenMean}},
             {.doc = "seq_mean: token mean per sequence, then mean over sequences (SPEC §5)."});
    b.field("eps_low", c.eps_low, {.doc = "Clip range below 1.", .min = 0.0, .max = 1.0, .max_open = true});
    b.field("eps_high", c.eps_high, {.doc = "Clip range above 1.", .min = 0.0});
    b.field("delta", c.delta, {.doc = "Off-policy sequence masking threshold on mean log(pi_old/pi_theta).", .min = 0.0});
    b.field("off_policy_mask", c.off_policy_mask, {.doc = "Enable off-policy sequence masking."});
    b.field("keep_routing", c.keep_routing, {.doc = "Policy forwards replay the recorded MoE routes."});
    b.field("keep_sampling_mask", c.keep_sampling_mask,
            {.doc = "Policy log-probs renormalized over the recorded top-p/top-k kept set."});
    b.field("ref_keep_routing", c.ref_keep_routing, {.doc = "Reference forwards replay the recorded routes."});
    b.field("ref_keep_sampling_mask", c.ref_keep_sampling_mask, {.doc = "Apply the kept set to pi_ref too."});
    b.choice("logp_old", c.logp_old, {{"recorded", LogpOld::kRecorded}, {"recompute", LogpOld::kRecompute}},
             {.doc = "pi_old from the rollout record, or recomputed by a forward before the updates."});
    b.field("updates_per_batch", c.updates_per_batch, {.doc = "Passes over each rollout batch.", .min = 1});
    b.field("mini_batches", c.mini_batches, {.doc = "Optimizer steps per pass.", .min = 1});
    b.field("logp_chunk_tokens", c.logp_chunk_tokens, {.doc = "Tokens per chunk when computing log-probs.", .min = 1});
    b.field("ref_on_cpu", c.ref_on_cpu, {.doc = "Keep the frozen reference model on the CPU."});
}

void bind(Binder& b, RewardTermConfig& c) {
    b.field("module", c.module, {.doc = "Registered reward module name.", .required = true});
    b.field("weight", c.weight, {.doc = "Weight in the domain's weighted sum."});
    b.field("params", c.params, {.doc = "Module-specific parameters."});
}

void bind(Binder& b, DomainConfig& c) {
    b.field("name", c.name, {.doc = "Domain name (reasoning, agent, alignment, ...).", .required = true});
    b.field("weight", c.weight, {.doc = "Sampling weight in the mixture.", .min = 0.0});
    b.field("data", c.data, {.doc = "Prompt JSONL file, or synthetic:<task>.", .required = true});
    b.field("eval_data", c.eval_data,
            {.doc = "Held-out prompts for accuracy; empty: data (synthetic tasks: another seed)."});
    b.field("beta", c.beta, {.doc = "KL coefficient for this domain.", .min = 0.0});
    b.list("rewards", c.rewards, "Reward modules summed with weights.");
}

void bind(Binder& b, RewardsConfig& c) {
    b.field("plugins", c.plugins, {.doc = "Shared libraries that register reward modules."});
    b.field("timeout_s", c.timeout_s, {.doc = "Per-batch time limit of a reward module.", .min = 0.0, .min_open = true});
}

void bind(Binder& b, SftConfig& c) {
    b.field("data", c.data,
            {.doc = "(prompt, response) JSONL file, or synthetic:<task>. Empty: every domain's data, mixed by the domain weights."});
    b.field("steps", c.steps, {.doc = "Optimizer steps of the SFT stage.", .min = 1});
    b.field("max_seq_len", c.max_seq_len, {.doc = "Longer examples are truncated.", .min = 2});
    b.field("lr", c.lr, {.doc = "SFT learning rate.", .min = 0.0});
}

void bind(Binder& b, DsaTrainConfig& c) {
    b.field("data", c.data,
            {.doc = "Token stream of both DSA stages: synthetic:retrieval[?keys=K&seed=S] (a key->value dictionary, "
                    "then a chain of lookups; data/token_data.h), or a JSONL file of {\"text\": ...} rows, "
                    "tokenized with the job tokenizer and packed into seq_len windows."});
    b.field("seq_len", c.seq_len, {.doc = "Tokens per training sequence.", .min = 2});
    b.field("batch_size", c.batch_size, {.doc = "Sequences per rank and optimizer step.", .min = 1});
    b.field("dense_lm_steps", c.dense_lm_steps,
            {.doc = "Dense-attention LM steps on `data` at the start of indexer_warmup (stage \"dense_lm\"): turns a "
                    "random model into a dense-trained one for experiments; 0 for a real dense checkpoint.",
             .min = 0});
    b.field("dense_lm_lr", c.dense_lm_lr, {.doc = "Learning rate of the dense_lm pre-phase.", .min = 0.0});
    b.field("warmup_steps", c.warmup_steps, {.doc = "Optimizer steps of the indexer_warmup stage.", .min = 1});
    b.field("sparse_steps", c.sparse_steps, {.doc = "Optimizer steps of the sparse_train stage.", .min = 1});
    b.field("indexer_lr", c.indexer_lr, {.doc = "Learning rate of the indexer in both stages (SPEC §3: 1e-3).", .min = 0.0});
    b.field("lr", c.lr,
            {.doc = "Learning rate of the rest of the model in sparse_train. 1e-4 suits the tiny default model; "
                    "real models want SPEC §3's 7.3e-6.",
             .min = 0.0});
    b.field("query_tile", c.query_tile,
            {.doc = "Queries per tile of the indexer losses and the recall metric (memory O(tile·L)).", .min = 1});
    b.field("eval_batches", c.eval_batches,
            {.doc = "Held-out batches (of batch_size sequences per rank) of the evaluation at the start and end of each "
                    "DSA stage (task loss, attention recall); 0 disables it.",
             .min = 0});
}

void bind(Binder& b, JobConfig& c) {
    b.section("run", c.run, "Run identity, stages, seed.");
    b.section("model", c.model, "The DeepSeek-V3.2-style model (HF config.json names).");
    b.section("dist", c.dist, "Distributed layout (SPEC §8).");
    b.section("trainer", c.trainer, "Optimization, checkpoints, metrics (SPEC §7).");
    b.section("rollout", c.rollout, "Generation and sampling (SPEC §4).");
    b.section("grpo", c.grpo, "The GRPO objective and its stabilizers (SPEC §5).");
    b.section("rewards", c.rewards, "Reward plugins and limits (SPEC §6).");
    b.list("domains", c.domains, "The task mixture of the RL stage.");
    b.section("sft", c.sft, "Supervised fine-tuning stage.");
    b.section("dsa", c.dsa, "The DSA training stages indexer_warmup and sparse_train (SPEC §3).");
    if (!reading(b)) return;
    std::set<std::string> names;
    double total_weight = 0;
    for (size_t i = 0; i < c.domains.size(); ++i) {
        if (!names.insert(c.domains[i].name).second) {
            b.fail("domains", absl::StrCat("domain name '", c.domains[i].name, "' appears twice"));
        }
        total_weight += c.domains[i].weight;
    }
    if (c.domains.empty() || total_weight <= 0) {
        b.fail("domains", "need at least one domain with a positive weight");
    }
}

std::vector<DomainConfig> JobConfig::default_domains() {
    // The demo's two domains: small enough that a tiny model learns them in minutes on 2 CPU cores, hard
    // enough that SFT leaves room for RL to raise the accuracy.
    DomainConfig reasoning{.name = "reasoning", .weight = 1.0, .data = "synthetic:arithmetic?digits=1&ops=+", .beta = 0.0};
    reasoning.rewards = {{.module = "math_answer", .weight = 1.0}, {.module = "format", .weight = 0.1}};
    DomainConfig alignment{.name = "alignment", .weight = 1.0, .data = "synthetic:echo?words=2", .beta = 0.01};
    alignment.rewards = {{.module = "exact_match", .weight = 1.0}};
    return {reasoning, alignment};
}

const std::vector<std::string>& job_config_paths() {
    static const std::vector<std::string> paths = [] {
        std::vector<std::string> out;
        for (const auto& row : config::schema_of<JobConfig>()) out.push_back(row.path);
        return out;
    }();
    return paths;
}

namespace {
// Environment overrides of config keys (core/env.cpp documents them), applied after file and --set.
void apply_env_overrides(JobConfig& cfg) {
    if (!env::get_string("DSRL_DIST_TIMEOUT_S").empty()) {
        const int64_t timeout = env::get_int("DSRL_DIST_TIMEOUT_S");
        if (timeout < 1) {
            throw ConfigError(absl::StrCat("environment variable DSRL_DIST_TIMEOUT_S=", timeout,
                                           " is out of range; allowed [1, inf) (it overrides dist.timeout_s)"));
        }
        cfg.dist.timeout_s = timeout;
    }
}
}  // namespace

JobConfig load_job_config(const std::string& path, const std::vector<std::string>& overrides) {
    const config::Document doc =
        path.empty() ? config::Document::from_string("{}", "<embedded defaults>") : config::Document::from_file(path);
    JobConfig cfg;
    doc.read_into(cfg, job_config_paths());  // errors here cite file:line
    if (overrides.empty()) {
        apply_env_overrides(cfg);
        return cfg;
    }
    // Overrides apply to the resolved document, so they can reach default values too (e.g. the default
    // domains list: --set domains.1.weight=2). Errors then cite the --set that caused them.
    config::Document resolved = config::Document::from_string(to_yaml(cfg), doc.source());
    resolved.forget_positions();
    for (const std::string& o : overrides) resolved.apply_override(o);
    JobConfig out;
    resolved.read_into(out, job_config_paths());
    apply_env_overrides(out);
    return out;
}

std::string to_yaml(JobConfig& cfg) { return config::to_yaml(cfg); }

}  // namespace dsrl
