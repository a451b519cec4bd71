// Expert parallelism (SPEC §2.4, §8; issue 21): the routed experts of an MoE layer sharded over an EP group of P
// ranks — rank r of the group holds experts [r·E/P, (r+1)·E/P) — with each token's (token, slot) pairs sent to the
// ranks owning their experts and the expert outputs sent back, by all-to-all-v (NCCL for GPU tensors, MPI for CPU)
// in the forward pass and again, in reverse, in the backward pass. The router, the shared experts and everything
// outside the MoE block stay replicated.
//
//   ExpertParallel ep{.group = &groups.ep, .num_experts = cfg.n_routed_experts};    // P = groups.ep.size()
//   SwiGluWeights mine = ep.local(all_experts);                                       // this rank's [E/P, ...]
//   at::Tensor y = routed_experts_ep(x, route.indices, route.weights, mine, ep);      // = routed_experts(... all)
//
// Collective: every rank of the group calls routed_experts_ep the same number of times, in the same order, also
// with no tokens (x [0, H]); in training every rank then runs the backward of each call (its input must require a
// gradient, so the reverse exchanges happen on every rank). Gradients of a rank's local experts are the sum over
// every token of the group that was routed to them.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "moe/moe_block.h"

namespace dsrl::dist {
class Communicator;
}

namespace dsrl::moe {

struct ExpertParallel {
    const dist::Communicator* group = nullptr;  ///< the EP group; null: every expert is local
    int64_t num_experts = 0;                    ///< E, all routed experts of a layer

    int size() const;
    int rank() const;
    int64_t local_experts() const { return num_experts / size(); }
    int64_t first_expert() const { return rank() * local_experts(); }
    /// ConfigError naming dist.expert_parallel_size and model.n_routed_experts when P does not divide E.
    void check() const;
    /// This rank's slice [first_expert, first_expert + local_experts) of stacked expert weights [E, ...].
    SwiGluWeights local(const SwiGluWeights& all) const;
};

/// Differentiable all-to-all-v over `group`: rows [sum send_counts, *] -> [sum recv_counts, *] (the next
/// send_counts[j] rows go to rank j; rows received from rank 0, 1, ... in order); the backward sends the
/// gradient rows back the same way. `recv_counts` receives the counts from every rank.
at::Tensor all_to_all_v(const at::Tensor& x,
                        const std::vector<int64_t>& send_counts,
                        std::vector<int64_t>* recv_counts,
                        const dist::Communicator& group);

/// Σ_k weights[t, k] · Expert_{indices[t, k]}(x[t]) for x [T, H] with this rank's experts `local` ([E/P, I, H],
/// [E/P, I, H], [E/P, H, I]) of the group; indices are global expert ids. Equals routed_experts over all E experts.
at::Tensor routed_experts_ep(const at::Tensor& x,
                             const at::Tensor& indices,
                             const at::Tensor& weights,
                             const SwiGluWeights& local,
                             const ExpertParallel& ep);

}  // namespace dsrl::moe
