// The ATen reference of the lightning indexer and its top-k (dsa/indexer_topk.h): the oracle of the CUDA kernels.
#include "dsa/indexer_topk.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <c10/util/Exception.h>

#include <limits>

namespace dsrl::dsa {
at::Tensor indexer_scores(const at::Tensor& q, const at::Tensor& k, const at::Tensor& w, double scale) {
    check_indexer_inputs(q, k, w);
    // [B, T, H, S]: per-head ReLU(q·k), then the weighted sum over heads.
    const at::Tensor per_head = at::relu(at::einsum("bthd,bsd->bths", {q.to(at::kFloat), k.to(at::kFloat)}) * scale);
    return at::einsum("bths,bth->bts", {per_head, w.to(at::kFloat)});
}

at::Tensor indexer_topk(const at::Tensor& q,
                        const at::Tensor& k,
                        const at::Tensor& w,
                        double scale,
                        const at::Tensor& query_pos,
                        const at::Tensor& key_valid,
                        int64_t topk,
                        int64_t query_chunk,
                        at::Tensor (*select_rows)(const at::Tensor& scores, int64_t topk)) {
    check_indexer_inputs(q, k, w);
    const int64_t batch = q.size(0);
    const int64_t num_queries = q.size(1);
    const int64_t num_keys = k.size(1);
    TORCH_CHECK(topk >= 1, "indexer_topk: topk must be >= 1, got ", topk);
    TORCH_CHECK(query_chunk >= 1, "indexer_topk: query_chunk must be >= 1, got ", query_chunk);
    TORCH_CHECK(query_pos.dim() == 2 && query_pos.size(0) == batch && query_pos.size(1) == num_queries,
                "indexer_topk: query_pos must be [", batch, ", ", num_queries, "], got ", query_pos.sizes());
    TORCH_CHECK(
        !key_valid.defined() || (key_valid.dim() == 2 && key_valid.size(0) == batch && key_valid.size(1) == num_keys),
        "indexer_topk: key_valid must be [", batch, ", ", num_keys, "], got ", key_valid.sizes());
    const auto int_opts = q.options().dtype(at::kInt);
    if (num_queries == 0) return at::empty({batch, 0, topk}, int_opts);
    const int64_t kept = std::min(topk, num_keys);
    const at::Tensor key_index = at::arange(num_keys, q.options().dtype(at::kLong));  // [S]
    std::vector<at::Tensor> chunks;
    for (int64_t t0 = 0; t0 < num_queries; t0 += query_chunk) {
        const int64_t len = std::min(query_chunk, num_queries - t0);
        at::Tensor scores = indexer_scores(q.narrow(1, t0, len), k, w.narrow(1, t0, len), scale);  // [B, c, S]
        at::Tensor visible = key_index.view({1, 1, num_keys}) <= query_pos.narrow(1, t0, len).unsqueeze(-1);
        if (key_valid.defined()) visible = visible.logical_and(key_valid.to(at::kBool).unsqueeze(1));
        scores = scores.masked_fill(visible.logical_not(), -std::numeric_limits<float>::infinity());
        if (select_rows != nullptr) {
            chunks.push_back(
                select_rows(scores.to(at::kFloat).reshape({batch * len, num_keys}), topk).view({batch, len, topk}));
            continue;
        }
        // A stable descending sort, not topk: equal scores (ReLU makes exact zeros common) resolve to the
        // earlier key, whatever the padding or chunking — so padded, unpadded and decoded runs select alike.
        auto [sorted, order] = at::sort(scores, /*stable=*/true, /*dim=*/-1, /*descending=*/true);
        const at::Tensor values = sorted.narrow(-1, 0, kept);
        const at::Tensor indices = order.narrow(-1, 0, kept);
        // Slots that landed on invisible keys are invalid: −1, never attended.
        at::Tensor idx =
            at::where(values == -std::numeric_limits<float>::infinity(), at::full_like(indices, -1), indices)
                .to(at::kInt);
        if (kept < topk) {
            idx = at::cat({idx, at::full({batch, len, topk - kept}, -1, int_opts)}, -1);
        }
        chunks.push_back(idx);
    }
    return at::cat(chunks, 1);
}

}  // namespace dsrl::dsa
