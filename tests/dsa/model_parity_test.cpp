// Parity of the whole DeepSeek-V3.2 model with transformers' DeepseekV32ForCausalLM (oracle:
// tests/dsa/model_oracle.py): logits, the indexer's top-k sets, FP8 checkpoints, and a dsrl-saved checkpoint
// that transformers loads back (checked by the `model_readback` test).
#include <gtest/gtest.h>

#include <ATen/ops/equal.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <set>

#include "core/safetensors.h"
#include "dsa/indexer_topk.h"
#include "dsa/model.h"
#include "tests/oracle_util.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

using testing::oracle_path;

struct Oracle {
    SafetensorsFile file;
    ForwardInput input() const { return {file.get("input_ids"), file.get("attention_mask"), file.get("position_ids")}; }
};

Oracle oracle() { return {SafetensorsFile::open(oracle_path("model.safetensors"))}; }

// Logits at real (non-padding) tokens only: padding rows are not defined by either implementation.
at::Tensor real_rows(const at::Tensor& logits, const at::Tensor& mask) {
    return at::where(mask.ne(0).unsqueeze(-1), logits, at::zeros_like(logits));
}

TEST(ModelParityTest, LogitsAndTopkMatchTransformers) {
    const Oracle o = oracle();
    const Model m = Model::load(oracle_path("model_hf"), ModelConfig{}, at::kCPU);
    const ModelConfig& c = m.config();
    ASSERT_EQ(c.num_hidden_layers, 4);
    ASSERT_LT(c.index_topk, o.file.get("input_ids").size(1)) << "sparsity must be active in this test";
    const ForwardInput in = o.input();
    const ForwardOutput out = m.forward(in, {.return_topk = true, .return_indexer = true});
    EXPECT_ALL_CLOSE("logits", real_rows(out.logits, in.attention_mask),
                     real_rows(o.file.get("logits"), in.attention_mask), 1e-4);

    // Top-k sets per (layer, sequence, real query) equal up to exact ties at the boundary score.
    const at::Tensor mask = in.attention_mask;
    int64_t compared = 0, tie_swaps = 0;
    for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
        const at::Tensor ours = out.topk[layer];
        const at::Tensor theirs = o.file.get("topk_indices." + std::to_string(layer));
        ASSERT_EQ(ours.sizes(), theirs.sizes()) << "layer " << layer;
        const IndexerOutput& ix = out.indexer[layer];
        const at::Tensor scores = indexer_scores(ix.q, ix.k, ix.w, 1.0 / std::sqrt(double(c.index_head_dim)));
        for (int64_t b = 0; b < ours.size(0); ++b) {
            for (int64_t t = 0; t < ours.size(1); ++t) {
                if (mask[b][t].item<int64_t>() == 0) continue;
                std::set<int64_t> a, e;
                for (int64_t j = 0; j < ours.size(2); ++j) {
                    if (int64_t v = ours[b][t][j].item<int64_t>(); v >= 0) a.insert(v);
                    if (int64_t v = theirs[b][t][j].item<int64_t>(); v >= 0) e.insert(v);
                }
                ++compared;
                if (a == e) continue;
                ASSERT_EQ(a.size(), e.size()) << "layer " << layer << " b " << b << " t " << t;
                // Every key in one set only must score exactly like a key in the other set only.
                float lowest = std::numeric_limits<float>::infinity();
                for (int64_t s : a) lowest = std::min(lowest, scores[b][t][s].item<float>());
                for (int64_t s : e) {
                    if (a.count(s)) continue;
                    EXPECT_NEAR(scores[b][t][s].item<float>(), lowest, 1e-6)
                        << "layer " << layer << " b " << b << " t " << t << ": transformers selected key " << s
                        << " that dsrl did not, and it is not tied with dsrl's lowest selected score";
                    ++tie_swaps;
                }
            }
        }
    }
    EXPECT_GT(compared, 50);
    RecordProperty("topk_tie_swaps", static_cast<int>(tie_swaps));
}

TEST(ModelParityTest, Fp8CheckpointMatchesItsDequantizedTwin) {
    const Oracle o = oracle();
    const Model fp8 = Model::load(oracle_path("model_fp8"), ModelConfig{}, at::kCPU);
    const Model twin = Model::load(oracle_path("model_fp8_twin"), ModelConfig{}, at::kCPU);
    // Dequantization is exact in fp32, so the weights (and thus the logits) are identical.
    const auto a = hf_named_tensors(fp8.weights(), fp8.config());
    const auto b = hf_named_tensors(twin.weights(), twin.config());
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i].first, b[i].first);
        EXPECT_ALL_CLOSE(a[i].first, a[i].second, b[i].second, 0.0);
    }
    const ForwardInput in = o.input();
    EXPECT_ALL_CLOSE("fp8 logits", fp8.forward(in).logits, twin.forward(in).logits, 0.0);
    // The scales were applied: each dequantized weight is the original within e4m3's precision (3 mantissa
    // bits: relative error <= 2^-4, plus subnormal steps near zero).
    const Model original = Model::load(oracle_path("model_hf"), ModelConfig{}, at::kCPU);
    const auto c = hf_named_tensors(original.weights(), original.config());
    int64_t quantized = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (!at::equal(a[i].second, c[i].second)) {
            ++quantized;
            EXPECT_ALL_CLOSE(a[i].first + " (dequantized vs original)", a[i].second, c[i].second, 1e-4, 0.0625);
        }
    }
    EXPECT_GT(quantized, 50);
}

TEST(ModelParityTest, SavedCheckpointLoadsBackIdentically) {
    const Oracle o = oracle();
    const Model m = Model::load(oracle_path("model_hf"), ModelConfig{}, at::kCPU);
    const std::string saved = oracle_path("model_saved");
    m.save(saved, {.dtype = at::kFloat});
    const Model back = Model::load(saved, ModelConfig{}, at::kCPU);
    const ForwardInput in = o.input();
    EXPECT_ALL_CLOSE("reloaded logits", back.forward(in).logits, m.forward(in).logits, 0.0);
    // transformers loads `saved` in the model_readback test (tests/dsa/model_oracle.py read).
}

}  // namespace
}  // namespace dsrl::dsa
