// Host wrappers of the indexer kernels: argument checks, device guard, current stream, Tensor -> params,
// launch checks. The logits backward runs the kernels for bf16 q and k, fp32 ATen products otherwise.
#include "dsa/indexer_cuda.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/TensorOperators.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/zeros.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/kernel_elem.h"
#include "dsa/kernels/indexer.cuh"
#include "dsa/kernels/indexer_paged.cuh"
#include "dsa/kernels/topk.cuh"

namespace dsrl::dsa::cuda {
namespace {

using kernels::kIndexerDim;
using kernels::kIndexerMaxHeads;

void check_cuda(const char* op, const char* name, const at::Tensor& t, c10::Device device) {
    TORCH_CHECK(t.device().is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
    TORCH_CHECK(t.device() == device, op, ": ", name, " must be on ", device, " (like q), got ", t.device());
}

// Shapes and devices of (q, k, w, query_pos, key_valid); returns {B, T, H, S}.
struct Dims {
    int64_t batch, queries, heads, keys;
};
Dims check_indexer_args(const char* op,
                        const at::Tensor& q,
                        const at::Tensor& k,
                        const at::Tensor& w,
                        const at::Tensor& query_pos,
                        const at::Tensor& key_valid) {
    TORCH_CHECK(q.defined() && q.dim() == 4, op, ": q must be [B, T, H, D], got ",
                q.defined() ? q.sizes() : c10::IntArrayRef{});
    const c10::Device device = q.device();
    check_cuda(op, "q", q, device);
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3);
    TORCH_CHECK(D == kIndexerDim, op, ": the kernels need head dim D = ", kIndexerDim, ", got q of shape ", q.sizes());
    TORCH_CHECK(H % 16 == 0 && H >= 16 && H <= kIndexerMaxHeads, op, ": the kernels need H a multiple of 16 in [16, ",
                kIndexerMaxHeads, "], got q of shape ", q.sizes());
    TORCH_CHECK(k.defined() && k.dim() == 3 && k.size(0) == B && k.size(2) == D, op, ": k must be [", B, ", S, ", D,
                "], got ", k.defined() ? k.sizes() : c10::IntArrayRef{});
    check_cuda(op, "k", k, device);
    const int64_t S = k.size(1);
    TORCH_CHECK(S < std::numeric_limits<int32_t>::max(), op, ": at most 2^31 - 1 keys, got k of shape ", k.sizes());
    TORCH_CHECK(w.defined() && w.dim() == 3 && w.size(0) == B && w.size(1) == T && w.size(2) == H, op, ": w must be [",
                B, ", ", T, ", ", H, "], got ", w.defined() ? w.sizes() : c10::IntArrayRef{});
    check_cuda(op, "w", w, device);
    TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16, op, ": w must be fp32 or bf16, got ",
                w.scalar_type());
    TORCH_CHECK(query_pos.defined() && query_pos.dim() == 2 && query_pos.size(0) == B && query_pos.size(1) == T, op,
                ": query_pos must be [", B, ", ", T, "], got ",
                query_pos.defined() ? query_pos.sizes() : c10::IntArrayRef{});
    check_cuda(op, "query_pos", query_pos, device);
    TORCH_CHECK(!at::isFloatingType(query_pos.scalar_type()), op, ": query_pos must be an integer tensor, got ",
                query_pos.scalar_type());
    if (key_valid.defined()) {
        TORCH_CHECK(key_valid.dim() == 2 && key_valid.size(0) == B && key_valid.size(1) == S, op,
                    ": key_valid must be [", B, ", ", S, "], got ", key_valid.sizes());
        check_cuda(op, "key_valid", key_valid, device);
    }
    TORCH_CHECK(B <= 65535, op, ": at most 65535 batch elements, got ", B);
    return {B, T, H, S};
}

// Fills the params shared by the bf16 and fp8 logits kernels. Tensors must outlive the launch.
kernels::IndexerLogitsParams logits_params(const Dims& d,
                                           const at::Tensor& q,
                                           const at::Tensor& k,
                                           const at::Tensor& w,
                                           const at::Tensor& query_pos,
                                           const at::Tensor& key_valid,
                                           double scale) {
    kernels::IndexerLogitsParams p{};
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.w = w.data_ptr<float>();
    p.query_pos = query_pos.data_ptr<int64_t>();
    p.key_valid = key_valid.defined() ? key_valid.data_ptr<bool>() : nullptr;
    p.batch = d.batch;
    p.num_queries = d.queries;
    p.num_keys = d.keys;
    p.heads = static_cast<int>(d.heads);
    p.q_batch_stride = d.queries * d.heads * kIndexerDim;
    p.w_batch_stride = d.queries * d.heads;
    p.qpos_batch_stride = d.queries;
    p.scale = static_cast<float>(scale);
    p.write_invisible = true;
    return p;
}

at::Tensor contiguous_float(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }
at::Tensor contiguous_long(const at::Tensor& t) { return t.to(at::kLong).contiguous(); }
at::Tensor contiguous_bool(const at::Tensor& t) { return t.defined() ? t.to(at::kBool).contiguous() : at::Tensor(); }

void check_scale(const char* op, double scale) {
    TORCH_CHECK(scale >= 0.0 && std::isfinite(scale), op, ": scale must be finite and >= 0, got ", scale);
}

cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

}  // namespace

at::Tensor indexer_logits(const at::Tensor& q,
                          const at::Tensor& k,
                          const at::Tensor& w,
                          double scale,
                          const at::Tensor& query_pos,
                          const at::Tensor& key_valid) {
    RECORD_FUNCTION("dsrl::indexer_logits", std::vector<c10::IValue>());  // names the kernel in profiles
    constexpr const char* op = "indexer_logits (cuda)";
    const Dims d = check_indexer_args(op, q, k, w, query_pos, key_valid);
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, op, ": q must be bf16, got ", q.scalar_type(),
                " (cast with .to(at::kBFloat16))");
    TORCH_CHECK(k.scalar_type() == at::kBFloat16, op, ": k must be bf16, got ", k.scalar_type(),
                " (cast with .to(at::kBFloat16))");
    check_scale(op, scale);
    const c10::cuda::CUDAGuard on_device(q.device());
    const at::Tensor qc = q.contiguous(), kc = k.contiguous(), wc = contiguous_float(w);
    const at::Tensor pos = contiguous_long(query_pos), valid = contiguous_bool(key_valid);
    at::Tensor out = at::empty({d.batch, d.queries, d.keys}, q.options().dtype(at::kFloat));
    kernels::IndexerLogitsParams p = logits_params(d, qc, kc, wc, pos, valid, scale);
    p.out = out.data_ptr<float>();
    C10_CUDA_CHECK(kernels::launch_indexer_logits(p, stream_of(q)));
    return out;
}

Fp8Rows quantize_fp8_rows(const at::Tensor& x) {
    TORCH_CHECK(x.defined() && x.dim() >= 1, "quantize_fp8_rows: x must have at least one dimension");
    TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
                "quantize_fp8_rows: x must be bf16 or fp32, got ", x.scalar_type());
    constexpr double kE4m3Max = 448.0;
    const at::Tensor xf = x.to(at::kFloat);
    const at::Tensor scales = xf.abs().amax({-1}).clamp_min(1e-10) / kE4m3Max;
    const at::Tensor values =
        (xf / scales.unsqueeze(-1)).clamp(-kE4m3Max, kE4m3Max).to(at::kFloat8_e4m3fn).contiguous();
    return {values, scales.contiguous()};
}

at::Tensor indexer_logits_fp8(const at::Tensor& q8,
                              const at::Tensor& q_scale,
                              const at::Tensor& k8,
                              const at::Tensor& k_scale,
                              const at::Tensor& w,
                              double scale,
                              const at::Tensor& query_pos,
                              const at::Tensor& key_valid) {
    constexpr const char* op = "indexer_logits_fp8 (cuda)";
    const Dims d = check_indexer_args(op, q8, k8, w, query_pos, key_valid);
    TORCH_CHECK(q8.scalar_type() == at::kFloat8_e4m3fn, op, ": q8 must be float8_e4m3fn, got ", q8.scalar_type());
    TORCH_CHECK(k8.scalar_type() == at::kFloat8_e4m3fn, op, ": k8 must be float8_e4m3fn, got ", k8.scalar_type());
    TORCH_CHECK(q_scale.defined() && q_scale.sizes() == w.sizes(), op, ": q_scale must be [", d.batch, ", ", d.queries,
                ", ", d.heads, "], got ", q_scale.defined() ? q_scale.sizes() : c10::IntArrayRef{});
    TORCH_CHECK(k_scale.defined() && k_scale.dim() == 2 && k_scale.size(0) == d.batch && k_scale.size(1) == d.keys, op,
                ": k_scale must be [", d.batch, ", ", d.keys, "], got ",
                k_scale.defined() ? k_scale.sizes() : c10::IntArrayRef{});
    check_cuda(op, "q_scale", q_scale, q8.device());
    check_cuda(op, "k_scale", k_scale, q8.device());
    check_scale(op, scale);
    const c10::cuda::CUDAGuard on_device(q8.device());
    const auto& prop = *at::cuda::getCurrentDeviceProperties();
    TORCH_CHECK(prop.major * 10 + prop.minor >= 89, op, ": e4m3 tensor cores need sm_89+, got sm_", prop.major,
                prop.minor);
    const at::Tensor qc = q8.contiguous(), kc = k8.contiguous(), wc = contiguous_float(w);
    const at::Tensor qs = contiguous_float(q_scale), ks = contiguous_float(k_scale);
    const at::Tensor pos = contiguous_long(query_pos), valid = contiguous_bool(key_valid);
    at::Tensor out = at::empty({d.batch, d.queries, d.keys}, w.options().dtype(at::kFloat));
    kernels::IndexerLogitsParams p = logits_params(d, qc, kc, wc, pos, valid, scale);
    p.fp8 = true;
    p.q_scale = qs.data_ptr<float>();
    p.k_scale = ks.data_ptr<float>();
    p.out = out.data_ptr<float>();
    C10_CUDA_CHECK(kernels::launch_indexer_logits(p, stream_of(q8)));
    return out;
}

at::Tensor topk_rows(const at::Tensor& logits, int64_t topk) {
    RECORD_FUNCTION("dsrl::topk_rows", std::vector<c10::IValue>());  // names the kernel in profiles
    constexpr const char* op = "topk_rows (cuda)";
    TORCH_CHECK(logits.defined() && logits.dim() == 2, op, ": logits must be [R, S], got ",
                logits.defined() ? logits.sizes() : c10::IntArrayRef{});
    TORCH_CHECK(logits.device().is_cuda(), op, ": logits must be a CUDA tensor, got device ", logits.device());
    TORCH_CHECK(logits.scalar_type() == at::kFloat, op, ": logits must be fp32, got ", logits.scalar_type());
    TORCH_CHECK(topk >= 1 && topk <= kernels::kTopkMax, op, ": topk must be in [1, ", kernels::kTopkMax, "], got ",
                topk);
    TORCH_CHECK(logits.size(1) < std::numeric_limits<int32_t>::max(), op, ": at most 2^31 - 1 columns, got ",
                logits.sizes());
    TORCH_CHECK(logits.size(0) <= std::numeric_limits<int32_t>::max(), op, ": at most 2^31 - 1 rows, got ",
                logits.sizes());
    const c10::cuda::CUDAGuard on_device(logits.device());
    const at::Tensor x = logits.stride(1) == 1 ? logits : logits.contiguous();
    at::Tensor out = at::empty({x.size(0), topk}, x.options().dtype(at::kInt));
    if (x.size(0) == 0) return out;
    kernels::TopkParams p{};
    p.logits = x.data_ptr<float>();
    p.num_rows = x.size(0);
    p.num_cols = x.size(1);
    p.row_stride = x.size(0) > 1 ? x.stride(0) : x.size(1);
    p.rows_per_group = x.size(0);
    p.row_last = nullptr;
    p.last_group_stride = 0;
    p.topk = static_cast<int>(topk);
    p.out = out.data_ptr<int32_t>();
    p.out_group_stride = x.size(0);
    C10_CUDA_CHECK(kernels::launch_topk_rows(p, stream_of(x)));
    return out;
}

bool indexer_paged_fits(
    const at::Tensor& q, const at::Tensor& pool_k, const at::Tensor& w, const at::Tensor& read, int64_t topk) {
    if (!q.defined() || !pool_k.defined() || !w.defined() || !read.defined() || !q.is_cuda() || q.dim() != 4 ||
        pool_k.dim() != 2 || w.dim() != 3 || read.dim() != 2)
        return false;
    const c10::Device dev = q.device();
    const int64_t H = q.size(2), D = q.size(3);
    const int64_t padded = (H + 7) / 8 * 8;
    const int64_t pool_align = pool_k.scalar_type() == at::kBFloat16 ? 8 : 4;  // elements in 16 bytes
    return pool_k.device() == dev && w.device() == dev && read.device() == dev && elem_kernel_takes(q.scalar_type()) &&
           elem_kernel_takes(w.scalar_type()) &&
           (pool_k.scalar_type() == at::kBFloat16 || pool_k.scalar_type() == at::kFloat) && H >= 1 && D % 8 == 0 &&
           D > 0 && padded * D <= kernels::kPagedIndexerMaxQ && q.stride(3) == 1 && q.stride(2) == D &&
           pool_k.size(1) == D && pool_k.stride(1) == 1 && pool_k.stride(0) % pool_align == 0 &&
           aligned16(pool_k.data_ptr()) && w.size(0) == q.size(0) && w.size(1) == q.size(1) && w.size(2) == H &&
           w.stride(2) == 1 && read.scalar_type() == at::kLong && read.is_contiguous() && read.size(0) == q.size(0) &&
           read.size(1) < std::numeric_limits<int32_t>::max() && topk >= 1 && topk <= kernels::kTopkMax;
}

PagedTopk indexer_paged_topk(const at::Tensor& q,
                             const at::Tensor& pool_k,
                             const at::Tensor& read,
                             const at::Tensor& w,
                             double scale,
                             const at::Tensor& query_pos,
                             const at::Tensor& key_valid,
                             int64_t topk,
                             bool one_launch,
                             const QueryRope* q_rope) {
    RECORD_FUNCTION("dsrl::indexer_paged_topk", std::vector<c10::IValue>());  // names the kernels in profiles
    constexpr const char* op = "indexer_paged_topk (cuda)";
    TORCH_CHECK(indexer_paged_fits(q, pool_k, w, read, topk), op,
                ": needs CUDA q [B, L, H, D] (D % 8 == 0, ceil(H / 8) * 8 * D <= ", kernels::kPagedIndexerMaxQ,
                "), pool_k [P, D] bf16 / fp32 with aligned rows, w [B, L, H], read int64 [B, S] and topk in [1, ",
                kernels::kTopkMax, "]; got q ", q.sizes(), " ", q.scalar_type(), ", pool_k ", pool_k.sizes(), " ",
                pool_k.scalar_type(), ", w ", w.sizes(), ", read ", read.sizes(), " ", read.scalar_type(), ", topk ",
                topk);
    check_scale(op, scale);
    const int64_t B = q.size(0), L = q.size(1), S = read.size(1);
    TORCH_CHECK(query_pos.defined() && query_pos.dim() == 2 && query_pos.size(0) == B && query_pos.size(1) == L, op,
                ": query_pos must be [", B, ", ", L, "], got ",
                query_pos.defined() ? query_pos.sizes() : at::IntArrayRef{});
    check_cuda(op, "query_pos", query_pos, q.device());
    TORCH_CHECK(!key_valid.defined() || key_valid.sizes() == read.sizes(), op, ": key_valid must be [", B, ", ", S,
                "], got ", key_valid.sizes());
    if (key_valid.defined()) check_cuda(op, "key_valid", key_valid, q.device());
    const c10::cuda::CUDAGuard on_device(q.device());
    const at::Tensor pos = contiguous_long(query_pos), valid = contiguous_bool(key_valid);
    const auto opts = q.options();
    PagedTopk r{at::empty({B, L, topk}, opts.dtype(at::kInt)), at::empty({B, L, topk}, opts.dtype(at::kLong))};
    if (B * L == 0) return r;
    if (q_rope != nullptr) check_query_rope(op, *q_rope, B * L, q.size(3), q.device());
    const at::Tensor rope_cos = q_rope != nullptr ? q_rope->cos.contiguous() : at::Tensor();
    const at::Tensor rope_sin = q_rope != nullptr ? q_rope->sin.contiguous() : at::Tensor();
    kernels::IndexerPagedParams p{.q = q.data_ptr(),
                                  .q_type = kernel_elem(q.scalar_type()),
                                  .pool = pool_k.data_ptr(),
                                  .pool_bf16 = pool_k.scalar_type() == at::kBFloat16,
                                  .w = w.data_ptr(),
                                  .w_type = kernel_elem(w.scalar_type()),
                                  .read = read.data_ptr<int64_t>(),
                                  .key_valid = valid.defined() ? valid.data_ptr<bool>() : nullptr,
                                  .query_pos = pos.data_ptr<int64_t>(),
                                  .out = nullptr,
                                  .batch = B,
                                  .len = L,
                                  .keys = S,
                                  .pool_rows = pool_k.size(0),
                                  .heads = static_cast<int>(q.size(2)),
                                  .dim = static_cast<int>(q.size(3)),
                                  .q_batch_stride = q.stride(0),
                                  .q_len_stride = q.stride(1),
                                  .w_batch_stride = w.stride(0),
                                  .w_len_stride = w.stride(1),
                                  .pool_stride = pool_k.stride(0),
                                  .scale = static_cast<float>(scale)};
    if (q_rope != nullptr) {
        p.q_cos = rope_cos.data_ptr<float>();
        p.q_sin = rope_sin.data_ptr<float>();
        p.q_rope = static_cast<int>(q_rope->rope);
        p.q_rope_interleaved = q_rope->interleaved;
    }
    kernels::TopkParams tp{};
    tp.num_rows = B * L;
    tp.num_cols = S;
    tp.row_stride = S;
    tp.rows_per_group = L;
    tp.row_last = pos.data_ptr<int64_t>();
    tp.last_group_stride = L;
    tp.topk = static_cast<int>(topk);
    tp.out = r.keys.data_ptr<int32_t>();
    tp.out_group_stride = L;
    tp.slot_of = read.data_ptr<int64_t>();
    tp.slot_group_stride = S;
    tp.slots_out = r.slots.data_ptr<int64_t>();
    if (one_launch && S <= kernels::kRankMax) {  // a decode's short rows: scored and selected in one kernel
        C10_CUDA_CHECK(kernels::launch_indexer_paged_rank(p, tp, stream_of(q)));
        return r;
    }
    at::Tensor scores = at::empty({B * L, S}, opts.dtype(at::kFloat));
    if (S > 0) {
        kernels::IndexerPagedParams ps = p;
        ps.out = scores.data_ptr<float>();
        C10_CUDA_CHECK(kernels::launch_indexer_paged(ps, at::cuda::getCurrentDeviceProperties()->multiProcessorCount,
                                                     stream_of(q)));
    }
    tp.logits = scores.data_ptr<float>();
    C10_CUDA_CHECK(kernels::launch_topk_rows(tp, stream_of(q)));
    return r;
}

at::Tensor indexer_topk(const at::Tensor& q,
                        const at::Tensor& k,
                        const at::Tensor& w,
                        double scale,
                        const at::Tensor& query_pos,
                        const at::Tensor& key_valid,
                        int64_t topk,
                        int64_t query_chunk,
                        bool fp8) {
    constexpr const char* op = "indexer_topk (cuda)";
    const Dims d = check_indexer_args(op, q, k, w, query_pos, key_valid);
    TORCH_CHECK(topk >= 1 && topk <= kernels::kTopkMax, op, ": topk must be in [1, ", kernels::kTopkMax, "], got ",
                topk);
    TORCH_CHECK(query_chunk >= 1, op, ": query_chunk must be >= 1, got ", query_chunk);
    check_scale(op, scale);
    if (fp8) {
        TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kFloat, op,
                    ": with fp8, q must be bf16 or fp32, got ", q.scalar_type());
        TORCH_CHECK(k.scalar_type() == at::kBFloat16 || k.scalar_type() == at::kFloat, op,
                    ": with fp8, k must be bf16 or fp32, got ", k.scalar_type());
    } else {
        TORCH_CHECK(q.scalar_type() == at::kBFloat16, op, ": q must be bf16, got ", q.scalar_type(),
                    " (cast with .to(at::kBFloat16), or pass fp8 = true)");
        TORCH_CHECK(k.scalar_type() == at::kBFloat16, op, ": k must be bf16, got ", k.scalar_type(),
                    " (cast with .to(at::kBFloat16), or pass fp8 = true)");
    }
    const c10::cuda::CUDAGuard on_device(q.device());
    at::Tensor out = at::empty({d.batch, d.queries, topk}, q.options().dtype(at::kInt));
    if (d.batch == 0 || d.queries == 0) return out;
    const cudaStream_t stream = stream_of(q);
    const at::Tensor wc = contiguous_float(w), pos = contiguous_long(query_pos), valid = contiguous_bool(key_valid);

    at::Tensor qc, kc, qs, ks;
    if (fp8) {
        Fp8Rows q8 = quantize_fp8_rows(q), k8 = quantize_fp8_rows(k);
        qc = q8.values;
        qs = q8.scales;
        kc = k8.values;
        ks = k8.scales;
    } else {
        qc = q.contiguous();
        kc = k.contiguous();
    }
    kernels::IndexerLogitsParams lp = logits_params(d, qc, kc, wc, pos, valid, scale);
    lp.fp8 = fp8;
    if (fp8) {
        lp.q_scale = qs.data_ptr<float>();
        lp.k_scale = ks.data_ptr<float>();
    }
    // Only columns [0, query_pos] of each row are read by the selection: the kernel skips the rest.
    lp.write_invisible = false;

    const int64_t chunk = std::min(query_chunk, d.queries);
    at::Tensor buffer = at::empty({d.batch * chunk * std::max<int64_t>(d.keys, 1)}, wc.options());
    for (int64_t t0 = 0; t0 < d.queries; t0 += chunk) {
        const int64_t len = std::min(chunk, d.queries - t0);
        kernels::IndexerLogitsParams p = lp;
        const int64_t q_elem = t0 * d.heads * kIndexerDim;  // 1 byte (e4m3) or 2 bytes (bf16) per element
        p.q = static_cast<const unsigned char*>(qc.data_ptr()) + q_elem * qc.element_size();
        p.w = wc.data_ptr<float>() + t0 * d.heads;
        if (fp8) p.q_scale = qs.data_ptr<float>() + t0 * d.heads;
        p.query_pos = pos.data_ptr<int64_t>() + t0;
        p.num_queries = len;
        p.out = buffer.data_ptr<float>();
        C10_CUDA_CHECK(kernels::launch_indexer_logits(p, stream));

        kernels::TopkParams tp{};
        tp.logits = buffer.data_ptr<float>();
        tp.num_rows = d.batch * len;
        tp.num_cols = d.keys;
        tp.row_stride = d.keys;
        tp.rows_per_group = len;
        tp.row_last = pos.data_ptr<int64_t>() + t0;
        tp.last_group_stride = d.queries;
        tp.topk = static_cast<int>(topk);
        tp.out = out.data_ptr<int32_t>() + t0 * topk;
        tp.out_group_stride = d.queries;
        C10_CUDA_CHECK(kernels::launch_topk_rows(tp, stream));
    }
    return out;
}

IndexerGrads indexer_logits_backward(const at::Tensor& q,
                                     const at::Tensor& k,
                                     const at::Tensor& w,
                                     double scale,
                                     const at::Tensor& query_pos,
                                     const at::Tensor& key_valid,
                                     const at::Tensor& grad_logits) {
    constexpr const char* op = "indexer_logits_backward (cuda)";
    const Dims d = check_indexer_args(op, q, k, w, query_pos, key_valid);
    TORCH_CHECK(grad_logits.defined() && grad_logits.dim() == 3 && grad_logits.size(0) == d.batch &&
                    grad_logits.size(1) == d.queries && grad_logits.size(2) == d.keys,
                op, ": grad_logits must be [", d.batch, ", ", d.queries, ", ", d.keys, "], got ",
                grad_logits.defined() ? grad_logits.sizes() : c10::IntArrayRef{});
    check_cuda(op, "grad_logits", grad_logits, q.device());
    check_scale(op, scale);
    const c10::cuda::CUDAGuard on_device(q.device());
    if (q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16) {
        const at::Tensor qc = q.contiguous(), kc = k.contiguous(), wc = contiguous_float(w);
        const at::Tensor pos = contiguous_long(query_pos), valid = contiguous_bool(key_valid);
        const at::Tensor g = contiguous_float(grad_logits);
        // Max query_pos per pair of queries (the dk kernel's query tile), and its running maxima.
        constexpr int64_t kPair = kernels::kIndexerBwdQueryTile;
        const int64_t num_tiles = (d.queries + kPair - 1) / kPair;
        at::Tensor padded = pos;
        if (num_tiles * kPair > d.queries) {
            padded = at::cat({pos, at::full({d.batch, num_tiles * kPair - d.queries}, -1, pos.options())}, 1);
        }
        const at::Tensor tile_max = padded.view({d.batch, num_tiles, kPair}).amax({-1}).contiguous();
        const at::Tensor prefix = std::get<0>(tile_max.cummax(1)).contiguous();
        const at::Tensor suffix = std::get<0>(tile_max.flip({1}).cummax(1)).flip({1}).contiguous();
        const auto f32 = qc.options().dtype(at::kFloat);
        at::Tensor dq = at::empty({d.batch, d.queries, d.heads, kIndexerDim}, f32);
        at::Tensor dk = at::empty({d.batch, d.keys, kIndexerDim}, f32);
        at::Tensor dw = at::empty({d.batch, d.queries, d.heads}, f32);
        kernels::IndexerBackwardParams p{};
        p.q = qc.data_ptr();
        p.k = kc.data_ptr();
        p.w = wc.data_ptr<float>();
        p.query_pos = pos.data_ptr<int64_t>();
        p.key_valid = valid.defined() ? valid.data_ptr<bool>() : nullptr;
        p.grad = g.data_ptr<float>();
        p.tile_prefix_max = prefix.data_ptr<int64_t>();
        p.tile_suffix_max = suffix.data_ptr<int64_t>();
        p.dq = dq.data_ptr<float>();
        p.dk = dk.data_ptr<float>();
        p.dw = dw.data_ptr<float>();
        p.batch = d.batch;
        p.num_queries = d.queries;
        p.num_keys = d.keys;
        p.heads = static_cast<int>(d.heads);
        p.scale = static_cast<float>(scale);
        C10_CUDA_CHECK(kernels::launch_indexer_logits_backward(p, stream_of(q)));
        return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dw};
    }
    const at::Tensor qf = q.to(at::kFloat), kf = k.to(at::kFloat), wf = w.to(at::kFloat);
    const at::Tensor pos = query_pos.to(at::kLong);
    // Visible entries only: key s <= query_pos[t] and key_valid[s].
    const at::Tensor key_index = at::arange(d.keys, pos.options());
    at::Tensor dq = at::empty({d.batch, d.queries, d.heads, kIndexerDim}, qf.options());
    at::Tensor dw = at::empty({d.batch, d.queries, d.heads}, qf.options());
    at::Tensor dk = at::zeros({d.batch, d.keys, kIndexerDim}, qf.options());
    const int64_t per_query = std::max<int64_t>(d.batch * d.heads * d.keys, 1);
    const int64_t chunk = std::clamp<int64_t>((int64_t{1} << 28) / per_query, 1, std::max<int64_t>(d.queries, 1));
    for (int64_t t0 = 0; t0 < d.queries; t0 += chunk) {
        const int64_t len = std::min(chunk, d.queries - t0);
        const at::Tensor qc = qf.narrow(1, t0, len);
        at::Tensor visible = key_index.view({1, 1, d.keys}) <= pos.narrow(1, t0, len).unsqueeze(-1);
        if (key_valid.defined()) visible = visible.logical_and(key_valid.to(at::kBool).unsqueeze(1));
        const at::Tensor g = grad_logits.narrow(1, t0, len).to(at::kFloat) * visible;  // [B, c, S]
        const at::Tensor a = at::einsum("bthd,bsd->bths", {qc, kf}) * scale;           // [B, c, H, S]
        dw.narrow(1, t0, len).copy_(at::einsum("bths,bts->bth", {at::relu(a), g}));
        const at::Tensor gh = (a > 0).to(at::kFloat) * g.unsqueeze(2) * (wf.narrow(1, t0, len).unsqueeze(-1) * scale);
        dq.narrow(1, t0, len).copy_(at::einsum("bths,bsd->bthd", {gh, kf}));
        dk.add_(at::einsum("bths,bthd->bsd", {gh, qc}));
    }
    return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dw};
}

}  // namespace dsrl::dsa::cuda
