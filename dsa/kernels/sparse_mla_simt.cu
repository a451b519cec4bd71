// Sparse MLA forward, SIMT (see sparse_mla_simt.cuh). Napkin math for the `single_gpu.yaml` decode (H 12, C 256,
// R 32, K 128, bf16 cache): a query reads its 128 entries once, 74 KB, and does 12 · 128 · 288 FMAs for the scores
// and as many for o_lat: memory-bound on the entries. What limits a decode step is latency, not bandwidth: a batch of
// one query is one block, so the block's serial chain (load a tile, score it, rescale, accumulate; eight tiles) is the
// kernel's time. Hence the splits (a tile or two per block for small batches), whole rows per warp with the loads in
// flight together, and a warp per dot product rather than a thread looping over 288 channels.
#include "core/kernels/launch.cuh"
#include "dsa/kernels/sparse_mla_simt.cuh"

#include <algorithm>
#include <atomic>
#include <cmath>

namespace dsrl::kernels {
namespace {

constexpr int kWarps = kSimtThreads / 32;
constexpr int kRowBatch = 6;  // loads one lane keeps in flight while copying a row into shared memory

// Copies `rows` rows of E values (row r at src(r), -1 = a row of zeros) into dst [rows, Es] as fp32: a warp per row,
// its lanes kRowBatch loads at a time.
template <typename Src>
__device__ __forceinline__ void load_rows(float* dst, int rows, int E, int Es, const Src& src) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = warp; r < rows; r += kWarps) {
        for (int e0 = 0; e0 < E; e0 += 32 * kRowBatch) {
            float v[kRowBatch];
#pragma unroll
            for (int u = 0; u < kRowBatch; ++u) {
                const int e = e0 + u * 32 + lane;
                v[u] = e < E ? src(r, e) : 0.f;
            }
#pragma unroll
            for (int u = 0; u < kRowBatch; ++u) {
                const int e = e0 + u * 32 + lane;
                if (e < E) dst[r * Es + e] = v[u];
            }
        }
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__global__ void __launch_bounds__(kSimtThreads) sparse_mla_simt_kernel(SparseMlaSimtParams p) {
    dsrl::kernels::pdl_enter();
    extern __shared__ int64_t smem_raw[];
    const int64_t n = blockIdx.x;
    const int split = static_cast<int>(blockIdx.y);
    const int64_t b = n / p.queries_per_batch;
    const int H = static_cast<int>(p.heads), C = static_cast<int>(p.latent), R = static_cast<int>(p.rope);
    const int E = C + R;                                    // an entry: [c_kv | k_pe]
    const int Es = E + 1;                                   // its shared-memory row, padded against bank conflicts
    int64_t* slot = smem_raw;                               // [kSimtTile] the tile's entries, -1 = invalid
    float* q = reinterpret_cast<float*>(slot + kSimtTile);  // [H, Es]
    float* keys = q + H * Es;                               // [kSimtTile, Es]
    float* probs = keys + kSimtTile * Es;                   // [H, kSimtTile]
    float* run_max = probs + H * kSimtTile;                 // [H]
    float* run_sum = run_max + H;                           // [H]
    float* rescale = run_sum + H;                           // [H]
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

    load_rows(q, H, E, Es, [&](int h, int e) {
        return e < C ? load_elem(p.q_lat, p.q_type, n * p.q_lat_stride + h * C + e)
                     : load_elem(p.q_pe, p.q_type, n * p.q_pe_stride + h * R + (e - C));
    });
    for (int h = tid; h < H; h += kSimtThreads) {
        run_max[h] = -INFINITY;
        run_sum[h] = 0.f;
    }
    float acc[kSimtAccumulators];
#pragma unroll
    for (int a = 0; a < kSimtAccumulators; ++a) acc[a] = 0.f;
    const int pairs = H * C;  // (head, latent channel) pairs; thread tid owns tid + a · kSimtThreads
    const int64_t* idx = p.indices + n * p.topk;
    // This split's tiles: [t0, t1) of ceil(K / kSimtTile).
    const int64_t tiles = (p.topk + kSimtTile - 1) / kSimtTile;
    const int64_t per_split = (tiles + p.splits - 1) / p.splits;
    const int64_t t0 = split * per_split, t1 = t0 + per_split < tiles ? t0 + per_split : tiles;

    for (int64_t t = t0; t < t1; ++t) {
        const int64_t j0 = t * kSimtTile;
        const int tile = static_cast<int>(p.topk - j0 < kSimtTile ? p.topk - j0 : kSimtTile);
        __syncthreads();  // the previous tile's keys and probabilities are consumed
        for (int j = tid; j < kSimtTile; j += kSimtThreads) {
            const int64_t s = j < tile ? idx[j0 + j] : -1;
            slot[j] = s >= 0 && s < p.keys ? s : -1;
        }
        __syncthreads();
        load_rows(keys, tile, E, Es, [&](int j, int e) {
            const int64_t s = slot[j];
            if (s < 0) return 0.f;
            return e < C ? load_elem(p.c_kv, p.kv_type, b * p.kv_batch_stride + s * p.kv_row_stride + e)
                         : load_elem(p.k_pe, p.kv_type, b * p.pe_batch_stride + s * p.pe_row_stride + (e - C));
        });
        __syncthreads();
        // Scores (q̃ · c_kv + q_pe · k_pe) · scale: a warp per (head, entry), its lanes over the channels.
        for (int i = warp; i < H * kSimtTile; i += kWarps) {
            const int h = i / kSimtTile, j = i % kSimtTile;
            float dot = 0.f;
            const bool live = j < tile && slot[j] >= 0;
            if (live) {
                const float* qh = q + h * Es;
                const float* kj = keys + j * Es;
                for (int e = lane; e < E; e += 32) dot = fmaf(qh[e], kj[e], dot);
                dot = warp_sum(dot);
            }
            if (lane == 0) probs[i] = live ? dot * p.scale : -INFINITY;
        }
        __syncthreads();
        // Online softmax per head: new running max, the old sum rescaled, this tile's exp(score − max).
        for (int h = tid; h < H; h += kSimtThreads) {
            float tile_max = -INFINITY;
            for (int j = 0; j < tile; ++j) tile_max = fmaxf(tile_max, probs[h * kSimtTile + j]);
            const float m = fmaxf(run_max[h], tile_max);
            const float r = m == -INFINITY ? 1.f : expf(run_max[h] - m);
            float sum = 0.f;
            for (int j = 0; j < kSimtTile; ++j) {
                const float s = probs[h * kSimtTile + j];
                const float e = (j < tile && s != -INFINITY) ? expf(s - m) : 0.f;
                probs[h * kSimtTile + j] = e;
                sum += e;
            }
            run_sum[h] = run_sum[h] * r + sum;
            run_max[h] = m;
            rescale[h] = r;
        }
        __syncthreads();
#pragma unroll
        for (int a = 0; a < kSimtAccumulators; ++a) {
            const int pair = tid + a * kSimtThreads;
            if (pair < pairs) {
                const int h = pair / C, c = pair % C;
                float v = acc[a] * rescale[h];
                for (int j = 0; j < tile; ++j) v = fmaf(probs[h * kSimtTile + j], keys[j * Es + c], v);
                acc[a] = v;
            }
        }
    }
    __syncthreads();
    if (p.splits > 1) {  // this split's unnormalized o_lat, max and sum, for the merge
        const int64_t part = n * p.splits + split;
#pragma unroll
        for (int a = 0; a < kSimtAccumulators; ++a) {
            const int pair = tid + a * kSimtThreads;
            if (pair < pairs) p.part_out[part * pairs + pair] = acc[a];
        }
        for (int h = tid; h < H; h += kSimtThreads) {
            p.part_ml[(part * H + h) * 2] = run_max[h];
            p.part_ml[(part * H + h) * 2 + 1] = run_sum[h];
        }
        return;
    }
#pragma unroll
    for (int a = 0; a < kSimtAccumulators; ++a) {
        const int pair = tid + a * kSimtThreads;
        if (pair < pairs) {
            const int h = pair / C, c = pair % C;
            const float l = run_sum[h];
            store_elem(p.out, p.out_type, (n * H + h) * C + c, l > 0.f ? acc[a] / l : 0.f);
        }
    }
    for (int h = tid; h < H; h += kSimtThreads) {
        const float l = run_sum[h];
        p.lse[n * H + h] = l > 0.f ? run_max[h] + logf(l) : -INFINITY;
    }
}

// Merges a query's splits in split order: o = Σ_s e^{m_s − M} o_s / Σ_s e^{m_s − M} l_s, lse = M + log of that sum.
// Each head's split weights e^{m_s − M} / l are computed once, into shared memory ([splits, H] floats).
__global__ void __launch_bounds__(kSimtThreads) sparse_mla_simt_merge_kernel(SparseMlaSimtParams p) {
    dsrl::kernels::pdl_enter();
    extern __shared__ float weight[];
    const int64_t n = blockIdx.x;
    const int H = static_cast<int>(p.heads), C = static_cast<int>(p.latent);
    const int S = static_cast<int>(p.splits);
    const float* ml = p.part_ml + n * S * H * 2;
    for (int h = threadIdx.x; h < H; h += kSimtThreads) {
        float m = -INFINITY;
        for (int s = 0; s < S; ++s) m = fmaxf(m, ml[(s * H + h) * 2]);
        float l = 0.f;
        for (int s = 0; s < S; ++s) {
            const float ms = ml[(s * H + h) * 2];
            if (ms != -INFINITY) l += expf(ms - m) * ml[(s * H + h) * 2 + 1];
        }
        for (int s = 0; s < S; ++s) {
            const float ms = ml[(s * H + h) * 2];
            weight[s * H + h] = l > 0.f && ms != -INFINITY ? expf(ms - m) / l : 0.f;
        }
        p.lse[n * H + h] = l > 0.f ? m + logf(l) : -INFINITY;
    }
    __syncthreads();
    for (int pair = threadIdx.x; pair < H * C; pair += kSimtThreads) {
        const int h = pair / C;
        float v = 0.f;
        for (int s = 0; s < S; ++s) v = fmaf(weight[s * H + h], p.part_out[(n * S + s) * H * C + pair], v);
        store_elem(p.out, p.out_type, n * H * C + pair, v);
    }
}

}  // namespace

int64_t sparse_mla_simt_smem(int64_t heads, int64_t latent, int64_t rope) {
    const int64_t e = latent + rope + 1;  // padded rows
    return static_cast<int64_t>(sizeof(int64_t)) * kSimtTile +
           static_cast<int64_t>(sizeof(float)) * (heads * e + kSimtTile * e + heads * kSimtTile + 3 * heads);
}

int64_t sparse_mla_simt_splits(int64_t num_queries, int64_t topk, int sms) {
    const int64_t tiles = std::max<int64_t>(1, (topk + kSimtTile - 1) / kSimtTile);
    const int64_t blocks = 4 * static_cast<int64_t>(std::max(sms, 1));
    const int64_t want = (blocks + num_queries - 1) / std::max<int64_t>(num_queries, 1);
    const int64_t splits = std::clamp<int64_t>(want, 1, tiles);
    const int64_t per_split = (tiles + splits - 1) / splits;
    return (tiles + per_split - 1) / per_split;  // no split without a tile
}

int64_t sparse_mla_simt_workspace(int64_t num_queries, int64_t splits, int64_t heads, int64_t latent) {
    return splits > 1 ? num_queries * splits * heads * (latent + 2) : 0;
}

cudaError_t launch_sparse_mla_simt(const SparseMlaSimtParams& p, cudaStream_t stream) {
    if (p.num_queries == 0 || p.heads == 0) return cudaSuccess;
    if (p.heads * p.latent > static_cast<int64_t>(kSimtThreads) * kSimtAccumulators || p.num_queries > 0x7fffffff ||
        p.splits < 1 || p.splits > 65535 || (p.splits > 1 && (p.part_out == nullptr || p.part_ml == nullptr)))
        return cudaErrorInvalidValue;
    const int64_t bytes = sparse_mla_simt_smem(p.heads, p.latent, p.rope);
    // Raised once per larger size (the first call is an eager one: the rollout engine warms up before it captures a
    // graph, so a capture never has to change the kernel's attribute). Per process: dsrl runs one GPU per process.
    static std::atomic<int64_t> raised{48 * 1024};
    if (bytes > raised.load()) {
        const cudaError_t e = cudaFuncSetAttribute(sparse_mla_simt_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(bytes));
        if (e != cudaSuccess) return e;
        raised.store(bytes);
    }
    const dim3 grid(static_cast<unsigned>(p.num_queries), static_cast<unsigned>(p.splits));
    const cudaError_t e =
        dsrl::kernels::launch(sparse_mla_simt_kernel, grid, kSimtThreads, static_cast<size_t>(bytes), stream, p);
    if (e != cudaSuccess || p.splits == 1) return e;
    return launch_sparse_mla_merge(p, stream);
}

cudaError_t launch_sparse_mla_merge(const SparseMlaSimtParams& p, cudaStream_t stream) {
    if (p.num_queries == 0 || p.heads == 0 || p.splits == 1) return cudaSuccess;
    const int64_t bytes = p.splits * p.heads * static_cast<int64_t>(sizeof(float));
    static std::atomic<int64_t> raised{48 * 1024};  // as the kernel's limit above
    if (bytes > raised.load()) {
        const cudaError_t e = cudaFuncSetAttribute(
            sparse_mla_simt_merge_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
        if (e != cudaSuccess) return e;
        raised.store(bytes);
    }
    return dsrl::kernels::launch(sparse_mla_simt_merge_kernel, static_cast<unsigned>(p.num_queries), kSimtThreads,
                                 static_cast<size_t>(bytes), stream, p);
}

}  // namespace dsrl::kernels
