// CUDA kernels of moe/moe_cuda.h: the router's expert selection and the SwiGLU product, one kernel each, for
// forwards without autograd (the rollout's decode step). Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "core/kernels/elem.cuh"
#include "core/kernels/row_dot.cuh"
#include "core/kernels/row_norm.cuh"

namespace dsrl::moe::kernels {

using dsrl::kernels::Elem;  // fp32 / bf16 / fp16 (core/kernels/elem.cuh)

/// DeepSeek-V3's router selection from fp32 logits, one warp per token (moe/router.cpp route() is the oracle; from
/// rows: the tile kernel, two or eight tokens a block, or a block per token where its shared memory does not fit):
///   logits = x · gateᵀ in fp32 when x is given (then written to `logits`; core/kernels/row_dot.cuh), else read;
///   s = sigmoid(logits); choice = s + bias;
///   with n_group > 1 and topk_group < n_group, only the topk_group groups with the largest sums of their two best
///   choices stay; the k largest choices of those are the token's experts, in descending order;
///   w_j = s[e_j], normalized by their sum (+ 1e-20) when `norm`, times `scale`.
/// Ties go to the lower expert id; a NaN choice ranks below every number.
struct RouteParams {
    float* logits;      // [tokens, experts] contiguous: in, or out when x is given
    const float* bias;  // [experts]
    int64_t* indices;   // [tokens, k] out
    float* weights;     // [tokens, k] out
    float* dense;       // [tokens, experts] out, or null: w_j at e_j, 0 elsewhere
    int64_t tokens;
    int experts;
    int groups;
    int topk_group;
    int k;
    bool norm;
    float scale;
    // Optional: the logits from the tokens' rows (row_dot_takes(dim)).
    const void* x = nullptr;  // rows of `dim` elements at x_row_stride
    Elem x_type = Elem::kF32;
    int64_t x_row_stride = 0;
    const void* gate = nullptr;  // [experts, dim] contiguous, 16-byte aligned
    Elem gate_type = Elem::kF32;
    int dim = 0;
    // Optional (add_norm.w set; the tile kernel only): the rows are RMSNorm(add_norm.x + add_norm.residual) ·
    // add_norm.w, computed by the same kernel as the norm kernel computes them (core/kernels/row_norm.cuh), the sum and
    // the normalized rows written to add_norm.sum_out / add_norm.out; x, x_type and x_row_stride are then unused.
    // `gate` and `dim` as above.
    dsrl::kernels::AddNormRows add_norm{};
};
/// Largest `experts` the kernel takes (a warp's shared scratch per token).
constexpr int kRouteMaxExperts = 1024;
/// The router kernel's shared memory (a block per token): the row in fp32 when the kernel projects it (dim > 0), the
/// logits, the choices, the group scores, a taken flag per expert — under 17 KiB at the largest sizes.
constexpr size_t route_smem_bytes(int experts, int groups, int dim) {
    return sizeof(float) * (2 * static_cast<size_t>(experts) + groups + dim) + experts;
}
/// The tile kernel's shared memory at `rows` tokens a block (2 or 8): their rows in fp32, their logits and each
/// selecting warp's scratch (choices, group scores, taken flags). launch_route runs the tile kernel where rows are
/// given and this is at most kRouteTileMaxSmem at 8 rows (the default limit of a block), else a block per token; two
/// tokens a block up to kRouteTileFewTokens tokens (a decode batch: more multiprocessors), eight above (a prefill: the
/// gate read once per eight).
constexpr size_t route_tile_smem_bytes(int experts, int groups, int dim, int rows) {
    return sizeof(float) * static_cast<size_t>(rows) *
           (static_cast<size_t>(dim) + 2 * static_cast<size_t>(experts) + groups + (experts + 3) / 4);
}
constexpr size_t kRouteTileMaxSmem = 48 * 1024;
constexpr int64_t kRouteTileFewTokens = 512;
cudaError_t launch_route(const RouteParams& p, cudaStream_t stream);

/// out[t, c] = silu(gate[t, c]) · up[t, c], each op rounded to the element type as ATen's silu then mul round them;
/// with `weight`, then · weight[t, c / group_width] in fp32 and rounded again (a routed expert's gate weight); where
/// that weight is 0, out is 0 and gate / up are not read (ATen's product would be NaN for an infinite gate).
/// gate and up are rows of `cols` elements at row strides of their own; out is [rows, cols] contiguous.
struct SiluMulParams {
    const void* gate;
    int64_t gate_row_stride;
    const void* up;
    int64_t up_row_stride;
    Elem type;
    const float* weight;  // [rows, cols / group_width] contiguous, or null
    int64_t group_width;
    void* out;
    int64_t rows;
    int64_t cols;
};
cudaError_t launch_silu_mul(const SiluMulParams& p, cudaStream_t stream);

}  // namespace dsrl::moe::kernels
