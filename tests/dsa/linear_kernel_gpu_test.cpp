// The decode projections' kernel (dsa/linear_cuda.h) against at::linear on the same GPU tensors: bf16 and fp16, the
// 32- and 64-row blocks (few and many rows), a rows count that is not a multiple of either, x as a column range of a
// wider tensor (the stacked projections' outputs), leading dims, the fp32 output (lm_head) written in place, and what
// the kernel refuses.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/randn.h>

#include <string>

#include "dsa/linear_cuda.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

at::Tensor randn(at::IntArrayRef shape, at::ScalarType t) {
    return at::randn(shape, at::TensorOptions().device(at::kCUDA)).to(t);
}

// |got - want| within one rounding of the output type (the sums over k run in another order) and most values equal.
void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
    ASSERT_EQ(got.sizes(), want.sizes()) << what;
    const at::Tensor g = got.to(at::kFloat), w = want.to(at::kFloat);
    const double err = (g - w).abs().max().item<double>(), scale = w.abs().max().item<double>();
    EXPECT_LE(err, 1e-2 * scale) << what << ": max |d| " << err << " of max |y| " << scale;
    const double same = g.eq(w).to(at::kFloat).mean().item<double>();
    EXPECT_GE(same, 0.9) << what << ": " << same << " of the values equal";
}

TEST(LinearKernelTest, ProjectsAsAtenLinear) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    struct Case {
        int64_t rows, k, n;
    };
    // single_gpu.yaml's decode projections at batch 256 (fused_a, o_proj, lm_head), a batch of one, rows that fill no
    // block, 64-row blocks (many columns), 2 MiB of weights.
    for (const at::ScalarType t : {at::kBFloat16, at::kHalf}) {
        for (const Case c : {Case{256, 768, 736}, Case{256, 768, 768}, Case{256, 768, 320}, Case{1, 768, 736},
                             Case{37, 128, 96}, Case{1000, 256, 512}, Case{256, 384, 2048}, Case{8, 1024, 1024}}) {
            const std::string what = std::string(c10::toString(t)) + " rows " + std::to_string(c.rows) + " k " +
                                     std::to_string(c.k) + " n " + std::to_string(c.n);
            const at::Tensor x = randn({c.rows, c.k}, t), w = randn({c.n, c.k}, t) * 0.05;
            ASSERT_TRUE(cuda::decode_linear_fits(x, w)) << what;
            const at::Tensor want = at::linear(x, w);
            const at::Tensor got = cuda::decode_linear(x, w);
            EXPECT_EQ(got.scalar_type(), t);
            expect_close(got, want, what);
            EXPECT_TRUE(at::equal(cuda::decode_linear(x, w), got)) << what << ": not deterministic";
            // fp32 out: the rounded values, as at::linear(x, w).float(); and written in place.
            const at::Tensor f = cuda::decode_linear(x, w, /*f32=*/true);
            EXPECT_EQ(f.scalar_type(), at::kFloat);
            EXPECT_TRUE(at::equal(f, got.to(at::kFloat))) << what;
            const at::Tensor into = at::empty({c.rows * c.n}, x.options().dtype(at::kFloat));
            cuda::decode_linear_f32_out(into, x, w);
            EXPECT_TRUE(at::equal(into.view({c.rows, c.n}), f)) << what;
        }
    }
}

TEST(LinearKernelTest, ReadsRowsThroughTheirStrideAndKeepsLeadingDims) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const at::Tensor wide = randn({2, 40, 512}, at::kBFloat16);
    const at::Tensor x = wide.narrow(-1, 128, 384);  // a column range: rows 512 apart
    const at::Tensor w = randn({160, 384}, at::kBFloat16) * 0.05;
    ASSERT_TRUE(cuda::decode_linear_fits(x, w));
    const at::Tensor got = cuda::decode_linear(x, w);
    EXPECT_EQ(got.sizes(), (at::IntArrayRef{2, 40, 160}));
    expect_close(got, at::linear(x, w), "strided rows");
}

// The absorbed attention's W_UV: o_lat [B, L, H, lora] · w[h]ᵀ with w the value rows of kv_b_proj [H, nope + v, lora]
// (a row range of each head), against the einsum.
TEST(LinearKernelTest, PerHeadProductsAsTheEinsum) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    for (const at::ScalarType t : {at::kBFloat16, at::kHalf}) {
        for (const int64_t rows : {1, 37, 256}) {
            const at::Tensor kv_b = randn({12, 64 + 64, 256}, t) * 0.05;
            const at::Tensor w = kv_b.narrow(1, 64, 64);  // [H, v, lora], each head's rows 256 apart
            const at::Tensor x = randn({rows, 1, 12, 256}, t);
            ASSERT_TRUE(cuda::decode_heads_fits(x, w));
            const at::Tensor got = cuda::decode_heads(x, w);
            EXPECT_EQ(got.sizes(), (at::IntArrayRef{rows, 1, 12, 64}));
            expect_close(got, at::einsum("blhc,hvc->blhv", {x, w}), "heads, rows " + std::to_string(rows));
        }
    }
    const at::Tensor x = randn({4, 1, 12, 256}, at::kBFloat16);
    EXPECT_FALSE(cuda::decode_heads_fits(x, randn({12, 256, 64}, at::kBFloat16).transpose(1, 2))) << "w's rows strided";
    EXPECT_FALSE(cuda::decode_heads_fits(x, randn({8, 64, 256}, at::kBFloat16))) << "other heads";
}

TEST(LinearKernelTest, RefusesWhatItDoesNotTake) {
    DSRL_REQUIRE_CUDA();
    const at::Tensor x = randn({4, 128}, at::kBFloat16), w = randn({64, 128}, at::kBFloat16);
    EXPECT_TRUE(cuda::decode_linear_fits(x, w));
    EXPECT_FALSE(cuda::decode_linear_fits(x.to(at::kFloat), w.to(at::kFloat))) << "fp32";
    EXPECT_FALSE(cuda::decode_linear_fits(x, w.to(at::kHalf))) << "mixed types";
    EXPECT_FALSE(cuda::decode_linear_fits(randn({4, 96}, at::kBFloat16), randn({64, 96}, at::kBFloat16))) << "k % 64";
    EXPECT_FALSE(cuda::decode_linear_fits(x, randn({48, 128}, at::kBFloat16))) << "n % 32";
    EXPECT_FALSE(cuda::decode_linear_fits(x.cpu(), w.cpu())) << "CPU";
    EXPECT_FALSE(cuda::decode_linear_fits(randn({2048, 128}, at::kBFloat16), w)) << "a prefill's rows";
    EXPECT_FALSE(cuda::decode_linear_fits(randn({256, 384}, at::kBFloat16), randn({3968, 384}, at::kBFloat16)))
        << "more than 2 MiB of weights (single_gpu.yaml's q_b stack), read once per block of rows";
    EXPECT_FALSE(cuda::decode_linear_fits(x, w.t().contiguous().t())) << "w not contiguous";
    {
        const at::Tensor wg = w.clone().requires_grad_(true);
        EXPECT_FALSE(cuda::decode_linear_fits(x, wg)) << "autograd records";
    }
    {
        at::autocast::set_autocast_enabled(at::kCUDA, true);
        at::autocast::set_autocast_dtype(at::kCUDA, at::kHalf);
        EXPECT_FALSE(cuda::decode_linear_fits(x, w)) << "autocast to another type";
        at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
        EXPECT_TRUE(cuda::decode_linear_fits(x, w)) << "autocast to its own type";
        // An fp32 x under bf16 autocast with bf16 weights (a training job's rollout): read as its cast, as at::linear.
        const at::Tensor x32 = randn({40, 128}, at::kFloat);
        ASSERT_TRUE(cuda::decode_linear_fits(x32, w));
        const at::Tensor want = at::linear(x32, w);
        const at::Tensor got = cuda::decode_linear(x32, w);
        EXPECT_EQ(got.scalar_type(), want.scalar_type());
        expect_close(got, want, "fp32 x under autocast");
        EXPECT_FALSE(cuda::decode_linear_fits(x32, w.to(at::kFloat))) << "fp32 weights";
        at::autocast::set_autocast_enabled(at::kCUDA, false);
        EXPECT_FALSE(cuda::decode_linear_fits(x32, w)) << "fp32 x without autocast";
    }
}

}  // namespace
}  // namespace dsrl::dsa
