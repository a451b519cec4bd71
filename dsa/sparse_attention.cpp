#include "dsa/sparse_attention.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <limits>

namespace dsrl::dsa {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void check_qkv(const at::Tensor& q_lat, const at::Tensor& q_pe, const at::Tensor& c_kv, const at::Tensor& k_pe) {
    TORCH_CHECK(q_lat.dim() == 4 && q_pe.dim() == 4 && q_pe.sizes().slice(0, 3) == q_lat.sizes().slice(0, 3),
                "mla attention: q_lat must be [B, T, H, C] and q_pe [B, T, H, R] with equal B, T, H; got ",
                q_lat.sizes(), " and ", q_pe.sizes());
    TORCH_CHECK(c_kv.dim() == 3 && c_kv.size(0) == q_lat.size(0) && c_kv.size(2) == q_lat.size(3),
                "mla attention: c_kv must be [", q_lat.size(0), ", S, ", q_lat.size(3), "], got ", c_kv.sizes());
    TORCH_CHECK(k_pe.dim() == 3 && k_pe.size(0) == c_kv.size(0) && k_pe.size(1) == c_kv.size(1) &&
                    k_pe.size(2) == q_pe.size(3),
                "mla attention: k_pe must be [", c_kv.size(0), ", ", c_kv.size(1), ", ", q_pe.size(3), "], got ",
                k_pe.sizes());
}

// Softmax over the last dim of fp32 scores [.., K] with −inf for masked entries; rows with no finite entry
// give zero probabilities (not NaN) and lse = −inf.
std::pair<at::Tensor, at::Tensor> masked_softmax(const at::Tensor& scores) {
    const at::Tensor lse = at::logsumexp(scores, -1);
    const at::Tensor empty_row = lse.isneginf().unsqueeze(-1);
    const at::Tensor probs = at::where(empty_row, at::zeros_like(scores), at::softmax(scores, -1));
    return {probs, lse};
}

}  // namespace

AttentionOutput sparse_mla_attention(const at::Tensor& q_lat,
                                     const at::Tensor& q_pe,
                                     const at::Tensor& c_kv,
                                     const at::Tensor& k_pe,
                                     const at::Tensor& indices,
                                     double scale,
                                     int64_t query_chunk) {
    check_qkv(q_lat, q_pe, c_kv, k_pe);
    TORCH_CHECK(indices.dim() == 3 && indices.size(0) == q_lat.size(0) && indices.size(1) == q_lat.size(1),
                "sparse attention: indices must be [", q_lat.size(0), ", ", q_lat.size(1), ", K], got ",
                indices.sizes());
    TORCH_CHECK(query_chunk >= 1, "sparse attention: query_chunk must be >= 1, got ", query_chunk);
    const int64_t batch = q_lat.size(0);
    const int64_t num_queries = q_lat.size(1);
    const int64_t num_keys = c_kv.size(1);
    const int64_t kv_lora = c_kv.size(2);
    const int64_t rope = k_pe.size(2);
    std::vector<at::Tensor> outs, lses;
    for (int64_t t0 = 0; t0 < num_queries; t0 += query_chunk) {
        const int64_t len = std::min(query_chunk, num_queries - t0);
        const at::Tensor idx = indices.narrow(1, t0, len).to(at::kLong);  // [B, c, K]
        TORCH_CHECK(idx.numel() == 0 || idx.max().item<int64_t>() < num_keys, "sparse attention: index ",
                    idx.numel() ? idx.max().item<int64_t>() : 0, " out of range for ", num_keys, " keys");
        const at::Tensor valid = idx.ge(0);
        const at::Tensor safe = idx.clamp_min(0);
        const int64_t k = idx.size(2);
        // Gather the selected entries: [B, c·K, C] and [B, c·K, R] -> [B, c, K, ·].
        const at::Tensor flat = safe.reshape({batch, len * k});
        const at::Tensor ckv = at::gather(c_kv, 1, flat.unsqueeze(-1).expand({batch, len * k, kv_lora}))
                                   .view({batch, len, k, kv_lora});
        const at::Tensor kpe =
            at::gather(k_pe, 1, flat.unsqueeze(-1).expand({batch, len * k, rope})).view({batch, len, k, rope});
        const at::Tensor q1 = q_lat.narrow(1, t0, len).to(at::kFloat);
        const at::Tensor q2 = q_pe.narrow(1, t0, len).to(at::kFloat);
        at::Tensor scores = (at::einsum("bthc,btkc->bthk", {q1, ckv.to(at::kFloat)}) +
                             at::einsum("bthr,btkr->bthk", {q2, kpe.to(at::kFloat)})) *
                            scale;
        scores = scores.masked_fill(valid.unsqueeze(2).logical_not(), kNegInf);
        auto [probs, lse] = masked_softmax(scores);
        outs.push_back(at::einsum("bthk,btkc->bthc", {probs, ckv.to(at::kFloat)}).to(q_lat.scalar_type()));
        lses.push_back(lse);
    }
    if (outs.empty()) {
        return {q_lat.new_zeros({batch, 0, q_lat.size(2), kv_lora}),
                q_lat.new_zeros({batch, 0, q_lat.size(2)}, q_lat.options().dtype(at::kFloat))};
    }
    return {at::cat(outs, 1), at::cat(lses, 1)};
}

AttentionOutput dense_mla_attention(const at::Tensor& q_lat,
                                    const at::Tensor& q_pe,
                                    const at::Tensor& c_kv,
                                    const at::Tensor& k_pe,
                                    const at::Tensor& query_pos,
                                    const at::Tensor& key_valid,
                                    double scale) {
    check_qkv(q_lat, q_pe, c_kv, k_pe);
    const int64_t num_keys = c_kv.size(1);
    at::Tensor scores = (at::einsum("bthc,bsc->bths", {q_lat.to(at::kFloat), c_kv.to(at::kFloat)}) +
                         at::einsum("bthr,bsr->bths", {q_pe.to(at::kFloat), k_pe.to(at::kFloat)})) *
                        scale;
    at::Tensor visible = at::arange(num_keys, query_pos.options()).view({1, 1, num_keys}) <= query_pos.unsqueeze(-1);
    if (key_valid.defined()) visible = visible.logical_and(key_valid.to(at::kBool).unsqueeze(1));
    scores = scores.masked_fill(visible.unsqueeze(2).logical_not(), kNegInf);  // [B, T, H, S]
    auto [probs, lse] = masked_softmax(scores);
    return {at::einsum("bths,bsc->bthc", {probs, c_kv.to(at::kFloat)}).to(q_lat.scalar_type()), lse};
}

AttentionOutput sparse_attention(const at::Tensor& q_lat,
                                 const at::Tensor& q_pe,
                                 const at::Tensor& c_kv,
                                 const at::Tensor& k_pe,
                                 const at::Tensor& indices,
                                 double scale,
                                 Impl impl,
                                 int64_t query_chunk) {
    if (impl != Impl::kReference && cuda::sparse_mla_supported(q_lat, q_pe, c_kv, k_pe)) {
        return cuda::sparse_mla_attention(q_lat, q_pe, c_kv, k_pe, indices, scale);
    }
    TORCH_CHECK(impl != Impl::kCuda, "sparse attention: model.impl is cuda but the kernels cannot take these inputs ",
                "(they need a CUDA build", cuda::sparse_mla_available() ? "" : " — this one has none",
                ", CUDA bf16 tensors and kv_lora_rank 512 + qk_rope_head_dim 64); got q_lat ", q_lat.sizes(), " ",
                q_lat.scalar_type(), " on ", q_lat.device(), ", k_pe ", k_pe.sizes(),
                "; use model.impl auto or reference");
    return sparse_mla_attention(q_lat, q_pe, c_kv, k_pe, indices, scale, query_chunk);
}

#ifndef DSRL_WITH_CUDA
namespace cuda {
bool sparse_mla_available() { return false; }
bool sparse_mla_supported(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
    return false;
}
AttentionOutput sparse_mla_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const at::Tensor&, double, MlaKernel) {
    TORCH_CHECK(false, "sparse attention: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
}  // namespace cuda
#endif

}  // namespace dsrl::dsa
