// The two DSA training stages (SPEC §3, docs/dsa_training.md), one optimizer step each, on the job's AdamW:
//  - indexer_warmup_step: dense attention; loss = mean over layers of indexer_warmup_loss (KL of the head-averaged
//    attention to the indexer's softmax); only the indexer trains (every other parameter requires no grad during
//    the forward and gets no gradient, so AdamW leaves it bit-identical); lr = dsa.indexer_lr.
//  - sparse_train_step: top-k sparse attention with detached indexer inputs; loss = LM loss (next-token NLL on
//    the batch's loss mask) + mean over layers of indexer_sparse_loss; the two are disjoint in parameters. The
//    indexer runs at dsa.indexer_lr (AdamW lr_scale indexer_lr / lr), the rest at dsa.lr.
//  - dense_lm_step: dense attention LM loss, every parameter but the indexer (the dsa.dense_lm_steps pre-phase).
// `lr_factor` scales the stage's learning rates (dsa_lr_factor: the job's warm-up + cosine shape per stage).
// Every step: gradients averaged over the data-parallel ranks, clipped (trainer.optimizer.grad_clip), a step with
// non-finite gradients is skipped ("skipped_steps" 1). Metrics: loss terms, "recall/layer<i>" and "recall_mean"
// (attention recall of the indexer's top-k at k = model.index_topk), "grad_norm", "lr".
//
//   std::map<std::string, double> m = indexer_warmup_step(policy, optimizer, stream.next(B), job, &comm);
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/dist/communicator.h"
#include "data/token_data.h"
#include "dsa/model.h"
#include "trainer/config.h"
#include "trainer/optimizer.h"

namespace dsrl::trainer {

/// True for the lightning indexer's tensors (HF names containing ".self_attn.indexer.").
bool is_indexer_param(const std::string& name);

std::map<std::string, double> indexer_warmup_step(dsa::Model& model,
                                                  AdamW& opt,
                                                  const data::TokenBatch& batch,
                                                  const JobConfig& job,
                                                  const dist::Communicator* comm,
                                                  double lr_factor = 1.0,
                                                  dsa::MoeBalance* balance = nullptr);

std::map<std::string, double> sparse_train_step(dsa::Model& model,
                                                AdamW& opt,
                                                const data::TokenBatch& batch,
                                                const JobConfig& job,
                                                const dist::Communicator* comm,
                                                double lr_factor = 1.0,
                                                dsa::MoeBalance* balance = nullptr);

std::map<std::string, double> dense_lm_step(dsa::Model& model,
                                            AdamW& opt,
                                            const data::TokenBatch& batch,
                                            const JobConfig& job,
                                            const dist::Communicator* comm,
                                            double lr_factor = 1.0,
                                            dsa::MoeBalance* balance = nullptr);

/// The schedule of the DSA stages: lr_at(trainer.optimizer, step, total) / trainer.optimizer.lr (linear warm-up
/// over trainer.optimizer.warmup_steps, then cosine to min_lr_ratio, or constant), 1 when that lr is 0.
double dsa_lr_factor(const OptimizerConfig& c, int64_t step, int64_t total);

/// Held-out evaluation without gradients, summed over `batches` and the ranks: "task_loss_dense" and
/// "task_loss_sparse" (mean NLL over the loss-mask tokens on the dense and the top-k path), "recall/layer<i>" and
/// "recall_mean" (dense attention mass inside the indexer's top-k), "recall_oracle/layer<i>" and
/// "recall_oracle_mean" (the mass of the k heaviest keys: the ceiling of the recall at k = model.index_topk);
/// every rank returns the same figures.
std::map<std::string, double> dsa_evaluate(const dsa::Model& model,
                                           const std::vector<data::TokenBatch>& batches,
                                           const JobConfig& job,
                                           const dist::Communicator* comm);

/// Next-token NLL over the loss mask: (sum, count) of −log p(ids[t + 1]) at positions with loss_mask[t].
/// logits [B, L, V] fp32; returns a differentiable scalar sum and the count.
std::pair<at::Tensor, int64_t> masked_nll_sum(const at::Tensor& logits, const data::TokenBatch& batch);

}  // namespace dsrl::trainer
