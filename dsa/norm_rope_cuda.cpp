// Host wrappers of the RMSNorm and RoPE kernels (dsa/norm_rope_cuda.h): argument checks, device guard, current
// stream, Tensor -> params.
#include "dsa/norm_rope_cuda.h"

#include <ATen/core/grad_mode.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/result_type.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/add_norm_rows.h"
#include "core/kernel_elem.h"
#include "core/kernels/row_dot.cuh"
#include "dsa/kernels/norm_rope.cuh"

namespace dsrl::dsa::cuda {
bool norm_rope_kernels_fit(const at::Tensor& x, std::initializer_list<const at::Tensor*> others) {
    if (!x.defined() || !x.is_cuda() || !elem_kernel_takes(x.scalar_type()) || x.dim() < 1 || x.stride(-1) != 1)
        return false;
    if (at::GradMode::is_enabled()) {
        if (x.requires_grad()) return false;
        for (const at::Tensor* t : others) {
            if (t->requires_grad()) return false;
        }
    }
    for (const at::Tensor* t : others) {
        if (!t->defined() || t->device() != x.device()) return false;
    }
    return true;
}

namespace {

// rms_norm's checks and parameters; allocates *out (none for a job launch_jobs points at a pool: out null). With weight
// undefined, a job without a norm (RmsNormParams::identity): x itself, in x's type.
kernels::RmsNormParams norm_params(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor* out) {
    constexpr const char* op = "rms_norm (cuda)";
    TORCH_CHECK(x.is_cuda() && elem_kernel_takes(x.scalar_type()) && x.dim() >= 1 && x.stride(-1) == 1, op,
                ": x must be a CUDA fp32/bf16/fp16 tensor with a contiguous last dim, got ", x.scalar_type(), " ",
                x.sizes(), " strides ", x.strides());
    const int64_t dim = x.size(-1);
    const bool identity = !weight.defined();
    TORCH_CHECK(identity || (weight.dim() == 1 && weight.size(0) == dim && weight.is_contiguous() &&
                             elem_kernel_takes(weight.scalar_type()) && weight.device() == x.device()),
                op, ": weight must be a contiguous [", dim, "] fp32/bf16/fp16 tensor on ", x.device(), ", got ",
                weight.scalar_type(), " ", weight.sizes());
    const int64_t stride = flat_row_stride(x, 1);
    TORCH_CHECK(stride >= 0, op, ": the leading dims of x ", x.sizes(), " (strides ", x.strides(),
                ") do not flatten to rows of one stride");
    const at::ScalarType out_type = identity ? x.scalar_type() : at::result_type(weight, x);
    if (out != nullptr) *out = at::empty(x.sizes(), x.options().dtype(out_type));
    return {.x = x.data_ptr(),
            .x_type = kernel_elem(x.scalar_type()),
            .x_row_stride = stride,
            .w = identity ? nullptr : weight.data_ptr(),
            .w_type = kernel_elem(identity ? x.scalar_type() : weight.scalar_type()),
            .out = out != nullptr ? out->data_ptr() : nullptr,
            .out_type = kernel_elem(out_type),
            .rows = x.numel() / std::max<int64_t>(dim, 1),
            .dim = dim,
            .eps = static_cast<float>(eps),
            .identity = identity};
}

// rope's checks and parameters; allocates *out unless out is null (as norm_params).
kernels::RopeParams rope_params(const at::Tensor& x,
                                const at::Tensor& cos,
                                const at::Tensor& sin,
                                int64_t rope,
                                bool interleaved,
                                at::Tensor* out) {
    constexpr const char* op = "rope (cuda)";
    TORCH_CHECK(x.is_cuda() && elem_kernel_takes(x.scalar_type()) && x.dim() >= 2 && x.stride(-1) == 1, op,
                ": x must be a CUDA fp32/bf16/fp16 tensor [..., D] with a contiguous last dim, got ", x.scalar_type(),
                " ", x.sizes());
    const int64_t dim = x.size(-1);
    TORCH_CHECK(rope > 0 && rope % 2 == 0 && rope <= dim, op, ": rope dims must be even and in (0, ", dim, "], got ",
                rope);
    // cos has x's dims with the last rope / 2 wide: [.., L, rope/2] for x [.., L, D], or [.., L, 1, rope/2] broadcast
    // over the heads of x [.., L, H, D].
    TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.sizes() == sin.sizes() &&
                    cos.is_contiguous() && sin.is_contiguous() && cos.dim() == x.dim() && cos.size(-1) == rope / 2 &&
                    cos.device() == x.device() && sin.device() == x.device(),
                op, ": cos / sin must be contiguous fp32 [..., ", rope / 2, "] with x's dims on ", x.device(), ", got ",
                cos.scalar_type(), " ", cos.sizes(), " for x ", x.sizes());
    const bool per_head = cos.size(-2) == 1;
    const int64_t heads = per_head ? x.size(-2) : 1;
    for (int64_t d = 0; d < x.dim() - 1; ++d) {
        TORCH_CHECK(cos.size(d) == x.size(d) || (per_head && d == x.dim() - 2), op, ": cos ", cos.sizes(),
                    " does not match x ", x.sizes());
    }
    const int64_t rows = x.numel() / std::max<int64_t>(dim * heads, 1);
    const int64_t stride = flat_row_stride(x, per_head ? 2 : 1);
    TORCH_CHECK(stride >= 0, op, ": the leading dims of x ", x.sizes(), " (strides ", x.strides(),
                ") do not flatten to rows of one stride");
    if (out != nullptr) *out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
    return {.x = x.data_ptr(),
            .type = kernel_elem(x.scalar_type()),
            .x_row_stride = stride,
            .x_head_stride = per_head ? x.stride(-2) : 0,
            .cos = cos.data_ptr<float>(),
            .sin = sin.data_ptr<float>(),
            .out = out != nullptr ? out->data_ptr() : nullptr,
            .rows = rows,
            .heads = heads,
            .dim = dim,
            .rope = rope,
            .interleaved = interleaved,
            .out_type = kernel_elem(x.scalar_type())};
}

// layer_norm's checks and parameters; allocates *out unless out is null (as norm_params).
kernels::RmsNormParams layer_norm_params(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps, at::Tensor* out) {
    TORCH_CHECK(norm_rope_kernels_fit(x, {&weight, &bias}) && layer_norm_takes(x, weight, bias),
                "layer_norm (cuda): x [..., D] must be a CUDA fp32/bf16/fp16 tensor with a contiguous last dim and "
                "rows of one stride, weight and bias contiguous [D] of one type on its device, without autograd; got "
                "x ",
                x.scalar_type(), " ", x.sizes(), ", weight ", weight.scalar_type(), " ", weight.sizes(), ", bias ",
                bias.scalar_type(), " ", bias.sizes());
    if (out != nullptr) *out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
    const int64_t dim = x.size(-1);
    kernels::RmsNormParams p{.x = x.data_ptr(),
                             .x_type = kernel_elem(x.scalar_type()),
                             .x_row_stride = flat_row_stride(x, 1),
                             .w = weight.data_ptr(),
                             .w_type = kernel_elem(weight.scalar_type()),
                             .out = out != nullptr ? out->data_ptr() : nullptr,
                             .out_type = kernel_elem(x.scalar_type()),
                             .rows = x.numel() / std::max<int64_t>(dim, 1),
                             .dim = dim,
                             .eps = static_cast<float>(eps)};
    p.centered = true;
    p.bias = bias.data_ptr();
    return p;
}

cudaStream_t stream_of(const at::Tensor& x) { return c10::cuda::getCurrentCUDAStream(x.device().index()).stream(); }

// Points a job's output at the rows of `pool` that `slots` names (NormJob / RopeJob), in place of *out: checks, and
// returns {pool, its type, its row stride, its rows}.
struct PoolOut {
    void* data;
    ::dsrl::kernels::Elem type;
    const int64_t* slots;
    int64_t rows, row_stride;
};
PoolOut pool_out(
    const char* op, const at::Tensor& pool, const at::Tensor& slots, int64_t rows, int64_t dim, c10::Device device) {
    TORCH_CHECK(pool.dim() == 2 && pool.size(1) == dim && pool.stride(1) == 1 &&
                    elem_kernel_takes(pool.scalar_type()) && pool.device() == device,
                op, ": the pool must be [P, ", dim, "] fp32/bf16/fp16 with contiguous rows on ", device, ", got ",
                pool.scalar_type(), " ", pool.sizes());
    TORCH_CHECK(slots.defined() && slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.numel() == rows &&
                    slots.device() == device,
                op, ": slots must be ", rows, " contiguous int64 on ", device, ", got ",
                slots.defined() ? slots.sizes() : at::IntArrayRef{});
    return {pool.data_ptr(), kernel_elem(pool.scalar_type()), slots.data_ptr<int64_t>(), pool.size(0), pool.stride(0)};
}

// The type a pooled job's output is stored in: a norm rounds to its out_type and stores in slot_type; a rotation
// rounds to x's type and stores in out_type.
void set_pool_type(kernels::RmsNormParams& p, ::dsrl::kernels::Elem t) { p.slot_type = t; }
void set_pool_type(kernels::RopeParams& p, ::dsrl::kernels::Elem t) { p.out_type = t; }

// norms() and ropes(): the jobs' parameters (params_of allocates each result but a pooled job's, whose output goes to
// its pool rows and whose result stays undefined), one launch.
template <typename Job, typename Params, typename ParamsOf>
std::vector<at::Tensor> launch_jobs(const char* op,
                                    const std::vector<Job>& jobs,
                                    int max_jobs,
                                    ParamsOf params_of,
                                    cudaError_t (*launch)(const Params*, int, cudaStream_t)) {
    TORCH_CHECK(!jobs.empty() && jobs.size() <= static_cast<size_t>(max_jobs), op, ": 1 to ", max_jobs, " jobs, got ",
                jobs.size());
    const c10::Device device = jobs[0].x.device();
    const c10::cuda::CUDAGuard on_device(device);
    std::vector<at::Tensor> out(jobs.size());
    std::vector<Params> params;
    for (size_t i = 0; i < jobs.size(); ++i) {
        const Job& j = jobs[i];
        TORCH_CHECK(j.x.defined() && j.x.device() == device, op, ": every job's x on ", device, ", job ", i,
                    "'s is on ", j.x.defined() ? j.x.device() : c10::Device(c10::kCPU));
        Params p = params_of(j, j.pool.defined() ? nullptr : &out[i]);
        if (j.pool.defined()) {
            const PoolOut o = pool_out(op, j.pool, j.slots, p.rows, p.dim, device);
            p.out = o.data;
            set_pool_type(p, o.type);
            p.out_slots = o.slots;
            p.out_rows = o.rows;
            p.out_row_stride = o.row_stride;
        }
        params.push_back(p);
    }
    C10_CUDA_CHECK(launch(params.data(), static_cast<int>(params.size()), stream_of(jobs[0].x)));
    return out;
}

// proj_fp32's parameters (checked by the caller); allocates *out [..., N] fp32.
kernels::RowProjParams row_proj_params(const at::Tensor& x, const at::Tensor& w, double scale, at::Tensor* out) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = w.size(0);
    *out = at::empty(shape, x.options().dtype(at::kFloat));
    return {.x = x.data_ptr(),
            .x_type = kernel_elem(x.scalar_type()),
            .x_row_stride = flat_row_stride(x, 1),
            .w = w.data_ptr(),
            .w_type = kernel_elem(w.scalar_type()),
            .out = out->data_ptr<float>(),
            .rows = x.numel() / x.size(-1),
            .n = static_cast<int>(w.size(0)),
            .dim = static_cast<int>(x.size(-1)),
            .scaled = scale != 1.0,
            .scale = static_cast<float>(scale)};
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
    return norms({{x, weight, {}, eps}})[0];
}

namespace {

// The add + norm kernel on x with the residual that `set_residual` puts into its parameters: {the sum, the norm}.
template <typename SetResidual>
std::pair<at::Tensor, at::Tensor> launch_add_rms_norm(const at::Tensor& x,
                                                      const at::Tensor& weight,
                                                      double eps,
                                                      const SetResidual& set_residual) {
    const c10::cuda::CUDAGuard on_device(x.device());
    std::pair<at::Tensor, at::Tensor> out;
    kernels::RmsNormParams p = norm_params(x, weight, eps, &out.second);
    out.first = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
    set_residual(p);
    p.sum_out = out.first.data_ptr();
    C10_CUDA_CHECK(kernels::launch_norms(&p, 1, stream_of(x)));
    return out;
}

}  // namespace

bool add_rms_norm_takes(const at::Tensor& x, const at::Tensor& residual) {
    return x.defined() && residual.defined() && residual.sizes() == x.sizes() &&
           elem_kernel_takes(residual.scalar_type()) && at::result_type(x, residual) == x.scalar_type() &&
           residual.device() == x.device() && residual.dim() >= 1 && residual.stride(-1) == 1 &&
           flat_row_stride(residual, 1) >= 0 && x.dim() >= 1 && x.stride(-1) == 1 && flat_row_stride(x, 1) >= 0;
}

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x,
                                               const at::Tensor& residual,
                                               const at::Tensor& weight,
                                               double eps) {
    RECORD_FUNCTION("dsrl::add_rms_norm", std::vector<c10::IValue>());  // names the kernel in profiles
    TORCH_CHECK(add_rms_norm_takes(x, residual), "add_rms_norm (cuda): residual must be shaped like x ",
                x.scalar_type(), " ", x.sizes(),
                ", of x's type or one that promotes to it, both with a contiguous last "
                "dim and leading dims that flatten to rows of one stride; got ",
                residual.scalar_type(), " ", residual.sizes(), " strides ", residual.strides());
    return launch_add_rms_norm(x, weight, eps, [&](kernels::RmsNormParams& p) {
        p.residual = residual.data_ptr();
        p.residual_type = kernel_elem(residual.scalar_type());
        p.residual_row_stride = flat_row_stride(residual, 1);
    });
}

bool add_rms_norm_takes(const at::Tensor& x, const PairRows& pairs) {
    return x.defined() && x.dim() >= 1 && x.stride(-1) == 1 && flat_row_stride(x, 1) >= 0 && pair_rows_fit(x, pairs) &&
           x.size(-1) <= kernels::kPairNormMaxDim && norm_rope_kernels_fit(x, {&pairs.out});
}

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x,
                                               const PairRows& pairs,
                                               const at::Tensor& weight,
                                               double eps) {
    RECORD_FUNCTION("dsrl::add_rms_norm", std::vector<c10::IValue>());  // names the kernel in profiles
    TORCH_CHECK(add_rms_norm_takes(x, pairs), "add_rms_norm (cuda): the pair rows must be [T · slots, ", x.size(-1),
                "] of x's type ", x.scalar_type(), " with a token per row of x ", x.sizes(),
                " (int64 indices, fp32 weights [T, k]) on x's device");
    return launch_add_rms_norm(x, weight, eps, [&](kernels::RmsNormParams& p) { p.residual_pairs = pairs.params(); });
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t rope, bool interleaved) {
    return ropes({{x, cos, sin, rope, interleaved}})[0];
}

std::vector<at::Tensor> ropes(const std::vector<RopeJob>& jobs) {
    RECORD_FUNCTION("dsrl::ropes", std::vector<c10::IValue>());  // names the kernel in profiles
    return launch_jobs<RopeJob, kernels::RopeParams>(
        "ropes (cuda)", jobs, kernels::kMaxRopeJobs,
        [](const RopeJob& j, at::Tensor* out) {
            const kernels::RopeParams p = rope_params(j.x, j.cos, j.sin, j.rope, j.interleaved, out);
            TORCH_CHECK(!j.pool.defined() || p.heads == 1,
                        "ropes (cuda): a job that writes into a pool has no heads dim, got x ", j.x.sizes());
            return p;
        },
        kernels::launch_ropes);
}

bool proj_fp32_fits(const at::Tensor& x, const at::Tensor& w) {
    return norm_rope_kernels_fit(x, {&w}) && flat_row_stride(x, 1) >= 0 && dsrl::kernels::row_dot_takes(x.size(-1)) &&
           elem_kernel_takes(w.scalar_type()) && w.dim() == 2 && w.size(1) == x.size(-1) && w.is_contiguous() &&
           aligned16(w.data_ptr());
}

at::Tensor proj_fp32(const at::Tensor& x, const at::Tensor& w, double scale) {
    RECORD_FUNCTION("dsrl::proj_fp32", std::vector<c10::IValue>());  // names the kernel in profiles
    TORCH_CHECK(proj_fp32_fits(x, w),
                "proj_fp32 (cuda): x [..., D] and w [N, D] must be CUDA fp32/bf16/fp16 on one "
                "device, x's rows of one stride with a contiguous last dim, w contiguous and 16-byte aligned, D a "
                "multiple of 4 up to ",
                dsrl::kernels::kRowDotMaxDim, ", without autograd; got x ", x.scalar_type(), " ", x.sizes(),
                " strides ", x.strides(), ", w ", w.scalar_type(), " ", w.sizes());
    const c10::cuda::CUDAGuard on_device(x.device());
    at::Tensor out;
    const kernels::RowProjParams p = row_proj_params(x, w, scale, &out);
    C10_CUDA_CHECK(kernels::launch_row_proj(p, stream_of(x)));
    return out;
}

bool add_norm_proj_fits(const at::Tensor& x,
                        const at::Tensor& delta,
                        const at::Tensor& norm_weight,
                        const at::Tensor& w,
                        const PairRows* pairs) {
    if (!proj_fp32_fits(x, w) || x.size(-1) > kernels::kRowProjNormMaxDim || !norm_weight.defined() ||
        !norm_rope_kernels_fit(x, {&norm_weight}) || norm_weight.dim() != 1 || norm_weight.size(0) != x.size(-1) ||
        !norm_weight.is_contiguous() || !elem_kernel_takes(norm_weight.scalar_type()))
        return false;
    if (pairs != nullptr && pairs->defined()) return !delta.defined() && add_rms_norm_takes(x, *pairs);
    return !delta.defined() || (add_rms_norm_takes(x, delta) && norm_rope_kernels_fit(x, {&delta}));
}

NormedProjection add_norm_proj(const at::Tensor& x,
                               const at::Tensor& delta,
                               const at::Tensor& norm_weight,
                               double eps,
                               const at::Tensor& w,
                               double scale,
                               const PairRows* pairs) {
    RECORD_FUNCTION("dsrl::add_norm_proj", std::vector<c10::IValue>());  // names the kernel in profiles
    TORCH_CHECK(add_norm_proj_fits(x, delta, norm_weight, w, pairs),
                "add_norm_proj (cuda): x [..., D] must be a CUDA fp32/bf16/fp16 tensor with rows of one stride and a "
                "contiguous last dim (D a multiple of 4 up to ",
                kernels::kRowProjNormMaxDim,
                "), delta (if given) shaped like x of its type or one that promotes to it (or pair rows of x's type, a "
                "token per row of x), the norm weight a "
                "contiguous [D] and w a contiguous, 16-byte aligned [N, D] on x's device, without autograd; got x ",
                x.scalar_type(), " ", x.sizes(), ", delta ", delta.defined() ? delta.sizes() : at::IntArrayRef{},
                ", norm weight ", norm_weight.defined() ? norm_weight.sizes() : at::IntArrayRef{}, ", w ",
                w.scalar_type(), " ", w.sizes());
    const c10::cuda::CUDAGuard on_device(x.device());
    NormedProjection out;
    kernels::RowProjParams p = row_proj_params(x, w, scale, &out.proj);
    AddNormOutputs n = add_norm_outputs(x, flat_row_stride(x, 1), delta,
                                        delta.defined() ? flat_row_stride(delta, 1) : 0, norm_weight, eps, pairs);
    p.add_norm = n.params;
    out.sum = std::move(n.sum);
    out.normed = std::move(n.normed);
    C10_CUDA_CHECK(kernels::launch_row_proj(p, stream_of(x)));
    return out;
}

bool layer_norm_takes(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
    if (!x.defined() || !weight.defined() || !bias.defined() || x.dim() < 1 || x.stride(-1) != 1 ||
        flat_row_stride(x, 1) < 0)
        return false;
    const int64_t dim = x.size(-1);
    return weight.dim() == 1 && weight.size(0) == dim && bias.sizes() == weight.sizes() && weight.is_contiguous() &&
           bias.is_contiguous() && weight.scalar_type() == x.scalar_type() && bias.scalar_type() == x.scalar_type() &&
           weight.device() == x.device() && bias.device() == x.device();
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
    return norms({{x, weight, bias, eps}})[0];
}

bool norm_rope_fits(const NormJob& j) {
    if (j.rope <= 0) return true;
    const at::Tensor& x = j.x;
    return x.defined() && x.dim() >= 1 && j.rope % 2 == 0 && j.rope <= x.size(-1) && j.rope <= kernels::kNormMaxRope &&
           j.cos.defined() && j.sin.defined() && j.cos.scalar_type() == at::kFloat &&
           j.sin.scalar_type() == at::kFloat && j.cos.sizes() == j.sin.sizes() && j.cos.is_contiguous() &&
           j.sin.is_contiguous() && j.cos.device() == x.device() && j.sin.device() == x.device() &&
           j.cos.dim() == x.dim() && j.cos.size(-1) == j.rope / 2 &&
           j.cos.numel() == x.numel() / x.size(-1) * (j.rope / 2);
}

std::vector<at::Tensor> norms(const std::vector<NormJob>& jobs) {
    RECORD_FUNCTION("dsrl::norms", std::vector<c10::IValue>());  // names the kernel in profiles
    return launch_jobs<NormJob, kernels::RmsNormParams>(
        "norms (cuda)", jobs, kernels::kMaxNormJobs,
        [](const NormJob& j, at::Tensor* out) {
            TORCH_CHECK(j.weight.defined() || !j.bias.defined(), "norms (cuda): a job without a weight has no bias");
            kernels::RmsNormParams p = j.bias.defined() ? layer_norm_params(j.x, j.weight, j.bias, j.eps, out)
                                                        : norm_params(j.x, j.weight, j.eps, out);
            if (j.rope > 0) {
                TORCH_CHECK(norm_rope_fits(j), "norms (cuda): a rotated job needs even rope dims <= ", j.x.size(-1),
                            " and contiguous fp32 cos / sin [.., ", j.rope / 2, "] with x's dims on ", j.x.device(),
                            "; got rope ", j.rope, ", cos ", j.cos.defined() ? j.cos.sizes() : at::IntArrayRef{});
                p.rope_cos = j.cos.data_ptr<float>();
                p.rope_sin = j.sin.data_ptr<float>();
                p.rope = static_cast<int>(j.rope);
                p.rope_interleaved = j.interleaved;
            }
            return p;
        },
        kernels::launch_norms);
}

}  // namespace dsrl::dsa::cuda
