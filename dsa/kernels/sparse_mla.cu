// Sparse MLA attention kernels (see sparse_mla.cuh). Tensor-core tiles with mma.sync m16n8k16 (bf16 in, fp32
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
#include "dsa/kernels/sparse_mla.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

namespace dsrl::kernels {
namespace {

constexpr int kThreads = 256;        // 8 warps
constexpr int kBlockH = 64;          // heads per block
constexpr int kBlockK = 64;          // entries per tile
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

// Byte offset of element (row, col) in a swizzled bf16 tile of `chunks` 16-byte chunks per row.
__device__ __forceinline__ uint32_t swz(int row, int col, int chunks) {
    return uint32_t((row * chunks + ((col >> 3) ^ (row & 7))) * 16 + (col & 7) * 2);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    const int bytes = valid ? 16 : 0;  // 0: zero-fill, nothing read
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void named_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
    asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v));
}

// Stages 64 rows of [lat | pe] (bf16, 576 wide) into a swizzled tile. row_src(r) returns the row index into the
// [rows, 512] / [rows, 64] sources, or -1 for a zero row.
template <typename RowFn>
__device__ __forceinline__ void stage_rows(uint32_t tile, const __nv_bfloat16* lat, const __nv_bfloat16* pe,
                                           RowFn row_src) {
    for (int i = threadIdx.x; i < kBlockK * kChunksQK; i += kThreads) {
        const int r = i / kChunksQK, c = i % kChunksQK;
        const int64_t src = row_src(r);
        const bool ok = src >= 0;
        const __nv_bfloat16* ptr = !ok          ? lat
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
__device__ __forceinline__ void online_softmax_tile(float (&s)[16], const int32_t* idx_t, int kh, int lane, int r0,
                                                    float scale_log2, float* red_max, float (&m_run)[2],
                                                    float (&l_run)[2], float (&alpha)[2], Exchange exchange,
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
__device__ __forceinline__ void store_forward_rows(const SparseMlaFwdParams& p, const float (&o)[128],
                                                   float (&l_run)[2], const float (&m_run)[2], float* red_sum, int kh,
                                                   int lane, int r0, int64_t bt, int64_t h0, int split,
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
                *reinterpret_cast<float2*>(dst + col) = make_float2(o[nt * 4 + 2 * i] * inv, o[nt * 4 + 2 * i + 1] * inv);
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

template <bool kSplit>
__global__ void __launch_bounds__(kThreads, 1) sparse_mla_fwd_kernel(const SparseMlaFwdParams p) {
    extern __shared__ __align__(128) uint8_t smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int rg = warp & 3, kh = warp >> 2;
    const int64_t num_hblocks = (p.num_heads + kBlockH - 1) / kBlockH;
    const int64_t hb = blockIdx.x % num_hblocks;
    const int64_t bt = blockIdx.x / num_hblocks;  // b · T + t
    const int64_t b = bt / p.num_queries;
    const int64_t h0 = hb * kBlockH;
    const int split = kSplit ? int(blockIdx.y) : 0;
    const int num_tiles = int((p.topk + kBlockK - 1) / kBlockK);
    const int per_split = (num_tiles + p.num_splits - 1) / p.num_splits;
    const int t_begin = min(num_tiles, split * per_split);
    const int t_end = min(num_tiles, t_begin + per_split);

    const auto* q_lat = static_cast<const __nv_bfloat16*>(p.q_lat);
    const auto* q_pe = static_cast<const __nv_bfloat16*>(p.q_pe);
    const auto* c_kv = static_cast<const __nv_bfloat16*>(p.c_kv) + b * p.ckv_batch_stride;
    const auto* k_pe = static_cast<const __nv_bfloat16*>(p.k_pe) + b * p.kpe_batch_stride;
    const int32_t* idx_row = p.indices + bt * p.topk;
    int32_t* idx_s = reinterpret_cast<int32_t*>(smem + kFwdOffIdx);
    float* red_max = reinterpret_cast<float*>(smem + kFwdOffMax);
    float* red_sum = reinterpret_cast<float*>(smem + kFwdOffSum);
    const uint32_t q_tile = smem_addr(smem), p_tile = smem_addr(smem + kFwdOffP);
    const uint32_t k_tile0 = smem_addr(smem + kFwdOffK0), k_tile1 = smem_addr(smem + kFwdOffK1);

    // Q rows (zero rows past the last head).
    stage_rows(q_tile, q_lat, q_pe, [&](int r) -> int64_t {
        return h0 + r < p.num_heads ? bt * p.num_heads + h0 + r : -1;
    });
    auto load_tile = [&](int tile, int buf) {
        const int64_t base = int64_t(tile) * kBlockK;
        stage_rows(buf ? k_tile1 : k_tile0, c_kv, k_pe, [&](int r) -> int64_t {
            const int64_t slot = base + r;
            return slot < p.topk ? int64_t(__ldg(idx_row + slot)) : -1;
        });
        if (tid < kBlockK) {
            const int64_t slot = base + tid;
            idx_s[buf * kBlockK + tid] = slot < p.topk ? __ldg(idx_row + slot) : -1;
        }
    };
    if (t_begin < t_end) load_tile(t_begin, 0);
    cp_async_commit();

    const float scale_log2 = p.scale * kLog2e;
    float m_run[2] = {-INFINITY, -INFINITY};
    float l_run[2] = {0.f, 0.f};
    float acc_o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc_o[i] = 0.f;

    const int a_row = rg * 16 + (lane & 15);                          // ldmatrix row of the A operand
    const int b_row_s = kh * 32 + (lane & 7) + ((lane >> 4) << 3);   // entry row of the B operand in S
    const int b_col_s = ((lane >> 3) & 1) << 3;
    const int r0 = rg * 16 + (lane >> 2);                             // accumulator rows r0, r0 + 8

    for (int tile = t_begin; tile < t_end; ++tile) {
        const int buf = (tile - t_begin) & 1;
        cp_async_wait_all();
        // A barrier that also says whether the tile holds any valid entry (top-k rows end in −1 padding).
        const bool any_valid = __syncthreads_or(tid < kBlockK && idx_s[buf * kBlockK + tid] >= 0);
        if (tile + 1 < t_end) load_tile(tile + 1, buf ^ 1);
        cp_async_commit();
        if (!any_valid) continue;
        const uint32_t k_tile = buf ? k_tile1 : k_tile0;

        // S = Q · Kᵀ over 576 dims: 16 rows × 32 entries per warp.
        float acc_s[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) acc_s[i] = 0.f;
#pragma unroll 4
        for (int kk = 0; kk < kDimQK / 16; ++kk) {
            uint32_t a[4];
            ldsm_x4(a, q_tile + swz(a_row, kk * 16 + ((lane >> 4) << 3), kChunksQK));
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                uint32_t bf[4];
                ldsm_x4(bf, k_tile + swz(b_row_s + np * 16, kk * 16 + b_col_s, kChunksQK));
                mma16816(frag4(acc_s, 2 * np), a, bf[0], bf[1]);
                mma16816(frag4(acc_s, 2 * np + 1), a, bf[2], bf[3]);
            }
        }

        // Online softmax: row maxima across the row group's two warps, P (bf16) to shared memory.
        float alpha[2];
        online_softmax_tile(acc_s, idx_s + buf * kBlockK, kh, lane, r0, scale_log2, red_max, m_run, l_run, alpha,
                            [&] { named_barrier(1 + rg, 64); },
                            [&](int row, int col, uint32_t v) { st_shared_u32(p_tile + swz(row, col, kChunksP), v); });
        rescale_rows(acc_o, alpha);
        named_barrier(1 + rg, 64);  // the row group's P (both entry halves) is in shared memory

        // O += P · V over the tile's 64 entries: 16 rows × 256 latent columns per warp.
#pragma unroll
        for (int kk = 0; kk < kBlockK / 16; ++kk) {
            uint32_t a[4];
            ldsm_x4(a, p_tile + swz(a_row, kk * 16 + ((lane >> 4) << 3), kChunksP));
            const int v_row = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
#pragma unroll
            for (int np = 0; np < 16; ++np) {
                uint32_t bf[4];
                ldsm_x4_t(bf, k_tile + swz(v_row, kh * 256 + np * 16 + ((lane >> 4) << 3), kChunksQK));
                mma16816(frag4(acc_o, 2 * np), a, bf[0], bf[1]);
                mma16816(frag4(acc_o, 2 * np + 1), a, bf[2], bf[3]);
            }
        }
    }
    cp_async_wait_all();
    store_forward_rows<kSplit>(p, acc_o, l_run, m_run, red_sum, kh, lane, r0, bt, h0, split, [] { __syncthreads(); });
}

// ---------------------------------------------------------------------------------------------------------------
// Forward with Hopper warpgroup MMA (wgmma, sm_90a). Same block shape as above (one token, 64 heads, two
// warpgroups), operands read by the tensor cores straight from shared memory in the canonical 128-byte-swizzle
// layout: a 64-row tile is stored as 64-column "atoms" of 64 rows × 128 B (8 KB), 16-byte chunk c of row r at
// chunk c ^ (r mod 8). Warpgroup g computes S for entries 32g..32g+31 of each tile (m64n32k16, Q and K both
// K-major), the two exchange row maxima, write P (bf16) to shared memory, and warpgroup g accumulates latent
// columns 256g..256g+255 of O (m64n256k16, P K-major, V = the K tile read MN-major).
// Warp-specialized: a third warpgroup (40 registers, setmaxnreg) only gathers — Q once, then each tile's 64
// entries into one of two K buffers by cp.async, announced on an mbarrier — while the two compute warpgroups
// (232 registers) never issue a load; they hand a buffer back on a second mbarrier when both are done with it.
// ---------------------------------------------------------------------------------------------------------------
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DSRL_WGMMA 1
#endif

__device__ __forceinline__ void wgmma_m64n32_kk(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_m64n256_kt(float (&d)[128], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Keeps the compiler from moving accesses of accumulator registers across a wgmma wait (the wgmma asm
// statements "produce" them at issue, the hardware only at the wait).
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Shared-memory matrix descriptor, 128-byte swizzle; lbo/sbo in bytes.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo >> 4) & 0x3FFF) << 16) |
           (uint64_t((sbo >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}

// Byte offset of (row, col) in a 64-row atom-layout tile (see above).
__device__ __forceinline__ uint32_t atom_off(int row, int col) {
    return uint32_t((col >> 6) * 8192 + row * 128 + ((((col >> 3) & 7) ^ (row & 7)) << 4) + (col & 7) * 2);
}

// mbarrier and register-budget primitives of the warp-specialized forward.
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {  // release: this thread's prior writes go with it
    asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar) : "memory");
}
// One arrival once every cp.async this thread issued before has landed (the count was set for it: noinc).
__device__ __forceinline__ void mbar_arrive_on_cp_async(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {  // acquire
    asm volatile(
        "{\n.reg .pred done;\nWAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
template <int N>
__device__ __forceinline__ void regs_increase() {
#ifdef DSRL_WGMMA
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void regs_decrease() {
#ifdef DSRL_WGMMA
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// Warp-specialized layout: warpgroups 0 and 1 compute (as described above), warpgroup 2 only gathers. The
// producer owns two K buffers; "full" phases say a tile (and, for the first, Q) has landed, "empty" phases that
// both consumer warpgroups are done reading one.
constexpr int kWsThreads = 384;
constexpr int kWsConsumers = 256;
constexpr int kWsOffK0 = kTileQKBytes;
constexpr int kWsOffK1 = 2 * kTileQKBytes;
constexpr int kWsOffP = 3 * kTileQKBytes;
constexpr int kWsOffIdx = kWsOffP + kTilePBytes;         // int32 [2][64]: the indices of each K buffer's tile
constexpr int kWsOffMax = kWsOffIdx + 2 * kBlockK * 4;   // float [2][64]; row sums reuse it after the loop
constexpr int kWsOffBar = kWsOffMax + 2 * kBlockH * 4;   // uint64 full[2], empty[2]
constexpr int kWgSmem = kWsOffBar + 4 * 8 + 1024;        // + slack to align the base to 1024 B
static_assert(kWgSmem <= 227 * 1024, "wgmma forward shared memory over the sm_90 limit");
constexpr int kWsConsumerRegs = 232;  // 2 × 128 × 232 + 128 × 40 ≤ 65536
constexpr int kWsProducerRegs = 40;

// Producer thread pt (0..127) stages row pt / 2 of a 64-row tile: 16-byte chunks (pt & 1) + 2m, m = 0..35, so
// one warp instruction covers 32 contiguous bytes of 16 rows. src < 0: a zero row.
__device__ __forceinline__ void gather_row_half(uint32_t tile, const __nv_bfloat16* lat, const __nv_bfloat16* pe,
                                                int64_t src, int pt) {
    const int r = pt >> 1, half = pt & 1;
    const bool ok = src >= 0;
    const __nv_bfloat16* lat_row = lat + (ok ? src * kMlaLatentDim : 0);
    const __nv_bfloat16* pe_row = pe + (ok ? src * kMlaRopeDim : 0);
    const uint32_t row_base = tile + r * 128;
#pragma unroll
    for (int m = 0; m < kChunksQK / 2; ++m) {
        const int c = half + 2 * m;  // (c >> 3) == m >> 2, (c & 7) == half + 2 (m & 3)
        const uint32_t dst = row_base + (m >> 2) * 8192 + (((half + 2 * (m & 3)) ^ (r & 7)) << 4);
        const __nv_bfloat16* src_ptr = m < kChunksV / 2 ? lat_row + c * 8 : pe_row + (c - kChunksV) * 8;
        cp_async16(dst, ok ? src_ptr : lat, ok);
    }
}

template <bool kSplit>
__global__ void __launch_bounds__(kWsThreads, 1) sparse_mla_fwd_wgmma_kernel(const SparseMlaFwdParams p) {
#ifdef DSRL_WGMMA
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    // Swizzled operands need 1024-byte-aligned tiles.
    uint8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t num_hblocks = (p.num_heads + kBlockH - 1) / kBlockH;
    const int64_t hb = blockIdx.x % num_hblocks;
    const int64_t bt = blockIdx.x / num_hblocks;
    const int64_t b = bt / p.num_queries;
    const int64_t h0 = hb * kBlockH;
    const int split = kSplit ? int(blockIdx.y) : 0;
    const int num_tiles = int((p.topk + kBlockK - 1) / kBlockK);
    const int per_split = (num_tiles + p.num_splits - 1) / p.num_splits;
    const int t_begin = min(num_tiles, split * per_split);
    const int t_end = min(num_tiles, t_begin + per_split);

    int32_t* idx_s = reinterpret_cast<int32_t*>(smem + kWsOffIdx);
    float* red_max = reinterpret_cast<float*>(smem + kWsOffMax);
    float* red_sum = red_max;
    const uint32_t q_tile = smem_addr(smem), p_tile = smem_addr(smem + kWsOffP);
    const uint32_t k_tile0 = smem_addr(smem + kWsOffK0), k_tile1 = smem_addr(smem + kWsOffK1);
    const uint32_t bar_full = smem_addr(smem + kWsOffBar), bar_empty = bar_full + 16;  // [2] each, 8 B apart
    if (tid == 0) {
        for (int s = 0; s < 2; ++s) {
            mbar_init(bar_full + 8 * s, 2 * 128);  // per producer thread: its cp.async landing + its index stores
            mbar_init(bar_empty + 8 * s, kWsConsumers);
        }
    }
    __syncthreads();

    if (warp >= kWsConsumers / 32) {
        // ---- producer warpgroup: Q once, then each tile's entries into the buffer its consumers released ----
        regs_decrease<kWsProducerRegs>();
        const int pt = tid - kWsConsumers;
        const int r = pt >> 1;
        const auto* c_kv = static_cast<const __nv_bfloat16*>(p.c_kv) + b * p.ckv_batch_stride;
        const auto* k_pe = static_cast<const __nv_bfloat16*>(p.k_pe) + b * p.kpe_batch_stride;
        const int32_t* idx_row = p.indices + bt * p.topk;
        if (t_begin < t_end) {
            gather_row_half(q_tile, static_cast<const __nv_bfloat16*>(p.q_lat), static_cast<const __nv_bfloat16*>(p.q_pe),
                            h0 + r < p.num_heads ? bt * p.num_heads + h0 + r : -1, pt);
        }
        for (int tile = t_begin; tile < t_end; ++tile) {
            const int n = tile - t_begin, s = n & 1;
            if (n >= 2) mbar_wait(bar_empty + 8 * s, ((n >> 1) + 1) & 1);  // tile n − 2's readers are done
            const int64_t e = int64_t(tile) * kBlockK + r;
            const int32_t src = e < p.topk ? __ldg(idx_row + e) : -1;
            if ((pt & 1) == 0) idx_s[s * kBlockK + r] = src;
            gather_row_half(s ? k_tile1 : k_tile0, c_kv, k_pe, src, pt);
            mbar_arrive_on_cp_async(bar_full + 8 * s);
            mbar_arrive(bar_full + 8 * s);
        }
        cp_async_wait_all();
        return;
    }

    // ---- consumer warpgroups ----
    regs_increase<kWsConsumerRegs>();
    const int rg = warp & 3, kh = warp >> 2;  // kh: the warpgroup
    const float scale_log2 = p.scale * kLog2e;
    float m_run[2] = {-INFINITY, -INFINITY};
    float l_run[2] = {0.f, 0.f};
    float acc_o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc_o[i] = 0.f;
    const int r0 = rg * 16 + (lane >> 2);
    const uint64_t desc_q = smem_desc(q_tile, 16, 1024), desc_p = smem_desc(p_tile, 16, 1024);

    for (int tile = t_begin; tile < t_end; ++tile) {
        const int n = tile - t_begin, s = n & 1;
        const int32_t* idx_t = idx_s + s * kBlockK;
        mbar_wait(bar_full + 8 * s, (n >> 1) & 1);
        fence_async_smem();  // the tile arrived through the generic proxy; wgmma reads through the async one
        // Every consumer warp sees the same indices, so all of them take the same branch (top-k rows end in −1).
        const bool any_valid = __any_sync(0xffffffffu, idx_t[lane] >= 0 || idx_t[lane + 32] >= 0);
        if (any_valid) {
            const uint32_t k_tile = s ? k_tile1 : k_tile0;
            // S = Q · Kᵀ for this warpgroup's 32 entries: 36 k-steps of m64n32k16.
            float acc_s[16];
            wgmma_fence();
            const uint64_t desc_k = smem_desc(k_tile + kh * 32 * 128, 16, 1024);
#pragma unroll
            for (int kk = 0; kk < kDimQK / 16; ++kk) {
                const uint32_t koff = ((kk >> 2) * 8192 + (kk & 3) * 32) >> 4;  // descriptor units of 16 B
                wgmma_m64n32_kk(acc_s, desc_q + koff, desc_k + koff, kk > 0);
            }
            wgmma_commit();
            wgmma_wait0();
            fence_regs(acc_s);
            fence_regs(acc_o);

            // Both halves' row maxima; the barrier also says every consumer finished the previous tile's O
            // product, so P may be overwritten.
            float alpha[2];
            online_softmax_tile(acc_s, idx_t, kh, lane, r0, scale_log2, red_max, m_run, l_run, alpha,
                                [] { named_barrier(1, kWsConsumers); },
                                [&](int row, int col, uint32_t v) { st_shared_u32(p_tile + atom_off(row, col), v); });
            rescale_rows(acc_o, alpha);
            fence_async_smem();  // P was written with ordinary stores; the O product reads it through the async proxy
            named_barrier(2, kWsConsumers);  // all 64 rows × 64 entries of P are in shared memory

            // O += P · V: 4 k-steps of m64n256k16 over this warpgroup's 256 latent columns (V read MN-major).
            wgmma_fence();
            const uint64_t desc_v = smem_desc(k_tile + kh * 4 * 8192, 8192, 1024);
#pragma unroll
            for (int kk = 0; kk < kBlockK / 16; ++kk) {
                wgmma_m64n256_kt(acc_o, desc_p + kk * 2, desc_v + kk * 128, 1);
            }
            wgmma_commit();
            wgmma_wait0();
            fence_regs(acc_o);
        }
        fence_async_smem();  // the tensor cores' reads of this buffer are ordered before the producer's next writes
        mbar_arrive(bar_empty + 8 * s);
    }

    // Every read of red_max happened before this thread's last barrier 2.
    store_forward_rows<kSplit>(p, acc_o, l_run, m_run, red_sum, kh, lane, r0, bt, h0, split,
                               [] { named_barrier(1, kWsConsumers); });
#endif
}

// Combines split-KV partials: one block of 128 threads per (b, t, h) row, 4 columns per thread.
__global__ void __launch_bounds__(128) sparse_mla_combine_kernel(const SparseMlaFwdParams p) {
    const int64_t row = blockIdx.x;
    const int64_t plane = p.batch * p.num_queries * p.num_heads;
    float m = -INFINITY;
    for (int s = 0; s < p.num_splits; ++s) m = fmaxf(m, p.partial_lse[s * plane + row]);
    float total = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (m != -INFINITY) {
        for (int s = 0; s < p.num_splits; ++s) {
            const float w = expf(p.partial_lse[s * plane + row] - m);
            total += w;
            const float4 v = reinterpret_cast<const float4*>(p.partial_out + (s * plane + row) * kMlaLatentDim)[threadIdx.x];
            acc.x += w * v.x;
            acc.y += w * v.y;
            acc.z += w * v.z;
            acc.w += w * v.w;
        }
    }
    const float inv = total > 0.f ? 1.f / total : 0.f;
    auto* dst = static_cast<__nv_bfloat16*>(p.out) + row * kMlaLatentDim + threadIdx.x * 4;
    reinterpret_cast<__nv_bfloat162*>(dst)[0] = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
    reinterpret_cast<__nv_bfloat162*>(dst)[1] = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
    if (threadIdx.x == 0) p.lse[row] = total > 0.f ? m + logf(total) : -INFINITY;
}

// ---------------------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------------------
constexpr int kDqCols = kDimQK / 2;  // 288 dQ columns per warp
constexpr int kDkvChunk = 48;        // dKV columns per register pass (3 ldmatrix pairs)

// Adds an m16n8 accumulator fragment c (rows: entries key_lo / key_hi, −1 = skip; columns col8 + 2 (lane mod 4)
// and + 1) to the fp32 [S, 576] rows of grad_kv. sm_90: float4 atomics — lane pairs swap halves so that the even
// lane holds 4 adjacent columns of row lo and the odd lane 4 of row hi, half the operations of float2.
__device__ __forceinline__ void add_fragment_atomic(float* grad_kv, int32_t key_lo, int32_t key_hi, int col8,
                                                    const float (&c)[4], int lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const bool odd = lane & 1;
    const int32_t key = odd ? key_hi : key_lo;
    const float s0 = odd ? c[0] : c[2], s1 = odd ? c[1] : c[3];
    const float r0 = __shfl_xor_sync(0xffffffffu, s0, 1), r1 = __shfl_xor_sync(0xffffffffu, s1, 1);
    const float4 v = odd ? make_float4(r0, r1, c[2], c[3]) : make_float4(c[0], c[1], r0, r1);
    if (key >= 0) atomicAdd(reinterpret_cast<float4*>(grad_kv + int64_t(key) * kDimQK + col8 + 4 * ((lane & 3) >> 1)), v);
#else
    const int col = col8 + 2 * (lane & 3);  // vector float atomics need sm_90
    for (int i = 0; i < 2; ++i) {
        if (key_lo >= 0) atomicAdd(grad_kv + int64_t(key_lo) * kDimQK + col + i, c[i]);
        if (key_hi >= 0) atomicAdd(grad_kv + int64_t(key_hi) * kDimQK + col + i, c[2 + i]);
    }
#endif
}

__global__ void __launch_bounds__(kThreads, 1) sparse_mla_bwd_kernel(const SparseMlaBwdParams p) {
    extern __shared__ __align__(128) uint8_t smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int rg = warp & 3, kh = warp >> 2;
    const int64_t num_hblocks = (p.num_heads + kBlockH - 1) / kBlockH;
    const int64_t hb = blockIdx.x % num_hblocks;
    const int64_t bt = blockIdx.x / num_hblocks;
    const int64_t b = bt / p.num_queries;
    const int64_t h0 = hb * kBlockH;
    const int num_tiles = int((p.topk + kBlockK - 1) / kBlockK);

    const auto* c_kv = static_cast<const __nv_bfloat16*>(p.c_kv) + b * p.ckv_batch_stride;
    const auto* k_pe = static_cast<const __nv_bfloat16*>(p.k_pe) + b * p.kpe_batch_stride;
    float* grad_kv = p.grad_kv + b * p.num_keys * kDimQK;
    const int32_t* idx_row = p.indices + bt * p.topk;
    int32_t* idx_s = reinterpret_cast<int32_t*>(smem + kBwdOffIdx);
    float* lse_s = reinterpret_cast<float*>(smem + kBwdOffLse);
    float* delta_s = reinterpret_cast<float*>(smem + kBwdOffDelta);
    const uint32_t q_tile = smem_addr(smem), do_tile = smem_addr(smem + kBwdOffDO);
    const uint32_t k_tile = smem_addr(smem + kBwdOffK);
    const uint32_t p_tile = smem_addr(smem + kBwdOffP), ds_tile = smem_addr(smem + kBwdOffDS);

    stage_rows(q_tile, static_cast<const __nv_bfloat16*>(p.q_lat), static_cast<const __nv_bfloat16*>(p.q_pe),
               [&](int r) -> int64_t { return h0 + r < p.num_heads ? bt * p.num_heads + h0 + r : -1; });
    {
        const auto* grad_out = static_cast<const __nv_bfloat16*>(p.grad_out);
        for (int i = tid; i < kBlockH * kChunksV; i += kThreads) {
            const int r = i / kChunksV, c = i % kChunksV;
            const bool ok = h0 + r < p.num_heads;
            const __nv_bfloat16* src = ok ? grad_out + (bt * p.num_heads + h0 + r) * kMlaLatentDim + c * 8 : grad_out;
            cp_async16(do_tile + swz(r, c * 8, kChunksV), src, ok);
        }
    }
    if (tid < kBlockH) {
        const bool ok = h0 + tid < p.num_heads;
        const int64_t row = bt * p.num_heads + h0 + tid;
        // lse in the log2 domain; a padded or empty row (−inf) gets +inf so that every P is exp2(−inf) = 0.
        const float lse = ok ? p.lse[row] : -INFINITY;
        lse_s[tid] = lse == -INFINITY ? INFINITY : lse * kLog2e;
        delta_s[tid] = ok ? p.delta[row] : 0.f;
    }

    const float scale_log2 = p.scale * kLog2e;
    float acc_dq[kDqCols / 8][4];
#pragma unroll
    for (int i = 0; i < kDqCols / 8; ++i) acc_dq[i][0] = acc_dq[i][1] = acc_dq[i][2] = acc_dq[i][3] = 0.f;
    const int a_row = rg * 16 + (lane & 15);
    const int a_col = (lane >> 4) << 3;
    const int b_row_s = kh * 32 + (lane & 7) + ((lane >> 4) << 3);
    const int b_col_s = ((lane >> 3) & 1) << 3;
    const int r0 = rg * 16 + (lane >> 2);
    const int t_row = (lane & 7) + (((lane >> 3) & 1) << 3);  // row of an x4.trans load over a 16 × 16 block
    const int t_col = (lane >> 4) << 3;
    const int at_row = (lane & 7) + ((lane >> 4) << 3);      // transposed-A load: stored row (head)
    const int at_col = ((lane >> 3) & 1) << 3;               // stored column (entry) offset

    for (int tile = 0; tile < num_tiles; ++tile) {
        const int64_t base = int64_t(tile) * kBlockK;
        const int32_t my_idx = tid < kBlockK && base + tid < p.topk ? __ldg(idx_row + base + tid) : -1;
        if (!__syncthreads_or(my_idx >= 0)) continue;  // nothing valid in this tile (−1 padding)
        if (tid < kBlockK) idx_s[tid] = my_idx;
        stage_rows(k_tile, c_kv, k_pe, [&](int r) -> int64_t {
            const int64_t slot = base + r;
            return slot < p.topk ? int64_t(__ldg(idx_row + slot)) : -1;
        });
        cp_async_commit();
        cp_async_wait_all();
        __syncthreads();

        // S = Q·Kᵀ and dP = dO·Vᵀ (V = the first 512 columns of K): 16 rows × 32 entries per warp.
        float acc_s[4][4], acc_dp[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            acc_s[i][0] = acc_s[i][1] = acc_s[i][2] = acc_s[i][3] = 0.f;
            acc_dp[i][0] = acc_dp[i][1] = acc_dp[i][2] = acc_dp[i][3] = 0.f;
        }
#pragma unroll 2
        for (int kk = 0; kk < kDimQK / 16; ++kk) {
            uint32_t a[4];
            ldsm_x4(a, q_tile + swz(a_row, kk * 16 + a_col, kChunksQK));
            uint32_t bf[2][4];
            ldsm_x4(bf[0], k_tile + swz(b_row_s, kk * 16 + b_col_s, kChunksQK));
            ldsm_x4(bf[1], k_tile + swz(b_row_s + 16, kk * 16 + b_col_s, kChunksQK));
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                mma16816(acc_s[2 * np], a, bf[np][0], bf[np][1]);
                mma16816(acc_s[2 * np + 1], a, bf[np][2], bf[np][3]);
            }
            if (kk < kMlaLatentDim / 16) {
                uint32_t g[4];
                ldsm_x4(g, do_tile + swz(a_row, kk * 16 + a_col, kChunksV));
#pragma unroll
                for (int np = 0; np < 2; ++np) {
                    mma16816(acc_dp[2 * np], g, bf[np][0], bf[np][1]);
                    mma16816(acc_dp[2 * np + 1], g, bf[np][2], bf[np][3]);
                }
            }
        }
        // P = exp2(S·scale·log2e − lse·log2e); dS = P ∘ (dP − δ) · scale; both to shared memory (bf16).
        const float lse_r[2] = {lse_s[r0], lse_s[r0 + 8]};
        const float delta_r[2] = {delta_s[r0], delta_s[r0 + 8]};
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            const int col = kh * 32 + nt * 8 + 2 * (lane & 3);
            float pv[4], dsv[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool valid = idx_s[col + (e & 1)] >= 0;
                pv[e] = valid ? exp2f(acc_s[nt][e] * scale_log2 - lse_r[e >> 1]) : 0.f;
                dsv[e] = pv[e] * (acc_dp[nt][e] - delta_r[e >> 1]) * p.scale;
            }
            st_shared_u32(p_tile + swz(r0, col, kChunksP), pack_bf16(pv[0], pv[1]));
            st_shared_u32(p_tile + swz(r0 + 8, col, kChunksP), pack_bf16(pv[2], pv[3]));
            st_shared_u32(ds_tile + swz(r0, col, kChunksP), pack_bf16(dsv[0], dsv[1]));
            st_shared_u32(ds_tile + swz(r0 + 8, col, kChunksP), pack_bf16(dsv[2], dsv[3]));
        }
        __syncthreads();

        // dQ += dS · K: 16 rows × 288 columns per warp.
#pragma unroll
        for (int kk = 0; kk < kBlockK / 16; ++kk) {
            uint32_t a[4];
            ldsm_x4(a, ds_tile + swz(a_row, kk * 16 + a_col, kChunksP));
#pragma unroll
            for (int np = 0; np < kDqCols / 16; ++np) {
                uint32_t bf[4];
                ldsm_x4_t(bf, k_tile + swz(kk * 16 + t_row, kh * kDqCols + np * 16 + t_col, kChunksQK));
                mma16816(acc_dq[2 * np], a, bf[0], bf[1]);
                mma16816(acc_dq[2 * np + 1], a, bf[2], bf[3]);
            }
        }

        // dKV = dSᵀ·Q (+ Pᵀ·dO on the 512 latent columns): 16 entries × 288 columns per warp, in chunks of 48.
        const int e0 = rg * 16;  // this warp's entries
        const int32_t key_lo = idx_s[e0 + (lane >> 2)], key_hi = idx_s[e0 + (lane >> 2) + 8];
#pragma unroll 1
        for (int chunk = 0; chunk < kDqCols / kDkvChunk; ++chunk) {
            const int c0 = kh * kDqCols + chunk * kDkvChunk;
            float acc[kDkvChunk / 8][4];
#pragma unroll
            for (int i = 0; i < kDkvChunk / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < kBlockH / 16; ++kk) {
                uint32_t a_ds[4], a_p[4];
                ldsm_x4_t(a_ds, ds_tile + swz(kk * 16 + at_row, e0 + at_col, kChunksP));
                ldsm_x4_t(a_p, p_tile + swz(kk * 16 + at_row, e0 + at_col, kChunksP));
#pragma unroll
                for (int np = 0; np < kDkvChunk / 16; ++np) {
                    const int col = c0 + np * 16;
                    uint32_t bf[4];
                    ldsm_x4_t(bf, q_tile + swz(kk * 16 + t_row, col + t_col, kChunksQK));
                    mma16816(acc[2 * np], a_ds, bf[0], bf[1]);
                    mma16816(acc[2 * np + 1], a_ds, bf[2], bf[3]);
                    if (col < kMlaLatentDim) {
                        ldsm_x4_t(bf, do_tile + swz(kk * 16 + t_row, col + t_col, kChunksV));
                        mma16816(acc[2 * np], a_p, bf[0], bf[1]);
                        mma16816(acc[2 * np + 1], a_p, bf[2], bf[3]);
                    }
                }
            }
#pragma unroll
            for (int nt = 0; nt < kDkvChunk / 8; ++nt) {
                add_fragment_atomic(grad_kv, key_lo, key_hi, c0 + nt * 8, acc[nt], lane);
            }
        }
        __syncthreads();  // K, P and dS are rewritten by the next tile
    }

    // dQ out: columns [0, 512) → grad_q_lat, [512, 576) → grad_q_pe.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int64_t h = h0 + r0 + 8 * i;
        if (h >= p.num_heads) continue;
        const int64_t row = bt * p.num_heads + h;
        auto* dq_lat = static_cast<__nv_bfloat16*>(p.grad_q_lat) + row * kMlaLatentDim;
        auto* dq_pe = static_cast<__nv_bfloat16*>(p.grad_q_pe) + row * kMlaRopeDim;
#pragma unroll
        for (int nt = 0; nt < kDqCols / 8; ++nt) {
            const int col = kh * kDqCols + nt * 8 + 2 * (lane & 3);
            const __nv_bfloat162 v = __floats2bfloat162_rn(acc_dq[nt][2 * i], acc_dq[nt][2 * i + 1]);
            if (col < kMlaLatentDim) {
                *reinterpret_cast<__nv_bfloat162*>(dq_lat + col) = v;
            } else {
                *reinterpret_cast<__nv_bfloat162*>(dq_pe + (col - kMlaLatentDim)) = v;
            }
        }
    }
}

// δ[row] = Σ_c grad_out[row, c] · out[row, c] over the 512 latent columns: one warp per row, 16 columns per lane.
__global__ void __launch_bounds__(256) sparse_mla_delta_kernel(const __nv_bfloat16* grad_out,
                                                               const __nv_bfloat16* out, float* delta, int64_t rows) {
    const int64_t row = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float acc = 0.f;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int64_t off = row * kMlaLatentDim + half * 256 + lane * 8;
        const uint4 g = *reinterpret_cast<const uint4*>(grad_out + off);
        const uint4 o = *reinterpret_cast<const uint4*>(out + off);
        const auto* g2 = reinterpret_cast<const __nv_bfloat162*>(&g);
        const auto* o2 = reinterpret_cast<const __nv_bfloat162*>(&o);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 a = __bfloat1622float2(g2[i]), b = __bfloat1622float2(o2[i]);
            acc += a.x * b.x + a.y * b.y;
        }
    }
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
    if (lane == 0) delta[row] = acc;
}

}  // namespace

cudaError_t launch_sparse_mla_delta(const void* grad_out, const void* out, float* delta, int64_t rows,
                                    cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    sparse_mla_delta_kernel<<<unsigned((rows + 7) / 8), 256, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(grad_out), static_cast<const __nv_bfloat16*>(out), delta, rows);
    return cudaGetLastError();
}

int sparse_mla_num_splits(int64_t batch, int64_t num_queries, int64_t num_heads, int64_t topk, int num_sms) {
    const int64_t blocks = batch * num_queries * ((num_heads + kBlockH - 1) / kBlockH);
    const int64_t tiles = (topk + kBlockK - 1) / kBlockK;
    if (blocks >= num_sms || tiles <= 1) return 1;
    // Enough splits to cover the device once, each keeping at least two tiles when possible.
    const int64_t want = (num_sms + blocks - 1) / blocks;
    return int(std::max<int64_t>(1, std::min<int64_t>({want, tiles / 2 > 0 ? tiles / 2 : 1, 64})));
}

cudaError_t launch_sparse_mla_fwd(const SparseMlaFwdParams& p, cudaStream_t stream) {
    const int64_t blocks = p.batch * p.num_queries * ((p.num_heads + kBlockH - 1) / kBlockH);
    if (blocks == 0) return cudaSuccess;
    bool wgmma = p.use_wgmma;
    if (wgmma) {  // the wgmma kernel is built for sm_90a only
        int device = 0, major = 0, minor = 0;
        cudaError_t err = cudaGetDevice(&device);
        if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
        if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
        if (err != cudaSuccess) return err;
        wgmma = major == 9 && minor == 0;
    }
    const bool split = p.num_splits > 1;
    if (split && (p.partial_out == nullptr || p.partial_lse == nullptr)) return cudaErrorInvalidValue;
    auto* kernel = wgmma ? (split ? sparse_mla_fwd_wgmma_kernel<true> : sparse_mla_fwd_wgmma_kernel<false>)
                         : (split ? sparse_mla_fwd_kernel<true> : sparse_mla_fwd_kernel<false>);
    const int smem = wgmma ? kWgSmem : kFwdSmem;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    kernel<<<dim3(unsigned(blocks), unsigned(p.num_splits)), wgmma ? kWsThreads : kThreads, smem, stream>>>(p);
    err = cudaGetLastError();
    if (err != cudaSuccess || !split) return err;
    const int64_t rows = p.batch * p.num_queries * p.num_heads;
    sparse_mla_combine_kernel<<<unsigned(rows), kMlaLatentDim / 4, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_sparse_mla_bwd(const SparseMlaBwdParams& p, cudaStream_t stream) {
    const int64_t blocks = p.batch * p.num_queries * ((p.num_heads + kBlockH - 1) / kBlockH);
    if (blocks == 0) return cudaSuccess;
    cudaError_t err =
        cudaFuncSetAttribute(sparse_mla_bwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBwdSmem);
    if (err != cudaSuccess) return err;
    sparse_mla_bwd_kernel<<<unsigned(blocks), kThreads, kBwdSmem, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace dsrl::kernels
