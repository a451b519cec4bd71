// Expert balance in training (SPEC §2.4): DeepSeek's auxiliary-loss-free routing-bias update, the sequence-wise
// balance loss and the expert-load metrics, for every stage that trains the MoE (sft, dense_lm, sparse_train,
// grpo). The training forwards fill one dsa::MoeBalance (ForwardOptions::balance): the loads of their real tokens
// per MoE layer, and the balance loss they add to their loss. After every optimizer step (AdamW's after-step
// hook) the step's loads are summed over every rank of the job — each rank routes its own tokens with the whole
// router, under expert parallelism too — and each layer's e_score_correction_bias moves by
//   b_e -= moe.bias_update_speed · sign(load_e − mean load),
// identically on every rank (the bias is replicated, never a gradient parameter, and saved with the model).
//
//   ExpertBalance balance(policy, job.moe, comm);
//   optimizer.set_after_step([&] { balance.after_step(); });
//   model.forward(in, {.balance = balance.tracker()});  loss = tracker->add_aux_loss(loss);  loss.backward(); ...
//   balance.take_metrics(step_metrics);   // moe/layer<i>/max_load, moe/layer<i>/idle_experts, ...
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/dist/communicator.h"
#include "dsa/model.h"
#include "trainer/config.h"

namespace dsrl::trainer {

class ExpertBalance {
public:
    /// `comm`: every rank of the job. The model must outlive this.
    ExpertBalance(dsa::Model& model, const MoeTrainConfig& cfg, const dist::Communicator& comm);
    /// What training forwards fill (ForwardOptions::balance); null when the model has no MoE layer.
    dsa::MoeBalance* tracker() { return layers_.empty() ? nullptr : &tracker_; }
    /// After an optimizer step, on every rank (collective over `comm` unless the model has no MoE layer): the
    /// loads tracked since the last step summed over the ranks, the bias update, the loads kept for the metrics.
    /// A step whose forwards tracked nothing on every rank (e.g. the indexer warm-up, which does not train the MoE)
    /// changes nothing.
    void after_step();
    /// Adds the metrics of the steps since the last call and clears them: per MoE layer i max_load (the busiest
    /// expert's load over the mean load, 1 = perfect balance) and idle_experts (experts that got no token) as
    /// moe/layer<i>/…, their worst over the layers as moe/max_load and moe/idle_experts, and moe/seq_aux_loss
    /// (the balance loss added to the loss, mean per forward) when the balance loss is on. Nothing when no load was
    /// tracked.
    void take_metrics(std::map<std::string, double>& m);

private:
    dsa::Model& model_;
    MoeTrainConfig cfg_;
    const dist::Communicator& comm_;
    std::vector<int64_t> layers_;  // decoder-layer index of each MoE layer
    dsa::MoeBalance tracker_;
    at::Tensor step_loads_;  // [MoE layers, E] int64 on the CPU: summed over ranks, since take_metrics
};

}  // namespace dsrl::trainer
