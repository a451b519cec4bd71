// Parity of moe::route with Hugging Face transformers' DeepseekV32TopkRouter (the oracle). The inputs and
// the oracle's outputs come from tests/moe/router_oracle.py, run by CTest as a fixture
// (DSRL_ORACLE_DIR/router.json).
#include <ATen/ops/argsort.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "moe/router.h"
#include "tests/test_util.h"

namespace dsrl::moe {
namespace {

at::Tensor to_tensor(const nlohmann::json& rows, at::ScalarType dtype) {
    std::vector<double> flat;
    int64_t cols = 0;
    for (const auto& row : rows) {
        cols = static_cast<int64_t>(row.size());
        for (const auto& v : row) flat.push_back(v.get<double>());
    }
    return at::tensor(flat, at::kDouble).view({static_cast<int64_t>(rows.size()), cols}).to(dtype);
}

TEST(RouterParityTest, MatchesTransformersDeepseekV32TopkRouter) {
    const char* dir = std::getenv("DSRL_ORACLE_DIR");
    ASSERT_NE(dir, nullptr) << "DSRL_ORACLE_DIR is not set; run through ctest (fixture router_oracle)";
    std::ifstream in(std::string(dir) + "/router.json");
    ASSERT_TRUE(in) << "missing " << dir << "/router.json (the oracle fixture did not run)";
    const nlohmann::json cases = nlohmann::json::parse(in);
    ASSERT_GE(cases.size(), 4u);
    for (const auto& c : cases) {
        const auto& o = c["options"];
        const RouterOptions opt{.n_routed_experts = o["n_routed_experts"], .num_experts_per_tok = o["num_experts_per_tok"],
                                .n_group = o["n_group"], .topk_group = o["topk_group"],
                                .routed_scaling_factor = o["routed_scaling_factor"], .norm_topk_prob = o["norm_topk_prob"]};
        const at::Tensor x = to_tensor(c["x"], at::kFloat);
        const at::Tensor w = to_tensor(c["weight"], at::kFloat);
        std::vector<double> bias_values = c["bias"].get<std::vector<double>>();
        const at::Tensor bias = at::tensor(bias_values, at::kDouble).to(at::kFloat);
        const Route r = route(x, w, bias, opt);
        const at::Tensor order = at::argsort(r.indices, /*dim=*/-1, /*descending=*/false);
        const std::string name = "E=" + std::to_string(opt.n_routed_experts) + " k=" + std::to_string(opt.num_experts_per_tok);
        EXPECT_ALL_CLOSE("logits " + name, r.logits, to_tensor(c["logits"], at::kFloat), 1e-5, 1e-5);
        EXPECT_ALL_CLOSE("indices " + name, r.indices.gather(-1, order), to_tensor(c["indices"], at::kLong), 0.0);
        EXPECT_ALL_CLOSE("weights " + name, r.weights.gather(-1, order), to_tensor(c["weights"], at::kFloat), 1e-6,
                         1e-5);
    }
}

}  // namespace
}  // namespace dsrl::moe
