// Dispatch of sparse MLA attention (dsa/sparse_attention.h; core/dispatch.h): the CUDA kernels
// (sparse_attention_cuda.cpp) or the ATen reference (sparse_attention_ref.cpp).
#include "dsa/sparse_attention.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include "core/dispatch.h"

namespace dsrl::dsa {

AttentionOutput sparse_attention(const at::Tensor& q_lat,
                                 const at::Tensor& q_pe,
                                 const at::Tensor& c_kv,
                                 const at::Tensor& k_pe,
                                 const at::Tensor& indices,
                                 double scale,
                                 Impl impl,
                                 int64_t query_chunk,
                                 bool check_indices,
                                 const QueryRope* q_rope) {
    // Under bf16 autocast the projections come out bf16 while the normalized latent and the RoPE parts may stay
    // fp32: the kernels take every operand in bf16 (cast here, as autocast would cast a matmul's), whenever
    // q_lat is bf16. An fp32 q_lat (an fp32 model without autocast) keeps the fp32 reference.
    const bool bf16 = q_lat.scalar_type() == at::kBFloat16;
    const auto to_bf16 = [&](const at::Tensor& t) {
        return impl != Impl::kReference && bf16 && t.scalar_type() == at::kFloat ? t.to(at::kBFloat16) : t;
    };
    const at::Tensor qp = to_bf16(q_pe), kv = to_bf16(c_kv), kp = to_bf16(k_pe);
    const bool fits = bf16 && cuda::sparse_mla_supported(q_lat, qp, kv, kp);
    const auto mismatch = [&] {
        return KernelMismatch{
            "CUDA tensors with q_lat bf16 — a bf16 model or bf16 autocast — and kv_lora_rank 512 + "
            "qk_rope_head_dim 64",
            c10::str("q_lat ", q_lat.sizes(), " ", q_lat.scalar_type(), " on ", q_lat.device(), ", k_pe ",
                     k_pe.sizes())};
    };
    // Shapes the Hopper kernels do not take, in a forward without autograd (the rollout's decode): the SIMT kernel
    // reads the selected entries in place instead of the reference's gathered copies (and rotates q_pe itself).
    if (impl == Impl::kAuto && !fits && cuda::sparse_mla_simt_fits(q_lat, q_pe, c_kv, k_pe, indices)) {
        if (check_indices) check_sparse_indices(indices, c_kv.size(1));
        return cuda::sparse_mla_simt(q_lat, q_pe, c_kv, k_pe, indices, scale, /*tensor_cores=*/true, q_rope);
    }
    if (q_rope != nullptr) {  // the other paths take q_pe rotated
        return sparse_attention(q_lat, rotate_query(q_pe, *q_rope, impl), c_kv, k_pe, indices, scale, impl, query_chunk,
                                check_indices);
    }
    if (use_kernels(impl, fits, "sparse attention", mismatch)) {
        return cuda::sparse_mla_attention(q_lat, qp, kv, kp, indices, scale, cuda::MlaKernel::kWgmma, check_indices);
    }
    return sparse_mla_attention(q_lat, q_pe, c_kv, k_pe, indices, scale, query_chunk, check_indices);
}

#ifndef DSRL_WITH_CUDA
namespace cuda {
bool sparse_mla_supported(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) { return false; }
bool sparse_mla_simt_fits(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
    return false;
}
bool sparse_mla_simt_uses_tensor_cores(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
    return false;
}
void set_sparse_mla_mma_stages(int64_t) {}
AttentionOutput sparse_mla_simt(const at::Tensor&,
                                const at::Tensor&,
                                const at::Tensor&,
                                const at::Tensor&,
                                const at::Tensor&,
                                double,
                                bool,
                                const QueryRope*) {
    TORCH_CHECK(false, "sparse attention: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
AttentionOutput sparse_mla_attention(const at::Tensor&,
                                     const at::Tensor&,
                                     const at::Tensor&,
                                     const at::Tensor&,
                                     const at::Tensor&,
                                     double,
                                     MlaKernel,
                                     bool) {
    TORCH_CHECK(false, "sparse attention: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
}  // namespace cuda
#endif

}  // namespace dsrl::dsa
