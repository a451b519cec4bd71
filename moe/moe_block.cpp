#include "moe/moe_block.h"

#include "moe/expert_parallel.h"
#include "moe/moe_cuda.h"

#include <ATen/TensorOperators.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_grouped_mm.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/index_copy.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/scatter.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "core/dispatch.h"
#include "core/kernel_elem.h"
#include "core/precision.h"

namespace dsrl::moe {

#ifndef DSRL_WITH_CUDA
namespace cuda {  // builds without CUDA: the kernels never fit
bool route_kernel_takes(const RouterOptions&) { return false; }
bool route_kernel_fits(const at::Tensor&, const RouterOptions&) { return false; }
bool route_rows_fit(const at::Tensor&, const at::Tensor&, const RouterOptions&) { return false; }
Route route_select_rows(const at::Tensor&, const at::Tensor&, const at::Tensor&, const RouterOptions&, at::Tensor*) {
    TORCH_CHECK(false, "route (cuda): this build of dsrl has no CUDA kernels");
}
bool silu_mul_fits(const at::Tensor&, const at::Tensor&) { return false; }
bool add_norm_route_fits(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const RouterOptions&) {
    return false;
}
NormedRoute add_norm_route(const at::Tensor&,
                           const at::Tensor&,
                           const at::Tensor&,
                           double,
                           const at::Tensor&,
                           const at::Tensor&,
                           const RouterOptions&) {
    TORCH_CHECK(false, "add_norm_route (cuda): this build of dsrl has no CUDA kernels");
}
Route route_select(const at::Tensor&, const at::Tensor&, const RouterOptions&, at::Tensor*) {
    TORCH_CHECK(false, "route (cuda): this build of dsrl has no CUDA kernels");
}
at::Tensor silu_mul(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t) {
    TORCH_CHECK(false, "silu_mul (cuda): this build of dsrl has no CUDA kernels");
}
bool routed_experts_fit(const at::Tensor&, const SwiGluWeights&, int64_t) { return false; }
bool shared_expert_fuses(const at::Tensor&, const SwiGluWeights&, const SwiGluWeights&) { return false; }
at::Tensor routed_experts(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const SwiGluWeights&, const SwiGluWeights*) {
    TORCH_CHECK(false, "routed_experts (cuda): this build of dsrl has no CUDA kernels");
}
PairRows routed_experts_pairs(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const SwiGluWeights&, const SwiGluWeights*) {
    TORCH_CHECK(false, "routed_experts (cuda): this build of dsrl has no CUDA kernels");
}
at::Tensor combine_pairs(const PairRows&) {
    TORCH_CHECK(false, "combine_pairs (cuda): this build of dsrl has no CUDA kernels");
}
}  // namespace cuda
#endif

namespace {

// silu(gate) · up: one kernel where it fits (CUDA, no autograd, impl not reference), else the two ATen ops.
at::Tensor silu_times(const at::Tensor& gate, const at::Tensor& up, Impl impl) {
    if (impl != Impl::kReference && cuda::silu_mul_fits(gate, up)) return cuda::silu_mul(gate, up);
    return at::silu(gate) * up;
}

}  // namespace

at::Tensor swiglu(const at::Tensor& x,
                  const at::Tensor& gate_proj,
                  const at::Tensor& up_proj,
                  const at::Tensor& down_proj,
                  Impl impl) {
    return at::linear(silu_times(at::linear(x, gate_proj), at::linear(x, up_proj), impl), down_proj);
}

at::Tensor swiglu_stacked(const at::Tensor& x, const at::Tensor& gate_up, const at::Tensor& down_proj, Impl impl) {
    TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(0) % 2 == 0, "swiglu_stacked: gate_up must be [2 * I, H], got ",
                gate_up.sizes());
    const int64_t inter = gate_up.size(0) / 2;
    const at::Tensor both = at::linear(x, gate_up);
    return at::linear(silu_times(both.narrow(-1, 0, inter), both.narrow(-1, inter, inter), impl), down_proj);
}

namespace {

void check_routed(const at::Tensor& x,
                  const at::Tensor& indices,
                  const at::Tensor& weights,
                  const SwiGluWeights& experts) {
    TORCH_CHECK(x.dim() == 2, "moe: x must be [T, H], got ", x.sizes());
    TORCH_CHECK(indices.sizes() == weights.sizes() && indices.dim() == 2 && indices.size(0) == x.size(0),
                "moe: indices and weights must both be [", x.size(0), ", k], got ", indices.sizes(), " and ",
                weights.sizes());
    const int64_t num_experts = experts.gate_proj.size(0);
    TORCH_CHECK(experts.gate_proj.dim() == 3 && experts.gate_proj.size(2) == x.size(1) &&
                    experts.up_proj.sizes() == experts.gate_proj.sizes() && experts.down_proj.dim() == 3 &&
                    experts.down_proj.size(0) == num_experts && experts.down_proj.size(1) == x.size(1),
                "moe: expert weights must be gate/up [E, I, ", x.size(1), "] and down [E, ", x.size(1), ", I]; got ",
                experts.gate_proj.sizes(), ", ", experts.up_proj.sizes(), ", ", experts.down_proj.sizes());
}

}  // namespace

at::Tensor routed_experts(const at::Tensor& x,
                          const at::Tensor& indices,
                          const at::Tensor& weights,
                          const SwiGluWeights& experts) {
    check_routed(x, indices, weights, experts);
    const int64_t num_experts = experts.gate_proj.size(0);
    at::Tensor y = at::zeros_like(x);
    if (x.size(0) == 0) return y;
    // Group the (token, slot) pairs by expert: one sort, then contiguous runs per expert.
    const int64_t k = indices.size(1);
    const at::Tensor flat_ids = indices.reshape({-1}).to(at::kLong);
    const at::Tensor order = at::argsort(flat_ids, /*stable=*/true);
    const at::Tensor counts = at::bincount(flat_ids, {}, num_experts).cpu();
    const at::Tensor token_of = order.div(k, "floor");  // token index of each sorted pair
    const at::Tensor weight_of = weights.reshape({-1}).index_select(0, order);
    const int64_t* count = counts.data_ptr<int64_t>();
    int64_t start = 0;
    for (int64_t e = 0; e < num_experts; ++e) {
        const int64_t n = count[e];
        if (n == 0) continue;
        const at::Tensor tokens = token_of.narrow(0, start, n);
        const at::Tensor out =
            swiglu(x.index_select(0, tokens), experts.gate_proj[e], experts.up_proj[e], experts.down_proj[e]);
        // Weighted in fp32 (the gate weights' dtype), then cast, as transformers does.
        y = y.index_add(0, tokens, (out * weight_of.narrow(0, start, n).unsqueeze(1)).to(y.scalar_type()));
        start += n;
    }
    return y;
}

at::Tensor routed_experts_grouped(const at::Tensor& x,
                                  const at::Tensor& indices,
                                  const at::Tensor& weights,
                                  const SwiGluWeights& experts,
                                  c10::ScalarType dtype) {
    check_routed(x, indices, weights, experts);
    const int64_t T = x.size(0), k = indices.size(1), H = x.size(1), E = experts.gate_proj.size(0);
    if (T == 0) return at::zeros_like(x);
    // The (token, slot) pairs sorted by expert (stable: a token's pairs keep their order within an expert), and each
    // expert's end offset in that order, all on the device.
    const auto [sorted, order] = at::sort(indices.reshape({-1}).to(at::kLong), /*stable=*/std::optional<bool>(true),
                                          /*dim=*/0, /*descending=*/false);
    const at::Tensor offs =
        at::searchsorted(sorted, at::arange(E, sorted.options()), /*out_int32=*/true, /*right=*/true);
    const at::Tensor xs = x.index_select(0, order.div(k, "floor")).to(dtype);  // [T·k, H] grouped by expert
    const auto mm = [&](const at::Tensor& a, const at::Tensor& w) {
        return at::_grouped_mm(a, w.to(dtype).transpose(1, 2), offs);  // [T·k, N]: each expert's rows times w[e]ᵀ
    };
    const at::Tensor out = mm(silu_times(mm(xs, experts.gate_proj), mm(xs, experts.up_proj), Impl::kAuto),
                              experts.down_proj);  // [T·k, H]
    // Back in (token, slot) order, weighted in fp32 and summed over the slots in slot order: no atomics, so the
    // result does not depend on the order the device adds in.
    const at::Tensor pairs = at::empty_like(out).index_copy_(0, order, out).to(at::kFloat).view({T, k, H});
    return (pairs * weights.to(at::kFloat).unsqueeze(2)).sum(1).to(x.scalar_type());
}

at::Tensor routed_experts_dense(const at::Tensor& x,
                                const at::Tensor& indices,
                                const at::Tensor& weights,
                                const SwiGluWeights& experts) {
    TORCH_CHECK(
        x.dim() == 2 && indices.dim() == 2 && indices.sizes() == weights.sizes() && indices.size(0) == x.size(0),
        "moe: x must be [T, H] and indices, weights [T, k]; got ", x.sizes(), ", ", indices.sizes(), ", ",
        weights.sizes());
    const int64_t num_experts = experts.gate_proj.size(0);
    const at::Tensor xe = x.unsqueeze(0);                                                       // [1, T, H]
    const at::Tensor gate = at::matmul(xe, experts.gate_proj.transpose(1, 2));                  // [E, T, I]
    const at::Tensor up = at::matmul(xe, experts.up_proj.transpose(1, 2));                      // [E, T, I]
    const at::Tensor out = at::matmul(at::silu(gate) * up, experts.down_proj.transpose(1, 2));  // [E, T, H]
    // Each token's gate weight per expert (0 where not routed), in fp32 as routed_experts weights them.
    const at::Tensor w = at::zeros({x.size(0), num_experts}, weights.options().dtype(at::kFloat))
                             .scatter(1, indices.to(at::kLong), weights.to(at::kFloat));
    return (out.to(at::kFloat) * w.t().unsqueeze(-1)).sum(0).to(x.scalar_type());
}

namespace {

// The router's fp32 logits (they stay fp32 under bf16 autocast, SPEC §2.4, as route() computes them) and its
// selection: one kernel for both where the router is small enough (route_rows_fit), else the fp32 GEMM and the
// selection kernel; with `dense`, also each token's weight per expert [T, E].
Route route_on_kernels(const at::Tensor& x, const MoeWeights& w, const RouterOptions& opt, at::Tensor* dense) {
    if (cuda::route_rows_fit(x, w.gate, opt)) return cuda::route_select_rows(x, w.gate, w.bias, opt, dense);
    at::Tensor logits;
    {
        Fp32Region fp32;
        logits = at::linear(x.to(at::kFloat), w.gate.to(at::kFloat));
    }
    return cuda::route_select(logits, w.bias, opt, dense);
}

// The dense routed experts on the kernels: the router's selection as one kernel that also writes each token's weight
// per expert [T, E]; gate and up of every expert as one matmul each over the stacked weights ([T, E·I]); the SwiGLU
// product times those weights as one kernel; the down projections batched over the experts and summed over them.
// Five kernels besides the router's logits. The gate weight multiplies before the down projection (the ATen path
// weights after it): the same sum, rounded differently.
MoeOutput moe_dense_kernels(const at::Tensor& x, const MoeWeights& w, const RouterOptions& opt, const Route* routed) {
    MoeOutput out;
    at::Tensor per_expert;  // [T, E] fp32
    if (routed != nullptr) {
        out.route = *routed;
        per_expert = at::zeros({x.size(0), opt.n_routed_experts}, routed->weights.options())
                         .scatter(1, routed->indices, routed->weights);
    } else {
        out.route = route_on_kernels(x, w, opt, &per_expert);
    }
    const SwiGluWeights& e = w.experts;
    const int64_t T = x.size(0), H = x.size(1), E = e.gate_proj.size(0), I = e.gate_proj.size(1);
    const at::Tensor gate = at::linear(x, e.gate_proj.reshape({E * I, H}));  // [T, E·I]
    const at::Tensor up = at::linear(x, e.up_proj.reshape({E * I, H}));
    const at::Tensor h = cuda::silu_mul(gate, up, per_expert, I);
    // [E, T, I] (a strided view) x [E, I, H] -> [E, T, H], summed over the experts in fp32.
    const at::Tensor down = at::bmm(h.view({T, E, I}).transpose(0, 1), e.down_proj.transpose(1, 2));
    out.y = down.sum(0).to(x.scalar_type());
    return out;
}

// Whether autograd would record the block (then only the ATen paths run).
bool records_grad(const at::Tensor& x, const MoeWeights& w) {
    return at::GradMode::is_enabled() &&
           (x.requires_grad() || w.gate.requires_grad() || w.experts.gate_proj.requires_grad() ||
            w.experts.up_proj.requires_grad() || w.experts.down_proj.requires_grad());
}

// Whether the dense routed experts run on the kernels: CUDA, no autograd, no replay, impl not reference, and the
// stacked expert weights as the router kernel and the reshapes take them.
bool dense_kernels_fit(
    const at::Tensor& x, const MoeWeights& w, const RouterOptions& opt, const at::Tensor& replay, Impl impl) {
    if (!built_with_cuda() || impl == Impl::kReference || replay.defined() || !x.is_cuda() || x.dim() != 2 ||
        !elem_kernel_takes(x.scalar_type()) || records_grad(x, w))
        return false;
    return cuda::route_kernel_takes(opt) && w.experts.gate_proj.dim() == 3 &&
           w.experts.gate_proj.size(0) == opt.n_routed_experts;
}

// The dtype the grouped matmuls run in where routed_experts_grouped takes the block (CUDA, no autograd, impl not
// reference, bf16 compute — x's dtype, or autocast's — and rows of whole 16-byte vectors), else nullopt.
std::optional<c10::ScalarType> grouped_dtype(const at::Tensor& x, const MoeWeights& w, Impl impl) {
    if (impl == Impl::kReference || !x.is_cuda() || x.dim() != 2 || records_grad(x, w) ||
        w.experts.gate_proj.dim() != 3)
        return std::nullopt;
    const c10::ScalarType dtype =
        at::autocast::is_autocast_enabled(at::kCUDA) ? at::autocast::get_autocast_dtype(at::kCUDA) : x.scalar_type();
    if (dtype != at::kBFloat16 || x.size(1) % 8 != 0 || w.experts.gate_proj.size(1) % 8 != 0) return std::nullopt;
    for (const at::Tensor* t : {&w.experts.gate_proj, &w.experts.up_proj, &w.experts.down_proj}) {
        if (t->scalar_type() == dtype && !aligned16(t->data_ptr())) return std::nullopt;
    }
    return dtype;
}

}  // namespace

bool routes_on_kernels(const at::Tensor& x,
                       const MoeWeights& w,
                       const RouterOptions& opt,
                       const at::Tensor& replay,
                       const ExpertParallel* ep,
                       bool dense,
                       Impl impl) {
    return dense && ep == nullptr && dense_kernels_fit(x, w, opt, replay, impl);
}

MoeOutput moe_forward(const at::Tensor& x,
                      const MoeWeights& w,
                      const RouterOptions& opt,
                      const at::Tensor& replay,
                      const ExpertParallel* ep,
                      bool dense,
                      Impl impl,
                      const Route* routed,
                      bool defer_sum) {
    MoeOutput out;
    bool shared_done = false;
    if (routes_on_kernels(x, w, opt, replay, ep, dense, impl)) {
        // The experts' input in the compute dtype: x, or under autocast an fp32 x cast as a matmul would cast it
        // (only for experts of that dtype: fp32 experts take the dense kernels, which cast on their own).
        const bool cast = x.scalar_type() == at::kFloat && at::autocast::is_autocast_enabled(at::kCUDA) &&
                          w.experts.gate_proj.scalar_type() == at::autocast::get_autocast_dtype(at::kCUDA);
        const at::Tensor xc = cast ? x.to(at::autocast::get_autocast_dtype(at::kCUDA)) : x;
        if (cuda::routed_experts_fit(xc, w.experts, opt.num_experts_per_tok)) {
            // Each token through its own k experts on the tensor cores (and the shared expert in the same kernels
            // where it has the routed experts' width and the sum stays in x's type): no host sync, as the dense
            // products, at k / E of their work.
            out.route = routed != nullptr ? *routed : route_on_kernels(x, w, opt, nullptr);
            shared_done = !cast && w.shared.gate_proj.defined() && cuda::shared_expert_fuses(xc, w.experts, w.shared);
            const SwiGluWeights* fused = shared_done ? &w.shared : nullptr;
            if (defer_sum && !cast && (shared_done || !w.shared.gate_proj.defined())) {
                out.pairs = cuda::routed_experts_pairs(xc, out.route.indices, out.route.weights, w.experts, fused);
                return out;
            }
            out.y =
                cuda::routed_experts(xc, out.route.indices, out.route.weights, w.experts, fused).to(x.scalar_type());
        } else {
            out = moe_dense_kernels(x, w, opt, routed);
        }
    } else {
        out.route = route(x, w.gate, w.bias, opt, replay);
        const Route& r = out.route;
        if (ep != nullptr) {
            out.y = routed_experts_ep(x, r.indices, r.weights, w.experts, *ep);
        } else if (dense) {
            out.y = routed_experts_dense(x, r.indices, r.weights, w.experts);
        } else if (const auto dtype = grouped_dtype(x, w, impl)) {
            out.y = routed_experts_grouped(x, r.indices, r.weights, w.experts, *dtype);
        } else {
            out.y = routed_experts(x, r.indices, r.weights, w.experts);
        }
    }
    if (w.shared.gate_proj.defined() && !shared_done) {
        out.y = out.y + swiglu(x, w.shared.gate_proj, w.shared.up_proj, w.shared.down_proj, impl);
    }
    return out;
}

}  // namespace dsrl::moe
