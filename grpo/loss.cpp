#include "grpo/loss.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <absl/strings/str_cat.h>

#include <cmath>
#include <map>
#include <vector>

#include "core/error.h"

namespace dsrl::grpo {
namespace {

// NaN/Inf at a position that counts is an input error, never silently used.
void check_finite(const at::Tensor& x, const at::Tensor& valid, const char* name) {
    if (!x.defined()) return;
    const at::Tensor bad = x.detach().isfinite().logical_not().logical_and(valid);
    if (bad.any().item<bool>()) {
        const at::Tensor where = bad.nonzero()[0];
        throw DataError(absl::StrCat("grpo loss: ", name, " is not finite at sample ", where[0].item<int64_t>(),
                                     ", token ", where[1].item<int64_t>(), " (", bad.sum().item<int64_t>(),
                                     " such positions)"));
    }
}

double item(const at::Tensor& t) { return t.item<double>(); }

}  // namespace

Advantages compute_advantages(const at::Tensor& rewards, const at::Tensor& group, AdvNorm norm) {
    TORCH_CHECK(rewards.dim() == 1 && group.dim() == 1 && rewards.size(0) == group.size(0),
                "compute_advantages: rewards and group must both be [N]; got ", rewards.sizes(), " and ",
                group.sizes());
    const at::Tensor r = rewards.to(at::kDouble).cpu().contiguous();
    const at::Tensor g = group.to(at::kLong).cpu().contiguous();
    const int64_t n = r.size(0);
    const double* rv = r.data_ptr<double>();
    const int64_t* gv = g.data_ptr<int64_t>();
    std::map<int64_t, std::vector<int64_t>> members;
    Advantages out;
    for (int64_t i = 0; i < n; ++i) {
        if (std::isinf(rv[i])) {
            throw DataError(absl::StrCat("grpo: reward of sample ", i, " (group ", gv[i], ") is ", rv[i],
                                         "; use NaN to mark a failed reward"));
        }
        if (std::isnan(rv[i])) {
            ++out.failed_samples;
            continue;
        }
        members[gv[i]].push_back(i);
    }
    at::Tensor adv = at::zeros({n}, at::kDouble);
    at::Tensor contributes = at::zeros({n}, at::kBool);
    double* av = adv.data_ptr<double>();
    bool* cv = contributes.data_ptr<bool>();
    std::map<int64_t, bool> seen_group;
    for (int64_t i = 0; i < n; ++i) seen_group[gv[i]] = true;
    out.dropped_groups = static_cast<int64_t>(seen_group.size());
    for (const auto& [id, idx] : members) {
        if (idx.size() < 2) continue;
        --out.dropped_groups;
        double mean = 0;
        for (const int64_t i : idx) mean += rv[i];
        mean /= static_cast<double>(idx.size());
        double var = 0;
        for (const int64_t i : idx) var += (rv[i] - mean) * (rv[i] - mean);
        const double std = std::sqrt(var / static_cast<double>(idx.size() - 1));  // sample std (n − 1)
        for (const int64_t i : idx) {
            av[i] = rv[i] - mean;
            if (norm == AdvNorm::kStd) av[i] = std > 0 ? av[i] / (std + 1e-6) : 0.0;
            cv[i] = true;
        }
    }
    out.adv = adv.to(at::kFloat).to(rewards.device());
    out.contributes = contributes.to(rewards.device());
    return out;
}

LossOutput grpo_loss(const LossInputs& in, const LossOptions& opt) {
    TORCH_CHECK(in.logp.dim() == 2, "grpo_loss: logp must be [N, T], got ", in.logp.sizes());
    const auto shape = in.logp.sizes();
    TORCH_CHECK(in.logp_old.sizes() == shape && in.valid.sizes() == shape, "grpo_loss: logp_old and valid must be ",
                shape, "; got ", in.logp_old.sizes(), " and ", in.valid.sizes());
    TORCH_CHECK(!in.logp_ref.defined() || in.logp_ref.sizes() == shape, "grpo_loss: logp_ref must be ", shape, ", got ",
                in.logp_ref.sizes());
    const int64_t n = shape[0];
    TORCH_CHECK(in.adv.dim() == 1 && in.adv.size(0) == n, "grpo_loss: adv must be [", n, "], got ", in.adv.sizes());
    TORCH_CHECK(!in.beta.defined() || (in.beta.dim() == 1 && in.beta.size(0) == n), "grpo_loss: beta must be [", n,
                "], got ", in.beta.sizes());
    TORCH_CHECK(opt.eps_low >= 0 && opt.eps_low < 1 && opt.eps_high >= 0, "grpo_loss: bad clip range eps_low ",
                opt.eps_low, ", eps_high ", opt.eps_high);
    const at::ScalarType dt = in.logp.scalar_type();  // fp32 normally; fp64 in gradient checks
    const at::Tensor valid_b = in.valid.ne(0);
    const at::Tensor valid = valid_b.to(dt);
    check_finite(in.logp, valid_b, "logp");
    check_finite(in.logp_old, valid_b, "logp_old");
    check_finite(in.logp_ref, valid_b, "logp_ref");
    if (!in.adv.isfinite().all().item<bool>()) throw DataError("grpo loss: an advantage is not finite");

    const at::Tensor lens = valid.sum(1);  // [N]
    at::Tensor weight = lens.gt(0).to(dt);
    if (in.contributes.defined()) weight = weight * in.contributes.to(dt);
    const at::Tensor zero = at::zeros_like(in.logp);
    const at::Tensor log_ratio = at::where(valid_b, in.logp - in.logp_old, zero);
    const at::Tensor ratio = log_ratio.exp();
    const at::Tensor A = in.adv.to(dt).unsqueeze(1);
    const at::Tensor surr1 = ratio * A;
    const at::Tensor surr2 = at::clamp(ratio, 1.0 - opt.eps_low, 1.0 + opt.eps_high) * A;
    const at::Tensor pg = at::minimum(surr1, surr2);

    // Off-policy sequence masking: the statistic uses log π_θ detached.
    const at::Tensor safe_lens = lens.clamp_min(1);
    at::Tensor seq_mask = at::ones_like(lens);
    if (opt.off_policy_mask) {
        const at::Tensor stat = (-log_ratio.detach() * valid).sum(1) / safe_lens;  // mean log(π_old / π_θ)
        seq_mask = in.adv.lt(0).logical_and(stat.gt(opt.delta)).logical_not().to(dt);
    }

    at::Tensor kl = zero;
    if (in.logp_ref.defined()) {
        const at::Tensor d = at::where(valid_b, in.logp_ref - in.logp, zero);
        kl = ratio * (d.exp() - d - 1);  // unbiased estimator; the ratio stays in the graph
    }
    const at::Tensor beta = in.beta.defined() ? in.beta.to(dt).unsqueeze(1) : at::zeros({n, 1}, valid.options());
    const at::Tensor policy_tok = pg * seq_mask.unsqueeze(1) * valid;
    const at::Tensor kl_tok = beta * kl * valid;

    // Aggregation: per-sequence token mean then mean over sequences (SPEC), or one token mean.
    TORCH_CHECK(opt.denominator >= 0, "grpo_loss: denominator must be >= 0, got ", opt.denominator);
    const auto aggregate = [&](const at::Tensor& per_token) {
        const bool tokens = opt.agg == LossAgg::kTokenMean;
        const at::Tensor sum =
            tokens ? (per_token.sum(1) * weight).sum() : (per_token.sum(1) / safe_lens * weight).sum();
        if (opt.denominator > 0) return sum / opt.denominator;
        return sum / (tokens ? (lens * weight).sum() : weight.sum()).clamp_min(1);
    };
    const at::Tensor policy_obj = aggregate(policy_tok);
    const at::Tensor kl_obj = aggregate(kl_tok);
    LossOutput out;
    out.loss = -(policy_obj - kl_obj);
    out.seq_mask = seq_mask.detach();

    at::NoGradGuard no_grad;
    const at::Tensor counted = valid * weight.unsqueeze(1);  // tokens of contributing sequences
    const double tokens = item(counted.sum());
    const double seqs = item(weight.sum());
    const auto token_mean = [&](const at::Tensor& x) { return tokens > 0 ? item((x * counted).sum()) / tokens : 0.0; };
    const at::Tensor counted_b = counted.gt(0);
    auto& m = out.metrics;
    m["policy_loss"] = -item(policy_obj);
    m["kl_loss"] = item(kl_obj);
    m["kl_mean"] = token_mean(kl.detach());
    m["clip_frac"] = token_mean(surr2.lt(surr1).to(at::kFloat));
    m["clip_low_frac"] = token_mean(ratio.lt(1.0 - opt.eps_low).logical_and(A.lt(0)).to(at::kFloat));
    m["clip_high_frac"] = token_mean(ratio.gt(1.0 + opt.eps_high).logical_and(A.gt(0)).to(at::kFloat));
    m["masked_seq_frac"] = seqs > 0 ? item(((1 - seq_mask) * weight).sum()) / seqs : 0.0;
    m["ratio_mean"] = token_mean(ratio.detach());
    m["ratio_min"] = tokens > 0 ? item(ratio.detach().masked_select(counted_b).min()) : 1.0;
    m["ratio_max"] = tokens > 0 ? item(ratio.detach().masked_select(counted_b).max()) : 1.0;
    m["adv_mean"] = seqs > 0 ? item((in.adv.to(dt) * weight).sum()) / seqs : 0.0;
    m["response_len_mean"] = seqs > 0 ? tokens / seqs : 0.0;
    m["tokens"] = tokens;
    m["sequences"] = seqs;
    m["loss"] = item(out.loss);
    return out;
}

double loss_denominator(const at::Tensor& valid, const at::Tensor& contributes, LossAgg agg) {
    const at::Tensor lens = valid.ne(0).sum(1).to(at::kDouble).cpu();
    at::Tensor weight = lens.gt(0).to(at::kDouble);
    if (contributes.defined()) weight = weight * contributes.to(at::kDouble).cpu();
    return (agg == LossAgg::kTokenMean ? (lens * weight).sum() : weight.sum()).item<double>();
}

}  // namespace dsrl::grpo
