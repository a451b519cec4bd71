#include "moe/moe_block.h"

#include "moe/expert_parallel.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/scatter.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

namespace dsrl::moe {

at::Tensor swiglu(const at::Tensor& x,
                  const at::Tensor& gate_proj,
                  const at::Tensor& up_proj,
                  const at::Tensor& down_proj) {
    return at::linear(at::silu(at::linear(x, gate_proj)) * at::linear(x, up_proj), down_proj);
}

at::Tensor routed_experts(const at::Tensor& x,
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

MoeOutput moe_forward(const at::Tensor& x,
                      const MoeWeights& w,
                      const RouterOptions& opt,
                      const at::Tensor& replay,
                      const ExpertParallel* ep,
                      bool dense) {
    MoeOutput out;
    out.route = route(x, w.gate, w.bias, opt, replay);
    out.y = ep != nullptr ? routed_experts_ep(x, out.route.indices, out.route.weights, w.experts, *ep)
            : dense       ? routed_experts_dense(x, out.route.indices, out.route.weights, w.experts)
                          : routed_experts(x, out.route.indices, out.route.weights, w.experts);
    if (w.shared.gate_proj.defined()) {
        out.y = out.y + swiglu(x, w.shared.gate_proj, w.shared.up_proj, w.shared.down_proj);
    }
    return out;
}

}  // namespace dsrl::moe
