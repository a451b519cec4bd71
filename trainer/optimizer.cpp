#include "trainer/optimizer.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <absl/strings/str_cat.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>

#include "core/dist/communicator.h"
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

AdamW::AdamW(std::vector<Param> params, AdamWOptions opt, ShardOptions shard)
    : params_(std::move(params)), opt_(opt), zero_stage_(shard.zero_stage) {
    TORCH_CHECK(opt_.beta1 >= 0 && opt_.beta1 < 1 && opt_.beta2 >= 0 && opt_.beta2 < 1 && opt_.eps > 0,
                "AdamW: invalid betas/eps");
    if (zero_stage_ < 0 || zero_stage_ > 2) {
        throw ConfigError(absl::StrCat("trainer.zero_stage must be 0, 1 or 2, got ", zero_stage_));
    }
    if (shard.comm != nullptr && shard.comm->size() > 1) {
        comm_ = shard.comm;
        rank_ = comm_->rank();
        world_ = comm_->size();
    }
    if (comm_ != nullptr) {
        // Whole parameters, largest first, each onto the rank holding the fewest elements so far (ties: the lowest
        // rank): the same assignment on every rank, from the parameter list alone.
        std::vector<size_t> order(params_.size());
        std::iota(order.begin(), order.end(), size_t{0});
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t a, size_t b) { return params_[a].tensor.numel() > params_[b].tensor.numel(); });
        std::vector<int64_t> load(static_cast<size_t>(world_), 0);
        owner_.assign(params_.size(), 0);
        for (const size_t i : order) {
            const auto least = std::min_element(load.begin(), load.end());
            owner_[i] = static_cast<int>(least - load.begin());
            *least += params_[i].tensor.numel();
        }
    }
    for (size_t i = 0; i < params_.size(); ++i) {
        const Param& p = params_[i];
        TORCH_CHECK(p.tensor.defined() && at::isFloatingType(p.tensor.scalar_type()), "AdamW: parameter '", p.name,
                    "' must be a floating tensor");
        const bool held = holds(i);
        m_.push_back(held ? at::zeros_like(p.tensor, p.tensor.options().dtype(at::kFloat)) : at::Tensor());
        v_.push_back(held ? at::zeros_like(p.tensor, p.tensor.options().dtype(at::kFloat)) : at::Tensor());
    }
}

void AdamW::reset_state() {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
        if (!m_[i].defined()) continue;
        m_[i].zero_();
        v_[i].zero_();
    }
    step_ = 0;
}

ClipResult AdamW::reduce_and_clip(double max_norm) {
    at::NoGradGuard no_grad;
    const size_t n = params_.size();
    // 1. The parameters with a gradient on some rank (normally all ranks agree; a rank without one adds zeros).
    std::vector<uint8_t> active(n);
    for (size_t i = 0; i < n; ++i) active[i] = params_[i].tensor.grad().defined() ? 1 : 0;
    if (comm_ != nullptr) {
        at::Tensor any = at::empty({static_cast<int64_t>(n)}, at::kLong);
        for (size_t i = 0; i < n; ++i) any.data_ptr<int64_t>()[i] = active[i];
        comm_->all_reduce(any, dist::ReduceOp::kMax);
        for (size_t i = 0; i < n; ++i) active[i] = any.data_ptr<int64_t>()[i] != 0 ? 1 : 0;
    }
    for (size_t i = 0; i < n; ++i) {
        at::Tensor& p = params_[i].tensor;
        if (active[i] && !p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    }
    if (comm_ == nullptr) return clip_grad_norm(params_, max_norm);

    // 2. The average over the ranks, the same arithmetic at every stage (so the stages train the same weights bit
    // for bit): one block per owner (its parameters in order, padded to the largest block), reduce-scattered —
    // rank r sums block r — and divided by the number of ranks; ZeRO 0/1 then all-gather the blocks, ZeRO 2 keeps
    // its own (the gradients of parameters another rank owns are freed).
    const auto owned_by = [&](int r) {
        std::vector<size_t> out;
        for (size_t i = 0; i < n; ++i) {
            if (active[i] && owner_[i] == r) out.push_back(i);
        }
        return out;
    };
    int64_t width = 1;
    for (int r = 0; r < world_; ++r) {
        int64_t size = 0;
        for (const size_t i : owned_by(r)) size += params_[i].tensor.numel();
        width = std::max(width, size);
    }
    at::Tensor flat = at::zeros({world_ * width}, params_.front().tensor.options().dtype(at::kFloat));
    for (int r = 0; r < world_; ++r) {
        int64_t pos = r * width;
        for (const size_t i : owned_by(r)) {
            const at::Tensor& g = params_[i].tensor.grad();
            flat.narrow(0, pos, g.numel()).copy_(g.reshape({-1}));
            pos += g.numel();
        }
    }
    at::Tensor mine = comm_->reduce_scatter(flat, dist::ReduceOp::kSum);
    mine.div_(static_cast<double>(world_));
    const at::Tensor blocks = zero_stage_ < 2 ? comm_->all_gather(mine) : at::Tensor();  // [world, width]
    for (int r = 0; r < world_; ++r) {
        const at::Tensor src = r == rank_ ? mine : blocks.defined() ? blocks[r] : at::Tensor();
        int64_t pos = 0;
        for (const size_t i : owned_by(r)) {
            at::Tensor& p = params_[i].tensor;
            if (src.defined()) {
                p.mutable_grad().copy_(src.narrow(0, pos, p.numel()).view(p.sizes()));
            } else {
                p.mutable_grad() = at::Tensor();  // ZeRO 2: only the owner keeps a parameter's gradient
            }
            pos += p.numel();
        }
    }

    // 3. The global norm: per owner the statistics of its parameters' gradients, added in rank order (ZeRO 2
    // gathers them from the owners; ZeRO 0/1 hold every gradient and compute them all), then the clip.
    std::vector<double> partial(2 * static_cast<size_t>(world_), 0.0);
    for (int r = 0; r < world_; ++r) {
        if (zero_stage_ == 2 && r != rank_) continue;
        std::vector<at::Tensor> grads;
        for (const size_t i : owned_by(r)) grads.push_back(params_[i].tensor.grad());
        if (grads.empty()) continue;
        const GradStats g = grad_stats(grads);
        partial[2 * static_cast<size_t>(r)] = g.sum_sq;
        partial[2 * static_cast<size_t>(r) + 1] = static_cast<double>(g.num_nonfinite);
    }
    if (zero_stage_ == 2) {
        at::Tensor t = at::empty({2}, at::kDouble);
        t.data_ptr<double>()[0] = partial[2 * static_cast<size_t>(rank_)];
        t.data_ptr<double>()[1] = partial[2 * static_cast<size_t>(rank_) + 1];
        const at::Tensor all = comm_->all_gather(t).contiguous();  // [world, 2]
        std::copy(all.data_ptr<double>(), all.data_ptr<double>() + 2 * world_, partial.begin());
    }
    GradStats total;
    for (int r = 0; r < world_; ++r) {
        total.sum_sq += partial[2 * static_cast<size_t>(r)];
        total.num_nonfinite += static_cast<int64_t>(partial[2 * static_cast<size_t>(r) + 1]);
    }
    ClipResult result{.norm = total.norm(), .finite = total.num_nonfinite == 0};
    if (result.finite && max_norm > 0 && result.norm > max_norm) {
        const double scale = max_norm / (result.norm + 1e-6);
        for (const Param& p : params_) {
            if (p.tensor.grad().defined()) p.tensor.mutable_grad().mul_(scale);
        }
    }
    return result;
}

void AdamW::all_gather_params() {
    at::NoGradGuard no_grad;
    std::vector<int64_t> block(static_cast<size_t>(world_), 0);
    for (size_t i = 0; i < params_.size(); ++i) block[static_cast<size_t>(owner_[i])] += params_[i].tensor.numel();
    const int64_t width = std::max<int64_t>(1, *std::max_element(block.begin(), block.end()));
    at::Tensor mine = at::zeros({width}, params_.front().tensor.options().dtype(at::kFloat));
    int64_t pos = 0;
    for (size_t i = 0; i < params_.size(); ++i) {
        if (owner_[i] != rank_) continue;
        const at::Tensor& p = params_[i].tensor;
        mine.narrow(0, pos, p.numel()).copy_(p.reshape({-1}));
        pos += p.numel();
    }
    const at::Tensor all = comm_->all_gather(mine);  // [world, width]
    std::vector<int64_t> at_pos(static_cast<size_t>(world_), 0);
    for (size_t i = 0; i < params_.size(); ++i) {
        at::Tensor& p = params_[i].tensor;
        int64_t& o = at_pos[static_cast<size_t>(owner_[i])];
        if (owner_[i] != rank_) p.copy_(all[owner_[i]].narrow(0, o, p.numel()).view(p.sizes()));
        o += p.numel();
    }
}

OptimizerMemory AdamW::memory() const {
    OptimizerMemory m;
    for (size_t i = 0; i < params_.size(); ++i) {
        const at::Tensor& p = params_[i].tensor;
        m.params += static_cast<int64_t>(p.nbytes());
        if (p.grad().defined()) m.grads += static_cast<int64_t>(p.grad().nbytes());
        if (m_[i].defined()) m.optimizer += static_cast<int64_t>(m_[i].nbytes() + v_[i].nbytes());
    }
    return m;
}

void AdamW::step(double lr) {
    at::NoGradGuard no_grad;
    ++step_;
    const double bc1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(step_));
    const double bc2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(step_));
    for (size_t i = 0; i < params_.size(); ++i) {
        if (!holds(i)) continue;  // ZeRO 1/2: its owner updates it
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
    if (comm_ != nullptr && zero_stage_ >= 1) all_gather_params();
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
        if (!holds(i)) continue;
        out.emplace_back("exp_avg." + params_[i].name, m_[i].cpu());
        out.emplace_back("exp_avg_sq." + params_[i].name, v_[i].cpu());
    }
    return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& tensors, int64_t step, const std::string& source) {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
        if (!holds(i)) continue;
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
