// A warp's fp32 dot products of one row with the rows of a small weight matrix: out[j] = Σ_h x[h] · w[j, h] for
// j < n, what at::linear(x.float(), w.float()) computes for one row (the sum in another order). For the decode
// step's few-output projections that stay fp32 (the router's logits, the indexer's head weights): one warp per token
// instead of a cast, an fp32 GEMM with its split-K reduction and a scale (four kernels).
//
// The row goes to shared memory in fp32 once; each lane then reads it four elements at a time against the weight rows
// (16-byte loads of fp32 weights, 8-byte of bf16 / fp16 ones), sixteen loads in flight, and each row's partial sums
// meet in a butterfly. What bounds it is latency — a warp's chain of weight loads — so a block's warps split the weight
// rows and no load waits behind a branch. Measured on an H100 at a batch-256 decode step of single_gpu.yaml: a first
// version (one warp per token, a branch around each load) took 78 µs a router call; this one 14.5 µs for the logits
// and the selection, against 15.8 µs for the cast, GEMM, reduction and selection it replaces plus their three graph
// nodes; the indexer's head weights 4.9 µs against 11.9. Since session 21 rows that fit go to block_tile_dots below
// instead (two or eight rows a block, each weight quad read once for all of them; the router 10.6 µs a layer with
// the residual add + norm before it, the head weights 6.0 µs with theirs). Sees no torch types.
#pragma once

#include <cstdint>

#include "core/kernels/elem.cuh"
#include "core/kernels/launch.cuh"

namespace dsrl::kernels {

/// Longest row the dot products take: the fp32 copy of the row in shared memory (8 KiB).
constexpr int kRowDotMaxDim = 2048;

/// Whether the warp dot products take rows of `dim` elements: dim a positive multiple of 4, at most kRowDotMaxDim (the
/// weight rows start on 8-byte boundaries; the caller checks the weight's base is 16-byte aligned).
constexpr bool row_dot_takes(int64_t dim) { return dim > 0 && dim % 4 == 0 && dim <= kRowDotMaxDim; }

/// Warps of a tile kernel's block (block_tile_dots): 256 threads, which stage its 2 or 8 rows (kTileRowsMax), 4 or 1
/// warps a row. Two rows a block spread a decode batch over more multiprocessors (each warp's share of a row's staging
/// and of the dot products 4× smaller); eight read the weights once per eight rows (a prefill's thousands).
constexpr int kTileWarps = 8;
constexpr int kTileRowsMax = 8;

/// Most bytes of weights a two-row tile kernel copies into shared memory before it waits (launch_tile): the router's
/// gate of 256 bf16 rows of 192, or 32 fp32 rows of 768.
constexpr int64_t kTileStagedMaxBytes = 96 * 1024;

/// Whether a two-row tile kernel stages weights w of `bytes` (a multiple of 16, at most kTileStagedMaxBytes, w 16-byte
/// aligned) before it waits; DSRL_TILE_STAGE=0 in the environment turns it off (read once).
bool tile_stages_weights(const void* w, int64_t bytes);
/// Overrides DSRL_TILE_STAGE in this process: 1 stages, 0 does not, −1 goes back to the environment's (tests).
void set_tile_stage(int mode);

#ifdef __CUDACC__
namespace row_dot_detail {

template <typename W>
__device__ __forceinline__ float4 load4(const W* w, int64_t i);

template <>
__device__ __forceinline__ float4 load4<float>(const float* w, int64_t i) {
    return *reinterpret_cast<const float4*>(w + i);
}

template <>
__device__ __forceinline__ float4 load4<__nv_bfloat16>(const __nv_bfloat16* w, int64_t i) {
    const uint2 u = *reinterpret_cast<const uint2*>(w + i);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    return {a.x, a.y, b.x, b.y};
}

template <>
__device__ __forceinline__ float4 load4<__half>(const __half* w, int64_t i) {
    const uint2 u = *reinterpret_cast<const uint2*>(w + i);
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
    return {a.x, a.y, b.x, b.y};
}

// Passes of eight weight rows, j0 = 8 · (first + k · stride): each lane reads two 4-element quads of the row and of
// each weight row an iteration (sixteen weight loads in flight), every index clamped so that no load waits on a branch.
template <typename W>
__device__ __forceinline__ void dots(const float* xs,
                                     const W* w,
                                     int n,
                                     int dim,
                                     int first,
                                     int stride,
                                     bool scaled,
                                     float scale,
                                     float* out,
                                     int lane) {
    constexpr int kRows = 8;
    const int quads = dim / 4;
    const auto* x4 = reinterpret_cast<const float4*>(xs);
    for (int j0 = kRows * first; j0 < n; j0 += kRows * stride) {
        float acc[kRows];
#pragma unroll
        for (int u = 0; u < kRows; ++u) acc[u] = 0.f;
        for (int q = lane; q < quads; q += 64) {
            const bool two = q + 32 < quads;
            const int q2 = two ? q + 32 : q;
            const float4 xa = x4[q], xb = x4[q2];
            float4 wa[kRows], wb[kRows];
#pragma unroll
            for (int u = 0; u < kRows; ++u) {
                const int64_t row = static_cast<int64_t>(min(j0 + u, n - 1)) * dim;
                wa[u] = load4(w, row + 4 * q);
                wb[u] = load4(w, row + 4 * q2);
            }
#pragma unroll
            for (int u = 0; u < kRows; ++u) {
                float a = fmaf(xa.x, wa[u].x, acc[u]);
                a = fmaf(xa.y, wa[u].y, a);
                a = fmaf(xa.z, wa[u].z, a);
                a = fmaf(xa.w, wa[u].w, a);
                float b = fmaf(xb.x, wb[u].x, a);
                b = fmaf(xb.y, wb[u].y, b);
                b = fmaf(xb.z, wb[u].z, b);
                b = fmaf(xb.w, wb[u].w, b);
                acc[u] = two ? b : a;
            }
        }
#pragma unroll
        for (int u = 0; u < kRows; ++u) {
            float s = acc[u];
#pragma unroll
            for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
            if (j0 + u < n && lane == ((j0 + u) & 31)) out[j0 + u] = scaled ? __fmul_rn(s, scale) : s;
        }
    }
}

// A block's dot products of kRows staged rows with a chunk of kTileW weight rows per warp pass: the lanes split the
// row's quads, kTileU quads per lane a round (every weight load of the round in flight before its first use, the
// indices clamped), each weight quad used for all kRows rows; the lanes' kRows · kTileW partial sums meet in a
// transposing butterfly (then a plain one over the lanes left) that leaves lane L < kRows · kTileW the full sum of
// (row L / kTileW, weight row L % kTileW).
constexpr int kTileW = 4;
constexpr int kTileU = 3;

template <int kRows, typename W>
__device__ __forceinline__ void tile_dots(const float* xs,
                                          const W* w,
                                          int n,
                                          int dim,
                                          int rows,
                                          bool scaled,
                                          float scale,
                                          float* out,
                                          int ldo,
                                          int warp,
                                          int warps,
                                          int lane) {
    constexpr int kValues = kRows * kTileW;
    static_assert(kValues <= 32 && (kValues & (kValues - 1)) == 0, "a power of two of values, at most one a lane");
    const int quads = dim / 4;
    for (int j0 = kTileW * warp; j0 < n; j0 += kTileW * warps) {
        float v[kValues];
#pragma unroll
        for (int i = 0; i < kValues; ++i) v[i] = 0.f;
        for (int q0 = lane; q0 < quads; q0 += 32 * kTileU) {
            float4 wq[kTileU][kTileW];
#pragma unroll
            for (int u = 0; u < kTileU; ++u) {
#pragma unroll
                for (int r = 0; r < kTileW; ++r) {
                    wq[u][r] =
                        load4(w, static_cast<int64_t>(min(j0 + r, n - 1)) * dim + 4 * min(q0 + 32 * u, quads - 1));
                }
            }
#pragma unroll
            for (int u = 0; u < kTileU; ++u) {
                const int q = q0 + 32 * u;
                if (q >= quads) continue;
#pragma unroll
                for (int t = 0; t < kRows; ++t) {
                    const float4 x = reinterpret_cast<const float4*>(xs + t * dim)[q];
#pragma unroll
                    for (int r = 0; r < kTileW; ++r) {
                        float a = fmaf(x.x, wq[u][r].x, v[t * kTileW + r]);
                        a = fmaf(x.y, wq[u][r].y, a);
                        a = fmaf(x.z, wq[u][r].z, a);
                        v[t * kTileW + r] = fmaf(x.w, wq[u][r].w, a);
                    }
                }
            }
        }
        // Level `half`: a lane with that bit set keeps the upper half of its values and sends the lower, its partner
        // the reverse; after the levels lane L holds value L mod kValues summed over the lanes that differ from it in
        // those bits, and the plain levels sum over the rest.
#pragma unroll
        for (int half = kValues / 2; half > 0; half /= 2) {
            const bool upper = (lane & half) != 0;
#pragma unroll
            for (int i = 0; i < half; ++i) {
                const float send = upper ? v[i] : v[i + half];
                const float keep = upper ? v[i + half] : v[i];
                v[i] = keep + __shfl_xor_sync(0xffffffffu, send, half);
            }
        }
#pragma unroll
        for (int off = kValues; off < 32; off *= 2) v[0] += __shfl_xor_sync(0xffffffffu, v[0], off);
        const int t = lane / kTileW, j = j0 + lane % kTileW;
        if (lane < kValues && t < rows && j < n) out[t * ldo + j] = scaled ? __fmul_rn(v[0], scale) : v[0];
    }
}

// f(w as a pointer to its element type wt: bf16, fp16, else fp32).
template <typename F>
__device__ __forceinline__ void with_weights(const void* w, Elem wt, const F& f) {
    switch (wt) {
        case Elem::kBF16:
            f(static_cast<const __nv_bfloat16*>(w));
            break;
        case Elem::kF16:
            f(static_cast<const __half*>(w));
            break;
        default:
            f(static_cast<const float*>(w));
    }
}

}  // namespace row_dot_detail

/// Threads [0, threads) of the caller copy the row x[0, dim) (type t) into xs (shared fp32, 16-byte aligned), eight
/// loads in flight each before their stores. The caller syncs those threads before the dot products.
__device__ __forceinline__ void stage_row(float* xs, const void* x, Elem t, int dim, int thread, int threads) {
    constexpr int kLoads = 8;
    for (int h0 = thread; h0 < dim; h0 += kLoads * threads) {
        float v[kLoads];
#pragma unroll
        for (int u = 0; u < kLoads; ++u) v[u] = load_elem(x, t, min(h0 + u * threads, dim - 1));
#pragma unroll
        for (int u = 0; u < kLoads; ++u) {
            if (h0 + u * threads < dim) xs[h0 + u * threads] = v[u];
        }
    }
}

/// One warp's share of out[j] = Σ_h xs[h] · w[j, h] (w [n, dim] contiguous of type wt, 16-byte aligned; xs staged by
/// stage_row): the passes of eight rows first, first + stride, ... (a block's warps split the rows; one warp alone:
/// first 0, stride 1). Times `scale`, rounded once, when `scaled` (ATen's separate multiply). Lane j % 32 writes out[j]
/// (shared or global memory); the caller syncs before other threads read it.
__device__ __forceinline__ void warp_row_dots(const float* xs,
                                              const void* w,
                                              Elem wt,
                                              int n,
                                              int dim,
                                              int first,
                                              int stride,
                                              bool scaled,
                                              float scale,
                                              float* out,
                                              int lane) {
    row_dot_detail::with_weights(
        w, wt, [&](const auto* wp) { row_dot_detail::dots(xs, wp, n, dim, first, stride, scaled, scale, out, lane); });
}

/// out[t · ldo + j] = Σ_h xs[t · dim + h] · w[j, h] for the tile's rows t < rows (of kRows staged in xs: shared fp32,
/// 16-byte aligned, row after row) and j < n (w [n, dim] contiguous of type wt, 16-byte aligned; dim a multiple of 4):
/// the block's `warps` warps split the weight rows in chunks of kTileW, each chunk for all the tile's rows at once (its
/// weights read once a block, not once a row). Times `scale`, rounded once, when `scaled`. The caller syncs the block
/// between staging xs and the call, and before reading a shared out.
template <int kRows>
__device__ __forceinline__ void block_tile_dots(const float* xs,
                                                const void* w,
                                                Elem wt,
                                                int n,
                                                int dim,
                                                int rows,
                                                bool scaled,
                                                float scale,
                                                float* out,
                                                int ldo,
                                                int warp,
                                                int warps,
                                                int lane) {
    row_dot_detail::with_weights(w, wt, [&](const auto* wp) {
        row_dot_detail::tile_dots<kRows>(xs, wp, n, dim, rows, scaled, scale, out, ldo, warp, warps, lane);
    });
}

/// Where a tile kernel's warp stands (kTileWarps warps, the block's kRows rows from row blockIdx.x · kRows of `rows`):
/// its lane, its row group g (kGroup warps a row) and its place q in it, and the row the group stages — the last row
/// for a tile's missing ones (`real` false: nothing is written for them).
template <int kRows>
struct TileRow {
    static constexpr int kGroup = kTileWarps / kRows;
    int warp, lane, g, q;
    int64_t first, row;
    bool real;
    __device__ explicit TileRow(int64_t rows)
        : warp(static_cast<int>(threadIdx.x) / 32),
          lane(static_cast<int>(threadIdx.x) % 32),
          g(warp / kGroup),
          q(warp % kGroup),
          first(static_cast<int64_t>(blockIdx.x) * kRows),
          row(first + g < rows ? first + g : rows - 1),
          real(first + g < rows) {}
};

/// Where a tile kernel's staged weights start in its dynamic shared memory: after its rows' `bytes`, on 16 bytes.
__host__ __device__ constexpr size_t tile_weights_offset(size_t bytes) { return (bytes + 15) / 16 * 16; }

/// Threads [0, threads) of the block copy `bytes` (a multiple of 16) of weights from w (16-byte aligned) into shared
/// memory at dst with cp.async, as one commit group, and do not wait: a two-row tile kernel calls it before it waits
/// for the kernel before (no kernel of a step writes weights), then cp_async_wait_all() and a barrier before the dot
/// products read them from dst — the weights' L2 round trips run under the previous kernel instead of after it.
__device__ __forceinline__ void stage_weights_async(void* dst, const void* w, int bytes, int thread, int threads) {
    const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
    const auto* src = static_cast<const unsigned char*>(w);
    for (int i = 16 * thread; i < bytes; i += 16 * threads) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d + i), "l"(src + i));
    }
    asm volatile("cp.async.commit_group;\n" ::);
}
__device__ __forceinline__ void wait_staged_weights() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

/// A tile kernel over `rows` rows: kTwo (two rows a block) for at most `few` rows, else kEight (kTileRowsMax a
/// block), kTileWarps warps a block with `row_smem` bytes of dynamic shared memory per row of the block. Their limit of
/// dynamic shared memory is raised once to 64 KiB (eight of the longest rows take the default 48 KiB; the kernels'
/// static arrays come on top). Two rows a block run kTwoStaged instead where tile_stages_weights(w, w_bytes) (the
/// weights w of w_bytes copied into shared memory before the kernel waits: stage_weights_async), with w_bytes more.
template <auto kTwo, auto kTwoStaged, auto kEight, typename Params>
cudaError_t launch_tile(
    int64_t rows, int64_t few, size_t row_smem, const void* w, int64_t w_bytes, cudaStream_t stream, const Params& p) {
    static const cudaError_t raised = raise_dynamic_smem(64 * 1024, kTwo, kEight);
    if (raised != cudaSuccess) return raised;
    const int per_block = rows <= few ? 2 : kTileRowsMax;
    const auto blocks = static_cast<unsigned>((rows + per_block - 1) / per_block);
    constexpr unsigned kThreads = kTileWarps * 32;
    if (per_block == 2 && tile_stages_weights(w, w_bytes)) {
        static const cudaError_t staged = raise_dynamic_smem(64 * 1024 + kTileStagedMaxBytes, kTwoStaged);
        if (staged == cudaSuccess) {
            return launch(kTwoStaged, blocks, kThreads, tile_weights_offset(2 * row_smem) + w_bytes, stream, p);
        }
        (void)cudaGetLastError();  // a device with less shared memory: the plain kernel
    }
    return per_block == 2 ? launch(kTwo, blocks, kThreads, per_block * row_smem, stream, p)
                          : launch(kEight, blocks, kThreads, per_block * row_smem, stream, p);
}
/// As above without staging (the indexer's head weights: staged, they measured no faster — docs/kernel_notes.md,
/// session 33).
template <auto kTwo, auto kEight, typename Params>
cudaError_t launch_tile(int64_t rows, int64_t few, size_t row_smem, cudaStream_t stream, const Params& p) {
    return launch_tile<kTwo, kTwo, kEight>(rows, few, row_smem, nullptr, 0, stream, p);
}
#endif

}  // namespace dsrl::kernels
