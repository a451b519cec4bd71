// RMSNorm and RoPE, one kernel each (see norm_rope.cuh). Napkin math: both are memory-bound and tiny at decode
// (a few KiB per row); what they save is launches — the ATen RMSNorm is 8 kernels, a RoPE 9 to 11.
//
// Rounding follows the ATen formulas op by op: every binary op of a bf16/fp16 tensor computes in fp32 and rounds its
// result; fp32 ops use the _rn intrinsics so that the compiler cannot contract them into FMAs (ATen's elementwise
// kernels round each op).
#include "dsa/kernels/norm_rope.cuh"

#include "core/kernels/row_dot.cuh"

namespace dsrl::dsa::kernels {
namespace {

constexpr int kNormThreads = 256;

using dsrl::kernels::load_elem;
using dsrl::kernels::round_elem;
using dsrl::kernels::store_elem;

// One block per row: the sum of squares (fp32), then each element.
__device__ __forceinline__ void rms_norm_row(const RmsNormParams& p, int64_t row) {
    const int64_t base = row * p.x_row_stride;
    const bool add = p.residual != nullptr;
    float sum = 0.f;
    for (int64_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
        float v = load_elem(p.x, p.x_type, base + i);
        if (add) {  // x + residual in x's type (ATen's add), kept for the second pass below (the same thread's index)
            v = round_elem(__fadd_rn(v, load_elem(p.residual, p.residual_type, row * p.residual_row_stride + i)),
                           p.x_type);
            store_elem(p.sum_out, p.x_type, row * p.dim + i, v);
        }
        sum = __fadd_rn(sum, __fmul_rn(v, v));
    }
    __shared__ float warp_sums[kNormThreads / 32];
    for (int off = 16; off > 0; off /= 2) sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, off));
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
    __syncthreads();
    __shared__ float scale;
    if (threadIdx.x == 0) {
        float total = 0.f;
        for (int w = 0; w < kNormThreads / 32; ++w) total = __fadd_rn(total, warp_sums[w]);
        // As ATen: mean = sum · (1 / dim) in fp32, + eps, rsqrt.
        const float mean = __fmul_rn(total, 1.0f / static_cast<float>(p.dim));
        scale = rsqrtf(__fadd_rn(mean, p.eps));
    }
    __syncthreads();
    const float r = scale;
    for (int64_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
        const float v = add ? load_elem(p.sum_out, p.x_type, row * p.dim + i) : load_elem(p.x, p.x_type, base + i);
        const float normed = round_elem(__fmul_rn(v, r), p.x_type);  // .to(x's type)
        store_elem(p.out, p.out_type, row * p.dim + i, __fmul_rn(load_elem(p.w, p.w_type, i), normed));
    }
}

// The sum of v over the block's threads (fp32, warps then their sums in order), on every thread.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float sums[kNormThreads / 32];
    __shared__ float total;
    for (int off = 16; off > 0; off /= 2) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, off));
    if (threadIdx.x % 32 == 0) sums[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int w = 0; w < kNormThreads / 32; ++w) t = __fadd_rn(t, sums[w]);
        total = t;
    }
    __syncthreads();
    const float r = total;
    __syncthreads();  // sums and total free for the next call
    return r;
}

// LayerNorm of one row (one block): the mean, the biased variance of the centered values, then each element as ATen's
// kernel computes it in fp32 (w · (rstd · (x − mean)) + bias), rounded once.
__device__ __forceinline__ void layer_norm_row(const RmsNormParams& p, int64_t row) {
    const int64_t base = row * p.x_row_stride;
    float sum = 0.f;
    for (int64_t i = threadIdx.x; i < p.dim; i += kNormThreads)
        sum = __fadd_rn(sum, load_elem(p.x, p.x_type, base + i));
    const float mean = __fdiv_rn(block_sum(sum), static_cast<float>(p.dim));
    float sq = 0.f;
    for (int64_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
        const float d = __fsub_rn(load_elem(p.x, p.x_type, base + i), mean);
        sq = __fmaf_rn(d, d, sq);
    }
    const float rstd = rsqrtf(__fadd_rn(__fdiv_rn(block_sum(sq), static_cast<float>(p.dim)), p.eps));
    for (int64_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
        const float centered = __fmul_rn(rstd, __fsub_rn(load_elem(p.x, p.x_type, base + i), mean));
        const float v = __fmaf_rn(load_elem(p.w, p.w_type, i), centered, load_elem(p.bias, p.w_type, i));
        store_elem(p.out, p.out_type, row * p.dim + i, v);
    }
}

// Job a's rows, then job b's (b.rows may be 0).
__global__ void __launch_bounds__(kNormThreads) rms_norm_kernel(RmsNormParams a, RmsNormParams b) {
    const int64_t block = blockIdx.x;
    if (block < a.rows) {
        rms_norm_row(a, block);
    } else {
        rms_norm_row(b, block - a.rows);
    }
}

// LayerNorm rows (a kernel of its own: the RMSNorm kernel's code stays as lean as it was).
__global__ void __launch_bounds__(kNormThreads) layer_norm_kernel(RmsNormParams p) { layer_norm_row(p, blockIdx.x); }

// One thread per (row, head, pair of the rope part) plus the copied tail.
__device__ __forceinline__ int64_t rope_items(const RopeParams& p) {
    return p.rows * p.heads * (p.rope / 2 + p.dim - p.rope);
}

__device__ __forceinline__ void rope_item(const RopeParams& p, int64_t item) {
    const int64_t half = p.rope / 2;
    const int64_t tail = p.dim - p.rope;
    const int64_t per_head = half + tail;  // work items of one head: pairs, then copied dims
    const int64_t j = item % per_head;
    const int64_t rh = item / per_head;
    const int64_t h = rh % p.heads;
    const int64_t r = rh / p.heads;
    const int64_t in = r * p.x_row_stride + h * p.x_head_stride;
    const int64_t out = rh * p.dim;
    if (j >= half) {  // a dim past the rope part: copied
        const int64_t d = p.rope + (j - half);
        store_elem(p.out, p.type, out + d, load_elem(p.x, p.type, in + d));
        return;
    }
    // cos / sin cast to x's type first (cos.to(x.dtype)).
    const float c = round_elem(p.cos[r * half + j], p.type);
    const float s = round_elem(p.sin[r * half + j], p.type);
    const int64_t a_idx = p.interleaved ? 2 * j : j;             // even / low half
    const int64_t b_idx = p.interleaved ? 2 * j + 1 : j + half;  // odd / high half
    const float a = load_elem(p.x, p.type, in + a_idx);
    const float b = load_elem(p.x, p.type, in + b_idx);
    // a' = a·c − b·s and b' = b·c + a·s, each product and sum rounded to x's type.
    const float ac = round_elem(__fmul_rn(a, c), p.type), bs = round_elem(__fmul_rn(b, s), p.type);
    const float bc = round_elem(__fmul_rn(b, c), p.type), as = round_elem(__fmul_rn(a, s), p.type);
    store_elem(p.out, p.type, out + a_idx, __fsub_rn(ac, bs));
    store_elem(p.out, p.type, out + b_idx, __fadd_rn(bc, as));
}

// Job a's items, then job b's (b may have none); a grid-stride loop over both.
__global__ void rope_kernel(RopeParams a, RopeParams b) {
    const int64_t items_a = rope_items(a), total = items_a + rope_items(b);
    for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < total;
         item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        if (item < items_a) {
            rope_item(a, item);
        } else {
            rope_item(b, item - items_a);
        }
    }
}

constexpr int kProjWarps = 4;  // rows per block of the projection

// One warp per row, each with its fp32 copy of the row in shared memory.
__global__ void __launch_bounds__(kProjWarps * 32) row_proj_kernel(RowProjParams p) {
    extern __shared__ float4 proj_smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * kProjWarps + warp;
    if (row >= p.rows) return;  // whole warps: no block-wide barrier
    float* xs = reinterpret_cast<float*>(proj_smem) + warp * p.dim;
    const auto* x = static_cast<const unsigned char*>(p.x) + row * p.x_row_stride * dsrl::kernels::elem_size(p.x_type);
    dsrl::kernels::stage_row(xs, x, p.x_type, p.dim, lane, 32);
    __syncwarp();
    dsrl::kernels::warp_row_dots(xs, p.w, p.w_type, p.n, p.dim, 0, 1, p.scaled, p.scale, p.out + row * p.n, lane);
}

}  // namespace

cudaError_t launch_row_proj(const RowProjParams& p, cudaStream_t stream) {
    if (p.rows == 0 || p.n == 0) return cudaSuccess;
    if (!dsrl::kernels::row_dot_takes(p.dim)) return cudaErrorInvalidValue;
    const auto blocks = static_cast<unsigned>((p.rows + kProjWarps - 1) / kProjWarps);
    row_proj_kernel<<<blocks, kProjWarps * 32, sizeof(float) * kProjWarps * p.dim, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_rms_norm(const RmsNormParams& p, cudaStream_t stream) {
    if (!p.centered) return launch_rms_norms(p, {}, stream);
    if (p.rows == 0 || p.dim == 0) return cudaSuccess;
    if (p.rows > 0x7fffffff) return cudaErrorInvalidValue;
    layer_norm_kernel<<<static_cast<unsigned>(p.rows), kNormThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_rms_norms(const RmsNormParams& a, const RmsNormParams& b, cudaStream_t stream) {
    const int64_t rows_a = a.dim == 0 ? 0 : a.rows, rows_b = b.dim == 0 ? 0 : b.rows;
    if (rows_a + rows_b == 0) return cudaSuccess;
    if (rows_a + rows_b > 0x7fffffff) return cudaErrorInvalidValue;
    RmsNormParams ja = a, jb = b;
    ja.rows = rows_a;  // a job without columns has nothing to write: no blocks
    jb.rows = rows_b;
    rms_norm_kernel<<<static_cast<unsigned>(rows_a + rows_b), kNormThreads, 0, stream>>>(ja, jb);
    return cudaGetLastError();
}

cudaError_t launch_rope(const RopeParams& p, cudaStream_t stream) { return launch_ropes(p, {}, stream); }

cudaError_t launch_ropes(const RopeParams& a, const RopeParams& b, cudaStream_t stream) {
    const auto items = [](const RopeParams& p) { return p.rows * p.heads * (p.rope / 2 + p.dim - p.rope); };
    const int64_t total = items(a) + items(b);
    if (total == 0) return cudaSuccess;
    constexpr int kThreads = 256;
    const int64_t blocks = (total + kThreads - 1) / kThreads;
    rope_kernel<<<static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16), kThreads, 0, stream>>>(a, b);
    return cudaGetLastError();
}

}  // namespace dsrl::dsa::kernels
