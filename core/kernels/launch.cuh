// Kernel launches with programmatic dependent launch (PDL, sm_90+): a kernel launched by launch() may be scheduled
// while the kernel before it in the stream is still running, so its launch latency and its blocks' start overlap that
// kernel's tail — the gaps between the small kernels of a decode step. Correctness stays with the kernel: it calls
// pdl_wait() before its first global memory access (read or write), which returns once the previous kernel has
// completed and its writes are visible, then pdl_launch_dependents() so the next kernel may launch in turn (at most one
// kernel runs ahead). Outside PDL both are no-ops. DSRL_PDL=0 in the environment launches everything plainly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include <cuda_runtime.h>

namespace dsrl::kernels {

#ifdef __CUDACC__
/// Waits for the previous kernel in the stream (and its writes). Call in every thread before any global access.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/// Lets the next kernel in the stream launch (its blocks then wait in pdl_wait()).
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/// Both, at a kernel's entry.
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_launch_dependents();
}
#endif

/// Whether launch() asks for PDL: the current device is sm_90+ and DSRL_PDL is not "0" (read once).
bool pdl_enabled();

/// kernel<<<grid, block, smem, stream>>>(args...) with PDL where pdl_enabled(); the kernel must call pdl_enter() (or
/// pdl_wait()) first. Returns the launch's error.
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = &attr;
    config.numAttrs = pdl_enabled() ? 1 : 0;
    return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

/// The tile kernels of core/kernels/row_dot.cuh: kTwo (two rows a block) for at most `few` rows, else kEight (eight),
/// over ⌈rows / rows a block⌉ blocks of kThreads threads with `row_smem` bytes of dynamic shared memory per row of a
/// block. Their limit of dynamic shared memory is raised once to 64 KiB (eight of the longest rows take the default
/// 48 KiB, the kernels' static arrays come on top).
template <auto kTwo, auto kEight, typename Params>
cudaError_t launch_tile(
    int64_t rows, int64_t few, size_t row_smem, unsigned threads, cudaStream_t stream, const Params& p) {
    static const cudaError_t raised = [] {
        constexpr int kMax = 64 * 1024;
        const cudaError_t e = cudaFuncSetAttribute(kTwo, cudaFuncAttributeMaxDynamicSharedMemorySize, kMax);
        return e == cudaSuccess ? cudaFuncSetAttribute(kEight, cudaFuncAttributeMaxDynamicSharedMemorySize, kMax) : e;
    }();
    if (raised != cudaSuccess) return raised;
    const int per_block = rows <= few ? 2 : 8;
    const auto blocks = static_cast<unsigned>((rows + per_block - 1) / per_block);
    return per_block == 2 ? launch(kTwo, blocks, threads, per_block * row_smem, stream, p)
                          : launch(kEight, blocks, threads, per_block * row_smem, stream, p);
}

}  // namespace dsrl::kernels
