// Parity of dsa/rope with transformers' DeepSeek-V3.2 RoPE (oracle: tests/dsa/rope_oracle.py, run by CTest
// as a fixture writing DSRL_ORACLE_DIR/rope.json). transformers emits the interleaved rotation
// de-interleaved ([evens | odds]); our output keeps pairs in place, so it is compared after that permutation.
#include <ATen/ops/cat.h>
#include <gtest/gtest.h>

#include "dsa/rope.h"
#include "tests/oracle_util.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

at::Tensor nested_to_tensor(const nlohmann::json& j) { return testing::json_to_tensor(j, at::kDouble); }

TEST(RopeParityTest, MatchesTransformersDeepseekV32Rope) {
    const nlohmann::json cases = testing::load_oracle("rope");
    ASSERT_FALSE(cases.is_null());
    ASSERT_EQ(cases.size(), 3u);
    for (const auto& c : cases) {
        const auto& r = c["rope"];
        ModelConfig cfg;
        cfg.qk_nope_head_dim = 16;
        cfg.qk_rope_head_dim = 16;
        cfg.rope_theta = r["rope_theta"];
        cfg.rope_scaling.type = r["rope_type"] == "yarn" ? "yarn" : "none";
        if (cfg.rope_scaling.type == "yarn") {
            cfg.rope_scaling.factor = r["factor"];
            cfg.rope_scaling.original_max_position_embeddings = r["original_max_position_embeddings"];
            cfg.rope_scaling.beta_fast = r["beta_fast"];
            cfg.rope_scaling.beta_slow = r["beta_slow"];
            cfg.rope_scaling.mscale = r["mscale"];
            cfg.rope_scaling.mscale_all_dim = r["mscale_all_dim"];
        }
        const std::string name = r.dump();
        const RopeTable t = rope_table(cfg);
        EXPECT_ALL_CLOSE("inv_freq " + name, t.inv_freq, nested_to_tensor(c["inv_freq"]), 0.0, 1e-6);
        EXPECT_NEAR(t.attention_factor, c["attention_factor"].get<double>(), 1e-12) << name;
        EXPECT_NEAR(mla_softmax_scale(cfg), c["softmax_scale"].get<double>(), 1e-12) << name;

        const at::Tensor positions = nested_to_tensor(c["positions"]).to(at::kLong);  // [S]
        const at::Tensor q = nested_to_tensor(c["q"]).to(at::kFloat);                 // [H, S, 16]
        auto [cos, sin] = rope_cos_sin(t, positions);                                 // [S, 8]
        const at::Tensor inter = apply_rope_interleaved(q, cos, sin);
        const at::Tensor inter_hf_layout = at::cat({inter.slice(-1, 0, 16, 2), inter.slice(-1, 1, 16, 2)}, -1);
        EXPECT_ALL_CLOSE("interleaved " + name, inter_hf_layout, nested_to_tensor(c["interleaved"]), 1e-5, 1e-5);
        EXPECT_ALL_CLOSE("half-split " + name, apply_rope_half_split(q, cos, sin), nested_to_tensor(c["half_split"]),
                         1e-5, 1e-5);
    }
}

}  // namespace
}  // namespace dsrl::dsa
