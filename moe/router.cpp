#include "moe/router.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/sign.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include "core/precision.h"

namespace dsrl::moe {
namespace {

void check_options(const RouterOptions& o) {
    TORCH_CHECK(o.n_routed_experts > 0 && o.n_group > 0 && o.n_routed_experts % o.n_group == 0,
                "router: n_routed_experts (", o.n_routed_experts, ") must be a positive multiple of n_group (",
                o.n_group, ")");
    TORCH_CHECK(o.topk_group >= 1 && o.topk_group <= o.n_group, "router: topk_group must be in [1, n_group=", o.n_group,
                "], got ", o.topk_group);
    const int64_t per_group = o.n_routed_experts / o.n_group;
    TORCH_CHECK(o.n_group == 1 || per_group >= 2, "router: group scores use the top-2 experts of a group; got ",
                per_group, " expert(s) per group");
    TORCH_CHECK(o.num_experts_per_tok >= 1 && o.num_experts_per_tok <= o.topk_group * per_group,
                "router: num_experts_per_tok must be in [1, topk_group * experts per group = ",
                o.topk_group * per_group, "], got ", o.num_experts_per_tok);
}

}  // namespace

at::Tensor select_experts(const at::Tensor& biased, const RouterOptions& opt) {
    check_options(opt);
    TORCH_CHECK(biased.dim() == 2 && biased.size(1) == opt.n_routed_experts, "router: scores must be [T, ",
                opt.n_routed_experts, "], got ", biased.sizes());
    const c10::NoGradGuard no_grad;
    at::Tensor choice = biased.detach();
    if (opt.n_group > 1 && opt.topk_group < opt.n_group) {
        const int64_t tokens = choice.size(0);
        const at::Tensor grouped = choice.view({tokens, opt.n_group, opt.n_routed_experts / opt.n_group});
        // Only the sets matter here (a sum, a mask): unsorted top-k skips a sort kernel each.
        const at::Tensor group_scores =
            std::get<0>(at::topk(grouped, 2, -1, /*largest=*/true, /*sorted=*/false)).sum(-1);  // [T, G]
        const at::Tensor keep_groups =
            std::get<1>(at::topk(group_scores, opt.topk_group, -1, /*largest=*/true, /*sorted=*/false));
        at::Tensor group_mask = at::zeros_like(group_scores, at::kBool).scatter_(1, keep_groups, true);
        const at::Tensor expert_mask =
            group_mask.unsqueeze(-1).expand_as(grouped).reshape({tokens, opt.n_routed_experts});
        choice = choice.masked_fill(expert_mask.logical_not(), -std::numeric_limits<float>::infinity());
    }
    return std::get<1>(at::topk(choice, opt.num_experts_per_tok, -1));
}

Route route(const at::Tensor& x,
            const at::Tensor& weight,
            const at::Tensor& bias,
            const RouterOptions& opt,
            const at::Tensor& replay) {
    check_options(opt);
    TORCH_CHECK(x.dim() == 2, "router: x must be [T, H], got ", x.sizes());
    TORCH_CHECK(weight.dim() == 2 && weight.size(0) == opt.n_routed_experts && weight.size(1) == x.size(1),
                "router: weight must be [", opt.n_routed_experts, ", ", x.size(1), "], got ", weight.sizes());
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == opt.n_routed_experts, "router: e_score_correction_bias must be [",
                opt.n_routed_experts, "], got ", bias.sizes());
    Route r;
    {
        Fp32Region fp32;  // router logits stay fp32 under bf16 autocast (SPEC §2.4)
        r.logits = at::linear(x.to(at::kFloat), weight.to(at::kFloat));
    }
    r.scores = at::sigmoid(r.logits);
    if (replay.defined()) {
        TORCH_CHECK(replay.dim() == 2 && replay.size(0) == x.size(0) && replay.size(1) == opt.num_experts_per_tok,
                    "router: replayed routes must be [", x.size(0), ", ", opt.num_experts_per_tok, "], got ",
                    replay.sizes());
        r.indices = replay.to(x.device(), at::kLong);
        if (r.indices.numel() > 0) {
            const int64_t lo = r.indices.min().item<int64_t>();
            const int64_t hi = r.indices.max().item<int64_t>();
            TORCH_CHECK(lo >= 0 && hi < opt.n_routed_experts, "router: replayed expert ids must be in [0, ",
                        opt.n_routed_experts, "), got ids in [", lo, ", ", hi, "]");
        }
    } else {
        r.indices = select_experts(r.scores.detach() + bias.to(at::kFloat), opt);
    }
    r.weights = at::gather(r.scores, 1, r.indices);
    if (opt.norm_topk_prob) r.weights = r.weights / (r.weights.sum(-1, /*keepdim=*/true) + 1e-20);
    r.weights = r.weights * opt.routed_scaling_factor;
    return r;
}

at::Tensor expert_load(const at::Tensor& indices, int64_t n_routed_experts, const at::Tensor& valid) {
    TORCH_CHECK(n_routed_experts > 0, "expert_load: n_routed_experts must be positive, got ", n_routed_experts);
    const c10::NoGradGuard no_grad;
    at::Tensor ids = indices.to(at::kLong);
    if (valid.defined()) {
        TORCH_CHECK(valid.numel() == (ids.dim() == 0 ? 1 : ids.size(0)), "expert_load: ", valid.numel(),
                    " validity flags for ", ids.size(0), " rows of expert ids");
        ids = ids.index_select(0, valid.flatten().to(ids.device()).ne(0).nonzero().flatten());
    }
    // bincount's minlength is not an upper bound: out-of-range ids would grow the result silently.
    TORCH_CHECK(ids.numel() == 0 || (ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < n_routed_experts),
                "expert_load: expert ids must be in [0, ", n_routed_experts, ")");
    if (ids.numel() == 0) return at::zeros({n_routed_experts}, ids.options());
    return at::bincount(ids.flatten(), /*weights=*/{}, n_routed_experts);
}

at::Tensor sequence_balance_loss(const at::Tensor& scores, const at::Tensor& indices, const at::Tensor& mask) {
    TORCH_CHECK(scores.dim() == 3 && indices.dim() == 3 && mask.dim() == 2 && indices.size(0) == scores.size(0) &&
                    indices.size(1) == scores.size(1) && mask.size(0) == scores.size(0) &&
                    mask.size(1) == scores.size(1),
                "sequence_balance_loss: scores [B, L, E], indices [B, L, k] and mask [B, L] must agree, got ",
                scores.sizes(), ", ", indices.sizes(), ", ", mask.sizes());
    const int64_t experts = scores.size(2);
    const int64_t k = indices.size(2);
    const at::Tensor m = mask.to(scores.device(), at::kFloat);                          // [B, L]
    const at::Tensor tokens = m.sum(1).clamp_min(1);                                    // [B]
    at::Tensor chosen = at::zeros_like(scores, scores.options().requires_grad(false));  // [B, L, E]
    chosen.scatter_(2, indices.to(scores.device(), at::kLong), 1.0);
    const at::Tensor f = (chosen * m.unsqueeze(-1)).sum(1) * (static_cast<double>(experts) / static_cast<double>(k)) /
                         tokens.unsqueeze(-1);                                     // [B, E]
    const at::Tensor share = scores / (scores.sum(-1, /*keepdim=*/true) + 1e-20);  // [B, L, E]
    const at::Tensor p = (share * m.unsqueeze(-1)).sum(1) / tokens.unsqueeze(-1);  // [B, E]
    return (f * p).sum(-1);
}

void update_bias(at::Tensor& bias, const at::Tensor& load, double gamma) {
    TORCH_CHECK(bias.sizes() == load.sizes(), "update_bias: bias ", bias.sizes(), " and load ", load.sizes(),
                " must match");
    const c10::NoGradGuard no_grad;
    const at::Tensor l = load.to(bias.device(), at::kFloat);
    bias.sub_(at::sign(l - l.mean()) * gamma);
}

at::Tensor encode_route(const at::Tensor& indices, int64_t n_routed_experts) {
    TORCH_CHECK(n_routed_experts <= 65536, "encode_route: at most 65536 experts, got ", n_routed_experts);
    if (n_routed_experts <= 256) return indices.to(at::kByte);
    // Values 32768..65535 wrap to negative int16; decode_route undoes it.
    return indices.to(at::kInt).to(at::kShort);
}

at::Tensor decode_route(const at::Tensor& encoded, int64_t n_routed_experts) {
    if (n_routed_experts <= 256) {
        TORCH_CHECK(encoded.scalar_type() == at::kByte, "decode_route: expected uint8 ids for ", n_routed_experts,
                    " experts, got ", encoded.scalar_type());
        return encoded.to(at::kLong);
    }
    TORCH_CHECK(encoded.scalar_type() == at::kShort, "decode_route: expected 16-bit ids for ", n_routed_experts,
                " experts, got ", encoded.scalar_type());
    return encoded.to(at::kLong).bitwise_and(0xFFFF);
}

}  // namespace dsrl::moe
