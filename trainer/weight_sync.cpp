#include "trainer/weight_sync.h"

#include <ATen/core/grad_mode.h>

#include <absl/strings/str_cat.h>

#include "core/error.h"
#include "dsa/weights.h"

namespace dsrl::trainer {

WeightSync::WeightSync(const dist::Communicator& world, int trainers, int64_t expert_parallel_size)
    : expert_parallel_size_(expert_parallel_size), rollout_(world.rank() >= trainers) {
    DSRL_INTERNAL_ASSERT(
        trainers >= 1 && trainers < world.size() && expert_parallel_size >= 1 && trainers % expert_parallel_size == 0,
        "WeightSync: ", trainers, " trainer ranks of ", world.size(), ", expert parallel size ", expert_parallel_size);
    const int rank = world.rank();
    for (int64_t r = 0; r < expert_parallel_size; ++r) {
        const bool member = rollout_ || rank == r;
        // Key = world rank: trainer r is rank 0 of its group, the root of its broadcasts.
        groups_.push_back(world.split(absl::StrCat("weights.", r), member ? 0 : -1, rank));
    }
}

void WeightSync::broadcast(dsa::Model& model) const {
    at::NoGradGuard no_grad;
    const int64_t p = expert_parallel_size_;
    const int64_t num_experts = model.config().n_routed_experts;
    std::vector<dsa::NamedTensor> tensors = model.named_tensors();
    for (int64_t r = 0; r < p; ++r) {
        const dist::Communicator& g = groups_[static_cast<size_t>(r)];
        if (!g.is_member()) continue;
        for (dsa::NamedTensor& t : tensors) {
            const bool experts = dsa::is_routed_experts(t.name);
            if (!experts && r > 0) continue;  // replicated weights: trainer 0's, in group 0
            if (!experts || !rollout_) {
                // A trainer's experts are its own slice; replicated weights are whole on every rank.
                DSRL_INTERNAL_ASSERT(!experts || t.tensor->size(0) * p == num_experts, "WeightSync: ", t.name,
                                     " holds ", t.tensor->size(0), " experts, expected ", num_experts / p);
                g.broadcast(*t.tensor, 0);
                continue;
            }
            // A rollout worker: trainer r's slice, into the rows of those experts (a contiguous view).
            DSRL_INTERNAL_ASSERT(t.tensor->size(0) == num_experts && t.tensor->is_contiguous(), "WeightSync: ", t.name,
                                 " of a rollout worker must hold every expert contiguously, got ", t.tensor->size(0),
                                 " experts");
            const int64_t n = num_experts / p;
            at::Tensor slice = t.tensor->narrow(0, r * n, n);
            g.broadcast(slice, 0);
        }
    }
}

}  // namespace dsrl::trainer
