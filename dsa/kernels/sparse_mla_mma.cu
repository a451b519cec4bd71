// Sparse MLA forward on the tensor cores for the small models' shapes (see sparse_mla_mma.cuh). The cp.async,
// ldmatrix and mma.sync wrappers are the Hopper kernels' (sparse_mla_common.cuh).
#include "core/kernels/launch.cuh"
#include "dsa/kernels/sparse_mla_mma.cuh"

#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "dsa/kernels/rope_pair.cuh"
#include "dsa/kernels/sparse_mla_common.cuh"

namespace dsrl::kernels {
namespace {

constexpr int kMmaWarps = kMmaThreads / 32;
constexpr int64_t kTwoBlocksSmem = 113 * 1024;  // two blocks per H100 / H200 multiprocessor

// The block's shared memory, the same on host and device: K tile [tile][es] | Q [rows][es] (operand type) |
// S [rows][tile + 4] fp32 | P [rows][tile + 8] (operand type) | slots [tile] | max, sum, rescale [rows].
struct MmaLayout {
    int64_t rows, es, s_stride, p_stride;
    int64_t off_q, off_s, off_p, off_slot, off_stats, bytes;
};

__host__ __device__ inline MmaLayout mma_layout(int64_t heads, int64_t latent, int64_t rope, int64_t tile) {
    MmaLayout l{};
    l.rows = 16 * ((heads + 15) / 16);
    l.es = (latent + rope + 15) / 16 * 16 + 8;  // an odd number of 16-byte chunks: ldmatrix rows on distinct banks
    l.s_stride = tile + 4;
    l.p_stride = tile + 8;  // odd chunks, as es
    l.off_q = tile * l.es * 2;
    l.off_s = l.off_q + l.rows * l.es * 2;
    l.off_p = l.off_s + l.rows * l.s_stride * 4;
    l.off_slot = l.off_p + l.rows * l.p_stride * 2;
    l.off_stats = l.off_slot + tile * 8;
    l.bytes = l.off_stats + 3 * l.rows * 4;
    return l;
}

template <typename T>
__device__ __forceinline__ void mma_tile(float* c, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma16816_t<T>(*reinterpret_cast<float(*)[4]>(c), a, b0, b1);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_add(float v) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Waits until at most `n` (0, 1 or 3: stages − 1) of this thread's committed cp.async groups are in flight.
__device__ __forceinline__ void cp_async_wait_pending(int n) {
    if (n >= 3) {
        cp_async_wait<3>();
    } else if (n == 1) {
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
}

template <typename T>
__global__ void __launch_bounds__(kMmaThreads, 2)
    sparse_mla_mma_kernel(const SparseMlaSimtParams p, const int tile, const int stages) {
    dsrl::kernels::pdl_enter();
    extern __shared__ __align__(128) uint8_t smem[];
    const MmaLayout L = mma_layout(p.heads, p.latent, p.rope, tile);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t n = blockIdx.x;
    const int split = static_cast<int>(blockIdx.y);
    const int64_t b = n / p.queries_per_batch;
    const int H = static_cast<int>(p.heads), C = static_cast<int>(p.latent), R = static_cast<int>(p.rope);
    const int E = C + R, es = static_cast<int>(L.es), chunks = (es - 8) / 8;  // staged 16-byte chunks per row
    const int rows = static_cast<int>(L.rows), m_tiles = rows / 16;
    const uint32_t k_tile = smem_addr(smem), q_tile = smem_addr(smem + L.off_q), p_tile = smem_addr(smem + L.off_p);
    float* s_buf = reinterpret_cast<float*>(smem + L.off_s);
    T* p_buf = reinterpret_cast<T*>(smem + L.off_p);
    int* slot = reinterpret_cast<int*>(smem + L.off_slot);  // a sub-tile row's cache row, −1: none
    float* run_max = reinterpret_cast<float*>(smem + L.off_stats);
    float* run_sum = run_max + rows;
    float* rescale = run_sum + rows;
    const auto* q_lat = static_cast<const T*>(p.q_lat);
    const auto* q_pe = static_cast<const T*>(p.q_pe);
    const auto* c_kv = static_cast<const T*>(p.c_kv) + b * p.kv_batch_stride;
    const auto* k_pe = static_cast<const T*>(p.k_pe) + b * p.pe_batch_stride;
    const auto at = [es](int row, int col) { return static_cast<uint32_t>((row * es + col) * 2); };
    const int p_stride = static_cast<int>(L.p_stride), s_stride = static_cast<int>(L.s_stride);

    // Q rows [q̃ | q_pe], a warp per row and a lane per 16-byte chunk, zero past the last head and past E (with
    // p.q_cos, q_pe rotated in place once the first sub-tile has arrived: the loads stay asynchronous).
    for (int r = warp; r < rows; r += kMmaWarps) {
        for (int c = 8 * lane; c < 8 * chunks; c += 8 * 32) {
            const bool ok = r < H && c < E;
            const T* src = !ok     ? q_lat
                           : c < C ? q_lat + n * p.q_lat_stride + r * C + c
                                   : q_pe + n * p.q_pe_stride + r * R + (c - C);
            cp_async16(q_tile + at(r, c), src, ok);
        }
    }
    cp_async_commit();
    for (int r = tid; r < rows; r += kMmaThreads) {
        run_max[r] = -INFINITY;
        run_sum[r] = 0.f;
    }

    // The split's entries in sub-tiles of `sub`, a ring of `stages` of them in the tile's shared rows: every sub-tile
    // of the ring in flight at the start, each refilled as soon as it has been consumed, so that a sub-tile's math
    // runs while the next ones land. Sub-tiles wholly past the last entry are skipped.
    const int sub = tile / stages;
    const int64_t tiles = (p.topk + tile - 1) / tile;
    const int64_t per_split = (tiles + p.splits - 1) / p.splits;
    const int64_t t0 = split * per_split, t1 = t0 + per_split < tiles ? t0 + per_split : tiles;
    const int64_t g0 = t0 * stages, g_end = (p.topk + sub - 1) / sub;
    const int64_t g1 = t1 * stages < g_end ? t1 * stages : g_end;
    const int rows_per_warp = sub / kMmaWarps;  // sub is a multiple of 16 (<= 128): 2 to 16 rows a warp
    // Sub-tile g's rows into ring position g mod stages: warp w takes rows w, w + 8, ...; its lanes first load those
    // rows' entries (one round trip), then each row's latent and rope chunks, a lane per 16-byte chunk (and the zero
    // chunk past E where E is not a multiple of 16). Always one commit group (empty past g1).
    const bool pad = E % 16 != 0;
    const auto stage = [&](int64_t g) {
        if (g < g1) {
            const int ring = static_cast<int>(g & (stages - 1)) * sub;
            int mine = -1;
            if (lane < rows_per_warp) {
                const int64_t e = g * sub + warp + kMmaWarps * lane;
                const int64_t s = e < p.topk ? p.indices[n * p.topk + e] : -1;
                mine = s >= 0 && s < p.keys ? static_cast<int>(s) : -1;
                slot[ring + warp + kMmaWarps * lane] = mine;
            }
            for (int i = 0; i < rows_per_warp; ++i) {
                const int s = __shfl_sync(0xffffffffu, mine, i);
                const bool ok = s >= 0;
                const uint32_t row = k_tile + at(ring + warp + kMmaWarps * i, 0);
                const T* kv = c_kv + static_cast<int64_t>(ok ? s : 0) * p.kv_row_stride;
                const T* pe = k_pe + static_cast<int64_t>(ok ? s : 0) * p.pe_row_stride;
                for (int c = 8 * lane; c < C; c += 8 * 32) cp_async16(row + 2 * c, kv + c, ok);
                for (int c = 8 * lane; c < R; c += 8 * 32) cp_async16(row + 2 * (C + c), pe + c, ok);
                if (pad && lane == 0) cp_async16(row + 2 * E, c_kv, false);
            }
        }
        cp_async_commit();
    };
    const int e_pairs = sub / 16;  // 16-entry column pairs of S per m tile
    const int s_units = m_tiles * e_pairs, c_groups = C / 16, o_units = m_tiles * c_groups;
    float acc[kMmaMaxUnits][8];  // unit i = warp + i · kMmaWarps: two m16n8 accumulators (channels c0, c0 + 8)
#pragma unroll
    for (int i = 0; i < kMmaMaxUnits; ++i) {
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[i][e] = 0.f;
    }

    for (int64_t g = g0; g < g0 + stages; ++g) stage(g);
    for (int64_t g = g0; g < g1; ++g) {
        const int ring = static_cast<int>(g & (stages - 1)) * sub;
        cp_async_wait_pending(stages - 1);  // sub-tile g (and Q, older) landed
        __syncthreads();
        if (g == g0 && p.q_cos != nullptr) {  // the query's RoPE: interleaved pairs of q_pe, a thread per pair
            T* q_rows = reinterpret_cast<T*>(smem + L.off_q);
            for (int i = tid; i < H * (R / 2); i += kMmaThreads) {
                const int r = i / (R / 2), j = i - r * (R / 2);
                T* pair = q_rows + r * es + C + 2 * j;
                float a = from_operand(pair[0]), b = from_operand(pair[1]);
                dsrl::dsa::kernels::rope_rotate(a, b, p.q_cos[n * (R / 2) + j], p.q_sin[n * (R / 2) + j], p.q_type);
                pair[0] = to_operand<T>(a);
                pair[1] = to_operand<T>(b);
            }
            __syncthreads();
        }

        // S = Q · Kᵀ · scale: a warp per (m tile, 16 entries), invalid entries −inf.
        for (int u = warp; u < s_units; u += kMmaWarps) {
            const int mt = u / e_pairs, e0 = (u % e_pairs) * 16;
            float sc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            const int a_row = mt * 16 + (lane & 15), a_col = (lane >> 4) << 3;
            const int b_row = ring + e0 + (lane & 7) + ((lane >> 4) << 3), b_col = ((lane >> 3) & 1) << 3;
            for (int kk = 0; kk < es - 8; kk += 16) {
                uint32_t a[4], bf[4];
                ldsm_x4(a, q_tile + at(a_row, kk + a_col));
                ldsm_x4(bf, k_tile + at(b_row, kk + b_col));
                mma_tile<T>(sc, a, bf[0], bf[1]);
                mma_tile<T>(sc + 4, a, bf[2], bf[3]);
            }
            const int r0 = mt * 16 + (lane >> 2);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int row = r0 + 8 * ((e >> 1) & 1), j = e0 + 8 * (e >> 2) + 2 * (lane & 3) + (e & 1);
                s_buf[row * s_stride + j] = slot[ring + j] >= 0 ? sc[e] * p.scale : -INFINITY;
            }
        }
        __syncthreads();

        // Online softmax, a warp per head row: the running max and sum, P = exp(s − max), the old rows' factor.
        for (int r = warp; r < rows; r += kMmaWarps) {
            const float* sr = s_buf + r * s_stride;
            T* pr = p_buf + r * p_stride;
            float mx = -INFINITY;
            for (int j = lane; j < sub; j += 32) mx = fmaxf(mx, sr[j]);
            mx = warp_max(mx);
            const float m_old = run_max[r], m = fmaxf(m_old, mx);
            const float m_use = m == -INFINITY ? 0.f : m;  // nothing valid yet: every exp below is 0
            float sum = 0.f;
            for (int j = lane; j < sub; j += 32) {
                const float e = r < H ? expf(sr[j] - m_use) : 0.f;
                sum += e;
                pr[j] = to_operand<T>(e);
            }
            sum = warp_add(sum);
            __syncwarp();  // every lane has read run_max[r] before lane 0 replaces it
            if (lane == 0) {
                const float f = expf(m_old - m_use);
                run_sum[r] = run_sum[r] * f + sum;
                run_max[r] = m;
                rescale[r] = f;
            }
        }
        __syncthreads();

        // O_lat += P · V, V the sub-tile's latent channels read transposed: a warp per (m tile, 16 channels).
#pragma unroll
        for (int i = 0; i < kMmaMaxUnits; ++i) {
            const int u = warp + i * kMmaWarps;
            if (u < o_units) {
                const int mt = u / c_groups, c0 = (u % c_groups) * 16;
                const int r0 = mt * 16 + (lane >> 2);
                const float f0 = rescale[r0], f1 = rescale[r0 + 8];
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[i][e] *= (e & 2) ? f1 : f0;
                const int a_row = mt * 16 + (lane & 15), a_col = (lane >> 4) << 3;
                const int v_col = c0 + ((lane >> 4) << 3);
                for (int kk = 0; kk < sub; kk += 16) {
                    uint32_t a[4], bf[4];
                    ldsm_x4(a, p_tile + static_cast<uint32_t>((a_row * p_stride + kk + a_col) * 2));
                    ldsm_x4_t(bf, k_tile + at(ring + kk + (lane & 7) + (((lane >> 3) & 1) << 3), v_col));
                    mma_tile<T>(acc[i], a, bf[0], bf[1]);
                    mma_tile<T>(acc[i] + 4, a, bf[2], bf[3]);
                }
            }
        }
        __syncthreads();  // the ring position, S and P are consumed: refill it
        stage(g + stages);
    }
    cp_async_wait_all();  // a block without tiles still has Q's copies in flight
    __syncthreads();

    // o_lat / sum and lse, or (splits) the unnormalized partials with the max and sum for the merge.
    const bool partial = p.splits > 1;
    const int64_t part = n * p.splits + split;
#pragma unroll
    for (int i = 0; i < kMmaMaxUnits; ++i) {
        const int u = warp + i * kMmaWarps;
        if (u >= o_units) continue;
        const int mt = u / c_groups, c0 = (u % c_groups) * 16;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int h = mt * 16 + (lane >> 2) + 8 * half;
            if (h >= H) continue;
            const float l = run_sum[h];
            const float inv = partial ? 1.f : (l > 0.f ? 1.f / l : 0.f);
            // Two adjacent channels a store: a float2 of partials, or a pair of the operand type (out is q's type).
#pragma unroll
            for (int e2 = 0; e2 < 2; ++e2) {
                const int c = c0 + 8 * e2 + 2 * (lane & 3);
                const float v0 = acc[i][4 * e2 + 2 * half] * inv, v1 = acc[i][4 * e2 + 2 * half + 1] * inv;
                if (partial) {
                    *reinterpret_cast<float2*>(p.part_out + (part * H + h) * C + c) = make_float2(v0, v1);
                } else {
                    const T pair[2] = {to_operand<T>(v0), to_operand<T>(v1)};
                    *reinterpret_cast<uint32_t*>(static_cast<T*>(p.out) + (n * H + h) * C + c) =
                        *reinterpret_cast<const uint32_t*>(pair);
                }
            }
        }
    }
    for (int h = tid; h < H; h += kMmaThreads) {
        const float l = run_sum[h];
        if (partial) {
            p.part_ml[(part * H + h) * 2] = run_max[h];
            p.part_ml[(part * H + h) * 2 + 1] = l;
        } else {
            p.lse[n * H + h] = l > 0.f ? run_max[h] + logf(l) : -INFINITY;
        }
    }
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename T>
cudaError_t launch_typed(
    const SparseMlaSimtParams& p, int64_t tile, int64_t stages, int64_t bytes, cudaStream_t stream) {
    // Raised once per larger size, on an eager call before any graph capture (as the SIMT kernel).
    static std::atomic<int64_t> raised{48 * 1024};
    if (bytes > raised.load()) {
        const cudaError_t e = cudaFuncSetAttribute(
            sparse_mla_mma_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
        if (e != cudaSuccess) return e;
        raised.store(bytes);
    }
    const dim3 grid(static_cast<unsigned>(p.num_queries), static_cast<unsigned>(p.splits));
    return dsrl::kernels::launch(sparse_mla_mma_kernel<T>, grid, kMmaThreads, static_cast<size_t>(bytes), stream, p,
                                 static_cast<int>(tile), static_cast<int>(stages));
}

}  // namespace

bool sparse_mla_mma_takes(const SparseMlaSimtParams& p) {
    if (p.q_type != p.kv_type || p.out_type != p.q_type || p.q_type == Elem::kF32) return false;
    if (p.heads < 1 || p.heads > kMmaMaxHeads || p.latent < 16 || p.latent % 16 != 0 || p.rope < 0 || p.rope % 8 != 0)
        return false;
    if ((p.heads + 15) / 16 * (p.latent / 16) > int64_t{kMmaMaxUnits} * kMmaWarps) return false;
    if (p.keys > 0x7fffffff) return false;  // a cache row as a 32-bit slot
    for (const void* ptr : {p.q_lat, p.q_pe, p.c_kv, p.k_pe})
        if (!aligned16(ptr)) return false;
    for (const int64_t stride :
         {p.kv_batch_stride, p.kv_row_stride, p.pe_batch_stride, p.pe_row_stride, p.q_lat_stride, p.q_pe_stride})
        if (stride % 8 != 0) return false;
    return true;
}

int64_t sparse_mla_mma_smem(int64_t heads, int64_t latent, int64_t rope, int64_t tile) {
    return mma_layout(heads, latent, rope, tile).bytes;
}

SparseMlaMmaPlan sparse_mla_mma_plan(
    int64_t num_queries, int64_t heads, int64_t latent, int64_t rope, int64_t topk, int sms, int64_t smem_limit) {
    const auto bytes = [&](int64_t tile) { return sparse_mla_mma_smem(heads, latent, rope, tile); };
    int64_t tile = 128;
    while (tile > 16 && tile / 2 >= topk) tile /= 2;  // no longer than the entries
    while (tile > 16 && bytes(tile) > std::min(smem_limit, kTwoBlocksSmem)) tile /= 2;
    if (bytes(tile) > smem_limit) return {};
    const int64_t queries = std::max<int64_t>(num_queries, 1);
    const auto tiles_of = [&](int64_t t) { return std::max<int64_t>(1, (topk + t - 1) / t); };
    while (tile > 16 && queries * tiles_of(tile) < std::max(sms, 1)) tile /= 2;  // few queries: finer splits
    const int64_t tiles = tiles_of(tile);
    const int64_t want = (4 * static_cast<int64_t>(std::max(sms, 1)) + queries - 1) / queries;
    const int64_t splits = std::clamp<int64_t>(want, 1, tiles);
    const int64_t per_split = (tiles + splits - 1) / splits;
    return {tile, (tiles + per_split - 1) / per_split};  // no split without a tile
}

cudaError_t launch_sparse_mla_mma(const SparseMlaSimtParams& p, int64_t tile, int64_t stages, cudaStream_t stream) {
    if (p.num_queries == 0 || p.heads == 0) return cudaSuccess;
    if (!sparse_mla_mma_takes(p) || (tile != 16 && tile != 32 && tile != 64 && tile != 128) ||
        (stages != 1 && stages != 2 && stages != 4) || tile / stages < 16 || p.num_queries > 0x7fffffff ||
        p.splits < 1 || p.splits > 65535 || (p.splits > 1 && (p.part_out == nullptr || p.part_ml == nullptr)) ||
        reinterpret_cast<uintptr_t>(p.out) % 4 != 0 || reinterpret_cast<uintptr_t>(p.part_out) % 8 != 0)
        return cudaErrorInvalidValue;  // (out and the partials are stored two channels at a time)
    const int64_t bytes = sparse_mla_mma_smem(p.heads, p.latent, p.rope, tile);
    const cudaError_t e = p.q_type == Elem::kF16 ? launch_typed<__half>(p, tile, stages, bytes, stream)
                                                 : launch_typed<__nv_bfloat16>(p, tile, stages, bytes, stream);
    if (e != cudaSuccess || p.splits == 1) return e;
    return launch_sparse_mla_merge(p, stream);
}

}  // namespace dsrl::kernels
