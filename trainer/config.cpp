#include "trainer/config.h"

#include <absl/strings/str_cat.h>

#include <algorithm>
#include <set>

#include "core/env.h"
#include "core/error.h"

namespace dsrl {

using config::Binder;

void bind(Binder& b, RunConfig& c) {
    b.field("name", c.name, {.doc = "Run name, shown in logs and metrics."});
    b.field("output_dir", c.output_dir, {.doc = "Directory for checkpoints, metrics.jsonl and TensorBoard events."});
    b.field("seed", c.seed, {.doc = "Base seed; every rank derives its own streams from it.", .min = 0});
    b.field("stages", c.stages,
            {.doc = "Stages run in order.", .choices = {"sft", "indexer_warmup", "sparse_train", "grpo"}});
    b.field("log_level", c.log_level,
            {.doc = "Console log level (the environment variable DSRL_LOG_LEVEL, when set, wins).",
             .choices = {"debug", "info", "warn", "error"}});
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
    if (b.reading() && c.stages.empty()) b.fail("stages", "at least one stage is required");
    if (b.reading()) {
        for (size_t i = 0; i < c.stages.size(); ++i) {
            if (std::find(c.stages.begin(), c.stages.begin() + static_cast<std::ptrdiff_t>(i), c.stages[i]) !=
                c.stages.begin() + static_cast<std::ptrdiff_t>(i)) {
                b.fail("stages", absl::StrCat("stage '", c.stages[i],
                                              "' is listed twice; a stage runs once (give it more steps instead)"));
            }
        }
        // "" would make the current directory the run directory (and run.overwrite would delete its files there).
        if (c.output_dir.empty()) b.fail("output_dir", "must not be empty (use \".\" for the current directory)");
    }
}

void bind(Binder& b, CheckpointConfig& c) {
    b.field("dir", c.dir, {.doc = "Checkpoint directory (default: <run.output_dir>/checkpoints)."});
    b.field("every_steps", c.every_steps, {.doc = "Save every N steps (0: only at the end and on SIGTERM).", .min = 0});
    b.field("keep_last", c.keep_last, {.doc = "Checkpoints kept; older ones are deleted.", .min = 1});
    b.choice("save_dtype", c.save_dtype,
             {{"float32", SaveDType::kFloat32}, {"bfloat16", SaveDType::kBFloat16}, {"float8", SaveDType::kFloat8}},
             {.doc = "Dtype of the model exported to <run.output_dir>/final when the job completes (HF layout with the "
                     "tokenizer files; float8: DeepSeek's e4m3 weights with 128x128 block scales, weight_scale_inv). "
                     "Training checkpoints keep the training dtype, so resume is exact."});
}

void bind(Binder& b, OptimizerConfig& c) {
    b.field("lr", c.lr, {.doc = "Peak learning rate (AdamW).", .min = 0.0});
    b.field("min_lr_ratio", c.min_lr_ratio, {.doc = "Cosine floor as a fraction of lr.", .min = 0.0, .max = 1.0});
    b.field("weight_decay", c.adamw.weight_decay, {.doc = "Decoupled weight decay.", .min = 0.0});
    b.field("beta1", c.adamw.beta1, {.doc = "AdamW beta1.", .min = 0.0, .max = 1.0, .max_open = true});
    b.field("beta2", c.adamw.beta2, {.doc = "AdamW beta2.", .min = 0.0, .max = 1.0, .max_open = true});
    b.field("eps", c.adamw.eps, {.doc = "AdamW epsilon.", .min = 0.0, .min_open = true});
    b.field("warmup_steps", c.warmup_steps, {.doc = "Linear warm-up steps.", .min = 0});
    b.choice("schedule", c.schedule, {{"cosine", LrSchedule::kCosine}, {"constant", LrSchedule::kConstant}},
             {.doc = "Learning-rate schedule after warm-up."});
    b.field("grad_clip", c.grad_clip, {.doc = "Clip gradients to this global L2 norm (0: off).", .min = 0.0});
}

void bind(Binder& b, TrainerConfig& c) {
    b.field("total_steps", c.total_steps, {.doc = "Optimizer steps of the RL stage.", .min = 1});
    b.field("micro_batch_size", c.micro_batch_size, {.doc = "Sequences per rank per SFT step.", .min = 1});
    b.field("zero_stage", c.zero_stage,
            {.doc = "Sharded optimizer state over the data-parallel ranks (disaggregated: the trainer ranks; rollout "
                    "workers hold none): 0 every rank holds all AdamW moments; "
                    "1 each parameter's moments on one rank (updated there, then all-gathered); 2 also the "
                    "gradients (reduce-scattered).",
             .min = 0,
             .max = 2});
    b.field("log_every", c.log_every, {.doc = "Console line every N steps.", .min = 1});
    b.field("max_skipped_steps", c.max_skipped_steps,
            {.doc = "Steps in a row that trained nothing — an update skipped for non-finite gradients "
                    "(skipped_steps in metrics.jsonl: training has diverged), every sample of an RL step failed, or "
                    "an SFT batch cut by sft.max_seq_len before its first response token — that stop the job with "
                    "an error naming why. 0: never stop.",
             .min = 0});
    b.section("optimizer", c.optimizer, "AdamW and the learning-rate schedule.");
    b.section("checkpoint", c.checkpoint, "Atomic checkpoints (SPEC §7).");
    b.field("metrics_file", c.metrics_file, {.doc = "JSON-lines metrics file, relative to run.output_dir."});
    if (b.reading() && (c.metrics_file.empty() || c.metrics_file.front() == '/')) {
        b.fail("metrics_file",
               absl::StrCat("must be a file name relative to run.output_dir, got '", c.metrics_file, "'"));
    }
    b.field("tensorboard", c.tensorboard, {.doc = "Write TensorBoard event files to <run.output_dir>/tb."});
    b.field("autocast", c.autocast,
            {.doc = "bf16 autocast on CUDA: fp32 parameters, bf16 matmuls (router and indexer weights stay fp32). No "
                    "effect on CPU."});
    b.field("eval_prompts", c.eval_prompts,
            {.doc = "Held-out prompts per domain for greedy accuracy (trainer/evaluate.h); 0 disables.", .min = 0});
    b.field("eval_every", c.eval_every,
            {.doc = "Evaluate every N RL steps; 0: only before and after the grpo stage.", .min = 0});
}

void bind(Binder& b, DomainConfig& c) {
    b.field("name", c.name, {.doc = "Domain name (reasoning, agent, alignment, ...).", .required = true});
    b.field("weight", c.weight, {.doc = "Sampling weight in the mixture.", .min = 0.0});
    b.field("data", c.data, {.doc = "Prompt JSONL file, or synthetic:<task>.", .required = true});
    b.field("eval_data", c.eval_data,
            {.doc = "Held-out prompts for accuracy; empty: data (synthetic tasks: another seed)."});
    b.field("beta", c.beta, {.doc = "KL coefficient for this domain.", .min = 0.0});
    b.list("rewards", c.rewards, "Reward modules summed with weights.");
    b.section("environment", c.environment,
              "Agent domains (multi-turn tool use, docs/agentic.md): the environment that serves the tasks.");
    if (b.reading() && c.environment.enabled() && !c.rewards.empty()) {
        b.fail("rewards", "an agent domain (environment set) is scored by its environment's verify: leave rewards out");
    }
}

void bind(Binder& b, SftConfig& c) {
    b.field("data", c.data,
            {.doc = "(prompt, response) JSONL file, or synthetic:<task>. Empty: every domain's data, mixed by the "
                    "domain weights."});
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
    b.field("indexer_lr", c.indexer_lr,
            {.doc = "Learning rate of the indexer in both stages (SPEC §3: 1e-3).", .min = 0.0});
    b.field("lr", c.lr,
            {.doc = "Learning rate of the rest of the model in sparse_train. 1e-4 suits the tiny default model; "
                    "real models want SPEC §3's 7.3e-6.",
             .min = 0.0});
    b.field("query_tile", c.query_tile,
            {.doc = "Queries per tile of the indexer losses and the recall metric (memory O(tile·L)).", .min = 1});
    b.field(
        "eval_batches", c.eval_batches,
        {.doc = "Held-out batches (of batch_size sequences per rank) of the evaluation at the start and end of each "
                "DSA stage (task loss, attention recall); 0 disables it.",
         .min = 0});
}

void bind(Binder& b, MoeTrainConfig& c) {
    b.field("bias_update_speed", c.bias_update_speed,
            {.doc = "Aux-loss-free balancing: after every optimizer step each MoE layer's routing bias moves by this "
                    "much against its expert's load, b_e -= speed * sign(load_e - mean load), with the loads of the "
                    "step's training tokens summed over all ranks. 0 keeps the bias (DeepSeek-V3 pre-training used "
                    "0.001).",
             .min = 0.0});
    b.field("seq_aux_loss_alpha", c.seq_aux_loss_alpha,
            {.doc = "Weight of the sequence-wise balance loss alpha * sum_e f_e * P_e, averaged over sequences and "
                    "summed over MoE layers, added to the training loss of every stage that trains the MoE "
                    "(DeepSeek-V3: 1e-4). 0: off.",
             .min = 0.0});
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
    b.section("moe", c.moe, "Expert balance in training: routing-bias update, balance loss (SPEC §2.4).");
    if (!b.reading()) return;
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
    if (c.grpo.keep_indexer && !c.rollout.record_indexer) {
        b.fail("grpo.keep_indexer", "replays the recorded DSA key sets: set rollout.record_indexer: true too");
    }
}

std::vector<DomainConfig> JobConfig::default_domains() {
    // The demo's two domains: small enough that a tiny model learns them in minutes on 2 CPU cores, hard
    // enough that SFT leaves room for RL to raise the accuracy.
    DomainConfig reasoning{
        .name = "reasoning", .weight = 1.0, .data = "synthetic:arithmetic?digits=1&ops=+", .beta = 0.0};
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
