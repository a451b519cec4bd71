#include "core/dispatch.h"

#include <c10/util/Exception.h>

#ifdef DSRL_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

namespace dsrl {

bool use_kernels(Impl impl, bool fits, std::string_view op, absl::FunctionRef<KernelMismatch()> mismatch) {
    if (impl == Impl::kReference) return false;
    if (fits) return true;
    if (impl == Impl::kCuda) {
        const KernelMismatch m = mismatch();
        TORCH_CHECK(false, op, ": impl is cuda but the kernels cannot take these inputs (",
                    built_with_cuda() ? m.needs : "this build of dsrl has no CUDA kernels", "); got ", m.got,
                    "; use impl auto or reference (model.impl in a job)");
    }
    return false;
}

bool cuda_graph_capturing() {
#ifdef DSRL_WITH_CUDA
    if (c10::cuda::device_count() == 0) return false;
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
    return status != cudaStreamCaptureStatusNone;
#else
    return false;
#endif
}

}  // namespace dsrl
