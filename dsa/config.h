// The model's configuration, owned by the dsa library, in two parts:
//   ModelArch     the architecture: DeepSeek-V3.2's Hugging Face config.json fields (same names). A checkpoint's
//                 config.json is read into one and written from one (dsa/hf_config.h); nothing else lives there.
//   ModelRuntime  how this process runs a model: where it came from, parameter dtype, kernel choice.
//   ModelConfig   the job's `model:` section: both, flat in YAML. With `path` set, the architecture comes from
//                 the checkpoint's config.json and the section's architecture fields are not used.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/config_binder.h"
#include "moe/router.h"

namespace dsrl {

struct RopeScalingConfig {
    std::string type = "yarn";
    double factor = 40.0;
    int64_t original_max_position_embeddings = 4096;
    double beta_fast = 32.0;
    double beta_slow = 1.0;
    double mscale = 1.0;
    double mscale_all_dim = 1.0;

    bool operator==(const RopeScalingConfig&) const = default;
};

struct ModelRuntime {
    std::string path;  ///< HF checkpoint directory; empty: random init from the architecture fields
    DType dtype = DType::kFloat32;
    Impl impl = Impl::kAuto;
    std::string chat_format = "auto";  ///< auto (deepseek_v32 for such a checkpoint, else byte), byte, deepseek_v32
    bool thinking = true;              ///< chat formats with a thinking mode render prompts in it
};

/// The routing fields (n_routed_experts, num_experts_per_tok, n_group, topk_group, routed_scaling_factor,
/// norm_topk_prob) and their defaults are moe::RouterOptions', inherited.
struct ModelArch : moe::RouterOptions {
    int64_t vocab_size = 320;
    int64_t hidden_size = 64;
    int64_t intermediate_size = 128;
    int64_t moe_intermediate_size = 32;
    int64_t num_hidden_layers = 3;
    int64_t first_k_dense_replace = 1;
    int64_t num_attention_heads = 4;
    int64_t q_lora_rank = 32;
    int64_t kv_lora_rank = 32;
    int64_t qk_nope_head_dim = 16;
    int64_t qk_rope_head_dim = 8;
    int64_t v_head_dim = 16;
    int64_t n_shared_experts = 1;
    int64_t index_n_heads = 4;
    int64_t index_head_dim = 16;
    int64_t index_topk = 32;
    double rms_norm_eps = 1e-6;
    double rope_theta = 10000.0;
    int64_t max_position_embeddings = 1024;
    RopeScalingConfig rope_scaling;
    double initializer_range = 0.02;
    bool tie_word_embeddings = false;
    int64_t bos_token_id = 0;
    int64_t eos_token_id = 1;

    bool operator==(const ModelArch&) const = default;
};

/// The job's `model:` section (and what a dsa::Model runs with): runtime choices plus architecture.
struct ModelConfig : ModelRuntime, ModelArch {};

void bind(config::Binder& b, RopeScalingConfig& c);
void bind(config::Binder& b, ModelRuntime& c);
void bind(config::Binder& b, ModelArch& c);
void bind(config::Binder& b, ModelConfig& c);

/// One problem of an architecture that is not self-consistent: the key to blame and what is wrong.
struct ArchProblem {
    std::string key;
    std::string message;
};
/// The cross-field checks of an architecture (topk_group <= n_group, even rope dims, ...), in a fixed order;
/// empty when consistent. The YAML binder and the config.json reader both report the first one.
std::vector<ArchProblem> arch_problems(const ModelArch& a);

/// The routing fields of an architecture (HF names) as the MoE router's options.
inline const moe::RouterOptions& router_options(const ModelArch& m) { return m; }

}  // namespace dsrl
