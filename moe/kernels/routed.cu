// The routed experts of a decode step on the tensor cores (see routed.cuh). Napkin math for single_gpu.yaml at batch
// 256 (32 experts of 768 -> 256 -> 768, k = 4, a shared expert of the same width): the experts' weights are 38 MB per
// layer, 13 µs at 3 TB/s; the pairs' products 1.5 GFLOP, about 3 µs of mma.sync. The dense decode computed all 32
// experts for every token (12 GFLOP) and wrote an [E, T, H] intermediate. So the kernels are built to stream
// weights: a block owns a slice of one expert's weights and one tile of up to 32 of its pairs, so each weight byte is
// read once per step from memory (an expert with more pairs has more tiles; they run side by side and share its
// weights through L2). Measured (H100, batch 256): the up kernel at about 1.4 TB/s, bound by each block's chain of
// reduction chunks rather than by bandwidth (docs/benchmarks.md, session 18); about 1.8 TB/s with shallower pipelines
// and so more blocks resident (session 21, below).
#include "core/kernels/launch.cuh"
#include "moe/kernels/routed.cuh"

#include <algorithm>

#include "core/kernels/mma.cuh"

namespace dsrl::moe::kernels {
namespace {

using dsrl::kernels::cp_async16;
using dsrl::kernels::cp_async_commit;
using dsrl::kernels::cp_async_pipeline;
using dsrl::kernels::frag_a_addr;
using dsrl::kernels::frag_b_addr;
using dsrl::kernels::from_operand;
using dsrl::kernels::ldsm_x4;
using dsrl::kernels::mma16816_t;
using dsrl::kernels::smem_addr;
using dsrl::kernels::swz;
using dsrl::kernels::to_operand;

constexpr int kThreads = 128;       // 4 warps: rows 16 · (warp mod 2) of the 32-row tile, columns half (warp / 2)
constexpr int kBM = kRoutedTile;    // pairs per tile (32)
constexpr int kBK = 64;             // reduction columns per stage (8 chunks of 16 bytes per row)
constexpr int kRowBytes = kBK * 2;  // one staged row
constexpr int kUpBN = 32;           // gate and up columns per block (each)
constexpr int kDownBN = 64;         // output columns per block
// Pipeline depth: a decode step's kernels are bound by how many weight bytes are in flight, not by FLOPs (an H200
// needs ~70 KB in flight per multiprocessor at its bandwidth and latency) — but each stage is shared memory, which
// caps the blocks resident per multiprocessor, and a batch-256 step's grid must fit in one wave. Measured on an H100
// (session 21, batch-256 step of single_gpu.yaml): up 6 → 4 stages (72 → 48 KiB, 3 → 4 blocks a multiprocessor)
// 18.8 → 14.3 µs a layer; down 4 → 3 stages (48 → 36 KiB) 10.6 → 8.6 µs.
constexpr int kUpStages = 4;             // the up product's reduction (768 for single_gpu.yaml: 12 chunks)
constexpr int kDownStages = 3;           // the down product's is inter (256: 4 chunks)
constexpr int kTileA = kBM * kRowBytes;  // 4 KiB
constexpr int kUpStageBytes = kTileA + 2 * kUpBN * kRowBytes;  // x | gate | up: 12 KiB
constexpr int kDownStageBytes = kTileA + kDownBN * kRowBytes;  // h | down: 12 KiB

template <typename T>
__device__ __forceinline__ float rnd(float v) {
    return from_operand(to_operand<T>(v));
}

constexpr int kPairThreads = 256;
constexpr int kScanPer = kRoutedMaxExperts / kPairThreads;  // entries a thread scans

// The experts' pair counts count[0 .. n) (n <= kRoutedMaxExperts) and their tiles of kBM, ceil(count / kBM), both as
// inclusive prefix sums, in place (tiles written whole): each thread sums kScanPer consecutive entries, the warps
// scan those sums with shuffles, one pass over the warps' totals. One barrier between; every thread of the block
// calls it, and syncs before reading the results.
__device__ void scan_counts(int* count, int* tiles, int n) {
    __shared__ int2 warp_total[kPairThreads / 32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int c[kScanPer], m[kScanPer], sum_c = 0, sum_m = 0;
#pragma unroll
    for (int i = 0; i < kScanPer; ++i) {
        const int idx = tid * kScanPer + i;
        c[i] = idx < n ? count[idx] : 0;
        m[i] = (c[i] + kBM - 1) / kBM;
        sum_c += c[i];
        sum_m += m[i];
    }
    int incl_c = sum_c, incl_m = sum_m;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
        const int yc = __shfl_up_sync(0xffffffffu, incl_c, o), ym = __shfl_up_sync(0xffffffffu, incl_m, o);
        if (lane >= o) {
            incl_c += yc;
            incl_m += ym;
        }
    }
    if (lane == 31) warp_total[warp] = make_int2(incl_c, incl_m);
    __syncthreads();
    int run_c = incl_c - sum_c, run_m = incl_m - sum_m;
    for (int w = 0; w < warp; ++w) {
        run_c += warp_total[w].x;
        run_m += warp_total[w].y;
    }
#pragma unroll
    for (int i = 0; i < kScanPer; ++i) {
        const int idx = tid * kScanPer + i;
        run_c += c[i];
        run_m += m[i];
        if (idx < n) {
            count[idx] = run_c;
            tiles[idx] = run_m;
        }
    }
}

__host__ __device__ inline int routed_tile_bound(const RoutedExpertsParams& p) {
    return static_cast<int>(routed_tiles(p.tokens, p.k, p.experts));
}

// Rows of the h and out scratch a token owns: its k routed pairs, then the shared expert's.
__device__ inline int slots_of(const RoutedExpertsParams& p) { return p.k + (p.shared_gate != nullptr ? 1 : 0); }

constexpr int kPairBatch = 8;  // indices a thread loads at once, all in flight before the first atomic

// The routed pairs grouped by expert and cut into tiles of 32: rank[q] = the pair's place among its expert's
// (shared-memory atomics) | its expert << 16 (ranks < kRoutedMaxPairs = 2^15, experts < 2^10); the counts and the
// tiles per expert scanned; order[start(e) + rank] = the pair's row; tile i = (expert, start in order, count), count 0
// for the unused ones. An id outside [0, experts) is left out (rank −1).
__global__ void __launch_bounds__(kPairThreads) routed_pairs_kernel(const RoutedExpertsParams p) {
    dsrl::kernels::pdl_enter();
    extern __shared__ int pair_smem[];
    const int tid = threadIdx.x, E = p.experts;
    int* count = pair_smem;         // [E], then inclusive sums
    int* tiles = pair_smem + E;     // [E], inclusive sums
    int* rank = pair_smem + 2 * E;  // [pairs]
    const int pairs = static_cast<int>(p.tokens * p.k), slots = slots_of(p);
    for (int e = tid; e < E; e += kPairThreads) count[e] = 0;
    const int lane = tid & 31;
    for (int q0 = 0; q0 < pairs; q0 += kPairThreads * kPairBatch) {
        int ex[kPairBatch];
#pragma unroll
        for (int u = 0; u < kPairBatch; ++u) {
            const int q = q0 + u * kPairThreads + tid;
            const int64_t id = q < pairs ? p.indices[q] : -1;
            ex[u] = id >= 0 && id < E ? static_cast<int>(id) : -1;
        }
        if (q0 == 0) __syncthreads();  // the counts zeroed (the first batch's loads issued before)
#pragma unroll
        for (int u = 0; u < kPairBatch; ++u) {
            if (q0 + u * kPairThreads >= pairs) continue;  // the same for the whole block: the match takes all lanes
            const int q = q0 + u * kPairThreads + tid, e = ex[u];
            // One atomic per expert a warp's lanes share (a decode batch often routes many rows to the same experts).
            const unsigned peers = __match_any_sync(0xffffffffu, e);
            const int leader = __ffs(static_cast<int>(peers)) - 1;
            int base = 0;
            if (lane == leader && e >= 0) base = atomicAdd(&count[e], __popc(peers));
            base = __shfl_sync(0xffffffffu, base, leader);
            if (q < pairs) rank[q] = e >= 0 ? (base + __popc(peers & ((1u << lane) - 1u))) | (e << 16) : -1;
        }
    }
    __syncthreads();
    scan_counts(count, tiles, E);
    __syncthreads();
    const auto start = [](const int* sums, int e) { return e == 0 ? 0 : sums[e - 1]; };  // exclusive sum at e
    for (int e = tid; e < E; e += kPairThreads) {
        const int begin = start(count, e), n = count[e] - begin;
        for (int i = start(tiles, e), m0 = 0; m0 < n; ++i, m0 += kBM) {
            p.tiles[3 * i] = e;
            p.tiles[3 * i + 1] = begin + m0;
            p.tiles[3 * i + 2] = min(kBM, n - m0);
        }
    }
    for (int i = tiles[E - 1] + tid; i < routed_tile_bound(p); i += kPairThreads) p.tiles[3 * i + 2] = 0;
    for (int q = tid; q < pairs; q += kPairThreads) {
        const int r = rank[q];
        if (r < 0) continue;
        const int t = q / p.k, j = q - t * p.k;
        p.order[start(count, r >> 16) + (r & 0xffff)] = t * slots + j;
    }
}

// Group v's expert (experts for a shared slice) and its rows (token · slots + slot) into rows[], their count
// returned: a routed tile's from the pairs kernel, a shared slice's (tokens 32 · (v − bound) ...) at slot k. Ends
// with a barrier.
__device__ int tile_rows(const RoutedExpertsParams& p, int v, int slots, int* rows, int& expert) {
    const int bound = routed_tile_bound(p);
    int begin, count;
    if (v >= bound) {
        expert = p.experts;
        begin = (v - bound) * kBM;
        count = static_cast<int>(min(static_cast<int64_t>(kBM), p.tokens - begin));
    } else {
        expert = p.tiles[3 * v];
        begin = p.tiles[3 * v + 1];
        count = p.tiles[3 * v + 2];
    }
    const int i = threadIdx.x;
    if (i < count) rows[i] = v >= bound ? (begin + i) * slots + p.k : p.order[begin + i];
    __syncthreads();
    return count;
}

// h[pair, n0 .. n0 + 32) = silu(x[token] · gate[n]ᵀ) · (x[token] · up[n]ᵀ) for the block's tile of up to 32
// pairs, each op rounded to T.
template <typename T>
__global__ void __launch_bounds__(kThreads) routed_up_kernel(const RoutedExpertsParams p) {
    dsrl::kernels::pdl_enter();
    extern __shared__ __align__(128) uint8_t smem[];
    __shared__ int rows[kBM];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n0 = static_cast<int>(blockIdx.x) * kUpBN;
    const int slots = slots_of(p);
    int expert = 0;
    const int count = tile_rows(p, static_cast<int>(blockIdx.y), slots, rows, expert);
    if (count == 0) return;
    const bool shared = expert == p.experts;
    const int64_t H = p.hidden, I = p.inter;
    const auto* x = static_cast<const T*>(p.x);
    const T* gate = shared ? static_cast<const T*>(p.shared_gate) : static_cast<const T*>(p.gate) + expert * I * H;
    const T* up = shared ? static_cast<const T*>(p.shared_up) : static_cast<const T*>(p.up) + expert * I * H;
    const int chunks = static_cast<int>(H / kBK);
    const uint32_t base = smem_addr(smem);
    // Each thread's 16-byte pieces of a stage (kBM · 8 = kUpBN · 8 = 2 · kThreads): sources at chunk 0 and their
    // swizzled offsets, computed once.
    static_assert(kBM * 8 == 2 * kThreads && kUpBN * 8 == 2 * kThreads, "two x and two weight pieces a thread");
    const T* x_src[2];
    const T* g_src[2];
    const T* u_src[2];
    uint32_t dst[2];
    bool x_ok[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const int i = tid + j * kThreads, r = i >> 3, c = (i & 7) * 8;
        x_ok[j] = r < count;
        x_src[j] = x + (x_ok[j] ? static_cast<int64_t>(rows[r] / slots) : 0) * H + c;
        g_src[j] = gate + (n0 + r) * H + c;
        u_src[j] = up + (n0 + r) * H + c;
        dst[j] = swz(r, c, 8);
    }
    const auto stage = [&](int kc, int s) {
        const uint32_t a = base + s * kUpStageBytes, g = a + kTileA, u = g + kUpBN * kRowBytes;
        const int k0 = kc * kBK;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            cp_async16(a + dst[j], x_src[j] + k0, x_ok[j]);
            cp_async16(g + dst[j], g_src[j] + k0, true);
            cp_async16(u + dst[j], u_src[j] + k0, true);
        }
    };
    const int rg = warp & 1, half_n = warp >> 1;  // the warp's 16 rows and its 16 of the 32 columns
    float acc_g[2][4] = {}, acc_u[2][4] = {};
    const bool busy = rg * 16 < count;  // a warp whose 16 rows are all past the pairs only stages
    cp_async_pipeline<kUpStages>(chunks, stage, [&](int s) {
        if (!busy) return;
        const uint32_t a = base + s * kUpStageBytes, g = a + kTileA, u = g + kUpBN * kRowBytes;
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) {
            uint32_t af[4], bf[4];
            ldsm_x4(af, frag_a_addr(a, rg * 16, kk, lane));
            ldsm_x4(bf, frag_b_addr(g, half_n * 16, kk, lane));
            mma16816_t<T>(acc_g[0], af, bf[0], bf[1]);
            mma16816_t<T>(acc_g[1], af, bf[2], bf[3]);
            ldsm_x4(bf, frag_b_addr(u, half_n * 16, kk, lane));
            mma16816_t<T>(acc_u[0], af, bf[0], bf[1]);
            mma16816_t<T>(acc_u[1], af, bf[2], bf[3]);
        }
    });
    if (!busy) return;
    T* h = static_cast<T*>(p.h);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = rg * 16 + (lane >> 2) + half * 8;
        if (r >= count) continue;
        T* row = h + static_cast<int64_t>(rows[r]) * I + n0 + half_n * 16 + 2 * (lane & 3);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            T out[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float gv = rnd<T>(acc_g[nt][half * 2 + e]), uv = rnd<T>(acc_u[nt][half * 2 + e]);
                const float act = rnd<T>(__fdiv_rn(gv, __fadd_rn(1.0f, expf(-gv))));  // silu, as ATen rounds it
                out[e] = to_operand<T>(__fmul_rn(act, uv));
            }
            *reinterpret_cast<uint32_t*>(row + nt * 8) = *reinterpret_cast<const uint32_t*>(out);
        }
    }
}

// out[pair, n0 .. n0 + 64) = h[pair] · down[n]ᵀ for the block's tile of up to 32 pairs, rounded to T.
//
// Launched under PDL while the up kernel runs, a block reads its tile and stages the first kDownStages − 1 chunks of
// its expert's down weights before it waits for the up kernel: the lists come from the pairs kernel (complete before
// the up kernel passed its own wait, which came before this launch) and the weights from no kernel of the step, so
// only h waits. A block without a tile leaves without waiting, but block (0, 0) always waits, so the grid never ends
// before the up kernel. Measured (H100, batch-256 step of single_gpu.yaml, session 28): 798.1 -> 785.8 us a step.
template <typename T>
__global__ void __launch_bounds__(kThreads) routed_down_kernel(const RoutedExpertsParams p) {
    extern __shared__ __align__(128) uint8_t smem[];
    __shared__ int rows[kBM];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n0 = static_cast<int>(blockIdx.x) * kDownBN;
    int expert = 0;
    const int count = tile_rows(p, static_cast<int>(blockIdx.y), slots_of(p), rows, expert);
    if (count == 0) {
        if (blockIdx.x == 0 && blockIdx.y == 0) dsrl::kernels::pdl_enter();
        return;
    }
    const int64_t H = p.hidden, I = p.inter;
    const auto* h = static_cast<const T*>(p.h);
    const T* down =
        expert == p.experts ? static_cast<const T*>(p.shared_down) : static_cast<const T*>(p.down) + expert * H * I;
    const int chunks = static_cast<int>(I / kBK);
    const uint32_t base = smem_addr(smem);
    static_assert(kBM * 8 == 2 * kThreads && kDownBN * 8 == 4 * kThreads, "two h and four weight pieces a thread");
    const T* a_src[2];
    const T* w_src[4];
    uint32_t a_dst[2], w_dst[4];
    bool a_ok[2];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int i = tid + j * kThreads, r = i >> 3, c = (i & 7) * 8;
        if (j < 2) {
            a_ok[j] = r < count;
            a_src[j] = h + (a_ok[j] ? static_cast<int64_t>(rows[r]) : 0) * I + c;
            a_dst[j] = swz(r, c, 8);
        }
        w_src[j] = down + (n0 + r) * I + c;
        w_dst[j] = swz(r, c, 8);
    }
    const auto stage_w = [&](int kc, int s) {
        const uint32_t w = base + s * kDownStageBytes + kTileA;
#pragma unroll
        for (int j = 0; j < 4; ++j) cp_async16(w + w_dst[j], w_src[j] + kc * kBK, true);
    };
    // The weights' first stages in one group ahead of the wait; the pipeline's first groups then hold h alone (the
    // weights' group, older, has landed whenever theirs has).
    for (int s = 0; s < kDownStages - 1 && s < chunks; ++s) stage_w(s, s);
    cp_async_commit();
    dsrl::kernels::pdl_enter();
    const auto stage = [&](int kc, int s) {
        const uint32_t a = base + s * kDownStageBytes;
#pragma unroll
        for (int j = 0; j < 2; ++j) cp_async16(a + a_dst[j], a_src[j] + kc * kBK, a_ok[j]);
        if (kc >= kDownStages - 1) stage_w(kc, s);
    };
    const int rg = warp & 1, half_n = warp >> 1;  // the warp's 16 rows and its 32 of the 64 columns
    float acc[kDownBN / 16][4] = {};
    const bool busy = rg * 16 < count;
    cp_async_pipeline<kDownStages>(chunks, stage, [&](int s) {
        if (!busy) return;
        const uint32_t a = base + s * kDownStageBytes, w = a + kTileA;
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) {
            uint32_t af[4];
            ldsm_x4(af, frag_a_addr(a, rg * 16, kk, lane));
#pragma unroll
            for (int nb = 0; nb < kDownBN / 32; ++nb) {
                uint32_t bf[4];
                ldsm_x4(bf, frag_b_addr(w, half_n * 32 + nb * 16, kk, lane));
                mma16816_t<T>(acc[2 * nb], af, bf[0], bf[1]);
                mma16816_t<T>(acc[2 * nb + 1], af, bf[2], bf[3]);
            }
        }
    });
    if (!busy) return;
    T* out = static_cast<T*>(p.out);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = rg * 16 + (lane >> 2) + half * 8;
        if (r >= count) continue;
        T* row = out + static_cast<int64_t>(rows[r]) * H + n0 + half_n * 32 + 2 * (lane & 3);
#pragma unroll
        for (int nt = 0; nt < kDownBN / 16; ++nt) {
            T o[2] = {to_operand<T>(acc[nt][half * 2]), to_operand<T>(acc[nt][half * 2 + 1])};
            *reinterpret_cast<uint32_t*>(row + nt * 8) = *reinterpret_cast<const uint32_t*>(o);
        }
    }
}

// y[t, c .. c + 8) = core/kernels/pair_sum.cuh's sum of token t's rows (round(Σ_j out[t, j] · w[t, j]), + out[t, k]
// rounded again): one thread per 16 bytes of y — the function its readers call, so they get these bits.
template <typename T>
__global__ void routed_combine_kernel(const dsrl::kernels::PairSum s, void* y_out, const int64_t tokens) {
    dsrl::kernels::pdl_enter();
    const int64_t chunks = s.hidden / 8;
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= tokens * chunks) return;
    const int64_t t = i / chunks, c = (i - t * chunks) * 8;
    float v[8];
    dsrl::kernels::pair_sum8(s, t, c, v);
    T y[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) y[u] = to_operand<T>(v[u]);  // exact: v is already of T
    *reinterpret_cast<uint4*>(static_cast<T*>(y_out) + t * s.hidden + c) = *reinterpret_cast<const uint4*>(y);
}

template <typename T>
cudaError_t launch_combine(const dsrl::kernels::PairSum& s, void* y, int64_t tokens, cudaStream_t stream) {
    const int64_t threads = tokens * (s.hidden / 8);
    return dsrl::kernels::launch(routed_combine_kernel<T>, static_cast<unsigned>((threads + 255) / 256), 256, 0, stream,
                                 s, y, tokens);
}

template <typename T>
cudaError_t launch_typed(const RoutedExpertsParams& p, cudaStream_t stream) {
    constexpr int kUpSmem = kUpStages * kUpStageBytes, kDownSmem = kDownStages * kDownStageBytes;
    constexpr int kPairSmem = sizeof(int) * (2 * kRoutedMaxExperts + kRoutedMaxPairs);
    static const cudaError_t configured = [] {  // once per type: the shared memory over the 48 KiB default
        cudaError_t e = cudaFuncSetAttribute(routed_up_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, kUpSmem);
        if (e == cudaSuccess) {
            e = cudaFuncSetAttribute(routed_down_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, kDownSmem);
        }
        if (e == cudaSuccess) {
            e = cudaFuncSetAttribute(routed_pairs_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kPairSmem);
        }
        return e;
    }();
    if (configured != cudaSuccess) return configured;
    const size_t pair_smem = sizeof(int) * static_cast<size_t>(2 * p.experts + p.tokens * p.k);
    using dsrl::kernels::launch;
    cudaError_t e = launch(routed_pairs_kernel, 1, kPairThreads, pair_smem, stream, p);
    const auto shared_blocks = static_cast<unsigned>(p.shared_gate != nullptr ? (p.tokens + kBM - 1) / kBM : 0);
    const auto groups = static_cast<unsigned>(routed_tile_bound(p)) + shared_blocks;
    if (e == cudaSuccess)
        e = launch(routed_up_kernel<T>, dim3(static_cast<unsigned>(p.inter / kUpBN), groups), kThreads, kUpSmem, stream,
                   p);
    if (e == cudaSuccess) {
        e = launch(routed_down_kernel<T>, dim3(static_cast<unsigned>(p.hidden / kDownBN), groups), kThreads, kDownSmem,
                   stream, p);
    }
    return e;
}

}  // namespace

cudaError_t launch_pair_combine(const dsrl::kernels::PairSum& s, void* y, int64_t tokens, cudaStream_t stream) {
    if (tokens == 0) return cudaSuccess;
    if (s.hidden % 8 != 0 || s.k < 1 || s.slots < s.k) return cudaErrorInvalidValue;
    switch (s.type) {
        case dsrl::kernels::Elem::kBF16:
            return launch_combine<__nv_bfloat16>(s, y, tokens, stream);
        case dsrl::kernels::Elem::kF16:
            return launch_combine<__half>(s, y, tokens, stream);
        default:
            return cudaErrorInvalidValue;
    }
}

cudaError_t launch_routed_experts(const RoutedExpertsParams& p, cudaStream_t stream) {
    if (p.tokens == 0) return cudaSuccess;
    if (p.hidden % kRoutedAlign != 0 || p.inter % kRoutedAlign != 0 || p.k < 1 || p.k > kRoutedMaxK ||
        p.tokens * p.k > kRoutedMaxPairs || p.experts < 1 || p.experts > kRoutedMaxExperts)
        return cudaErrorInvalidValue;
    switch (p.type) {
        case dsrl::kernels::Elem::kBF16:
            return launch_typed<__nv_bfloat16>(p, stream);
        case dsrl::kernels::Elem::kF16:
            return launch_typed<__half>(p, stream);
        default:
            return cudaErrorInvalidValue;
    }
}

}  // namespace dsrl::moe::kernels
