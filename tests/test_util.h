// Shared test helpers (STYLE.md "Tests"): one comparison helper reporting the worst element, temporary
// directories, and the GPU gate that skips with a printed reason when no GPU is visible.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>
#include <gtest/gtest.h>

namespace dsrl::testing {

/// Compares two tensors elementwise (after upcasting to float64 on the CPU). On failure the result names
/// `what`, the max-abs and max-rel error, the worst index and both values there.
::testing::AssertionResult all_close(
    const std::string& what, const at::Tensor& actual, const at::Tensor& expected, double atol, double rtol = 0.0);

/// A fresh directory under the system temp dir, removed at destruction (core/fs.h, no std::filesystem).
class TempDir {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }
    /// Writes `text` to path()/name (creating parent directories) and returns the full path.
    std::string write(const std::string& name, const std::string& text) const;

private:
    std::string path_;
};

/// The source tree (CTest sets DSRL_SOURCE_DIR); fails the calling test when unset.
std::string source_dir();

/// True when a CUDA device is usable by this process.
bool cuda_available();

/// ‖got − want‖ / ‖want‖ in fp64 on the CPU (any dtype and device): the relative error the kernel tests bound.
double rel_err(const at::Tensor& got, const at::Tensor& want);

}  // namespace dsrl::testing

#define EXPECT_ALL_CLOSE(what, actual, expected, ...) \
    EXPECT_TRUE(::dsrl::testing::all_close(what, actual, expected, __VA_ARGS__))

/// Skips the current GPU test, printing why, when no CUDA device is visible (tests stay listed and run as
/// "skipped" on CPU machines; on the GPU machine they run).
#define DSRL_REQUIRE_CUDA()                                                             \
    do {                                                                                \
        if (!::dsrl::testing::cuda_available()) {                                       \
            GTEST_SKIP() << "no CUDA device visible to this process; GPU test skipped"; \
        }                                                                               \
    } while (0)
