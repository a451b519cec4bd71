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
