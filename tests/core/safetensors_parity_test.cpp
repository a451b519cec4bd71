// Two-way compatibility with the Python safetensors library: read the file it wrote (fixture
// safetensors_oracle), and write one for it to read back (test safetensors_readback).
#include <ATen/ops/arange.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "core/safetensors.h"
#include "tests/oracle_util.h"
#include "tests/test_util.h"

namespace dsrl {
namespace {

TEST(SafetensorsParityTest, ReadsWhatPythonWroteAndWritesWhatPythonReads) {
    const nlohmann::json expected = testing::load_oracle("safetensors");
    ASSERT_FALSE(expected.is_null());
    const std::string dir = std::getenv("DSRL_ORACLE_DIR");
    const SafetensorsFile f = SafetensorsFile::open(dir + "/py_written.safetensors");
    EXPECT_EQ(f.metadata().at("format"), "pt");
    ASSERT_EQ(f.tensors().size(), expected.size());
    for (const auto& [name, e] : expected.items()) {
        const at::Tensor t = f.get(name);
        EXPECT_EQ(t.sizes().vec(), e["shape"].get<std::vector<int64_t>>()) << name;
        EXPECT_ALL_CLOSE(name, t.to(at::kFloat).flatten(), testing::json_to_tensor(e["values"]), 0.0);
    }
    EXPECT_EQ(f.get("model.embed_tokens.weight").scalar_type(), at::kBFloat16);
    EXPECT_EQ(f.get("model.layers.0.self_attn.q_a_proj.weight").scalar_type(), at::kFloat8_e4m3fn);
    EXPECT_EQ(f.get("mask").scalar_type(), at::kBool);

    save_safetensors(dir + "/dsrl_written.safetensors",
                     {{"a", at::arange(6, at::kFloat).view({2, 3}).to(at::kBFloat16)},
                      {"b", at::tensor({3, 1, 4, 1, 5}, at::kInt)},
                      {"c", at::zeros({0, 2})}},
                     {{"format", "pt"}, {"writer", "dsrl"}});
}

}  // namespace
}  // namespace dsrl
