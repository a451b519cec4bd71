// The losses and the metric of the two DSA training stages (SPEC §3), ATen on CPU and GPU (the warm-up loss's
// indexer logits on the CUDA kernels where they fit, see indexer_warmup_loss).
//   score(t, h, s) = (q_lat[t, h] · c_kv[s] + q_pe[t, h] · k_pe[s]) · scale      (main attention, MQA form)
//   I(t, s)        = Σ_j w[t, j] · d_I^-1/2 · ReLU(q[t, j] · k[s])                (lightning indexer, §2.2)
//  - indexer_warmup_loss (dense warm-up): p_t = (1/H) Σ_h exp(score(t, h, ·) − lse[t, h]) over the keys visible
//    to t (s <= query_pos[t] and key_valid[s]); L = mean_t KL(p_t ‖ softmax(I_t)) over the visible keys.
//  - indexer_sparse_loss (sparse_train): over the selected set S_t (top-k, −1 = invalid): p_t = (1/H) Σ_h
//    softmax_{S_t}(score(t, h, ·)) (per head renormalized over S_t); L = mean_t KL(p_t ‖ softmax(I_{t, S_t})).
//  - attention_recall: mean_t Σ_{s ∈ S_t} (1/H) Σ_h softmax_visible(score(t, h, ·))[s] (dense attention mass
//    inside the indexer's top-k), a double without gradient.
// The losses are means over the valid queries t (real tokens: key_valid[query_pos[t]]; for the sparse loss also
// at least one selected key); `num_queries` is that count, so loss · num_queries is the sum Σ_t KL of SPEC §3.
// The attention inputs are targets (detached, no gradient); gradients flow to the indexer's q, k, w only.
//
// Memory: everything runs over query tiles of `query_tile` queries inside custom autograd functions that save
// no per-tile tensor and recompute each tile in backward (dL/dI_t = softmax(I_t) − p_t, then through the ReLU
// heads analytically). Working set: O(tile · S · max(H, H_I)) dense, O(tile · K · (H + H_I + C + R + D_I)) sparse —
// never [H, L, S] or [L, S] over the whole sequence.
//
// Shapes: indexer q [B, L, H_I, D_I], k [B, S, D_I], w [B, L, H_I] (ForwardOutput::indexer); attention inputs
// as in AttentionInputs (ForwardOutput::attention); query_pos [B, L] int64; key_valid [B, S] bool (optional);
// topk [B, L, K] int32/int64. Computed in fp32 (fp64 when any input is fp64); the loss has that dtype.
//
//   ForwardOutput out = model.forward({ids, mask}, {.return_topk = true, .return_indexer = true,
//                                                   .return_attention = true, .detach_indexer_inputs = true,
//                                                   .path = AttentionPath::kSparse});
//   at::Tensor l_i = at::zeros({});
//   for (size_t i = 0; i < out.indexer.size(); ++i)
//       l_i = l_i + indexer_sparse_loss(out.indexer[i], out.attention[i], out.topk[i], out.query_pos,
//                                       out.key_valid).loss / double(out.indexer.size());
//   (lm_loss + l_i).backward();   // the LM loss trains the model, l_i the indexers only
//   double recall = attention_recall(out.attention[0], out.topk[0], out.query_pos, out.key_valid);
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dsa/model.h"

namespace dsrl::dsa {

struct IndexerLoss {
    /// Scalar: the MEAN over valid queries of KL(p_t ‖ softmax(I_t)) (0 when there is none), so a fixed lr
    /// does not depend on the batch's token count. Differentiable in the indexer's q, k, w only.
    at::Tensor loss;
    /// Valid queries (the mean's denominator); loss · num_queries = Σ_t KL.
    int64_t num_queries = 0;
};

/// Dense warm-up loss (SPEC §3 indexer_warmup). `attention.lse` must be over all visible keys (a dense
/// forward: attention.dense); throws c10::Error otherwise or on inconsistent shapes.
/// impl (model.impl): kAuto computes the indexer logits of each tile and their backward with the CUDA kernels
/// (dsa::cuda::indexer_logits / indexer_logits_backward: no [tile, H_I, S] tensor, bf16 operands, fp32
/// accumulation) when they take the inputs (dsa::indexer_kernels_fit, as for the top-k: CUDA bf16 q — k is cast —
/// index_head_dim 128, index_n_heads a multiple of 16 up to 64) and the ATen path otherwise; kReference always
/// ATen; kCuda the kernels or a c10::Error.
IndexerLoss indexer_warmup_loss(const IndexerOutput& indexer,
                                const AttentionInputs& attention,
                                const at::Tensor& query_pos,
                                const at::Tensor& key_valid,
                                int64_t query_tile = 128,
                                Impl impl = Impl::kAuto);

/// Sparse-stage loss (SPEC §3 sparse_train) over the selected sets `topk` [B, L, K] (−1 = invalid). The per-head
/// normalizer over S_t is recomputed from the scores, so `attention.lse` is not used (either path works).
/// ATen on every device (its work is O(L · K) gathers; the fused logits kernels would score all S keys).
IndexerLoss indexer_sparse_loss(const IndexerOutput& indexer,
                                const AttentionInputs& attention,
                                const at::Tensor& topk,
                                const at::Tensor& query_pos,
                                const at::Tensor& key_valid,
                                int64_t query_tile = 128);

/// Attention recall (SPEC §3): mean over valid queries of the head-averaged dense attention mass inside
/// `topk` [B, L, K]. Uses attention.lse when it is dense, else recomputes the dense lse per tile. In [0, 1];
/// 1 when every visible key is selected; NaN when no query is valid.
double attention_recall(const AttentionInputs& attention,
                        const at::Tensor& topk,
                        const at::Tensor& query_pos,
                        const at::Tensor& key_valid,
                        int64_t query_tile = 128);

/// The best recall any selection of `k` keys per query could reach: the mean head-averaged dense attention mass
/// of each query's k heaviest visible keys (the ceiling of attention_recall at that k; a diffuse attention keeps
/// it low whatever the indexer does). Same inputs and conventions as attention_recall.
double attention_recall_oracle(const AttentionInputs& attention,
                               int64_t k,
                               const at::Tensor& query_pos,
                               const at::Tensor& key_valid,
                               int64_t query_tile = 128);

}  // namespace dsrl::dsa
