// RMSNorm and RoPE, one kernel each (see norm_rope.cuh). Napkin math: both are memory-bound and tiny at decode
// (a few KiB per row); what they save is launches — the ATen RMSNorm is 8 kernels, a RoPE 9 to 11.
//
// Rounding follows the ATen formulas op by op: every binary op of a bf16/fp16 tensor computes in fp32 and rounds its
// result; fp32 ops use the _rn intrinsics so that the compiler cannot contract them into FMAs (ATen's elementwise
// kernels round each op).
#include "core/kernels/launch.cuh"
#include "dsa/kernels/norm_rope.cuh"

#include <algorithm>

#include "core/kernels/row_dot.cuh"
#include "core/kernels/row_norm.cuh"
#include "dsa/kernels/rope_pair.cuh"

namespace dsrl::dsa::kernels {
namespace {

constexpr int kNormThreads = 256;

using dsrl::kernels::load_elem;
using dsrl::kernels::round_elem;
using dsrl::kernels::store_elem;

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

// Where row `row`'s output starts in out: the row itself, or its cache slot's row (−1: a slot outside the pool).
__device__ __forceinline__ int64_t out_row(const RmsNormParams& p, int64_t row) {
    if (p.out_slots == nullptr) return row * p.dim;
    const int64_t slot = p.out_slots[row];
    return slot >= 0 && slot < p.out_rows ? slot * p.out_row_stride : -1;
}

// Stores output element i of a row that starts at `out` (out_row): in out's type, or rounded to it and cast to the
// pool's.
__device__ __forceinline__ void store_out(const RmsNormParams& p, int64_t out, int64_t i, float v) {
    if (p.out_slots == nullptr) {
        store_elem(p.out, p.out_type, out + i, v);
    } else {
        store_elem(p.out, p.slot_type, out + i, round_elem(v, p.out_type));
    }
}

// Stores row `row`'s output elements (each thread its own, value(i) in fp32 before the output's rounding) at `out`
// (out_row); with p.rope, the rotated part's values go through shared memory (rounded to out_type, as the rope kernel
// would read them), then a thread per pair rotates and stores them. Every thread of the block calls it.
template <typename Value>
__device__ __forceinline__ void emit_row(const RmsNormParams& p, int64_t row, int64_t out, Value value) {
    __shared__ float rot[kNormMaxRope];
    for (int64_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
        const float v = value(i);
        if (i < p.rope) {
            rot[i] = round_elem(v, p.out_type);
        } else {
            store_out(p, out, i, v);
        }
    }
    if (p.rope == 0) return;
    __syncthreads();
    for (int j = threadIdx.x; j < p.rope / 2; j += kNormThreads) {
        int a_idx = 0, b_idx = 0;
        rope_pair_dims(j, p.rope, p.rope_interleaved, a_idx, b_idx);
        float a = rot[a_idx], b = rot[b_idx];
        const int64_t at = row * (p.rope / 2) + j;
        rope_rotate(a, b, p.rope_cos[at], p.rope_sin[at], p.out_type);
        store_out(p, out, a_idx, a);
        store_out(p, out, b_idx, b);
    }
}

// Shared memory of a norm block (launch_norms sizes it): where norm_stashes(p), the row as the norm reads it (fp32: x,
// or x + residual as rounded) at [0, dim) and the weight (and the LayerNorm's bias) after it — the weights loaded
// before the block waits for the kernel before it (no kernel of a step writes them), the row kept from the first pass
// for the last, so that after the sum's barriers no load goes to memory. Without (a row whose stash would pass
// kNormStashBytes), both are read again from memory. With pairs, [0, dim) first holds the pairs' sum of the row (the
// same index then the row's).
__device__ __forceinline__ float* norm_smem() {
    extern __shared__ float4 norm_smem_raw[];
    return reinterpret_cast<float*>(norm_smem_raw);
}

// Loads the norm's weight (and bias) into shared memory where the job stashes them, then waits for the kernel before.
// Returns norm_stashes(p), once for the row's passes.
__device__ __forceinline__ bool prefetch_weights_then_wait(const RmsNormParams& p) {
    const bool stash = norm_stashes(p);
    if (stash) {
        float* const ws = norm_smem() + p.dim;
        for (int64_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
            ws[i] = load_elem(p.w, p.w_type, i);
            if (p.centered) ws[p.dim + i] = load_elem(p.bias, p.w_type, i);
        }
    }
    dsrl::kernels::pdl_enter();
    return stash;
}

// Element i of the row's weight / bias (stashed or from memory).
__device__ __forceinline__ float weight_at(const RmsNormParams& p, bool stash, int64_t i) {
    return stash ? norm_smem()[p.dim + i] : load_elem(p.w, p.w_type, i);
}
__device__ __forceinline__ float bias_at(const RmsNormParams& p, bool stash, int64_t i) {
    return stash ? norm_smem()[2 * p.dim + i] : load_elem(p.bias, p.w_type, i);
}

// One block per row: the sum of squares (fp32), then each element. kPairs: the residual may be p.residual_pairs.
template <bool kPairs>
__device__ __forceinline__ void rms_norm_row(const RmsNormParams& p, int64_t row) {
    const bool stash = prefetch_weights_then_wait(p);
    const int64_t base = row * p.x_row_stride;
    const bool pairs = kPairs && p.residual_pairs.out != nullptr, add = p.residual != nullptr || pairs;
    float* const xs = norm_smem();  // the pairs' sum of the row, then (stash) the row
    if constexpr (kPairs) {
        if (pairs) {  // 16-byte loads of eight columns a thread
            dsrl::kernels::stage_pair_sum(p.residual_pairs, row, static_cast<int>(p.dim), xs, threadIdx.x,
                                          kNormThreads);
            __syncthreads();
        }
    }
    float sum = 0.f;
    for (int64_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
        float v = load_elem(p.x, p.x_type, base + i);
        if (add) {  // x + residual in x's type (ATen's add), kept for the second pass below (the same thread's index)
            const float r = pairs ? xs[i] : load_elem(p.residual, p.residual_type, row * p.residual_row_stride + i);
            v = round_elem(__fadd_rn(v, r), p.x_type);
            store_elem(p.sum_out, p.x_type, row * p.dim + i, v);
        }
        if (stash) xs[i] = v;  // exact: x's type in fp32
        sum = __fadd_rn(sum, __fmul_rn(v, v));
    }
    // As ATen: mean = sum · (1 / dim) in fp32, + eps, rsqrt.
    const float r = rsqrtf(__fadd_rn(__fmul_rn(block_sum(sum), 1.0f / static_cast<float>(p.dim)), p.eps));
    const int64_t out = out_row(p, row);
    if (out < 0) return;
    const auto row_at = [&](int64_t i) {  // element i as the first pass read it (this thread's own index)
        if (stash) return xs[i];
        return add ? load_elem(p.sum_out, p.x_type, row * p.dim + i) : load_elem(p.x, p.x_type, base + i);
    };
    if (add) {  // no rotation (launch_norms)
        for (int64_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
            const float normed = round_elem(__fmul_rn(row_at(i), r), p.x_type);  // .to(x's type)
            store_out(p, out, i, __fmul_rn(weight_at(p, stash, i), normed));
        }
        return;
    }
    emit_row(p, row, out, [&](int64_t i) {
        const float normed = round_elem(__fmul_rn(row_at(i), r), p.x_type);
        return __fmul_rn(weight_at(p, stash, i), normed);
    });
}

// Work items of a job without a norm (identity): a thread per pair of the rope part and per other dim of each row,
// so its rows take a few blocks, not one each (a decode step's 256 rope keys: 16 blocks beside the norms' 768 — the
// launch stays one wave).
__host__ __device__ inline int64_t identity_items(const RmsNormParams& p) { return p.dim - p.rope / 2; }

// Block `block` of an identity job: its threads' items, each pair rotated as the rope kernel rotates it.
__device__ __forceinline__ void identity_block(const RmsNormParams& p, int64_t block) {
    dsrl::kernels::pdl_enter();
    const int64_t per_row = identity_items(p);
    const int64_t item = block * kNormThreads + threadIdx.x, row = item / per_row, k = item - row * per_row;
    if (row >= p.rows) return;
    const int64_t out = out_row(p, row);
    if (out < 0) return;
    const int64_t at = row * (p.rope / 2);
    rope_row_item(p.x, p.x_type, row * p.x_row_stride, k, p.rope, p.rope_interleaved, p.rope_cos + at, p.rope_sin + at,
                  [&](int64_t d, float v) { store_out(p, out, d, v); });
}

// LayerNorm of one row (one block): the mean, the biased variance of the centered values, then each element as ATen's
// kernel computes it in fp32 (w · (rstd · (x − mean)) + bias), rounded once.
__device__ __forceinline__ void layer_norm_row(const RmsNormParams& p, int64_t row) {
    const bool stash = prefetch_weights_then_wait(p);
    const int64_t base = row * p.x_row_stride;
    float* const xs = norm_smem();
    const auto row_at = [&](int64_t i) { return stash ? xs[i] : load_elem(p.x, p.x_type, base + i); };
    float sum = 0.f;
    for (int64_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
        const float v = load_elem(p.x, p.x_type, base + i);
        if (stash) xs[i] = v;
        sum = __fadd_rn(sum, v);
    }
    const float mean = __fdiv_rn(block_sum(sum), static_cast<float>(p.dim));
    float sq = 0.f;
    for (int64_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
        const float d = __fsub_rn(row_at(i), mean);
        sq = __fmaf_rn(d, d, sq);
    }
    const float rstd = rsqrtf(__fadd_rn(__fdiv_rn(block_sum(sq), static_cast<float>(p.dim)), p.eps));
    const int64_t out = out_row(p, row);
    if (out < 0) return;
    emit_row(p, row, out, [&](int64_t i) {
        const float centered = __fmul_rn(rstd, __fsub_rn(row_at(i), mean));
        return __fmaf_rn(weight_at(p, stash, i), centered, bias_at(p, stash, i));
    });
}

struct NormJobs {
    RmsNormParams job[kMaxNormJobs];
    int64_t end[kMaxNormJobs];  // one past each job's last block
};

// A block per row: job 0's rows, then job 1's, 2's and 3's. One body for the four jobs — the parameters a
// __grid_constant__ indexed by the block's job (four inlined copies of every path were 10,700 SASS instructions, and
// a multiprocessor whose blocks ran different jobs stalled on fetching them; docs/kernel_notes.md, session 25). Each
// path waits for the kernel before it itself, after what it may load ahead (prefetch_weights_then_wait).
// kPairs: a job's residual may be its pair rows (a separate instantiation: the pair sum's loads take registers, which
// would cost the plain kernel blocks resident).
template <bool kPairs>
__global__ void __launch_bounds__(kNormThreads) norm_kernel(const __grid_constant__ NormJobs j) {
    const int64_t block = blockIdx.x;
    int k = 0;
#pragma unroll
    for (int i = 0; i < kMaxNormJobs - 1; ++i) k += block >= j.end[i] ? 1 : 0;  // end[] ascends
    const RmsNormParams& p = j.job[k];
    const int64_t local = block - (k == 0 ? 0 : j.end[k - 1]);
    if (p.identity) {
        identity_block(p, local);  // `local` is the job's block here
    } else if (p.centered) {
        layer_norm_row(p, local);
    } else {
        rms_norm_row<kPairs>(p, local);
    }
}

// One thread per (row, head, pair of the rope part) plus the copied tail.
__device__ __forceinline__ void rope_item(const RopeParams& p, int64_t item) {
    const int64_t per_head = p.rope / 2 + (p.dim - p.rope);  // work items of one head: pairs, then copied dims
    const int64_t j = item % per_head;
    const int64_t rh = item / per_head;
    const int64_t h = rh % p.heads;
    const int64_t r = rh / p.heads;
    int64_t out = rh * p.dim;
    if (p.out_slots != nullptr) {  // the row's cache slot (heads == 1)
        const int64_t slot = p.out_slots[r];
        if (slot < 0 || slot >= p.out_rows) return;
        out = slot * p.out_row_stride + h * p.dim;
    }
    const int64_t at = r * (p.rope / 2);
    rope_row_item(p.x, p.type, r * p.x_row_stride + h * p.x_head_stride, j, static_cast<int>(p.rope), p.interleaved,
                  p.cos + at, p.sin + at, [&](int64_t d, float v) { store_elem(p.out, p.out_type, out + d, v); });
}

struct RopeJobs {
    RopeParams job[kMaxRopeJobs];
    int64_t end[kMaxRopeJobs];  // one past each job's last item
};

// The jobs' items in order, a grid-stride loop over all of them.
__global__ void rope_kernel(RopeJobs j) {
    dsrl::kernels::pdl_enter();
    const int64_t total = j.end[kMaxRopeJobs - 1];
    for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < total;
         item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        if (item < j.end[0]) {
            rope_item(j.job[0], item);
        } else if (item < j.end[1]) {
            rope_item(j.job[1], item - j.end[0]);
        } else if (item < j.end[2]) {
            rope_item(j.job[2], item - j.end[1]);
        } else {
            rope_item(j.job[3], item - j.end[2]);
        }
    }
}

constexpr int kProjWarps = 4;  // rows per block of the projection

// One warp per row, each with its fp32 copy of the row in shared memory.
__global__ void __launch_bounds__(kProjWarps * 32) row_proj_kernel(RowProjParams p) {
    dsrl::kernels::pdl_enter();
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

// kRows rows a block (2 or 8), 8 / kRows warps a row: each row's warps stage it (normalized after the residual add
// when p.add_norm.w is set, the sum and the norm's output written as the norm kernel writes them), then the block's
// warps split the weight rows in chunks of four, each chunk for all the block's rows (the weights read once a block,
// not once a row).
template <int kRows, bool kPairs>
__global__ void __launch_bounds__(dsrl::kernels::kTileWarps * 32) row_proj_tile_kernel(RowProjParams p) {
    extern __shared__ float4 proj_smem[];
    __shared__ float red[kRows * 8];
    const dsrl::kernels::TileRow<kRows> tile(p.rows);
    float* const xs = reinterpret_cast<float*>(proj_smem);
    dsrl::kernels::stage_tile_row<kRows, kPairs>(tile, p.add_norm, p.x, p.x_type, p.x_row_stride, p.dim, xs,
                                                 red);  // waits for the kernel before
    __syncthreads();
    const int rows = static_cast<int>(p.rows - tile.first < kRows ? p.rows - tile.first : kRows);
    dsrl::kernels::block_tile_dots<kRows>(xs, p.w, p.w_type, p.n, p.dim, rows, p.scaled, p.scale,
                                          p.out + tile.first * p.n, p.n, tile.warp, dsrl::kernels::kTileWarps,
                                          tile.lane);
}

}  // namespace

cudaError_t launch_row_proj(const RowProjParams& p, cudaStream_t stream) {
    if (p.rows == 0 || p.n == 0) return cudaSuccess;
    if (!dsrl::kernels::row_dot_takes(p.dim)) return cudaErrorInvalidValue;
    if (p.dim <= kRowProjNormMaxDim) {
        const size_t smem = sizeof(float) * p.dim;
        if (p.add_norm.residual_pairs.out != nullptr) {
            return dsrl::kernels::launch_tile<row_proj_tile_kernel<2, true>, row_proj_tile_kernel<8, true>>(
                p.rows, kRowProjFewRows, smem, stream, p);
        }
        return dsrl::kernels::launch_tile<row_proj_tile_kernel<2, false>, row_proj_tile_kernel<8, false>>(
            p.rows, kRowProjFewRows, smem, stream, p);
    }
    if (p.add_norm.w != nullptr) return cudaErrorInvalidValue;  // the norm is staged by the tile kernel only
    const auto blocks = static_cast<unsigned>((p.rows + kProjWarps - 1) / kProjWarps);
    return dsrl::kernels::launch(row_proj_kernel, blocks, kProjWarps * 32, sizeof(float) * kProjWarps * p.dim, stream,
                                 p);
}

// Copies `count` jobs into to.job and sets to.end[i] to the work (blocks or items, `work(job)`) of jobs 0..i, the
// slots past count adding none. Returns the total.
template <typename Jobs, typename Params, typename Work>
int64_t place_jobs(Jobs& to, const Params* jobs, int count, int max_jobs, Work work) {
    int64_t total = 0;
    for (int i = 0; i < max_jobs; ++i) {
        if (i < count) {
            to.job[i] = jobs[i];
            total += work(jobs[i]);
        }
        to.end[i] = total;
    }
    return total;
}

cudaError_t launch_norms(const RmsNormParams* jobs, int count, cudaStream_t stream) {
    static_assert(kMaxNormJobs == 4, "norm_kernel spells out four jobs");
    if (count < 0 || count > kMaxNormJobs) return cudaErrorInvalidValue;
    size_t pair_smem = 0;  // a row of the pairs' sum in shared memory
    for (int i = 0; i < count; ++i) {
        const RmsNormParams& p = jobs[i];
        const bool pairs = p.residual_pairs.out != nullptr;
        if ((p.residual != nullptr || pairs) && (p.centered || p.identity || p.out_slots != nullptr || p.rope != 0))
            return cudaErrorInvalidValue;
        if (p.rope < 0 || p.rope % 2 != 0 || p.rope > p.dim || p.rope > kNormMaxRope ||
            (p.rope > 0 && (p.rope_cos == nullptr || p.rope_sin == nullptr)) || (p.identity && p.x_type != p.out_type))
            return cudaErrorInvalidValue;
        if (pairs && (p.residual_pairs.hidden != p.dim || p.dim % 8 != 0 || p.dim > kPairNormMaxDim))
            return cudaErrorInvalidValue;
        if (pairs) pair_smem = std::max(pair_smem, sizeof(float) * static_cast<size_t>(p.dim));
    }
    NormJobs j{};  // a block per row (an identity job's items a thread each); a job without columns: no blocks
    const int64_t rows = place_jobs(j, jobs, count, kMaxNormJobs, [](const RmsNormParams& p) {
        if (p.dim == 0) return int64_t{0};
        return p.identity ? (p.rows * identity_items(p) + kNormThreads - 1) / kNormThreads : p.rows;
    });
    if (rows == 0) return cudaSuccess;
    if (rows > 0x7fffffff) return cudaErrorInvalidValue;
    size_t smem = pair_smem;
    for (int i = 0; i < count; ++i) {  // the row, its weight and its bias in shared memory where they fit
        if (norm_stashes(jobs[i])) smem = std::max(smem, static_cast<size_t>(norm_stash_bytes(jobs[i])));
    }
    // The limit over the 48 KiB default: the kernel's static arrays come on top of a 48 KiB pair row or stash.
    static const cudaError_t raised =
        dsrl::kernels::raise_dynamic_smem(64 * 1024, norm_kernel<false>, norm_kernel<true>);
    if (raised != cudaSuccess) return raised;
    return dsrl::kernels::launch(pair_smem > 0 ? norm_kernel<true> : norm_kernel<false>, static_cast<unsigned>(rows),
                                 kNormThreads, smem, stream, j);
}

cudaError_t launch_ropes(const RopeParams* jobs, int count, cudaStream_t stream) {
    static_assert(kMaxRopeJobs == 4, "rope_kernel spells out four jobs");
    if (count < 0 || count > kMaxRopeJobs) return cudaErrorInvalidValue;
    RopeJobs j{};  // a thread per (row, head, pair of the rope part) and per copied dim
    const int64_t total = place_jobs(j, jobs, count, kMaxRopeJobs, [](const RopeParams& p) {
        return p.rows * p.heads * (p.rope / 2 + p.dim - p.rope);
    });
    if (total == 0) return cudaSuccess;
    constexpr int kThreads = 256;
    const int64_t blocks = (total + kThreads - 1) / kThreads;
    return dsrl::kernels::launch(rope_kernel, static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16),
                                 kThreads, 0, stream, j);
}

}  // namespace dsrl::dsa::kernels
