// CUDA path of RMSNorm and RoPE for forwards without autograd (dsa/model.cpp rms_norm and dsa/rope.h are the
// oracles): one kernel each instead of 8-11 ATen ops, which is most of what a small model's decode step launches.
// The results equal the reference's op-by-op rounding; RMSNorm's sum of squares runs in another order.
//   if (norm_rope_kernels_fit(x, ...)) y = dsa::cuda::rms_norm(x, weight, eps);
#pragma once

#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dsrl {
struct PairRows;  // core/add_norm_rows.h
}  // namespace dsrl

namespace dsrl::dsa::cuda {

/// Whether the kernels take x: a CUDA fp32/bf16/fp16 tensor whose last dim is contiguous and whose leading dims
/// flatten to rows of one stride, in a forward that records no autograd graph for x or `others`.
bool norm_rope_kernels_fit(const at::Tensor& x, std::initializer_list<const at::Tensor*> others);

/// weight · (x / sqrt(mean(x²) + eps)) with x in fp32, cast back to x's type before the weight: [..., D] in the
/// promoted type of x and weight (dsa::rms_norm's contract).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

/// The first `rope` dims of x [..., D] rotated (interleaved pairs or half split), the rest copied: a new contiguous
/// tensor like x. cos / sin are contiguous fp32 with x's dims and the last rope / 2 wide: [.., L, rope/2] for
/// x [.., L, D], or [.., L, 1, rope/2] broadcast over the heads of x [.., L, H, D] (as apply_rope_* broadcasts them).
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t rope, bool interleaved);

/// Whether add_rms_norm takes x and residual (the weight's checks are rms_norm's).
bool add_rms_norm_takes(const at::Tensor& x, const at::Tensor& residual);

/// {x + residual, rms_norm(x + residual, weight, eps)} as one kernel (the residual stream after a sublayer and the next
/// sublayer's normalized input): the sum in fp32 rounded to x's type as ATen's add rounds it. residual is shaped like
/// x, of x's type or one that promotes to it (a bf16 sublayer output into an fp32 stream under autocast), its last dim
/// contiguous and its leading dims rows of one stride.
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x,
                                               const at::Tensor& residual,
                                               const at::Tensor& weight,
                                               double eps);

/// Whether add_rms_norm takes x with the residual given as a MoE layer's pair rows: x's rows as above and
/// core/add_norm_rows.h pair_rows_fit(x, pairs).
bool add_rms_norm_takes(const at::Tensor& x, const PairRows& pairs);

/// add_rms_norm with the residual the sum of a MoE layer's pair rows (moe/moe_cuda.h routed_experts_pairs), read in
/// place: bit for bit add_rms_norm(x, moe::cuda::combine_pairs(pairs), weight, eps), without the combine's launch.
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x,
                                               const PairRows& pairs,
                                               const at::Tensor& weight,
                                               double eps);

/// One job of norms(): rms_norm(x, weight, eps), or with bias defined layer_norm(x, weight, bias, eps) (which
/// layer_norm_takes), or with weight undefined no norm (x itself).
struct NormJob {
    at::Tensor x, weight, bias;
    double eps = 0.0;
    /// Optional (a paged decode's new cache entries): with pool [P, D] (rows contiguous, 16-byte aligned not needed)
    /// and slots [rows] int64, row r of the result is written to pool[slots[r]] in the pool's type (a slot outside
    /// [0, P) writes nothing) and the job returns an undefined tensor.
    at::Tensor pool, slots;
    /// Optional (rope > 0): the result then rotated as rope(result, cos, sin, rope, interleaved) rotates it (the same
    /// bits; cos / sin contiguous fp32 [.., rope / 2] with x's dims), before the pool write — a key's RoPE in its
    /// norm's launch.
    at::Tensor cos, sin;
    int64_t rope = 0;
    bool interleaved = true;
};
/// Whether norms() takes the rotation of job j (rope > 0): even rope dims, at most x's last dim and 256, cos / sin as
/// described.
bool norm_rope_fits(const NormJob& j);
/// Up to four jobs as one kernel (a layer's query and latent RMSNorms, the indexer key's LayerNorm and the rope keys'
/// rotations), each result equal to its own call's (then rope()'s).
std::vector<at::Tensor> norms(const std::vector<NormJob>& jobs);

/// One job of ropes(): rope(x, cos, sin, rope, interleaved); pool and slots as NormJob's (x without a heads dim).
struct RopeJob {
    at::Tensor x, cos, sin;
    int64_t rope = 0;
    bool interleaved = true;
    at::Tensor pool, slots;
};
/// Up to four jobs as one kernel (a layer's query and key rotations of the attention and of the indexer), each result
/// equal to its own call's.
std::vector<at::Tensor> ropes(const std::vector<RopeJob>& jobs);

/// Whether proj_fp32 takes x [..., D] and w [N, D]: CUDA fp32/bf16/fp16 tensors on one device, x's leading dims rows
/// of one stride with a contiguous last dim, w contiguous and 16-byte aligned, D a multiple of 4 up to 2048, no
/// autograd.
bool proj_fp32_fits(const at::Tensor& x, const at::Tensor& w);

/// at::linear(x.float(), w.float()) * scale as one kernel (one warp per row; the dot products summed in another order,
/// the scale rounded once as ATen's multiply, skipped at 1): [..., N] fp32. The indexer's head weights, which stay fp32
/// under autocast: one kernel instead of x's cast, an fp32 GEMM, its split-K reduction and the scale.
at::Tensor proj_fp32(const at::Tensor& x, const at::Tensor& w, double scale);

/// Whether add_norm_proj takes x [..., D], delta (undefined, or as add_rms_norm_takes it), the norm weight [D] and w
/// [N, D]: the norm's checks, w as proj_fp32_fits takes it, and D at most the tile kernel's 1536
/// (dsa/kernels/norm_rope.cuh kRowProjNormMaxDim).
bool add_norm_proj_fits(const at::Tensor& x,
                        const at::Tensor& delta,
                        const at::Tensor& norm_weight,
                        const at::Tensor& w,
                        const PairRows* pairs = nullptr);

/// The residual add (with delta defined), the RMSNorm after it and an fp32 projection of its output as one kernel —
/// what add_rms_norm(x, delta, norm_weight, eps) (or rms_norm(x, norm_weight, eps)) then proj_fp32(normed, w, scale)
/// give: sum and normed bit for bit (the same arithmetic in the same order), proj as proj_fp32's up to the order of
/// its sums. A decode step's layer input and its indexer's head weights in one launch instead of two. With `pairs`
/// (delta undefined; add_rms_norm_takes(x, *pairs)) the residual is their sum, read in place.
struct NormedProjection {
    at::Tensor sum;     ///< x + delta, x's type (undefined without delta)
    at::Tensor normed;  ///< the norm's output, x's shape, result_type(norm_weight, x)
    at::Tensor proj;    ///< [..., N] fp32
};
NormedProjection add_norm_proj(const at::Tensor& x,
                               const at::Tensor& delta,
                               const at::Tensor& norm_weight,
                               double eps,
                               const at::Tensor& w,
                               double scale,
                               const PairRows* pairs = nullptr);

/// Whether layer_norm takes x [..., D] (its leading dims rows of one stride, its last dim contiguous: a column range of
/// a wider output reads in place) with weight and bias [D] of x's type (as ATen's CUDA layer_norm takes them) on x's
/// device.
bool layer_norm_takes(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

/// at::layer_norm(x, {D}, weight, bias, eps) as one kernel (the indexer's key norm), a new contiguous tensor of x's
/// type: the mean and biased variance in fp32 (two passes where ATen runs Welford's: the same up to rounding), then
/// weight · (rstd · (x − mean)) + bias rounded once. Without autocast (which would run ATen's in fp32).
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

}  // namespace dsrl::dsa::cuda
