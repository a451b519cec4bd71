// The routed experts' combine of a token's pair rows as an element source, for the kernels that read a MoE layer's
// output where it is consumed (the next residual add + norm) instead of after a combine launch of its own:
//   y[t, c] = Σ_j out[t · slots + j, c] · w[t, j]   (fp32, in slot order; an expert id outside [0, experts) skipped)
//   rounded to out's type, then + out[t · slots + k, c] and rounded again where a shared expert has its row.
// moe/kernels/routed.cu's combine kernel computes the same ops in the same order, so a sum read through here equals
// the combined tensor bit for bit. Sees no torch types.
#pragma once

#include <cstdint>

#include "core/kernels/elem.cuh"

namespace dsrl::kernels {

/// Rows of a token the pair sum loads at once (a batch's loads all in flight before the first use; k = 8,
/// DeepSeek-V3's, in one batch). The rows' width (hidden) must be a multiple of 8 and their base 16-byte aligned
/// (16-byte loads of eight columns).
constexpr int kPairSumBatch = 8;

struct PairSum {
    const void* out = nullptr;  // [tokens · slots, hidden] of `type`: the pairs' rows, then the shared expert's
    Elem type = Elem::kBF16;
    const int64_t* indices = nullptr;  // [tokens, k]
    const float* weights = nullptr;    // [tokens, k]
    int k = 0;                         // >= 1
    int slots = 0;                     // k, or k + 1 with the shared expert's row
    int experts = 0;
    int64_t hidden = 0;
};

#ifdef __CUDACC__
namespace pair_sum_detail {
template <typename T>
__device__ __forceinline__ void sum8(const PairSum& s, int64_t t, int64_t c, float (&y)[8]) {
    const auto* out = static_cast<const T*>(s.out);
    const bool shared = s.slots > s.k;
    uint4 shared_raw = {};
    if (shared) shared_raw = *reinterpret_cast<const uint4*>(out + (t * s.slots + s.k) * s.hidden + c);
    float acc[8] = {};
    // kPairSumBatch rows at a time, every load of a batch issued before its first use (the routes, the weights and the
    // rows do not depend on each other): one batch for k <= kPairSumBatch. The sum runs over the slots in order.
    for (int j0 = 0; j0 < s.k; j0 += kPairSumBatch) {
        int64_t e[kPairSumBatch];
        float w[kPairSumBatch];
        uint4 raw[kPairSumBatch];
#pragma unroll
        for (int j = 0; j < kPairSumBatch; ++j) {
            if (j0 + j < s.k) {
                e[j] = s.indices[t * s.k + j0 + j];
                w[j] = s.weights[t * s.k + j0 + j];
                raw[j] = *reinterpret_cast<const uint4*>(out + (t * s.slots + j0 + j) * s.hidden + c);
            }
        }
#pragma unroll
        for (int j = 0; j < kPairSumBatch; ++j) {
            if (j0 + j >= s.k || e[j] < 0 || e[j] >= s.experts) continue;
            const T* v = reinterpret_cast<const T*>(&raw[j]);
#pragma unroll
            for (int u = 0; u < 8; ++u) acc[u] = __fadd_rn(acc[u], __fmul_rn(static_cast<float>(v[u]), w[j]));
        }
    }
    const T* sh = reinterpret_cast<const T*>(&shared_raw);
#pragma unroll
    for (int u = 0; u < 8; ++u) {
        y[u] = shared ? static_cast<float>(static_cast<T>(
                            __fadd_rn(static_cast<float>(static_cast<T>(acc[u])), static_cast<float>(sh[u]))))
                      : static_cast<float>(static_cast<T>(acc[u]));
    }
}
}  // namespace pair_sum_detail

/// y[u] = the sum above at token t, columns c .. c + 8 (c a multiple of 8; hidden a multiple of 8 and out 16-byte
/// aligned): each row's eight columns in one 16-byte load.
__device__ __forceinline__ void pair_sum8(const PairSum& s, int64_t t, int64_t c, float (&y)[8]) {
    if (s.type == Elem::kF16) {
        pair_sum_detail::sum8<__half>(s, t, c, y);
    } else {
        pair_sum_detail::sum8<__nv_bfloat16>(s, t, c, y);
    }
}

/// Threads [0, threads) of the caller write the sum's row t into ys[0, dim) (fp32, each value as stored in s.type),
/// eight columns a thread at a time. The caller syncs those threads before reading ys.
__device__ __forceinline__ void stage_pair_sum(
    const PairSum& s, int64_t t, int dim, float* ys, int thread, int threads) {
    for (int c = 8 * thread; c < dim; c += 8 * threads) {
        float y[8];
        pair_sum8(s, t, c, y);
        reinterpret_cast<float4*>(ys + c)[0] = make_float4(y[0], y[1], y[2], y[3]);
        reinterpret_cast<float4*>(ys + c)[1] = make_float4(y[4], y[5], y[6], y[7]);
    }
}
#endif

}  // namespace dsrl::kernels
