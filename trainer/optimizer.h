// The optimizer of dsrl_train (SPEC §7): AdamW with decoupled weight decay, the learning-rate schedule
// (linear warm-up, then cosine to min_lr_ratio·lr or constant), and global-norm gradient clipping that
// reports non-finite gradients so the step can be skipped. State is plain named fp32 tensors, so a
// checkpoint stores and restores it exactly.
//
// Over data-parallel ranks the optimizer also owns the gradient exchange, with the optimizer state sharded
// (trainer.zero_stage, docs/distributed.md "Sharded optimizer state"):
//   0  every rank holds all moments; gradients all-reduced (averaged), every rank updates every parameter.
//   1  each parameter's moments live on one owner rank (whole parameters, balanced by size); gradients
//      all-reduced; each rank updates the parameters it owns, then the updated parameters are all-gathered.
//   2  as 1, and gradients are reduce-scattered: a rank keeps only the averaged gradients of the parameters
//      it owns (the others are freed); the clipping norm is summed over ranks.
// Every stage reduces gradients the same way (reduce-scatter of per-owner blocks; ZeRO 0/1 then all-gather) and adds
// the clipping norm in the same order, and the update of every element is the same arithmetic, so stages 0, 1 and 2
// train the same weights bit for bit.
//
//   AdamW opt(params, job.trainer.optimizer.adamw, {.comm = &comm, .zero_stage = 1});
//   loss.backward();
//   const ClipResult c = opt.reduce_and_clip(cfg.grad_clip);     // averaged over the ranks, clipped
//   if (c.finite) opt.step(lr_at(cfg, step, total)); else ++skipped;
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

namespace dsrl::dist {
class Communicator;
}

namespace dsrl::trainer {

struct Param {
    std::string name;
    at::Tensor tensor;      ///< the parameter (requires_grad); updated in place
    bool decay = true;      ///< weight decay applies (false for norms and biases)
    double lr_scale = 1.0;  ///< this parameter's learning rate = lr · lr_scale (parameter groups)
};

/// Whether a parameter of that name gets weight decay: not norms, biases or the router's balancing bias.
bool decays(const std::string& name, const at::Tensor& t);

struct ClipResult {
    double norm = 0;     ///< global L2 norm of the finite gradient elements, before clipping
    bool finite = true;  ///< false when any gradient element is NaN/Inf (then nothing is scaled)
};

/// How the optimizer spreads over data-parallel ranks.
struct ShardOptions {
    const dist::Communicator* comm = nullptr;  ///< the data-parallel group; null or one rank: nothing to exchange
    int64_t zero_stage = 0;                    ///< 0, 1 or 2 (above)
    /// Expert parallelism (moe/expert_parallel.h): the parameters `is_expert` names are this rank's share of the
    /// routed experts. Their gradients (each already the sum over the tokens of the rank's EP group) are averaged
    /// over `expert_comm` — the ranks holding the same experts, dist's `dp` group — and divided by the EP size, so
    /// the step is the replicated job's; their moments are sharded over expert_comm; their squares enter the
    /// clipping norm summed over `ep_comm`. Null is_expert: no expert parallelism.
    std::function<bool(const std::string&)> is_expert;
    const dist::Communicator* expert_comm = nullptr;
    const dist::Communicator* ep_comm = nullptr;
};

/// Bytes a rank holds for training (dsrl_bench_zero's table).
struct OptimizerMemory {
    int64_t params = 0;     ///< the parameters
    int64_t grads = 0;      ///< gradients held after reduce_and_clip
    int64_t optimizer = 0;  ///< AdamW moments
};

class AdamW {
public:
    /// ConfigError for a zero_stage outside 0..2.
    AdamW(std::vector<Param> params, AdamWOptions opt, ShardOptions shard = {});
    /// Averages the gradients over the data-parallel ranks (all-reduce, or reduce-scatter at ZeRO 2) and clips
    /// them to `max_norm` by their global norm (<= 0: no clipping, the norm still reported). A parameter with a
    /// gradient on no rank stays without one (it is not updated); one with a gradient on some ranks gets zeros
    /// on the others. Collective over the group.
    ClipResult reduce_and_clip(double max_norm);
    /// One update with learning rate `lr`, in fp32 (parameters of other dtypes are updated through an fp32
    /// copy of the step). Parameters without a gradient are skipped. ZeRO 1/2: this rank updates the
    /// parameters it owns, then every rank receives every updated parameter (collective).
    void step(double lr);
    /// Zeroes the gradients; `set_to_none` drops them instead (a parameter without a gradient is not updated
    /// at all — no moment decay, no weight decay — which is how a stage freezes parameters).
    void zero_grad(bool set_to_none = false);
    /// Sets each parameter's lr_scale from its name (e.g. the indexer's own learning rate in the DSA stages).
    void set_lr_scales(const std::function<double(const std::string&)>& scale_of);
    /// Runs `hook` at the end of every step() (on every rank: it may be collective), e.g. the MoE routing-bias
    /// update from the step's expert loads (trainer/moe_balance.h). Empty: none.
    void set_after_step(std::function<void()> hook) { after_step_ = std::move(hook); }
    /// Forgets the moments and the step count (a fresh optimizer over the same parameters): each training
    /// stage starts with one, so SFT's moments and step count do not leak into RL's updates and schedule.
    void reset_state();
    int64_t steps() const { return step_; }
    const std::vector<Param>& params() const { return params_; }

    /// exp_avg.<name>, exp_avg_sq.<name> (fp32, CPU copies) of the parameters whose state this rank holds
    /// (all at ZeRO 0, the owned ones at 1/2), for checkpoints.
    std::vector<std::pair<std::string, at::Tensor>> state() const;
    /// Restores the state this rank holds from `tensors` (which may hold more, e.g. every rank's shards: a
    /// checkpoint of another ZeRO stage or layout loads by name); a missing tensor or another shape is a
    /// CheckpointError naming it.
    void load_state(const std::map<std::string, at::Tensor>& tensors, int64_t step, const std::string& source);

    int64_t zero_stage() const { return zero_stage_; }
    /// The data-parallel group the (replicated) gradients are averaged over, as given; null when one rank.
    const dist::Communicator* comm() const { return comm_given_; }
    /// The rank holding parameter i's moments within its group (ZeRO 1/2: the data-parallel group, or for an
    /// expert parameter the expert-data-parallel group); -1 when every rank of the group holds them.
    int owner(size_t i) const;
    OptimizerMemory memory() const;

private:
    // Parameters averaged over one group: the replicated ones over the data-parallel ranks, the experts over the
    // ranks holding the same experts. With several ranks each parameter has an owner in its group — of its moments
    // (ZeRO 1/2) and, at every stage, of its block in the gradient reduction and of the clipping norm's partial
    // sums (so all stages add in the same order).
    struct Domain {
        const dist::Communicator* comm = nullptr;  // null: one rank
        int rank = 0, world = 1;
        std::vector<size_t> members;                    // indices into params_
        std::vector<std::vector<size_t>> by_owner;      // members by owner rank, in parameter order
        double scale = 1.0;                             // applied to the averaged gradient (1 / EP size for experts)
        const dist::Communicator* norm_comm = nullptr;  // sums the domain's squares over ranks holding other parts
    };
    bool holds(size_t i) const;
    std::string state_key(const std::string& prefix, size_t i) const;
    at::Tensor assemble_expert_state(const std::map<std::string, at::Tensor>& tensors,
                                     const std::string& base,
                                     size_t i) const;
    void reduce_domain(const Domain& d, const std::vector<uint8_t>& active);
    void all_gather_params(const Domain& d);

    std::vector<Param> params_;
    AdamWOptions opt_;
    std::function<void()> after_step_;
    std::vector<at::Tensor> m_, v_;  // undefined for parameters another rank owns
    int64_t step_ = 0;
    const dist::Communicator* comm_given_ = nullptr;
    int64_t zero_stage_ = 0;
    std::vector<Domain> domains_;
    std::vector<size_t> domain_of_;  // per parameter
    std::vector<int> owner_;         // per parameter, within its domain (0 when the domain has one rank)
    int ep_rank_ = -1;               // rank in the expert-parallel group; -1 without expert parallelism
};

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up over warmup_steps to lr, then
/// cosine decay to min_lr_ratio·lr at `total` (or constant).
double lr_at(const OptimizerConfig& c, int64_t step, int64_t total);

/// Scales all gradients so their global norm is at most `max_norm` (<= 0: no clipping, norm still reported).
ClipResult clip_grad_norm(const std::vector<Param>& params, double max_norm);

}  // namespace dsrl::trainer
