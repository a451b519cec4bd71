// A decode step's sampling, one block per row (see sample.cuh). It follows rollout/sampling.cpp's formulas step by
// step (processed_logprobs, then sample_with_uniforms): the kept set in descending-probability order (a bitonic sort
// in shared memory, ties to the lower id), the mass before each id summed in fp64, the draw's CDF in fp64 in id order.
// Sums run in another order than ATen's, so log-probs agree to fp32 rounding; ids agree except where a sum lands
// within rounding of a threshold. It replaces about forty ATen kernels per step (two sorts, three cumulative sums,
// two log-softmaxes, a scatter, the bit packing).
#include "core/kernels/launch.cuh"
#include "rollout/kernels/sample.cuh"
#include "rollout/kernels/window_slot.cuh"

#include <atomic>
#include <cmath>

namespace dsrl::rollout::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kPerThread = kSampleMaxVocab / kThreads;  // scan items per thread

__host__ __device__ __forceinline__ int pow2_at_least(int v) {
    int n = 1;
    while (n < v) n *= 2;
    return n;
}

int64_t sample_smem(int64_t vocab) {
    const int64_t n = pow2_at_least(static_cast<int>(vocab));
    return 8 * vocab + 8 * n + 4 * vocab + vocab;
}

// Block-wide reduction by `op` (associative, `init` its identity) through `scratch` (kThreads / 32 entries); every
// thread gets the result.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* scratch, T init, Op op) {
    for (int off = 16; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
    __syncthreads();  // the scratch's previous use is over
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    T r = init;
    for (int w = 0; w < kThreads / 32; ++w) r = op(r, scratch[w]);
    return r;
}
struct Max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
    __device__ int operator()(int a, int b) const { return max(a, b); }
};
struct Min {
    __device__ int operator()(int a, int b) const { return min(a, b); }
};
struct Sum {
    __device__ float operator()(float a, float b) const { return a + b; }
    __device__ int operator()(int a, int b) const { return a + b; }
};

// Inclusive prefix sums of x[0, n) in fp64, in place; thread t sums its consecutive kPerThread items.
__device__ void block_scan(double* x, int n, double* scratch) {
    const int t = threadIdx.x, lo = t * kPerThread;
    double run = 0.0;
    for (int i = lo; i < lo + kPerThread && i < n; ++i) {
        run += x[i];
        x[i] = run;
    }
    // Exclusive scan of the threads' totals: within each warp, then over the warps.
    double incl = run;
    for (int off = 1; off < 32; off *= 2) {
        const double o = __shfl_up_sync(0xffffffffu, incl, off);
        if (t % 32 >= off) incl += o;
    }
    __syncthreads();
    if (t % 32 == 31) scratch[t / 32] = incl;
    __syncthreads();
    double base = incl - run;
    for (int w = 0; w < t / 32; ++w) base += scratch[w];
    for (int i = lo; i < lo + kPerThread && i < n; ++i) x[i] += base;
    __syncthreads();
}

// The sort's order as one unsigned 64-bit key, ascending: the log-prob descending in the high half (−0 as +0, NaN
// after −inf), the id in the low half (ties to the lower id); the padding past V is the largest key. One compare and
// one 64-bit shuffle per exchange instead of the float / id pair's.
__device__ __forceinline__ uint64_t sort_key(float logp, int id) {
    uint32_t code = 0xffffffffu;
    if (!isnan(logp)) {
        const uint32_t bits = __float_as_uint(logp == 0.f ? 0.f : logp);
        code = (bits & 0x80000000u) ? bits : ~(bits | 0x80000000u);  // ~(ascending code)
    }
    return (static_cast<uint64_t>(code) << 32) | static_cast<uint32_t>(id);
}
constexpr uint64_t kPadKey = ~uint64_t{0};
__device__ __forceinline__ float key_logp(uint64_t key) {
    const uint32_t asc = ~static_cast<uint32_t>(key >> 32);
    return __uint_as_float((asc & 0x80000000u) ? (asc & 0x7fffffffu) : ~asc);
}
__device__ __forceinline__ int key_id(uint64_t key) { return static_cast<int>(static_cast<uint32_t>(key)); }

// A bitonic size's stages of stride `stride` down to 1 (stride < 32) with one element a thread (n <= kThreads):
// element t and its partner t ^ s meet by shuffles instead of shared memory and a barrier per stage — the same
// compare-exchanges, so the same order. Every thread takes part (those past n hold padding and store nothing). Ends
// with the block synced.
__device__ __forceinline__ void warp_stages(uint64_t* keys, int n, int size, int stride) {
    const int t = threadIdx.x;
    uint64_t k = t < n ? keys[t] : kPadKey;
    const bool descending = (t & size) == 0;
    for (int s = stride; s > 0; s /= 2) {
        const uint64_t o = __shfl_xor_sync(0xffffffffu, k, s);
        const bool lo = (t & s) == 0;
        if ((lo ? o < k : k < o) == descending) k = o;  // lo takes the one before, hi the other: each the partner's
    }
    if (t < n) keys[t] = k;
    __syncthreads();
}

__global__ void __launch_bounds__(kThreads, 2) sample_kernel(SampleParams p) {
    dsrl::kernels::pdl_enter();
    // Dynamic shared memory (sample_smem): fp64 scans [V], the sort's keys (sort_key) [n = V rounded up to a power of
    // two], logits / T then the processed log-probs [V], the kept flags in rank order [V].
    extern __shared__ double smem[];
    const int V = static_cast<int>(p.vocab), n = pow2_at_least(V);
    double* mass = smem;
    uint64_t* keys = reinterpret_cast<uint64_t*>(mass + V);
    float* scaled = reinterpret_cast<float*>(keys + n);
    unsigned char* keep = reinterpret_cast<unsigned char*>(scaled + V);
    __shared__ float fscratch[kThreads / 32];
    __shared__ int iscratch[kThreads / 32];
    __shared__ double dscratch[kThreads / 32];
    const int64_t row = blockIdx.x;
    const int t = threadIdx.x;
    const float* logits = p.logits + row * p.vocab;
    // The row's entry of this step, its uniform and forced id: loaded now, used after the sort.
    const int64_t at = (p.capacity > 0 ? window_slot(p.pos[row], p.base[row], p.capacity) : 0) * p.rows + row;
    const double u = p.uniform[at];
    const int64_t forced = p.forced != nullptr ? p.forced[at] : -1;

    float m = -INFINITY;
    for (int i = t; i < V; i += kThreads) {
        const float s = p.greedy ? logits[i] : __fmul_rn(logits[i], p.inv_temperature);
        scaled[i] = s;
        m = fmaxf(m, s);
    }
    m = block_reduce(m, fscratch, -INFINITY, Max());
    if (p.greedy) {  // the first argmax alone, log-prob 0
        int first = V;
        for (int i = t; i < V; i += kThreads) {
            if (scaled[i] == m && i < first) first = i;
        }
        first = block_reduce(first, iscratch, V, Min());
        if (first == V) first = 0;  // a row of NaNs
        for (int i = t; i < V; i += kThreads) scaled[i] = i == first ? 0.f : -INFINITY;
    } else {
        float sum = 0.f;
        for (int i = t; i < V; i += kThreads) sum += expf(scaled[i] - m);
        const float log_sum = logf(block_reduce(sum, fscratch, 0.f, Sum()));
        if (p.truncate) {
            // Sort (log-prob, id) descending by log-prob, ties to the lower id; padding sorts last.
            for (int i = t; i < n; i += kThreads) keys[i] = i < V ? sort_key((scaled[i] - m) - log_sum, i) : kPadKey;
            __syncthreads();
            for (int size = 2; size <= n; size *= 2) {
                for (int stride = size / 2; stride > 0; stride /= 2) {
                    if (p.warp_stages && n <= kThreads && stride < 32) {  // the rest of this size by shuffles
                        warp_stages(keys, n, size, stride);
                        break;
                    }
                    for (int i = t; i < n / 2; i += kThreads) {
                        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
                        const bool descending = (lo & size) == 0;
                        const uint64_t a = keys[lo], b = keys[hi];
                        if ((b < a) == descending) {  // b goes first
                            keys[lo] = b;
                            keys[hi] = a;
                        }
                    }
                    __syncthreads();
                }
            }
            // The kept set in rank order: top-k, min-p, then top-p on what they kept; rank 0 always.
            const float floor_lp = p.use_min_p ? __fadd_rn(key_logp(keys[0]), p.log_min_p) : -INFINITY;
            for (int r = t; r < V; r += kThreads) {
                const float lp = key_logp(keys[r]);
                bool k = (p.top_k <= 0 || r < p.top_k) && (!p.use_min_p || lp >= floor_lp);
                keep[r] = k;
                mass[r] = k ? static_cast<double>(expf(lp)) : 0.0;
            }
            __syncthreads();
            if (p.top_p < 1.0) {
                block_scan(mass, V, dscratch);
                for (int r = t; r < V; r += kThreads) {
                    const double p_r = keep[r] ? static_cast<double>(expf(key_logp(keys[r]))) : 0.0;
                    keep[r] = keep[r] && (mass[r] - p_r < p.top_p);
                }
                __syncthreads();
            }
            // Back to id order (scaled[] stays; keep by id goes to mass[] as 0 / 1).
            for (int r = t; r < V; r += kThreads) mass[key_id(keys[r])] = (keep[r] || r == 0) ? 1.0 : 0.0;
            __syncthreads();
            float m2 = -INFINITY;
            for (int i = t; i < V; i += kThreads) {
                if (mass[i] != 0.0) m2 = fmaxf(m2, scaled[i]);
            }
            m2 = block_reduce(m2, fscratch, -INFINITY, Max());
            float sum2 = 0.f;
            for (int i = t; i < V; i += kThreads) {
                if (mass[i] != 0.0) sum2 += expf(scaled[i] - m2);
            }
            const float log_sum2 = logf(block_reduce(sum2, fscratch, 0.f, Sum()));
            for (int i = t; i < V; i += kThreads) scaled[i] = mass[i] != 0.0 ? (scaled[i] - m2) - log_sum2 : -INFINITY;
        } else {
            for (int i = t; i < V; i += kThreads) scaled[i] = (scaled[i] - m) - log_sum;
        }
    }
    __syncthreads();
    // The draw: the first id whose cumulative mass (fp64, id order) reaches u · total, at most the last kept id.
    int last = -1;
    for (int i = t; i < V; i += kThreads) {
        mass[i] = exp(static_cast<double>(scaled[i]));
        if (scaled[i] > -INFINITY) last = max(last, i);
    }
    last = block_reduce(last, iscratch, -1, Max());
    block_scan(mass, V, dscratch);
    const double target = u * mass[V - 1];
    int below = 0;
    for (int i = t; i < V; i += kThreads) below += mass[i] < target ? 1 : 0;
    below = block_reduce(below, iscratch, 0, Sum());
    int64_t token = below > last ? max(last, 0) : below;
    if (forced >= 0) token = forced;
    if (t == 0) {
        p.tokens[row] = token;
        if (p.window_tokens != nullptr) p.window_tokens[at] = token;
        p.logp[at] = token < V ? scaled[token] : -INFINITY;
    }
    if (p.kept != nullptr) {
        const int bytes = (V + 7) / 8;
        for (int b = t; b < bytes; b += kThreads) {
            unsigned bits = 0;
            for (int j = 0; j < 8 && 8 * b + j < V; ++j) bits |= isfinite(scaled[8 * b + j]) ? (1u << j) : 0u;
            p.kept[at * bytes + b] = static_cast<uint8_t>(bits);
        }
    }
}

}  // namespace

cudaError_t launch_sample(const SampleParams& p, cudaStream_t stream) {
    if (p.rows == 0) return cudaSuccess;
    if (p.vocab < 1 || p.vocab > kSampleMaxVocab || p.rows > 0x7fffffff) return cudaErrorInvalidValue;
    const int64_t bytes = sample_smem(p.vocab);
    // Raised once per larger size, on the eager warm-up step that precedes a graph capture (as sparse_mla_simt).
    static std::atomic<int64_t> raised{48 * 1024};
    if (bytes > raised.load()) {
        const cudaError_t e =
            cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
        if (e != cudaSuccess) return e;
        raised.store(bytes);
    }
    return dsrl::kernels::launch(sample_kernel, static_cast<unsigned>(p.rows), kThreads, bytes, stream, p);
}

}  // namespace dsrl::rollout::kernels
