// Host wrapper of the grad-stats kernel: device guard, current stream, Tensor -> params, launch check.
#include <cstring>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/grad_stats.h"
#include "core/kernels/grad_stats.cuh"

namespace dsrl::cuda {

GradStats grad_stats(const std::vector<at::Tensor>& tensors) {
    if (tensors.empty()) return {};
    const c10::Device device = tensors.front().device();
    TORCH_CHECK(device.is_cuda(), "grad_stats (cuda): tensors must be on a CUDA device, got ", device);
    const c10::cuda::CUDAGuard guard(device);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
    cudaDeviceProp prop{};
    C10_CUDA_CHECK(cudaGetDeviceProperties(&prop, device.index()));
    // [0]: sum of squares (fp64); [1]: non-finite count (u64 bits in an fp64 slot).
    at::Tensor acc = at::zeros({2}, at::TensorOptions().dtype(at::kDouble).device(device));
    for (const at::Tensor& t : tensors) {
        if (t.numel() == 0) continue;
        const at::Tensor x = t.contiguous();
        kernels::GradStatsParams p{};
        p.x = x.data_ptr();
        p.n = x.numel();
        p.dtype = x.scalar_type() == at::kFloat      ? kernels::GradDType::kFloat32
                  : x.scalar_type() == at::kBFloat16 ? kernels::GradDType::kBFloat16
                                                     : kernels::GradDType::kFloat16;
        p.sum_sq = acc.data_ptr<double>();
        p.num_nonfinite = reinterpret_cast<unsigned long long*>(acc.data_ptr<double>() + 1);
        p.num_sms = prop.multiProcessorCount;
        C10_CUDA_CHECK(kernels::launch_grad_stats(p, stream));
    }
    const at::Tensor host = acc.cpu();
    GradStats out;
    out.sum_sq = host.data_ptr<double>()[0];
    unsigned long long bad = 0;
    std::memcpy(&bad, host.data_ptr<double>() + 1, sizeof(bad));
    out.num_nonfinite = static_cast<int64_t>(bad);
    return out;
}

}  // namespace dsrl::cuda
