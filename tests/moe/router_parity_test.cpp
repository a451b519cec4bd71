// Parity of moe::route with Hugging Face transformers' DeepseekV32TopkRouter (the oracle). The inputs and
// the oracle's outputs come from tests/moe/router_oracle.py, run by CTest as a fixture
// (DSRL_ORACLE_DIR/router.json).
#include <ATen/ops/argsort.h>
#include <gtest/gtest.h>

#include "moe/router.h"
#include "tests/oracle_util.h"
#include "tests/test_util.h"

namespace dsrl::moe {
namespace {

using testing::json_to_tensor;

TEST(RouterParityTest, MatchesTransformersDeepseekV32TopkRouter) {
    const nlohmann::json cases = testing::load_oracle("router");
    ASSERT_FALSE(cases.is_null());
    ASSERT_GE(cases.size(), 4u);
    for (const auto& c : cases) {
        const auto& o = c["options"];
        const RouterOptions opt{.n_routed_experts = o["n_routed_experts"],
                                .num_experts_per_tok = o["num_experts_per_tok"],
                                .n_group = o["n_group"],
                                .topk_group = o["topk_group"],
                                .routed_scaling_factor = o["routed_scaling_factor"],
                                .norm_topk_prob = o["norm_topk_prob"]};
        const at::Tensor x = json_to_tensor(c["x"]);
        const at::Tensor w = json_to_tensor(c["weight"]);
        const at::Tensor bias = json_to_tensor(c["bias"]);
        const Route r = route(x, w, bias, opt);
        const at::Tensor order = at::argsort(r.indices, /*dim=*/-1, /*descending=*/false);
        const std::string name =
            "E=" + std::to_string(opt.n_routed_experts) + " k=" + std::to_string(opt.num_experts_per_tok);
        EXPECT_ALL_CLOSE("logits " + name, r.logits, json_to_tensor(c["logits"]), 1e-5, 1e-5);
        EXPECT_ALL_CLOSE("indices " + name, r.indices.gather(-1, order), json_to_tensor(c["indices"], at::kLong), 0.0);
        EXPECT_ALL_CLOSE("weights " + name, r.weights.gather(-1, order), json_to_tensor(c["weights"]), 1e-6, 1e-5);
    }
}

}  // namespace
}  // namespace dsrl::moe
