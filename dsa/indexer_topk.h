// Lightning-indexer scores and causal top-k selection (SPEC §2.2 steps 5-6), pure ATen (the reference that
// CUDA kernels will be checked against):
//   I(t, s) = Σ_j w[t, j] · scale · ReLU(q[t, j] · k[s])     (scale = d_I^-1/2; w already × H_I^-1/2)
// Key s is visible to query t iff s <= query_pos[t] and key_valid[s]. Selection keeps
// min(topk, #visible) keys; the remaining slots are −1 (invalid: never attended). Selection runs over query
// chunks, so memory is O(chunk · S), never a full [T, S] tensor when T > chunk.
//
// Shapes: q [B, T, H, D], k [B, S, D], w [B, T, H] (fp32 or bf16; scored in fp32),
//         query_pos [B, T] int64 (key index of each query), key_valid [B, S] bool (optional).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "core/dispatch.h"

namespace dsrl::dsa {

/// Unmasked indexer scores [B, T, S] fp32 (for tests, recall metrics and the indexer loss).
at::Tensor indexer_scores(const at::Tensor& q, const at::Tensor& k, const at::Tensor& w, double scale);

/// Causal top-k key indices [B, T, topk] int32 (−1 for invalid slots), ordered by descending score; equal
/// scores keep key order (the earlier key wins), so the selection does not depend on padding or chunking.
/// `query_chunk` bounds the working set (queries scored at once). `select_rows`, when given, takes the masked scores
/// [R, S] of a chunk and returns the same selection [R, topk] in one call (dsa::cuda::topk_rows).
at::Tensor indexer_topk(const at::Tensor& q,
                        const at::Tensor& k,
                        const at::Tensor& w,
                        double scale,
                        const at::Tensor& query_pos,
                        const at::Tensor& key_valid,
                        int64_t topk,
                        int64_t query_chunk = 1024,
                        at::Tensor (*select_rows)(const at::Tensor& scores, int64_t topk) = nullptr);

/// True when the indexer CUDA kernels take these inputs: a build with the kernels, q [B, T, H, 128] bf16 or fp16
/// on a CUDA device with H a multiple of 16 up to 64, k (any float dtype; the kernels score it in bf16) and w
/// (fp32 or bf16) on q's device. Shared by select_topk and the warm-up loss (dsa/indexer_loss.h).
bool indexer_kernels_fit(const at::Tensor& q, const at::Tensor& k, const at::Tensor& w);
/// Shapes of the indexer's inputs: q [B, T, H, D], k [B, S, D], w [B, T, H]; c10::Error naming the bad one.
void check_indexer_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& w);
/// What the kernels need and what they were given, for the error of impl cuda on inputs that do not fit.
KernelMismatch indexer_kernels_mismatch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& w);

/// Dispatch (model.impl) of indexer_topk: kAuto runs the CUDA kernels (dsa/indexer_cuda.h: bf16 logits fused
/// with the ReLU head sum, exact radix top-k) when the inputs are on a CUDA device in reduced precision (bf16
/// under autocast) with D = 128 and H a multiple of 16 up to 64 — k is then scored in bf16 too — and the
/// reference otherwise; kReference always the reference; kCuda the kernels or a c10::Error saying why not.
/// Same output either way (the kernels order ties like the reference; bf16 scoring may swap near-ties). Where the
/// scoring kernels do not fit but the inputs are on a CUDA device (kAuto), the reference scores select with the exact
/// top-k kernel (cuda::topk_rows: one launch instead of a segmented sort and its bookkeeping; the same result).
at::Tensor select_topk(const at::Tensor& q,
                       const at::Tensor& k,
                       const at::Tensor& w,
                       double scale,
                       const at::Tensor& query_pos,
                       const at::Tensor& key_valid,
                       int64_t topk,
                       Impl impl,
                       int64_t query_chunk = 1024);

}  // namespace dsrl::dsa
