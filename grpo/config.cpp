#include "grpo/config.h"

#include <absl/strings/str_cat.h>

#include "core/error.h"

namespace dsrl {

using config::Binder;

void bind(Binder& b, GrpoConfig& c) {
    b.choice("adv_norm", c.adv_norm, {{"none", AdvNorm::kNone}, {"std", AdvNorm::kStd}},
             {.doc = "none: A = R - mean (DeepSeek-V3.2); std: also divide by the group std."});
    b.choice("loss_agg", c.loss.agg, {{"seq_mean", LossAgg::kSeqMean}, {"token_mean", LossAgg::kTokenMean}},
             {.doc = "seq_mean: token mean per sequence, then mean over sequences (SPEC §5)."});
    b.field("eps_low", c.loss.eps_low, {.doc = "Clip range below 1.", .min = 0.0, .max = 1.0, .max_open = true});
    b.field("eps_high", c.loss.eps_high, {.doc = "Clip range above 1.", .min = 0.0});
    b.field("delta", c.loss.delta,
            {.doc = "Off-policy sequence masking threshold on mean log(pi_old/pi_theta).", .min = 0.0});
    b.field("off_policy_mask", c.loss.off_policy_mask, {.doc = "Enable off-policy sequence masking."});
    b.field("keep_routing", c.keep_routing, {.doc = "Policy forwards replay the recorded MoE routes."});
    b.field("keep_sampling_mask", c.keep_sampling_mask,
            {.doc = "Policy log-probs renormalized over the recorded top-p/top-k kept set."});
    b.field("ref_keep_routing", c.ref_keep_routing, {.doc = "Reference forwards replay the recorded routes."});
    b.field("ref_keep_sampling_mask", c.ref_keep_sampling_mask, {.doc = "Apply the kept set to pi_ref too."});
    b.field("keep_indexer", c.keep_indexer,
            {.doc = "Policy and reference forwards replay the DSA key sets the rollout selected (needs "
                    "rollout.record_indexer); the indexer is then not evaluated in those forwards."});
    b.choice("logp_old", c.logp_old, {{"recorded", LogpOld::kRecorded}, {"recompute", LogpOld::kRecompute}},
             {.doc = "pi_old from the rollout record, or recomputed by a forward before the updates."});
    b.field("updates_per_batch", c.updates_per_batch, {.doc = "Passes over each rollout batch.", .min = 1});
    b.field(
        "mini_batches", c.mini_batches,
        {.doc =
             "Optimizer steps per pass (each a mini-batch of whole groups: at most rollout.prompts_per_step are made).",
         .min = 1});
    b.field("logp_chunk_tokens", c.logp_chunk_tokens, {.doc = "Tokens per chunk when computing log-probs.", .min = 1});
    b.field("ref_on_cpu", c.ref_on_cpu, {.doc = "Keep the frozen reference model on the CPU."});
}

}  // namespace dsrl
