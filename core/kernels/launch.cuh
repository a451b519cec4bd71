// Kernel launches with programmatic dependent launch (PDL, sm_90+): a kernel launched by launch() may be scheduled
// while the kernel before it in the stream is still running, so its launch latency and its blocks' start overlap that
// kernel's tail — the gaps between the small kernels of a decode step. Correctness stays with the kernel: it calls
// pdl_wait() before its first global memory access (read or write), which returns once the previous kernel has
// completed and its writes are visible, then pdl_launch_dependents() so the next kernel may launch in turn (at most one
// kernel runs ahead). The exceptions, each named where it is made: reads of what no kernel of the stream writes (the
// weights a kernel stages before it waits), and reads of what a kernel two or more launches back wrote (complete
// before the previous kernel passed its own wait, which came before it let this one launch). Outside PDL both are
// no-ops. DSRL_PDL=0 in the environment launches everything plainly.
#pragma once

#include <cstddef>
#include <utility>

#include <cuda_runtime.h>

namespace dsrl::kernels {

#ifdef __CUDACC__
/// Waits for the previous kernel in the stream (and its writes). Call in every thread before any global access (but
/// the exceptions above).
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

/// Raises the dynamic shared memory limit of each of `kernels` to `bytes` (over the 48 KiB default); the first error.
/// A caller keeps the result in a function-local static, so it runs once per process.
template <typename... Kernels>
cudaError_t raise_dynamic_smem(int bytes, Kernels... kernels) {
    cudaError_t e = cudaSuccess;
    ((e = e == cudaSuccess ? cudaFuncSetAttribute(kernels, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) : e),
     ...);
    return e;
}

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

}  // namespace dsrl::kernels
