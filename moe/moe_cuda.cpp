// Host wrappers of the router and SwiGLU kernels (moe/moe_cuda.h): argument checks, device guard, current stream,
// Tensor -> params.
#include "moe/moe_cuda.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/result_type.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/add_norm_rows.h"
#include "core/kernel_elem.h"
#include "core/kernels/row_dot.cuh"
#include "moe/kernels/decode.cuh"
#include "moe/kernels/routed.cuh"

namespace dsrl::moe::cuda {
namespace {

constexpr int64_t kRouteRowsMaxWeights = int64_t{1} << 16;

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

// A CUDA tensor of `type` and shape `shape` on x's device, contiguous, its data 16-byte aligned.
bool operand(const at::Tensor& t, const at::Tensor& x, at::IntArrayRef shape) {
    return t.defined() && t.device() == x.device() && t.scalar_type() == x.scalar_type() && t.sizes() == shape &&
           t.is_contiguous() && aligned16(t.data_ptr());
}

// The router kernel over `logits` ([T, E] fp32: read, or written from rows · gateᵀ with a gate: x's rows, or those
// of the add + norm `add_norm` stages).
Route launch_route(const at::Tensor& logits,
                   const at::Tensor& x,
                   const at::Tensor& gate,
                   const at::Tensor& bias,
                   const RouterOptions& opt,
                   at::Tensor* dense,
                   const dsrl::kernels::AddNormRows* add_norm = nullptr) {
    constexpr const char* op = "route (cuda)";
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
    kernels::RouteParams p{.logits = logits.data_ptr<float>(),
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
    if (gate.defined()) {  // the logits from rows: x's, or the add + norm's
        p.gate = gate.data_ptr();
        p.gate_type = kernel_elem(gate.scalar_type());
        p.dim = static_cast<int>(gate.size(1));
    }
    if (x.defined()) {
        p.x = x.data_ptr();
        p.x_type = kernel_elem(x.scalar_type());
        p.x_row_stride = rows_stride(x);
    }
    if (add_norm != nullptr) p.add_norm = *add_norm;
    C10_CUDA_CHECK(kernels::launch_route(p, c10::cuda::getCurrentCUDAStream(logits.device().index()).stream()));
    return r;
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
    TORCH_CHECK(route_kernel_fits(logits, opt), "route (cuda): logits must be CUDA fp32 [T, ", opt.n_routed_experts,
                "] contiguous (at most ", kernels::kRouteMaxExperts, " experts, 32 per token) without autograd; got ",
                logits.scalar_type(), " ", logits.sizes());
    return launch_route(logits, {}, {}, bias, opt, dense);
}

bool route_rows_fit(const at::Tensor& x, const at::Tensor& gate, const RouterOptions& opt) {
    if (!x.defined() || !x.is_cuda() || x.dim() != 2 || !elem_kernel_takes(x.scalar_type()) || rows_stride(x) < 0 ||
        !route_kernel_takes(opt) || !dsrl::kernels::row_dot_takes(x.size(1)))
        return false;
    // A router of more than 64K weights (DeepSeek-V3's 256 × 7168) is a GEMM's work: each token's block would read all
    // of it.
    return gate.defined() && gate.device() == x.device() && elem_kernel_takes(gate.scalar_type()) && gate.dim() == 2 &&
           gate.size(0) == opt.n_routed_experts && gate.size(1) == x.size(1) && gate.is_contiguous() &&
           aligned16(gate.data_ptr()) && gate.numel() <= kRouteRowsMaxWeights && no_autograd({&x, &gate});
}

Route route_select_rows(
    const at::Tensor& x, const at::Tensor& gate, const at::Tensor& bias, const RouterOptions& opt, at::Tensor* dense) {
    RECORD_FUNCTION("dsrl::route_select", std::vector<c10::IValue>());  // names the kernel in profiles
    TORCH_CHECK(route_rows_fit(x, gate, opt),
                "route (cuda): x must be CUDA fp32/bf16/fp16 [T, H] with contiguous rows "
                "(H a multiple of 4 up to ",
                dsrl::kernels::kRowDotMaxDim, ") and the gate a contiguous, aligned [", opt.n_routed_experts,
                ", H] on its device, without autograd; got x ", x.scalar_type(), " ", x.sizes(), ", gate ",
                gate.scalar_type(), " ", gate.sizes());
    const at::Tensor logits = at::empty({x.size(0), opt.n_routed_experts}, x.options().dtype(at::kFloat));
    return launch_route(logits, x, gate, bias, opt, dense);
}

bool add_norm_route_fits(const at::Tensor& x,
                         const at::Tensor& delta,
                         const at::Tensor& norm_weight,
                         const at::Tensor& gate,
                         const RouterOptions& opt) {
    if (!x.defined() || !delta.defined() || !norm_weight.defined() || !route_rows_fit(x, gate, opt)) return false;
    const int64_t H = x.size(1);
    return delta.sizes() == x.sizes() && delta.device() == x.device() && elem_kernel_takes(delta.scalar_type()) &&
           at::result_type(x, delta) == x.scalar_type() && rows_stride(delta) >= 0 && norm_weight.dim() == 1 &&
           norm_weight.size(0) == H && norm_weight.is_contiguous() && elem_kernel_takes(norm_weight.scalar_type()) &&
           norm_weight.device() == x.device() && no_autograd({&delta, &norm_weight}) &&
           kernels::route_tile_smem_bytes(static_cast<int>(opt.n_routed_experts), static_cast<int>(opt.n_group),
                                          static_cast<int>(H),
                                          dsrl::kernels::kTileRowsMax) <= kernels::kRouteTileMaxSmem;
}

NormedRoute add_norm_route(const at::Tensor& x,
                           const at::Tensor& delta,
                           const at::Tensor& norm_weight,
                           double eps,
                           const at::Tensor& gate,
                           const at::Tensor& bias,
                           const RouterOptions& opt) {
    RECORD_FUNCTION("dsrl::add_norm_route", std::vector<c10::IValue>());  // names the kernel in profiles
    TORCH_CHECK(add_norm_route_fits(x, delta, norm_weight, gate, opt),
                "add_norm_route (cuda): x and delta must be CUDA fp32/bf16/fp16 [T, H] with contiguous rows (delta of "
                "x's type or one that promotes to it), the norm weight [H], the gate a contiguous, aligned [",
                opt.n_routed_experts,
                ", H] (H a multiple of 4, the router small enough for the tile kernel), without "
                "autograd; got x ",
                x.scalar_type(), " ", x.sizes(), ", delta ", delta.scalar_type(), " ", delta.sizes(), ", norm weight ",
                norm_weight.sizes(), ", gate ", gate.scalar_type(), " ", gate.sizes());
    const c10::cuda::CUDAGuard on_device(x.device());
    AddNormOutputs n = add_norm_outputs(x, rows_stride(x), delta, rows_stride(delta), norm_weight, eps);
    NormedRoute out{.sum = std::move(n.sum), .normed = std::move(n.normed)};
    const at::Tensor logits = at::empty({x.size(0), opt.n_routed_experts}, x.options().dtype(at::kFloat));
    out.route = launch_route(logits, {}, gate, bias, opt, nullptr, &n.params);
    return out;
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

bool routed_experts_fit(const at::Tensor& x, const SwiGluWeights& experts, int64_t k) {
    if (!x.defined() || !x.is_cuda() || x.dim() != 2 ||
        (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kHalf) || !operand(x, x, x.sizes()) ||
        experts.gate_proj.dim() != 3)
        return false;
    const int64_t T = x.size(0), H = x.size(1), E = experts.gate_proj.size(0), I = experts.gate_proj.size(1);
    return H % kernels::kRoutedAlign == 0 && I % kernels::kRoutedAlign == 0 && E >= 1 &&
           E <= kernels::kRoutedMaxExperts && k >= 1 && k <= kernels::kRoutedMaxK &&
           T * k <= kernels::kRoutedMaxPairs && operand(experts.gate_proj, x, {E, I, H}) &&
           operand(experts.up_proj, x, {E, I, H}) && operand(experts.down_proj, x, {E, H, I}) &&
           no_autograd({&x, &experts.gate_proj, &experts.up_proj, &experts.down_proj});
}

bool shared_expert_fuses(const at::Tensor& x, const SwiGluWeights& experts, const SwiGluWeights& shared) {
    if (!x.defined() || x.dim() != 2 || experts.gate_proj.dim() != 3) return false;
    const int64_t H = x.size(1), I = experts.gate_proj.size(1);
    return operand(shared.gate_proj, x, {I, H}) && operand(shared.up_proj, x, {I, H}) &&
           operand(shared.down_proj, x, {H, I}) && no_autograd({&shared.gate_proj, &shared.up_proj, &shared.down_proj});
}

PairRows routed_experts_pairs(const at::Tensor& x,
                              const at::Tensor& indices,
                              const at::Tensor& weights,
                              const SwiGluWeights& experts,
                              const SwiGluWeights* shared) {
    RECORD_FUNCTION("dsrl::routed_experts", std::vector<c10::IValue>());  // names the kernels in profiles
    constexpr const char* op = "routed_experts (cuda)";
    const int64_t k = indices.dim() == 2 ? indices.size(1) : 0;
    TORCH_CHECK(routed_experts_fit(x, experts, k), op,
                ": x must be CUDA bf16/fp16 [T, H] and the experts' gate / up [E, I, H], down [E, H, I] of its type, "
                "contiguous, H and I multiples of ",
                kernels::kRoutedAlign, ", T · k <= ", kernels::kRoutedMaxPairs, ", without autograd; got x ",
                x.scalar_type(), " ", x.sizes(), ", gate ", experts.gate_proj.scalar_type(), " ",
                experts.gate_proj.sizes(), ", down ", experts.down_proj.sizes(), ", k ", k);
    const int64_t T = x.size(0), H = x.size(1), E = experts.gate_proj.size(0), I = experts.gate_proj.size(1);
    TORCH_CHECK(indices.scalar_type() == at::kLong && indices.is_contiguous() && indices.size(0) == T &&
                    indices.device() == x.device(),
                op, ": indices must be contiguous int64 [", T, ", k] on ", x.device(), ", got ", indices.scalar_type(),
                " ", indices.sizes());
    TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.sizes() == indices.sizes() &&
                    weights.device() == x.device(),
                op, ": weights must be contiguous fp32 ", indices.sizes(), " on ", x.device(), ", got ",
                weights.scalar_type(), " ", weights.sizes());
    TORCH_CHECK(shared == nullptr || shared_expert_fuses(x, experts, *shared), op,
                ": the shared expert must be gate / up [", I, ", ", H, "] and down [", H, ", ", I,
                "] of x's type, contiguous; got gate ", shared->gate_proj.sizes(), ", down ",
                shared->down_proj.sizes());
    const c10::cuda::CUDAGuard on_device(x.device());
    const int64_t slots = k + (shared != nullptr ? 1 : 0);
    const at::Tensor h = at::empty({T * slots, I}, x.options());
    const at::Tensor out = at::empty({T * slots, H}, x.options());
    const int64_t tiles = kernels::routed_tiles(T, static_cast<int>(k), static_cast<int>(E));
    const at::Tensor lists = at::empty({T * k + 3 * tiles}, x.options().dtype(at::kInt));  // order | tiles
    const kernels::RoutedExpertsParams p{.x = x.data_ptr(),
                                         .indices = indices.data_ptr<int64_t>(),
                                         .weights = weights.data_ptr<float>(),
                                         .gate = experts.gate_proj.data_ptr(),
                                         .up = experts.up_proj.data_ptr(),
                                         .down = experts.down_proj.data_ptr(),
                                         .shared_gate = shared != nullptr ? shared->gate_proj.data_ptr() : nullptr,
                                         .shared_up = shared != nullptr ? shared->up_proj.data_ptr() : nullptr,
                                         .shared_down = shared != nullptr ? shared->down_proj.data_ptr() : nullptr,
                                         .order = lists.data_ptr<int>(),
                                         .tiles = lists.data_ptr<int>() + T * k,
                                         .h = h.data_ptr(),
                                         .out = out.data_ptr(),
                                         .type = kernel_elem(x.scalar_type()),
                                         .tokens = T,
                                         .k = static_cast<int>(k),
                                         .experts = static_cast<int>(E),
                                         .hidden = static_cast<int>(H),
                                         .inter = static_cast<int>(I)};
    C10_CUDA_CHECK(kernels::launch_routed_experts(p, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()));
    return {.out = out, .indices = indices, .weights = weights, .slots = slots, .experts = E};
}

at::Tensor routed_experts(const at::Tensor& x,
                          const at::Tensor& indices,
                          const at::Tensor& weights,
                          const SwiGluWeights& experts,
                          const SwiGluWeights* shared) {
    return combine_pairs(routed_experts_pairs(x, indices, weights, experts, shared));
}

at::Tensor combine_pairs(const PairRows& pairs) {
    RECORD_FUNCTION("dsrl::combine_pairs", std::vector<c10::IValue>());  // names the kernel in profiles
    TORCH_CHECK(pair_rows_valid(pairs),
                "combine_pairs (cuda): pair rows must be CUDA bf16/fp16 [T · slots, H] (H a multiple of 8, aligned) "
                "with int64 indices and fp32 weights [T, k] on their device");
    const c10::cuda::CUDAGuard on_device(pairs.out.device());
    at::Tensor y = at::empty({pairs.tokens(), pairs.hidden()}, pairs.out.options());
    C10_CUDA_CHECK(kernels::launch_pair_combine(pairs.params(), y.data_ptr(), pairs.tokens(),
                                                c10::cuda::getCurrentCUDAStream(pairs.out.device().index()).stream()));
    return y;
}

}  // namespace dsrl::moe::cuda
