#include "dsa/hf_config.h"

#include <algorithm>
#include <optional>
#include <vector>

#include <absl/strings/str_cat.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"

namespace dsrl::dsa {
namespace {

using Json = nlohmann::json;

[[noreturn]] void fail(const std::string& file, const std::string& what) {
    throw CheckpointError(absl::StrCat(file, ": ", what));
}

// Typed access to the keys of one JSON object. `prefix` names a nested object in errors ("rope_parameters.").
// A key whose value is null counts as absent (transformers writes e.g. "pad_token_id": null).
class Fields {
public:
    Fields(std::string file, const Json& obj, std::string prefix)
        : file_(std::move(file)), obj_(obj), prefix_(std::move(prefix)) {}

    const Json* find(const std::string& key) const {
        const auto it = obj_.find(key);
        return it == obj_.end() || it->is_null() ? nullptr : &*it;
    }
    bool has(const std::string& key) const { return find(key) != nullptr; }

    [[noreturn]] void bad(const std::string& key, const std::string& what) const {
        fail(file_, absl::StrCat("key '", prefix_, key, "': ", what));
    }
    const Json& required(const std::string& key) const {
        const Json* v = find(key);
        if (v == nullptr) fail(file_, absl::StrCat("missing required key '", prefix_, key, "'"));
        return *v;
    }

    int64_t integer(const std::string& key) const { return as_integer(key, required(key)); }
    int64_t integer(const std::string& key, std::optional<int64_t> dflt) const {
        const Json* v = dflt ? find(key) : &required(key);
        return v == nullptr ? *dflt : as_integer(key, *v);
    }
    int64_t positive(const std::string& key) const { return check_positive(key, integer(key)); }
    double number(const std::string& key) const { return as_number(key, required(key)); }
    double number(const std::string& key, double dflt) const {
        const Json* v = find(key);
        return v == nullptr ? dflt : as_number(key, *v);
    }
    bool boolean(const std::string& key, bool dflt) const {
        const Json* v = find(key);
        if (v == nullptr) return dflt;
        if (!v->is_boolean()) bad(key, absl::StrCat("expected true or false, got ", json_excerpt(*v)));
        return v->get<bool>();
    }
    std::string string(const std::string& key) const { return as_string(key, required(key)); }
    std::string string(const std::string& key, const std::string& dflt) const {
        const Json* v = find(key);
        return v == nullptr ? dflt : as_string(key, *v);
    }
    /// A string that, when present, must equal `expected` (a setting dsrl implements only one way).
    void expect_string(const std::string& key, const std::string& expected, const std::string& hint) const {
        if (!has(key)) return;
        const std::string v = string(key);
        if (v != expected) bad(key, absl::StrCat("expected \"", expected, "\", got \"", v, "\"", hint));
    }
    const Json* object(const std::string& key) const {
        const Json* v = find(key);
        if (v != nullptr && !v->is_object()) bad(key, absl::StrCat("expected an object, got ", json_excerpt(*v)));
        return v;
    }
    const std::string& file() const { return file_; }

private:
    int64_t as_integer(const std::string& key, const Json& v) const {
        if (!v.is_number_integer()) bad(key, absl::StrCat("expected an integer, got ", json_excerpt(v)));
        if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
            bad(key, absl::StrCat("integer out of range: ", json_excerpt(v)));
        }
        return v.get<int64_t>();
    }
    double as_number(const std::string& key, const Json& v) const {
        if (!v.is_number()) bad(key, absl::StrCat("expected a number, got ", json_excerpt(v)));
        return v.get<double>();
    }
    std::string as_string(const std::string& key, const Json& v) const {
        if (!v.is_string()) bad(key, absl::StrCat("expected a string, got ", json_excerpt(v)));
        return v.get<std::string>();
    }
    int64_t check_positive(const std::string& key, int64_t v) const {
        if (v <= 0) bad(key, absl::StrCat("expected a positive integer, got ", v));
        return v;
    }

    std::string file_;
    const Json& obj_;
    std::string prefix_;
};

// ---- The field table -------------------------------------------------------------------------------------
// The config.json keys that map one-to-one onto a ModelArch field, in reading order. Absent optional keys take
// DeepseekV32Config's defaults (n_group/topk_group: 1, as its docstring says).

enum class Bound { kPositive, kNonNegative };

struct IntKey {
    const char* key;
    int64_t ModelArch::*field;
    Bound bound;
    std::optional<int64_t> dflt;  ///< nullopt: required
};
struct RealKey {
    const char* key;
    double ModelArch::*field;
    Bound bound;
    double dflt;
};
struct BoolKey {
    const char* key;
    bool ModelArch::*field;
    bool dflt;
};

const IntKey kIntKeys[] = {
    {"vocab_size", &ModelArch::vocab_size, Bound::kPositive, std::nullopt},
    {"hidden_size", &ModelArch::hidden_size, Bound::kPositive, std::nullopt},
    {"intermediate_size", &ModelArch::intermediate_size, Bound::kPositive, std::nullopt},
    {"moe_intermediate_size", &ModelArch::moe_intermediate_size, Bound::kPositive, std::nullopt},
    {"num_hidden_layers", &ModelArch::num_hidden_layers, Bound::kPositive, std::nullopt},
    {"num_attention_heads", &ModelArch::num_attention_heads, Bound::kPositive, std::nullopt},
    {"q_lora_rank", &ModelArch::q_lora_rank, Bound::kPositive, std::nullopt},
    {"kv_lora_rank", &ModelArch::kv_lora_rank, Bound::kPositive, std::nullopt},
    {"qk_nope_head_dim", &ModelArch::qk_nope_head_dim, Bound::kPositive, std::nullopt},
    {"qk_rope_head_dim", &ModelArch::qk_rope_head_dim, Bound::kPositive, std::nullopt},
    {"v_head_dim", &ModelArch::v_head_dim, Bound::kPositive, std::nullopt},
    {"n_routed_experts", &ModelArch::n_routed_experts, Bound::kPositive, std::nullopt},
    {"num_experts_per_tok", &ModelArch::num_experts_per_tok, Bound::kPositive, std::nullopt},
    {"index_n_heads", &ModelArch::index_n_heads, Bound::kPositive, std::nullopt},
    {"index_head_dim", &ModelArch::index_head_dim, Bound::kPositive, std::nullopt},
    {"index_topk", &ModelArch::index_topk, Bound::kPositive, std::nullopt},
    {"first_k_dense_replace", &ModelArch::first_k_dense_replace, Bound::kNonNegative, 3},
    {"n_shared_experts", &ModelArch::n_shared_experts, Bound::kNonNegative, 1},
    {"n_group", &ModelArch::n_group, Bound::kPositive, 1},
    {"topk_group", &ModelArch::topk_group, Bound::kPositive, 1},
    {"max_position_embeddings", &ModelArch::max_position_embeddings, Bound::kPositive, 163840},
    {"bos_token_id", &ModelArch::bos_token_id, Bound::kNonNegative, 0},
    {"eos_token_id", &ModelArch::eos_token_id, Bound::kNonNegative, 1},  // a list: its first id (see below)
};
const RealKey kRealKeys[] = {
    {"routed_scaling_factor", &ModelArch::routed_scaling_factor, Bound::kPositive, 2.5},
    {"rms_norm_eps", &ModelArch::rms_norm_eps, Bound::kPositive, 1e-6},
    {"initializer_range", &ModelArch::initializer_range, Bound::kNonNegative, 0.02},
};
const BoolKey kBoolKeys[] = {
    {"norm_topk_prob", &ModelArch::norm_topk_prob, true},
    {"tie_word_embeddings", &ModelArch::tie_word_embeddings, false},
};

void read_table(const Fields& f, ModelArch& a) {
    for (const IntKey& k : kIntKeys) {
        const int64_t v = f.integer(k.key, k.dflt);
        if (k.bound == Bound::kPositive && v <= 0) f.bad(k.key, absl::StrCat("expected a positive integer, got ", v));
        if (k.bound == Bound::kNonNegative && v < 0) {
            f.bad(k.key, absl::StrCat("expected a non-negative integer, got ", v));
        }
        a.*k.field = v;
    }
    for (const RealKey& k : kRealKeys) {
        const double v = f.number(k.key, k.dflt);
        if (k.bound == Bound::kPositive && !(v > 0)) f.bad(k.key, absl::StrCat("expected a positive number, got ", v));
        if (k.bound == Bound::kNonNegative && !(v >= 0)) {
            f.bad(k.key, absl::StrCat("expected a non-negative number, got ", v));
        }
        a.*k.field = v;
    }
    for (const BoolKey& k : kBoolKeys) a.*k.field = f.boolean(k.key, k.dflt);
}

void write_table(const ModelArch& a, Json& j) {
    for (const IntKey& k : kIntKeys) j[k.key] = a.*k.field;
    for (const RealKey& k : kRealKeys) j[k.key] = a.*k.field;
    for (const BoolKey& k : kBoolKeys) j[k.key] = a.*k.field;
}

// ---- Keys beside the table -------------------------------------------------------------------------------

// YaRN or plain RoPE from transformers 5.x `rope_parameters`, or the legacy `rope_scaling` + `rope_theta`
// (deepseek-ai/DeepSeek-V3.2's own config.json). Absent mscale/mscale_all_dim read as 0, which dsa/rope.h
// treats as "not set", as transformers does.
void read_rope(const Fields& top, ModelArch& c) {
    c.rope_theta = top.number("rope_theta", 10000.0);
    c.rope_scaling = RopeScalingConfig{};
    c.rope_scaling.type = "none";
    const Json* params = top.object("rope_parameters");
    std::string prefix = "rope_parameters.";
    const char* type_key = "rope_type";
    if (params == nullptr) {
        params = top.object("rope_scaling");
        prefix = "rope_scaling.";
        if (params != nullptr && params->contains("type")) type_key = "type";
    }
    if (params == nullptr) return;
    const Fields r(top.file(), *params, prefix);
    c.rope_theta = r.number("rope_theta", c.rope_theta);
    if (!(c.rope_theta > 0)) r.bad("rope_theta", absl::StrCat("expected a positive number, got ", c.rope_theta));
    if (r.has("partial_rotary_factor") && r.number("partial_rotary_factor") != 1.0) {
        r.bad("partial_rotary_factor", "only 1.0 is supported: DeepSeek-V3.2 rotates all qk_rope_head_dim dims");
    }
    const std::string type = r.string(type_key, "default");
    if (type == "default") return;
    if (type != "yarn") {
        r.bad(type_key, absl::StrCat("unsupported RoPE type \"", type, "\"; expected \"yarn\" or \"default\""));
    }
    RopeScalingConfig& y = c.rope_scaling;
    y.type = "yarn";
    y.original_max_position_embeddings = r.positive("original_max_position_embeddings");
    // transformers: a null factor means max_position_embeddings / original_max_position_embeddings.
    y.factor = r.has("factor") ? r.number("factor")
                               : static_cast<double>(c.max_position_embeddings) /
                                     static_cast<double>(y.original_max_position_embeddings);
    if (!(y.factor >= 1.0)) r.bad("factor", absl::StrCat("expected a number >= 1, got ", y.factor));
    y.beta_fast = r.number("beta_fast", 32.0);
    y.beta_slow = r.number("beta_slow", 1.0);
    y.mscale = r.number("mscale", 0.0);
    y.mscale_all_dim = r.number("mscale_all_dim", 0.0);
    for (const char* key : {"beta_fast", "beta_slow", "mscale", "mscale_all_dim"}) {
        const double v = r.number(key, 0.0);
        if (!(v >= 0)) r.bad(key, absl::StrCat("expected a non-negative number, got ", v));
    }
    if (r.has("attention_factor")) {
        r.bad("attention_factor",
              "an explicit YaRN attention_factor is not supported; dsrl derives it from factor, "
              "mscale and mscale_all_dim as transformers does when it is absent");
    }
    if (!r.boolean("truncate", true)) r.bad("truncate", "only truncate = true (the DeepSeek YaRN ramp) is supported");
}

Json rope_json(const ModelArch& a) {
    Json rope = Json::object();
    rope["rope_theta"] = a.rope_theta;
    const RopeScalingConfig& y = a.rope_scaling;
    if (y.type == "yarn") {
        rope["rope_type"] = "yarn";
        rope["factor"] = y.factor;
        rope["original_max_position_embeddings"] = y.original_max_position_embeddings;
        rope["beta_fast"] = y.beta_fast;
        rope["beta_slow"] = y.beta_slow;
        // 0 means "not set" (dsa/rope.h); transformers reads an absent key the same way
        if (y.mscale != 0) rope["mscale"] = y.mscale;
        if (y.mscale_all_dim != 0) rope["mscale_all_dim"] = y.mscale_all_dim;
    } else {
        TORCH_CHECK(y.type == "none", "hf_config_json: rope_scaling.type must be \"yarn\" or \"none\", got \"", y.type,
                    "\"");
        rope["rope_type"] = "default";
    }
    return rope;
}

// `mlp_layer_types` (transformers 5.x) must be dense layers first, then MoE layers: the shape dsrl's
// first_k_dense_replace describes. Returns the number of leading dense layers.
int64_t read_mlp_layer_types(const Fields& top, const Json& types, int64_t num_layers) {
    const std::string key = "mlp_layer_types";
    if (!types.is_array()) {
        top.bad(key, absl::StrCat("expected a list of \"dense\"/\"sparse\", got ", json_excerpt(types)));
    }
    if (static_cast<int64_t>(types.size()) != num_layers) {
        top.bad(key, absl::StrCat("expected num_hidden_layers (", num_layers, ") entries, got ", types.size()));
    }
    int64_t num_dense = 0;
    bool seen_sparse = false;
    for (const Json& t : types) {
        const std::string s = t.is_string() ? t.get<std::string>() : "";
        if (s == "dense" && !seen_sparse) {
            ++num_dense;
        } else if (s == "sparse") {
            seen_sparse = true;
        } else {
            top.bad(key, absl::StrCat("expected dense layers first, then \"sparse\" (MoE) layers; got ",
                                      json_excerpt(types)));
        }
    }
    return num_dense;
}

Fp8Format read_fp8(const Fields& f) {
    Fp8Format fp8;
    const Json* q = f.object("quantization_config");
    if (q == nullptr) return fp8;
    const Fields qf(f.file(), *q, "quantization_config.");
    qf.expect_string("quant_method", "fp8", " (only block-wise FP8 checkpoints are supported)");
    qf.expect_string("fmt", "e4m3", "");
    if (const Json* block = qf.find("weight_block_size")) {
        auto positive_int = [](const Json& v) { return v.is_number_integer() && v.get<int64_t>() > 0; };
        if (!block->is_array() || block->size() != 2 || !positive_int((*block)[0]) || !positive_int((*block)[1])) {
            qf.bad("weight_block_size",
                   absl::StrCat("expected [rows, cols] of positive integers, got ", json_excerpt(*block)));
        }
        fp8.block_rows = (*block)[0].get<int64_t>();
        fp8.block_cols = (*block)[1].get<int64_t>();
    }
    return fp8;
}

}  // namespace

std::string json_excerpt(const Json& v) {
    std::string s = v.dump();
    if (s.size() > 80) s = s.substr(0, 77) + "...";
    return s;
}

Json read_json_object(const std::string& path) {
    std::string text;
    try {
        text = fs::read_file(path);
    } catch (const fs::IoError& e) {
        fail(path, absl::StrCat("cannot open: ", e.reason()));
    }
    Json root;
    try {
        root = Json::parse(text);
    } catch (const Json::exception& e) {
        fail(path, absl::StrCat("not valid JSON: ", e.what()));
    }
    if (!root.is_object()) fail(path, absl::StrCat("expected a JSON object at the top level, got ", root.type_name()));
    return root;
}

HfConfig read_hf_config_file(const std::string& path) {
    Json root = read_json_object(path);
    const std::string model_type = Fields(path, root, "").string("model_type");
    if (model_type != "deepseek_v32") {
        Fields(path, root, "")
            .bad("model_type", absl::StrCat("expected \"deepseek_v32\" (DeepSeek-V3.2), got \"", model_type, "\"",
                                            model_type == "deepseek_v3"
                                                ? "; DeepSeek-V3 has no lightning indexer, which DSA training needs"
                                                : ""));
    }
    // Generation may stop on several ids; the architecture keeps the first.
    if (auto eos = root.find("eos_token_id"); eos != root.end() && eos->is_array()) {
        if (eos->empty() || !(*eos)[0].is_number_integer() || (*eos)[0].get<int64_t>() < 0) {
            Fields(path, root, "")
                .bad("eos_token_id", absl::StrCat("expected a non-negative integer or a non-empty "
                                                  "list of them, got ",
                                                  json_excerpt(*eos)));
        }
        *eos = Json((*eos)[0]);
    }
    const Fields f(path, root, "");
    HfConfig out;
    ModelArch& c = out.arch;
    read_table(f, c);
    // As transformers' DeepseekV32Config: mlp_layer_types, where given, decides which layers are dense (it ignores
    // first_k_dense_replace then); without it the first min(first_k_dense_replace, num_hidden_layers) are — its
    // default 3 makes a 1- or 2-layer config all dense, and such a config.json says 3.
    if (const Json* types = f.find("mlp_layer_types")) {
        c.first_k_dense_replace = read_mlp_layer_types(f, *types, c.num_hidden_layers);
    } else if (c.num_hidden_layers >= 0) {
        c.first_k_dense_replace = std::min(c.first_k_dense_replace, c.num_hidden_layers);
    }
    read_rope(f, c);

    // Settings dsrl implements one way only: when present they must say so.
    f.expect_string("hidden_act", "silu", "");
    f.expect_string("scoring_func", "sigmoid", " (DeepSeek-V3.2 routes with sigmoid scores)");
    f.expect_string("topk_method", "noaux_tc", " (group-limited routing with e_score_correction_bias)");
    if (f.boolean("attention_bias", false)) {
        f.bad("attention_bias", "only false is supported (DeepSeek-V3.2's attention projections have no bias)");
    }
    if (f.has("moe_layer_freq") && f.integer("moe_layer_freq") != 1) {
        f.bad("moe_layer_freq", absl::StrCat("only 1 is supported (every layer after first_k_dense_replace is MoE), "
                                             "got ",
                                             f.integer("moe_layer_freq")));
    }
    if (f.has("num_key_value_heads") && f.integer("num_key_value_heads") != c.num_attention_heads) {
        f.bad("num_key_value_heads", absl::StrCat("MLA expects num_key_value_heads == num_attention_heads (",
                                                  c.num_attention_heads, "), got ", f.integer("num_key_value_heads")));
    }
    // The cross-field checks the YAML binder makes too (dsa/config.h).
    if (const std::vector<ArchProblem> problems = arch_problems(c); !problems.empty()) {
        f.bad(problems[0].key, problems[0].message);
    }
    out.fp8 = read_fp8(f);
    if (f.has("num_nextn_predict_layers")) {
        out.nextn_layers = f.integer("num_nextn_predict_layers");
        if (out.nextn_layers < 0) f.bad("num_nextn_predict_layers", "must be >= 0");
    }
    return out;
}

ModelArch read_hf_config(const std::string& config_json_path) { return read_hf_config_file(config_json_path).arch; }

const char* hf_dtype_name(at::ScalarType dtype) {
    switch (dtype) {
        case at::kFloat:
            return "float32";
        case at::kBFloat16:
            return "bfloat16";
        case at::kHalf:
            return "float16";
        default:
            return nullptr;
    }
}

std::string hf_config_json(const ModelArch& a, at::ScalarType dtype, const HfConfigExtras& extras) {
    const char* dtype_name = hf_dtype_name(dtype);
    TORCH_CHECK(dtype_name != nullptr, "hf_config_json: dtype must be float32, bfloat16 or float16, got ", dtype);
    // Keys as DeepseekV32Config.to_json_string() writes them (sorted, like its json.dumps(sort_keys=True)).
    Json j = Json::object();
    write_table(a, j);
    j["architectures"] = {"DeepseekV32ForCausalLM"};
    j["model_type"] = "deepseek_v32";
    j["dtype"] = dtype_name;
    // What dsrl implements one way (read back by expect_string and friends above).
    j["attention_bias"] = false;
    j["attention_dropout"] = 0.0;
    j["hidden_act"] = "silu";
    j["mlp_bias"] = false;
    j["output_router_logits"] = false;
    j["pad_token_id"] = nullptr;
    j["use_cache"] = true;
    // Derived from the table's fields.
    j["head_dim"] = a.qk_rope_head_dim;  // transformers points head_dim at the rope slice
    j["qk_head_dim"] = a.qk_nope_head_dim + a.qk_rope_head_dim;
    j["num_key_value_heads"] = a.num_attention_heads;
    std::vector<std::string> mlp_types(a.num_hidden_layers, "sparse");
    for (int64_t i = 0; i < std::min(a.first_k_dense_replace, a.num_hidden_layers); ++i) mlp_types[i] = "dense";
    j["mlp_layer_types"] = mlp_types;
    // No `layer_types`: transformers derives it, and its value changed between 5.x releases
    // ("deepseek_sparse_attention" in 5.17, "indexed_attention" in 5.24); each rejects the other's.
    j["rope_parameters"] = rope_json(a);
    if (extras.nextn_layers > 0) j["num_nextn_predict_layers"] = extras.nextn_layers;
    if (extras.fp8) {
        j["quantization_config"] = {{"activation_scheme", "dynamic"},
                                    {"fmt", "e4m3"},
                                    {"quant_method", "fp8"},
                                    {"weight_block_size", {128, 128}}};
    }
    return j.dump(2) + "\n";
}

}  // namespace dsrl::dsa
