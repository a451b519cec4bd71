#include "trainer/optimizer.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <absl/strings/numbers.h>
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
    : params_(std::move(params)), opt_(opt), comm_given_(shard.comm), zero_stage_(shard.zero_stage) {
    TORCH_CHECK(opt_.beta1 >= 0 && opt_.beta1 < 1 && opt_.beta2 >= 0 && opt_.beta2 < 1 && opt_.eps > 0,
                "AdamW: invalid betas/eps");
    if (zero_stage_ < 0 || zero_stage_ > 2) {
        throw ConfigError(absl::StrCat("trainer.zero_stage must be 0, 1 or 2, got ", zero_stage_));
    }
    const auto several = [](const dist::Communicator* c) { return c != nullptr && c->size() > 1 ? c : nullptr; };
    const bool ep = static_cast<bool>(shard.is_expert);
    // Domain 0: the replicated parameters over the data-parallel ranks; domain 1: the experts (EP only).
    domains_.resize(ep ? 2 : 1);
    domains_[0].comm = several(shard.comm);
    if (ep) {
        domains_[1].comm = several(shard.expert_comm);
        domains_[1].norm_comm = several(shard.ep_comm);
        domains_[1].scale = shard.ep_comm != nullptr ? 1.0 / static_cast<double>(shard.ep_comm->size()) : 1.0;
        ep_rank_ = shard.ep_comm != nullptr ? shard.ep_comm->rank() : 0;
    }
    for (Domain& d : domains_) {
        if (d.comm != nullptr) {
            d.rank = d.comm->rank();
            d.world = d.comm->size();
        }
    }
    domain_of_.resize(params_.size());
    for (size_t i = 0; i < params_.size(); ++i) {
        domain_of_[i] = ep && shard.is_expert(params_[i].name) ? 1 : 0;
        domains_[domain_of_[i]].members.push_back(i);
    }
    // Owners: whole parameters, largest first, each onto the rank of its group holding the fewest elements so far
    // (ties: the lowest rank) — the same assignment on every rank, from the parameter list alone.
    owner_.assign(params_.size(), 0);
    for (Domain& d : domains_) {
        std::vector<size_t> order = d.members;
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t a, size_t b) { return params_[a].tensor.numel() > params_[b].tensor.numel(); });
        std::vector<int64_t> load(static_cast<size_t>(d.world), 0);
        for (const size_t i : order) {
            const auto least = std::min_element(load.begin(), load.end());
            owner_[i] = static_cast<int>(least - load.begin());
            *least += params_[i].tensor.numel();
        }
        d.by_owner.resize(static_cast<size_t>(d.world));
        for (const size_t i : d.members) d.by_owner[static_cast<size_t>(owner_[i])].push_back(i);
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

bool AdamW::holds(size_t i) const {
    const Domain& d = domains_[domain_of_[i]];
    return zero_stage_ == 0 || d.comm == nullptr || owner_[i] == d.rank;
}

int AdamW::owner(size_t i) const {
    const Domain& d = domains_[domain_of_[i]];
    return zero_stage_ == 0 || d.comm == nullptr ? -1 : owner_[i];
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

// The average over the domain's ranks, the same arithmetic at every stage (so the stages train the same weights bit
// for bit): one block per owner (its parameters in order, padded to the largest block), reduce-scattered — rank r
// sums block r — and divided by the number of ranks; ZeRO 0/1 then all-gather the blocks, ZeRO 2 keeps its own
// (the gradients of parameters another rank owns are freed).
void AdamW::reduce_domain(const Domain& d, const std::vector<uint8_t>& active) {
    if (d.comm == nullptr || d.members.empty()) return;
    std::vector<std::vector<size_t>> owned(static_cast<size_t>(d.world));  // the active members by owner
    for (int r = 0; r < d.world; ++r) {
        for (const size_t i : d.by_owner[static_cast<size_t>(r)]) {
            if (active[i]) owned[static_cast<size_t>(r)].push_back(i);
        }
    }
    const auto owned_by = [&](int r) -> const std::vector<size_t>& { return owned[static_cast<size_t>(r)]; };
    int64_t width = 1;
    for (int r = 0; r < d.world; ++r) {
        int64_t size = 0;
        for (const size_t i : owned_by(r)) size += params_[i].tensor.numel();
        width = std::max(width, size);
    }
    at::Tensor flat = at::zeros({d.world * width}, params_.front().tensor.options().dtype(at::kFloat));
    for (int r = 0; r < d.world; ++r) {
        int64_t pos = r * width;
        for (const size_t i : owned_by(r)) {
            const at::Tensor& g = params_[i].tensor.grad();
            flat.narrow(0, pos, g.numel()).copy_(g.reshape({-1}));
            pos += g.numel();
        }
    }
    at::Tensor mine = d.comm->reduce_scatter(flat, dist::ReduceOp::kSum);
    mine.div_(static_cast<double>(d.world));
    const at::Tensor blocks = zero_stage_ < 2 ? d.comm->all_gather(mine) : at::Tensor();  // [world, width]
    for (int r = 0; r < d.world; ++r) {
        const at::Tensor src = r == d.rank ? mine : blocks.defined() ? blocks[r] : at::Tensor();
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
}

ClipResult AdamW::reduce_and_clip(double max_norm) {
    at::NoGradGuard no_grad;
    const size_t n = params_.size();
    if (n == 0) return {};
    // 1. The parameters with a gradient on some rank (normally all ranks agree; a rank without one adds zeros).
    std::vector<uint8_t> active(n);
    for (size_t i = 0; i < n; ++i) active[i] = params_[i].tensor.grad().defined() ? 1 : 0;
    // Over the data-parallel group: every rank (with expert parallelism too, which holds the same parameter list).
    if (const dist::Communicator* all = domains_[0].comm) {
        at::Tensor any = at::empty({static_cast<int64_t>(n)}, at::kLong);
        for (size_t i = 0; i < n; ++i) any.data_ptr<int64_t>()[i] = active[i];
        all->all_reduce(any, dist::ReduceOp::kMax);
        for (size_t i = 0; i < n; ++i) active[i] = any.data_ptr<int64_t>()[i] != 0 ? 1 : 0;
    }
    for (size_t i = 0; i < n; ++i) {
        at::Tensor& p = params_[i].tensor;
        if (active[i] && !p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    }
    const bool exchanged = std::any_of(domains_.begin(), domains_.end(), [](const Domain& d) {
        return d.comm != nullptr || d.norm_comm != nullptr || d.scale != 1.0;
    });
    if (!exchanged) return clip_grad_norm(params_, max_norm);

    // 2. The average within each domain (experts: then scaled by 1 / EP size).
    for (const Domain& d : domains_) {
        reduce_domain(d, active);
        if (d.scale == 1.0) continue;
        for (const size_t i : d.members) {
            if (params_[i].tensor.grad().defined()) params_[i].tensor.mutable_grad().mul_(d.scale);
        }
    }

    // 3. The global norm: per domain and owner the statistics of its parameters' gradients, added in rank order
    // (ZeRO 2 gathers them from the owners; ZeRO 0/1 hold every gradient of the domain and compute them all); the
    // experts' total summed over the EP group (each rank holds other experts); then the clip.
    GradStats total;
    for (const Domain& d : domains_) {
        std::vector<double> partial(2 * static_cast<size_t>(d.world), 0.0);
        for (int r = 0; r < d.world; ++r) {
            if (zero_stage_ == 2 && d.comm != nullptr && r != d.rank) continue;
            std::vector<at::Tensor> grads;
            for (const size_t i : d.by_owner[static_cast<size_t>(r)]) {
                if (active[i] && params_[i].tensor.grad().defined()) grads.push_back(params_[i].tensor.grad());
            }
            if (grads.empty()) continue;
            const GradStats g = grad_stats(grads);
            partial[2 * static_cast<size_t>(r)] = g.sum_sq;
            partial[2 * static_cast<size_t>(r) + 1] = static_cast<double>(g.num_nonfinite);
        }
        if (zero_stage_ == 2 && d.comm != nullptr) {
            at::Tensor t = at::empty({2}, at::kDouble);
            t.data_ptr<double>()[0] = partial[2 * static_cast<size_t>(d.rank)];
            t.data_ptr<double>()[1] = partial[2 * static_cast<size_t>(d.rank) + 1];
            const at::Tensor all = d.comm->all_gather(t).contiguous();  // [world, 2]
            std::copy(all.data_ptr<double>(), all.data_ptr<double>() + 2 * d.world, partial.begin());
        }
        GradStats sum;
        for (int r = 0; r < d.world; ++r) {
            sum.sum_sq += partial[2 * static_cast<size_t>(r)];
            sum.num_nonfinite += static_cast<int64_t>(partial[2 * static_cast<size_t>(r) + 1]);
        }
        if (d.norm_comm != nullptr) {
            at::Tensor t = at::empty({2}, at::kDouble);
            t.data_ptr<double>()[0] = sum.sum_sq;
            t.data_ptr<double>()[1] = static_cast<double>(sum.num_nonfinite);
            const at::Tensor all = d.norm_comm->all_gather(t).contiguous();  // [ep, 2], added in rank order
            sum = {};
            for (int64_t r = 0; r < all.size(0); ++r) {
                sum.sum_sq += all[r][0].item<double>();
                sum.num_nonfinite += static_cast<int64_t>(all[r][1].item<double>());
            }
        }
        total.sum_sq += sum.sum_sq;
        total.num_nonfinite += sum.num_nonfinite;
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

void AdamW::all_gather_params(const Domain& d) {
    at::NoGradGuard no_grad;
    if (d.members.empty()) return;
    // One block per owner (its parameters in order), padded to the largest.
    int64_t width = 1;
    for (const std::vector<size_t>& owned : d.by_owner) {
        int64_t size = 0;
        for (const size_t i : owned) size += params_[i].tensor.numel();
        width = std::max(width, size);
    }
    at::Tensor mine = at::zeros({width}, params_.front().tensor.options().dtype(at::kFloat));
    int64_t pos = 0;
    for (const size_t i : d.by_owner[static_cast<size_t>(d.rank)]) {
        const at::Tensor& p = params_[i].tensor;
        mine.narrow(0, pos, p.numel()).copy_(p.reshape({-1}));
        pos += p.numel();
    }
    const at::Tensor all = d.comm->all_gather(mine);  // [world, width]
    for (int r = 0; r < d.world; ++r) {
        if (r == d.rank) continue;
        pos = 0;
        for (const size_t i : d.by_owner[static_cast<size_t>(r)]) {
            at::Tensor& p = params_[i].tensor;
            p.copy_(all[r].narrow(0, pos, p.numel()).view(p.sizes()));
            pos += p.numel();
        }
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
    if (zero_stage_ >= 1) {
        for (const Domain& d : domains_) {
            if (d.comm != nullptr) all_gather_params(d);
        }
    }
    if (after_step_) after_step_();
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

// Note [Expert state names]: under expert parallelism a rank's expert parameter is a slice [first, first + n) of
// the layer's experts under the whole tensor's name, so its moments are stored as "<prefix><name>@<first>:<n>";
// loading assembles the slice a rank holds from whichever stored slices cover it, so a checkpoint loads at any
// expert-parallel size (the replicas of a slice in other data-parallel groups store the same values).
std::string AdamW::state_key(const std::string& prefix, size_t i) const {
    if (domain_of_[i] == 0 || ep_rank_ < 0) return prefix + params_[i].name;
    const int64_t n = params_[i].tensor.size(0);
    return absl::StrCat(prefix, params_[i].name, "@", ep_rank_ * n, ":", n);
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::state() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (size_t i = 0; i < params_.size(); ++i) {
        if (!holds(i)) continue;
        out.emplace_back(state_key("exp_avg.", i), m_[i].cpu());
        out.emplace_back(state_key("exp_avg_sq.", i), v_[i].cpu());
    }
    return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& tensors, int64_t step, const std::string& source) {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
        if (!holds(i)) continue;
        for (auto [prefix, dst] : {std::pair<const char*, at::Tensor*>{"exp_avg.", &m_[i]}, {"exp_avg_sq.", &v_[i]}}) {
            const std::string key = state_key(prefix, i);
            auto it = tensors.find(key);
            at::Tensor value;
            if (it != tensors.end()) {
                value = it->second;
            } else {
                value = assemble_expert_state(tensors, prefix + params_[i].name, i);  // another EP size wrote it
            }
            if (!value.defined()) {
                throw CheckpointError(absl::StrCat(source, ": optimizer state lacks '", key, "'"));
            }
            if (value.sizes() != dst->sizes()) {
                throw CheckpointError(absl::StrCat(source, ": optimizer state '", key, "' has shape ",
                                                   c10::str(value.sizes()), ", the parameter ",
                                                   c10::str(dst->sizes())));
            }
            dst->copy_(value);
        }
    }
    step_ = step;
}

at::Tensor AdamW::assemble_expert_state(const std::map<std::string, at::Tensor>& tensors,
                                        const std::string& base,
                                        size_t i) const {
    if (params_[i].tensor.dim() == 0) return {};
    const int64_t n = params_[i].tensor.size(0);
    const int64_t first = ep_rank_ < 0 || domain_of_[i] == 0 ? 0 : ep_rank_ * n;
    // Stored slices of this tensor: the whole one (no expert parallelism) or "@first:count" pieces.
    std::map<int64_t, at::Tensor> pieces;  // by first expert
    if (const auto whole = tensors.find(base); whole != tensors.end()) pieces[0] = whole->second;
    for (auto it = tensors.lower_bound(base + "@"); it != tensors.end() && it->first.rfind(base + "@", 0) == 0; ++it) {
        const std::string range = it->first.substr(base.size() + 1);
        const size_t colon = range.find(':');
        int64_t from = 0;
        if (colon == std::string::npos || !absl::SimpleAtoi(range.substr(0, colon), &from)) continue;
        pieces[from] = it->second;
    }
    std::vector<at::Tensor> parts;
    int64_t at_expert = first;
    for (const auto& [from, t] : pieces) {
        if (from > at_expert || from + t.size(0) <= at_expert) continue;
        const int64_t take = std::min(from + t.size(0), first + n) - at_expert;
        parts.push_back(t.narrow(0, at_expert - from, take));
        at_expert += take;
        if (at_expert == first + n) break;
    }
    if (at_expert != first + n) return {};
    return parts.size() == 1 ? parts.front() : at::cat(parts);
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
