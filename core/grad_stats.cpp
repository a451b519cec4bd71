#include "core/grad_stats.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include "core/dispatch.h"

namespace dsrl {

GradStats grad_stats(const std::vector<at::Tensor>& tensors, Impl impl) {
    if (tensors.empty()) return {};
    const c10::Device device = tensors.front().device();
    for (size_t i = 0; i < tensors.size(); ++i) {
        const at::Tensor& t = tensors[i];
        TORCH_CHECK(t.defined(), "grad_stats: tensor ", i, " is undefined");
        TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf,
                    "grad_stats: tensor ", i, " must be float32, bfloat16 or float16, got ", t.scalar_type());
        TORCH_CHECK(t.device() == device, "grad_stats: all tensors must be on one device; tensor 0 is on ", device,
                    ", tensor ", i, " on ", t.device());
    }
    const bool fits = built_with_cuda() && device.is_cuda();
    if (use_kernels(impl, fits, "grad_stats", [&] {
            return KernelMismatch{"CUDA tensors", c10::str("tensors on ", device)};
        })) {
        return cuda::grad_stats(tensors);
    }
    return ref::grad_stats(tensors);
}

#ifndef DSRL_WITH_CUDA
namespace cuda {
GradStats grad_stats(const std::vector<at::Tensor>&) {
    TORCH_CHECK(false, "grad_stats: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
}  // namespace cuda
#endif

}  // namespace dsrl
