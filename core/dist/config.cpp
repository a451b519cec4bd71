#include "core/dist/config.h"

#include <absl/strings/str_cat.h>

#include "core/error.h"

namespace dsrl {

using config::Binder;

void bind(Binder& b, DistConfig& c) {
    b.choice(
        "mode", c.mode, {{"colocated", DistMode::kColocated}, {"disaggregated", DistMode::kDisaggregated}},
        {.doc = "colocated: every rank rolls out then trains; disaggregated: the last rollout_ranks ranks generate "
                "and score groups for the trainer ranks, which train (with expert parallelism and ZeRO if set) and "
                "send the new weights back (docs/distributed.md)."});
    b.field("timeout_s", c.timeout_s,
            {.doc = "A collective stuck this long aborts the job, naming the operation and group.", .min = 1});
    b.field("expert_parallel_size", c.expert_parallel_size,
            {.doc = "Ranks sharing one MoE layer's routed experts (each holds n_routed_experts / this; it divides "
                    "the trainer ranks and the experts). Disaggregated: over the trainer ranks only; the rollout "
                    "workers hold every expert.",
             .min = 1});
    b.field(
        "rollout_ranks", c.rollout_ranks,
        {.doc = "disaggregated: the last N ranks are rollout workers (1 <= N < world size); rollout.prompts_per_step "
                "counts per trainer rank.",
         .min = 0});
    b.field("max_policy_lag", c.max_policy_lag,
            {.doc = "disaggregated: the rollout workers generate this many steps ahead, so a group sampled at policy "
                    "version v is trained at version <= v + max_policy_lag (0 = synchronous).",
             .min = 0});
    if (b.reading() && c.mode == DistMode::kColocated && c.rollout_ranks != 0) {
        b.fail("rollout_ranks", "rollout_ranks is only meaningful with mode: disaggregated");
    }
    if (b.reading() && c.mode == DistMode::kColocated && c.max_policy_lag != DistConfig{}.max_policy_lag) {
        b.fail("max_policy_lag",
               "max_policy_lag is only meaningful with mode: disaggregated (colocated training is "
               "on-policy up to grpo.updates_per_batch)");
    }
}

}  // namespace dsrl
