#include "tests/test_util.h"

#include "core/fs.h"

#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/argmax.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

namespace dsrl::testing {

::testing::AssertionResult all_close(
    const std::string& what, const at::Tensor& actual, const at::Tensor& expected, double atol, double rtol) {
    if (actual.sizes() != expected.sizes()) {
        return ::testing::AssertionFailure()
               << what << ": shape " << actual.sizes() << " != expected " << expected.sizes();
    }
    if (actual.numel() == 0) return ::testing::AssertionSuccess();
    const at::Tensor a = actual.detach().to(at::kCPU, at::kDouble).contiguous();
    const at::Tensor e = expected.detach().to(at::kCPU, at::kDouble).contiguous();
    const at::Tensor err = at::abs(a - e);
    const at::Tensor allowed = atol + rtol * at::abs(e);
    // NaN anywhere in actual is a failure even where expected is NaN too (kernels must not produce NaN).
    const at::Tensor bad = (err > allowed).logical_or(a.isnan()).logical_or(e.isnan() != a.isnan());
    const int64_t num_bad = bad.sum().item<int64_t>();
    const at::Tensor rel = err / at::abs(e).clamp_min(1e-12);
    const int64_t worst = at::argmax(err.nan_to_num(1e300).flatten()).item<int64_t>();
    auto unravel = [&](int64_t flat) {
        std::vector<int64_t> idx(a.dim());
        for (int64_t d = a.dim() - 1; d >= 0; --d) {
            idx[d] = flat % a.size(d);
            flat /= a.size(d);
        }
        return absl::StrCat("[", absl::StrJoin(idx, ", "), "]");
    };
    const double max_abs = err.nan_to_num(1e300).max().item<double>();
    const double max_rel = rel.nan_to_num(1e300).max().item<double>();
    if (num_bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << what << ": " << num_bad << " of " << a.numel() << " elements differ (atol "
                                         << atol << ", rtol " << rtol << "); max abs err " << max_abs
                                         << ", max rel err " << max_rel << "; worst at " << unravel(worst)
                                         << ": actual " << a.flatten()[worst].item<double>() << ", expected "
                                         << e.flatten()[worst].item<double>();
}

TempDir::TempDir() : path_(fs::make_temp_dir("dsrl_test_")) {}

TempDir::~TempDir() {
    try {
        fs::remove_tree(path_);
    } catch (const std::exception&) {
        // A leftover temp directory must not fail the test that used it.
    }
}

std::string TempDir::write(const std::string& name, const std::string& text) const {
    const std::string p = fs::join(path_, name);
    fs::make_dirs(p.substr(0, p.find_last_of('/')));
    std::ofstream out(p, std::ios::binary);
    out << text;
    return p;
}

std::string source_dir() {
    const char* dir = std::getenv("DSRL_SOURCE_DIR");
    if (dir == nullptr || *dir == '\0') {
        ADD_FAILURE() << "DSRL_SOURCE_DIR is not set (run the tests through ctest)";
        return ".";
    }
    return dir;
}

bool cuda_available() { return at::hasCUDA() && at::detail::getCUDAHooks().deviceCount() > 0; }

double rel_err(const at::Tensor& got, const at::Tensor& want) {
    const at::Tensor g = got.detach().to(at::kDouble).cpu(), w = want.detach().to(at::kDouble).cpu();
    return (g - w).norm().item<double>() / std::max(w.norm().item<double>(), 1e-30);
}

}  // namespace dsrl::testing
