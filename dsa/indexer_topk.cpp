// Dispatch of the indexer's top-k (dsa/indexer_topk.h; core/dispatch.h): the CUDA kernels (indexer_cuda.cpp)
// or the ATen reference (indexer_topk_ref.cpp). The kernels' entry points of a build without CUDA are here too.
#include "dsa/indexer_topk.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include "core/dispatch.h"
#include "dsa/indexer_cuda.h"

namespace dsrl::dsa {

void check_indexer_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& w) {
    TORCH_CHECK(q.dim() == 4, "indexer: q must be [B, T, H, D], got ", q.sizes());
    TORCH_CHECK(k.dim() == 3 && k.size(0) == q.size(0) && k.size(2) == q.size(3), "indexer: k must be [", q.size(0),
                ", S, ", q.size(3), "], got ", k.sizes());
    TORCH_CHECK(w.dim() == 3 && w.size(0) == q.size(0) && w.size(1) == q.size(1) && w.size(2) == q.size(2),
                "indexer: w must be [", q.size(0), ", ", q.size(1), ", ", q.size(2), "], got ", w.sizes());
}

bool indexer_kernels_fit(const at::Tensor& q, const at::Tensor& k, const at::Tensor& w) {
    return built_with_cuda() && q.is_cuda() && k.device() == q.device() && w.device() == q.device() &&
           (q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf) &&
           (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16) && q.dim() == 4 && q.size(3) == 128 &&
           q.size(2) % 16 == 0 && q.size(2) <= 64;
}

KernelMismatch indexer_kernels_mismatch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& w) {
    return {
        "CUDA bf16 q (bf16 model or autocast) with index_head_dim 128 and index_n_heads a multiple of 16 up to 64, "
        "w fp32 or bf16",
        c10::str("q ", q.sizes(), " ", q.scalar_type(), " on ", q.device(), ", k ", k.scalar_type(), ", w ",
                 w.scalar_type())};
}

at::Tensor select_topk(const at::Tensor& q,
                       const at::Tensor& k,
                       const at::Tensor& w,
                       double scale,
                       const at::Tensor& query_pos,
                       const at::Tensor& key_valid,
                       int64_t topk,
                       Impl impl,
                       int64_t query_chunk) {
    check_indexer_inputs(q, k, w);
    const bool fits = indexer_kernels_fit(q, k, w) && topk <= 2048;
    const auto mismatch = [&] {
        KernelMismatch m = indexer_kernels_mismatch(q, k, w);
        m.needs += ", and index_topk <= 2048";
        m.got += c10::str(", topk ", topk);
        return m;
    };
    if (use_kernels(impl, fits, "indexer top-k", mismatch)) {
        return cuda::indexer_topk(q.to(at::kBFloat16), k.to(at::kBFloat16), w, scale, query_pos, key_valid, topk,
                                  query_chunk);
    }
    if (built_with_cuda() && impl == Impl::kAuto && q.is_cuda() && topk <= 2048 && k.size(1) < (int64_t{1} << 31)) {
        return indexer_topk(q, k, w, scale, query_pos, key_valid, topk, query_chunk, &cuda::topk_rows);
    }
    return indexer_topk(q, k, w, scale, query_pos, key_valid, topk, query_chunk);
}

#ifndef DSRL_WITH_CUDA
namespace cuda {
namespace {
[[noreturn]] void no_kernels(const char* op) {
    TORCH_CHECK(false, op, ": this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
}  // namespace
at::Tensor indexer_logits(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, double, const at::Tensor&, const at::Tensor&) {
    no_kernels("indexer logits");
}
at::Tensor indexer_topk(const at::Tensor&,
                        const at::Tensor&,
                        const at::Tensor&,
                        double,
                        const at::Tensor&,
                        const at::Tensor&,
                        int64_t,
                        int64_t,
                        bool) {
    no_kernels("indexer top-k");
}
at::Tensor topk_rows(const at::Tensor&, int64_t) { no_kernels("top-k rows"); }
bool indexer_paged_fits(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t) {
    return false;
}
PagedTopk indexer_paged_topk(const at::Tensor&,
                             const at::Tensor&,
                             const at::Tensor&,
                             const at::Tensor&,
                             double,
                             const at::Tensor&,
                             const at::Tensor&,
                             int64_t,
                             bool,
                             const QueryRope*) {
    no_kernels("paged indexer top-k");
}
IndexerGrads indexer_logits_backward(const at::Tensor&,
                                     const at::Tensor&,
                                     const at::Tensor&,
                                     double,
                                     const at::Tensor&,
                                     const at::Tensor&,
                                     const at::Tensor&) {
    no_kernels("indexer logits backward");
}
}  // namespace cuda
#endif

}  // namespace dsrl::dsa
