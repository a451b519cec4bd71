// One RL step of the colocated loop (issue 8, in progress): prompts from the domain mixture, rollout,
// rewards, GRPO updates with gradient averaging over ranks. Runs as a plain test and under mpirun -np 2,
// where the ranks draw different prompts yet end the step with identical weights.
#include <gtest/gtest.h>

#include <mpi.h>

#include <ATen/ops/tensor.h>

#include <cmath>

#include "core/dist/communicator.h"
#include "trainer/config.h"
#include "trainer/rl_step.h"

namespace dsrl::trainer {
namespace {

JobConfig small_job() {
    JobConfig job;  // the embedded default: reasoning (arithmetic) + alignment (echo) domains, tiny model
    job.rollout.prompts_per_step = 2;
    job.rollout.group_size = 4;
    job.rollout.max_new_tokens = 8;
    job.trainer.total_steps = 2;
    job.trainer.optimizer.lr = 1e-3;
    job.trainer.optimizer.warmup_steps = 0;
    job.grpo.mini_batches = 2;
    return job;
}

dsa::Model clone(const dsa::Model& m) {
    dsa::ModelWeights w = m.weights();
    for (dsa::NamedTensor& t : dsa::named_tensors(w, m.config())) *t.tensor = t.tensor->detach().clone();
    return dsa::Model(m.config(), w);
}

TEST(RlStepTest, RollsOutScoresAndUpdatesWithIdenticalWeightsOnEveryRank) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    const dist::Communicator world = initialized ? dist::Communicator::world(60) : dist::Communicator();
    const dist::Communicator* comm = initialized ? &world : nullptr;
    const JobConfig job = small_job();
    dsa::Model policy = dsa::Model::random(job.model, 5, at::kCPU);  // same init on every rank
    const dsa::Model reference = clone(policy);
    std::vector<Param> params;
    for (dsa::NamedTensor& t : policy.named_tensors()) {
        if (t.trainable) params.push_back({t.name, t.tensor->requires_grad_(true), decays(t.name, *t.tensor)});
    }
    AdamW opt(params, job.trainer.optimizer.adamw, {.comm = comm});
    const auto tok = text::make_tokenizer(job.model.path, job.model.vocab_size);
    std::vector<DomainRuntime> domains = build_domains(job, "");
    RlStep step(job, policy, &reference, *tok, domains, opt, comm);
    const at::Tensor before = policy.weights().lm_head.detach().clone();
    RlStepResult r;
    for (int64_t s = 0; s < 2; ++s) r = step.run(s);
    EXPECT_EQ(opt.steps() + r.skipped_steps, 4) << "2 RL steps x 2 mini-batches";
    EXPECT_FALSE(policy.weights().lm_head.equal(before)) << "the policy moved";
    for (const char* key : {"loss", "kl_mean", "clip_frac", "masked_seq_frac", "entropy_mean", "grad_norm", "lr"}) {
        EXPECT_TRUE(r.metrics.count(key)) << key;
    }
    EXPECT_EQ(r.groups.size(), 2u);
    for (const rollout::SampleGroup& g : r.groups) {
        EXPECT_EQ(g.samples.size(), 4u);
        for (const rollout::Sample& s : g.samples)
            EXPECT_TRUE(std::isfinite(s.reward)) << "synthetic rewards never fail";
    }
    if (comm != nullptr && comm->size() > 1) {
        // Identical weights everywhere (gradients averaged), though every rank drew its own prompts.
        at::Tensor sum = at::tensor(std::vector<double>{policy.weights().lm_head.sum().item<double>(),
                                                        policy.weights().embed_tokens.sum().item<double>()});
        const at::Tensor all = comm->all_gather(sum);
        for (int64_t k = 1; k < all.size(0); ++k) EXPECT_TRUE(all[k].equal(all[0])) << "rank " << k << " diverged";
    }
}

}  // namespace
}  // namespace dsrl::trainer
