// CUDA kernels of moe/moe_cuda.h's routed experts for decode steps: each (token, slot) pair runs through its own
// expert's SwiGLU on the tensor cores, so a step reads each expert's weights once and does the FLOPs of the k experts
// a token is routed to (the dense decode did all E for every token). Sees no torch types.
//
// Three kernels (launch_routed_experts) and the combine (launch_pair_combine), no host sync, graph-capturable:
//   pairs:   one block counts the routed pairs per expert (shared-memory atomics), scans the counts into offsets,
//            writes the pairs grouped by expert (in no fixed order within an expert: every pair's row is computed
//            alone, so the results do not depend on it) and cuts each expert's pairs into tiles of 32;
//   up:      grid (I / 32 columns, routed_tiles [+ 32-token slices of the shared expert]); a block stages its tile's
//            rows of x and its expert's gate / up rows with cp.async, multiplies with mma.sync and writes
//            h[pair] = silu(x·gateᵀ)·(x·upᵀ), each op rounded to the operand type as the ATen ops round it. An
//            expert with many pairs (skewed routing) spreads over several blocks instead of one long one;
//   down:    grid (H / 64 columns, the same groups); out[pair] = h[pair] · downᵀ, rounded to the operand type;
//   combine: y[t] = Σ_j out[t, j] · w[t, j] in fp32 in slot order, rounded (routed_experts_grouped's sum), then
//            + the shared expert's out[t] and rounded again (moe_forward's add): core/kernels/pair_sum.cuh, which a
//            decode step's next add + norm calls instead as it reads the rows.
// A pair whose expert id is outside [0, experts) is skipped by all three (it adds nothing).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "core/kernels/elem.cuh"
#include "core/kernels/pair_sum.cuh"

namespace dsrl::moe::kernels {

struct RoutedExpertsParams {
    const void* x;             // [tokens, hidden]
    const int64_t* indices;    // [tokens, k]
    const float* weights;      // [tokens, k]
    const void* gate;          // [experts, inter, hidden]
    const void* up;            // [experts, inter, hidden]
    const void* down;          // [experts, hidden, inter]
    const void* shared_gate;   // [inter, hidden], or null: no shared expert in the sum
    const void* shared_up;     // [inter, hidden]
    const void* shared_down;   // [hidden, inter]
    int* order;                // scratch [tokens · k]: pair rows (token · slots + slot) grouped by expert
    int* tiles;                // scratch [3 · routed_tiles(tokens, k, experts)]: (expert, start in order, count)
    void* h;                   // scratch [tokens · slots, inter], slots = k (+ 1 with a shared expert)
    void* out;                 // scratch [tokens · slots, hidden]
    dsrl::kernels::Elem type;  // kBF16 or kF16, every tensor above but indices / weights
    int64_t tokens;
    int k;
    int experts;
    int hidden;
    int inter;
};

/// Most (token, slot) pairs, tokens · k (the pairs kernel keeps a rank per pair in shared memory), most slots a token
/// and most experts.
constexpr int64_t kRoutedMaxPairs = 32768;
constexpr int kRoutedMaxK = 32;
constexpr int kRoutedMaxExperts = 1024;
/// hidden and inter must be multiples of this; every tensor 16-byte aligned.
constexpr int kRoutedAlign = 64;

/// Pairs per tile of the up and down kernels.
constexpr int kRoutedTile = 32;

/// The routed tiles' bound (the groups the up and down grids allot before the shared expert's slices): one per 32
/// pairs of an expert, at most experts + ceil(tokens · k / 32).
__host__ __device__ inline int64_t routed_tiles(int64_t tokens, int k, int experts) {
    return experts + (tokens * k + kRoutedTile - 1) / kRoutedTile;
}

cudaError_t launch_routed_experts(const RoutedExpertsParams& p, cudaStream_t stream);

/// The combine alone: y [tokens, hidden] (s.type) = core/kernels/pair_sum.cuh's sum of each token's rows of s.out —
/// the y of the rows launch_routed_experts wrote. s.hidden a multiple of 8, every tensor 16-byte aligned.
cudaError_t launch_pair_combine(const dsrl::kernels::PairSum& s, void* y, int64_t tokens, cudaStream_t stream);

}  // namespace dsrl::moe::kernels
