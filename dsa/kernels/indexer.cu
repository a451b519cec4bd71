// Indexer logits kernel (see indexer.cuh). Design:
//   A block owns kQueries = 4 queries of one batch element (M = 4 × 64 head rows, the q tile stays in shared
//   memory) and streams the keys [0, max query_pos + 1) in tiles of kKeys = 64 through a 3-stage cp.async
//   ring; key tiles past every query's position are skipped (causal). 8 warps: warp = (query, key half), each
//   computes a 64-head × 32-key tile over d = 128 with mma.sync (bf16 m16n8k16 or e4m3 m16n8k32: both
//   consume 32 bytes of a row per step, so one body serves both), then ReLU, × w·scale (·q_scale), and the
//   head sum by a butterfly reduce-scatter over the 8 lanes sharing a column, leaving one column per lane:
//   a coalesced 128-byte store per warp. Shared rows are XOR-swizzled in 16-byte chunks (conflict-free
//   ldmatrix).
// Napkin math (B=1, T=S=32K, H=64, D=128, causal): 2·H·D·T·S/2 = 8.8 TFLOP; output 4.3 GB fp32 (≈1 ms at
// 4 TB/s); per block the key stream costs 1 byte of L2 traffic per 256 FLOP.
#include "dsa/kernels/indexer.cuh"

#include <cuda_bf16.h>

#include "core/kernels/mma.cuh"

namespace dsrl::dsa::kernels {
namespace {

using dsrl::kernels::cp_async16;  // the PTX wrappers: core/kernels/mma.cuh
using dsrl::kernels::cp_async_commit;
using dsrl::kernels::cp_async_wait;
using dsrl::kernels::ldsm_x4;
using dsrl::kernels::ldsm_x4_t;
using dsrl::kernels::mma16816;
using dsrl::kernels::pack_bf16;

constexpr int kQueries = 4;
constexpr int kKeys = 64;
constexpr int kStages = 3;
constexpr int kThreads = 256;
constexpr int kHeadRows = kIndexerMaxHeads;  // q rows reserved per query in shared memory

template <bool kFp8>
struct Geometry {
    static constexpr int kRowBytes = kIndexerDim * (kFp8 ? 1 : 2);
    static constexpr int kChunks = kRowBytes / 16;  // 16-byte chunks per row
    static constexpr int kSteps = kRowBytes / 32;   // mma k-steps (32 bytes of a row each)
    static constexpr int kQBytes = kQueries * kHeadRows * kRowBytes;
    static constexpr int kKBytes = kKeys * kRowBytes;
    static constexpr int kSmem = kQBytes + kStages * kKBytes;
};

// Byte offset of 16-byte chunk c of row r in a swizzled tile.
template <int kRowBytes>
__device__ __forceinline__ uint32_t swz(int r, int c) {
    return static_cast<uint32_t>(r * kRowBytes + ((c ^ (r & 7)) << 4));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    uint32_t r[4];
    ldsm_x4(r, addr);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}

template <bool kFp8>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (kFp8) {
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        mma16816(c, a, b0, b1);
    }
}

template <bool kFp8>
__global__ void __launch_bounds__(kThreads, 2) indexer_logits_kernel(const IndexerLogitsParams p) {
    using G = Geometry<kFp8>;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    const uint32_t q_smem = smem_base;
    const uint32_t k_smem = smem_base + G::kQBytes;
    __shared__ int key_limit;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int qi = warp >> 1, half = warp & 1;
    const int64_t b = blockIdx.y;
    // Heavier (later) query tiles first: causal rows grow with t.
    const int64_t t0 = (static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x) * kQueries;
    const int64_t T = p.num_queries, S = p.num_keys;
    const int H = p.heads, num_mf = H / 16;
    const int64_t t = t0 + qi;
    const bool t_ok = t < T;
    const int64_t qpos = t_ok ? p.query_pos[b * p.qpos_batch_stride + t] : -1;

    if (warp == 0) {
        int64_t lim = 0;
        if (lane < kQueries && t0 + lane < T) {
            lim = p.query_pos[b * p.qpos_batch_stride + t0 + lane] + 1;
            lim = lim < 0 ? 0 : (lim > S ? S : lim);
        }
#pragma unroll
        for (int o = 1; o < kQueries; o <<= 1) {
            const int64_t other = __shfl_xor_sync(0xffffffffu, lim, o);
            lim = other > lim ? other : lim;
        }
        if (lane == 0) key_limit = static_cast<int>(lim);
    }
    __syncthreads();
    const int limit = key_limit;
    const int num_tiles = (limit + kKeys - 1) / kKeys;

    const unsigned char* q_bytes = static_cast<const unsigned char*>(p.q);
    const unsigned char* k_bytes = static_cast<const unsigned char*>(p.k) + b * S * G::kRowBytes;
    auto load_k_tile = [&](int tile, int stage) {
        const int64_t s0 = static_cast<int64_t>(tile) * kKeys;
        for (int id = tid; id < kKeys * G::kChunks; id += kThreads) {
            const int r = id / G::kChunks, c = id % G::kChunks;
            const bool ok = s0 + r < S;
            const unsigned char* src = k_bytes + (ok ? (s0 + r) * G::kRowBytes + c * 16 : 0);
            cp_async16(k_smem + stage * G::kKBytes + swz<G::kRowBytes>(r, c), src, ok);
        }
    };

    if (num_tiles > 0) {
        // q tile (queries past T are zero-filled); group 0 also holds key tile 0.
        for (int id = tid; id < kQueries * H * G::kChunks; id += kThreads) {
            const int row = id / G::kChunks, c = id % G::kChunks;
            const int qq = row / H, h = row % H;
            const bool ok = t0 + qq < T;
            const int64_t elem =
                b * p.q_batch_stride + ((ok ? t0 + qq : 0) * H + h) * static_cast<int64_t>(kIndexerDim);
            const unsigned char* src = q_bytes + elem * (kFp8 ? 1 : 2) + c * 16;
            cp_async16(q_smem + swz<G::kRowBytes>(qq * kHeadRows + h, c), src, ok);
        }
#pragma unroll
        for (int st = 0; st < kStages - 1; ++st) {
            if (st < num_tiles) load_k_tile(st, st);
            cp_async_commit();
        }
    }

    // Per-thread head weights: rows lane/4 and lane/4 + 8 of each 16-head fragment.
    float wreg[4][2];
#pragma unroll
    for (int mf = 0; mf < 4; ++mf) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int h = mf * 16 + (lane >> 2) + hh * 8;
            float v = 0.f;
            if (t_ok && h < H) {
                const int64_t wi = b * p.w_batch_stride + t * H + h;
                v = p.w[wi] * p.scale;
                if constexpr (kFp8) v *= p.q_scale[wi];
            }
            wreg[mf][hh] = v;
        }
    }

    const bool* key_valid = p.key_valid != nullptr ? p.key_valid + b * S : nullptr;
    float* out_row = p.out + (b * T + (t_ok ? t : 0)) * S;
    const uint32_t q_warp = q_smem + qi * kHeadRows * G::kRowBytes;

    for (int tile = 0; tile < num_tiles; ++tile) {
        cp_async_wait<kStages - 2>();
        __syncthreads();
        {
            const int next = tile + kStages - 1;
            if (next < num_tiles) load_k_tile(next, next % kStages);
            cp_async_commit();
        }
        const uint32_t k_stage = k_smem + (tile % kStages) * G::kKBytes;

        float acc[4][4][4];
#pragma unroll
        for (int mf = 0; mf < 4; ++mf)
#pragma unroll
            for (int nf = 0; nf < 4; ++nf)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[mf][nf][e] = 0.f;

#pragma unroll
        for (int ks = 0; ks < G::kSteps; ++ks) {
            uint32_t bf[4][2];
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                const int r = half * 32 + np * 16 + ((lane >> 4) << 3) + (lane & 7);
                const int c = ks * 2 + ((lane >> 3) & 1);
                ldmatrix_x4(k_stage + swz<G::kRowBytes>(r, c), bf[2 * np][0], bf[2 * np][1], bf[2 * np + 1][0],
                            bf[2 * np + 1][1]);
            }
#pragma unroll
            for (int mf = 0; mf < 4; ++mf) {
                if (mf < num_mf) {
                    uint32_t a[4];
                    const int r = mf * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
                    const int c = ks * 2 + (lane >> 4);
                    ldmatrix_x4(q_warp + swz<G::kRowBytes>(r, c), a[0], a[1], a[2], a[3]);
#pragma unroll
                    for (int nf = 0; nf < 4; ++nf) mma<kFp8>(acc[mf][nf], a, bf[nf][0], bf[nf][1]);
                }
            }
        }

        // ReLU, weighted head sum: part[i] for column (i / 2) * 8 + 2 * (lane % 4) + i % 2 of this warp.
        float part[8];
#pragma unroll
        for (int nf = 0; nf < 4; ++nf) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                float v = 0.f;
#pragma unroll
                for (int mf = 0; mf < 4; ++mf) {
                    v += wreg[mf][0] * fmaxf(acc[mf][nf][c], 0.f) + wreg[mf][1] * fmaxf(acc[mf][nf][2 + c], 0.f);
                }
                part[nf * 2 + c] = v;
            }
        }
        // Reduce-scatter over lane bits 4, 3, 2 (the head rows): lane ends with column index i = lane / 4.
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const bool hi = lane & 16;
            const float send = hi ? part[i] : part[4 + i];
            const float keep = hi ? part[4 + i] : part[i];
            part[i] = keep + __shfl_xor_sync(0xffffffffu, send, 16);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const bool hi = lane & 8;
            const float send = hi ? part[i] : part[2 + i];
            const float keep = hi ? part[2 + i] : part[i];
            part[i] = keep + __shfl_xor_sync(0xffffffffu, send, 8);
        }
        float v;
        {
            const bool hi = lane & 4;
            const float send = hi ? part[0] : part[1];
            const float keep = hi ? part[1] : part[0];
            v = keep + __shfl_xor_sync(0xffffffffu, send, 4);
        }
        const int i = lane >> 2;
        const int64_t s = static_cast<int64_t>(tile) * kKeys + half * 32 + (i >> 1) * 8 + 2 * (lane & 3) + (i & 1);
        if (t_ok && s < S) {
            const bool visible = s <= qpos && (key_valid == nullptr || key_valid[s]);
            if (visible) {
                if constexpr (kFp8) v *= p.k_scale[b * S + s];
                out_row[s] = v;
            } else if (p.write_invisible || s <= qpos) {
                out_row[s] = -INFINITY;
            }
        }
    }
    cp_async_wait<0>();

    // Key tiles past every query of the block: −inf, no arithmetic.
    if (p.write_invisible) {
        const int64_t s_begin = static_cast<int64_t>(num_tiles) * kKeys;
        const int64_t width = S - s_begin;
        if (width > 0) {
            for (int qq = 0; qq < kQueries; ++qq) {
                if (t0 + qq >= T) break;
                float* row = p.out + (b * T + t0 + qq) * S;
                for (int64_t s = s_begin + tid; s < S; s += kThreads) row[s] = -INFINITY;
            }
        }
    }
}

template <bool kFp8>
cudaError_t launch_typed(const IndexerLogitsParams& p, cudaStream_t stream) {
    const int smem = Geometry<kFp8>::kSmem;
    cudaError_t err =
        cudaFuncSetAttribute(indexer_logits_kernel<kFp8>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    const dim3 grid(static_cast<unsigned>((p.num_queries + kQueries - 1) / kQueries), static_cast<unsigned>(p.batch));
    indexer_logits_kernel<kFp8><<<grid, kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

// ---- Backward (bf16) -----------------------------------------------------------------------------------
// Note [Indexer backward]: with P = q·kᵀ per head and G[t, h, s] = g[t, s]·w[t, h]·scale·1[P > 0] (g zeroed
// where invisible): dq[t, h] = Σ_s G·k[s], dw[t, h] = scale·Σ_s g·ReLU(P), dk[s] = Σ_{t,h} G·q[t, h]. Two
// kernels recompute P on tensor cores and feed G (bf16, straight from the accumulator fragments, which have
// the A-operand layout) to a second mma: the query-major one owns dq and dw of 2 queries (warp = query ×
// 32 heads, keys streamed), the key-major one owns dk of 64 keys (warp = 16 keys, query pairs streamed) —
// every output has one owner, so no atomics and a deterministic result.

constexpr int kBwdThreads = 128;
constexpr int kBwdKeys = 64;
constexpr int kBwdRowBytes = kIndexerDim * 2;
constexpr int kBwdTileBytes = 64 * kBwdRowBytes;  // 64 rows (keys, or one query's heads)

__device__ __forceinline__ void ldmatrix_x4_trans(
    uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    uint32_t r[4];
    ldsm_x4_t(r, addr);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}

// dq and dw. Block: 2 queries; warp (query = warp / 2, heads 32·(warp % 2) + [0, 32)).
__global__ void __launch_bounds__(kBwdThreads, 2) indexer_dq_kernel(const IndexerBackwardParams p) {
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t q_smem = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    const uint32_t k_smem = q_smem + 2 * kBwdTileBytes;  // 2 stages follow the 2 queries' q rows
    __shared__ int key_limit;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int qi = warp >> 1, hbase = (warp & 1) * 32;
    const int64_t b = blockIdx.y, T = p.num_queries, S = p.num_keys;
    const int H = p.heads;
    const int64_t t0 = (static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x) * 2;
    const int64_t t = t0 + qi;
    const bool t_ok = t < T;
    const int64_t qpos = t_ok ? p.query_pos[b * T + t] : -1;
    const int num_mf = H - hbase >= 32 ? 2 : (H - hbase >= 16 ? 1 : 0);
    if (tid == 0) {
        int64_t lim = 0;
        for (int qq = 0; qq < 2; ++qq) {
            if (t0 + qq < T) {
                int64_t l = p.query_pos[b * T + t0 + qq] + 1;
                l = l < 0 ? 0 : (l > S ? S : l);
                lim = l > lim ? l : lim;
            }
        }
        key_limit = static_cast<int>(lim);
    }
    __syncthreads();
    const int num_tiles = (key_limit + kBwdKeys - 1) / kBwdKeys;
    const unsigned char* q_bytes = static_cast<const unsigned char*>(p.q);
    const unsigned char* k_bytes = static_cast<const unsigned char*>(p.k) + b * S * kBwdRowBytes;
    auto load_k_tile = [&](int tile, int stage) {
        const int64_t s0 = static_cast<int64_t>(tile) * kBwdKeys;
        for (int id = tid; id < kBwdKeys * 16; id += kBwdThreads) {
            const int r = id >> 4, c = id & 15;
            const bool ok = s0 + r < S;
            cp_async16(k_smem + stage * kBwdTileBytes + swz<kBwdRowBytes>(r, c),
                       k_bytes + (ok ? (s0 + r) * kBwdRowBytes + c * 16 : 0), ok);
        }
    };
    if (num_tiles > 0) {
        for (int id = tid; id < 2 * H * 16; id += kBwdThreads) {
            const int row = id >> 4, c = id & 15;
            const int qq = row / H, h = row % H;
            const bool ok = t0 + qq < T;
            const int64_t elem = ((b * T + (ok ? t0 + qq : 0)) * H + h) * static_cast<int64_t>(kIndexerDim);
            cp_async16(q_smem + swz<kBwdRowBytes>(qq * 64 + h, c), q_bytes + elem * 2 + c * 16, ok);
        }
        load_k_tile(0, 0);
        cp_async_commit();
    }
    float wv[2][2], dw_acc[2][2];
#pragma unroll
    for (int mf = 0; mf < 2; ++mf)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int h = hbase + mf * 16 + (lane >> 2) + e * 8;
            wv[mf][e] = (t_ok && h < H) ? p.w[(b * T + t) * H + h] * p.scale : 0.f;
            dw_acc[mf][e] = 0.f;
        }
    float dq[2][16][4];
#pragma unroll
    for (int mf = 0; mf < 2; ++mf)
#pragma unroll
        for (int nf = 0; nf < 16; ++nf)
#pragma unroll
            for (int e = 0; e < 4; ++e) dq[mf][nf][e] = 0.f;
    const bool* key_valid = p.key_valid != nullptr ? p.key_valid + b * S : nullptr;
    const float* g_row = p.grad + (b * T + (t_ok ? t : 0)) * S;
    const uint32_t q_warp = q_smem + qi * kBwdTileBytes;

    for (int tile = 0; tile < num_tiles; ++tile) {
        cp_async_wait<0>();
        __syncthreads();
        if (tile + 1 < num_tiles) load_k_tile(tile + 1, (tile + 1) & 1);
        cp_async_commit();
        const uint32_t k_stage = k_smem + (tile & 1) * kBwdTileBytes;
        const int64_t s0 = static_cast<int64_t>(tile) * kBwdKeys;
        if (num_mf == 0) continue;
        float c[2][8][4];
#pragma unroll
        for (int mf = 0; mf < 2; ++mf)
#pragma unroll
            for (int nf = 0; nf < 8; ++nf)
#pragma unroll
                for (int e = 0; e < 4; ++e) c[mf][nf][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < 8; ++ks) {
            uint32_t bf[8][2];
#pragma unroll
            for (int np = 0; np < 4; ++np) {
                const int r = np * 16 + ((lane >> 4) << 3) + (lane & 7);
                ldmatrix_x4(k_stage + swz<kBwdRowBytes>(r, ks * 2 + ((lane >> 3) & 1)), bf[2 * np][0], bf[2 * np][1],
                            bf[2 * np + 1][0], bf[2 * np + 1][1]);
            }
#pragma unroll
            for (int mf = 0; mf < 2; ++mf) {
                if (mf < num_mf) {
                    uint32_t a[4];
                    const int r = hbase + mf * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
                    ldmatrix_x4(q_warp + swz<kBwdRowBytes>(r, ks * 2 + (lane >> 4)), a[0], a[1], a[2], a[3]);
#pragma unroll
                    for (int nf = 0; nf < 8; ++nf) mma<false>(c[mf][nf], a, bf[nf][0], bf[nf][1]);
                }
            }
        }
        // g for this thread's columns (0 where invisible).
        float gv[8][2];
#pragma unroll
        for (int nf = 0; nf < 8; ++nf)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int64_t s = s0 + nf * 8 + 2 * (lane & 3) + e;
                const bool vis = t_ok && s < S && s <= qpos && (key_valid == nullptr || key_valid[s]);
                gv[nf][e] = vis ? g_row[s] : 0.f;
            }
            // Per 16-key step j: G → A fragments, dw, then dq += G · k.
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            uint32_t a[2][4];
#pragma unroll
            for (int mf = 0; mf < 2; ++mf) {
                float gg[2][4];
#pragma unroll
                for (int h2 = 0; h2 < 2; ++h2)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float v = c[mf][2 * j + h2][e], gval = gv[2 * j + h2][e & 1];
                        dw_acc[mf][e >> 1] += gval * fmaxf(v, 0.f);
                        gg[h2][e] = v > 0.f ? gval * wv[mf][e >> 1] : 0.f;
                    }
                a[mf][0] = pack_bf16(gg[0][0], gg[0][1]);
                a[mf][1] = pack_bf16(gg[0][2], gg[0][3]);
                a[mf][2] = pack_bf16(gg[1][0], gg[1][1]);
                a[mf][3] = pack_bf16(gg[1][2], gg[1][3]);
            }
#pragma unroll
            for (int np = 0; np < 8; ++np) {
                uint32_t b0, b1, b2, b3;
                const int r = j * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
                ldmatrix_x4_trans(k_stage + swz<kBwdRowBytes>(r, 2 * np + (lane >> 4)), b0, b1, b2, b3);
#pragma unroll
                for (int mf = 0; mf < 2; ++mf) {
                    if (mf < num_mf) {
                        mma<false>(dq[mf][2 * np], a[mf], b0, b1);
                        mma<false>(dq[mf][2 * np + 1], a[mf], b2, b3);
                    }
                }
            }
        }
    }
    cp_async_wait<0>();
    if (!t_ok) return;
#pragma unroll
    for (int mf = 0; mf < 2; ++mf) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            float v = dw_acc[mf][e];
            v += __shfl_xor_sync(0xffffffffu, v, 1);
            v += __shfl_xor_sync(0xffffffffu, v, 2);
            const int h = hbase + mf * 16 + (lane >> 2) + e * 8;
            if (h < H && (lane & 3) == 0) p.dw[(b * T + t) * H + h] = v * p.scale;
            if (h < H) {
                float* dst = p.dq + ((b * T + t) * H + h) * static_cast<int64_t>(kIndexerDim) + 2 * (lane & 3);
#pragma unroll
                for (int nf = 0; nf < 16; ++nf) {
                    *reinterpret_cast<float2*>(dst + nf * 8) = make_float2(dq[mf][nf][2 * e], dq[mf][nf][2 * e + 1]);
                }
            }
        }
    }
}

// dk. Block: 64 keys; warp = 16 keys × all d. Streams query pairs (128 q rows: 2 queries × 64 head slots).
__global__ void __launch_bounds__(kBwdThreads, 2) indexer_dk_kernel(const IndexerBackwardParams p) {
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t k_smem = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    const uint32_t q_smem = k_smem + kBwdTileBytes;                      // 2 stages × 2 × 64 rows
    float* w_smem = reinterpret_cast<float*>(smem + 5 * kBwdTileBytes);  // 2 stages × 128 weights
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t b = blockIdx.y, T = p.num_queries, S = p.num_keys;
    const int H = p.heads;
    const int64_t s0 = static_cast<int64_t>(blockIdx.x) * kBwdKeys;
    const int64_t num_qt = (T + 1) / 2;
    const int64_t* prefix = p.tile_prefix_max + b * num_qt;
    const int64_t* suffix = p.tile_suffix_max + b * num_qt;
    // Query tiles that can see a key >= s0: [first, last] (prefix max rises, suffix max falls).
    int64_t lo = 0, hi = num_qt;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (prefix[mid] >= s0)
            hi = mid;
        else
            lo = mid + 1;
    }
    const int64_t first = lo;
    lo = 0;
    hi = num_qt;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (suffix[mid] >= s0)
            lo = mid + 1;
        else
            hi = mid;
    }
    const int64_t last = lo - 1;

    const unsigned char* q_bytes = static_cast<const unsigned char*>(p.q);
    const unsigned char* k_bytes = static_cast<const unsigned char*>(p.k) + b * S * kBwdRowBytes;
    auto load_q_tile = [&](int64_t qt, int stage) {
        for (int id = tid; id < 128 * 16; id += kBwdThreads) {
            const int row = id >> 4, c = id & 15;
            const int qq = row >> 6, h = row & 63;
            const int64_t tt = qt * 2 + qq;
            const bool ok = tt < T && h < H;
            const int64_t elem = ok ? ((b * T + tt) * H + h) * static_cast<int64_t>(kIndexerDim) : 0;
            cp_async16(q_smem + stage * 2 * kBwdTileBytes + swz<kBwdRowBytes>(row, c), q_bytes + elem * 2 + c * 16, ok);
        }
        const int qq = tid >> 6, h = tid & 63;
        const int64_t tt = qt * 2 + qq;
        w_smem[stage * 128 + tid] = (tt < T && h < H) ? p.w[(b * T + tt) * H + h] * p.scale : 0.f;
    };
    if (first <= last) {
        for (int id = tid; id < kBwdKeys * 16; id += kBwdThreads) {
            const int r = id >> 4, c = id & 15;
            const bool ok = s0 + r < S;
            cp_async16(k_smem + swz<kBwdRowBytes>(r, c), k_bytes + (ok ? (s0 + r) * kBwdRowBytes + c * 16 : 0), ok);
        }
        load_q_tile(first, 0);
        cp_async_commit();
    }
    // This thread's keys: rows lane/4 and lane/4 + 8 of the warp's 16.
    int64_t key[2];
    bool key_ok[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        key[e] = s0 + warp * 16 + (lane >> 2) + e * 8;
        key_ok[e] = key[e] < S && (p.key_valid == nullptr || p.key_valid[b * S + key[e]]);
    }
    float dk[16][4];
#pragma unroll
    for (int nf = 0; nf < 16; ++nf)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[nf][e] = 0.f;
    uint32_t ka[8][4];
    bool have_ka = false;

    for (int64_t qt = first; qt <= last; ++qt) {
        const int stage = static_cast<int>((qt - first) & 1);
        cp_async_wait<0>();
        __syncthreads();
        if (qt + 1 <= last) load_q_tile(qt + 1, stage ^ 1);
        cp_async_commit();
        if (!have_ka) {  // the warp's 16 keys as A fragments, for every query tile
#pragma unroll
            for (int ks = 0; ks < 8; ++ks) {
                const int r = warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
                ldmatrix_x4(k_smem + swz<kBwdRowBytes>(r, ks * 2 + (lane >> 4)), ka[ks][0], ka[ks][1], ka[ks][2],
                            ka[ks][3]);
            }
            have_ka = true;
        }
        const uint32_t q_stage = q_smem + stage * 2 * kBwdTileBytes;
        const float* w_stage = w_smem + stage * 128;
        float c[16][4];
#pragma unroll
        for (int nf = 0; nf < 16; ++nf)
#pragma unroll
            for (int e = 0; e < 4; ++e) c[nf][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < 8; ++ks) {
#pragma unroll
            for (int np = 0; np < 8; ++np) {
                uint32_t b0, b1, b2, b3;
                const int r = np * 16 + ((lane >> 4) << 3) + (lane & 7);
                ldmatrix_x4(q_stage + swz<kBwdRowBytes>(r, ks * 2 + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma<false>(c[2 * np], ka[ks], b0, b1);
                mma<false>(c[2 * np + 1], ka[ks], b2, b3);
            }
        }
        // g[t, key] for the 2 queries × 2 keys of this thread (0 where invisible).
        float gv[2][2];  // [query][key row]
#pragma unroll
        for (int qq = 0; qq < 2; ++qq) {
            const int64_t tt = qt * 2 + qq;
            const int64_t qp = tt < T ? p.query_pos[b * T + tt] : -1;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                gv[qq][e] = (tt < T && key_ok[e] && key[e] <= qp) ? p.grad[(b * T + tt) * S + key[e]] : 0.f;
            }
        }
        // Per 16-column step j (query j / 4, heads 16·(j % 4) + [0, 16)): Gᵀ → A fragments, dk += Gᵀ · q.
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int qq = j >> 2;
            float gg[2][4];
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2) {
                const int col = (2 * j + h2) * 8 + 2 * (lane & 3);  // q row (qq * 64 + head)
                const float2 wpair = *reinterpret_cast<const float2*>(w_stage + col);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float v = c[2 * j + h2][e];
                    const float wgt = (e & 1) ? wpair.y : wpair.x;
                    gg[h2][e] = v > 0.f ? gv[qq][e >> 1] * wgt : 0.f;
                }
            }
            uint32_t a[4];
            a[0] = pack_bf16(gg[0][0], gg[0][1]);
            a[1] = pack_bf16(gg[0][2], gg[0][3]);
            a[2] = pack_bf16(gg[1][0], gg[1][1]);
            a[3] = pack_bf16(gg[1][2], gg[1][3]);
#pragma unroll
            for (int np = 0; np < 8; ++np) {
                uint32_t b0, b1, b2, b3;
                const int r = j * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
                ldmatrix_x4_trans(q_stage + swz<kBwdRowBytes>(r, 2 * np + (lane >> 4)), b0, b1, b2, b3);
                mma<false>(dk[2 * np], a, b0, b1);
                mma<false>(dk[2 * np + 1], a, b2, b3);
            }
        }
    }
    cp_async_wait<0>();
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        if (key[e] >= S) continue;
        float* dst = p.dk + (b * S + key[e]) * static_cast<int64_t>(kIndexerDim) + 2 * (lane & 3);
#pragma unroll
        for (int nf = 0; nf < 16; ++nf) {
            *reinterpret_cast<float2*>(dst + nf * 8) = make_float2(dk[nf][2 * e], dk[nf][2 * e + 1]);
        }
    }
}
}  // namespace

cudaError_t launch_indexer_logits(const IndexerLogitsParams& params, cudaStream_t stream) {
    if (params.batch == 0 || params.num_queries == 0 || params.num_keys == 0) return cudaSuccess;
    if (params.heads <= 0 || params.heads % 16 != 0 || params.heads > kIndexerMaxHeads ||
        params.num_keys > 0x7FFFFFFFLL || (params.num_queries + kQueries - 1) / kQueries > 0x7FFFFFFFLL ||
        params.batch > 65535) {
        return cudaErrorInvalidValue;
    }
    return params.fp8 ? launch_typed<true>(params, stream) : launch_typed<false>(params, stream);
}

cudaError_t launch_indexer_logits_backward(const IndexerBackwardParams& p, cudaStream_t stream) {
    if (p.batch == 0 || (p.num_queries == 0 && p.num_keys == 0)) return cudaSuccess;
    if (p.heads <= 0 || p.heads % 16 != 0 || p.heads > kIndexerMaxHeads || p.num_keys > 0x7FFFFFFFLL ||
        p.batch > 65535) {
        return cudaErrorInvalidValue;
    }
    if (p.num_queries > 0) {
        const int smem = 4 * kBwdTileBytes;  // 2 queries' q rows + 2 key stages
        cudaError_t err = cudaFuncSetAttribute(indexer_dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        if (err != cudaSuccess) return err;
        const dim3 grid(static_cast<unsigned>((p.num_queries + 1) / 2), static_cast<unsigned>(p.batch));
        indexer_dq_kernel<<<grid, kBwdThreads, smem, stream>>>(p);
        if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    if (p.num_keys > 0) {
        const int smem = 5 * kBwdTileBytes + 2 * 128 * static_cast<int>(sizeof(float));
        cudaError_t err = cudaFuncSetAttribute(indexer_dk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        if (err != cudaSuccess) return err;
        const dim3 grid(static_cast<unsigned>((p.num_keys + kBwdKeys - 1) / kBwdKeys), static_cast<unsigned>(p.batch));
        indexer_dk_kernel<<<grid, kBwdThreads, smem, stream>>>(p);
        if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    return cudaSuccess;
}

}  // namespace dsrl::dsa::kernels
