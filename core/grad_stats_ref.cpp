#include <ATen/TensorOperators.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include "core/grad_stats.h"

namespace dsrl::ref {

GradStats grad_stats(const std::vector<at::Tensor>& tensors) {
    GradStats out;
    for (const at::Tensor& t : tensors) {
        if (t.numel() == 0) continue;
        const at::Tensor x = t.detach().to(at::kDouble);
        const at::Tensor finite = at::isfinite(x);
        out.num_nonfinite += x.numel() - finite.sum().item<int64_t>();
        out.sum_sq += at::where(finite, x * x, at::zeros_like(x)).sum().item<double>();
    }
    return out;
}

}  // namespace dsrl::ref
