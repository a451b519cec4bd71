#include "rollout/config.h"

#include <absl/strings/str_cat.h>

#include "core/error.h"

namespace dsrl {

using config::Binder;

void bind(Binder& b, RolloutConfig& c) {
    b.field("group_size", c.group_size, {.doc = "Samples per prompt (G).", .min = 1});
    b.field("prompts_per_step", c.prompts_per_step, {.doc = "Prompts per RL step, per data-parallel rank.", .min = 1});
    b.field("max_new_tokens", c.max_new_tokens, {.doc = "Response length limit.", .min = 1});
    b.field("temperature", c.sampling.temperature,
            {.doc = "Sampling temperature (0: greedy; a GRPO job needs > 0).", .min = 0.0});
    b.field("top_p", c.sampling.top_p, {.doc = "Nucleus truncation.", .min = 0.0, .max = 1.0, .min_open = true});
    b.field("top_k", c.sampling.top_k,
            {.doc = "Top-k truncation (0: off; 1 is greedy, refused in a GRPO job).", .min = 0});
    b.field("min_p", c.sampling.min_p,
            {.doc = "Min-p truncation relative to the top probability (0: off).",
             .min = 0.0,
             .max = 1.0,
             .max_open = true});
    b.field("max_batch_size", c.max_batch_size, {.doc = "Sequences decoded together.", .min = 1});
    b.field("stop", c.stop, {.doc = "Stop strings (the response ends after the first match)."});
    b.field("record_indexer", c.record_indexer,
            {.doc = "Record, for every prompt and response position and DSA layer, the key set the indexer's top-k "
                    "selected (compact: a few bytes per token and layer; docs/rollout.md), for grpo.keep_indexer."});
    b.field("max_tool_calls", c.max_tool_calls,
            {.doc = "Agent domains: tool calls per trajectory; a turn asking for more ends it (finish tool_limit).",
             .min = 0});
    b.field("context", c.context,
            {.doc = "Agent domains: context management when a trajectory passes context_threshold of the window "
                    "(DeepSeek-V3.2; docs/agentic.md).",
             .choices = {"none", "summary", "discard_75", "discard_all", "parallel_fewest_step"}});
    b.field("context_threshold", c.context_threshold,
            {.doc = "Fraction of the context window (model.max_position_embeddings) that triggers context management.",
             .min = 0.0,
             .max = 1.0,
             .min_open = true});
    b.field("parallel_trajectories", c.parallel_trajectories,
            {.doc = "context parallel_fewest_step: trajectories sampled per sample (the one with the fewest tool calls "
                    "is kept).",
             .min = 1});
    b.field("summary_prompt", c.summary_prompt,
            {.doc = "context summary: the user message asking for the summary; empty: dsrl's default."});
    b.field("env_threads", c.env_threads, {.doc = "Agent domains: environment calls run concurrently.", .min = 1});
    b.field("engine", c.engine.kind,
            {.doc = "Generation engine: continuous (continuous batching over a paged cache, prompts prefilled once per "
                    "group; docs/rollout.md) or static (the reference: fixed batches, a host sync per token).",
             .choices = {"continuous", "static"}});
    b.field("max_tokens_in_flight", c.engine.max_tokens_in_flight,
            {.doc = "Continuous engine: prompt + generated tokens of the running sequences (0: no limit but the "
                    "cache).",
             .min = 0});
    b.field("block_size", c.engine.block_size, {.doc = "Continuous engine: cache slots per block.", .min = 1});
    b.field("cache_memory_fraction", c.engine.cache_memory_fraction,
            {.doc = "Continuous engine on CUDA: the share of free device memory the cache pool may take.",
             .min = 0.0,
             .max = 1.0,
             .min_open = true});
    b.field("cache_blocks", c.engine.cache_blocks,
            {.doc = "Continuous engine: blocks in the cache pool (0: sized automatically — on CUDA from "
                    "cache_memory_fraction, capped at what max_batch_size full-length sequences need).",
             .min = 0});
    b.field("sync_interval", c.engine.sync_interval,
            {.doc = "Continuous engine: decode steps between host syncs, where finished sequences are found (0: 1 on "
                    "CPU, 8 on CUDA).",
             .min = 0});
    b.field("cuda_graphs", c.engine.cuda_graphs,
            {.doc = "Continuous engine on CUDA: each decode step is one CUDA graph replay, captured once per bucket of "
                    "rows and cache blocks (powers of two; padded rows write to a scratch block). Off: the step's "
                    "kernels are launched one by one. Not under expert parallelism, which always launches them."});
    b.field("cast_weights_once", c.engine.cast_weights_once,
            {.doc = "Under bf16 autocast (trainer.autocast on CUDA): generation reads bf16 copies of the matmul "
                    "weights (projections, experts, lm_head) made once per rollout, not a cast of every fp32 weight in "
                    "every decode step — the same records, bit for bit, for 2 bytes per such parameter while "
                    "generating. Either engine."});
    b.field("fuse_projections", c.engine.fuse_projections,
            {.doc = "Continuous engine on CUDA: each layer's projections that read the same input run as one GEMM "
                    "over a stacked copy of their weights made once per rollout (q_a, kv_a and the indexer's wk; q_b "
                    "and the indexer's wq_b; a dense layer's gate and up): three kernels fewer per layer and decode "
                    "step, for a copy of those weights while generating (about 25 MB in bf16 on single_gpu.yaml). "
                    "Stacks over 64 MiB are not made (at DeepSeek-V3.2's shapes they would copy GiBs for no gain)."});
    b.field("absorb_projections", c.engine.absorb_projections,
            {.doc = "With fuse_projections: a layer whose absorbed query rows are at most 8 MiB larger than their "
                    "factors generates with them — q_b_proj's nope rows times W_UK, so the stacked GEMM gives the "
                    "latent-space query itself: one per-head batched matmul fewer per layer and decode step, the "
                    "product associated the other way (bf16 roundings apart). Small models only: at DeepSeek-V3.2's "
                    "shapes the absorbed rows are several times their factors' bytes and no layer takes them."});
}

}  // namespace dsrl
