// The MoE decode kernels (moe/moe_cuda.h) against their ATen oracles on the same GPU tensors: the router's selection
// (same experts in the same order, weights to fp32 rounding) over DeepSeek-V3-like and held-out router shapes; the
// SwiGLU product bit for bit (it rounds op by op as at::silu(g) * up); the dense MoE block on the kernels against the
// ATen dense block; and the dispatch rule (no kernel where autograd records or impl is reference).
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/index_copy.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/scatter.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <string>

#include "core/precision.h"
#include "moe/moe_block.h"
#include "moe/moe_cuda.h"
#include "moe/router.h"
#include "tests/test_util.h"

namespace dsrl::moe {
namespace {

at::Tensor randn(at::IntArrayRef shape, at::ScalarType t = at::kFloat) {
    return at::randn(shape, at::TensorOptions().device(at::kCUDA)).to(t);
}

TEST(MoeKernelTest, RouterSelectsAsTheAtenRouter) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    struct Case {
        int64_t experts, k, groups, topk_group;
        bool norm;
        double scale;
    };
    // single_gpu.yaml's router; DeepSeek-V3's (256 experts, 8 groups of 32, 4 kept, top-8); one group; no group
    // limit; top-1; a wide top-k over many small groups; unnormalized weights.
    for (const Case c : {Case{32, 4, 4, 2, true, 2.5}, Case{256, 8, 8, 4, true, 2.5}, Case{16, 2, 1, 1, true, 1.0},
                         Case{64, 6, 8, 8, true, 1.5}, Case{8, 1, 2, 1, true, 2.5}, Case{128, 32, 16, 8, false, 1.0},
                         Case{1024, 8, 32, 3, false, 2.0}}) {
        SCOPED_TRACE("experts " + std::to_string(c.experts) + " k " + std::to_string(c.k) + " groups " +
                     std::to_string(c.groups) + " kept " + std::to_string(c.topk_group));
        const RouterOptions opt{.n_routed_experts = c.experts,
                                .num_experts_per_tok = c.k,
                                .n_group = c.groups,
                                .topk_group = c.topk_group,
                                .routed_scaling_factor = c.scale,
                                .norm_topk_prob = c.norm};
        for (const int64_t tokens : {1, 7, 256, 600}) {  // the tile kernel at two and at eight tokens a block
            const at::Tensor x32 = randn({tokens, 48});
            const at::Tensor gate = randn({c.experts, 48}) * 0.3;
            const at::Tensor bias = randn({c.experts}) * 0.05;
            // The selection from given logits; the logits computed in the kernel from fp32 and bf16 rows (route() casts
            // x to fp32 as the kernel reads it) and from a bf16 gate.
            struct Input {
                const char* what;
                at::Tensor x, gate;
                bool rows;
            };
            for (const Input& in : {Input{"logits", x32, gate, false}, Input{"fp32 rows", x32, gate, true},
                                    Input{"bf16 rows", x32.to(at::kBFloat16), gate, true},
                                    Input{"bf16 gate", x32, gate.to(at::kBFloat16), true}}) {
                SCOPED_TRACE(std::string(in.what) + ", tokens " + std::to_string(tokens));
                const Route want = route(in.x, in.gate, bias, opt);
                at::Tensor dense;
                ASSERT_EQ(cuda::route_rows_fit(in.x, in.gate, opt), true) << "a small router's rows fit";
                const Route got = in.rows ? cuda::route_select_rows(in.x, in.gate, bias, opt, &dense)
                                          : cuda::route_select(want.logits, bias, opt, &dense);
                // The logits the kernel computed: the fp32 matmul's, summed in another order.
                EXPECT_TRUE(at::allclose(got.logits, want.logits, 1e-5, 1e-5))
                    << "max |d| " << (got.logits - want.logits).abs().max().item<double>();
                // The same experts in the same order, but for a near tie: the kernel's sigmoid, sums and dot products
                // may round an ulp apart from ATen's, which can swap two experts whose choices agree to ~1e-7 (more
                // often the more experts a token takes: k 32 of 128 has 32 boundaries a row). A few such rows a case
                // (one, plus one in a hundred tokens), each a tie: its chosen experts' choices sum to the oracle's
                // within 1e-5. A wrong selection differs in many rows or by far more.
                const at::Tensor differs = (got.indices != want.indices).any(1);
                const int64_t n_differ = differs.sum().item<int64_t>();
                ASSERT_LE(n_differ, 1 + tokens / 100);
                const at::Tensor same = differs.logical_not().nonzero().reshape({-1});
                const at::Tensor rows = differs.nonzero().reshape({-1});
                // Where the logits came from the kernel's own dot products, a near tie of two groups' scores can
                // also flip a whole group: then ATen's selection from the kernel's logits is the kernel's.
                const at::Tensor own = select_experts(at::sigmoid(got.logits) + bias, opt);
                for (int64_t i = 0; i < n_differ; ++i) {
                    const at::Tensor row = rows.narrow(0, i, 1);
                    const at::Tensor choice = (at::sigmoid(want.logits) + bias).index_select(0, row);
                    const double a = choice.gather(1, got.indices.index_select(0, row)).sum().item<double>();
                    const double b = choice.gather(1, want.indices.index_select(0, row)).sum().item<double>();
                    const bool group_tie =
                        in.rows && at::equal(own.index_select(0, row), got.indices.index_select(0, row));
                    EXPECT_TRUE(std::abs(a - b) <= 1e-5 || group_tie)
                        << "row " << row.item<int64_t>() << ": kernel " << got.indices.index_select(0, row).cpu()
                        << " aten " << want.indices.index_select(0, row).cpu() << ", chosen sums " << a << " / " << b;
                }
                // fp32 rounding: the kernel sums the normalizer (and the logits) in another order: a few ulps.
                EXPECT_TRUE(
                    at::allclose(got.weights.index_select(0, same), want.weights.index_select(0, same), 1e-5, 1e-6))
                    << "max |d| " << (got.weights - want.weights).abs().max().item<double>();
                // The dense weights: w at the chosen experts, 0 elsewhere.
                const at::Tensor expect =
                    at::zeros({tokens, c.experts}, dense.options()).scatter(1, want.indices, want.weights);
                EXPECT_TRUE(at::allclose(dense.index_select(0, same), expect.index_select(0, same), 1e-5, 1e-6));
            }
        }
    }
}

TEST(MoeKernelTest, RouterRowsFitOnlySmallRouters) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const RouterOptions v3{.n_routed_experts = 256, .num_experts_per_tok = 8, .n_group = 8, .topk_group = 4};
    const RouterOptions small{.n_routed_experts = 32, .num_experts_per_tok = 4, .n_group = 4, .topk_group = 2};
    // DeepSeek-V3's 256 × 7168 router is a GEMM's work; rows not a multiple of 4, strided gates and fp64 are refused.
    EXPECT_FALSE(cuda::route_rows_fit(randn({4, 7168}), randn({256, 7168}), v3));
    EXPECT_TRUE(cuda::route_rows_fit(randn({4, 768}), randn({32, 768}), small));
    EXPECT_FALSE(cuda::route_rows_fit(randn({4, 770}), randn({32, 770}), small));
    EXPECT_FALSE(cuda::route_rows_fit(randn({4, 768}), randn({768, 32}).t(), small));
    EXPECT_FALSE(cuda::route_rows_fit(randn({4, 768}, at::kDouble), randn({32, 768}, at::kDouble), small));
    EXPECT_FALSE(cuda::route_rows_fit(randn({4, 768}), randn({32, 768}).cpu(), small));
    const at::Tensor g = randn({32, 768}).requires_grad_(true);
    at::GradMode::set_enabled(true);
    EXPECT_FALSE(cuda::route_rows_fit(randn({4, 768}), g, small)) << "autograd records the gate";
    at::GradMode::set_enabled(false);
    // A strided view of rows (the hidden state narrowed) is read in place.
    const at::Tensor wide = randn({6, 800});
    const at::Tensor x = wide.narrow(1, 0, 768);
    const at::Tensor gate = randn({32, 768});
    ASSERT_TRUE(cuda::route_rows_fit(x, gate, small));
    const Route got = cuda::route_select_rows(x, gate, randn({32}) * 0.05, small, nullptr);
    EXPECT_TRUE(at::allclose(got.logits, at::linear(x, gate), 1e-5, 1e-5));
}

TEST(MoeKernelTest, RouterBreaksTiesTowardTheLowerExpert) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const RouterOptions opt{.n_routed_experts = 8, .num_experts_per_tok = 3, .n_group = 1, .topk_group = 1};
    // Every expert scores the same except expert 5: 5 first, then 0 and 1.
    at::Tensor logits = at::zeros({2, 8}, at::TensorOptions().device(at::kCUDA));
    logits.select(1, 5).fill_(1.0);
    const Route r = cuda::route_select(logits, at::zeros({8}, logits.options()), opt, nullptr);
    EXPECT_EQ(r.indices.cpu()[0][0].item<int64_t>(), 5);
    EXPECT_EQ(r.indices.cpu()[1][1].item<int64_t>(), 0);
    EXPECT_EQ(r.indices.cpu()[1][2].item<int64_t>(), 1);
}

TEST(MoeKernelTest, SiluMulRoundsAsTheAtenOps) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    for (const at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf}) {
        SCOPED_TRACE(c10::toString(t));
        const at::Tensor gu = randn({37, 2 * 300}, t) * 4;  // gate and up narrowed out of one tensor: strided rows
        const at::Tensor g = gu.narrow(1, 0, 300), u = gu.narrow(1, 300, 300);
        EXPECT_TRUE(at::equal(cuda::silu_mul(g, u), at::silu(g) * u));
        // Weighted per group of 60 columns (an expert's intermediate width): the product times the weight, rounded.
        // Zero weights (experts a token is not routed to) give 0 without reading gate and up.
        const at::Tensor w = at::where(randn({37, 5}) > 0.3, randn({37, 5}).abs(),
                                       at::zeros({37, 5}, at::TensorOptions().device(at::kCUDA)));
        const at::Tensor want = ((at::silu(g) * u).to(at::kFloat) * w.repeat_interleave(60, 1)).to(t);
        EXPECT_TRUE(at::equal(cuda::silu_mul(g, u, w, 60), want));
        // More rows than a grid's y dimension holds (70,000): rows past 65,535 are grid-strided.
        const at::Tensor many_g = randn({70000, 16}, t), many_u = randn({70000, 16}, t);
        EXPECT_TRUE(at::equal(cuda::silu_mul(many_g, many_u), at::silu(many_g) * many_u));
    }
}

TEST(MoeKernelTest, DenseBlockOnTheKernelsMatchesTheAtenDenseBlock) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const RouterOptions opt{.n_routed_experts = 32, .num_experts_per_tok = 4, .n_group = 4, .topk_group = 2};
    for (const at::ScalarType t : {at::kFloat, at::kBFloat16}) {
        SCOPED_TRACE(c10::toString(t));
        MoeWeights w{
            .gate = randn({32, 96}) * 0.2,
            .bias = randn({32}) * 0.01,
            .experts = {randn({32, 40, 96}, t) * 0.1, randn({32, 40, 96}, t) * 0.1, randn({32, 96, 40}, t) * 0.1},
            .shared = {randn({40, 96}, t) * 0.1, randn({40, 96}, t) * 0.1, randn({96, 40}, t) * 0.1}};
        for (const int64_t tokens : {1, 64, 256}) {
            const at::Tensor x = randn({tokens, 96}, t);
            const MoeOutput want = moe_forward(x, w, opt, {}, nullptr, /*dense=*/true, Impl::kReference);
            const MoeOutput got = moe_forward(x, w, opt, {}, nullptr, /*dense=*/true, Impl::kAuto);
            EXPECT_FALSE(got.route.scores.defined()) << "the kernels ran";
            EXPECT_TRUE(want.route.scores.defined());
            ASSERT_TRUE(at::equal(got.route.indices, want.route.indices));
            const double tol = t == at::kFloat ? 1e-5 : 2e-2;
            const double err = (got.y.to(at::kFloat) - want.y.to(at::kFloat)).abs().max().item<double>();
            const double scale = want.y.to(at::kFloat).abs().max().item<double>();
            EXPECT_LE(err, tol * scale) << "tokens " << tokens << ": max |d| " << err << " of max |y| " << scale;
            EXPECT_EQ(got.y.scalar_type(), x.scalar_type());
        }
    }
}

// The grouped-matmul experts (a prefill's MoE on CUDA without autograd in bf16 compute) against the per-expert loop
// (impl reference) on the same routes, in bf16 and in fp32 weights under bf16 autocast; run twice, bit for bit equal.
TEST(MoeKernelTest, GroupedMatmulBlockMatchesTheLoop) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const RouterOptions opt{.n_routed_experts = 32, .num_experts_per_tok = 4, .n_group = 4, .topk_group = 2};
    for (const bool autocast : {false, true}) {
        SCOPED_TRACE(autocast ? "fp32 weights, bf16 autocast" : "bf16 weights");
        const at::ScalarType t = autocast ? at::kFloat : at::kBFloat16;
        MoeWeights w{
            .gate = randn({32, 96}) * 0.2,
            .bias = randn({32}) * 0.01,
            .experts = {randn({32, 40, 96}, t) * 0.1, randn({32, 40, 96}, t) * 0.1, randn({32, 96, 40}, t) * 0.1},
            .shared = {}};
        const AutocastScope amp(at::Device(at::kCUDA), autocast);
        for (const int64_t tokens : {1, 7, 300, 4096}) {
            const at::Tensor x = randn({tokens, 96}, t);
            const MoeOutput want = moe_forward(x, w, opt, {}, nullptr, /*dense=*/false, Impl::kReference);
            const MoeOutput got = moe_forward(x, w, opt, {}, nullptr, /*dense=*/false, Impl::kAuto);
            ASSERT_TRUE(at::equal(got.route.indices, want.route.indices));
            EXPECT_EQ(got.y.scalar_type(), want.y.scalar_type());
            const double err = (got.y.to(at::kFloat) - want.y.to(at::kFloat)).abs().max().item<double>();
            const double scale = want.y.to(at::kFloat).abs().max().item<double>();
            EXPECT_LE(err, 2e-2 * scale) << "tokens " << tokens << ": max |d| " << err << " of max |y| " << scale;
            const at::Tensor again = moe_forward(x, w, opt, {}, nullptr, /*dense=*/false, Impl::kAuto).y;
            EXPECT_TRUE(at::equal(again, got.y)) << "tokens " << tokens << ": not deterministic";
        }
    }
}

// Each (token, slot) pair through its expert with ATen ops in x's type, the outputs weighted in fp32 and summed over
// the slots, rounded (routed_experts_grouped's formula); with `shared`, plus its SwiGLU in x's type.
at::Tensor routed_oracle(const at::Tensor& x,
                         const at::Tensor& indices,
                         const at::Tensor& weights,
                         const SwiGluWeights& experts,
                         const SwiGluWeights* shared) {
    const int64_t T = x.size(0), k = indices.size(1), H = x.size(1), E = experts.gate_proj.size(0);
    at::Tensor pairs = at::zeros({T * k, H}, x.options().dtype(at::kFloat));
    const at::Tensor flat_w = weights.reshape({-1});
    for (int64_t e = 0; e < E; ++e) {
        const at::Tensor flat = (indices.reshape({-1}) == e).nonzero().reshape({-1});  // pair ids t · k + j
        if (flat.numel() == 0) continue;
        const at::Tensor xs = x.index_select(0, flat.div(k, "floor"));
        const at::Tensor h = at::silu(at::linear(xs, experts.gate_proj[e])) * at::linear(xs, experts.up_proj[e]);
        const at::Tensor o = at::linear(h, experts.down_proj[e]).to(at::kFloat);
        pairs.index_copy_(0, flat, o * flat_w.index_select(0, flat).unsqueeze(1));
    }
    at::Tensor y = pairs.view({T, k, H}).sum(1).to(x.scalar_type());
    if (shared != nullptr) y = y + swiglu(x, shared->gate_proj, shared->up_proj, shared->down_proj, Impl::kReference);
    return y;
}

// The routed experts on the tensor cores against the per-pair ATen oracle: single_gpu.yaml-like widths with the
// shared expert fused, a held-out shape without one, fp16; routes from the router, every token on the same four
// experts (their pair lists span several 64-row tiles), and ids outside [0, E) (they add nothing). Run twice: equal.
TEST(MoeKernelTest, RoutedExpertsOnTheTensorCoresMatchThePerPairOracle) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    struct Case {
        int64_t experts, k, hidden, inter;
        bool shared;
        at::ScalarType type;
    };
    for (const Case c : {Case{32, 4, 128, 64, true, at::kBFloat16}, Case{8, 2, 192, 128, false, at::kBFloat16},
                         Case{16, 6, 64, 192, true, at::kHalf}}) {
        SCOPED_TRACE("experts " + std::to_string(c.experts) + " k " + std::to_string(c.k) + " H " +
                     std::to_string(c.hidden) + " I " + std::to_string(c.inter) + " " + c10::toString(c.type));
        const int64_t E = c.experts, H = c.hidden, I = c.inter;
        const SwiGluWeights experts{randn({E, I, H}, c.type) * 0.1, randn({E, I, H}, c.type) * 0.1,
                                    randn({E, H, I}, c.type) * 0.1};
        const SwiGluWeights shared{randn({I, H}, c.type) * 0.1, randn({I, H}, c.type) * 0.1,
                                   randn({H, I}, c.type) * 0.1};
        const SwiGluWeights* sh = c.shared ? &shared : nullptr;
        const RouterOptions opt{.n_routed_experts = E, .num_experts_per_tok = c.k, .n_group = 1, .topk_group = 1};
        for (const int64_t tokens : {1, 7, 256, 1000}) {
            for (const std::string routes : {"router", "four experts", "out of range"}) {
                SCOPED_TRACE("tokens " + std::to_string(tokens) + ", " + routes);
                const at::Tensor x = randn({tokens, H}, c.type);
                ASSERT_TRUE(cuda::routed_experts_fit(x, experts, c.k));
                Route r =
                    route(x.to(at::kFloat), randn({E, H}) * 0.2, at::zeros({E}, x.options().dtype(at::kFloat)), opt);
                if (routes == "four experts") {
                    r.indices = at::arange(c.k, r.indices.options()).remainder(4).repeat({tokens, 1}).contiguous();
                } else if (routes == "out of range") {
                    r.indices.select(1, 0).copy_(at::randint(-1, 1, {tokens}, r.indices.options()) * (E + 1));
                }
                const at::Tensor want = routed_oracle(x, r.indices, r.weights, experts, sh);
                const at::Tensor got = cuda::routed_experts(x, r.indices, r.weights, experts, sh);
                ASSERT_EQ(got.sizes(), want.sizes());
                EXPECT_EQ(got.scalar_type(), c.type);
                const double err = (got.to(at::kFloat) - want.to(at::kFloat)).abs().max().item<double>();
                const double scale = want.to(at::kFloat).abs().max().item<double>();
                // The products accumulate in another order than cuBLAS's: an intermediate can round one ulp apart.
                EXPECT_LE(err, 1e-2 * scale) << "max |d| " << err << " of max |y| " << scale;
                EXPECT_TRUE(at::equal(cuda::routed_experts(x, r.indices, r.weights, experts, sh), got))
                    << "not deterministic";
            }
        }
    }
}

// The MoE block of a decode step (dense = true, no autograd) runs the routed-experts kernels where they fit: bf16, and
// an fp32 residual stream under bf16 autocast with bf16 expert weights (a rollout's cast-once weights). Against the
// ATen dense block (impl reference): the same routes, y within bf16 rounding.
TEST(MoeKernelTest, DecodeBlockOnTheRoutedKernelsMatchesTheAtenDenseBlock) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    const RouterOptions opt{.n_routed_experts = 32, .num_experts_per_tok = 4, .n_group = 4, .topk_group = 2};
    for (const bool autocast : {false, true}) {
        SCOPED_TRACE(autocast ? "fp32 x, bf16 autocast" : "bf16");
        const at::ScalarType t = at::kBFloat16;
        MoeWeights w{
            .gate = randn({32, 128}) * 0.2,
            .bias = randn({32}) * 0.01,
            .experts = {randn({32, 64, 128}, t) * 0.1, randn({32, 64, 128}, t) * 0.1, randn({32, 128, 64}, t) * 0.1},
            .shared = {randn({64, 128}, t) * 0.1, randn({64, 128}, t) * 0.1, randn({128, 64}, t) * 0.1}};
        const AutocastScope amp(at::Device(at::kCUDA), autocast);
        for (const int64_t tokens : {1, 64, 256}) {
            const at::Tensor x = randn({tokens, 128}, autocast ? at::kFloat : t);
            EXPECT_TRUE(cuda::routed_experts_fit(x.to(t), w.experts, 4));
            const MoeOutput want = moe_forward(x, w, opt, {}, nullptr, /*dense=*/true, Impl::kReference);
            const MoeOutput got = moe_forward(x, w, opt, {}, nullptr, /*dense=*/true, Impl::kAuto);
            EXPECT_FALSE(got.route.scores.defined()) << "the kernels ran";
            ASSERT_TRUE(at::equal(got.route.indices, want.route.indices));
            EXPECT_EQ(got.y.scalar_type(), x.scalar_type());
            const double err = (got.y.to(at::kFloat) - want.y.to(at::kFloat)).abs().max().item<double>();
            const double scale = want.y.to(at::kFloat).abs().max().item<double>();
            EXPECT_LE(err, 2e-2 * scale) << "tokens " << tokens << ": max |d| " << err << " of max |y| " << scale;
        }
    }
}

TEST(MoeKernelTest, KernelsStayOutOfAutogradAndReference) {
    DSRL_REQUIRE_CUDA();
    const at::Tensor g = randn({4, 8}).requires_grad_(true);
    const at::Tensor u = randn({4, 8});
    EXPECT_FALSE(cuda::silu_mul_fits(g, u)) << "a gate that needs its gradient";
    EXPECT_FALSE(cuda::silu_mul_fits(u.cpu(), u.cpu()));
    EXPECT_FALSE(cuda::silu_mul_fits(u, u.t())) << "rows that are not contiguous";
    EXPECT_TRUE(cuda::silu_mul_fits(u, u));
    const RouterOptions opt{.n_routed_experts = 8, .num_experts_per_tok = 2, .n_group = 2, .topk_group = 1};
    EXPECT_FALSE(cuda::route_kernel_fits(randn({3, 8}, at::kBFloat16), opt)) << "bf16 logits";
    EXPECT_FALSE(cuda::route_kernel_fits(randn({3, 9}), opt)) << "a width that is not n_routed_experts";
    EXPECT_TRUE(cuda::route_kernel_fits(randn({3, 8}), opt));
    // The routed-experts kernels: bf16 / fp16 only, widths of whole 64-column tiles, weights of x's type, no autograd.
    const SwiGluWeights ex{randn({4, 64, 128}, at::kBFloat16), randn({4, 64, 128}, at::kBFloat16),
                           randn({4, 128, 64}, at::kBFloat16)};
    EXPECT_TRUE(cuda::routed_experts_fit(randn({3, 128}, at::kBFloat16), ex, 2));
    EXPECT_FALSE(cuda::routed_experts_fit(randn({3, 128}), ex, 2)) << "fp32 x";
    EXPECT_FALSE(cuda::routed_experts_fit(randn({3, 128}, at::kHalf), ex, 2)) << "x not of the weights' type";
    EXPECT_FALSE(cuda::routed_experts_fit(randn({3, 128}, at::kBFloat16), ex, 33)) << "k over 32";
    EXPECT_FALSE(cuda::routed_experts_fit(randn({3, 128}, at::kBFloat16).requires_grad_(true), ex, 2));
    const SwiGluWeights odd{randn({4, 40, 96}, at::kBFloat16), randn({4, 40, 96}, at::kBFloat16),
                            randn({4, 96, 40}, at::kBFloat16)};
    EXPECT_FALSE(cuda::routed_experts_fit(randn({3, 96}, at::kBFloat16), odd, 2)) << "widths not multiples of 64";
    const SwiGluWeights wide{randn({128, 128}, at::kBFloat16), randn({128, 128}, at::kBFloat16),
                             randn({128, 128}, at::kBFloat16)};
    EXPECT_FALSE(cuda::shared_expert_fuses(randn({3, 128}, at::kBFloat16), ex, wide)) << "two shared experts";
    // With autograd, the MoE block takes the ATen route (scores defined) and its gradient reaches x.
    MoeWeights w{.gate = randn({8, 16}),
                 .bias = randn({8}),
                 .experts = {randn({8, 4, 16}), randn({8, 4, 16}), randn({8, 16, 4})},
                 .shared = {}};
    const at::Tensor x = randn({5, 16}).requires_grad_(true);
    const MoeOutput out = moe_forward(x, w, opt, {}, nullptr, /*dense=*/true);
    EXPECT_TRUE(out.route.scores.defined());
    out.y.sum().backward();
    EXPECT_TRUE(x.grad().defined());
}

}  // namespace
}  // namespace dsrl::moe
