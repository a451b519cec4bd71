// Batched generation with recorded log-probs, kept sets and routing paths (SPEC §4).
//
//   GenerateOptions opt{.sampling = job.rollout.sampling, .max_new_tokens = 256};
//   std::vector<SampleGroup> groups = generate_groups(model, *tokenizer, prompts, /*group_size=*/8, opt, seed);
//
// Requests run in batches of at most `max_batch_size`: prompts are left-padded and prefilled together, then
// the batch decodes one token per step over the model's KV caches. A sequence that finishes (EOS, a stop
// string, max_new_tokens, the context limit) is fed once more — so the routing path of its last token is
// recorded too — and then leaves the batch; the batch shrinks as sequences finish (no compute is spent on
// finished rows). Each sample draws from its own generator seeded by its `seed`, so a sample's tokens do not
// depend on which other samples share its batch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dsa/model.h"
#include "rollout/record.h"
#include "rollout/sampling.h"
#include "text/tokenizer.h"

namespace dsrl::rollout {

struct GenerationRequest {
    std::string domain;
    int64_t prompt_id = 0;
    int32_t sample_index = 0;
    uint64_t seed = 0;
    std::vector<int32_t> prompt;  ///< non-empty token ids
    /// Forced decoding: when non-empty, the response is these ids (nothing is sampled) and the record holds the
    /// model's log-probs, kept sets and routes for them, through the same prefill and decode path; it ends after
    /// the last one (or earlier at EOS, a stop string or a limit). Scripted multi-turn tests and replays use it.
    std::vector<int32_t> forced;
};

struct GenerateOptions {
    SamplingParams sampling;
    int64_t max_new_tokens = 64;
    std::vector<std::string> stop;  ///< stop strings (matched on the decoded response; kept in it)
    int64_t max_batch_size = 64;
    int64_t policy_version = 0;
    bool record_kept = true;      ///< kept sets (keep-sampling-mask)
    bool record_routes = true;    ///< routing paths (keep-routing)
    bool record_indexer = false;  ///< DSA top-k key sets of every position (keep-indexer; rollout/indexer_sets.h)
    EngineOptions engine;         ///< which engine generates, and the continuous engine's settings
};

struct GenerationStats {
    int64_t sequences = 0;
    int64_t prompt_tokens = 0;
    int64_t generated_tokens = 0;
    int64_t decode_steps = 0;
    int64_t decode_row_steps = 0;  ///< Σ over decode steps of the rows in the batch (= generated tokens)
    double prefill_seconds = 0;
    double decode_seconds = 0;
    int64_t prefill_tokens = 0;     ///< tokens run through prefill (a group's prompt once; recomputations too)
    int64_t preemptions = 0;        ///< continuous engine: sequences evicted from a full cache and recomputed later
    int64_t wasted_row_steps = 0;   ///< continuous engine: decode rows of sequences that had already finished
    int64_t peak_cache_blocks = 0;  ///< continuous engine: most blocks in use at once
    int64_t graphs_captured = 0;    ///< continuous engine on CUDA: decode-step graphs captured (one per bucket)
    double capture_seconds = 0;     ///< ... and the time their warm-up, capture and probe took (within decode_seconds)
    int64_t padded_row_steps = 0;   ///< continuous engine with graphs: decode rows run only to fill a bucket
    int64_t graph_nodes = 0;        ///< ... nodes (kernels, copies) of the largest decode-step graph
    std::string graph_node_kinds;   ///< ... by kind, e.g. "460 kernel, 12 memcpy, 4 memset"
    int64_t prefill_calls = 0;      ///< forwards that prefilled admitted groups (each over all their prompts)
    /// Continuous engine, the host's share of decode_seconds: building each window's inputs (block tables, positions,
    /// uniforms), launching its steps (graph replays or kernels; a bucket's first use, its warm-up, capture and probe
    /// replays, counts in capture_seconds instead), waiting for the device at each window's copy to the host, and
    /// turning the copied records into samples (the tokens, log-probs and finish checks; the kept sets,
    /// routes and indexer sets are appended by a background task while the next window runs, and only the wait for
    /// it at the end of generate() counts here).
    double setup_seconds = 0, launch_seconds = 0, wait_seconds = 0, record_seconds = 0;
    /// Continuous engine on CUDA: the device's time for the decode windows, from each window's first step to its last
    /// (CUDA events; idle gaps inside a window count).
    double device_decode_seconds = 0;
    /// With EngineOptions::probe_replays, the largest bucket's graph: microseconds per back-to-back replay — a window's
    /// whole step, nothing runs between replays (0 where the block table is too narrow for that many steps).
    double graph_replay_us = 0;
    GenerationStats& operator+=(const GenerationStats& o) {
        graphs_captured += o.graphs_captured;
        capture_seconds += o.capture_seconds;
        padded_row_steps += o.padded_row_steps;
        if (o.graph_nodes > graph_nodes) {
            graph_nodes = o.graph_nodes;
            graph_node_kinds = o.graph_node_kinds;
        }
        if (o.graph_replay_us > 0 && o.graph_nodes >= graph_nodes) {
            graph_replay_us = o.graph_replay_us;
        }
        device_decode_seconds += o.device_decode_seconds;
        prefill_calls += o.prefill_calls;
        prefill_tokens += o.prefill_tokens;
        preemptions += o.preemptions;
        wasted_row_steps += o.wasted_row_steps;
        peak_cache_blocks = std::max(peak_cache_blocks, o.peak_cache_blocks);
        sequences += o.sequences;
        prompt_tokens += o.prompt_tokens;
        generated_tokens += o.generated_tokens;
        decode_steps += o.decode_steps;
        decode_row_steps += o.decode_row_steps;
        prefill_seconds += o.prefill_seconds;
        decode_seconds += o.decode_seconds;
        setup_seconds += o.setup_seconds;
        launch_seconds += o.launch_seconds;
        wait_seconds += o.wait_seconds;
        record_seconds += o.record_seconds;
        return *this;
    }
};

/// Generates one sample per request, in request order, with the engine opt.engine names (continuous by default).
/// Under autocast (and opt.engine.cast_weights_once) the engine runs on Model::autocast_weights: the matmul weights
/// cast once for the call rather than in every forward; the records are the same bit for bit.
std::vector<Sample> generate(const dsa::Model& model,
                             const text::Tokenizer& tokenizer,
                             const std::vector<GenerationRequest>& requests,
                             const GenerateOptions& opt,
                             GenerationStats* stats = nullptr);

/// The reference engine (opt.engine is ignored): requests in fixed batches of max_batch_size, left-padded and
/// prefilled together (each sample its own copy of the prompt), decoded over a contiguous cache with the sampled
/// tokens and records copied to the host every step. The oracle of the continuous engine.
std::vector<Sample> generate_static(const dsa::Model& model,
                                    const text::Tokenizer& tokenizer,
                                    const std::vector<GenerationRequest>& requests,
                                    const GenerateOptions& opt,
                                    GenerationStats* stats = nullptr);

/// The request checks every engine runs first (DataError naming the prompt).
void check_requests(const ModelConfig& cfg, const std::vector<GenerationRequest>& requests, const GenerateOptions& opt);

/// A request's sample before its first token: ids, seed, policy version and prompt.
Sample start_sample(const GenerationRequest& r, const GenerateOptions& opt, const ModelConfig& cfg);

/// Whether a sample that just appended `token` is finished, and why (the rules every engine applies, in order: EOS,
/// a stop string, max_new_tokens or the end of the forced ids, the context window).
bool finish_sample(Sample& s,
                   int64_t token,
                   const text::Tokenizer& tok,
                   const GenerationRequest& req,
                   const GenerateOptions& opt,
                   int64_t max_position_embeddings);

struct Prompt {
    std::string domain;
    int64_t prompt_id = 0;
    std::vector<int32_t> tokens;
};

/// The per-sample seed: a function of (base seed, prompt id, sample index) only.
uint64_t sample_seed(uint64_t base_seed, int64_t prompt_id, int32_t sample_index);

/// G samples per prompt, grouped; samples of one prompt may share batches with any other.
std::vector<SampleGroup> generate_groups(const dsa::Model& model,
                                         const text::Tokenizer& tokenizer,
                                         const std::vector<Prompt>& prompts,
                                         int64_t group_size,
                                         const GenerateOptions& opt,
                                         uint64_t base_seed,
                                         GenerationStats* stats = nullptr);

/// Teacher-forced behaviour log-probs of a sample's response under `model`: one forward over prompt +
/// response with (optionally) the recorded routes replayed, the recorded kept sets applied and the recorded DSA
/// key sets replayed — what GRPO computes for π. Returns fp32 [response.size()] on the CPU.
at::Tensor recompute_logprobs(const dsa::Model& model,
                              const Sample& sample,
                              double temperature,
                              bool replay_routes,
                              bool apply_kept,
                              bool replay_indexer = false);

/// Keep-indexer replay (ForwardOptions::replay_topk) for a batch whose row i holds samples[i]'s prompt + response
/// from position 0, right-padded to `len`: each layer's sets are decoded when the forward asks for them, as
/// [rows, len, index_topk] int32 (padding positions select key 0 only). A sample without indexer sets, or with
/// sets of another layer count or index_topk than `cfg`, is a DataError naming it.
std::function<at::Tensor(int64_t)> indexer_replay(const ModelConfig& cfg,
                                                  std::vector<const Sample*> samples,
                                                  int64_t len);

}  // namespace dsrl::rollout
