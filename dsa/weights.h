// The parameters of the DeepSeek-V3.2 model (SPEC §2) as plain tensors, their names, initialization and
// Hugging Face checkpoint load/save.
//
// Names: every tensor has one *internal* name equal to its HF name, except the routed experts, which are
// stacked per layer ([E, I, H] gate/up, [E, H, I] down) under `model.layers.{i}.mlp.experts.{gate,up,down}_proj`
// and written/read as the per-expert HF tensors `model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight`.
//
// Dtypes: the model dtype (config `model.dtype`) for every tensor except those the HF model keeps in fp32:
// the router (`mlp.gate.weight`, `mlp.gate.e_score_correction_bias`) and `indexer.weights_proj`.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "dsa/config.h"
#include "dsa/hf_checkpoint.h"
#include "moe/moe_block.h"

namespace dsrl::dsa {

struct MlaWeights {
    at::Tensor q_a_proj;            ///< [q_lora, H]
    at::Tensor q_a_layernorm;       ///< [q_lora]
    at::Tensor q_b_proj;            ///< [heads · (nope + rope), q_lora]
    at::Tensor kv_a_proj_with_mqa;  ///< [kv_lora + rope, H]
    at::Tensor kv_a_layernorm;      ///< [kv_lora]
    at::Tensor kv_b_proj;           ///< [heads · (nope + v), kv_lora]
    at::Tensor o_proj;              ///< [H, heads · v]
};

struct IndexerWeights {
    at::Tensor wq_b;           ///< [index_heads · index_dim, q_lora]
    at::Tensor wk;             ///< [index_dim, H]
    at::Tensor k_norm_weight;  ///< [index_dim] (LayerNorm)
    at::Tensor k_norm_bias;    ///< [index_dim]
    at::Tensor weights_proj;   ///< [index_heads, H], fp32
};

struct LayerWeights {
    at::Tensor input_layernorm;           ///< [H]
    at::Tensor post_attention_layernorm;  ///< [H]
    MlaWeights attn;
    IndexerWeights indexer;
    bool is_moe = false;
    moe::SwiGluWeights mlp;  ///< dense layers (< first_k_dense_replace)
    moe::MoeWeights moe;     ///< MoE layers
    /// Decode-only copies (Model::fuse_projections; undefined otherwise, never saved or trained): the projections that
    /// read the same input stacked into one matrix each, so that a decode step runs one GEMM where it ran three and
    /// two — [q_a_proj | kv_a_proj_with_mqa | indexer.wk] (rows q_lora + kv_lora + rope + index_dim, H) and
    /// [q_b_proj | indexer.wq_b] (rows heads · (nope + rope) + index_heads · index_dim, q_lora).
    at::Tensor fused_a;
    at::Tensor fused_b;
    /// A dense layer's [mlp.gate_proj | mlp.up_proj] (rows 2 · intermediate_size, H), the same kind of decode-only
    /// copy, made where it is small (Model::fuse_projections' limit): one GEMM for both (moe::swiglu_stacked).
    at::Tensor fused_gate_up;
    /// With `absorbed` (Model::fuse_projections where the product costs few extra bytes): fused_b's query rows are
    /// the absorbed ones, [W_q_lat (heads · kv_lora) | q_b_proj's rope rows (heads · rope) | indexer.wq_b], W_q_lat of
    /// head h = W_UK(h)ᵀ · q_b_proj's nope rows of h, so that one GEMM gives the latent-space query q̃ with no per-head
    /// product after it.
    bool absorbed = false;
};

struct ModelWeights {
    at::Tensor embed_tokens;  ///< [V, H]
    std::vector<LayerWeights> layers;
    at::Tensor norm;     ///< [H]
    at::Tensor lm_head;  ///< [V, H]; the same tensor as embed_tokens when tie_word_embeddings
};

/// One tensor of the model by internal name. `trainable` is false for buffers (the router bias).
struct NamedTensor {
    std::string name;
    at::Tensor* tensor;
    bool trainable = true;
};

/// Every tensor in a fixed order (embeddings, layers in order, norm, lm_head; lm_head omitted when tied).
std::vector<NamedTensor> named_tensors(ModelWeights& w, const ModelArch& cfg);
/// Whether a named_tensors() name is a layer's stacked routed experts ("model.layers.i.mlp.experts.gate_proj", ...):
/// the tensors expert parallelism shards.
bool is_routed_experts(const std::string& name);

/// The expected shape of every internal tensor for `cfg`, in named_tensors order.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_shapes(const ModelArch& cfg);

/// The model dtype (`cfg.dtype`) as an ATen scalar type, and the dtype a given internal tensor is kept in.
at::ScalarType model_dtype(const ModelRuntime& cfg);
at::ScalarType tensor_dtype(const std::string& internal_name, const ModelRuntime& cfg);

/// HF-like random init: linear weights and embeddings N(0, initializer_range), norms one, biases zero.
/// Deterministic in `seed` (independent of the device).
ModelWeights init_weights(const ModelConfig& cfg, uint64_t seed, c10::Device device);

/// Loads an HF checkpoint directory into weights shaped for `cfg` (normally `reader.arch()` with the
/// job's runtime). Tensors of extra layers (the MTP layer) are skipped; a missing or unexpected tensor, a
/// wrong shape or a non-floating dtype is a CheckpointError naming the file and the tensor. Each tensor is
/// read from the mapping, converted once and moved to `device`. Logs progress per layer.
ModelWeights load_weights(const HfCheckpointReader& reader, const ModelConfig& cfg, c10::Device device);

/// Which tensors hf_named_tensors gives.
enum class HfPart { kAll, kRoutedExperts };

/// The tensors under their HF names (experts unstacked as views), for save_hf_checkpoint. Under expert parallelism
/// `w` holds experts [first_expert, first_expert + n) of every MoE layer, and their names carry those global ids.
std::vector<std::pair<std::string, at::Tensor>> hf_named_tensors(const ModelWeights& w,
                                                                 const ModelArch& cfg,
                                                                 int64_t first_expert = 0,
                                                                 HfPart part = HfPart::kAll);

/// Total parameters and parameters activated per token (embedding + lm_head counted; routed experts
/// counted num_experts_per_tok of n_routed_experts).
struct ParamCounts {
    int64_t total = 0;
    int64_t activated = 0;
};
ParamCounts count_parameters(const ModelArch& cfg);

}  // namespace dsrl::dsa
