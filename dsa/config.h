// The model's configuration (`model:` in a job): the Hugging Face config.json fields of DeepSeek-V3.2 (same
// names) and, for now in the same struct, the runtime choices path, dtype and impl. Owned by the dsa library.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/config_binder.h"
#include "core/config.h"
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
};

struct ModelConfig {
    std::string path;  ///< HF checkpoint directory; empty: random init from the fields below
    DType dtype = DType::kFloat32;
    Impl impl = Impl::kAuto;
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
    int64_t n_routed_experts = 8;
    int64_t n_shared_experts = 1;
    int64_t num_experts_per_tok = 2;
    int64_t n_group = 2;
    int64_t topk_group = 1;
    double routed_scaling_factor = 2.5;
    bool norm_topk_prob = true;
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
};

void bind(config::Binder& b, RopeScalingConfig& c);
void bind(config::Binder& b, ModelConfig& c);

/// The routing fields of a model config (HF names) as the MoE router's options.
moe::RouterOptions router_options(const ModelConfig& m);

}  // namespace dsrl
