#include "dsa/rope.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/cos.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>

#include "dsa/norm_rope_cuda.h"

#include <cmath>
#include <numbers>

namespace dsrl::dsa {
namespace {

// The dimension index at which a frequency completes `rotations` turns over `max_pos` positions.
double correction_dim(double rotations, double dim, double base, double max_pos) {
    return dim * std::log(max_pos / (rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
}

}  // namespace

double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

RopeTable rope_table(const ModelArch& cfg) {
    const int64_t dim = cfg.qk_rope_head_dim;
    TORCH_CHECK(dim > 0 && dim % 2 == 0, "rope: qk_rope_head_dim must be positive and even, got ", dim);
    const double base = cfg.rope_theta;
    const at::Tensor exponents = at::arange(0, dim, 2, at::kFloat) / static_cast<float>(dim);
    const at::Tensor pos_freqs = at::pow(base, exponents);  // [d/2]
    RopeTable t;
    const RopeScalingConfig& y = cfg.rope_scaling;
    if (y.type != "yarn") {
        t.inv_freq = 1.0 / pos_freqs;
        return t;
    }
    const at::Tensor extrapolation = 1.0 / pos_freqs;
    const at::Tensor interpolation = 1.0 / (y.factor * pos_freqs);
    const double orig = static_cast<double>(y.original_max_position_embeddings);
    double low = std::floor(correction_dim(y.beta_fast, dim, base, orig));
    double high = std::ceil(correction_dim(y.beta_slow, dim, base, orig));
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;  // avoid a zero-width ramp
    const at::Tensor ramp = at::clamp((at::arange(dim / 2, at::kFloat) - low) / (high - low), 0, 1);
    const at::Tensor extrapolation_weight = 1 - ramp;
    t.inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight;
    // As transformers' YaRN: the mscale ratio when both are set (1 for DeepSeek-V3.2), else mscale(factor).
    t.attention_factor = y.mscale != 0 && y.mscale_all_dim != 0
                             ? yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim)
                             : yarn_mscale(y.factor, 1.0);
    return t;
}

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const RopeTable& table, const at::Tensor& positions) {
    const at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * table.inv_freq.to(positions.device());
    if (table.attention_factor == 1.0) return {at::cos(freqs), at::sin(freqs)};  // x · 1 is x: two kernels fewer
    return {at::cos(freqs) * table.attention_factor, at::sin(freqs) * table.attention_factor};
}

at::Tensor apply_rope_interleaved(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    TORCH_CHECK(x.size(-1) % 2 == 0, "rope: last dim must be even, got ", x.sizes());
    const at::Tensor pairs = x.unflatten(-1, {x.size(-1) / 2, 2});
    const at::Tensor even = pairs.select(-1, 0);
    const at::Tensor odd = pairs.select(-1, 1);
    const at::Tensor c = cos.to(x.scalar_type());
    const at::Tensor s = sin.to(x.scalar_type());
    return at::stack({even * c - odd * s, odd * c + even * s}, -1).flatten(-2);
}

at::Tensor apply_rope_half_split(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    TORCH_CHECK(x.size(-1) % 2 == 0, "rope: last dim must be even, got ", x.sizes());
    const int64_t half = x.size(-1) / 2;
    const at::Tensor lo = x.narrow(-1, 0, half);
    const at::Tensor hi = x.narrow(-1, half, half);
    const at::Tensor c = cos.to(x.scalar_type());
    const at::Tensor s = sin.to(x.scalar_type());
    return at::cat({lo * c - hi * s, hi * c + lo * s}, -1);
}

at::Tensor apply_rope(
    const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t rope, bool interleaved) {
    if (interleaved) return apply_rope_interleaved(x, cos, sin);
    const int64_t rest = x.size(-1) - rope;
    return at::cat({apply_rope_half_split(x.narrow(-1, 0, rope), cos, sin), x.narrow(-1, rope, rest)}, -1);
}

void check_query_rope(const char* op, const QueryRope& r, int64_t rows, int64_t dim, c10::Device device) {
    const int64_t half = r.rope / 2;
    const auto on_device = [&](const at::Tensor& t) {
        return t.defined() && t.scalar_type() == at::kFloat && t.device() == device && t.numel() == rows * half &&
               t.dim() >= 1 && t.size(-1) == half;
    };
    TORCH_CHECK(r.rope > 0 && r.rope % 2 == 0 && r.rope <= dim && (!r.interleaved || r.rope == dim) &&
                    on_device(r.cos) && on_device(r.sin),
                op, ": the query rotation needs even rope dims <= ", dim,
                " (all of them interleaved) and fp32 cos / sin of ", rows, " rows of rope / 2 on ", device,
                "; got rope ", r.rope, ", cos ", r.cos.defined() ? r.cos.sizes() : at::IntArrayRef{}, ", sin ",
                r.sin.defined() ? r.sin.sizes() : at::IntArrayRef{});
}

at::Tensor rotate_query(const at::Tensor& q, const QueryRope& r, Impl impl) {
    // [B, L, 1, rope / 2]: shared by the heads (cos may come as [B', L', rope / 2] for any B' · L' = B · L).
    const at::Tensor cos = r.cos.reshape({q.size(0), q.size(1), 1, r.rope / 2});
    const at::Tensor sin = r.sin.reshape({q.size(0), q.size(1), 1, r.rope / 2});
    if (built_with_cuda() && impl != Impl::kReference && cuda::norm_rope_kernels_fit(q, {&cos, &sin}) &&
        cos.is_contiguous() && sin.is_contiguous())
        return cuda::rope(q, cos, sin, r.rope, r.interleaved);
    return apply_rope(q, cos, sin, r.rope, r.interleaved);
}

double mla_softmax_scale(const ModelArch& cfg) {
    double scale = 1.0 / std::sqrt(static_cast<double>(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim));
    if (cfg.rope_scaling.type == "yarn" && cfg.rope_scaling.mscale_all_dim != 0) {
        const double m = yarn_mscale(cfg.rope_scaling.factor, cfg.rope_scaling.mscale_all_dim);
        scale *= m * m;
    }
    return scale;
}

#ifndef DSRL_WITH_CUDA
// A build without CUDA: the fused kernels never fit, and calling them is an error.
namespace cuda {
bool norm_rope_kernels_fit(const at::Tensor&, std::initializer_list<const at::Tensor*>) { return false; }
at::Tensor rms_norm(const at::Tensor&, const at::Tensor&, double) {
    TORCH_CHECK(false, "rms_norm: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
at::Tensor rope(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool) {
    TORCH_CHECK(false, "rope: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
bool add_rms_norm_takes(const at::Tensor&, const at::Tensor&) { return false; }
bool proj_fp32_fits(const at::Tensor&, const at::Tensor&) { return false; }
bool add_rms_norm_takes(const at::Tensor&, const PairRows&) { return false; }
bool add_norm_proj_fits(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const PairRows*) {
    return false;
}
NormedProjection add_norm_proj(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, double, const at::Tensor&, double, const PairRows*) {
    TORCH_CHECK(false, "add_norm_proj: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
bool layer_norm_takes(const at::Tensor&, const at::Tensor&, const at::Tensor&) { return false; }
at::Tensor layer_norm(const at::Tensor&, const at::Tensor&, const at::Tensor&, double) {
    TORCH_CHECK(false, "layer_norm: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
at::Tensor proj_fp32(const at::Tensor&, const at::Tensor&, double) {
    TORCH_CHECK(false, "proj_fp32: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor&, const at::Tensor&, const at::Tensor&, double) {
    TORCH_CHECK(false, "add_rms_norm: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor&, const PairRows&, const at::Tensor&, double) {
    TORCH_CHECK(false, "add_rms_norm: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
bool norm_rope_fits(const NormJob&) { return false; }
std::vector<at::Tensor> norms(const std::vector<NormJob>&) {
    TORCH_CHECK(false, "norms: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
std::vector<at::Tensor> ropes(const std::vector<RopeJob>&) {
    TORCH_CHECK(false, "ropes: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
}  // namespace cuda
#endif

}  // namespace dsrl::dsa
