// Host wrapper of the paged-slots kernel (dsa/paged_slots_cuda.h).
#include "dsa/paged_slots_cuda.h"

#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "dsa/kernels/paged_slots.cuh"

namespace dsrl::dsa::cuda {

bool paged_slots_fit(const at::Tensor& read, const at::Tensor& topk) {
    return read.defined() && read.is_cuda() && read.scalar_type() == at::kLong && read.dim() == 2 &&
           read.is_contiguous() &&
           (!topk.defined() || (topk.device() == read.device() && topk.scalar_type() == at::kInt && topk.dim() == 3 &&
                                topk.size(0) == read.size(0) && topk.is_contiguous()));
}

at::Tensor paged_slots(const at::Tensor& read,
                       const at::Tensor& topk,
                       const at::Tensor& key_valid,
                       const at::Tensor& query_pos,
                       int64_t len) {
    RECORD_FUNCTION("dsrl::paged_slots", std::vector<c10::IValue>());  // names the kernel in profiles
    constexpr const char* op = "paged_slots (cuda)";
    TORCH_CHECK(paged_slots_fit(read, topk), op,
                ": read must be contiguous CUDA int64 [B, S] and topk contiguous int32 [B, L, K]; got ",
                read.scalar_type(), " ", read.sizes(), " and ", topk.defined() ? topk.sizes() : at::IntArrayRef{});
    const int64_t B = read.size(0), S = read.size(1);
    if (!topk.defined()) {
        TORCH_CHECK(key_valid.defined() && key_valid.scalar_type() == at::kBool && key_valid.is_contiguous() &&
                        key_valid.sizes() == read.sizes() && key_valid.device() == read.device() &&
                        query_pos.defined() && query_pos.scalar_type() == at::kLong && query_pos.is_contiguous() &&
                        query_pos.dim() == 2 && query_pos.size(0) == B && query_pos.size(1) == len &&
                        query_pos.device() == read.device(),
                    op, ": a dense step needs key_valid bool [", B, ", ", S, "] and query_pos int64 [", B, ", ", len,
                    "], contiguous on ", read.device());
    }
    const int64_t L = topk.defined() ? topk.size(1) : len, K = topk.defined() ? topk.size(2) : S;
    const c10::cuda::CUDAGuard on_device(read.device());
    at::Tensor out = at::empty({B, L, K}, read.options());
    const kernels::PagedSlotsParams p{.read = read.data_ptr<int64_t>(),
                                      .topk = topk.defined() ? topk.data_ptr<int32_t>() : nullptr,
                                      .key_valid = topk.defined() ? nullptr : key_valid.data_ptr<bool>(),
                                      .query_pos = topk.defined() ? nullptr : query_pos.data_ptr<int64_t>(),
                                      .out = out.data_ptr<int64_t>(),
                                      .batch = B,
                                      .len = L,
                                      .keys = S,
                                      .width = K};
    C10_CUDA_CHECK(kernels::launch_paged_slots(p, c10::cuda::getCurrentCUDAStream(read.device().index()).stream()));
    return out;
}

}  // namespace dsrl::dsa::cuda
