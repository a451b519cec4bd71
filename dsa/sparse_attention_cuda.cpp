// Sparse MLA attention on the CUDA kernels (dsa/kernels/sparse_mla.cuh) as an autograd function: forward saves
// the inputs, out and lse; backward recomputes the probabilities from lse (no [T, H, K] tensor is kept).
#include "dsa/sparse_attention.h"

#include <torch/csrc/autograd/custom_function.h>

#include <ATen/TensorOperators.h>
#include <ATen/record_function.h>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/max.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/env.h"
#include "core/kernel_elem.h"
#include "dsa/kernels/sparse_mla.cuh"
#include "dsa/kernels/sparse_mla_mma.cuh"
#include "dsa/kernels/sparse_mla_simt.cuh"

#include <algorithm>
#include <atomic>
#include <limits>

namespace dsrl::dsa::cuda {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

int num_sms(c10::DeviceIndex device) {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    return count;
}

// c_kv / k_pe may be batch-strided views (a decode cache); rows must be dense.
bool rows_dense(const at::Tensor& t) { return t.stride(2) == 1 && t.stride(1) == t.size(2); }

at::Tensor dense_rows(const at::Tensor& t) { return rows_dense(t) ? t : t.contiguous(); }

struct Inputs {
    at::Tensor q_lat, q_pe, c_kv, k_pe, indices;
};

Inputs prepare(const at::Tensor& q_lat,
               const at::Tensor& q_pe,
               const at::Tensor& c_kv,
               const at::Tensor& k_pe,
               const at::Tensor& indices) {
    TORCH_CHECK(sparse_mla_supported(q_lat, q_pe, c_kv, k_pe),
                "sparse attention (cuda): needs CUDA bf16 inputs with q_lat [B, T, H, 512], q_pe [B, T, H, 64], "
                "c_kv [B, S, 512], k_pe [B, S, 64] on one device; got q_lat ",
                q_lat.sizes(), " ", q_lat.scalar_type(), " on ", q_lat.device(), ", c_kv ", c_kv.sizes(), " ",
                c_kv.scalar_type());
    TORCH_CHECK(indices.dim() == 3 && indices.size(0) == q_lat.size(0) && indices.size(1) == q_lat.size(1),
                "sparse attention (cuda): indices must be [", q_lat.size(0), ", ", q_lat.size(1), ", K], got ",
                indices.sizes());
    TORCH_CHECK(indices.device() == q_lat.device(), "sparse attention (cuda): indices on ", indices.device(),
                ", queries on ", q_lat.device());
    const at::Tensor idx = indices.to(at::kInt).contiguous();
    return {q_lat.contiguous(), q_pe.contiguous(), dense_rows(c_kv), dense_rows(k_pe), idx};
}

class SparseMla : public torch::autograd::Function<SparseMla> {
public:
    static variable_list forward(AutogradContext* ctx,
                                 const at::Tensor& q_lat_in,
                                 const at::Tensor& q_pe_in,
                                 const at::Tensor& c_kv_in,
                                 const at::Tensor& k_pe_in,
                                 const at::Tensor& indices_in,
                                 double scale,
                                 int64_t kernel) {
        const Inputs in = prepare(q_lat_in, q_pe_in, c_kv_in, k_pe_in, indices_in);
        const c10::cuda::CUDAGuard on_device(in.q_lat.device());
        const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(in.q_lat.device().index()).stream();
        const int64_t B = in.q_lat.size(0), T = in.q_lat.size(1), H = in.q_lat.size(2);
        at::Tensor out = at::empty({B, T, H, kernels::kMlaLatentDim}, in.q_lat.options());
        at::Tensor lse = at::empty({B, T, H}, in.q_lat.options().dtype(at::kFloat));
        kernels::SparseMlaFwdParams p{};
        p.q_lat = in.q_lat.data_ptr();
        p.q_pe = in.q_pe.data_ptr();
        p.c_kv = in.c_kv.data_ptr();
        p.k_pe = in.k_pe.data_ptr();
        p.indices = in.indices.data_ptr<int32_t>();
        p.out = out.data_ptr();
        p.lse = lse.data_ptr<float>();
        p.batch = B;
        p.num_queries = T;
        p.num_heads = H;
        p.num_keys = in.c_kv.size(1);
        p.topk = in.indices.size(2);
        p.ckv_batch_stride = in.c_kv.stride(0);
        p.kpe_batch_stride = in.k_pe.stride(0);
        p.scale = float(scale);
        p.use_wgmma = kernel == int64_t(MlaKernel::kWgmma);
        p.num_splits = kernels::sparse_mla_num_splits(B, T, H, p.topk, num_sms(in.q_lat.device().index()));
        at::Tensor workspace;
        if (p.num_splits > 1) {
            const int64_t rows = B * T * H;
            workspace = at::empty({p.num_splits * rows * (kernels::kMlaLatentDim + 1)}, lse.options());
            p.partial_out = workspace.data_ptr<float>();
            p.partial_lse = p.partial_out + p.num_splits * rows * kernels::kMlaLatentDim;
        }
        if (B * T * H > 0 && p.topk > 0) {
            C10_CUDA_CHECK(kernels::launch_sparse_mla_fwd(p, stream));
        } else {
            out.zero_();
            lse.fill_(-std::numeric_limits<float>::infinity());
        }
        ctx->save_for_backward({in.q_lat, in.q_pe, in.c_kv, in.k_pe, in.indices, out, lse});
        ctx->saved_data["scale"] = scale;
        ctx->mark_non_differentiable({lse});
        return {out, lse};
    }

    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        const auto v = ctx->get_saved_variables();
        const at::Tensor &q_lat = v[0], &q_pe = v[1], &c_kv = v[2], &k_pe = v[3], &indices = v[4], &out = v[5],
                         &lse = v[6];
        const double scale = ctx->saved_data["scale"].toDouble();
        const int64_t B = q_lat.size(0), T = q_lat.size(1), H = q_lat.size(2), S = c_kv.size(1);
        at::Tensor grad_kv =
            at::zeros({B, S, kernels::kMlaLatentDim + kernels::kMlaRopeDim}, q_lat.options().dtype(at::kFloat));
        at::Tensor grad_q_lat = at::empty_like(q_lat), grad_q_pe = at::empty_like(q_pe);
        if (!grads[0].defined() || B * T * H == 0 || indices.size(2) == 0) {
            grad_q_lat.zero_();
            grad_q_pe.zero_();
        } else {
            const at::Tensor grad_out = grads[0].to(q_lat.scalar_type()).contiguous();
            const c10::cuda::CUDAGuard on_device(q_lat.device());
            const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(q_lat.device().index()).stream();
            const at::Tensor delta = at::empty({B, T, H}, q_lat.options().dtype(at::kFloat));
            C10_CUDA_CHECK(kernels::launch_sparse_mla_delta(grad_out.data_ptr(), out.data_ptr(),
                                                            delta.data_ptr<float>(), B * T * H, stream));
            kernels::SparseMlaBwdParams p{};
            p.q_lat = q_lat.data_ptr();
            p.q_pe = q_pe.data_ptr();
            p.c_kv = c_kv.data_ptr();
            p.k_pe = k_pe.data_ptr();
            p.indices = indices.data_ptr<int32_t>();
            p.grad_out = grad_out.data_ptr();
            p.lse = lse.data_ptr<float>();
            p.delta = delta.data_ptr<float>();
            p.grad_q_lat = grad_q_lat.data_ptr();
            p.grad_q_pe = grad_q_pe.data_ptr();
            p.grad_kv = grad_kv.data_ptr<float>();
            p.batch = B;
            p.num_queries = T;
            p.num_heads = H;
            p.num_keys = S;
            p.topk = indices.size(2);
            p.ckv_batch_stride = c_kv.stride(0);
            p.kpe_batch_stride = k_pe.stride(0);
            p.scale = float(scale);
            C10_CUDA_CHECK(kernels::launch_sparse_mla_bwd(p, stream));
        }
        const at::Tensor grad_c_kv = grad_kv.narrow(-1, 0, kernels::kMlaLatentDim).to(c_kv.scalar_type());
        const at::Tensor grad_k_pe =
            grad_kv.narrow(-1, kernels::kMlaLatentDim, kernels::kMlaRopeDim).to(k_pe.scalar_type());
        return {grad_q_lat, grad_q_pe, grad_c_kv, grad_k_pe, at::Tensor(), at::Tensor(), at::Tensor()};
    }
};

}  // namespace

bool sparse_mla_supported(const at::Tensor& q_lat,
                          const at::Tensor& q_pe,
                          const at::Tensor& c_kv,
                          const at::Tensor& k_pe) {
    const auto bf16_cuda = [&](const at::Tensor& t) {
        return t.defined() && t.is_cuda() && t.scalar_type() == at::kBFloat16 && t.device() == q_lat.device();
    };
    return bf16_cuda(q_lat) && bf16_cuda(q_pe) && bf16_cuda(c_kv) && bf16_cuda(k_pe) && q_lat.dim() == 4 &&
           q_pe.dim() == 4 && c_kv.dim() == 3 && k_pe.dim() == 3 && q_lat.size(3) == kernels::kMlaLatentDim &&
           q_pe.size(3) == kernels::kMlaRopeDim && c_kv.size(2) == kernels::kMlaLatentDim &&
           k_pe.size(2) == kernels::kMlaRopeDim && q_pe.sizes().slice(0, 3) == q_lat.sizes().slice(0, 3) &&
           c_kv.size(0) == q_lat.size(0) && k_pe.size(0) == c_kv.size(0) && k_pe.size(1) == c_kv.size(1);
}

AttentionOutput sparse_mla_attention(const at::Tensor& q_lat,
                                     const at::Tensor& q_pe,
                                     const at::Tensor& c_kv,
                                     const at::Tensor& k_pe,
                                     const at::Tensor& indices,
                                     double scale,
                                     MlaKernel kernel,
                                     bool check_indices) {
    // An out-of-range index would read past the cache (the check is a reduction and a host sync).
    if (check_indices) check_sparse_indices(indices, c_kv.size(1));
    const variable_list r = SparseMla::apply(q_lat, q_pe, c_kv, k_pe, indices, scale, int64_t(kernel));
    return {r[0], r[1]};
}

bool sparse_mla_simt_fits(const at::Tensor& q_lat,
                          const at::Tensor& q_pe,
                          const at::Tensor& c_kv,
                          const at::Tensor& k_pe,
                          const at::Tensor& indices) {
    // Forward only: an input that autograd tracks keeps the reference (an autograd function).
    const auto on_device = [&](const at::Tensor& t) {
        return t.defined() && t.is_cuda() && t.device() == q_lat.device() &&
               !(at::GradMode::is_enabled() && t.requires_grad());
    };
    if (!(on_device(q_lat) && on_device(q_pe) && on_device(c_kv) && on_device(k_pe) && on_device(indices)))
        return false;
    if (q_lat.dim() != 4 || q_pe.dim() != 4 || c_kv.dim() != 3 || k_pe.dim() != 3 || indices.dim() != 3) return false;
    if (!elem_kernel_takes(q_lat.scalar_type()) || q_pe.scalar_type() != q_lat.scalar_type() ||
        !elem_kernel_takes(c_kv.scalar_type()) || k_pe.scalar_type() != c_kv.scalar_type() ||
        at::isFloatingType(indices.scalar_type()))
        return false;
    const int64_t H = q_lat.size(2), C = q_lat.size(3), R = q_pe.size(3);
    if (q_pe.sizes().slice(0, 3) != q_lat.sizes().slice(0, 3) || c_kv.size(2) != C || k_pe.size(2) != R ||
        c_kv.size(0) != q_lat.size(0) || k_pe.sizes().slice(0, 2) != c_kv.sizes().slice(0, 2) ||
        indices.size(0) != q_lat.size(0) || indices.size(1) != q_lat.size(1) || c_kv.stride(2) != 1 ||
        k_pe.stride(2) != 1)
        return false;
    if (H * C > int64_t{kernels::kSimtThreads} * kernels::kSimtAccumulators) return false;
    int optin = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, q_lat.device().index()));
    return kernels::sparse_mla_simt_smem(H, C, R) <= optin;
}

namespace {

// The stride between q's queries (query n = b · T + t at n · stride) when each query's [H, D] is contiguous and the
// queries are rows of one stride — a contiguous q, or a column range of a wider projection's output — else 0.
int64_t query_row_stride(const at::Tensor& q) {
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3);
    if ((D > 1 && q.stride(3) != 1) || (H > 1 && q.stride(2) != D)) return 0;
    const int64_t stride = T == 1 ? (B == 1 ? H * D : q.stride(0)) : q.stride(1);
    if (T > 1 && B > 1 && q.stride(0) != T * stride) return 0;
    return stride > 0 ? stride : 0;
}

// The kernels' query stride for q: its row stride, or H · D for the contiguous copy sparse_mla_simt reads instead.
int64_t kernel_query_stride(const at::Tensor& q) {
    const int64_t stride = query_row_stride(q);
    return stride > 0 ? stride : q.size(2) * q.size(3);
}

// The SIMT / tensor-core kernels' parameters for these inputs (no splits yet).
kernels::SparseMlaSimtParams simt_params(const at::Tensor& ql,
                                         const at::Tensor& qp,
                                         const at::Tensor& c_kv,
                                         const at::Tensor& k_pe,
                                         const at::Tensor& idx,
                                         double scale,
                                         const at::Tensor& out,
                                         const at::Tensor& lse) {
    const int64_t B = ql.size(0), T = ql.size(1);
    return {.q_lat = ql.data_ptr(),
            .q_pe = qp.data_ptr(),
            .q_type = kernel_elem(ql.scalar_type()),
            .c_kv = c_kv.data_ptr(),
            .k_pe = k_pe.data_ptr(),
            .kv_type = kernel_elem(c_kv.scalar_type()),
            .kv_batch_stride = c_kv.stride(0),
            .kv_row_stride = c_kv.stride(1),
            .pe_batch_stride = k_pe.stride(0),
            .pe_row_stride = k_pe.stride(1),
            .indices = idx.defined() ? idx.data_ptr<int64_t>() : nullptr,
            .num_queries = B * T,
            .queries_per_batch = std::max<int64_t>(T, 1),
            .heads = ql.size(2),
            .latent = ql.size(3),
            .rope = qp.size(3),
            .topk = idx.defined() ? idx.size(2) : 0,
            .keys = c_kv.size(1),
            .q_lat_stride = kernel_query_stride(ql),
            .q_pe_stride = kernel_query_stride(qp),
            .scale = static_cast<float>(scale),
            .out = out.defined() ? out.data_ptr() : nullptr,
            .out_type = kernel_elem(ql.scalar_type()),
            .lse = lse.defined() ? lse.data_ptr<float>() : nullptr};
}

// The tensor-core kernel's plan for p ({0, 1}: it does not take p).
kernels::SparseMlaMmaPlan mma_plan(const kernels::SparseMlaSimtParams& p, c10::DeviceIndex device) {
    if (!kernels::sparse_mla_mma_takes(p)) return {};
    int optin = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return kernels::sparse_mla_mma_plan(p.num_queries, p.heads, p.latent, p.rope, p.topk, num_sms(device), optin);
}

// The tensor-core kernel's sub-tiles per tile: 1 (the tile staged whole, the fastest measured) unless
// DSRL_ATTN_STAGES (core/env.cpp) or set_sparse_mla_mma_stages asks for 2 or 4 (0: the default).
std::atomic<int64_t>& stages_asked() {
    static std::atomic<int64_t> asked{[] {
        const std::string v = env::get_choice("DSRL_ATTN_STAGES", {"", "1", "2", "4"});
        return v.empty() ? int64_t{0} : int64_t{v[0] - '0'};
    }()};
    return asked;
}

// The sub-tiles for a tile: as asked, fewer where a sub-tile would hold under 16 entries.
int64_t mma_stages(int64_t tile) {
    int64_t stages = std::max<int64_t>(stages_asked().load(), 1);
    while (stages > 1 && tile / stages < 16) stages /= 2;
    return stages;
}

}  // namespace

void set_sparse_mla_mma_stages(int64_t stages) {
    TORCH_CHECK(stages == 0 || stages == 1 || stages == 2 || stages == 4,
                "set_sparse_mla_mma_stages: stages must be 0 (the default), 1, 2 or 4, got ", stages);
    stages_asked().store(stages);
}

bool sparse_mla_simt_uses_tensor_cores(const at::Tensor& q_lat,
                                       const at::Tensor& q_pe,
                                       const at::Tensor& c_kv,
                                       const at::Tensor& k_pe,
                                       const at::Tensor& indices) {
    if (!sparse_mla_simt_fits(q_lat, q_pe, c_kv, k_pe, indices)) return false;
    kernels::SparseMlaSimtParams p =
        simt_params(q_lat, q_pe, c_kv, k_pe, at::Tensor(), 1.0, at::Tensor(), at::Tensor());
    p.topk = indices.size(2);
    // Queries that are not rows of one stride are copied by sparse_mla_simt (an aligned, contiguous buffer; the
    // stride simt_params gave them is the copy's).
    if (query_row_stride(q_lat) == 0) p.q_lat = nullptr;
    if (query_row_stride(q_pe) == 0) p.q_pe = nullptr;
    return mma_plan(p, q_lat.device().index()).tile > 0;
}

AttentionOutput sparse_mla_simt(const at::Tensor& q_lat,
                                const at::Tensor& q_pe,
                                const at::Tensor& c_kv,
                                const at::Tensor& k_pe,
                                const at::Tensor& indices,
                                double scale,
                                bool tensor_cores,
                                const QueryRope* q_rope) {
    RECORD_FUNCTION("dsrl::sparse_mla_simt", std::vector<c10::IValue>());  // names the kernel in profiles
    TORCH_CHECK(sparse_mla_simt_fits(q_lat, q_pe, c_kv, k_pe, indices),
                "sparse attention (SIMT kernel): unsupported inputs q_lat ", q_lat.sizes(), " ", q_lat.scalar_type(),
                ", c_kv ", c_kv.sizes(), " ", c_kv.scalar_type(), ", indices ", indices.sizes(),
                " (CUDA, no autograd, H * C <= ", kernels::kSimtThreads * kernels::kSimtAccumulators, ")");
    const c10::cuda::CUDAGuard on_device(q_lat.device());
    const int64_t B = q_lat.size(0), T = q_lat.size(1), H = q_lat.size(2), C = q_lat.size(3), R = q_pe.size(3);
    if (q_rope != nullptr) check_query_rope("sparse attention (SIMT kernel)", *q_rope, B * T, R, q_lat.device());
    // Queries read in place where they are rows of one stride (the absorbed query is a column range of its GEMM's
    // output), else from a contiguous copy.
    const at::Tensor ql = query_row_stride(q_lat) > 0 ? q_lat : q_lat.contiguous();
    at::Tensor qp = query_row_stride(q_pe) > 0 ? q_pe : q_pe.contiguous();
    const at::Tensor idx = indices.to(at::kLong).contiguous();
    at::Tensor out = at::empty({B, T, H, C}, q_lat.options());
    at::Tensor lse = at::empty({B, T, H}, q_lat.options().dtype(at::kFloat));
    kernels::SparseMlaSimtParams p = simt_params(ql, qp, c_kv, k_pe, idx, scale, out, lse);
    const c10::DeviceIndex device = q_lat.device().index();
    // bf16 / fp16 operands at the shapes it takes: the tensor-core kernel; otherwise the SIMT one. Few queries (a
    // decode batch): each query's entries split over several blocks, merged by a second kernel.
    const kernels::SparseMlaMmaPlan plan = tensor_cores ? mma_plan(p, device) : kernels::SparseMlaMmaPlan{};
    // The query rotation: by the tensor-core kernel as it stages q_pe (interleaved pairs), else rotated here first.
    at::Tensor cos, sin;  // alive until the launch is queued
    if (q_rope != nullptr) {
        if (plan.tile > 0 && q_rope->interleaved) {
            cos = q_rope->cos.contiguous();
            sin = q_rope->sin.contiguous();
            p.q_cos = cos.data_ptr<float>();
            p.q_sin = sin.data_ptr<float>();
        } else {
            qp = rotate_query(q_pe, *q_rope, Impl::kAuto).contiguous();
            p.q_pe = qp.data_ptr();
            p.q_pe_stride = kernel_query_stride(qp);
        }
    }
    const int64_t splits =
        plan.tile > 0 ? plan.splits : kernels::sparse_mla_simt_splits(B * T, idx.size(2), num_sms(device));
    at::Tensor work;  // the splits' partial results, alive until the launches are queued
    if (splits > 1) {
        work = at::empty({kernels::sparse_mla_simt_workspace(B * T, splits, H, C)}, q_lat.options().dtype(at::kFloat));
        p.splits = splits;
        p.part_out = work.data_ptr<float>();
        p.part_ml = p.part_out + B * T * splits * H * C;
    }
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
    C10_CUDA_CHECK(plan.tile > 0 ? kernels::launch_sparse_mla_mma(p, plan.tile, mma_stages(plan.tile), stream)
                                 : kernels::launch_sparse_mla_simt(p, stream));
    return {out, lse};
}

}  // namespace dsrl::dsa::cuda
