#include "dsa/weights.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/logical_not.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

#include <algorithm>
#include <map>
#include <set>

#include "core/error.h"
#include "core/logging.h"
#include "core/rng.h"

namespace dsrl::dsa {
namespace {

using Shape = std::vector<int64_t>;

std::string layer_prefix(int64_t i) { return absl::StrCat("model.layers.", i, "."); }

bool is_moe_layer(const ModelArch& cfg, int64_t i) { return i >= cfg.first_k_dense_replace; }

constexpr const char* kExpertProjs[] = {"gate_proj", "up_proj", "down_proj"};

// Internal name of a stacked expert tensor -> (prefix "model.layers.i.mlp.experts.", proj) or empty.
bool split_stacked(const std::string& name, std::string* prefix, std::string* proj) {
    const std::string marker = ".mlp.experts.";
    const size_t at = name.find(marker);
    if (at == std::string::npos) return false;
    const std::string rest = name.substr(at + marker.size());
    for (const char* p : kExpertProjs) {
        if (rest == p) {
            *prefix = name.substr(0, at + marker.size());
            *proj = p;
            return true;
        }
    }
    return false;
}

std::string shape_str(at::IntArrayRef s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

}  // namespace

at::ScalarType model_dtype(const ModelRuntime& cfg) {
    return cfg.dtype == DType::kBFloat16 ? at::kBFloat16 : at::kFloat;
}

at::ScalarType tensor_dtype(const std::string& name, const ModelRuntime& cfg) {
    const auto ends_with = [&](const std::string& suffix) {
        return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with("mlp.gate.weight") || ends_with("mlp.gate.e_score_correction_bias") ||
        ends_with("indexer.weights_proj.weight")) {
        return at::kFloat;
    }
    return model_dtype(cfg);
}

std::vector<std::pair<std::string, Shape>> expected_shapes(const ModelArch& c) {
    const int64_t H = c.hidden_size;
    const int64_t heads = c.num_attention_heads;
    std::vector<std::pair<std::string, Shape>> out;
    out.emplace_back("model.embed_tokens.weight", Shape{c.vocab_size, H});
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::string p = layer_prefix(i);
        out.emplace_back(p + "input_layernorm.weight", Shape{H});
        out.emplace_back(p + "post_attention_layernorm.weight", Shape{H});
        const std::string a = p + "self_attn.";
        out.emplace_back(a + "q_a_proj.weight", Shape{c.q_lora_rank, H});
        out.emplace_back(a + "q_a_layernorm.weight", Shape{c.q_lora_rank});
        out.emplace_back(a + "q_b_proj.weight",
                         Shape{heads * (c.qk_nope_head_dim + c.qk_rope_head_dim), c.q_lora_rank});
        out.emplace_back(a + "kv_a_proj_with_mqa.weight", Shape{c.kv_lora_rank + c.qk_rope_head_dim, H});
        out.emplace_back(a + "kv_a_layernorm.weight", Shape{c.kv_lora_rank});
        out.emplace_back(a + "kv_b_proj.weight", Shape{heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
        out.emplace_back(a + "o_proj.weight", Shape{H, heads * c.v_head_dim});
        const std::string x = a + "indexer.";
        out.emplace_back(x + "wq_b.weight", Shape{c.index_n_heads * c.index_head_dim, c.q_lora_rank});
        out.emplace_back(x + "wk.weight", Shape{c.index_head_dim, H});
        out.emplace_back(x + "k_norm.weight", Shape{c.index_head_dim});
        out.emplace_back(x + "k_norm.bias", Shape{c.index_head_dim});
        out.emplace_back(x + "weights_proj.weight", Shape{c.index_n_heads, H});
        const std::string m = p + "mlp.";
        if (!is_moe_layer(c, i)) {
            out.emplace_back(m + "gate_proj.weight", Shape{c.intermediate_size, H});
            out.emplace_back(m + "up_proj.weight", Shape{c.intermediate_size, H});
            out.emplace_back(m + "down_proj.weight", Shape{H, c.intermediate_size});
            continue;
        }
        const int64_t E = c.n_routed_experts;
        const int64_t I = c.moe_intermediate_size;
        out.emplace_back(m + "gate.weight", Shape{E, H});
        out.emplace_back(m + "gate.e_score_correction_bias", Shape{E});
        out.emplace_back(m + "experts.gate_proj", Shape{E, I, H});
        out.emplace_back(m + "experts.up_proj", Shape{E, I, H});
        out.emplace_back(m + "experts.down_proj", Shape{E, H, I});
        if (c.n_shared_experts > 0) {
            const int64_t Is = I * c.n_shared_experts;
            out.emplace_back(m + "shared_experts.gate_proj.weight", Shape{Is, H});
            out.emplace_back(m + "shared_experts.up_proj.weight", Shape{Is, H});
            out.emplace_back(m + "shared_experts.down_proj.weight", Shape{H, Is});
        }
    }
    out.emplace_back("model.norm.weight", Shape{H});
    if (!c.tie_word_embeddings) out.emplace_back("lm_head.weight", Shape{c.vocab_size, H});
    return out;
}

std::vector<NamedTensor> named_tensors(ModelWeights& w, const ModelArch& cfg) {
    TORCH_CHECK(static_cast<int64_t>(w.layers.size()) == cfg.num_hidden_layers, "model weights have ", w.layers.size(),
                " layers, the config ", cfg.num_hidden_layers);
    std::vector<NamedTensor> out;
    out.push_back({"model.embed_tokens.weight", &w.embed_tokens});
    for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
        LayerWeights& l = w.layers[i];
        const std::string p = layer_prefix(i);
        out.push_back({p + "input_layernorm.weight", &l.input_layernorm});
        out.push_back({p + "post_attention_layernorm.weight", &l.post_attention_layernorm});
        const std::string a = p + "self_attn.";
        out.push_back({a + "q_a_proj.weight", &l.attn.q_a_proj});
        out.push_back({a + "q_a_layernorm.weight", &l.attn.q_a_layernorm});
        out.push_back({a + "q_b_proj.weight", &l.attn.q_b_proj});
        out.push_back({a + "kv_a_proj_with_mqa.weight", &l.attn.kv_a_proj_with_mqa});
        out.push_back({a + "kv_a_layernorm.weight", &l.attn.kv_a_layernorm});
        out.push_back({a + "kv_b_proj.weight", &l.attn.kv_b_proj});
        out.push_back({a + "o_proj.weight", &l.attn.o_proj});
        const std::string x = a + "indexer.";
        out.push_back({x + "wq_b.weight", &l.indexer.wq_b});
        out.push_back({x + "wk.weight", &l.indexer.wk});
        out.push_back({x + "k_norm.weight", &l.indexer.k_norm_weight});
        out.push_back({x + "k_norm.bias", &l.indexer.k_norm_bias});
        out.push_back({x + "weights_proj.weight", &l.indexer.weights_proj});
        const std::string m = p + "mlp.";
        if (!l.is_moe) {
            out.push_back({m + "gate_proj.weight", &l.mlp.gate_proj});
            out.push_back({m + "up_proj.weight", &l.mlp.up_proj});
            out.push_back({m + "down_proj.weight", &l.mlp.down_proj});
            continue;
        }
        out.push_back({m + "gate.weight", &l.moe.gate});
        out.push_back({m + "gate.e_score_correction_bias", &l.moe.bias, /*trainable=*/false});
        out.push_back({m + "experts.gate_proj", &l.moe.experts.gate_proj});
        out.push_back({m + "experts.up_proj", &l.moe.experts.up_proj});
        out.push_back({m + "experts.down_proj", &l.moe.experts.down_proj});
        if (cfg.n_shared_experts > 0) {
            out.push_back({m + "shared_experts.gate_proj.weight", &l.moe.shared.gate_proj});
            out.push_back({m + "shared_experts.up_proj.weight", &l.moe.shared.up_proj});
            out.push_back({m + "shared_experts.down_proj.weight", &l.moe.shared.down_proj});
        }
    }
    out.push_back({"model.norm.weight", &w.norm});
    if (!cfg.tie_word_embeddings) out.push_back({"lm_head.weight", &w.lm_head});
    return out;
}

namespace {

ModelWeights empty_weights(const ModelConfig& cfg) {
    ModelWeights w;
    w.layers.resize(cfg.num_hidden_layers);
    for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) w.layers[i].is_moe = is_moe_layer(cfg, i);
    return w;
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void finish(ModelWeights& w, const ModelConfig& cfg) {
    if (cfg.tie_word_embeddings) w.lm_head = w.embed_tokens;
}

}  // namespace

ModelWeights init_weights(const ModelConfig& cfg, uint64_t seed, c10::Device device) {
    ModelWeights w = empty_weights(cfg);
    at::Generator gen = rng::make_cpu_generator(seed);
    const auto shapes = expected_shapes(cfg);
    size_t k = 0;
    for (NamedTensor& t : named_tensors(w, cfg)) {
        const auto& [name, shape] = shapes[k++];
        DSRL_INTERNAL_ASSERT(name == t.name, "expected_shapes and named_tensors disagree at ", name);
        at::Tensor v;
        if (ends_with(name, "layernorm.weight") || ends_with(name, "norm.weight")) {
            v = at::ones(shape, at::kFloat);
        } else if (ends_with(name, ".bias") || ends_with(name, "e_score_correction_bias")) {
            v = at::zeros(shape, at::kFloat);
        } else {
            v = at::empty(shape, at::kFloat).normal_(0.0, cfg.initializer_range, gen);
        }
        *t.tensor = v.to(device, tensor_dtype(name, cfg));
    }
    finish(w, cfg);
    return w;
}

ModelWeights load_weights(const HfCheckpointReader& reader, const ModelConfig& cfg, c10::Device device) {
    ModelWeights w = empty_weights(cfg);
    const auto shapes = expected_shapes(cfg);
    std::set<std::string> consumed;
    // Reads one HF tensor, checking it exists, is floating point and has the expected shape.
    const auto read = [&](const std::string& hf_name, at::IntArrayRef shape, at::ScalarType dtype) {
        if (!reader.contains(hf_name)) {
            throw CheckpointError(absl::StrCat("checkpoint ", reader.dir(), ": missing tensor '", hf_name,
                                               "' (expected shape ", shape_str(shape), ")"));
        }
        const SafetensorInfo& info = reader.info(hf_name);
        if (!at::isFloatingType(info.scalar_type)) {
            throw CheckpointError(absl::StrCat("checkpoint ", reader.file_of(hf_name), ": tensor '", hf_name,
                                               "' has dtype ", info.dtype, "; a floating-point weight is expected"));
        }
        if (at::IntArrayRef(info.shape) != shape) {
            throw CheckpointError(absl::StrCat("checkpoint ", reader.file_of(hf_name), ": tensor '", hf_name,
                                               "' has shape ", shape_str(info.shape), ", the config (", reader.dir(),
                                               "/config.json) implies ", shape_str(shape)));
        }
        consumed.insert(hf_name);
        at::Tensor v = reader.load(hf_name, dtype);
        // A NaN or infinite weight would train (every step skipped) and evaluate (accuracy 0) without a word.
        if (!at::isfinite(v).all().item<bool>()) {
            const int64_t bad = at::logical_not(at::isfinite(v)).sum().item<int64_t>();
            throw CheckpointError(absl::StrCat("checkpoint ", reader.file_of(hf_name), ": tensor '", hf_name,
                                               "' holds ", bad, " non-finite value(s) (NaN or infinity) of ",
                                               v.numel()));
        }
        return v;
    };
    size_t k = 0;
    int64_t layer_logged = -1;
    for (NamedTensor& t : named_tensors(w, cfg)) {
        const auto& [name, shape] = shapes[k++];
        const at::ScalarType dtype = tensor_dtype(name, cfg);
        std::string prefix, proj;
        if (split_stacked(name, &prefix, &proj)) {
            at::Tensor stacked = at::empty(shape, at::TensorOptions().dtype(dtype).device(device));
            const Shape one(shape.begin() + 1, shape.end());
            for (int64_t e = 0; e < shape[0]; ++e) {
                stacked[e].copy_(read(absl::StrCat(prefix, e, ".", proj, ".weight"), one, dtype));
            }
            *t.tensor = stacked;
        } else {
            *t.tensor = read(name, shape, dtype).to(device);
        }
        const size_t dot = name.find('.', std::string("model.layers.").size());
        if (name.rfind("model.layers.", 0) == 0 && dot != std::string::npos) {
            const int64_t layer = std::stoll(name.substr(13, dot - 13));
            if (layer != layer_logged && (layer % 8 == 0 || layer + 1 == cfg.num_hidden_layers)) {
                DSRL_LOG(info) << "loading " << reader.dir() << ": layer " << layer + 1 << "/" << cfg.num_hidden_layers;
            }
            layer_logged = layer;
        }
    }
    for (const std::string& name : reader.names()) {
        if (consumed.count(name) || reader.is_extra_layer(name)) continue;
        // transformers may also write rotary inv_freq buffers in old checkpoints: harmless, skipped.
        if (ends_with(name, "rotary_emb.inv_freq")) continue;
        // With n_shared_experts 0 transformers still builds (and saves) the shared expert with no rows: nothing.
        if (cfg.n_shared_experts == 0 && name.find(".mlp.shared_experts.") != std::string::npos) {
            const std::vector<int64_t>& shape = reader.info(name).shape;
            if (std::find(shape.begin(), shape.end(), 0) != shape.end()) continue;
        }
        throw CheckpointError(absl::StrCat("checkpoint ", reader.file_of(name), ": unexpected tensor '", name,
                                           "' (not part of a DeepSeek-V3.2 model with this config.json)"));
    }
    finish(w, cfg);
    return w;
}

std::vector<std::pair<std::string, at::Tensor>> hf_named_tensors(const ModelWeights& w,
                                                                 const ModelArch& cfg,
                                                                 int64_t first_expert,
                                                                 HfPart part) {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const NamedTensor& t : named_tensors(const_cast<ModelWeights&>(w), cfg)) {
        std::string prefix, proj;
        if (split_stacked(t.name, &prefix, &proj)) {
            for (int64_t e = 0; e < t.tensor->size(0); ++e) {
                out.emplace_back(absl::StrCat(prefix, first_expert + e, ".", proj, ".weight"), (*t.tensor)[e]);
            }
        } else if (part == HfPart::kAll) {
            out.emplace_back(t.name, *t.tensor);
        }
    }
    // transformers builds the shared expert even with n_shared_experts 0 (no rows) and reports it missing from a
    // checkpoint without it: write it empty, as transformers does.
    if (part == HfPart::kAll && cfg.n_shared_experts == 0) {
        const int64_t H = cfg.hidden_size;
        for (size_t i = 0; i < w.layers.size(); ++i) {
            if (!w.layers[i].is_moe) continue;
            const at::TensorOptions opts = w.layers[i].moe.gate.options().dtype(w.embed_tokens.scalar_type());
            const std::string m = absl::StrCat("model.layers.", i, ".mlp.shared_experts.");
            out.emplace_back(m + "gate_proj.weight", at::empty({0, H}, opts));
            out.emplace_back(m + "up_proj.weight", at::empty({0, H}, opts));
            out.emplace_back(m + "down_proj.weight", at::empty({H, 0}, opts));
        }
    }
    return out;
}

bool is_routed_experts(const std::string& name) {
    std::string prefix, proj;
    return split_stacked(name, &prefix, &proj);
}

ParamCounts count_parameters(const ModelArch& cfg) {
    ParamCounts c;
    for (const auto& [name, shape] : expected_shapes(cfg)) {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        if (ends_with(name, "e_score_correction_bias")) continue;  // a buffer
        c.total += n;
        std::string prefix, proj;
        c.activated += split_stacked(name, &prefix, &proj) ? n / cfg.n_routed_experts * cfg.num_experts_per_tok : n;
    }
    return c;
}

}  // namespace dsrl::dsa
