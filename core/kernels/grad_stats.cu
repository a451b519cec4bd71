// Napkin math: one read of n elements (2-4 bytes each); a memory-bound reduction. Each thread reads 16-byte
// vectors where alignment allows, reduces in registers, then warp shuffles, one atomic per warp.
#include "core/kernels/grad_stats.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace dsrl::kernels {
namespace {

constexpr int kThreads = 256;

template <class T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
    return __half2float(v);
}

template <class T>
__global__ void __launch_bounds__(kThreads) grad_stats_kernel(const T* __restrict__ x,
                                                              int64_t n,
                                                              double* __restrict__ sum_sq,
                                                              unsigned long long* __restrict__ num_nonfinite) {
    double acc = 0.0;
    unsigned long long bad = 0;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = to_float(x[i]);
        if (isfinite(v)) {
            acc += static_cast<double>(v) * static_cast<double>(v);
        } else {
            ++bad;
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        acc += __shfl_down_sync(0xffffffffu, acc, offset);
        bad += __shfl_down_sync(0xffffffffu, bad, offset);
    }
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(sum_sq, acc);
        if (bad != 0) atomicAdd(num_nonfinite, bad);
    }
}

template <class T>
cudaError_t launch_typed(const GradStatsParams& p, cudaStream_t stream) {
    const int64_t blocks_needed = (p.n + kThreads - 1) / kThreads;
    const int blocks = static_cast<int>(blocks_needed < 4LL * p.num_sms ? blocks_needed : 4LL * p.num_sms);
    grad_stats_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(p.x), p.n, p.sum_sq, p.num_nonfinite);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_grad_stats(const GradStatsParams& params, cudaStream_t stream) {
    if (params.n == 0) return cudaSuccess;
    switch (params.dtype) {
        case GradDType::kFloat32:
            return launch_typed<float>(params, stream);
        case GradDType::kBFloat16:
            return launch_typed<__nv_bfloat16>(params, stream);
        case GradDType::kFloat16:
            return launch_typed<__half>(params, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace dsrl::kernels
