#include "core/grad_stats.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/rng.h"

namespace dsrl {
namespace {

TEST(GradStatsTest, ReferenceMatchesClosedFormAndCountsNonFinite) {
    auto gen = rng::make_cpu_generator(11);
    at::Tensor a = at::randn({37, 5}, gen);
    at::Tensor b = at::randn({101}, gen).to(at::kBFloat16);
    at::Tensor empty = at::zeros({0}, at::kFloat);
    double expected = 0;
    for (const at::Tensor& t : {a, b}) {
        const at::Tensor d = t.to(at::kDouble).flatten();
        for (int64_t i = 0; i < d.numel(); ++i) expected += d[i].item<double>() * d[i].item<double>();
    }
    GradStats s = grad_stats({a, b, empty}, Impl::kReference);
    EXPECT_NEAR(s.sum_sq, expected, 1e-9 * expected);
    EXPECT_EQ(s.num_nonfinite, 0);
    EXPECT_NEAR(s.norm(), std::sqrt(expected), 1e-9);

    // Non-finite elements are counted and left out of the sum.
    const double a00 = a[0][0].item<double>();
    const double a12 = a[1][2].item<double>();
    a[0][0] = std::numeric_limits<float>::quiet_NaN();
    a[1][2] = std::numeric_limits<float>::infinity();
    s = grad_stats({a, b}, Impl::kAuto);
    EXPECT_EQ(s.num_nonfinite, 2);
    EXPECT_NEAR(s.sum_sq, expected - a00 * a00 - a12 * a12, 1e-9 * expected);
}

TEST(GradStatsTest, RejectsBadInputsWithClearMessages) {
    EXPECT_THROW(grad_stats({at::zeros({3}, at::kLong)}), c10::Error);
    try {
        grad_stats({at::zeros({3})}, Impl::kCuda);
        FAIL();
    } catch (const c10::Error& e) {
        EXPECT_NE(std::string(e.what_without_backtrace())
                      .find("grad_stats: impl is cuda but the kernels cannot take these inputs"),
                  std::string::npos);
    }
    EXPECT_EQ(grad_stats({}).num_nonfinite, 0);
}

}  // namespace
}  // namespace dsrl
