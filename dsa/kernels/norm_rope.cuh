// CUDA kernels of dsa/norm_rope_cuda.h: RMSNorm and the two RoPE rotations as one kernel each, for forwards
// without autograd (the rollout's decode). Each reproduces the rounding of the ATen formula it replaces op by op
// (dsa/model.cpp rms_norm, dsa/rope.cpp), so a fused forward equals the reference up to the order of RMSNorm's sum of
// squares. Sees no torch types.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "core/kernels/elem.cuh"
#include "core/kernels/pair_sum.cuh"
#include "core/kernels/row_dot.cuh"
#include "core/kernels/row_norm.cuh"

namespace dsrl::dsa::kernels {

using dsrl::kernels::Elem;  // fp32 / bf16 / fp16 (elem.cuh)

/// out[r, :] = w · cast_x(x_r · rsqrt(mean(x_r²) + eps)), x_r in fp32; the product in out's type.
/// Widest row whose residual the norm kernel takes as pair rows (their sum's row in shared memory: 48 KiB).
constexpr int64_t kPairNormMaxDim = 12288;

struct RmsNormParams {
    const void* x;  // rows of `dim` elements, row r at x + r * x_row_stride
    Elem x_type;
    int64_t x_row_stride;
    const void* w;  // [dim]
    Elem w_type;
    void* out;  // [rows, dim] contiguous
    Elem out_type;
    int64_t rows;
    int64_t dim;
    float eps;
    // Optional: the norm of x + residual (the residual stream after a sublayer): residual rows like x's (own row
    // stride and type), the sum in fp32 rounded to x's type and written to sum_out ([rows, dim] contiguous, x's type).
    const void* residual = nullptr;
    Elem residual_type = Elem::kF32;  // x's type, or one that promotes to it (bf16 into an fp32 stream)
    int64_t residual_row_stride = 0;
    void* sum_out = nullptr;
    // Or (out set) the residual as the routed experts' pair rows, summed as read (core/kernels/pair_sum.cuh; hidden =
    // dim, a multiple of 8 up to kPairNormMaxDim: the sum's row is staged in shared memory).
    dsrl::kernels::PairSum residual_pairs{};
    // LayerNorm instead (the indexer's key norm; no residual): out = w · (x − mean) ·
    // rsqrt(var + eps) + bias in fp32, rounded once to out's type; var the biased variance (two passes over the row).
    bool centered = false;
    const void* bias = nullptr;  // [dim], w's type
    // Optional (a paged decode's new cache entries): row r's output goes to out + out_slots[r] * out_row_stride
    // instead, and a row whose slot is outside [0, out_rows) writes nothing — out is then the cache pool, of slot_type
    // (the value rounded to out_type first, then cast). No residual.
    const int64_t* out_slots = nullptr;
    int64_t out_rows = 0;
    int64_t out_row_stride = 0;
    Elem slot_type = Elem::kF32;
    // Optional (rope > 0): the output's first `rope` dims rotated by cos / sin [rows, rope / 2] fp32 (pairs interleaved
    // or half split) as the rope kernel would rotate the output it read — in out_type, dsa/kernels/rope_pair.cuh —
    // before the store: a key's RoPE in its norm's launch. No residual. With `identity`, no norm either: the row is x
    // as it is (out_type x's type, w unused), rotated.
    const float* rope_cos = nullptr;
    const float* rope_sin = nullptr;
    int rope = 0;
    bool rope_interleaved = true;
    bool identity = false;
};
/// Most shared memory of a norm block's stash (norm_stashes): a row of up to 4K fp32 elements with its weight and
/// bias, or 6K with its weight.
constexpr int64_t kNormStashBytes = 48 * 1024;
/// The bytes of a norm job's stash: its row and weight in fp32, and the LayerNorm's bias.
__host__ __device__ inline int64_t norm_stash_bytes(const RmsNormParams& p) {
    return static_cast<int64_t>(sizeof(float)) * p.dim * (p.centered ? 3 : 2);
}
/// Whether the norm kernel keeps a job's row, weight and bias in shared memory (the weights loaded before it waits,
/// the row kept from the first pass for the last): a norm (not an identity job) whose stash fits kNormStashBytes.
__host__ __device__ inline bool norm_stashes(const RmsNormParams& p) {
    return !p.identity && p.dim > 0 && norm_stash_bytes(p) <= kNormStashBytes;
}
/// Most rotated dims of a norm job (RmsNormParams::rope; staged in shared memory).
constexpr int kNormMaxRope = 256;
/// Up to kMaxNormJobs row norms in one launch (a layer's query and latent RMSNorms, the indexer key's LayerNorm and
/// rotation, the rope key's rotation): a block per row, the jobs' rows in turn.
constexpr int kMaxNormJobs = 4;
cudaError_t launch_norms(const RmsNormParams* jobs, int count, cudaStream_t stream);

/// RoPE over x viewed as [rows, heads, dim] (last dim contiguous) with cos/sin [rows, rope / 2] fp32 (one per row,
/// shared by its heads). Interleaved: pair (2i, 2i+1) of the first `rope` dims rotates by angle i. Half split: dim i
/// pairs with dim i + rope/2. Dims [rope, dim) are copied. out is [rows, heads, dim] contiguous, of out_type.
struct RopeParams {
    const void* x;
    Elem type;
    int64_t x_row_stride;   // elements between rows
    int64_t x_head_stride;  // elements between heads of a row
    const float* cos;       // [rows, rope / 2]
    const float* sin;
    void* out;
    int64_t rows;
    int64_t heads;
    int64_t dim;
    int64_t rope;  // even, <= dim
    bool interleaved;
    Elem out_type;  // x's type, or the pool's with out_slots (the rotated values cast once more)
    // Optional (a paged decode's new cache entries, heads == 1): row r goes to out + out_slots[r] * out_row_stride
    // instead, and a row whose slot is outside [0, out_rows) writes nothing — out is then the cache pool.
    const int64_t* out_slots = nullptr;
    int64_t out_rows = 0;
    int64_t out_row_stride = 0;
};
/// Up to kMaxRopeJobs rotations in one launch (a layer's query and key rotations of the attention and the indexer):
/// the jobs' items in turn.
constexpr int kMaxRopeJobs = 4;
cudaError_t launch_ropes(const RopeParams* jobs, int count, cudaStream_t stream);

/// out[r, j] = Σ_h x[r, h] · w[j, h] in fp32 (times `scale`, rounded once, when `scaled`): a few-output projection
/// that stays fp32 (the indexer's head weights), one warp per row (core/kernels/row_dot.cuh). x rows of `dim`
/// elements at x_row_stride; w [n, dim] contiguous, 16-byte aligned; row_dot_takes(dim).
struct RowProjParams {
    const void* x;
    Elem x_type;
    int64_t x_row_stride;
    const void* w;
    Elem w_type;
    float* out;  // [rows, n] contiguous
    int64_t rows;
    int n;
    int dim;
    bool scaled;
    float scale;
    // Optional (add_norm.w set; rows of at most kRowProjNormMaxDim): the rows are RMSNorm(add_norm.x +
    // add_norm.residual) · add_norm.w as the norm kernel computes them (core/kernels/row_norm.cuh), the sum and the
    // normalized rows written to add_norm.sum_out / add_norm.out by the same launch; x, x_type and x_row_stride are
    // then unused.
    dsrl::kernels::AddNormRows add_norm{};
};
/// The longest rows of the tile kernel (up to kTileRowsMax rows a block, their fp32 copies within a block's default 48
/// KiB of shared memory): the one that also takes a norm. Longer rows run a warp per row. Two rows a block up to
/// kRowProjFewRows rows (a decode batch: more multiprocessors), eight above.
constexpr int kRowProjNormMaxDim = 48 * 1024 / (4 * dsrl::kernels::kTileRowsMax);
constexpr int64_t kRowProjFewRows = 512;
cudaError_t launch_row_proj(const RowProjParams& p, cudaStream_t stream);

}  // namespace dsrl::dsa::kernels
