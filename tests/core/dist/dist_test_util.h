// Helpers shared by the dist tests: tensors filled from a closed form f(i) computed in float64, then cast.
#pragma once

#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

namespace dsrl::dist::testing {

/// Every dtype the Communicator supports.
inline const std::vector<c10::ScalarType>& all_dtypes() {
    static const std::vector<c10::ScalarType> d = {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf,
                                                   at::kLong,  at::kInt,    at::kByte};
    return d;
}

/// A [sizes] tensor of `dtype` whose flat element i is f(i) (values chosen exactly representable).
inline at::Tensor filled(std::vector<int64_t> sizes, c10::ScalarType dtype, const std::function<double(int64_t)>& f) {
    at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(at::kDouble));
    double* p = t.data_ptr<double>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = f(i);
    return t.to(dtype);
}

}  // namespace dsrl::dist::testing
