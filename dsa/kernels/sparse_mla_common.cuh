// Shared by the sparse MLA kernels (sparse_mla.cuh): tile sizes, the shared-memory layouts, the staging of
// [lat | pe] rows (the cp.async / ldmatrix / mma.sync wrappers are core/kernels/mma.cuh's) and the forward's
// online-softmax pieces. Included by sparse_mla_fwd.cu and sparse_mla_bwd.cu only — one kernel family per .cu, so nvcc
// compiles them in parallel; everything here has internal linkage in each of them.
//
// The kernels: Tensor-core tiles with mma.sync m16n8k16 (bf16 in, fp32
// accumulate), operands staged in shared memory with an XOR swizzle of 16-byte chunks (conflict-free ldmatrix
// without padding, so that a 64-head Q tile and two 64-entry K tiles fit in one block's 227 KB).
//
// Forward, per block (one token, 64 heads, 8 warps): warp w owns head rows 16·(w mod 4) and, for the score
// product S = Q·Kᵀ, entries 32·(w div 4) of each 64-entry tile; for O += P·V it owns latent columns
// 256·(w div 4). The two warps of a row group exchange their row maxima through shared memory (named barrier),
// so both keep the same running max and their partial row sums add up at the end (online softmax).
//
// Backward, per block (one token, 64 heads): recompute P from the saved lse, dP = dO·Vᵀ, dS = P ∘ (dP − δ)·scale,
// dQ += dS·K held in registers, and the entries' gradient dKV = dSᵀ·Q + Pᵀ·dO (summed over the block's 64 heads
// by the tensor cores) added to grad_kv with float4 atomics.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "core/kernels/mma.cuh"
#include "dsa/kernels/sparse_mla.cuh"

namespace dsrl::kernels {
namespace {

constexpr int kThreads = 256;                        // 8 warps
constexpr int kBlockH = 64;                          // heads per block
constexpr int kBlockK = 64;                          // entries per tile
constexpr int kDimQK = kMlaLatentDim + kMlaRopeDim;  // 576
constexpr int kChunksQK = kDimQK / 8;                // 16-byte chunks per Q/K row (72)
constexpr int kChunksV = kMlaLatentDim / 8;          // 64
constexpr int kChunksP = kBlockK / 8;                // 8
constexpr int kTileQKBytes = kBlockH * kDimQK * 2;   // 73728 (also the K tile: kBlockK == kBlockH)
constexpr int kTilePBytes = kBlockH * kBlockK * 2;   // 8192
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Forward shared memory: Q | K0 | K1 | P | idx[2][64] | rowmax[2][64] | rowsum[2][64]
constexpr int kFwdOffK0 = kTileQKBytes;
constexpr int kFwdOffK1 = 2 * kTileQKBytes;
constexpr int kFwdOffP = 3 * kTileQKBytes;
constexpr int kFwdOffIdx = kFwdOffP + kTilePBytes;
constexpr int kFwdOffMax = kFwdOffIdx + 2 * kBlockK * 4;
constexpr int kFwdOffSum = kFwdOffMax + 2 * kBlockH * 4;
constexpr int kFwdSmem = kFwdOffSum + 2 * kBlockH * 4;

// Backward shared memory: Q | dO | K | P | dS | idx[64] | lse[64] | delta[64]
constexpr int kTileDOBytes = kBlockH * kMlaLatentDim * 2;  // 65536
constexpr int kBwdOffDO = kTileQKBytes;
constexpr int kBwdOffK = kBwdOffDO + kTileDOBytes;
constexpr int kBwdOffP = kBwdOffK + kTileQKBytes;
constexpr int kBwdOffDS = kBwdOffP + kTilePBytes;
constexpr int kBwdOffIdx = kBwdOffDS + kTilePBytes;
constexpr int kBwdOffLse = kBwdOffIdx + kBlockK * 4;
constexpr int kBwdOffDelta = kBwdOffLse + kBlockH * 4;
constexpr int kBwdSmem = kBwdOffDelta + kBlockH * 4;

static_assert(kFwdSmem <= 227 * 1024, "forward shared memory over the sm_90 limit");
static_assert(kBwdSmem <= 227 * 1024, "backward shared memory over the sm_90 limit");

__device__ __forceinline__ void named_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
    asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v));
}

// Stages 64 rows of [lat | pe] (bf16, 576 wide) into a swizzled tile. row_src(r) returns the row index into the
// [rows, 512] / [rows, 64] sources, or -1 for a zero row.
template <typename RowFn>
__device__ __forceinline__ void stage_rows(uint32_t tile,
                                           const __nv_bfloat16* lat,
                                           const __nv_bfloat16* pe,
                                           RowFn row_src) {
    for (int i = threadIdx.x; i < kBlockK * kChunksQK; i += kThreads) {
        const int r = i / kChunksQK, c = i % kChunksQK;
        const int64_t src = row_src(r);
        const bool ok = src >= 0;
        const __nv_bfloat16* ptr = !ok            ? lat
                                   : c < kChunksV ? lat + src * kMlaLatentDim + c * 8
                                                  : pe + src * kMlaRopeDim + (c - kChunksV) * 8;
        cp_async16(tile + swz(r, c * 8, kChunksQK), ptr, ok);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------------------
// Both forward kernels share the block shape (one token, 64 heads, two halves kh of 4 warps each: warp rg of a
// half owns head rows 16·rg .. 16·rg + 15) and their accumulator layout: a thread holds rows r0 = 16·rg +
// lane / 4 and r0 + 8; of S, half kh's 32 entries as 4 n-tiles × {r0: e0, e1; r0 + 8: e2, e3} at columns
// kh·32 + 8·nt + 2(lane mod 4) + (e mod 2); of O, the half's 256 latent columns the same way (32 n-tiles).

// One tile's online-softmax step on the S fragment s: masks invalid entries (idx_t[col] < 0), moves to the log2
// domain, exchanges row maxima with the other half through red_max (exchange() must make the two halves'
// writes visible to each other), updates m_run / l_run, hands P = exp2(s − m) to store_p(row, col, bf16 pair)
// and returns in alpha the factors by which this thread's O rows must be rescaled.
template <typename Exchange, typename StoreP>
__device__ __forceinline__ void online_softmax_tile(float (&s)[16],
                                                    const int32_t* idx_t,
                                                    int kh,
                                                    int lane,
                                                    int r0,
                                                    float scale_log2,
                                                    float* red_max,
                                                    float (&m_run)[2],
                                                    float (&l_run)[2],
                                                    float (&alpha)[2],
                                                    Exchange exchange,
                                                    StoreP store_p) {
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int col = kh * 32 + nt * 8 + 2 * (lane & 3) + (e & 1);
            const float v = idx_t[col] >= 0 ? s[nt * 4 + e] * scale_log2 : -INFINITY;
            s[nt * 4 + e] = v;
            mx[e >> 1] = fmaxf(mx[e >> 1], v);
        }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
    }
    if ((lane & 3) == 0) {
        red_max[kh * kBlockH + r0] = mx[0];
        red_max[kh * kBlockH + r0 + 8] = mx[1];
    }
    exchange();
    float m_use[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const float other = red_max[(kh ^ 1) * kBlockH + r0 + 8 * i];
        const float m_new = fmaxf(m_run[i], fmaxf(mx[i], other));
        m_use[i] = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing valid yet: exp2(−inf) = 0
        alpha[i] = exp2f(m_run[i] - m_use[i]);
        m_run[i] = m_new;
        l_run[i] *= alpha[i];
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
        const float p0 = exp2f(s[nt * 4 + 0] - m_use[0]), p1 = exp2f(s[nt * 4 + 1] - m_use[0]);
        const float p2 = exp2f(s[nt * 4 + 2] - m_use[1]), p3 = exp2f(s[nt * 4 + 3] - m_use[1]);
        l_run[0] += p0 + p1;
        l_run[1] += p2 + p3;
        const int col = kh * 32 + nt * 8 + 2 * (lane & 3);
        store_p(r0, col, pack_bf16(p0, p1));
        store_p(r0 + 8, col, pack_bf16(p2, p3));
    }
}

// O rows r0 (even slots) and r0 + 8 (odd pairs) times alpha, skipped when no row max of the warp moved.
__device__ __forceinline__ void rescale_rows(float (&o)[128], const float (&alpha)[2]) {
    if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            o[4 * j + 0] *= alpha[0];
            o[4 * j + 1] *= alpha[0];
            o[4 * j + 2] *= alpha[1];
            o[4 * j + 3] *= alpha[1];
        }
    }
}

// The forward's end: adds the two halves' row sums through red_sum (exchange() as above, after every read of
// red_max), then writes O / l and lse (or, split-KV, the fp32 partials) for this thread's rows.
template <bool kSplit, typename Exchange>
__device__ __forceinline__ void store_forward_rows(const SparseMlaFwdParams& p,
                                                   const float (&o)[128],
                                                   float (&l_run)[2],
                                                   const float (&m_run)[2],
                                                   float* red_sum,
                                                   int kh,
                                                   int lane,
                                                   int r0,
                                                   int64_t bt,
                                                   int64_t h0,
                                                   int split,
                                                   Exchange exchange) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
        l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
    }
    if ((lane & 3) == 0) {
        red_sum[kh * kBlockH + r0] = l_run[0];
        red_sum[kh * kBlockH + r0 + 8] = l_run[1];
    }
    exchange();
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int row = r0 + 8 * i;
        const int64_t h = h0 + row;
        if (h >= p.num_heads) continue;
        const float l = red_sum[row] + red_sum[kBlockH + row];
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const float lse = l > 0.f ? (m_run[i] + log2f(l)) * kLn2 : -INFINITY;
        const int64_t row_index = bt * p.num_heads + h;  // (b, t, h)
        if constexpr (kSplit) {
            const int64_t plane = p.batch * p.num_queries * p.num_heads;
            float* dst = p.partial_out + (int64_t(split) * plane + row_index) * kMlaLatentDim + kh * 256;
#pragma unroll
            for (int nt = 0; nt < 32; ++nt) {
                const int col = nt * 8 + 2 * (lane & 3);
                *reinterpret_cast<float2*>(dst + col) =
                    make_float2(o[nt * 4 + 2 * i] * inv, o[nt * 4 + 2 * i + 1] * inv);
            }
            if (kh == 0 && (lane & 3) == 0) p.partial_lse[int64_t(split) * plane + row_index] = lse;
        } else {
            auto* dst = static_cast<__nv_bfloat16*>(p.out) + row_index * kMlaLatentDim + kh * 256;
#pragma unroll
            for (int nt = 0; nt < 32; ++nt) {
                const int col = nt * 8 + 2 * (lane & 3);
                *reinterpret_cast<__nv_bfloat162*>(dst + col) =
                    __floats2bfloat162_rn(o[nt * 4 + 2 * i] * inv, o[nt * 4 + 2 * i + 1] * inv);
            }
            if (kh == 0 && (lane & 3) == 0) p.lse[row_index] = lse;
        }
    }
}

// The 4-float accumulator of m16n8 tile n inside a flat fragment array.
template <int N>
__device__ __forceinline__ float (&frag4(float (&a)[N], int n))[4] {
    return *reinterpret_cast<float(*)[4]>(a + 4 * n);
}

}  // namespace
}  // namespace dsrl::kernels
