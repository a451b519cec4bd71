// The pool slots a paged decode step's sparse attention reads, on CUDA as one kernel (dsa/model.cpp's ATen gather
// through the block table is the oracle): for each query the slots of its selected keys (the indexer's top-k), or of
// every visible key when the step attends densely; -1 where a key is absent or not visible.
//   if (paged_slots_fit(read, topk)) idx = cuda::paged_slots(read, topk, {}, {});
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

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

/// Whether paged_write takes these: slots contiguous CUDA int64 [N]; one to three pools [P, D_i] (the same P) and rows
/// [N, D_i] on that device, each with contiguous rows, of fp32 / bf16 / fp16; no row tracked by autograd.
bool paged_write_fits(const at::Tensor& slots,
                      const std::vector<at::Tensor>& pools,
                      const std::vector<at::Tensor>& rows);

/// pools[i].index_copy_(0, slots, rows[i].to(pools[i].scalar_type())) for every i, as one kernel; a slot outside
/// [0, P) writes nothing (index_copy_ would fail), and of rows with the same slot an unspecified one wins (as with
/// index_copy_). Throws c10::Error when !paged_write_fits.
void paged_write(const at::Tensor& slots, const std::vector<at::Tensor>& pools, const std::vector<at::Tensor>& rows);

/// A paged decode step's inputs computed from the rows' block tables and positions (one new token a row).
struct PagedStepInputs {
    at::Tensor write;      ///< [R, 1] int64: the slot of each row's position (-1 outside its table)
    at::Tensor read;       ///< [R, keys] int64: the slots of key positions 0 .. keys through the row's table
    at::Tensor key_valid;  ///< [R, keys] bool: key position <= the row's position
    at::Tensor cos, sin;   ///< [R, 1, half] fp32: the rotary factors of the positions (undefined without inv_freq)
};

/// Whether paged_step_inputs takes these: table contiguous CUDA int64 [R, NB], pos contiguous int64 [R] on its
/// device, 1 <= keys <= NB · block_size; inv_freq (if defined) fp32 [half] on that device.
bool paged_step_inputs_fit(
    const at::Tensor& table, const at::Tensor& pos, int64_t block_size, int64_t keys, const at::Tensor& inv_freq);

/// One kernel for rollout/engine.cpp's per-step ATen formulas (the oracle, dsa::Model::paged_decode_step):
///   read = table.index_select(1, key / bs) · bs + key % bs (key = arange(keys)), key_valid = key <= pos,
///   write = table.gather(1, pos / bs) · bs + pos % bs, and with inv_freq dsa/rope.cpp's
///   rope_cos_sin(pos) · attention_factor (the product only when attention_factor != 1). Throws c10::Error when
///   !paged_step_inputs_fit.
PagedStepInputs paged_step_inputs(const at::Tensor& table,
                                  const at::Tensor& pos,
                                  int64_t block_size,
                                  int64_t keys,
                                  const at::Tensor& inv_freq,
                                  double attention_factor);

}  // namespace dsrl::dsa::cuda
