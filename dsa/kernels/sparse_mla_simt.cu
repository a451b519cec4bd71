// Sparse MLA forward, SIMT (see sparse_mla_simt.cuh). Napkin math for the `single_gpu.yaml` decode (H 12, C 256,
// R 32, K 128, bf16 cache): a query reads its 128 entries once, 74 KB, and does 12 · 128 · 288 FMAs for the scores
// and as many for o_lat: memory-bound on the entries. The reference path gathers the same entries into a new tensor
// and reads it twice more through two einsums, in about 15 launches.
#include "dsa/kernels/sparse_mla_simt.cuh"

#include <atomic>
#include <cmath>

namespace dsrl::kernels {
namespace {

__global__ void __launch_bounds__(kSimtThreads) sparse_mla_simt_kernel(SparseMlaSimtParams p) {
    extern __shared__ float smem[];
    const int64_t n = blockIdx.x;
    const int64_t b = n / p.queries_per_batch;
    const int H = static_cast<int>(p.heads), C = static_cast<int>(p.latent), R = static_cast<int>(p.rope);
    const int E = C + R;       // an entry: [c_kv | k_pe]
    const int Es = E + 1;      // its shared-memory row, padded: the score loop's 16 entries fall in 16 banks
    float* q = smem;           // [H, Es]
    float* keys = q + H * Es;  // [kSimtTile, Es]
    float* probs = keys + kSimtTile * Es;              // [H, kSimtTile]
    float* run_max = probs + H * kSimtTile;            // [H]
    float* run_sum = run_max + H;                      // [H]
    float* rescale = run_sum + H;                      // [H]
    int* valid = reinterpret_cast<int*>(rescale + H);  // [kSimtTile]
    const int tid = threadIdx.x;

    for (int i = tid; i < H * E; i += kSimtThreads) {
        const int h = i / E, e = i % E;
        q[h * Es + e] = e < C ? load_elem(p.q_lat, p.q_type, (n * H + h) * C + e)
                              : load_elem(p.q_pe, p.q_type, (n * H + h) * R + (e - C));
    }
    for (int h = tid; h < H; h += kSimtThreads) {
        run_max[h] = -INFINITY;
        run_sum[h] = 0.f;
    }
    float acc[kSimtAccumulators];
#pragma unroll
    for (int a = 0; a < kSimtAccumulators; ++a) acc[a] = 0.f;
    const int pairs = H * C;  // (head, latent channel) pairs; thread tid owns tid + a · kSimtThreads
    const int64_t* idx = p.indices + n * p.topk;

    for (int64_t j0 = 0; j0 < p.topk; j0 += kSimtTile) {
        const int tile = static_cast<int>(p.topk - j0 < kSimtTile ? p.topk - j0 : kSimtTile);
        __syncthreads();  // the previous tile's keys and probabilities are consumed
        for (int j = tid; j < kSimtTile; j += kSimtThreads) {
            const int64_t s = j < tile ? idx[j0 + j] : -1;
            valid[j] = s >= 0 && s < p.keys;
        }
        __syncthreads();
        for (int i = tid; i < tile * E; i += kSimtThreads) {
            const int j = i / E, e = i % E;
            float v = 0.f;
            if (valid[j]) {
                const int64_t s = idx[j0 + j];
                v = e < C ? load_elem(p.c_kv, p.kv_type, b * p.kv_batch_stride + s * p.kv_row_stride + e)
                          : load_elem(p.k_pe, p.kv_type, b * p.pe_batch_stride + s * p.pe_row_stride + (e - C));
            }
            keys[j * Es + e] = v;
        }
        __syncthreads();
        // Scores (q̃ · c_kv + q_pe · k_pe) · scale of every (head, entry) of the tile.
        for (int i = tid; i < H * kSimtTile; i += kSimtThreads) {
            const int h = i / kSimtTile, j = i % kSimtTile;
            float score = -INFINITY;
            if (j < tile && valid[j]) {
                const float* qh = q + h * Es;
                const float* kj = keys + j * Es;
                float lat = 0.f, pe = 0.f;
                for (int e = 0; e < C; ++e) lat = fmaf(qh[e], kj[e], lat);
                for (int e = C; e < E; ++e) pe = fmaf(qh[e], kj[e], pe);
                score = (lat + pe) * p.scale;
            }
            probs[i] = score;
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

}  // namespace

int64_t sparse_mla_simt_smem(int64_t heads, int64_t latent, int64_t rope) {
    const int64_t e = latent + rope + 1;  // padded rows
    return static_cast<int64_t>(sizeof(float)) * (heads * e + kSimtTile * e + heads * kSimtTile + 3 * heads) +
           static_cast<int64_t>(sizeof(int)) * kSimtTile;
}

cudaError_t launch_sparse_mla_simt(const SparseMlaSimtParams& p, cudaStream_t stream) {
    if (p.num_queries == 0 || p.heads == 0) return cudaSuccess;
    if (p.heads * p.latent > static_cast<int64_t>(kSimtThreads) * kSimtAccumulators || p.num_queries > 0x7fffffff)
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
    sparse_mla_simt_kernel<<<static_cast<unsigned>(p.num_queries), kSimtThreads, static_cast<size_t>(bytes), stream>>>(
        p);
    return cudaGetLastError();
}

}  // namespace dsrl::kernels
