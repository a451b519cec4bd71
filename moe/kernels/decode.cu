// The router's selection and the SwiGLU product, one kernel each (see decode.cuh). Napkin math: at a decode step of
// 256 tokens and 32 experts the router reads 32 KiB and the product a few MiB; both are latency, not bandwidth. What
// they save is launches: the ATen selection is about 18 kernels per MoE layer (sigmoid, bias, two group top-ks, mask,
// top-k and its sort, gather, sum, divide, scale, scatter), SwiGLU's product two.
#include "core/kernels/launch.cuh"
#include "moe/kernels/decode.cuh"

#include <algorithm>
#include <cmath>

#include "core/kernels/row_dot.cuh"
#include "core/kernels/row_norm.cuh"

namespace dsrl::moe::kernels {
namespace {

constexpr int kRowWarps = 4;  // warps of a router block that projects its token's row
constexpr float kNegInf = -INFINITY;

using dsrl::kernels::load_elem;
using dsrl::kernels::round_elem;
using dsrl::kernels::store_elem;

// As ATen's CUDA sigmoid for fp32: 1 / (1 + exp(-x)).
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// The larger of two (value, index) candidates; equal values go to the lower index.
__device__ __forceinline__ void keep_better(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

// Every lane ends with the warp's best (value, index).
__device__ __forceinline__ void warp_best(float& v, int& i) {
    for (int off = 16; off > 0; off /= 2) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, i, off);
        keep_better(v, i, ov, oi);
    }
}

// The selection of token t by one warp from its logits (shared fp32 [experts]) with the warp's scratch (choice
// [experts], group_score [groups], taken [experts]); writes indices, weights and the dense row.
__device__ __forceinline__ void select_experts(const RouteParams& p,
                                               int64_t t,
                                               const float* logits,
                                               float* choice,
                                               float* group_score,
                                               unsigned char* taken,
                                               int lane) {
    const int E = p.experts;
    for (int e = lane; e < E; e += 32) {
        const float v = __fadd_rn(sigmoid(logits[e]), p.bias[e]);
        choice[e] = isnan(v) ? kNegInf : v;
        taken[e] = 0;
    }
    __syncwarp();
    if (p.groups > 1 && p.topk_group < p.groups) {
        const int per = E / p.groups;
        for (int g = lane; g < p.groups; g += 32) {  // a group's score: its two best choices summed
            float top1 = kNegInf, top2 = kNegInf;
            for (int j = 0; j < per; ++j) {
                const float v = choice[g * per + j];
                if (v > top1) {
                    top2 = top1;
                    top1 = v;
                } else if (v > top2) {
                    top2 = v;
                }
            }
            const float s = __fadd_rn(top1, top2);
            group_score[g] = isnan(s) ? kNegInf : s;
        }
        __syncwarp();
        for (int r = 0; r < p.topk_group; ++r) {  // the kept groups' scores become NaN (a mark: scores are never NaN)
            float best = kNegInf;
            int at = INT_MAX;
            for (int g = lane; g < p.groups; g += 32) {
                const float s = group_score[g];
                if (!isnan(s)) keep_better(best, at, s, g);
            }
            warp_best(best, at);
            if (lane == 0) group_score[at] = NAN;
            __syncwarp();
        }
        for (int e = lane; e < E; e += 32) {
            if (!isnan(group_score[e / per])) taken[e] = 1;  // a group not kept: out
        }
        __syncwarp();
    }
    int mine = -1;  // lane j holds the j-th expert
    for (int j = 0; j < p.k; ++j) {
        float best = kNegInf;
        int at = INT_MAX;
        for (int e = lane; e < E; e += 32) {
            if (!taken[e]) keep_better(best, at, choice[e], e);
        }
        warp_best(best, at);
        if (lane == 0) taken[at] = 1;
        if (lane == j) mine = at;
        __syncwarp();
    }
    float w = lane < p.k ? sigmoid(logits[mine]) : 0.f;
    if (p.norm) {
        float sum = w;
        for (int off = 16; off > 0; off /= 2) sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, off));
        w = __fdiv_rn(w, __fadd_rn(sum, 1e-20f));
    }
    w = __fmul_rn(w, p.scale);
    if (p.dense != nullptr) {
        for (int e = lane; e < E; e += 32) p.dense[t * E + e] = 0.f;
        __syncwarp();
    }
    if (lane < p.k) {
        p.indices[t * p.k + lane] = mine;
        p.weights[t * p.k + lane] = w;
        if (p.dense != nullptr) p.dense[t * E + mine] = w;
    }
}

// Per-warp scratch of the selection: choice, group scores, taken flags (floats first: 4-byte aligned).
__device__ __forceinline__ void warp_scratch(
    float* base, int E, int groups, int warp, float*& choice, float*& group_score, unsigned char*& taken) {
    const int floats = (E + groups) + (E + 3) / 4;
    choice = base + warp * floats;
    group_score = choice + E;
    taken = reinterpret_cast<unsigned char*>(group_score + groups);
}

// One block per token (route_smem_bytes of shared scratch): with rows to project, kRowWarps warps stage the row, split
// the gate's rows and write the logits; then one warp selects (the others leave).
__global__ void route_kernel(RouteParams p) {
    dsrl::kernels::pdl_enter();
    extern __shared__ float4 route_smem[];  // 16-byte aligned: the row's float4 reads
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int E = p.experts;
    const int64_t t = blockIdx.x;
    float* const xs = reinterpret_cast<float*>(route_smem);
    float* const logits = xs + p.dim;
    float *choice, *group_score;
    unsigned char* taken;
    warp_scratch(logits + E, E, p.groups, 0, choice, group_score, taken);
    if (p.x != nullptr) {
        const auto* row =
            static_cast<const unsigned char*>(p.x) + t * p.x_row_stride * dsrl::kernels::elem_size(p.x_type);
        dsrl::kernels::stage_row(xs, row, p.x_type, p.dim, threadIdx.x, blockDim.x);
        __syncthreads();
        dsrl::kernels::warp_row_dots(xs, p.gate, p.gate_type, E, p.dim, warp, blockDim.x / 32, false, 1.f, logits,
                                     lane);
        __syncthreads();
        if (warp != 0) return;
        for (int e = lane; e < E; e += 32) p.logits[t * E + e] = logits[e];
    } else {
        for (int e = lane; e < E; e += 32) logits[e] = p.logits[t * E + e];
        __syncwarp();
    }
    select_experts(p, t, logits, choice, group_score, taken, lane);
}

// kRows tokens a block (2 or 8: route_tile_smem_bytes), 8 / kRows warps a token: each token's warps stage its row —
// normalized after the residual add when p.add_norm.w is set, the sum and the norm's output written as the norm
// kernel writes them — then the block's warps split the gate in chunks of four rows, each chunk for all the block's
// tokens (the gate read once a block, not once a token), and warp j selects token j's experts.
// kStaged (two rows a block only): the gate is copied into shared memory after the rows' scratch before the kernel
// waits for the one before (launch_tile).
template <int kRows, bool kStaged>
__global__ void __launch_bounds__(dsrl::kernels::kTileWarps * 32) route_tile_kernel(RouteParams p) {
    extern __shared__ float4 route_smem[];
    __shared__ float red[kRows * 8];
    const dsrl::kernels::TileRow<kRows> tile(p.tokens);
    const int E = p.experts;
    float* const xs = reinterpret_cast<float*>(route_smem);
    float* const logits = xs + kRows * p.dim;
    const void* gate = p.gate;
    if constexpr (kStaged) {
        void* const staged = reinterpret_cast<unsigned char*>(route_smem) +
                             dsrl::kernels::tile_weights_offset(route_tile_smem_bytes(E, p.groups, p.dim, kRows));
        dsrl::kernels::stage_weights_async(staged, p.gate, E * p.dim * dsrl::kernels::elem_size(p.gate_type),
                                           threadIdx.x, blockDim.x);
        gate = staged;
    }
    dsrl::kernels::stage_tile_row(tile, p.add_norm, p.x, p.x_type, p.x_row_stride, p.dim, xs, red);  // waits
    if constexpr (kStaged) dsrl::kernels::wait_staged_weights();
    __syncthreads();
    dsrl::kernels::block_tile_dots<kRows>(xs, gate, p.gate_type, E, p.dim, kRows, false, 1.f, logits, E, tile.warp,
                                          dsrl::kernels::kTileWarps, tile.lane);
    __syncthreads();
    const int64_t t = tile.first + tile.warp;  // warp j selects the block's token j
    if (tile.warp >= kRows || t >= p.tokens) return;
    float *choice, *group_score;
    unsigned char* taken;
    warp_scratch(logits + kRows * E, E, p.groups, tile.warp, choice, group_score, taken);
    const float* const own = logits + tile.warp * E;
    select_experts(p, t, own, choice, group_score, taken, tile.lane);  // its bias loads before the warp's stores
    for (int e = tile.lane; e < E; e += 32) p.logits[t * E + e] = own[e];
}

// One thread per output element, grid-stride. silu and the product round to the element type as ATen's ops do.
// Columns over blockIdx.x (a thread each), rows over blockIdx.y (grid-strided past 65,535 rows): no 64-bit division
// per element. A column of a group whose weight is 0 (an expert the token is not routed to: 28 of 32 in a dense decode
// step) is written as 0 without reading gate or up.
__global__ void silu_mul_kernel(SiluMulParams p) {
    dsrl::kernels::pdl_enter();
    const int c = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (c >= p.cols) return;
    const int groups = static_cast<int>(p.cols / p.group_width), group = c / static_cast<int>(p.group_width);
    for (int64_t r = blockIdx.y; r < p.rows; r += gridDim.y) {
        const int64_t i = r * p.cols + c;
        float w = 1.f;
        if (p.weight != nullptr) {
            w = p.weight[r * groups + group];
            if (w == 0.f) {
                store_elem(p.out, p.type, i, 0.f);
                continue;
            }
        }
        const float g = load_elem(p.gate, p.type, r * p.gate_row_stride + c);
        const float act = round_elem(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), p.type);  // silu, as ATen computes it
        float v = round_elem(__fmul_rn(act, load_elem(p.up, p.type, r * p.up_row_stride + c)), p.type);
        if (p.weight != nullptr) v = __fmul_rn(v, w);
        store_elem(p.out, p.type, i, v);
    }
}

}  // namespace

cudaError_t launch_route(const RouteParams& p, cudaStream_t stream) {
    if (p.tokens == 0) return cudaSuccess;
    if (p.tokens > 0x7fffffff || p.experts > kRouteMaxExperts) return cudaErrorInvalidValue;
    const int dim = p.x != nullptr || p.add_norm.w != nullptr ? p.dim : 0;
    if (dim > 0 && !dsrl::kernels::row_dot_takes(dim)) return cudaErrorInvalidValue;
    if (dim > 0 && route_tile_smem_bytes(p.experts, p.groups, dim, dsrl::kernels::kTileRowsMax) <= kRouteTileMaxSmem) {
        return dsrl::kernels::launch_tile<route_tile_kernel<2, false>, route_tile_kernel<2, true>,
                                          route_tile_kernel<8, false>>(
            p.tokens, kRouteTileFewTokens, route_tile_smem_bytes(p.experts, p.groups, dim, 1), p.gate,
            static_cast<int64_t>(p.experts) * dim * dsrl::kernels::elem_size(p.gate_type), stream, p);
    }
    if (p.add_norm.w != nullptr) return cudaErrorInvalidValue;  // the norm is staged by the tile kernel only
    RouteParams q = p;
    q.dim = dim;
    const unsigned threads = p.x != nullptr ? kRowWarps * 32 : 32;
    return dsrl::kernels::launch(route_kernel, static_cast<unsigned>(p.tokens), threads,
                                 route_smem_bytes(p.experts, p.groups, dim), stream, q);
}

cudaError_t launch_silu_mul(const SiluMulParams& p, cudaStream_t stream) {
    if (p.rows == 0 || p.cols == 0) return cudaSuccess;
    if (p.cols > 0x7fffffff || p.group_width < 1 || p.cols % p.group_width != 0) return cudaErrorInvalidValue;
    constexpr int kThreads = 256;
    const dim3 grid(static_cast<unsigned>((p.cols + kThreads - 1) / kThreads),
                    static_cast<unsigned>(std::min<int64_t>(p.rows, 65535)));
    return dsrl::kernels::launch(silu_mul_kernel, grid, kThreads, 0, stream, p);
}

}  // namespace dsrl::moe::kernels
