// Parity of moe::moe_forward with transformers' DeepseekV32MoE (oracle: tests/moe/moe_oracle.py).
#include <gtest/gtest.h>

#include "moe/moe_block.h"
#include "tests/oracle_util.h"
#include "tests/test_util.h"

namespace dsrl::moe {
namespace {

using testing::json_to_tensor;

TEST(MoeParityTest, MatchesTransformersDeepseekV32MoE) {
    const nlohmann::json c = testing::load_oracle("moe");
    ASSERT_FALSE(c.is_null());
    MoeWeights w;
    w.gate = json_to_tensor(c["gate"]);
    w.bias = json_to_tensor(c["bias"]);
    w.experts = {json_to_tensor(c["experts_gate_proj"]), json_to_tensor(c["experts_up_proj"]),
                 json_to_tensor(c["experts_down_proj"])};
    w.shared = {json_to_tensor(c["shared_gate_proj"]), json_to_tensor(c["shared_up_proj"]),
                json_to_tensor(c["shared_down_proj"])};
    const RouterOptions opt{.n_routed_experts = 8,
                            .num_experts_per_tok = 2,
                            .n_group = 2,
                            .topk_group = 1,
                            .routed_scaling_factor = 2.5,
                            .norm_topk_prob = true};
    const MoeOutput out = moe_forward(json_to_tensor(c["x"]), w, opt);
    EXPECT_ALL_CLOSE("moe block y", out.y, json_to_tensor(c["y"]), 1e-5, 1e-5);
}

}  // namespace
}  // namespace dsrl::moe
