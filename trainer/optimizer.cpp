#include "trainer/optimizer.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <absl/strings/str_cat.h>

#include <cmath>
#include <numbers>

#include "core/error.h"
#include "core/grad_stats.h"

namespace dsrl::trainer {

bool decays(const std::string& name, const at::Tensor& t) {
    const auto ends_with = [&](const char* s) {
        const std::string suffix(s);
        return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (t.dim() < 2) return false;  // norms, biases
    return !ends_with("e_score_correction_bias") && name.find("norm") == std::string::npos;
}

AdamW::AdamW(std::vector<Param> params, AdamWOptions opt) : params_(std::move(params)), opt_(opt) {
    TORCH_CHECK(opt_.beta1 >= 0 && opt_.beta1 < 1 && opt_.beta2 >= 0 && opt_.beta2 < 1 && opt_.eps > 0,
                "AdamW: invalid betas/eps");
    for (const Param& p : params_) {
        TORCH_CHECK(p.tensor.defined() && at::isFloatingType(p.tensor.scalar_type()), "AdamW: parameter '", p.name,
                    "' must be a floating tensor");
        m_.push_back(at::zeros_like(p.tensor, p.tensor.options().dtype(at::kFloat)));
        v_.push_back(at::zeros_like(p.tensor, p.tensor.options().dtype(at::kFloat)));
    }
}

void AdamW::reset_state() {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
        m_[i].zero_();
        v_[i].zero_();
    }
    step_ = 0;
}

void AdamW::step(double lr) {
    at::NoGradGuard no_grad;
    ++step_;
    const double bc1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(step_));
    const double bc2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(step_));
    for (size_t i = 0; i < params_.size(); ++i) {
        at::Tensor& p = params_[i].tensor;
        const at::Tensor& g = p.grad();
        if (!g.defined()) continue;
        const at::Tensor gf = g.to(at::kFloat);
        m_[i].mul_(opt_.beta1).add_(gf, 1.0 - opt_.beta1);
        v_[i].mul_(opt_.beta2).addcmul_(gf, gf, 1.0 - opt_.beta2);
        at::Tensor pf = p.to(at::kFloat);
        const double plr = lr * params_[i].lr_scale;
        if (params_[i].decay && opt_.weight_decay > 0) pf.mul_(1.0 - plr * opt_.weight_decay);  // decoupled
        const at::Tensor denom = (v_[i] / bc2).sqrt_().add_(opt_.eps);
        pf.addcdiv_(m_[i], denom, -plr / bc1);
        if (pf.data_ptr() != p.data_ptr()) p.copy_(pf);
    }
}

void AdamW::zero_grad(bool set_to_none) {
    for (Param& p : params_) {
        if (!p.tensor.grad().defined()) continue;
        if (set_to_none) {
            p.tensor.mutable_grad() = at::Tensor();
        } else {
            p.tensor.mutable_grad().zero_();
        }
    }
}

void AdamW::set_lr_scales(const std::function<double(const std::string&)>& scale_of) {
    for (Param& p : params_) p.lr_scale = scale_of(p.name);
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::state() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (size_t i = 0; i < params_.size(); ++i) {
        out.emplace_back("exp_avg." + params_[i].name, m_[i].cpu());
        out.emplace_back("exp_avg_sq." + params_[i].name, v_[i].cpu());
    }
    return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& tensors, int64_t step, const std::string& source) {
    for (size_t i = 0; i < params_.size(); ++i) {
        for (auto [prefix, dst] : {std::pair<const char*, at::Tensor*>{"exp_avg.", &m_[i]}, {"exp_avg_sq.", &v_[i]}}) {
            const std::string key = prefix + params_[i].name;
            const auto it = tensors.find(key);
            if (it == tensors.end()) {
                throw CheckpointError(absl::StrCat(source, ": optimizer state lacks '", key, "'"));
            }
            if (it->second.sizes() != dst->sizes()) {
                throw CheckpointError(absl::StrCat(source, ": optimizer state '", key, "' has shape ",
                                                   c10::str(it->second.sizes()), ", the parameter ",
                                                   c10::str(dst->sizes())));
            }
            dst->copy_(it->second);
        }
    }
    step_ = step;
}

double lr_at(const OptimizerConfig& c, int64_t step, int64_t total) {
    if (c.warmup_steps > 0 && step < c.warmup_steps) {
        return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
    }
    if (c.schedule == LrSchedule::kConstant || total <= c.warmup_steps) return c.lr;
    const double progress = std::min(1.0, static_cast<double>(step - c.warmup_steps) /
                                              static_cast<double>(std::max<int64_t>(1, total - c.warmup_steps)));
    const double min_lr = c.lr * c.min_lr_ratio;
    return min_lr + 0.5 * (c.lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

ClipResult clip_grad_norm(const std::vector<Param>& params, double max_norm) {
    std::vector<at::Tensor> grads;
    for (const Param& p : params) {
        if (p.tensor.grad().defined()) grads.push_back(p.tensor.grad());
    }
    ClipResult r;
    if (grads.empty()) return r;
    const GradStats s = grad_stats(grads);
    r.norm = s.norm();
    r.finite = s.num_nonfinite == 0;
    if (r.finite && max_norm > 0 && r.norm > max_norm) {
        at::NoGradGuard no_grad;
        const double scale = max_norm / (r.norm + 1e-6);
        for (at::Tensor& g : grads) g.mul_(scale);
    }
    return r;
}

}  // namespace dsrl::trainer
