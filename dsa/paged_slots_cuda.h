// The pool slots a paged decode step's sparse attention reads, on CUDA as one kernel (dsa/model.cpp's ATen gather
// through the block table is the oracle): for each query the slots of its selected keys (the indexer's top-k), or of
// every visible key when the step attends densely; -1 where a key is absent or not visible.
//   if (paged_slots_fit(read, topk)) idx = cuda::paged_slots(read, topk, {}, {});
#pragma once

#include <ATen/core/Tensor.h>

namespace dsrl::dsa::cuda {

/// Whether the kernel takes these inputs: CUDA, read [B, S] int64 and topk [B, L, K] int32 (or undefined) contiguous.
bool paged_slots_fit(const at::Tensor& read, const at::Tensor& topk);

/// [B, L, K] int64: read[b, topk[b, l, j]] (-1 for topk < 0); with topk undefined, [B, L, S]: read[b, j] where
/// key_valid[b, j] (bool [B, S]) and j <= query_pos[b, l] (int64 [B, L]), else -1.
at::Tensor paged_slots(const at::Tensor& read,
                       const at::Tensor& topk,
                       const at::Tensor& key_valid,
                       const at::Tensor& query_pos,
                       int64_t len);

}  // namespace dsrl::dsa::cuda
