// MLA attention in the MQA (absorbed) form (SPEC §2.1, §2.3), pure ATen references:
//   score(t, h, s) = (q̃[t, h] · c_kv[s] + q_pe[t, h] · k_pe[s]) · scale
//   o_lat[t, h]    = Σ_s softmax_s(score) · c_kv[s]          (then o_h = W_UV · o_lat outside)
// Every key entry [c_kv | k_pe] is shared by all heads.
//  - sparse_mla_attention: over the entries selected per query (top-k indices, −1 = invalid), gathered per
//    query chunk; an autograd function that re-gathers each chunk in backward, so memory is O(chunk · k ·
//    (C + R + H)) plus the inputs and outputs, never O(T · S) nor every query's gathered entries.
//  - dense_mla_attention: all causal, non-padding keys (the exact "masked MHA" path for short sequences, the
//    indexer warm-up, and the oracle of the sparse path). An autograd function over query chunks (query_chunk
//    queries; 0 = about 2^27 scores per chunk) that recomputes each chunk's probabilities in backward, so
//    memory is O(chunk · H · S) plus the inputs and outputs, never O(T · H · S).
// Shapes: q_lat [B, T, H, C], q_pe [B, T, H, R], c_kv [B, S, C], k_pe [B, S, R], indices [B, T, K] int32/int64,
// query_pos [B, T] int64, key_valid [B, S] bool (optional). Outputs in the dtype of q_lat; lse fp32.
// A query with no valid key gets out = 0 and lse = −inf.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "core/dispatch.h"
#include "dsa/rope.h"

namespace dsrl::dsa {

struct AttentionOutput {
    at::Tensor out;  ///< [B, T, H, C]
    at::Tensor lse;  ///< [B, T, H] fp32 log-sum-exp of the scaled scores
};

/// The indices' range check (one reduction and a host sync): c10::Error naming the largest index when it is >= keys.
void check_sparse_indices(const at::Tensor& indices, int64_t keys);

/// check_indices false skips the range check of the indices (a reduction and a host sync), for callers whose
/// indices are in range by construction (the rollout engine's slots).
AttentionOutput sparse_mla_attention(const at::Tensor& q_lat,
                                     const at::Tensor& q_pe,
                                     const at::Tensor& c_kv,
                                     const at::Tensor& k_pe,
                                     const at::Tensor& indices,
                                     double scale,
                                     int64_t query_chunk = 256,
                                     bool check_indices = true);

AttentionOutput dense_mla_attention(const at::Tensor& q_lat,
                                    const at::Tensor& q_pe,
                                    const at::Tensor& c_kv,
                                    const at::Tensor& k_pe,
                                    const at::Tensor& query_pos,
                                    const at::Tensor& key_valid,
                                    double scale,
                                    int64_t query_chunk = 0);

/// Dispatch (model.impl): kAuto runs the CUDA kernels when cuda::sparse_mla_supported (CUDA, entry 512 + 64) with
/// q_lat bf16 — the other operands bf16, or fp32 (bf16 autocast) and then cast — and the reference otherwise;
/// kReference always the reference; kCuda the kernels or a c10::Error saying why not. check_indices false skips the
/// indices' range check on every path (the rollout's decode: no host sync inside its CUDA graphs). With q_rope, q_pe is
/// first rotated by it (rope == R): by the tensor-core kernel as it stages the queries where that kernel runs, else by
/// rotate_query.
AttentionOutput sparse_attention(const at::Tensor& q_lat,
                                 const at::Tensor& q_pe,
                                 const at::Tensor& c_kv,
                                 const at::Tensor& k_pe,
                                 const at::Tensor& indices,
                                 double scale,
                                 Impl impl,
                                 int64_t query_chunk = 256,
                                 bool check_indices = true,
                                 const QueryRope* q_rope = nullptr);

/// The CUDA kernels (dsa/kernels/sparse_mla.cuh) behind an autograd function; sm_90 builds only.
namespace cuda {

/// True when the kernels take these inputs: CUDA bf16 on one device, entry 512 + 64 (the full-size MLA latent).
bool sparse_mla_supported(const at::Tensor& q_lat,
                          const at::Tensor& q_pe,
                          const at::Tensor& c_kv,
                          const at::Tensor& k_pe);

/// Forward kernel: kWgmma (Hopper warpgroup MMA; the default, taken on sm_90) or kMmaSync (the portable
/// mma.sync kernel, kept as the benchmark's baseline). The backward kernel is the same for both.
enum class MlaKernel { kWgmma, kMmaSync };

/// Same contract as dsa::sparse_mla_attention (out bf16, lse fp32, −1 = invalid entry), differentiable in q_lat,
/// q_pe, c_kv and k_pe; lse is not differentiable. Small T (decode) splits each query's entries over several
/// blocks. Throws c10::Error on unsupported inputs or (check_indices, a host sync) an index >= S.
AttentionOutput sparse_mla_attention(const at::Tensor& q_lat,
                                     const at::Tensor& q_pe,
                                     const at::Tensor& c_kv,
                                     const at::Tensor& k_pe,
                                     const at::Tensor& indices,
                                     double scale,
                                     MlaKernel kernel = MlaKernel::kWgmma,
                                     bool check_indices = true);

/// The forward-only SIMT kernel (dsa/kernels/sparse_mla_simt.cuh) for shapes the Hopper kernels do not take: CUDA
/// q_lat / q_pe of one type and c_kv / k_pe of one type (fp32, bf16 or fp16), rows of c_kv / k_pe contiguous (a
/// pool or cache view), H · C <= 8192, the block's shared memory within the device's limit, and no input tracked by
/// autograd. dsa::sparse_attention takes it under kAuto.
bool sparse_mla_simt_fits(const at::Tensor& q_lat,
                          const at::Tensor& q_pe,
                          const at::Tensor& c_kv,
                          const at::Tensor& k_pe,
                          const at::Tensor& indices);

/// dsa::sparse_mla_attention's contract (out in q_lat's type, lse fp32, −1 = invalid; an index outside [0, S) is
/// skipped like −1), no autograd. Throws c10::Error when !sparse_mla_simt_fits. With `tensor_cores` and bf16 / fp16
/// operands at the shapes sparse_mla_simt_uses_tensor_cores names, the tensor-core kernel
/// (dsa/kernels/sparse_mla_mma.cuh: scores with fp32 accumulation, P rounded to the operand type for P · V, as the
/// Hopper kernels); otherwise the SIMT kernel (fp32 arithmetic throughout).
/// With q_rope (its rope == R, cos / sin [B, T, R / 2]), q_pe is rotated by it first: by the tensor-core kernel as it
/// stages each query (interleaved pairs), else by dsa::rotate_query before the launch — the same bits.
AttentionOutput sparse_mla_simt(const at::Tensor& q_lat,
                                const at::Tensor& q_pe,
                                const at::Tensor& c_kv,
                                const at::Tensor& k_pe,
                                const at::Tensor& indices,
                                double scale,
                                bool tensor_cores = true,
                                const QueryRope* q_rope = nullptr);

/// Whether sparse_mla_simt takes the tensor-core kernel for these inputs: sparse_mla_simt_fits, q and the cache of one
/// type (bf16 or fp16), H <= 64, C a multiple of 16, R of 8, ceil(H / 16) · C <= 512, the cache's rows and strides
/// 16-byte aligned.
bool sparse_mla_simt_uses_tensor_cores(const at::Tensor& q_lat,
                                       const at::Tensor& q_pe,
                                       const at::Tensor& c_kv,
                                       const at::Tensor& k_pe,
                                       const at::Tensor& indices);

/// The tensor-core kernel's sub-tiles per tile from here on: 0 for the default (one: the tile staged whole), or 1, 2
/// or 4 (a ring of sub-tiles; fewer where the tile is too small). Starts as DSRL_ATTN_STAGES (core/env.cpp). For tests
/// and measurements: every choice gives the same results.
void set_sparse_mla_mma_stages(int64_t stages);

}  // namespace cuda

}  // namespace dsrl::dsa
