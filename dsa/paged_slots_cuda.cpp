// Host wrapper of the paged-slots kernel (dsa/paged_slots_cuda.h).
#include "dsa/paged_slots_cuda.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/kernel_elem.h"
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

bool paged_write_fits(const at::Tensor& slots,
                      const std::vector<at::Tensor>& pools,
                      const std::vector<at::Tensor>& rows) {
    if (!slots.defined() || !slots.is_cuda() || slots.scalar_type() != at::kLong || slots.dim() != 1 ||
        !slots.is_contiguous() || pools.empty() || pools.size() > kernels::kPagedWriteParts ||
        pools.size() != rows.size())
        return false;
    for (size_t i = 0; i < pools.size(); ++i) {
        const at::Tensor& pool = pools[i];
        const at::Tensor& row = rows[i];
        if (!pool.defined() || !row.defined() || pool.device() != slots.device() || row.device() != slots.device() ||
            pool.dim() != 2 || row.dim() != 2 || pool.size(0) != pools[0].size(0) || row.size(0) != slots.size(0) ||
            row.size(1) != pool.size(1) || (pool.size(1) > 1 && (pool.stride(1) != 1 || row.stride(1) != 1)) ||
            !elem_kernel_takes(pool.scalar_type()) || !elem_kernel_takes(row.scalar_type()) ||
            (at::GradMode::is_enabled() && (row.requires_grad() || pool.requires_grad())))
            return false;
    }
    return true;
}

void paged_write(const at::Tensor& slots, const std::vector<at::Tensor>& pools, const std::vector<at::Tensor>& rows) {
    RECORD_FUNCTION("dsrl::paged_write", std::vector<c10::IValue>());  // names the kernel in profiles
    TORCH_CHECK(paged_write_fits(slots, pools, rows),
                "paged_write (cuda): slots must be contiguous CUDA int64 [N] and each of 1-3 pools [P, D] take rows "
                "[N, D] with contiguous rows (fp32, bf16 or fp16, no autograd); got slots ",
                slots.defined() ? slots.sizes() : at::IntArrayRef{}, " and ", pools.size(), " pools, ", rows.size(),
                " row tensors");
    const c10::cuda::CUDAGuard on_device(slots.device());
    kernels::PagedWriteParams p{.slots = slots.data_ptr<int64_t>(),
                                .rows = slots.size(0),
                                .pool_rows = pools[0].size(0),
                                .parts = static_cast<int>(pools.size())};
    for (size_t i = 0; i < pools.size(); ++i) {
        p.part[i] = {.pool = pools[i].data_ptr(),
                     .pool_type = kernel_elem(pools[i].scalar_type()),
                     .pool_stride = pools[i].stride(0),
                     .src = rows[i].data_ptr(),
                     .src_type = kernel_elem(rows[i].scalar_type()),
                     .src_stride = rows[i].stride(0),
                     .width = pools[i].size(1)};
    }
    C10_CUDA_CHECK(kernels::launch_paged_write(p, c10::cuda::getCurrentCUDAStream(slots.device().index()).stream()));
}

bool paged_step_inputs_fit(
    const at::Tensor& table, const at::Tensor& pos, int64_t block_size, int64_t keys, const at::Tensor& inv_freq) {
    return table.defined() && table.is_cuda() && table.scalar_type() == at::kLong && table.dim() == 2 &&
           table.size(1) >= 1 && table.is_contiguous() && pos.defined() && pos.device() == table.device() &&
           pos.scalar_type() == at::kLong && pos.dim() == 1 && pos.size(0) == table.size(0) && pos.is_contiguous() &&
           block_size >= 1 && keys >= 1 && keys <= table.size(1) * block_size &&
           (!inv_freq.defined() || (inv_freq.device() == table.device() && inv_freq.scalar_type() == at::kFloat &&
                                    inv_freq.dim() == 1 && inv_freq.is_contiguous()));
}

PagedStepInputs paged_step_inputs(const at::Tensor& table,
                                  const at::Tensor& pos,
                                  int64_t block_size,
                                  int64_t keys,
                                  const at::Tensor& inv_freq,
                                  double attention_factor) {
    RECORD_FUNCTION("dsrl::paged_step_inputs", std::vector<c10::IValue>());  // names the kernel in profiles
    TORCH_CHECK(paged_step_inputs_fit(table, pos, block_size, keys, inv_freq),
                "paged_step_inputs (cuda): table must be contiguous CUDA int64 [R, NB], pos int64 [R] on its device, 1 "
                "<= keys <= NB x block_size and inv_freq fp32 [half]; got table ",
                table.defined() ? table.sizes() : at::IntArrayRef{}, ", pos ",
                pos.defined() ? pos.sizes() : at::IntArrayRef{}, ", block_size ", block_size, ", keys ", keys);
    const int64_t R = table.size(0);
    const c10::cuda::CUDAGuard on_device(table.device());
    PagedStepInputs out;
    out.write = at::empty({R, 1}, table.options());
    out.read = at::empty({R, keys}, table.options());
    out.key_valid = at::empty({R, keys}, table.options().dtype(at::kBool));
    kernels::PagedStepParams p{.table = table.data_ptr<int64_t>(),
                               .pos = pos.data_ptr<int64_t>(),
                               .rows = R,
                               .blocks = table.size(1),
                               .block_size = block_size,
                               .keys = keys,
                               .read = out.read.data_ptr<int64_t>(),
                               .key_valid = out.key_valid.data_ptr<bool>(),
                               .write = out.write.data_ptr<int64_t>()};
    if (inv_freq.defined()) {
        const int64_t half = inv_freq.size(0);
        out.cos = at::empty({R, 1, half}, table.options().dtype(at::kFloat));
        out.sin = at::empty({R, 1, half}, table.options().dtype(at::kFloat));
        p.inv_freq = inv_freq.data_ptr<float>();
        p.half = static_cast<int>(half);
        p.scaled = attention_factor != 1.0;
        p.factor = static_cast<float>(attention_factor);
        p.cos = out.cos.data_ptr<float>();
        p.sin = out.sin.data_ptr<float>();
    }
    C10_CUDA_CHECK(kernels::launch_paged_step(p, c10::cuda::getCurrentCUDAStream(table.device().index()).stream()));
    return out;
}

}  // namespace dsrl::dsa::cuda
