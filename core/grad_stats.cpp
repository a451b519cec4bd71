#include "core/grad_stats.h"

#include <c10/util/Exception.h>

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
    const bool on_cuda = device.is_cuda();
    switch (impl) {
        case Impl::kReference: return ref::grad_stats(tensors);
        case Impl::kCuda:
            TORCH_CHECK(on_cuda && cuda::available(), "grad_stats: impl=cuda needs CUDA tensors and a CUDA build; got ",
                        device, (cuda::available() ? "" : " (this build has no CUDA kernels)"));
            return cuda::grad_stats(tensors);
        case Impl::kAuto: return on_cuda && cuda::available() ? cuda::grad_stats(tensors) : ref::grad_stats(tensors);
    }
    return ref::grad_stats(tensors);
}

#ifndef DSRL_WITH_CUDA
namespace cuda {
bool available() { return false; }
GradStats grad_stats(const std::vector<at::Tensor>&) {
    TORCH_CHECK(false, "grad_stats: this build of dsrl has no CUDA kernels (configure with DSRL_WITH_CUDA=ON)");
}
}  // namespace cuda
#endif

}  // namespace dsrl
