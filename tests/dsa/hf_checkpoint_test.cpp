#include "dsa/hf_checkpoint.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <absl/strings/match.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "dsa/model.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

// Every model field differs from ModelConfig's defaults, so a field that is not written or not read shows.
ModelConfig tiny_config(bool yarn) {
    ModelConfig c;
    c.vocab_size = 96;
    c.hidden_size = 48;
    c.intermediate_size = 80;
    c.moe_intermediate_size = 24;
    c.num_hidden_layers = 3;
    c.first_k_dense_replace = 2;
    c.num_attention_heads = 3;
    c.q_lora_rank = 20;
    c.kv_lora_rank = 28;
    c.qk_nope_head_dim = 12;
    c.qk_rope_head_dim = 6;
    c.v_head_dim = 10;
    c.n_routed_experts = 6;
    c.n_shared_experts = 2;
    c.num_experts_per_tok = 3;
    c.n_group = 3;
    c.topk_group = 2;
    c.routed_scaling_factor = 1.5;
    c.norm_topk_prob = false;
    c.index_n_heads = 5;
    c.index_head_dim = 14;
    c.index_topk = 7;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 50000.0;
    c.max_position_embeddings = 512;
    c.rope_scaling.type = yarn ? "yarn" : "none";
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.original_max_position_embeddings = 64;
    c.rope_scaling.beta_fast = 16.0;
    c.rope_scaling.beta_slow = 2.0;
    c.rope_scaling.mscale = 0.7;
    c.rope_scaling.mscale_all_dim = 0.7;
    if (!yarn) c.rope_scaling = RopeScalingConfig{.type = "none"};
    c.initializer_range = 0.01;
    c.tie_word_embeddings = true;
    c.bos_token_id = 2;
    c.eos_token_id = 3;
    return c;
}

void expect_same_model(const ModelArch& a, const ModelArch& b) {
    EXPECT_TRUE(a == b);  // every field; the lines below name the one that differs
#define DSRL_EXPECT_FIELD(f) EXPECT_EQ(a.f, b.f) << #f
    DSRL_EXPECT_FIELD(vocab_size);
    DSRL_EXPECT_FIELD(hidden_size);
    DSRL_EXPECT_FIELD(intermediate_size);
    DSRL_EXPECT_FIELD(moe_intermediate_size);
    DSRL_EXPECT_FIELD(num_hidden_layers);
    DSRL_EXPECT_FIELD(first_k_dense_replace);
    DSRL_EXPECT_FIELD(num_attention_heads);
    DSRL_EXPECT_FIELD(q_lora_rank);
    DSRL_EXPECT_FIELD(kv_lora_rank);
    DSRL_EXPECT_FIELD(qk_nope_head_dim);
    DSRL_EXPECT_FIELD(qk_rope_head_dim);
    DSRL_EXPECT_FIELD(v_head_dim);
    DSRL_EXPECT_FIELD(n_routed_experts);
    DSRL_EXPECT_FIELD(n_shared_experts);
    DSRL_EXPECT_FIELD(num_experts_per_tok);
    DSRL_EXPECT_FIELD(n_group);
    DSRL_EXPECT_FIELD(topk_group);
    DSRL_EXPECT_FIELD(routed_scaling_factor);
    DSRL_EXPECT_FIELD(norm_topk_prob);
    DSRL_EXPECT_FIELD(index_n_heads);
    DSRL_EXPECT_FIELD(index_head_dim);
    DSRL_EXPECT_FIELD(index_topk);
    DSRL_EXPECT_FIELD(rms_norm_eps);
    DSRL_EXPECT_FIELD(rope_theta);
    DSRL_EXPECT_FIELD(max_position_embeddings);
    DSRL_EXPECT_FIELD(rope_scaling.type);
    DSRL_EXPECT_FIELD(initializer_range);
    DSRL_EXPECT_FIELD(tie_word_embeddings);
    DSRL_EXPECT_FIELD(bos_token_id);
    DSRL_EXPECT_FIELD(eos_token_id);
    if (a.rope_scaling.type == "yarn") {
        DSRL_EXPECT_FIELD(rope_scaling.factor);
        DSRL_EXPECT_FIELD(rope_scaling.original_max_position_embeddings);
        DSRL_EXPECT_FIELD(rope_scaling.beta_fast);
        DSRL_EXPECT_FIELD(rope_scaling.beta_slow);
        DSRL_EXPECT_FIELD(rope_scaling.mscale);
        DSRL_EXPECT_FIELD(rope_scaling.mscale_all_dim);
    }
#undef DSRL_EXPECT_FIELD
}

// The message of the CheckpointError `fn` throws; "" when it throws nothing.
std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const CheckpointError& e) {
        return e.what();
    }
    return "";
}

std::vector<std::string> list_dir(const std::string& dir) {
    return fs::is_dir(dir) ? fs::list_dir(dir) : std::vector<std::string>{};
}

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
    return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && at::equal(a, b);
}

// W[r, c] = float(W8[r, c]) * scale[r / br, c / bc], element by element.
at::Tensor dequant_reference(const at::Tensor& w8, const at::Tensor& scale, int64_t br, int64_t bc) {
    const at::Tensor w = w8.to(at::kFloat).contiguous();
    const at::Tensor s = scale.to(at::kFloat).contiguous();
    at::Tensor out = at::empty(w.sizes(), at::kFloat);
    const auto wa = w.accessor<float, 2>();
    const auto sa = s.accessor<float, 2>();
    auto oa = out.accessor<float, 2>();
    for (int64_t r = 0; r < w.size(0); ++r) {
        for (int64_t c = 0; c < w.size(1); ++c) oa[r][c] = wa[r][c] * sa[r / br][c / bc];
    }
    return out;
}

Named sample_tensors(uint64_t seed) {
    auto gen = rng::make_cpu_generator(seed);
    return {
        {"model.embed_tokens.weight", at::randn({96, 48}, gen)},
        {"model.layers.0.input_layernorm.weight", at::randn({48}, gen)},
        {"model.position_counts", at::arange(7, at::kLong)},
        {"model.layers.0.self_attn.q_a_proj.weight", at::randn({20, 48}, gen)},
        {"model.layers.0.self_attn.indexer.k_norm.bias", at::randn({14}, gen).to(at::kBFloat16)},
        {"model.layers.1.mlp.gate.e_score_correction_bias", at::randn({6}, gen)},
        {"model.layers.1.mlp.experts.0.up_proj.weight", at::randn({24, 48}, gen)},
        {"model.norm.weight", at::randn({48}, gen)},
        {"lm_head.weight", at::randn({96, 48}, gen)},
    };
}

// ---- config.json ----------------------------------------------------------------------------------------

TEST(HfCheckpointConfigTest, RoundTripsYarnAndPlainRope) {
    testing::TempDir dir;
    for (const bool yarn : {true, false}) {
        SCOPED_TRACE(yarn ? "yarn" : "none");
        const ModelConfig cfg = tiny_config(yarn);
        const std::string text = hf_config_json(cfg, at::kBFloat16);
        const Json j = Json::parse(text);
        EXPECT_EQ(j["architectures"], Json::array({"DeepseekV32ForCausalLM"}));
        EXPECT_EQ(j["model_type"], "deepseek_v32");
        EXPECT_EQ(j["dtype"], "bfloat16");
        EXPECT_EQ(j["num_key_value_heads"], cfg.num_attention_heads);
        EXPECT_EQ(j["head_dim"], cfg.qk_rope_head_dim);
        EXPECT_EQ(j["qk_head_dim"], cfg.qk_nope_head_dim + cfg.qk_rope_head_dim);
        EXPECT_EQ(j["hidden_act"], "silu");
        EXPECT_TRUE(j["pad_token_id"].is_null());
        EXPECT_EQ(j["use_cache"], true);
        EXPECT_EQ(j["mlp_layer_types"], Json::array({"dense", "dense", "sparse"}));
        EXPECT_FALSE(j.contains("layer_types")) << "transformers versions disagree on its values";
        EXPECT_EQ(j["rope_parameters"]["rope_type"], yarn ? "yarn" : "default");
        EXPECT_EQ(j["rope_parameters"]["rope_theta"], 50000.0);
        EXPECT_FALSE(j.contains("rope_scaling"));
        EXPECT_THAT(hf_config_json(cfg, at::kFloat), HasSubstr("\"dtype\": \"float32\""));

        const ModelArch back = read_hf_config(dir.write("config.json", text));
        expect_same_model(back, cfg);
    }
    // mscale 0 means "not set": the key is omitted and reads back as 0.
    ModelConfig cfg = tiny_config(true);
    cfg.rope_scaling.mscale = 0;
    cfg.rope_scaling.mscale_all_dim = 0;
    const std::string text = hf_config_json(cfg, at::kFloat);
    EXPECT_FALSE(Json::parse(text)["rope_parameters"].contains("mscale"));
    expect_same_model(read_hf_config(dir.write("config.json", text)), cfg);
}

// deepseek-ai/DeepSeek-V3.2's config.json: legacy rope_scaling + top-level rope_theta, integer factor/theta.
constexpr const char* kDeepSeekV32Config = R"({
  "architectures": ["DeepseekV32ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu",
  "hidden_size": 7168, "index_head_dim": 128, "index_n_heads": 64, "index_topk": 2048, "initializer_range": 0.02,
  "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v32",
  "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
  "norm_topk_prob": true, "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
  "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128], "scale_fmt": "ue8m0"},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "tie_word_embeddings": false,
  "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "transformers_version": "4.44.2",
  "use_cache": true, "v_head_dim": 128, "vocab_size": 129280
})";

TEST(HfCheckpointConfigTest, ReadsTheLegacyDeepSeekV32Config) {
    testing::TempDir dir;
    const ModelArch c = read_hf_config(dir.write("config.json", kDeepSeekV32Config));
    EXPECT_EQ(c.vocab_size, 129280);
    EXPECT_EQ(c.hidden_size, 7168);
    EXPECT_EQ(c.num_hidden_layers, 61);
    EXPECT_EQ(c.first_k_dense_replace, 3);
    EXPECT_EQ(c.n_routed_experts, 256);
    EXPECT_EQ(c.n_group, 8);
    EXPECT_EQ(c.topk_group, 4);
    EXPECT_EQ(c.num_experts_per_tok, 8);
    EXPECT_EQ(c.index_n_heads, 64);
    EXPECT_EQ(c.index_head_dim, 128);
    EXPECT_EQ(c.index_topk, 2048);
    EXPECT_EQ(c.max_position_embeddings, 163840);
    EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
    EXPECT_EQ(c.rope_scaling.type, "yarn");
    EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 40.0);
    EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);
    EXPECT_DOUBLE_EQ(c.rope_scaling.beta_fast, 32.0);
    EXPECT_DOUBLE_EQ(c.rope_scaling.beta_slow, 1.0);
    EXPECT_DOUBLE_EQ(c.rope_scaling.mscale, 1.0);
    EXPECT_DOUBLE_EQ(c.rope_scaling.mscale_all_dim, 1.0);
    EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
    EXPECT_EQ(c.eos_token_id, 1);

    // Optional keys absent: DeepseekV32Config's defaults. eos as a list: the first id. No rope: plain RoPE.
    Json j = Json::parse(kDeepSeekV32Config);
    for (const char* key : {"n_group", "topk_group", "first_k_dense_replace", "n_shared_experts", "norm_topk_prob",
                            "tie_word_embeddings", "bos_token_id", "initializer_range", "rope_scaling", "rope_theta"}) {
        j.erase(key);
    }
    j["eos_token_id"] = {7, 1};
    const ModelArch d = read_hf_config(dir.write("config.json", j.dump()));
    EXPECT_EQ(d.n_group, 1);
    EXPECT_EQ(d.topk_group, 1);
    EXPECT_EQ(d.first_k_dense_replace, 3);
    EXPECT_EQ(d.n_shared_experts, 1);
    EXPECT_TRUE(d.norm_topk_prob);
    EXPECT_FALSE(d.tie_word_embeddings);
    EXPECT_EQ(d.bos_token_id, 0);
    EXPECT_EQ(d.eos_token_id, 7);
    EXPECT_DOUBLE_EQ(d.initializer_range, 0.02);
    EXPECT_EQ(d.rope_scaling.type, "none");
    EXPECT_DOUBLE_EQ(d.rope_theta, 10000.0);

    // transformers 5.x rope_parameters with rope_type "default"; it wins over a legacy rope_scaling.
    j = Json::parse(kDeepSeekV32Config);
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 5e5}};
    const ModelArch e = read_hf_config(dir.write("config.json", j.dump()));
    EXPECT_EQ(e.rope_scaling.type, "none");
    EXPECT_DOUBLE_EQ(e.rope_theta, 5e5);
}

// Which layers are dense, as DeepseekV32Config decides: mlp_layer_types where given (first_k_dense_replace then
// ignored), else the first min(first_k_dense_replace, num_hidden_layers) — its default 3 on a 2-layer config.
TEST(HfCheckpointConfigTest, DenseLayersAsTransformersCountsThem) {
    testing::TempDir dir;
    Json j = Json::parse(kDeepSeekV32Config);
    j["num_hidden_layers"] = 2;
    j["first_k_dense_replace"] = 3;
    EXPECT_EQ(read_hf_config(dir.write("config.json", j.dump())).first_k_dense_replace, 2);
    j.erase("first_k_dense_replace");
    EXPECT_EQ(read_hf_config(dir.write("config.json", j.dump())).first_k_dense_replace, 2);
    j["first_k_dense_replace"] = 3;
    j["mlp_layer_types"] = Json::array({"dense", "sparse"});
    EXPECT_EQ(read_hf_config(dir.write("config.json", j.dump())).first_k_dense_replace, 1);
    j["first_k_dense_replace"] = 0;
    j["mlp_layer_types"] = Json::array({"dense", "dense"});
    EXPECT_EQ(read_hf_config(dir.write("config.json", j.dump())).first_k_dense_replace, 2);
}

TEST(HfCheckpointConfigTest, BadConfigsNameTheFileAndKey) {
    testing::TempDir dir;
    struct Case {
        std::function<void(Json&)> edit;
        std::string expected;
    };
    const std::vector<Case> cases = {
        {[](Json& j) { j.erase("hidden_size"); }, "missing required key 'hidden_size'"},
        {[](Json& j) { j.erase("index_topk"); }, "missing required key 'index_topk'"},
        {[](Json& j) { j["hidden_size"] = "7168"; }, "key 'hidden_size': expected an integer, got \"7168\""},
        {[](Json& j) { j["num_hidden_layers"] = 61.5; }, "key 'num_hidden_layers': expected an integer"},
        {[](Json& j) { j["tie_word_embeddings"] = "no"; }, "key 'tie_word_embeddings': expected true or false"},
        {[](Json& j) { j["rms_norm_eps"] = "small"; }, "key 'rms_norm_eps': expected a number"},
        {[](Json& j) { j["hidden_size"] = 0; }, "key 'hidden_size': expected a positive integer, got 0"},
        {[](Json& j) { j["n_group"] = 3; }, "key 'n_group': n_routed_experts (256) must be divisible by n_group (3)"},
        {[](Json& j) { j["topk_group"] = 9; }, "key 'topk_group': topk_group (9) must not exceed n_group (8)"},
        {[](Json& j) { j["num_experts_per_tok"] = 300; }, "key 'num_experts_per_tok'"},
        {[](Json& j) { j["qk_rope_head_dim"] = 63; }, "key 'qk_rope_head_dim': must be even, got 63"},
        {[](Json& j) { j["index_head_dim"] = 32; }, "key 'index_head_dim'"},
        {[](Json& j) { j["eos_token_id"] = 200000; }, "key 'eos_token_id': must be < vocab_size"},
        {[](Json& j) { j["eos_token_id"] = Json::array(); }, "key 'eos_token_id'"},
        {[](Json& j) { j["model_type"] = "deepseek_v3"; }, "key 'model_type': expected \"deepseek_v32\""},
        {[](Json& j) { j["model_type"] = "llama"; }, "got \"llama\""},
        {[](Json& j) { j.erase("model_type"); }, "missing required key 'model_type'"},
        {[](Json& j) { j["rope_scaling"]["type"] = "linear"; }, "key 'rope_scaling.type': unsupported RoPE type"},
        {[](Json& j) { j["rope_scaling"]["factor"] = "40"; }, "key 'rope_scaling.factor': expected a number"},
        {[](Json& j) { j["rope_scaling"].erase("original_max_position_embeddings"); },
         "missing required key 'rope_scaling.original_max_position_embeddings'"},
        {[](Json& j) {
             j["rope_parameters"] = {{"rope_type", "dynamic"}, {"rope_theta", 1e4}};
         },
         "key 'rope_parameters.rope_type'"},
        {[](Json& j) { j["rope_parameters"] = 3; }, "key 'rope_parameters': expected an object"},
        {[](Json& j) { j["scoring_func"] = "softmax"; }, "key 'scoring_func'"},
        {[](Json& j) { j["attention_bias"] = true; }, "key 'attention_bias': only false is supported"},
        {[](Json& j) {
             j["mlp_layer_types"] = Json::array({"sparse", "dense"});
         },
         "key 'mlp_layer_types'"},
        {[](Json& j) { j["quantization_config"]["weight_block_size"] = {128}; },
         "key 'quantization_config.weight_block_size'"},
        {[](Json& j) { j["quantization_config"]["quant_method"] = "gptq"; }, "key 'quantization_config.quant_method'"},
    };
    const std::string path = fs::join(dir.path(), "config.json");
    for (const Case& c : cases) {
        Json j = Json::parse(kDeepSeekV32Config);
        c.edit(j);
        dir.write("config.json", j.dump());
        const std::string msg = error_of([&] { read_hf_config(path); });
        EXPECT_THAT(msg, HasSubstr(path)) << c.expected;
        EXPECT_THAT(msg, HasSubstr(c.expected));
    }
    dir.write("config.json", "{\"model_type\": \"deepseek_v32\",");
    EXPECT_THAT(error_of([&] { read_hf_config(path); }), HasSubstr(path + ": not valid JSON"));
    dir.write("config.json", "[1, 2]");
    EXPECT_THAT(error_of([&] { read_hf_config(path); }), HasSubstr("expected a JSON object"));
    EXPECT_THAT(error_of([&] { read_hf_config(path + ".missing"); }), HasSubstr(path + ".missing: cannot open"));
}

// ---- FP8 ------------------------------------------------------------------------------------------------

TEST(HfCheckpointFp8Test, DequantizesPartialBlocksLikeAnElementwiseReference) {
    auto gen = rng::make_cpu_generator(3);
    struct Shape {
        int64_t rows, cols, br, bc;
    };
    for (const Shape& s : {Shape{5, 7, 2, 4}, Shape{8, 8, 2, 4}, Shape{130, 257, 128, 128}, Shape{1, 1, 128, 128}}) {
        SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols << " blocks " << s.br << "x" << s.bc);
        const at::Tensor w8 = (at::randn({s.rows, s.cols}, gen) * 10).to(at::kFloat8_e4m3fn);
        const at::Tensor scale = at::rand({(s.rows + s.br - 1) / s.br, (s.cols + s.bc - 1) / s.bc}, gen) + 0.5;
        const at::Tensor expected = dequant_reference(w8, scale, s.br, s.bc);
        const Fp8Format fmt{.block_rows = s.br, .block_cols = s.bc};
        const at::Tensor f32 = dequantize_fp8_blockwise(w8, scale, fmt, at::kFloat, "w");
        EXPECT_TRUE(f32.is_contiguous());
        EXPECT_TRUE(bitwise_equal(f32, expected));
        const at::Tensor bf16 = dequantize_fp8_blockwise(w8, scale, fmt, at::kBFloat16, "w");
        EXPECT_TRUE(bitwise_equal(bf16, expected.to(at::kBFloat16)));
    }
}

TEST(HfCheckpointFp8Test, RejectsAScaleOfTheWrongShape) {
    const at::Tensor w8 = at::randn({5, 7}).to(at::kFloat8_e4m3fn);
    const Fp8Format fmt{.block_rows = 2, .block_cols = 4};
    const std::string msg = error_of([&] {
        dequantize_fp8_blockwise(w8, at::ones({2, 2}), fmt, at::kFloat, "f: tensor 'w'");
    });
    EXPECT_THAT(msg, HasSubstr("f: tensor 'w'"));
    EXPECT_THAT(msg, HasSubstr("expected weight_scale_inv of shape [3, 2]"));
    EXPECT_THAT(msg, HasSubstr("got Float [2, 2]"));
    EXPECT_THAT(error_of([&] {
                    dequantize_fp8_blockwise(at::randn({5, 7}), at::rand({3, 2}), fmt, at::kFloat, "w");
                }),
                HasSubstr("expected a 2-D F8_E4M3 weight, got Float"));
}

// ---- save + open ----------------------------------------------------------------------------------------

void expect_loads_back(const HfCheckpointReader& r, const Named& tensors, at::ScalarType dtype) {
    std::vector<std::string> names;
    for (const auto& [name, t] : tensors) names.push_back(name);
    std::sort(names.begin(), names.end());
    EXPECT_EQ(r.names(), names);
    for (const auto& [name, t] : tensors) {
        SCOPED_TRACE(name);
        ASSERT_TRUE(r.contains(name));
        EXPECT_FALSE(r.is_quantized(name));
        EXPECT_EQ(r.info(name).shape, t.sizes().vec());
        if (at::isFloatingType(t.scalar_type())) {
            // The routing bias is saved in fp32 whatever the dtype (saved_dtype), as in DeepSeek's checkpoints.
            const at::ScalarType stored = saved_dtype(name, t, dtype);
            EXPECT_EQ(stored, absl::EndsWith(name, "e_score_correction_bias") ? at::kFloat : dtype);
            EXPECT_EQ(r.info(name).scalar_type, stored);
            const at::Tensor got = r.load(name, at::kFloat);
            EXPECT_TRUE(bitwise_equal(got, t.to(stored).to(at::kFloat)));
            EXPECT_EQ(r.load(name, dtype).scalar_type(), dtype);
        } else {
            EXPECT_TRUE(bitwise_equal(r.load(name, at::kFloat), t));  // integers keep their dtype
        }
    }
}

TEST(HfCheckpointIoTest, SingleFileRoundTripInBf16AndFp32) {
    testing::TempDir tmp;
    const Named tensors = sample_tensors(4);
    const ModelConfig cfg = tiny_config(true);
    for (const at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
        SCOPED_TRACE(c10::toString(dtype));
        const std::string dir = fs::join(tmp.path(), "ckpt");
        save_hf_checkpoint(dir, cfg, tensors, {.dtype = dtype});
        EXPECT_EQ(list_dir(dir), (std::vector<std::string>{"config.json", "model.safetensors"}));
        EXPECT_EQ(SafetensorsFile::open(fs::join(dir, "model.safetensors")).metadata().at("format"), "pt");
        const HfCheckpointReader r = HfCheckpointReader::open(dir);
        expect_same_model(r.arch(), cfg);
        EXPECT_EQ(r.dir(), dir);
        EXPECT_EQ(r.file_of("lm_head.weight"), fs::join(dir, "model.safetensors"));
        expect_loads_back(r, tensors, dtype);
        const at::Tensor a = r.load("model.norm.weight", at::kFloat);
        a.fill_(0);  // a fresh copy: the next load is unaffected
        EXPECT_FALSE(bitwise_equal(a, r.load("model.norm.weight", at::kFloat)));
    }
}

TEST(HfCheckpointIoTest, ShardedRoundTripWritesTheTransformersIndex) {
    testing::TempDir tmp;
    const Named tensors = sample_tensors(5);
    const std::string dir = fs::join(tmp.path(), "sharded");
    // 96x48 fp32 = 18432 bytes: the embedding and lm_head each take a shard of their own; the small ones
    // share two.
    save_hf_checkpoint(dir, tiny_config(false), tensors, {.dtype = at::kFloat, .max_shard_bytes = 8000});
    const std::vector<std::string> files = list_dir(dir);
    const std::vector<std::string> expected_files = {
        "config.json",
        "model-00001-of-00004.safetensors",
        "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors",
        "model-00004-of-00004.safetensors",
        "model.safetensors.index.json",
    };
    EXPECT_EQ(files, expected_files);
    const Json index = Json::parse(fs::read_file(fs::join(dir, "model.safetensors.index.json")));
    int64_t total = 0;
    for (const auto& [name, t] : tensors) total += t.numel() * (at::isFloatingType(t.scalar_type()) ? 4 : 8);
    EXPECT_EQ(index["metadata"]["total_size"], total);
    ASSERT_EQ(index["weight_map"].size(), tensors.size());
    EXPECT_EQ(index["weight_map"]["model.embed_tokens.weight"], "model-00001-of-00004.safetensors");
    EXPECT_EQ(index["weight_map"]["lm_head.weight"], "model-00004-of-00004.safetensors");
    for (const auto& [name, file] : index["weight_map"].items()) {
        EXPECT_TRUE(SafetensorsFile::open(fs::join(dir, file.get<std::string>())).contains(name)) << name;
    }
    const HfCheckpointReader r = HfCheckpointReader::open(dir);
    EXPECT_EQ(r.file_of("lm_head.weight"), fs::join(dir, "model-00004-of-00004.safetensors"));
    expect_loads_back(r, tensors, at::kFloat);

    // The same in bf16: half the bytes, so fewer shards.
    save_hf_checkpoint(dir, tiny_config(false), tensors, {.dtype = at::kBFloat16, .max_shard_bytes = 10000});
    expect_loads_back(HfCheckpointReader::open(dir), tensors, at::kBFloat16);

    // A model.safetensors next to the index wins, as in transformers' from_pretrained (other weights: not the
    // shards').
    const Named other = sample_tensors(6);
    save_safetensors(fs::join(dir, "model.safetensors"), other);
    const HfCheckpointReader both = HfCheckpointReader::open(dir);
    EXPECT_EQ(both.file_of("lm_head.weight"), fs::join(dir, "model.safetensors"));
    for (const auto& [name, t] : other) {
        if (at::isFloatingType(t.scalar_type())) {
            EXPECT_TRUE(bitwise_equal(both.load(name, t.scalar_type()), t)) << name;
        }
    }
}

TEST(HfCheckpointIoTest, ReplacesAnExistingCheckpointAndLeavesNoTemporaryDirectory) {
    testing::TempDir tmp;
    const std::string dir = fs::join(tmp.path(), "policy");
    save_hf_checkpoint(dir, tiny_config(true), sample_tensors(6), {.dtype = at::kFloat, .max_shard_bytes = 8000});
    std::ofstream(fs::join(dir, "stale.txt")) << "from an older run";
    const Named fresh = {{"model.norm.weight", at::arange(48, at::kFloat)}};
    save_hf_checkpoint(dir + "/", tiny_config(false), fresh, {.dtype = at::kFloat});
    EXPECT_EQ(list_dir(tmp.path()), std::vector<std::string>{"policy"});
    EXPECT_EQ(list_dir(dir), (std::vector<std::string>{"config.json", "model.safetensors"}));
    const HfCheckpointReader r = HfCheckpointReader::open(dir);
    EXPECT_EQ(r.arch().rope_scaling.type, "none");
    expect_loads_back(r, fresh, at::kFloat);

    // A save that fails midway (complex tensors cannot be stored) leaves the old checkpoint and no temp dir.
    const Named bad = {{"a", at::arange(4, at::kFloat)}, {"z", at::randn({2}).to(at::kComplexFloat)}};
    EXPECT_THROW(save_hf_checkpoint(dir, tiny_config(true), bad, {}), c10::Error);
    EXPECT_EQ(list_dir(tmp.path()), std::vector<std::string>{"policy"});
    expect_loads_back(HfCheckpointReader::open(dir), fresh, at::kFloat);

    const Named twice = {{"a", at::ones({2})}, {"a", at::ones({2})}};
    EXPECT_THAT(error_of([&] { save_hf_checkpoint(dir, tiny_config(true), twice); }),
                HasSubstr("tensor 'a' is given twice"));
}

// ---- reader errors --------------------------------------------------------------------------------------

// A checkpoint directory assembled by hand: config.json plus the given files.
struct HandMade {
    testing::TempDir tmp;
    std::string dir() const { return tmp.path(); }
    std::string path(const std::string& name) const { return fs::join(tmp.path(), name); }
    void config(const Json& quantization = nullptr) const {
        Json j = Json::parse(hf_config_json(tiny_config(true), at::kBFloat16));
        if (!quantization.is_null()) j["quantization_config"] = quantization;
        tmp.write("config.json", j.dump());
    }
    void shard(const std::string& name, const Named& tensors) const { save_safetensors(path(name), tensors); }
    void index(const std::map<std::string, std::string>& weight_map) const {
        const Json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
        tmp.write("model.safetensors.index.json", index.dump());
    }
    std::string open_error() const {
        return error_of([&] { HfCheckpointReader::open(dir()); });
    }
};

TEST(HfCheckpointReaderTest, RejectsInconsistentShardsNamingTheFileAndTensor) {
    {
        HandMade c;
        c.config();
        c.shard("model-00001-of-00002.safetensors", {{"a", at::ones({2})}});
        c.index({{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}});
        const std::string msg = c.open_error();
        EXPECT_THAT(msg, HasSubstr(c.path("model.safetensors.index.json")));
        EXPECT_THAT(msg, HasSubstr("lists file 'model-00002-of-00002.safetensors', which does not exist"));
    }
    {  // the index maps b to shard 1, but shard 2 holds it
        HandMade c;
        c.config();
        c.shard("model-00001-of-00002.safetensors", {{"a", at::ones({2})}});
        c.shard("model-00002-of-00002.safetensors", {{"b", at::ones({2})}});
        c.index({{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00001-of-00002.safetensors"}});
        const std::string msg = c.open_error();
        EXPECT_THAT(msg, HasSubstr(c.path("model-00001-of-00002.safetensors") + ": missing tensor 'b'"));
        EXPECT_THAT(msg, HasSubstr("which " + c.path("model.safetensors.index.json") + " maps to this file"));
    }
    {  // with an index: a tensor also stored in a shard the index does not map it to
        HandMade c;
        c.config();
        c.shard("model-00001-of-00002.safetensors", {{"a", at::ones({2})}});
        c.shard("model-00002-of-00002.safetensors", {{"a", at::ones({2})}, {"b", at::ones({2})}});
        c.index({{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}});
        const std::string msg = c.open_error();
        EXPECT_THAT(msg, HasSubstr(c.path("model-00002-of-00002.safetensors") + ": duplicate tensor 'a'"));
    }
    {  // without an index: every *.safetensors is read; a name in two files is an error
        HandMade c;
        c.config();
        c.shard("part-a.safetensors", {{"x", at::ones({2})}});
        c.shard("part-b.safetensors", {{"x", at::ones({2})}});
        const std::string msg = c.open_error();
        EXPECT_THAT(msg, HasSubstr(c.path("part-b.safetensors") + ": duplicate tensor 'x'"));
        EXPECT_THAT(msg, HasSubstr("also stored in " + c.path("part-a.safetensors")));
    }
    {  // a file the index does not list a tensor of
        HandMade c;
        c.config();
        c.shard("model-00001-of-00001.safetensors", {{"a", at::ones({2})}, {"extra", at::ones({2})}});
        c.index({{"a", "model-00001-of-00001.safetensors"}});
        EXPECT_THAT(c.open_error(), HasSubstr("tensor 'extra' is not listed in"));
    }
}

// transformers' in-memory expert layout (a saved state_dict): gate_up_proj [E, 2I, H] (gate rows first) and
// down_proj [E, H, I] read as save_pretrained's per-expert weights; a wrong shape and a tensor stored both ways are
// refused by name. tiny_config: 6 experts, I = 24, H = 48, layer 2 the MoE layer.
TEST(HfCheckpointReaderTest, ReadsTransformersFusedExpertLayout) {
    auto gen = rng::make_cpu_generator(11);
    const at::Tensor gate_up = at::randn({6, 48, 48}, gen).to(at::kBFloat16), down = at::randn({6, 48, 24}, gen);
    const std::string prefix = "model.layers.2.mlp.experts.";
    {
        HandMade c;
        c.config();
        c.shard("model.safetensors", {{prefix + "gate_up_proj", gate_up}, {prefix + "down_proj", down}});
        const HfCheckpointReader r = HfCheckpointReader::open(c.dir());
        EXPECT_EQ(r.names().size(), 18u);
        EXPECT_FALSE(r.contains(prefix + "gate_up_proj"));
        for (int64_t e : {0, 5}) {
            const std::string at = prefix + std::to_string(e) + ".";
            EXPECT_EQ(r.info(at + "gate_proj.weight").shape, (std::vector<int64_t>{24, 48}));
            EXPECT_EQ(r.info(at + "down_proj.weight").shape, (std::vector<int64_t>{48, 24}));
            EXPECT_EQ(r.info(at + "up_proj.weight").scalar_type, at::kBFloat16);
            EXPECT_TRUE(
                bitwise_equal(r.load(at + "gate_proj.weight", at::kFloat), gate_up[e].narrow(0, 0, 24).to(at::kFloat)));
            EXPECT_TRUE(
                bitwise_equal(r.load(at + "up_proj.weight", at::kFloat), gate_up[e].narrow(0, 24, 24).to(at::kFloat)));
            EXPECT_TRUE(bitwise_equal(r.load(at + "down_proj.weight", at::kFloat), down[e]));
            EXPECT_EQ(r.file_of(at + "down_proj.weight"), c.path("model.safetensors"));
        }
    }
    {
        HandMade c;
        c.config();
        c.shard("model.safetensors", {{prefix + "down_proj", at::randn({6, 24, 48}, gen)}});
        const std::string msg = c.open_error();
        EXPECT_THAT(msg, HasSubstr("fused expert tensor 'model.layers.2.mlp.experts.down_proj' (F32 [6, 24, 48])"));
        EXPECT_THAT(msg, HasSubstr("[6, 48, 24]"));
    }
    {
        HandMade c;
        c.config();
        c.shard("model.safetensors", {{prefix + "down_proj", down}, {prefix + "3.down_proj.weight", down[3]}});
        EXPECT_THAT(c.open_error(), HasSubstr("tensor 'model.layers.2.mlp.experts.3.down_proj.weight' is stored both "
                                              "on its own and in the fused 'model.layers.2.mlp.experts.down_proj'"));
    }
}

TEST(HfCheckpointReaderTest, RejectsOrphanScalesAndUnscaledFp8) {
    {
        HandMade c;
        c.config();
        c.shard("model.safetensors", {{"w.weight_scale_inv", at::ones({1, 1})}});
        const std::string msg = c.open_error();
        EXPECT_THAT(msg, HasSubstr(c.path("model.safetensors")));
        EXPECT_THAT(msg, HasSubstr("orphan scale 'w.weight_scale_inv': no weight 'w.weight'"));
    }
    {
        HandMade c;
        c.config();
        c.shard("model.safetensors", {{"w.weight", at::ones({4, 4}).to(at::kFloat8_e4m3fn)}});
        const std::string msg = c.open_error();
        EXPECT_THAT(msg, HasSubstr(c.path("model.safetensors")));
        EXPECT_THAT(msg, HasSubstr("F8_E4M3 tensor 'w.weight' has no 'w.weight_scale_inv'"));
    }
    {
        HandMade c;
        c.config();
        c.shard("model.safetensors",
                {{"w.weight", at::ones({200, 4}).to(at::kFloat8_e4m3fn)}, {"w.weight_scale_inv", at::ones({1, 1})}});
        EXPECT_THAT(c.open_error(), HasSubstr("does not match its scale 'w.weight_scale_inv'"));
    }
}

TEST(HfCheckpointReaderTest, RejectsMissingFilesAndUnknownTensors) {
    {
        HandMade c;
        c.config();
        EXPECT_THAT(c.open_error(), HasSubstr(c.dir() + ": no model.safetensors"));
    }
    {
        HandMade c;
        c.shard("model.safetensors", {{"a", at::ones({2})}});
        EXPECT_THAT(c.open_error(), HasSubstr(c.dir() + ": missing config.json"));
    }
    {
        HandMade c;
        EXPECT_THAT(error_of([&] { HfCheckpointReader::open(c.path("nope")); }),
                    HasSubstr("not a checkpoint directory"));
    }
    HandMade c;
    c.config();
    c.shard("model.safetensors", {{"a", at::ones({2})}});
    const HfCheckpointReader r = HfCheckpointReader::open(c.dir());
    EXPECT_THAT(error_of([&] { r.load("b", at::kFloat); }), HasSubstr(c.dir() + ": missing tensor 'b'"));
    EXPECT_THAT(error_of([&] { r.info("b"); }), HasSubstr("missing tensor 'b'"));
    EXPECT_FALSE(r.contains("b"));
}

TEST(HfCheckpointReaderTest, DequantizesFp8WeightsWhoseScaleLivesInAnotherShard) {
    HandMade c;
    c.config(Json{{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {2, 4}}});
    auto gen = rng::make_cpu_generator(7);
    const at::Tensor w8 = (at::randn({5, 7}, gen) * 8).to(at::kFloat8_e4m3fn);
    const at::Tensor scale = at::rand({3, 2}, gen) + 0.25;
    const at::Tensor norm = at::randn({5}, gen).to(at::kBFloat16);
    c.shard("model-00001-of-00002.safetensors", {{"q.weight", w8}, {"norm.weight", norm}});
    c.shard("model-00002-of-00002.safetensors", {{"q.weight_scale_inv", scale}});
    c.index({{"q.weight", "model-00001-of-00002.safetensors"},
             {"norm.weight", "model-00001-of-00002.safetensors"},
             {"q.weight_scale_inv", "model-00002-of-00002.safetensors"}});
    const HfCheckpointReader r = HfCheckpointReader::open(c.dir());
    EXPECT_EQ(r.names(), (std::vector<std::string>{"norm.weight", "q.weight"}));
    EXPECT_TRUE(r.is_quantized("q.weight"));
    EXPECT_FALSE(r.is_quantized("norm.weight"));
    EXPECT_EQ(r.info("q.weight").dtype, "F8_E4M3");
    const at::Tensor expected = dequant_reference(w8, scale, 2, 4);
    EXPECT_TRUE(bitwise_equal(r.load("q.weight", at::kFloat), expected));
    EXPECT_TRUE(bitwise_equal(r.load("q.weight", at::kBFloat16), expected.to(at::kBFloat16)));
    EXPECT_TRUE(bitwise_equal(r.load("norm.weight", at::kBFloat16), norm));

    // The default block is 128x128: the same files are then inconsistent, and the error says why.
    c.config();
    EXPECT_THAT(c.open_error(), HasSubstr("[ceil(rows/128), ceil(cols/128)]"));
}

TEST(HfCheckpointReaderTest, FlagsLayersPastNumHiddenLayersAsExtra) {
    HandMade c;
    c.config();  // num_hidden_layers = 3
    c.shard("model.safetensors", {{"a", at::ones({2})}});
    const HfCheckpointReader r = HfCheckpointReader::open(c.dir());
    EXPECT_TRUE(r.is_extra_layer("model.layers.3.self_attn.q_a_proj.weight"));
    EXPECT_TRUE(r.is_extra_layer("model.layers.12.enorm.weight"));
    EXPECT_FALSE(r.is_extra_layer("model.layers.2.mlp.gate.weight"));
    EXPECT_FALSE(r.is_extra_layer("model.layers.0.input_layernorm.weight"));
    EXPECT_FALSE(r.is_extra_layer("model.embed_tokens.weight"));
    EXPECT_FALSE(r.is_extra_layer("lm_head.weight"));
    EXPECT_FALSE(r.is_extra_layer("model.layers.x.weight"));
}

// ---- MTP passthrough and FP8 export (issue 25 items 2, 3) ----------------------------------------------

// Every tensor of a checkpoint directory by name: (dtype, shape, raw bytes).
std::map<std::string, std::tuple<at::ScalarType, std::vector<int64_t>, std::string>> raw_tensors(
    const std::string& dir) {
    std::map<std::string, std::tuple<at::ScalarType, std::vector<int64_t>, std::string>> out;
    for (const std::string& f : fs::list_dir(dir)) {
        if (!absl::EndsWith(f, ".safetensors")) continue;
        const SafetensorsFile file = SafetensorsFile::open(fs::join(dir, f));
        for (const SafetensorInfo& t : file.tensors()) {
            const at::Tensor v = file.get(t.name).contiguous();
            out[t.name] = {t.scalar_type, t.shape,
                           std::string(static_cast<const char*>(v.data_ptr()), static_cast<size_t>(v.nbytes()))};
        }
    }
    return out;
}

TEST(HfCheckpointMtpTest, LoadThenSaveReproducesEveryTensorOfACheckpointWithAnMtpLayer) {
    testing::TempDir tmp;
    ModelConfig cfg = tiny_config(false);
    const Model base = Model::random(cfg, 3, at::kCPU);
    // A DeepSeek-style MTP layer at index num_hidden_layers: its own norms and projection, a decoder layer's
    // attention weights, and an FP8 weight with its block scale.
    const std::string mtp = absl::StrCat("model.layers.", cfg.num_hidden_layers, ".");
    at::Generator gen = rng::make_cpu_generator(5);
    Named extra = {{mtp + "enorm.weight", at::randn({cfg.hidden_size}, gen).to(at::kBFloat16)},
                   {mtp + "hnorm.weight", at::randn({cfg.hidden_size}, gen).to(at::kBFloat16)},
                   {mtp + "eh_proj.weight", at::randn({cfg.hidden_size, 2 * cfg.hidden_size}, gen).to(at::kBFloat16)},
                   {mtp + "self_attn.kv_a_layernorm.weight", at::randn({cfg.kv_lora_rank}, gen).to(at::kBFloat16)}};
    const auto [w8, scale] = quantize_fp8_blockwise(at::randn({200, 130}, gen), Fp8Format{});
    extra.push_back({mtp + "mlp.shared_experts.down_proj.weight", w8});
    extra.push_back({mtp + "mlp.shared_experts.down_proj.weight_scale_inv", scale});
    const std::string src = tmp.path() + "/src";
    save_hf_checkpoint(src, cfg, hf_named_tensors(base.weights(), cfg),
                       {.dtype = at::kBFloat16, .passthrough = &extra, .nextn_layers = 1});
    const Model loaded = Model::load(src, cfg, at::kCPU);
    EXPECT_EQ(loaded.passthrough().size(), extra.size());
    // bf16 -> the model's fp32 -> bf16 is exact, and the MTP tensors are written as stored: byte for byte.
    loaded.save(tmp.path() + "/out", {.dtype = at::kBFloat16});
    const auto a = raw_tensors(src), b = raw_tensors(tmp.path() + "/out");
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [name, t] : a) {
        ASSERT_TRUE(b.count(name)) << name << " was lost";
        EXPECT_TRUE(t == b.at(name)) << name << " changed";
    }
    EXPECT_EQ(read_hf_config_file(tmp.path() + "/out/config.json").nextn_layers, 1);
    // At another save dtype the MTP tensors still keep theirs (FP8 stays FP8 with its scale).
    loaded.save(tmp.path() + "/fp32", {.dtype = at::kFloat});
    const auto c = raw_tensors(tmp.path() + "/fp32");
    for (const auto& [name, t] : extra) EXPECT_TRUE(c.at(name) == a.at(name)) << name;
    EXPECT_EQ(std::get<0>(c.at("model.embed_tokens.weight")), at::kFloat);
    // A model without an MTP layer writes no num_nextn_predict_layers.
    base.save(tmp.path() + "/plain", {.dtype = at::kBFloat16});
    EXPECT_EQ(read_hf_config_file(tmp.path() + "/plain/config.json").nextn_layers, 0);
}

TEST(HfCheckpointFp8Test, QuantizationStaysWithinE4m3PrecisionPerBlock) {
    at::Generator gen = rng::make_cpu_generator(9);
    at::Tensor w = at::randn({300, 200}, gen);
    w.narrow(0, 0, 128).narrow(1, 0, 128).mul_(100.0);  // blocks of very different magnitudes
    w.narrow(0, 128, 128).narrow(1, 128, 72).zero_();   // an all-zero block
    const auto [w8, scale] = quantize_fp8_blockwise(w, Fp8Format{});
    EXPECT_EQ(w8.scalar_type(), at::kFloat8_e4m3fn);
    EXPECT_EQ(scale.sizes(), at::IntArrayRef({3, 2}));
    const at::Tensor back = dequantize_fp8_blockwise(w8, scale, Fp8Format{}, at::kFloat, "w");
    // e4m3 keeps 3 mantissa bits: |error| <= 2^-4 |w| for normal values, plus the subnormal step 2^-9 · scale.
    const at::Tensor per_elem =
        scale.repeat_interleave(128, 0).repeat_interleave(128, 1).narrow(0, 0, 300).narrow(1, 0, 200);
    EXPECT_TRUE(((back - w).abs() <= w.abs() * 0.0625 + per_elem * (1.0 / 512) + 1e-12).all().item<bool>());
    EXPECT_TRUE(back.narrow(0, 128, 128).narrow(1, 128, 72).eq(0).all().item<bool>());
    EXPECT_TRUE(fp8_quantizable("model.layers.1.self_attn.q_b_proj.weight", w));
    EXPECT_TRUE(fp8_quantizable("model.layers.1.mlp.experts.3.down_proj.weight", w));
    EXPECT_TRUE(fp8_quantizable("model.layers.1.self_attn.indexer.wk.weight", w));
    for (const char* keep :
         {"model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.gate.weight",
          "model.layers.1.self_attn.indexer.weights_proj.weight", "model.layers.1.self_attn.indexer.k_norm.weight"}) {
        EXPECT_FALSE(fp8_quantizable(keep, w)) << keep;
    }
}

TEST(HfCheckpointFp8Test, Float8ExportRoundTripsThroughTheLoader) {
    testing::TempDir tmp;
    ModelConfig cfg = tiny_config(false);
    const Model m = Model::random(cfg, 4, at::kCPU);
    m.save(tmp.path() + "/fp8", {.dtype = at::kFloat8_e4m3fn});
    const Json config = read_json_object(tmp.path() + "/fp8/config.json");
    EXPECT_EQ(config.at("quantization_config").at("quant_method"), "fp8");
    EXPECT_EQ(config.at("quantization_config").at("weight_block_size"), Json::array({128, 128}));
    EXPECT_EQ(config.at("dtype"), "bfloat16");
    const HfCheckpointReader r = HfCheckpointReader::open(tmp.path() + "/fp8");
    const Model back = Model::load(tmp.path() + "/fp8", cfg, at::kCPU);
    const auto want = hf_named_tensors(m.weights(), cfg);
    const auto got = hf_named_tensors(back.weights(), cfg);
    ASSERT_EQ(want.size(), got.size());
    int quantized = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const auto& [name, w] = want[i];
        SCOPED_TRACE(name);
        at::Tensor expect;
        if (fp8_quantizable(name, w)) {
            ++quantized;
            EXPECT_TRUE(r.is_quantized(name));
            const auto [q, s] = quantize_fp8_blockwise(w, Fp8Format{});
            expect = dequantize_fp8_blockwise(q, s, Fp8Format{}, at::kFloat, name);
        } else {
            EXPECT_FALSE(r.is_quantized(name));
            expect = w.to(saved_dtype(name, w, at::kBFloat16)).to(at::kFloat);
        }
        EXPECT_TRUE(bitwise_equal(got[i].second.to(at::kFloat), expect));
    }
    EXPECT_GT(quantized, 10);
}

}  // namespace
}  // namespace dsrl::dsa
