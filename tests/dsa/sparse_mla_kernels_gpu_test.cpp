// The sparse MLA CUDA kernels (dsa/kernels/sparse_mla.cuh via dsa::cuda::sparse_mla_attention) against the ATen
// reference (dsa::sparse_mla_attention) on fresh random bf16 inputs, computed in fp64 from the same bf16 values:
// forward (out, lse), split-KV decode, backward (all four input gradients) and dispatch. Outputs come from memory
// the caching allocator held NaN a moment before, so an unwritten element shows up as NaN. Skipped with a printed
// reason where no GPU is visible.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <limits>

#include "core/rng.h"
#include "dsa/sparse_attention.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

constexpr int64_t kC = 512, kR = 64;

// Fills `bytes` of fresh device memory with NaN and frees it: the caching allocator hands the same block to the
// next allocations, so outputs the kernels leave unwritten read as NaN.
void poison_allocator(int64_t bytes) {
    at::Tensor junk = at::full({bytes / 4}, std::numeric_limits<float>::quiet_NaN(),
                               at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
    (void)junk;
}

using ::dsrl::testing::rel_err;

struct Case {
    at::Tensor q_lat, q_pe, c_kv, k_pe, indices;  // bf16 on CUDA, indices int32 on CUDA
};

// Distinct entries per query (like a top-k), a fraction of slots −1, and (row 0 of batch 0) a query with none.
Case make_case(int64_t B, int64_t T, int64_t H, int64_t S, int64_t K, uint64_t seed, double invalid = 0.1) {
    at::Generator gen = rng::make_cpu_generator(seed);
    const auto f = at::TensorOptions().dtype(at::kFloat);
    Case c;
    c.q_lat = (at::randn({B, T, H, kC}, gen, f) * 0.5).to(at::kBFloat16).cuda();
    c.q_pe = (at::randn({B, T, H, kR}, gen, f) * 0.5).to(at::kBFloat16).cuda();
    c.c_kv = (at::randn({B, S, kC}, gen, f) * 0.5).to(at::kBFloat16).cuda();
    c.k_pe = (at::randn({B, S, kR}, gen, f) * 0.5).to(at::kBFloat16).cuda();
    std::vector<at::Tensor> rows;
    for (int64_t i = 0; i < B * T; ++i) rows.push_back(at::randperm(S, gen, at::kLong).narrow(0, 0, K));
    at::Tensor idx = at::stack(rows).view({B, T, K});
    const at::Tensor drop = at::rand({B, T, K}, gen, f) < invalid;
    idx = at::where(drop, at::full_like(idx, -1), idx);
    if (T > 1) idx[0][0].fill_(-1);
    c.indices = idx.to(at::kInt).cuda();
    return c;
}

AttentionOutput reference(const Case& c, double scale) {
    return sparse_mla_attention(c.q_lat.to(at::kDouble), c.q_pe.to(at::kDouble), c.c_kv.to(at::kDouble),
                                c.k_pe.to(at::kDouble), c.indices, scale, 64);
}

void expect_forward_matches(const Case& c, double scale) {
    const AttentionOutput want = reference(c, scale);
    for (const cuda::MlaKernel kernel : {cuda::MlaKernel::kWgmma, cuda::MlaKernel::kMmaSync}) {
        const char* name = kernel == cuda::MlaKernel::kWgmma ? "wgmma" : "mma.sync";
        SCOPED_TRACE(name);
        poison_allocator(int64_t(1) << 30);
        const AttentionOutput got =
            cuda::sparse_mla_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.indices, scale, kernel);
        ASSERT_EQ(got.out.sizes(), want.out.sizes());
        EXPECT_EQ(got.out.scalar_type(), at::kBFloat16);
        EXPECT_FALSE(at::isnan(got.out).any().item<bool>()) << "unwritten (NaN) output elements";
        EXPECT_FALSE(at::isnan(got.lse).any().item<bool>()) << "unwritten (NaN) lse elements";
        EXPECT_LE(rel_err(got.out, want.out), 1e-2);
        // lse: −inf exactly where the reference has it (queries with no valid entry), close elsewhere.
        const at::Tensor finite = at::isfinite(want.lse.cpu());
        EXPECT_TRUE(at::equal(at::isfinite(got.lse).cpu(), finite));
        const at::Tensor diff = (got.lse.cpu().to(at::kDouble) - want.lse.cpu()).abs().masked_fill(~finite, 0.0);
        EXPECT_LE(diff.max().item<double>(), 2e-2);
        std::printf("[sparse_mla fwd] %s B=%ld T=%ld H=%ld K=%ld out rel err %.2e\n", name, long(c.q_lat.size(0)),
                    long(c.q_lat.size(1)), long(c.q_lat.size(2)), long(c.indices.size(2)), rel_err(got.out, want.out));
    }
}

TEST(SparseMlaKernelTest, ForwardMatchesReference) {
    DSRL_REQUIRE_CUDA();
    // 80 heads (a partial 64-head block), 200 entries (a partial 64-entry tile), invalid slots, an empty query.
    expect_forward_matches(make_case(2, 37, 80, 300, 200, 1), 0.07);
    // Full-size heads and k, every slot valid.
    expect_forward_matches(make_case(1, 48, 128, 4096, 2048, 2, 0.0), 1.0 / std::sqrt(192.0));
}

TEST(SparseMlaKernelTest, DecodeSplitsMatchReference) {
    DSRL_REQUIRE_CUDA();
    // One query per sequence: few blocks, so each query's 2048 entries are split over several blocks.
    expect_forward_matches(make_case(2, 1, 128, 5000, 2048, 3), 1.0 / std::sqrt(192.0));
    expect_forward_matches(make_case(1, 2, 16, 3000, 1000, 4), 0.1);
    // A decode cache: c_kv / k_pe are batch-strided views into a longer buffer.
    Case c = make_case(2, 1, 64, 700, 512, 5);
    const at::Tensor ckv_buf = at::randn({2, 900, kC}, c.c_kv.options()),
                     kpe_buf = at::randn({2, 900, kR}, c.k_pe.options());
    ckv_buf.narrow(1, 0, 700).copy_(c.c_kv);
    kpe_buf.narrow(1, 0, 700).copy_(c.k_pe);
    Case strided = c;
    strided.c_kv = ckv_buf.narrow(1, 0, 700);
    strided.k_pe = kpe_buf.narrow(1, 0, 700);
    ASSERT_FALSE(strided.c_kv.is_contiguous());
    expect_forward_matches(strided, 0.08);
}

TEST(SparseMlaKernelTest, BackwardMatchesReference) {
    DSRL_REQUIRE_CUDA();
    for (const auto& [c, scale] : {std::pair{make_case(2, 21, 80, 260, 150, 7), 0.07},
                                   std::pair{make_case(1, 16, 128, 4096, 2048, 8, 0.05), 1.0 / std::sqrt(192.0)}}) {
        at::Generator gen = rng::make_cpu_generator(9);
        const at::Tensor grad_out = at::randn(c.q_lat.sizes(), gen, at::kFloat).to(at::kBFloat16).cuda();
        std::vector<at::Tensor> leaves = {c.q_lat.clone().requires_grad_(), c.q_pe.clone().requires_grad_(),
                                          c.c_kv.clone().requires_grad_(), c.k_pe.clone().requires_grad_()};
        poison_allocator(int64_t(1) << 30);
        const AttentionOutput got =
            cuda::sparse_mla_attention(leaves[0], leaves[1], leaves[2], leaves[3], c.indices, scale);
        const auto g = torch::autograd::grad({got.out}, leaves, {grad_out});
        std::vector<at::Tensor> ref_leaves;
        for (const at::Tensor& t : leaves) ref_leaves.push_back(t.detach().to(at::kDouble).requires_grad_());
        const AttentionOutput want =
            sparse_mla_attention(ref_leaves[0], ref_leaves[1], ref_leaves[2], ref_leaves[3], c.indices, scale, 64);
        const auto w = torch::autograd::grad({want.out}, ref_leaves, {grad_out.to(at::kDouble)});
        const char* names[] = {"q_lat", "q_pe", "c_kv", "k_pe"};
        for (size_t i = 0; i < 4; ++i) {
            EXPECT_EQ(g[i].sizes(), leaves[i].sizes()) << names[i];
            EXPECT_FALSE(at::isnan(g[i]).any().item<bool>()) << "NaN in grad " << names[i];
            const double err = rel_err(g[i], w[i]);
            EXPECT_LE(err, 1e-2) << "grad " << names[i];
            std::printf("[sparse_mla bwd] T=%ld H=%ld K=%ld grad %s rel err %.2e\n", long(c.q_lat.size(1)),
                        long(c.q_lat.size(2)), long(c.indices.size(2)), names[i], err);
        }
    }
}

TEST(SparseMlaKernelTest, DispatchFollowsModelImpl) {
    DSRL_REQUIRE_CUDA();
    const Case c = make_case(1, 5, 16, 90, 70, 10);
    const AttentionOutput ref = sparse_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.indices, 0.1, Impl::kReference);
    const AttentionOutput ker = sparse_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.indices, 0.1, Impl::kCuda);
    const AttentionOutput aut = sparse_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.indices, 0.1, Impl::kAuto);
    EXPECT_TRUE(at::equal(aut.out, ker.out));  // auto takes the kernels for CUDA bf16 512 + 64
    EXPECT_LE(rel_err(ker.out, ref.out), 1e-2);
    // bf16 autocast: q_lat bf16 but the normalized latent and the rope parts fp32 — the kernels, on the
    // operands cast to bf16, and gradients reach the fp32 leaves.
    const at::Tensor kv32 = c.c_kv.to(at::kFloat).requires_grad_(true),
                     pe32 = c.k_pe.to(at::kFloat).requires_grad_(true);
    const AttentionOutput mixed =
        sparse_attention(c.q_lat, c.q_pe.to(at::kFloat), kv32, pe32, c.indices, 0.1, Impl::kCuda);
    EXPECT_TRUE(at::equal(mixed.out, ker.out));
    mixed.out.to(at::kFloat).sum().backward();
    ASSERT_TRUE(kv32.grad().defined() && pe32.grad().defined());
    EXPECT_EQ(kv32.grad().scalar_type(), at::kFloat);
    EXPECT_TRUE(kv32.grad().isfinite().all().item<bool>());
    // fp32 inputs: auto falls back to the reference, cuda refuses with a message naming the inputs.
    const at::Tensor q32 = c.q_lat.to(at::kFloat);
    const AttentionOutput f32 = sparse_attention(q32, c.q_pe.to(at::kFloat), c.c_kv.to(at::kFloat),
                                                 c.k_pe.to(at::kFloat), c.indices, 0.1, Impl::kAuto);
    EXPECT_EQ(f32.out.scalar_type(), at::kFloat);
    try {
        sparse_attention(q32, c.q_pe, c.c_kv, c.k_pe, c.indices, 0.1, Impl::kCuda);
        ADD_FAILURE() << "impl cuda accepted fp32 inputs";
    } catch (const c10::Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("sparse attention: impl is cuda but the kernels cannot take these inputs"),
                  std::string::npos)
            << msg;
        EXPECT_NE(msg.find("got q_lat [1, 5, 16, 512] Float on cuda"), std::string::npos) << msg;
    }
    // An index past the keys is refused, not read.
    Case bad = c;
    bad.indices = c.indices.clone();
    bad.indices[0][0][0] = 90;
    EXPECT_THROW(cuda::sparse_mla_attention(bad.q_lat, bad.q_pe, bad.c_kv, bad.k_pe, bad.indices, 0.1), c10::Error);
}

}  // namespace
}  // namespace dsrl::dsa
