// CUDA kernel of rollout/sampling_cuda.h: a decode step's whole sampling for one row per block — temperature,
// log-softmax, the top-k / min-p / top-p kept set, renormalization, the inverse-CDF draw from a given uniform, forced
// ids, the token's log-prob and the kept-set bitmap. Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace dsrl::rollout::kernels {

/// Largest vocabulary the kernel takes: a row, its sort keys and ids live in shared memory.
constexpr int64_t kSampleMaxVocab = 4096;

struct SampleParams {
    const float* logits;    // [rows, vocab] contiguous
    const double* uniform;  // [rows] in (0, 1]
    const int64_t* forced;  // [rows] (-1: sample), or null
    int64_t rows;
    int64_t vocab;
    bool greedy;            // temperature 0: the first argmax, log-prob 0
    float inv_temperature;  // 1 / T in fp32 (ATen divides by a scalar as a product with its reciprocal)
    int64_t top_k;          // 0: off
    bool use_min_p;
    float log_min_p;  // log(min_p) in fp32
    double top_p;     // 1: off
    bool truncate;    // any of top-k, min-p, top-p drops ids
    int64_t* tokens;  // [rows] out
    float* logp;      // [rows] out: the processed log-prob of the token
    uint8_t* kept;    // [rows, ceil(vocab / 8)] out (bit j of byte b: id 8b + j kept), or null
    // A window of steps on the device (capacity > 0): uniform, forced, logp and kept are [capacity, rows, ...] and a
    // row reads and writes slot (pos[row] − base[row]) mod capacity, its step in the window; tokens stays [rows] (the
    // step's feed) and window_tokens, when set, gets the token at the slot too. capacity 0: every array is [rows, ...].
    const int64_t* pos = nullptr;
    const int64_t* base = nullptr;
    int64_t capacity = 0;
    int64_t* window_tokens = nullptr;
    // The sort's stages of stride < 32 by warp shuffles where a row fits one element a thread (V <= 512): the same
    // compare-exchanges without a barrier each (false: every stage through shared memory; DSRL_SAMPLE_SORT=block).
    bool warp_stages = true;
};
cudaError_t launch_sample(const SampleParams& p, cudaStream_t stream);

}  // namespace dsrl::rollout::kernels
