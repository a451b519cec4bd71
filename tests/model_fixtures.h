// Model fixtures shared by the tests of dsa/, rollout/ and above (header-only: test_util links no model).
#pragma once

#include <cstdint>
#include <string>

#include "core/rng.h"
#include "dsa/model.h"

namespace dsrl::testing {

/// The embedded default model at toy size — every mechanism (MLA, indexer + top-k, MoE with groups, YaRN) —
/// with vocabulary 50, 64 positions (YaRN ×4 over 16) and the given index_topk.
inline ModelConfig toy_model_config(int64_t index_topk) {
    ModelConfig c;
    c.vocab_size = 50;
    c.num_hidden_layers = 3;
    c.first_k_dense_replace = 1;
    c.index_topk = index_topk;
    c.max_position_embeddings = 64;
    c.rope_scaling.factor = 4;
    c.rope_scaling.original_max_position_embeddings = 16;
    return c;
}

/// `c` with DeepSeek-V3.2's head dims — a 512-wide latent, 64-wide rope keys, 128-wide value and indexer heads, 16
/// routed experts in 8 groups (4 kept) — and YaRN ×4 over `original_positions`: the shapes the Hopper attention
/// kernels take, at the width and depth `c` sets.
inline ModelConfig with_v32_heads(ModelConfig c, int64_t original_positions) {
    c.kv_lora_rank = 512;
    c.qk_nope_head_dim = 128;
    c.qk_rope_head_dim = 64;
    c.v_head_dim = 128;
    c.index_head_dim = 128;
    c.n_routed_experts = 16;
    c.n_group = 8;
    c.topk_group = 4;
    c.rope_scaling.factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = original_positions;
    return c;
}

/// Redraws every weight but the norms from N(0, scale) — the router's balancing bias from N(0, bias_scale) —
/// with a generator seeded by `seed`. The HF init, N(0, 0.02), is too small to make attention or routing
/// interesting at toy sizes.
inline void scale_weights(dsa::Model& m, uint64_t seed, double scale, double bias_scale) {
    at::Generator gen = rng::make_cpu_generator(seed);
    for (dsa::NamedTensor& t : m.named_tensors()) {
        if (t.name.find("norm") != std::string::npos) continue;
        t.tensor->normal_(0.0, t.name.find("e_score_correction_bias") != std::string::npos ? bias_scale : scale, gen);
    }
}

}  // namespace dsrl::testing
