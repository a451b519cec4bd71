#include "grpo/update.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>

#include <absl/strings/str_cat.h>

#include <cmath>

#include "core/error.h"

namespace dsrl::grpo {

std::vector<Metrics> grpo_update(dsa::Model& policy,
                                 const dsa::Model* reference,
                                 const std::vector<rollout::SampleGroup>& groups,
                                 const GrpoConfig& cfg,
                                 const std::map<std::string, double>& domain_beta,
                                 double temperature,
                                 const std::function<void()>& step,
                                 const std::function<double(double)>& denominator,
                                 dsa::MoeBalance* balance) {
    TORCH_CHECK(cfg.updates_per_batch >= 1 && cfg.mini_batches >= 1, "grpo_update: updates_per_batch and ",
                "mini_batches must be >= 1");
    // Flatten, with group ids, rewards and betas.
    std::vector<const rollout::Sample*> samples;
    std::vector<int64_t> group_ids;
    std::vector<float> rewards, betas;
    for (size_t g = 0; g < groups.size(); ++g) {
        for (const rollout::Sample& s : groups[g].samples) {
            const auto it = domain_beta.find(s.domain);
            if (it == domain_beta.end()) {
                throw ConfigError(absl::StrCat("grpo: sample of domain '", s.domain, "' but no beta for that domain"));
            }
            samples.push_back(&s);
            group_ids.push_back(static_cast<int64_t>(g));
            rewards.push_back(s.reward);
            betas.push_back(static_cast<float>(it->second));
        }
    }
    const int64_t n = static_cast<int64_t>(samples.size());
    const Advantages adv =
        compute_advantages(at::tensor(rewards, at::kFloat), at::tensor(group_ids, at::kLong), cfg.adv_norm);
    // From the configuration, not this rank's samples: every rank (of an expert-parallel group too) must run the
    // same reference forwards.
    bool any_kl = false;
    for (const auto& [domain, b] : domain_beta) any_kl |= b > 0;
    if (any_kl && reference == nullptr)
        throw ConfigError("grpo: a domain has beta > 0 but no reference model was given");
    const at::Tensor beta_all = at::tensor(betas, at::kFloat);
    const LogprobOptions pol{.replay_routes = cfg.keep_routing,
                             .apply_kept = cfg.keep_sampling_mask,
                             .temperature = temperature,
                             .chunk_tokens = cfg.logp_chunk_tokens,
                             .entropy = true,
                             .replay_indexer = cfg.keep_indexer,
                             .balance = balance};
    const LogprobOptions ref{.replay_routes = cfg.ref_keep_routing,
                             .apply_kept = cfg.ref_keep_sampling_mask,
                             .temperature = temperature,
                             .chunk_tokens = cfg.logp_chunk_tokens,
                             .replay_indexer = cfg.keep_indexer};
    const int64_t pad = 0;
    // Mini-batches of whole groups, in order.
    std::vector<std::vector<int64_t>> batches(static_cast<size_t>(
        std::min<int64_t>(cfg.mini_batches, std::max<int64_t>(1, static_cast<int64_t>(groups.size())))));
    for (int64_t i = 0; i < n; ++i)
        batches[static_cast<size_t>(group_ids[i] % static_cast<int64_t>(batches.size()))].push_back(i);

    // π_old: recorded by rollout, or recomputed once with the current policy before any update.
    std::vector<at::Tensor> old_logp(batches.size());
    std::vector<at::Tensor> ref_logp(batches.size());
    for (size_t b = 0; b < batches.size(); ++b) {
        std::vector<const rollout::Sample*> part;
        for (const int64_t i : batches[b]) part.push_back(samples[i]);
        const PackedBatch packed = pack_samples(part, pad);
        at::NoGradGuard no_grad;
        old_logp[b] = cfg.logp_old == LogpOld::kRecompute ? sequence_logprobs(policy, packed,
                                                                              {.replay_routes = pol.replay_routes,
                                                                               .apply_kept = pol.apply_kept,
                                                                               .temperature = temperature,
                                                                               .chunk_tokens = pol.chunk_tokens,
                                                                               .replay_indexer = pol.replay_indexer})
                                                                .logp.cpu()
                                                          : packed.logp_old;
        if (any_kl) ref_logp[b] = sequence_logprobs(*reference, packed, ref).logp.cpu();
    }

    // Reward statistics per domain (valid rewards only), reported with every mini-batch step.
    std::map<std::string, std::pair<double, double>> sums;  // domain -> (Σ r, Σ r²)
    std::map<std::string, int64_t> counts;
    for (const rollout::Sample* s : samples) {
        if (!std::isfinite(s->reward)) continue;
        auto& [sum, sq] = sums[s->domain];
        sum += s->reward;
        sq += static_cast<double>(s->reward) * s->reward;
        ++counts[s->domain];
    }
    std::vector<Metrics> out;
    for (int64_t u = 0; u < cfg.updates_per_batch; ++u) {
        for (size_t b = 0; b < batches.size(); ++b) {
            if (batches[b].empty()) continue;
            std::vector<const rollout::Sample*> part;
            for (const int64_t i : batches[b]) part.push_back(samples[i]);
            const PackedBatch packed = pack_samples(part, pad);
            const LogprobResult pi = sequence_logprobs(policy, packed, pol);
            const at::Tensor idx = at::tensor(batches[b], at::kLong);
            const c10::Device dev = pi.logp.device();
            LossInputs in{.logp = pi.logp,
                          .logp_old = old_logp[b].to(dev),
                          .logp_ref = any_kl ? ref_logp[b].to(dev) : at::Tensor(),
                          .valid = packed.valid.to(dev),
                          .adv = adv.adv.index_select(0, idx).to(dev),
                          .contributes = adv.contributes.index_select(0, idx).to(dev),
                          .beta = beta_all.index_select(0, idx).to(dev)};
            LossOptions lopt = cfg.loss;
            if (denominator) {
                lopt.denominator =
                    denominator(loss_denominator(packed.valid, adv.contributes.index_select(0, idx), lopt.agg));
            }
            LossOutput loss = grpo_loss(in, lopt);
            (balance != nullptr ? balance->add_aux_loss(loss.loss) : loss.loss).backward();
            step();
            Metrics m = loss.metrics;
            const double tokens = packed.valid.sum().item<double>();
            m["entropy_mean"] = tokens > 0 ? (pi.entropy.cpu() * packed.valid).sum().item<double>() / tokens : 0.0;
            m["failed_samples"] = static_cast<double>(adv.failed_samples);
            m["dropped_groups"] = static_cast<double>(adv.dropped_groups);
            for (const auto& [domain, sq] : sums) {
                const double k = static_cast<double>(counts[domain]);
                const double mean = sq.first / k;
                m["reward_mean/" + domain] = mean;
                m["reward_std/" + domain] = std::sqrt(std::max(0.0, sq.second / k - mean * mean));
            }
            m["update"] = static_cast<double>(u);
            m["mini_batch"] = static_cast<double>(b);
            out.push_back(std::move(m));
        }
    }
    return out;
}

}  // namespace dsrl::grpo
