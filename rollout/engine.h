// The continuous rollout engine (issue 23; docs/rollout.md "The engine"): what generate() runs unless
// rollout.engine is static.
//
//   GenerateOptions opt{.sampling = ro.sampling, .max_new_tokens = 256, .engine = ro.engine};
//   std::vector<Sample> samples = generate_continuous(model, tok, requests, opt, &stats);
//
// - Continuous batching: sequences join the decode batch as others finish, under max_batch_size sequences and
//   engine.max_tokens_in_flight tokens; the samples of one prompt (consecutive requests with the same prompt id and
//   prompt, as generate_groups makes them) are admitted together.
// - Prefix sharing: such a group's prompt is prefilled once; its G samples share the prompt's cache blocks
//   (reference counts) and the block a sample first writes into is copied then (copy on write).
// - Paged cache (dsa::PagedKvCache): MLA latents, rope keys and indexer keys in fixed-size blocks of one pool; a
//   decode reads a sequence's keys through its slots. When the pool is full the latest-admitted sequences are
//   evicted and recomputed later from their tokens (preemption by recompute).
// - Few host syncs: sampling (temperature, top-k, min-p, top-p), the kept sets, the routes and the indexer sets stay
//   on the device for engine.sync_interval decode steps; then one copy brings the window's tokens and records to the
//   host, where finished sequences are found (a sequence that finished inside a window decoded a few rows for
//   nothing: GenerationStats::wasted_row_steps).
// Invariants (tests/rollout/engine_test.cpp): a sample draws its uniforms from its own generator, one per decode
// step, so its tokens do not depend on the batch, the forks or preemptions; on fp32 CPU the records equal the static
// engine's (tokens exactly, log-probs within 1e-5) and teacher-forced recomputation reproduces the log-probs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rollout/generator.h"

namespace dsrl::rollout {

/// The profiler scope (RECORD_USER_SCOPE) around each decode step of the engine: `dsrl_bench_rollout --profile`
/// counts only the work inside it.
inline constexpr const char* kDecodeScope = "dsrl::decode_step";
inline constexpr const char* kPrefillScope = "dsrl::prefill";

std::vector<Sample> generate_continuous(const dsa::Model& model,
                                        const text::Tokenizer& tokenizer,
                                        const std::vector<GenerationRequest>& requests,
                                        const GenerateOptions& opt,
                                        GenerationStats* stats = nullptr);

/// The pool's size in blocks for these requests (engine.cache_blocks when set): enough for max_batch_size sequences
/// of the longest request at full length, and on CUDA at most cache_memory_fraction of the free device memory. A
/// pool that cannot hold one full-length sequence is a ConfigError naming rollout.cache_blocks /
/// rollout.cache_memory_fraction.
int64_t engine_cache_blocks(const dsa::Model& model,
                            const std::vector<GenerationRequest>& requests,
                            const GenerateOptions& opt);

/// A ConfigError naming rollout.cache_blocks when `blocks` of `block_size` slots, `bytes_per_token` each, need more
/// than `room` bytes (`where`: whose memory that is, e.g. "this machine's memory"); nothing when room <= 0 (unknown).
/// engine_cache_blocks checks a given pool with it, and the job's start-up check before any stage runs.
void check_cache_pool_fits(
    int64_t blocks, int64_t block_size, int64_t bytes_per_token, int64_t room, const std::string& where);

}  // namespace dsrl::rollout
