// DeepSeek-V3.2's Hugging Face config.json <-> ModelArch (SPEC §2.5). One table of fields serves reading and
// writing, so a field added to ModelArch is added once; the few keys that are not one-to-one (eos lists,
// mlp_layer_types, RoPE parameters, derived head dims) are handled beside the table.
//
//   const HfConfig c = read_hf_config_file("/models/DeepSeek-V3.2/config.json");   // c.arch, c.fp8
//   std::string text = hf_config_json(c.arch, at::kBFloat16);                       // what transformers loads
//
// Every problem is a dsrl::CheckpointError naming the file and key.
#pragma once
#include <cstdint>
#include <string>

#include <c10/core/ScalarType.h>
#include <nlohmann/json_fwd.hpp>

#include "dsa/config.h"

namespace dsrl::dsa {

/// FP8 block quantization parameters from config.json's `quantization_config` (weight_block_size).
struct Fp8Format {
    int64_t block_rows = 128;
    int64_t block_cols = 128;
};

struct HfConfig {
    ModelArch arch;
    Fp8Format fp8;
    int64_t nextn_layers = 0;  ///< num_nextn_predict_layers: multi-token-prediction layers stored after the model's
};

/// What config.json says beyond the architecture.
struct HfConfigExtras {
    int64_t nextn_layers = 0;  ///< written as num_nextn_predict_layers when > 0
    bool fp8 = false;          ///< quantization_config of DeepSeek's FP8 layout (e4m3, 128×128 blocks)
};

/// Reads an HF `config.json` (model_type deepseek_v32 only: DeepSeek-V3 has no indexer). RoPE scaling comes from
/// `rope_parameters` (transformers 5.x: rope_type, rope_theta, factor, ...) or the legacy `rope_scaling` (type,
/// factor, ...) plus top-level `rope_theta`; absent means plain RoPE (type "none"). Optional keys that are absent
/// take DeepseekV32Config's defaults; unknown keys are ignored. A missing required key, a value of the wrong JSON
/// type, or an invalid value (e.g. n_routed_experts not divisible by n_group) is a CheckpointError naming the
/// file and key.
HfConfig read_hf_config_file(const std::string& config_json_path);
/// The architecture of read_hf_config_file.
ModelArch read_hf_config(const std::string& config_json_path);

/// config.json text (pretty-printed) for `arch` that transformers 5.x loads as DeepseekV32Config:
/// architectures ["DeepseekV32ForCausalLM"], model_type "deepseek_v32", rope_parameters, torch dtype name.
std::string hf_config_json(const ModelArch& arch, at::ScalarType dtype, const HfConfigExtras& extras = {});

/// transformers' name of a checkpoint dtype ("float32", "bfloat16", "float16"); nullptr for any other.
const char* hf_dtype_name(at::ScalarType dtype);

/// The JSON object stored at `path` (config.json, model.safetensors.index.json); CheckpointError naming the file
/// when it cannot be read, is not JSON, or is not an object.
nlohmann::json read_json_object(const std::string& path);

/// A JSON value for an error message, cut to 80 characters.
std::string json_excerpt(const nlohmann::json& v);

}  // namespace dsrl::dsa
