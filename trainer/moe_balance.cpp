#include "trainer/moe_balance.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include <absl/strings/str_cat.h>

#include <algorithm>

#include "moe/router.h"

namespace dsrl::trainer {

ExpertBalance::ExpertBalance(dsa::Model& model, const MoeTrainConfig& cfg, const dist::Communicator& comm)
    : model_(model), cfg_(cfg), comm_(comm) {
    const auto& layers = model.weights().layers;
    for (size_t i = 0; i < layers.size(); ++i) {
        if (layers[i].is_moe) layers_.push_back(static_cast<int64_t>(i));
    }
    tracker_.seq_aux_alpha = cfg.seq_aux_loss_alpha;
}

void ExpertBalance::after_step() {
    if (layers_.empty()) return;
    const int64_t experts = model_.config().n_routed_experts;
    const int64_t n = static_cast<int64_t>(layers_.size());
    // One reduction: row j the loads of MoE layer j, the last column whether this rank tracked anything.
    const auto opts = at::TensorOptions().dtype(at::kLong).device(model_.device());
    at::Tensor loads = at::zeros({n, experts + 1}, opts);
    for (int64_t j = 0; j < n && j < static_cast<int64_t>(tracker_.loads.size()); ++j) {
        const at::Tensor& l = tracker_.loads[static_cast<size_t>(j)];
        if (!l.defined()) continue;
        loads[j].narrow(0, 0, experts).copy_(l);
        loads[j][experts].fill_(1);
    }
    tracker_.loads.clear();
    if (comm_.is_member() && comm_.size() > 1) comm_.all_reduce(loads, dist::ReduceOp::kSum);
    const at::Tensor host = loads.cpu();
    if (host.select(1, experts).sum().item<int64_t>() == 0) return;  // no forward of this step trained the MoE
    const at::Tensor per_layer = host.narrow(1, 0, experts);
    if (cfg_.bias_update_speed > 0) {
        for (int64_t j = 0; j < n; ++j) {
            at::Tensor& bias = model_.weights().layers[static_cast<size_t>(layers_[static_cast<size_t>(j)])].moe.bias;
            moe::update_bias(bias, per_layer[j], cfg_.bias_update_speed);
        }
    }
    step_loads_ = step_loads_.defined() ? step_loads_ + per_layer : per_layer.clone();
}

void ExpertBalance::take_metrics(std::map<std::string, double>& m) {
    if (tracker_.aux_loss_count > 0) {
        m["moe/seq_aux_loss"] = tracker_.aux_loss_sum / static_cast<double>(tracker_.aux_loss_count);
        tracker_.aux_loss_sum = 0;
        tracker_.aux_loss_count = 0;
    }
    if (!step_loads_.defined()) return;
    const at::Tensor loads = step_loads_.to(at::kDouble);
    double worst_max = 0, worst_idle = 0;
    for (size_t j = 0; j < layers_.size(); ++j) {
        const at::Tensor l = loads[static_cast<int64_t>(j)];
        const double mean = l.mean().item<double>();
        const double max_load = mean > 0 ? l.max().item<double>() / mean : 0.0;
        const double idle = l.eq(0).sum().item<double>();
        const std::string prefix = absl::StrCat("moe/layer", layers_[j], "/");
        m[prefix + "max_load"] = max_load;
        m[prefix + "idle_experts"] = idle;
        worst_max = std::max(worst_max, max_load);
        worst_idle = std::max(worst_idle, idle);
    }
    m["moe/max_load"] = worst_max;
    m["moe/idle_experts"] = worst_idle;
    step_loads_ = at::Tensor();
}

}  // namespace dsrl::trainer
