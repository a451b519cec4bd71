#include "core/dispatch.h"

#include <string>

#include <c10/util/Exception.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dsrl {
namespace {

using ::testing::HasSubstr;

TEST(DispatchTest, ReferenceNeverAutoWhenTheKernelsFitCudaOrTheOneError) {
    int asked = 0;
    auto mismatch = [&] {
        ++asked;
        return KernelMismatch{"bf16 CUDA inputs", "x [2, 3] Float on cpu"};
    };
    EXPECT_FALSE(use_kernels(Impl::kReference, true, "op", mismatch));
    EXPECT_FALSE(use_kernels(Impl::kReference, false, "op", mismatch));
    EXPECT_TRUE(use_kernels(Impl::kAuto, true, "op", mismatch));
    EXPECT_FALSE(use_kernels(Impl::kAuto, false, "op", mismatch));
    EXPECT_TRUE(use_kernels(Impl::kCuda, true, "op", mismatch));
    EXPECT_EQ(asked, 0) << "the mismatch is described only for the error";
    try {
        use_kernels(Impl::kCuda, false, "my op", mismatch);
        FAIL() << "impl cuda on inputs the kernels cannot take must throw";
    } catch (const c10::Error& e) {
        const std::string msg = e.what_without_backtrace();
        EXPECT_THAT(msg, HasSubstr("my op: impl is cuda but the kernels cannot take these inputs ("));
        EXPECT_THAT(msg, HasSubstr(built_with_cuda() ? "bf16 CUDA inputs" : "this build of dsrl has no CUDA kernels"));
        EXPECT_THAT(msg, HasSubstr("got x [2, 3] Float on cpu; use impl auto or reference"));
    }
    EXPECT_EQ(asked, 1);
}

}  // namespace
}  // namespace dsrl
