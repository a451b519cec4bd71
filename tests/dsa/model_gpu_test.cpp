// The model on CUDA matches the CPU reference (same weights, fp32): sparse and dense paths, padding, decode,
// and checkpoint loading straight onto the GPU. Skipped with a printed reason where no GPU is visible.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include "core/precision.h"
#include "core/rng.h"
#include "dsa/model.h"

#include <torch/csrc/autograd/autograd.h>
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

Model on(const Model& m, c10::Device device) {
    ModelWeights w = m.weights();
    for (NamedTensor& t : named_tensors(w, m.config())) *t.tensor = t.tensor->to(device);
    if (m.config().tie_word_embeddings) w.lm_head = w.embed_tokens;
    return Model(m.config(), w);
}

TEST(ModelGpuTest, CudaForwardMatchesTheCpuReference) {
    DSRL_REQUIRE_CUDA();
    ModelConfig c;
    c.vocab_size = 64;
    c.index_topk = 8;
    Model cpu = Model::random(c, 5, at::kCPU);
    at::Generator gen = rng::make_cpu_generator(6);
    for (NamedTensor& t : cpu.named_tensors()) {
        if (t.name.find("norm") == std::string::npos) t.tensor->normal_(0.0, 0.15, gen);
    }
    const Model gpu = on(cpu, at::kCUDA);
    const at::Tensor ids = at::randint(c.vocab_size, {2, 40}, gen, at::kLong);
    at::Tensor mask = at::ones({2, 40}, at::kLong);
    mask[1].narrow(0, 0, 7).fill_(0);
    for (const AttentionPath path : {AttentionPath::kSparse, AttentionPath::kDense}) {
        const ForwardOptions opt{.return_routes = true, .return_topk = true, .path = path};
        const ForwardOutput a = cpu.forward({ids, mask}, opt);
        const ForwardOutput b = gpu.forward({ids.cuda(), mask.cuda()}, opt);
        EXPECT_ALL_CLOSE(path == AttentionPath::kSparse ? "sparse logits" : "dense logits",
                         b.logits.cpu().narrow(1, 7, 33), a.logits.narrow(1, 7, 33), 1e-4);
        for (size_t j = 0; j < a.routes.size(); ++j) EXPECT_TRUE(b.routes[j].cpu().equal(a.routes[j])) << j;
    }
    // Decode on the GPU equals the GPU's full forward.
    KvCache cache = gpu.new_cache(2, 40);
    std::vector<at::Tensor> steps{
        gpu.forward({ids.narrow(1, 0, 10).cuda(), mask.narrow(1, 0, 10).cuda()}, {}, &cache).logits};
    for (int64_t t = 10; t < 40; ++t) {
        steps.push_back(gpu.forward({ids.narrow(1, t, 1).cuda(), mask.narrow(1, t, 1).cuda()}, {}, &cache).logits);
    }
    const at::Tensor full = gpu.forward({ids.cuda(), mask.cuda()}).logits;
    EXPECT_ALL_CLOSE("gpu decode", at::cat(steps, 1).cpu().narrow(1, 7, 33), full.cpu().narrow(1, 7, 33), 1e-4);
    // bf16 runs and stays close to fp32 (loose: bf16 has 8 mantissa bits).
    ModelConfig cb = c;
    cb.dtype = DType::kBFloat16;
    ModelWeights wb = gpu.weights();
    for (NamedTensor& t : named_tensors(wb, cb)) *t.tensor = t.tensor->to(tensor_dtype(t.name, cb));
    const Model bf16(cb, wb);
    const at::Tensor lb = bf16.forward({ids.cuda(), mask.cuda()}).logits;
    EXPECT_EQ(lb.scalar_type(), at::kFloat);
    EXPECT_FALSE(lb.isnan().any().item<bool>());
}

using ::dsrl::testing::rel_err;

// A bf16 model with the full-size MLA latent (512 + 64) and indexer head (128): the DSA kernels run (model.impl
// auto) and match the ATen reference path (model.impl reference) on the same weights — top-k selection, logits,
// weight gradients through the sparse attention, and decode over the latent cache (the split-KV kernel).
// A job runs every forward inside one AutocastScope: a forward after an in-place weight update (an optimizer step, a
// weight sync) must compute with the updated weights, not with bf16 casts kept from the first forward.
TEST(ModelGpuTest, AutocastForwardsSeeInPlaceWeightUpdates) {
    DSRL_REQUIRE_CUDA();
    ModelConfig c;
    c.vocab_size = 64;
    Model m = Model::random(c, 5, at::kCUDA);
    for (NamedTensor& t : m.named_tensors()) t.tensor->requires_grad_(true);  // as the trainer's parameters
    const at::Tensor ids = at::randint(c.vocab_size, {2, 12}, rng::make_cpu_generator(3), at::kLong).cuda();
    const AutocastScope amp(m.device(), true);
    const at::Tensor before = m.forward({ids}).logits.detach().clone();
    {
        at::NoGradGuard no_grad;
        for (NamedTensor& t : m.named_tensors()) {
            if (t.name.find("norm") == std::string::npos) t.tensor->mul_(-1.5);
        }
    }
    const at::Tensor after = m.forward({ids}).logits.detach();
    // The same model with the updated weights, built afresh (nothing of it ever cast before).
    Model fresh = m.clone(m.device());
    const at::Tensor expected = fresh.forward({ids}).logits.detach();
    EXPECT_GT((after - before).abs().max().item<double>(), 1e-2) << "the forward kept the old weights";
    EXPECT_ALL_CLOSE("after the update", after.cpu(), expected.cpu(), 1e-3);
}

TEST(ModelGpuTest, FusedProjectionsGiveTheKernelForward) {
    DSRL_REQUIRE_CUDA();
    at::NoGradGuard no_grad;
    ModelConfig c;
    c.vocab_size = 64;
    c.hidden_size = 256;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.q_lora_rank = 96;
    c.kv_lora_rank = 128;
    c.qk_nope_head_dim = 32;
    c.qk_rope_head_dim = 32;
    c.v_head_dim = 32;
    c.index_n_heads = 8;
    c.index_head_dim = 64;
    c.index_topk = 24;
    c.dtype = DType::kBFloat16;
    const Model m = Model::random(c, 31, at::kCUDA);
    at::Generator gen = rng::make_cpu_generator(32);
    const at::Tensor ids = at::randint(c.vocab_size, {3, 64}, gen, at::kLong).cuda();
    const ForwardOptions opt{.return_topk = true, .path = AttentionPath::kSparse};
    const ForwardOutput b = m.forward({ids}, opt);
    for (const bool absorb : {false, true}) {
        // Absorbed: the GEMM gives q̃ (read in place by the attention kernel) and o_lat goes through one GEMM.
        const Model fused = m.fuse_projections(absorb);
        ASSERT_EQ(fused.weights().layers[0].absorbed, absorb);
        const ForwardOutput a = fused.forward({ids}, opt);
        // One GEMM over the stacked weights sums each product as the separate GEMMs may not, the absorbed query rows
        // are a product rounded to bf16 once (where the separate path rounds q_nope before its per-head product), and
        // the indexer's key norm runs on its kernel: bf16 roundings apart, so near-ties of the indexer's top-k may
        // move. Stacked only: 0 on an H100 (session 23); absorbed query and output rows: 2.8e-2 there.
        const double logit_err = rel_err(a.logits, b.logits);
        std::printf("[model kernels] fused projections (absorbed %d): logits rel err vs separate %.2e\n", int(absorb),
                    logit_err);
        EXPECT_LE(logit_err, absorb ? 4e-2 : 2e-2);
        const double same_slot = a.topk[0].eq(b.topk[0]).to(at::kDouble).mean().item<double>();
        EXPECT_GE(same_slot, 0.95) << "layer 0 top-k slot agreement " << same_slot;
    }
}

TEST(ModelGpuTest, KernelPathMatchesTheReferencePath) {
    DSRL_REQUIRE_CUDA();
    ModelConfig c;
    c.vocab_size = 64;
    c.hidden_size = 128;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 16;
    c.q_lora_rank = 64;
    c.kv_lora_rank = 512;
    c.qk_nope_head_dim = 32;
    c.qk_rope_head_dim = 64;
    c.v_head_dim = 32;
    c.index_n_heads = 16;
    c.index_head_dim = 128;
    c.index_topk = 48;
    c.dtype = DType::kBFloat16;
    Model kern = Model::random(c, 21, at::kCUDA);
    ModelConfig cr = c;
    cr.impl = Impl::kReference;
    Model ref(cr, kern.weights());
    at::Generator gen = rng::make_cpu_generator(22);
    const at::Tensor ids = at::randint(c.vocab_size, {2, 160}, gen, at::kLong).cuda();
    at::Tensor mask = at::ones({2, 160}, at::kLong);
    mask[1].narrow(0, 0, 7).fill_(0);
    mask = mask.cuda();
    const ForwardOptions opt{.return_topk = true, .path = AttentionPath::kSparse};
    const ForwardOutput a = kern.forward({ids, mask}, opt);
    const ForwardOutput b = ref.forward({ids, mask}, opt);
    // Layer 0 scores identical inputs: the same selection slot for slot (bf16 products summed in another order
    // may swap exact near-ties only). Deeper layers see inputs that already differ by bf16 rounding between the
    // paths, so near-ties of this random model's flat indexer scores move: compare the selected sets.
    const double same_slot = a.topk[0].eq(b.topk[0]).to(at::kDouble).mean().item<double>();
    EXPECT_GE(same_slot, 0.99) << "layer 0 top-k slot agreement " << same_slot;
    for (size_t l = 0; l < a.topk.size(); ++l) {
        auto members = [&](const at::Tensor& idx) {  // [B, L, S + 1] one-hot of the selected keys (−1 → slot S)
            const at::Tensor slot = idx.to(at::kLong).masked_fill(idx.lt(0), 160);
            return at::zeros({2, 160, 161}, slot.options().dtype(at::kFloat)).scatter_(2, slot, 1.0).narrow(2, 0, 160);
        };
        const at::Tensor ma = members(a.topk[l]), mb = members(b.topk[l]);
        const double overlap = (ma * mb).sum().item<double>() / mb.sum().item<double>();
        std::printf("[model kernels] layer %zu: top-k set overlap with the reference path %.4f\n", l, overlap);
        EXPECT_GE(overlap, 0.9) << "layer " << l;
    }
    const at::Tensor valid = mask.to(at::kBool).unsqueeze(-1);
    const double logit_err = rel_err(a.logits.masked_fill(~valid, 0.0), b.logits.masked_fill(~valid, 0.0));
    std::printf("[model kernels] logits rel err vs reference path %.2e\n", logit_err);
    EXPECT_LE(logit_err, 2e-2);

    // Gradients of every weight through both paths.
    auto grads = [&](Model& m) {
        std::vector<at::Tensor> leaves;
        for (NamedTensor& t : m.named_tensors()) leaves.push_back(t.tensor->requires_grad_());
        const at::Tensor logits = m.forward({ids, mask}, {.path = AttentionPath::kSparse}).logits;
        const at::Tensor loss = (logits.to(at::kFloat).masked_fill(~valid, 0.0).pow(2)).mean();
        return torch::autograd::grad({loss}, leaves, {}, false, false, /*allow_unused=*/true);
    };
    const auto ga = grads(kern);
    const auto gb = grads(ref);
    const std::vector<NamedTensor> names = kern.named_tensors();
    double worst = 0.0;
    std::string worst_name;
    for (size_t i = 0; i < ga.size(); ++i) {
        if (!ga[i].defined() || !gb[i].defined() || gb[i].norm().item<double>() == 0.0) continue;
        const double e = rel_err(ga[i], gb[i]);
        if (e > worst) worst = e, worst_name = names[i].name;
    }
    std::printf("[model kernels] worst weight-gradient rel err %.2e (%s)\n", worst, worst_name.c_str());
    EXPECT_LE(worst, 5e-2) << worst_name;

    // Decode through the kernels equals the kernels' full forward.
    {
        at::NoGradGuard no_grad;
        KvCache cache = kern.new_cache(2, 160);
        std::vector<at::Tensor> steps{kern.forward({ids.narrow(1, 0, 100), mask.narrow(1, 0, 100)}, {}, &cache).logits};
        for (int64_t t = 100; t < 160; ++t) {
            steps.push_back(kern.forward({ids.narrow(1, t, 1), mask.narrow(1, t, 1)}, {}, &cache).logits);
        }
        const at::Tensor full = kern.forward({ids, mask}).logits;
        const double dec_err = rel_err(at::cat(steps, 1).narrow(1, 100, 60), full.narrow(1, 100, 60));
        std::printf("[model kernels] decode vs full forward rel err %.2e\n", dec_err);
        EXPECT_LE(dec_err, 2e-2);
    }
}

}  // namespace
}  // namespace dsrl::dsa
