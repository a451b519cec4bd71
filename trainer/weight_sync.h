// Disaggregated RL (issue 22, docs/distributed.md "Disaggregated RL"): the trainers' weights to the rollout workers
// after every RL step, without gathering the model anywhere. A rollout worker holds the whole model; under expert
// parallelism (dist.expert_parallel_size P) trainer rank r < P — rank r of the first expert-parallel group — holds
// the routed experts [r·E/P, (r+1)·E/P) of every MoE layer. Group r is {trainer rank r} ∪ every rollout worker:
// trainer 0 broadcasts every replicated weight (the routing biases too) and its experts over group 0, trainer r > 0
// its experts over group r; a rollout worker receives each slice into its own full tensor. No other trainer takes
// part, and no rank holds more than it already does.
//
//   WeightSync sync(world, /*trainers=*/T, job.dist.expert_parallel_size);   // collective: P splits of the world
//   sync.broadcast(policy);                                                   // after each RL step, on every rank
#pragma once

#include <cstdint>
#include <vector>

#include "core/dist/communicator.h"
#include "dsa/model.h"

namespace dsrl::trainer {

class WeightSync {
public:
    /// Collective over `world`, whose ranks [0, trainers) train and [trainers, world) roll out; the trainers' model
    /// is split over expert-parallel groups of `expert_parallel_size` consecutive ranks (1: every expert local).
    WeightSync(const dist::Communicator& world, int trainers, int64_t expert_parallel_size);
    /// Trainer rank r < P sends, every rollout worker receives into `model` (which holds every expert); the other
    /// trainers return at once. Collective over the groups this rank is in.
    void broadcast(dsa::Model& model) const;

private:
    std::vector<dist::Communicator> groups_;  // group r: trainer rank r and the rollout workers (is_member per rank)
    int64_t expert_parallel_size_ = 1;
    bool rollout_ = false;
};

}  // namespace dsrl::trainer
