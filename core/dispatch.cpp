#include "core/dispatch.h"

#include <c10/util/Exception.h>

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

}  // namespace dsrl
