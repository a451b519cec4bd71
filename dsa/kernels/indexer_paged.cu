// A paged decode step's indexer scores (see indexer_paged.cuh). A block per (query, chunk of keys): the query's heads
// go to shared memory as fp32, each thread scores its keys — a key's row read in 16-byte vectors straight from the
// pool slot the row's table names, its dot products with eight heads at a time accumulated in registers, then ReLU,
// the scale and the head weights. The chunk size keeps about two blocks per multiprocessor in flight.
#include "core/kernels/launch.cuh"
#include "dsa/kernels/indexer_paged.cuh"
#include "dsa/kernels/rope_pair.cuh"
#include "dsa/kernels/topk_rank.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

namespace dsrl::dsa::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kHeadGroup = 8;  // heads whose dot products one pass over a key accumulates

// Heads rounded up to whole groups: the rows of q's shared-memory copy.
__host__ __device__ __forceinline__ int padded_heads(int heads) {
    return (heads + kHeadGroup - 1) / kHeadGroup * kHeadGroup;
}

// Eight consecutive key values as fp32.
__device__ __forceinline__ void load8(const void* pool, bool bf16, int64_t i, float (&v)[8]) {
    if (bf16) {
        const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(pool) + i);
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float2 f = __bfloat1622float2(h[e]);
            v[2 * e] = f.x;
            v[2 * e + 1] = f.y;
        }
    } else {
        const float4 a = *reinterpret_cast<const float4*>(static_cast<const float*>(pool) + i);
        const float4 b = *reinterpret_cast<const float4*>(static_cast<const float*>(pool) + i + 4);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
}

// The query's heads and head weights staged as fp32 into shared memory (q_s [padded, D], w_s [padded], zero rows past
// H; with p.q_rope the heads then rotated), with a barrier after.
__device__ __forceinline__ void stage_query(const IndexerPagedParams& p, int64_t n, float* q_s, float* w_s) {
    const int H = p.heads, D = p.dim;
    const int padded = padded_heads(H);
    const int64_t b = n / p.len, l = n % p.len;
    const int64_t q0 = b * p.q_batch_stride + l * p.q_len_stride, w0 = b * p.w_batch_stride + l * p.w_len_stride;
    for (int i = threadIdx.x; i < padded * D; i += blockDim.x) {
        const int j = i / D;
        q_s[i] = j < H ? dsrl::kernels::load_elem(p.q, p.q_type, q0 + i) : 0.0f;
    }
    for (int j = threadIdx.x; j < padded; j += blockDim.x)
        w_s[j] = j < H ? dsrl::kernels::load_elem(p.w, p.w_type, w0 + j) : 0.0f;
    __syncthreads();
    if (p.q_rope == 0) return;
    // The query's RoPE in place (q_s holds q's values exactly): a thread per (head, pair).
    const int half = p.q_rope / 2;
    for (int i = threadIdx.x; i < H * half; i += blockDim.x) {
        const int j = i / half, pair = i - j * half;
        int a_idx = 0, b_idx = 0;
        rope_pair_dims(pair, p.q_rope, p.q_rope_interleaved, a_idx, b_idx);
        float* qh = q_s + j * D;
        rope_rotate(qh[a_idx], qh[b_idx], p.q_cos[n * half + pair], p.q_sin[n * half + pair], p.q_type);
    }
    __syncthreads();
}

// Query n's score of key position s of its row (b = n / len): −inf where the key is invisible (after the query's
// position `last`, masked, or a slot outside the pool).
__device__ __forceinline__ float key_score(
    const IndexerPagedParams& p, const float* q_s, const float* w_s, int64_t b, int64_t s, int64_t last) {
    const int D = p.dim, groups = padded_heads(p.heads) / kHeadGroup;
    const int64_t slot = p.read[b * p.keys + s];
    if (s > last || (p.key_valid != nullptr && !p.key_valid[b * p.keys + s]) || slot < 0 || slot >= p.pool_rows)
        return -INFINITY;
    const int64_t k0 = slot * p.pool_stride;
    float score = 0.0f;
    for (int g = 0; g < groups; ++g) {
        float acc[kHeadGroup] = {};
        const float* qg = q_s + g * kHeadGroup * D;
        for (int d = 0; d < D; d += 8) {
            float k[8];
            load8(p.pool, p.pool_bf16, k0 + d, k);
#pragma unroll
            for (int j = 0; j < kHeadGroup; ++j) {
                const float4 a = *reinterpret_cast<const float4*>(qg + j * D + d);
                const float4 c = *reinterpret_cast<const float4*>(qg + j * D + d + 4);
                float t = acc[j];
                t = fmaf(a.x, k[0], t);
                t = fmaf(a.y, k[1], t);
                t = fmaf(a.z, k[2], t);
                t = fmaf(a.w, k[3], t);
                t = fmaf(c.x, k[4], t);
                t = fmaf(c.y, k[5], t);
                t = fmaf(c.z, k[6], t);
                t = fmaf(c.w, k[7], t);
                acc[j] = t;
            }
        }
#pragma unroll
        for (int j = 0; j < kHeadGroup; ++j) score += fmaxf(acc[j] * p.scale, 0.0f) * w_s[g * kHeadGroup + j];
    }
    return score;
}

__global__ void __launch_bounds__(kThreads) indexer_paged_kernel(const IndexerPagedParams p, int64_t chunk) {
    dsrl::kernels::pdl_enter();
    extern __shared__ __align__(16) float smem[];
    const int padded = padded_heads(p.heads);
    float* q_s = smem;                   // [padded, D]
    float* w_s = smem + padded * p.dim;  // [padded]
    const int64_t n = blockIdx.x, b = n / p.len;
    stage_query(p, n, q_s, w_s);
    const int64_t last = p.query_pos[n];
    const int64_t begin = blockIdx.y * chunk, end = begin + chunk < p.keys ? begin + chunk : p.keys;
    for (int64_t s = begin + threadIdx.x; s < end; s += kThreads)
        p.out[n * p.keys + s] = key_score(p, q_s, w_s, b, s, last);
}

// Rows of at most kRankMax keys: a block per query, a thread per key scores it and ranks it among the row's scores in
// shared memory (topk_rank.cuh) — the scores never leave the block.
__global__ void __launch_bounds__(kRankMax) indexer_paged_rank_kernel(const IndexerPagedParams p, const TopkParams t) {
    dsrl::kernels::pdl_enter();
    extern __shared__ __align__(16) float smem[];
    const int padded = padded_heads(p.heads);
    float* q_s = smem;                                           // [padded, D]
    float* w_s = smem + padded * p.dim;                          // [padded]
    uint32_t* keys = reinterpret_cast<uint32_t*>(w_s + padded);  // [keys rounded up to 4]
    const int64_t n = blockIdx.x, b = n / p.len;
    const TopkRow out(t, n);
    stage_query(p, n, q_s, w_s);
    const int s = threadIdx.x;
    const uint32_t mine = s < out.len ? order_key(key_score(p, q_s, w_s, b, s, p.query_pos[n])) : 0u;
    rank_select_row(t, out, mine, keys);
}

bool bad_shape(const IndexerPagedParams& p) {
    return p.heads <= 0 || p.dim <= 0 || p.dim % 8 != 0 || padded_heads(p.heads) * p.dim > kPagedIndexerMaxQ ||
           p.batch * p.len > 0x7fffffff;
}

// Shared memory of stage_query's copies (q_s and w_s), in bytes.
size_t query_smem(const IndexerPagedParams& p) {
    const int padded = padded_heads(p.heads);
    return sizeof(float) * static_cast<size_t>(padded * p.dim + padded);
}

}  // namespace

cudaError_t launch_indexer_paged(const IndexerPagedParams& p, int sms, cudaStream_t stream) {
    const int64_t queries = p.batch * p.len;
    if (queries == 0 || p.keys == 0) return cudaSuccess;
    if (bad_shape(p)) return cudaErrorInvalidValue;
    // Keys per block: a multiple of the block's threads, small enough for about two blocks per multiprocessor.
    const int64_t want_blocks = 2 * static_cast<int64_t>(std::max(sms, 1));
    const int64_t per_query = std::max<int64_t>(1, (want_blocks + queries - 1) / queries);
    int64_t chunk = (p.keys + per_query - 1) / per_query;
    chunk = std::max<int64_t>(kThreads, (chunk + kThreads - 1) / kThreads * kThreads);
    const int64_t chunks = (p.keys + chunk - 1) / chunk;
    if (chunks > 65535) return cudaErrorInvalidValue;
    const size_t smem = query_smem(p);
    return dsrl::kernels::launch(indexer_paged_kernel,
                                 dim3(static_cast<unsigned>(queries), static_cast<unsigned>(chunks)), kThreads, smem,
                                 stream, p, chunk);
}

cudaError_t launch_indexer_paged_rank(const IndexerPagedParams& p, const TopkParams& t, cudaStream_t stream) {
    const int64_t queries = p.batch * p.len;
    if (queries == 0 || t.topk <= 0) return cudaSuccess;
    if (bad_shape(p) || p.keys > kRankMax || t.num_cols != p.keys || t.num_rows != queries || t.topk > kTopkMax ||
        t.rows_per_group != p.len)
        return cudaErrorInvalidValue;
    const int threads = static_cast<int>(std::max<int64_t>(32, (p.keys + 31) / 32 * 32));
    const size_t smem =
        query_smem(p) + sizeof(uint32_t) * static_cast<size_t>(std::max<int64_t>(4, (p.keys + 3) / 4 * 4));
    return dsrl::kernels::launch(indexer_paged_rank_kernel, static_cast<unsigned>(queries), threads, smem, stream, p,
                                 t);
}

}  // namespace dsrl::dsa::kernels
