// The one dispatch decision of every kernel-backed op (STYLE.md "Kernel-backed ops"): `<op>.cpp` checks the
// inputs, asks use_kernels, and calls either `cuda::<op>` (`<op>_cuda.cpp`, the kernels' wrapper) or the ATen
// reference (`<op>_ref.cpp`, the oracle the kernels are tested against).
//
//   const bool fits = cuda::my_op_fits(x);                      // what the kernels can take; false without CUDA
//   if (use_kernels(impl, fits, "my op", [&] { return KernelMismatch{cuda::my_op_needs(), describe(x)}; })) {
//       return cuda::my_op(x);
//   }
//   return ref::my_op(x);
//
// impl kReference never runs kernels; kAuto runs them when they fit; kCuda runs them or raises the one error
// (below) that names the op, what the kernels need and what they were given. Never a silent fallback.
#pragma once

#include <string>
#include <string_view>

#include <absl/functional/function_ref.h>

#include "core/config.h"

namespace dsrl {

/// Why the kernels cannot take some inputs: their requirements and a description of the inputs.
struct KernelMismatch {
    std::string needs;
    std::string got;
};

/// Whether `op` runs its CUDA kernels under `impl`, given whether they `fit` the inputs. For kCuda on inputs
/// that do not fit it throws c10::Error: "<op>: impl is cuda but the kernels cannot take these inputs (<needs>);
/// got <got>; use impl auto or reference (model.impl in a job)". `mismatch` is called only then.
bool use_kernels(Impl impl, bool fits, std::string_view op, absl::FunctionRef<KernelMismatch()> mismatch);

/// True when this build has the CUDA kernels (configured with DSRL_WITH_CUDA=ON).
constexpr bool built_with_cuda() {
#ifdef DSRL_WITH_CUDA
    return true;
#else
    return false;
#endif
}

}  // namespace dsrl
