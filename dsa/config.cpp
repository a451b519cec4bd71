#include "dsa/config.h"

#include <absl/strings/str_cat.h>

#include "core/error.h"

namespace dsrl {

using config::Binder;
using config::Rule;

void bind(Binder& b, RopeScalingConfig& c) {
    b.field("type", c.type, {.doc = "RoPE scaling: yarn (DeepSeek-V3.2) or none.", .choices = {"yarn", "none"}});
    b.field("factor", c.factor, {.doc = "YaRN context extension factor.", .min = 1.0});
    b.field("original_max_position_embeddings", c.original_max_position_embeddings,
            {.doc = "Context length before YaRN extension.", .min = 1});
    b.field("beta_fast", c.beta_fast, {.doc = "YaRN ramp: fast boundary (rotations).", .min = 0.0});
    b.field("beta_slow", c.beta_slow, {.doc = "YaRN ramp: slow boundary (rotations).", .min = 0.0});
    b.field("mscale", c.mscale, {.doc = "YaRN attention-temperature multiplier.", .min = 0.0});
    b.field("mscale_all_dim", c.mscale_all_dim, {.doc = "YaRN mscale applied to the softmax scale.", .min = 0.0});
}

void bind(Binder& b, ModelRuntime& c) {
    b.field("path", c.path,
            {.doc = "Hugging Face checkpoint directory (config.json + safetensors). Empty: random "
                    "init from the fields below."});
    b.choice("dtype", c.dtype, {{"float32", DType::kFloat32}, {"bfloat16", DType::kBFloat16}},
             {.doc = "Parameter dtype (float32: fp32 master weights, with trainer.autocast on GPU; bfloat16: bf16 "
                     "parameters)."});
    b.choice("impl", c.impl, {{"auto", Impl::kAuto}, {"reference", Impl::kReference}, {"cuda", Impl::kCuda}},
             {.doc = "DSA kernels: auto (CUDA kernels for CUDA bf16 inputs of the full-size shapes, else ATen), "
                     "reference (ATen always), cuda (the kernels or an error); docs/kernels.md."});
    b.field("chat_format", c.chat_format,
            {.doc = "How conversations become tokens: auto (deepseek_v32 for a checkpoint whose config.json says "
                    "model_type deepseek_v32 and ships tokenizer.json, else the byte-level template), byte, "
                    "deepseek_v32 (DeepSeek's reference encoder; docs/text.md).",
             .choices = {"auto", "byte", "deepseek_v32"}});
    b.field("thinking", c.thinking,
            {.doc = "Render prompts in thinking mode (<think> after the last user turn) where the chat format has "
                    "one."});
}

void bind(Binder& b, ModelArch& c) {
    const Rule pos{.min = 1};
    auto pos_doc = [&](const char* doc) {
        Rule r = pos;
        r.doc = doc;
        return r;
    };
    b.field("vocab_size", c.vocab_size, pos_doc("Vocabulary size."));
    b.field("hidden_size", c.hidden_size, pos_doc("Model width."));
    b.field("intermediate_size", c.intermediate_size, pos_doc("Dense SwiGLU width (first_k_dense_replace layers)."));
    b.field("moe_intermediate_size", c.moe_intermediate_size, pos_doc("Width of each routed/shared expert."));
    b.field("num_hidden_layers", c.num_hidden_layers, pos_doc("Decoder layers (the MTP layer is not counted)."));
    b.field("first_k_dense_replace", c.first_k_dense_replace,
            {.doc = "Layers [0, k) use a dense MLP; the rest are MoE.", .min = 0});
    b.field("num_attention_heads", c.num_attention_heads, pos_doc("MLA heads."));
    b.field("q_lora_rank", c.q_lora_rank, pos_doc("Query latent rank."));
    b.field("kv_lora_rank", c.kv_lora_rank, pos_doc("Key/value latent rank (c_kv)."));
    b.field("qk_nope_head_dim", c.qk_nope_head_dim, pos_doc("Per-head query/key dims without RoPE."));
    b.field("qk_rope_head_dim", c.qk_rope_head_dim, pos_doc("Per-head RoPE dims (shared k_pe head); even."));
    b.field("v_head_dim", c.v_head_dim, pos_doc("Per-head value dims."));
    b.field("n_routed_experts", c.n_routed_experts, pos_doc("Routed experts per MoE layer."));
    b.field("n_shared_experts", c.n_shared_experts, {.doc = "Shared experts per MoE layer.", .min = 0});
    b.field("num_experts_per_tok", c.num_experts_per_tok, pos_doc("Routed experts per token (top-k)."));
    b.field("n_group", c.n_group, pos_doc("Expert groups for group-limited routing."));
    b.field("topk_group", c.topk_group, pos_doc("Groups kept per token."));
    b.field("routed_scaling_factor", c.routed_scaling_factor,
            {.doc = "Multiplier of the routed experts' weights.", .min = 0.0, .min_open = true});
    b.field("norm_topk_prob", c.norm_topk_prob, {.doc = "Normalize the selected experts' scores to sum 1."});
    b.field("index_n_heads", c.index_n_heads, pos_doc("Lightning indexer heads H_I."));
    b.field("index_head_dim", c.index_head_dim, pos_doc("Lightning indexer head dim d_I (>= qk_rope_head_dim)."));
    b.field("index_topk", c.index_topk, pos_doc("Keys each query attends to under DSA."));
    b.field("rms_norm_eps", c.rms_norm_eps, {.doc = "RMSNorm epsilon.", .min = 0.0, .min_open = true});
    b.field("rope_theta", c.rope_theta, {.doc = "RoPE base.", .min = 0.0, .min_open = true});
    b.field("max_position_embeddings", c.max_position_embeddings, pos_doc("Maximum context length."));
    b.section("rope_scaling", c.rope_scaling, "YaRN RoPE scaling (as in DeepSeek-V3.2's config.json).");
    b.field("initializer_range", c.initializer_range, {.doc = "Std of the random init.", .min = 0.0});
    b.field("tie_word_embeddings", c.tie_word_embeddings, {.doc = "Share embed_tokens and lm_head."});
    b.field("bos_token_id", c.bos_token_id, {.doc = "Beginning-of-sequence token.", .min = 0});
    b.field("eos_token_id", c.eos_token_id, {.doc = "End-of-sequence token.", .min = 0});
    if (!b.reading()) return;
    if (const std::vector<ArchProblem> problems = arch_problems(c); !problems.empty()) {
        b.fail(problems[0].key, problems[0].message);
    }
}

void bind(Binder& b, ModelConfig& c) {
    bind(b, static_cast<ModelRuntime&>(c));
    bind(b, static_cast<ModelArch&>(c));
}

std::vector<ArchProblem> arch_problems(const ModelArch& c) {
    std::vector<ArchProblem> out;
    auto problem = [&](const char* key, std::string message) { out.push_back({key, std::move(message)}); };
    if (c.n_routed_experts % c.n_group != 0) {
        problem("n_group", absl::StrCat("n_routed_experts (", c.n_routed_experts, ") must be divisible by n_group (",
                                        c.n_group, ")"));
    }
    if (c.topk_group > c.n_group) {
        problem("topk_group",
                absl::StrCat("topk_group (", c.topk_group, ") must not exceed n_group (", c.n_group, ")"));
    }
    if (c.num_experts_per_tok > c.n_routed_experts) {
        problem("num_experts_per_tok", absl::StrCat("num_experts_per_tok (", c.num_experts_per_tok,
                                                    ") must not exceed n_routed_experts (", c.n_routed_experts, ")"));
    }
    if (c.num_experts_per_tok > c.topk_group * (c.n_routed_experts / c.n_group)) {
        problem("num_experts_per_tok",
                absl::StrCat("num_experts_per_tok (", c.num_experts_per_tok, ") exceeds the experts in topk_group (",
                             c.topk_group, ") groups of ", c.n_routed_experts / c.n_group));
    }
    if (c.n_group > 1 && c.n_routed_experts / c.n_group < 2) {
        problem("n_group", "group-limited routing scores each group by its top-2 experts: need >= 2 experts per group");
    }
    if (c.qk_rope_head_dim % 2 != 0)
        problem("qk_rope_head_dim", absl::StrCat("must be even, got ", c.qk_rope_head_dim));
    if (c.index_head_dim < c.qk_rope_head_dim) {
        problem("index_head_dim", absl::StrCat("index_head_dim (", c.index_head_dim, ") must be >= qk_rope_head_dim (",
                                               c.qk_rope_head_dim, "): the indexer's rope part comes first"));
    }
    if (c.first_k_dense_replace > c.num_hidden_layers) {
        problem("first_k_dense_replace", absl::StrCat("first_k_dense_replace (", c.first_k_dense_replace,
                                                      ") exceeds num_hidden_layers (", c.num_hidden_layers, ")"));
    }
    if (c.bos_token_id >= c.vocab_size) {
        problem("bos_token_id", absl::StrCat("must be < vocab_size (", c.vocab_size, "), got ", c.bos_token_id));
    }
    if (c.eos_token_id >= c.vocab_size) {
        problem("eos_token_id", absl::StrCat("must be < vocab_size (", c.vocab_size, "), got ", c.eos_token_id));
    }
    return out;
}

}  // namespace dsrl
