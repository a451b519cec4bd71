// Host wrappers of the router and SwiGLU kernels (moe/moe_cuda.h): argument checks, device guard, current stream,
// Tensor -> params.
#include "moe/moe_cuda.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/kernel_elem.h"
#include "moe/kernels/decode.cuh"

namespace dsrl::moe::cuda {
namespace {

bool no_autograd(std::initializer_list<const at::Tensor*> ts) {
    if (!at::GradMode::is_enabled()) return true;
    for (const at::Tensor* t : ts) {
        if (t->requires_grad()) return false;
    }
    return true;
}

// Rows of a [T, C] tensor with a contiguous last dim: the stride between rows (any when T <= 1); -1 otherwise.
int64_t rows_stride(const at::Tensor& t) {
    if (t.dim() != 2 || (t.size(1) > 1 && t.stride(1) != 1)) return -1;
    return t.size(0) <= 1 ? t.size(1) : t.stride(0);
}

}  // namespace

bool route_kernel_takes(const RouterOptions& opt) {
    return opt.n_routed_experts <= kernels::kRouteMaxExperts && opt.num_experts_per_tok <= 32;
}

bool route_kernel_fits(const at::Tensor& logits, const RouterOptions& opt) {
    return logits.defined() && logits.is_cuda() && logits.scalar_type() == at::kFloat && logits.dim() == 2 &&
           logits.is_contiguous() && logits.size(1) == opt.n_routed_experts && route_kernel_takes(opt) &&
           no_autograd({&logits});
}

Route route_select(const at::Tensor& logits, const at::Tensor& bias, const RouterOptions& opt, at::Tensor* dense) {
    RECORD_FUNCTION("dsrl::route_select", std::vector<c10::IValue>());  // names the kernel in profiles
    constexpr const char* op = "route (cuda)";
    TORCH_CHECK(route_kernel_fits(logits, opt), op, ": logits must be CUDA fp32 [T, ", opt.n_routed_experts,
                "] contiguous (at most ", kernels::kRouteMaxExperts, " experts, 32 per token) without autograd; got ",
                logits.scalar_type(), " ", logits.sizes());
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == opt.n_routed_experts && bias.device() == logits.device(), op,
                ": bias must be [", opt.n_routed_experts, "] on ", logits.device(), ", got ", bias.sizes());
    const at::Tensor b = bias.to(at::kFloat).contiguous();
    const int64_t T = logits.size(0), E = opt.n_routed_experts, k = opt.num_experts_per_tok;
    const c10::cuda::CUDAGuard on_device(logits.device());
    Route r;
    r.logits = logits;
    r.indices = at::empty({T, k}, logits.options().dtype(at::kLong));
    r.weights = at::empty({T, k}, logits.options());
    if (dense != nullptr) *dense = at::empty({T, E}, logits.options());
    const bool grouped = opt.n_group > 1 && opt.topk_group < opt.n_group;
    const kernels::RouteParams p{.logits = logits.data_ptr<float>(),
                                 .bias = b.data_ptr<float>(),
                                 .indices = r.indices.data_ptr<int64_t>(),
                                 .weights = r.weights.data_ptr<float>(),
                                 .dense = dense != nullptr ? dense->data_ptr<float>() : nullptr,
                                 .tokens = T,
                                 .experts = static_cast<int>(E),
                                 .groups = grouped ? static_cast<int>(opt.n_group) : 1,
                                 .topk_group = grouped ? static_cast<int>(opt.topk_group) : 1,
                                 .k = static_cast<int>(k),
                                 .norm = opt.norm_topk_prob,
                                 .scale = static_cast<float>(opt.routed_scaling_factor)};
    C10_CUDA_CHECK(kernels::launch_route(p, c10::cuda::getCurrentCUDAStream(logits.device().index()).stream()));
    return r;
}

bool silu_mul_fits(const at::Tensor& gate, const at::Tensor& up) {
    return gate.defined() && up.defined() && gate.is_cuda() && up.device() == gate.device() &&
           elem_kernel_takes(gate.scalar_type()) && up.scalar_type() == gate.scalar_type() &&
           gate.sizes() == up.sizes() && rows_stride(gate) >= 0 && rows_stride(up) >= 0 && no_autograd({&gate, &up});
}

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up, const at::Tensor& weight, int64_t group) {
    RECORD_FUNCTION("dsrl::silu_mul", std::vector<c10::IValue>());  // names the kernel in profiles
    constexpr const char* op = "silu_mul (cuda)";
    TORCH_CHECK(silu_mul_fits(gate, up), op,
                ": gate and up must be CUDA fp32/bf16/fp16 [T, C] of one type with "
                "contiguous rows, without autograd; got ",
                gate.scalar_type(), " ", gate.sizes(), " and ", up.scalar_type(), " ", up.sizes());
    const int64_t T = gate.size(0), C = gate.size(1);
    if (weight.defined()) {
        TORCH_CHECK(group > 0 && C % group == 0 && weight.scalar_type() == at::kFloat && weight.is_contiguous() &&
                        weight.dim() == 2 && weight.size(0) == T && weight.size(1) == C / group &&
                        weight.device() == gate.device(),
                    op, ": weight must be contiguous fp32 [", T, ", ", C, " / ", group, "] on ", gate.device(),
                    ", got ", weight.scalar_type(), " ", weight.sizes());
    }
    const c10::cuda::CUDAGuard on_device(gate.device());
    at::Tensor out = at::empty({T, C}, gate.options());
    const kernels::SiluMulParams p{.gate = gate.data_ptr(),
                                   .gate_row_stride = rows_stride(gate),
                                   .up = up.data_ptr(),
                                   .up_row_stride = rows_stride(up),
                                   .type = kernel_elem(gate.scalar_type()),
                                   .weight = weight.defined() ? weight.data_ptr<float>() : nullptr,
                                   .group_width = weight.defined() ? group : 1,
                                   .out = out.data_ptr(),
                                   .rows = T,
                                   .cols = C};
    C10_CUDA_CHECK(kernels::launch_silu_mul(p, c10::cuda::getCurrentCUDAStream(gate.device().index()).stream()));
    return out;
}

}  // namespace dsrl::moe::cuda
