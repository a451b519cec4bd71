// Generation and sampling configuration (`rollout:` in a job, SPEC §4), owned by the rollout library.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/config_binder.h"

namespace dsrl {

namespace rollout {

/// How the next token is drawn (rollout/sampling.h). A job's `rollout:` section holds one
/// (RolloutConfig::sampling, bound flat: temperature, top_p, top_k, min_p); the defaults below are the only ones.
struct SamplingParams {
    double temperature = 1.0;  ///< 0 = greedy
    double top_p = 1.0;        ///< keep the smallest prefix (by probability) whose mass reaches top_p
    int64_t top_k = 0;         ///< keep the k most likely tokens; 0 = off
    double min_p = 0.0;        ///< keep tokens with p >= min_p · p_max; 0 = off
    bool greedy() const { return temperature == 0.0; }
};

/// The generation engine (rollout/engine.h); a job's `rollout:` section binds it flat (RolloutConfig::engine).
struct EngineOptions {
    /// continuous: continuous batching over a paged cache with prefix-shared groups (rollout/engine.h); static: the
    /// reference path (fixed batches over a contiguous cache, one host sync per token).
    std::string kind = "continuous";
    int64_t max_tokens_in_flight = 0;    ///< prompt + generated tokens of the running sequences; 0 = no limit
    int64_t block_size = 16;             ///< cache slots per block
    double cache_memory_fraction = 0.5;  ///< CUDA: the share of free device memory the cache pool may take
    int64_t cache_blocks = 0;            ///< the pool's blocks; 0 = sized automatically (docs/rollout.md)
    int64_t sync_interval = 0;           ///< decode steps between host syncs (stop checks); 0 = 1 on CPU, 8 on CUDA
    bool cuda_graphs = true;             ///< CUDA: replay each decode step from a graph captured per batch bucket
    /// Under autocast (bf16 on CUDA): generate with lower-precision copies of the matmul weights made once per call
    /// (dsa::Model::autocast_weights; the same records bit for bit) instead of casting each weight in every step.
    bool cast_weights_once = true;
    /// Continuous engine on CUDA: each layer's projections that read one input stacked into one matrix for the call
    /// (dsa::Model::fuse_projections): one GEMM for q_a, kv_a and the indexer's wk, one for q_b and the indexer's wq_b.
    bool fuse_projections = true;
    /// With fuse_projections: the layers whose absorbed query rows cost at most dsa::Model::kAbsorbMaxExtraBytes more
    /// than their factors run them (LayerWeights::absorbed): one per-head batched matmul fewer per layer and decode
    /// step.
    bool absorb_projections = true;
    /// Tests and profiles (not a config key): where no graph replays (CPU; CUDA with cuda_graphs off), run the bucketed
    /// step that the CUDA graphs replay (padded rows, block tables padded to a power of two) eagerly.
    bool eager_buckets = false;
    /// Benchmarks (not a config key): on CUDA with graphs, time this many back-to-back replays of each bucket's graph
    /// right after its capture (inputs still the scratch block's; GenerationStats::graph_replay_us).
    int64_t probe_replays = 0;
};

}  // namespace rollout

struct RolloutConfig {
    int64_t group_size = 8;
    int64_t prompts_per_step = 8;
    int64_t max_new_tokens = 24;
    rollout::SamplingParams sampling;
    int64_t max_batch_size = 64;
    std::vector<std::string> stop;
    bool record_indexer = false;  ///< keep-indexer: record every position's DSA top-k key sets
    // Multi-turn tool use (agent domains; rollout/multi_turn.h).
    int64_t max_tool_calls = 20;
    std::string context = "none";  ///< none | summary | discard_75 | discard_all | parallel_fewest_step
    double context_threshold = 0.8;
    int64_t parallel_trajectories = 4;
    std::string summary_prompt;  ///< empty: MultiTurnOptions::kDefaultSummaryPrompt
    int64_t env_threads = 8;
    rollout::EngineOptions engine;
};

void bind(config::Binder& b, RolloutConfig& c);

}  // namespace dsrl
