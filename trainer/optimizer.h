// The optimizer of dsrl_train (SPEC §7): AdamW with decoupled weight decay, the learning-rate schedule
// (linear warm-up, then cosine to min_lr_ratio·lr or constant), and global-norm gradient clipping that
// reports non-finite gradients so the step can be skipped. State is plain named fp32 tensors, so a
// checkpoint stores and restores it exactly.
//
//   AdamW opt(params, job.trainer.optimizer.adamw);
//   loss.backward();
//   if (clip_grad_norm(opt.params(), cfg.grad_clip).finite) opt.step(lr_at(cfg, step, total)); else ++skipped;
//   opt.zero_grad();
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "trainer/config.h"

namespace dsrl::trainer {

struct Param {
    std::string name;
    at::Tensor tensor;      ///< the parameter (requires_grad); updated in place
    bool decay = true;      ///< weight decay applies (false for norms and biases)
    double lr_scale = 1.0;  ///< this parameter's learning rate = lr · lr_scale (parameter groups)
};

/// Whether a parameter of that name gets weight decay: not norms, biases or the router's balancing bias.
bool decays(const std::string& name, const at::Tensor& t);

class AdamW {
public:
    AdamW(std::vector<Param> params, AdamWOptions opt);
    /// One update with learning rate `lr`, in fp32 (parameters of other dtypes are updated through an fp32
    /// copy of the step). Parameters without a gradient are skipped.
    void step(double lr);
    /// Zeroes the gradients; `set_to_none` drops them instead (a parameter without a gradient is not updated
    /// at all — no moment decay, no weight decay — which is how a stage freezes parameters).
    void zero_grad(bool set_to_none = false);
    /// Sets each parameter's lr_scale from its name (e.g. the indexer's own learning rate in the DSA stages).
    void set_lr_scales(const std::function<double(const std::string&)>& scale_of);
    /// Forgets the moments and the step count (a fresh optimizer over the same parameters): each training
    /// stage starts with one, so SFT's moments and step count do not leak into RL's updates and schedule.
    void reset_state();
    int64_t steps() const { return step_; }
    const std::vector<Param>& params() const { return params_; }

    /// exp_avg.<name>, exp_avg_sq.<name> (fp32, CPU copies) and the step count, for checkpoints.
    std::vector<std::pair<std::string, at::Tensor>> state() const;
    /// Restores state(); a missing tensor or another shape is a CheckpointError naming it.
    void load_state(const std::map<std::string, at::Tensor>& tensors, int64_t step, const std::string& source);

private:
    std::vector<Param> params_;
    AdamWOptions opt_;
    std::vector<at::Tensor> m_, v_;
    int64_t step_ = 0;
};

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up over warmup_steps to lr, then
/// cosine decay to min_lr_ratio·lr at `total` (or constant).
double lr_at(const OptimizerConfig& c, int64_t step, int64_t total);

struct ClipResult {
    double norm = 0;     ///< global L2 norm of the finite gradient elements, before clipping
    bool finite = true;  ///< false when any gradient element is NaN/Inf (then nothing is scaled)
};
/// Scales all gradients so their global norm is at most `max_norm` (<= 0: no clipping, norm still reported).
ClipResult clip_grad_norm(const std::vector<Param>& params, double max_norm);

}  // namespace dsrl::trainer
