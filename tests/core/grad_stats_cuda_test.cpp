// GPU test of the grad-stats kernel against the ATen reference (STYLE.md: fresh random inputs, edge
// shapes, non-finite values, bitwise determinism is not expected of atomics in fp64 but the result must
// agree to fp64 rounding).
#include "core/grad_stats.h"

#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <limits>

#include "tests/test_util.h"

namespace dsrl {
namespace {

TEST(GradStatsCudaTest, MatchesReferenceOnEveryDtypeAndEdgeShape) {
    DSRL_REQUIRE_CUDA();
    const auto cuda = at::TensorOptions().device(at::kCUDA);
    for (const auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
        for (const int64_t n : {0, 1, 31, 257, 1 << 20, (1 << 22) + 3}) {
            at::Tensor x = at::randn({n}, cuda).to(dtype);
            if (n > 10) {
                x[3] = std::numeric_limits<float>::quiet_NaN();
                x[n - 1] = -std::numeric_limits<float>::infinity();
            }
            const at::Tensor strided = at::randn({64, 33}, cuda).to(dtype).t();  // non-contiguous
            const GradStats want = grad_stats({x, strided}, Impl::kReference);
            const GradStats got = grad_stats({x, strided}, Impl::kCuda);
            EXPECT_EQ(got.num_nonfinite, want.num_nonfinite) << dtype << " n=" << n;
            EXPECT_NEAR(got.sum_sq, want.sum_sq, 1e-10 * want.sum_sq + 1e-12) << dtype << " n=" << n;
        }
    }
}

}  // namespace
}  // namespace dsrl
