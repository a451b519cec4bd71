#include "dsa/hf_checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>

#include <ATen/ops/constant_pad_nd.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_join.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"

namespace dsrl::dsa {
namespace {

using Json = nlohmann::json;

constexpr const char* kConfigFile = "config.json";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kScaleSuffix = "_scale_inv";  // "X.weight" + kScaleSuffix = "X.weight_scale_inv"

[[noreturn]] void fail(const std::string& file, const std::string& what) {
    throw CheckpointError(absl::StrCat(file, ": ", what));
}

std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, absl::StrCat("cannot open: ", std::strerror(errno)));
    std::stringstream ss;
    ss << in.rdbuf();
    if (in.bad()) fail(path, "read failed");
    return ss.str();
}

Json parse_json_file(const std::string& path) {
    const std::string text = read_text(path);
    Json root;
    try {
        root = Json::parse(text);
    } catch (const Json::exception& e) {
        fail(path, absl::StrCat("not valid JSON: ", e.what()));
    }
    if (!root.is_object()) fail(path, absl::StrCat("expected a JSON object at the top level, got ", root.type_name()));
    return root;
}

std::string short_dump(const Json& v) {
    std::string s = v.dump();
    if (s.size() > 80) s = s.substr(0, 77) + "...";
    return s;
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
    int64_t integer(const std::string& key, int64_t dflt) const {
        const Json* v = find(key);
        return v == nullptr ? dflt : as_integer(key, *v);
    }
    int64_t positive(const std::string& key) const { return check_positive(key, integer(key)); }
    int64_t positive(const std::string& key, int64_t dflt) const { return check_positive(key, integer(key, dflt)); }
    int64_t non_negative(const std::string& key, int64_t dflt) const {
        const int64_t v = integer(key, dflt);
        if (v < 0) bad(key, absl::StrCat("expected a non-negative integer, got ", v));
        return v;
    }
    double number(const std::string& key) const { return as_number(key, required(key)); }
    double number(const std::string& key, double dflt) const {
        const Json* v = find(key);
        return v == nullptr ? dflt : as_number(key, *v);
    }
    bool boolean(const std::string& key, bool dflt) const {
        const Json* v = find(key);
        if (v == nullptr) return dflt;
        if (!v->is_boolean()) bad(key, absl::StrCat("expected true or false, got ", short_dump(*v)));
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
        if (v != nullptr && !v->is_object()) bad(key, absl::StrCat("expected an object, got ", short_dump(*v)));
        return v;
    }
    const std::string& file() const { return file_; }

private:
    int64_t as_integer(const std::string& key, const Json& v) const {
        if (!v.is_number_integer()) bad(key, absl::StrCat("expected an integer, got ", short_dump(v)));
        if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
            bad(key, absl::StrCat("integer out of range: ", short_dump(v)));
        }
        return v.get<int64_t>();
    }
    double as_number(const std::string& key, const Json& v) const {
        if (!v.is_number()) bad(key, absl::StrCat("expected a number, got ", short_dump(v)));
        return v.get<double>();
    }
    std::string as_string(const std::string& key, const Json& v) const {
        if (!v.is_string()) bad(key, absl::StrCat("expected a string, got ", short_dump(v)));
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

// YaRN or plain RoPE from transformers 5.x `rope_parameters`, or the legacy `rope_scaling` + `rope_theta`
// (deepseek-ai/DeepSeek-V3.2's own config.json). Absent mscale/mscale_all_dim read as 0, which dsa/rope.h
// treats as "not set", as transformers does.
void read_rope(const Fields& top, ModelConfig& c) {
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
        r.bad("attention_factor", "an explicit YaRN attention_factor is not supported; dsrl derives it from factor, "
                                  "mscale and mscale_all_dim as transformers does when it is absent");
    }
    if (!r.boolean("truncate", true)) r.bad("truncate", "only truncate = true (the DeepSeek YaRN ramp) is supported");
}

// `mlp_layer_types` (transformers 5.x) must be dense layers first, then MoE layers: the shape dsrl's
// first_k_dense_replace describes. Returns the number of leading dense layers.
int64_t read_mlp_layer_types(const Fields& top, const Json& types, int64_t num_layers) {
    const std::string key = "mlp_layer_types";
    if (!types.is_array()) {
        top.bad(key, absl::StrCat("expected a list of \"dense\"/\"sparse\", got ", short_dump(types)));
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
                                      short_dump(types)));
        }
    }
    return num_dense;
}

struct HfConfig {
    ModelConfig model;
    Fp8Format fp8;
};

HfConfig parse_hf_config(const std::string& path, const ModelConfig& base) {
    const Json root = parse_json_file(path);
    const Fields f(path, root, "");
    const std::string model_type = f.string("model_type");
    if (model_type != "deepseek_v32") {
        f.bad("model_type", absl::StrCat("expected \"deepseek_v32\" (DeepSeek-V3.2), got \"", model_type, "\"",
                                         model_type == "deepseek_v3"
                                             ? "; DeepSeek-V3 has no lightning indexer, which DSA training needs"
                                             : ""));
    }
    HfConfig out;
    ModelConfig& c = out.model;
    c = base;  // path, dtype and impl stay; every model field is set below
    c.vocab_size = f.positive("vocab_size");
    c.hidden_size = f.positive("hidden_size");
    c.intermediate_size = f.positive("intermediate_size");
    c.moe_intermediate_size = f.positive("moe_intermediate_size");
    c.num_hidden_layers = f.positive("num_hidden_layers");
    c.num_attention_heads = f.positive("num_attention_heads");
    c.q_lora_rank = f.positive("q_lora_rank");
    c.kv_lora_rank = f.positive("kv_lora_rank");
    c.qk_nope_head_dim = f.positive("qk_nope_head_dim");
    c.qk_rope_head_dim = f.positive("qk_rope_head_dim");
    c.v_head_dim = f.positive("v_head_dim");
    c.n_routed_experts = f.positive("n_routed_experts");
    c.num_experts_per_tok = f.positive("num_experts_per_tok");
    c.index_n_heads = f.positive("index_n_heads");
    c.index_head_dim = f.positive("index_head_dim");
    c.index_topk = f.positive("index_topk");
    // Optional keys take DeepseekV32Config's defaults (n_group/topk_group: 1, as its docstring says).
    c.first_k_dense_replace = f.non_negative("first_k_dense_replace", 3);
    if (const Json* types = f.find("mlp_layer_types")) {
        const int64_t num_dense = read_mlp_layer_types(f, *types, c.num_hidden_layers);
        if (f.has("first_k_dense_replace") && num_dense != c.first_k_dense_replace) {
            f.bad("mlp_layer_types", absl::StrCat("has ", num_dense, " leading dense layers but "
                                                  "first_k_dense_replace is ", c.first_k_dense_replace));
        }
        c.first_k_dense_replace = num_dense;
    }
    c.n_shared_experts = f.non_negative("n_shared_experts", 1);
    c.n_group = f.positive("n_group", 1);
    c.topk_group = f.positive("topk_group", 1);
    c.routed_scaling_factor = f.number("routed_scaling_factor", 2.5);
    c.norm_topk_prob = f.boolean("norm_topk_prob", true);
    c.rms_norm_eps = f.number("rms_norm_eps", 1e-6);
    c.max_position_embeddings = f.positive("max_position_embeddings", 163840);
    c.initializer_range = f.number("initializer_range", 0.02);
    c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
    c.bos_token_id = f.non_negative("bos_token_id", 0);
    if (const Json* eos = f.find("eos_token_id"); eos != nullptr && eos->is_array()) {
        // generation may stop on several ids; the model config keeps the first
        if (eos->empty() || !(*eos)[0].is_number_integer() || (*eos)[0].get<int64_t>() < 0) {
            f.bad("eos_token_id", absl::StrCat("expected a non-negative integer or a non-empty list of them, got ",
                                               short_dump(*eos)));
        }
        c.eos_token_id = (*eos)[0].get<int64_t>();
    } else {
        c.eos_token_id = f.non_negative("eos_token_id", 1);
    }
    read_rope(f, c);

    // Settings dsrl implements one way only: when present they must say so.
    f.expect_string("hidden_act", "silu", "");
    f.expect_string("scoring_func", "sigmoid", " (DeepSeek-V3.2 routes with sigmoid scores)");
    f.expect_string("topk_method", "noaux_tc", " (group-limited routing with e_score_correction_bias)");
    if (f.has("moe_layer_freq") && f.integer("moe_layer_freq") != 1) {
        f.bad("moe_layer_freq", absl::StrCat("only 1 is supported (every layer after first_k_dense_replace is MoE), "
                                             "got ", f.integer("moe_layer_freq")));
    }
    if (f.has("num_key_value_heads") && f.integer("num_key_value_heads") != c.num_attention_heads) {
        f.bad("num_key_value_heads", absl::StrCat("MLA expects num_key_value_heads == num_attention_heads (",
                                                  c.num_attention_heads, "), got ", f.integer("num_key_value_heads")));
    }

    // Cross-field checks (as core/config.cpp's bind(ModelConfig)).
    if (!(c.routed_scaling_factor > 0)) {
        f.bad("routed_scaling_factor", absl::StrCat("expected a positive number, got ", c.routed_scaling_factor));
    }
    if (!(c.rms_norm_eps > 0)) f.bad("rms_norm_eps", absl::StrCat("expected a positive number, got ", c.rms_norm_eps));
    if (!(c.initializer_range >= 0)) {
        f.bad("initializer_range", absl::StrCat("expected a non-negative number, got ", c.initializer_range));
    }
    if (c.n_routed_experts % c.n_group != 0) {
        f.bad("n_group", absl::StrCat("n_routed_experts (", c.n_routed_experts, ") must be divisible by n_group (",
                                      c.n_group, ")"));
    }
    if (c.topk_group > c.n_group) {
        f.bad("topk_group", absl::StrCat("topk_group (", c.topk_group, ") must not exceed n_group (", c.n_group, ")"));
    }
    if (c.num_experts_per_tok > c.n_routed_experts) {
        f.bad("num_experts_per_tok", absl::StrCat("num_experts_per_tok (", c.num_experts_per_tok,
                                                  ") must not exceed n_routed_experts (", c.n_routed_experts, ")"));
    }
    if (c.num_experts_per_tok > c.topk_group * (c.n_routed_experts / c.n_group)) {
        f.bad("num_experts_per_tok",
              absl::StrCat("num_experts_per_tok (", c.num_experts_per_tok, ") exceeds the experts in topk_group (",
                           c.topk_group, ") groups of ", c.n_routed_experts / c.n_group));
    }
    if (c.qk_rope_head_dim % 2 != 0) f.bad("qk_rope_head_dim", absl::StrCat("must be even, got ", c.qk_rope_head_dim));
    if (c.qk_rope_head_dim > c.index_head_dim) {
        f.bad("index_head_dim", absl::StrCat("index_head_dim (", c.index_head_dim, ") must be >= qk_rope_head_dim (",
                                             c.qk_rope_head_dim, "): the indexer's rope part comes first"));
    }
    if (c.first_k_dense_replace > c.num_hidden_layers) {
        f.bad("first_k_dense_replace", absl::StrCat("first_k_dense_replace (", c.first_k_dense_replace,
                                                    ") exceeds num_hidden_layers (", c.num_hidden_layers, ")"));
    }
    if (c.bos_token_id >= c.vocab_size) {
        f.bad("bos_token_id", absl::StrCat("must be < vocab_size (", c.vocab_size, "), got ", c.bos_token_id));
    }
    if (c.eos_token_id >= c.vocab_size) {
        f.bad("eos_token_id", absl::StrCat("must be < vocab_size (", c.vocab_size, "), got ", c.eos_token_id));
    }

    if (const Json* q = f.object("quantization_config")) {
        const Fields qf(path, *q, "quantization_config.");
        qf.expect_string("quant_method", "fp8", " (only block-wise FP8 checkpoints are supported)");
        qf.expect_string("fmt", "e4m3", "");
        if (const Json* block = qf.find("weight_block_size")) {
            auto positive_int = [](const Json& v) { return v.is_number_integer() && v.get<int64_t>() > 0; };
            if (!block->is_array() || block->size() != 2 || !positive_int((*block)[0]) || !positive_int((*block)[1])) {
                qf.bad("weight_block_size", absl::StrCat("expected [rows, cols] of positive integers, got ",
                                                         short_dump(*block)));
            }
            out.fp8.block_rows = (*block)[0].get<int64_t>();
            out.fp8.block_cols = (*block)[1].get<int64_t>();
        }
    }
    return out;
}

const char* hf_dtype_name(at::ScalarType dtype) {
    switch (dtype) {
        case at::kFloat: return "float32";
        case at::kBFloat16: return "bfloat16";
        case at::kHalf: return "float16";
        default: return nullptr;
    }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Writes `text` to `path` and fsyncs it (inside the temporary checkpoint directory).
void write_file_synced(const std::string& path, const std::string& text) {
    try {
        fs::write_file_synced(path, {text});
    } catch (const Error& e) {
        fail(path, e.what());
    }
}

void fsync_dir(const std::string& dir) {
    try {
        fs::fsync_dir(dir);
    } catch (const Error& e) {
        fail(dir, e.what());
    }
}

// Names of the regular files in `dir` ending in `suffix`, sorted.
std::vector<std::string> list_files(const std::string& dir, const std::string& suffix) {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) fail(dir, absl::StrCat("cannot list the directory: ", std::strerror(errno)));
    std::vector<std::string> out;
    while (const dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name.size() > suffix.size() && absl::EndsWith(name, suffix) && !fs::is_dir(fs::join(dir, name))) {
            out.push_back(name);
        }
    }
    ::closedir(d);
    std::sort(out.begin(), out.end());
    return out;
}

std::string shard_name(size_t i, size_t n) { return absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, n); }

// Note [Atomic checkpoint directory]
// The new checkpoint is complete and fsynced in `tmp` (a sibling of `dir`, so the rename stays on one file
// system). With no `dir` yet, one rename publishes it. With an existing `dir`, renameat2(RENAME_EXCHANGE)
// swaps the two in one step, so a reader sees the old or the new checkpoint, never none and never a partial
// one; where the file system lacks the exchange, `dir` is first renamed aside (a short window without `dir`).
// The old tree is deleted last; failing to delete it only warns, since the new checkpoint is in place.
void publish_dir(const std::string& tmp, const std::string& dir, const std::string& parent) {
    if (!fs::exists(dir)) {
        if (::rename(tmp.c_str(), dir.c_str()) != 0) {
            fail(dir, absl::StrCat("cannot rename the temporary directory ", tmp, " into place: ",
                                   std::strerror(errno)));
        }
        fsync_dir(parent);
        return;
    }
    if (!fs::is_dir(dir)) fail(dir, "exists and is not a directory; refusing to replace it");
    std::string old = tmp;  // after the exchange `tmp` holds the old checkpoint
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) != 0) {
        if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) {
            fail(dir, absl::StrCat("cannot exchange it with the new checkpoint ", tmp, ": ", std::strerror(errno)));
        }
        old = absl::StrCat(tmp, ".old");
        if (::rename(dir.c_str(), old.c_str()) != 0) {
            fail(dir, absl::StrCat("cannot move the old checkpoint aside to ", old, ": ", std::strerror(errno)));
        }
        if (::rename(tmp.c_str(), dir.c_str()) != 0) {
            const int err = errno;
            const bool restored = ::rename(old.c_str(), dir.c_str()) == 0;
            fail(dir, absl::StrCat("cannot rename the temporary directory ", tmp, " into place: ", std::strerror(err),
                                   restored ? "" : absl::StrCat("; the previous checkpoint is kept at ", old)));
        }
    }
    fsync_dir(parent);
    try {
        fs::remove_tree(old);
    } catch (const std::exception& e) {
        DSRL_LOG(warn) << "saved " << dir << " but could not remove the previous checkpoint at " << old << ": "
                       << e.what();
    }
}

}  // namespace

ModelConfig read_hf_config(const std::string& config_json_path, const ModelConfig& base) {
    return parse_hf_config(config_json_path, base).model;
}

std::string hf_config_json(const ModelConfig& cfg, at::ScalarType dtype) {
    const char* dtype_name = hf_dtype_name(dtype);
    TORCH_CHECK(dtype_name != nullptr, "hf_config_json: dtype must be float32, bfloat16 or float16, got ", dtype);
    // Keys as DeepseekV32Config.to_json_string() writes them (sorted, like its json.dumps(sort_keys=True)).
    Json j = Json::object();
    j["architectures"] = {"DeepseekV32ForCausalLM"};
    j["model_type"] = "deepseek_v32";
    j["attention_bias"] = false;
    j["attention_dropout"] = 0.0;
    j["bos_token_id"] = cfg.bos_token_id;
    j["dtype"] = dtype_name;
    j["eos_token_id"] = cfg.eos_token_id;
    j["first_k_dense_replace"] = cfg.first_k_dense_replace;
    j["head_dim"] = cfg.qk_rope_head_dim;  // transformers points head_dim at the rope slice
    j["hidden_act"] = "silu";
    j["hidden_size"] = cfg.hidden_size;
    j["index_head_dim"] = cfg.index_head_dim;
    j["index_n_heads"] = cfg.index_n_heads;
    j["index_topk"] = cfg.index_topk;
    j["initializer_range"] = cfg.initializer_range;
    j["intermediate_size"] = cfg.intermediate_size;
    j["kv_lora_rank"] = cfg.kv_lora_rank;
    // No `layer_types`: transformers derives it, and its value changed between 5.x releases
    // ("deepseek_sparse_attention" in 5.17, "indexed_attention" in 5.24); each rejects the other's.
    j["max_position_embeddings"] = cfg.max_position_embeddings;
    j["mlp_bias"] = false;
    std::vector<std::string> mlp_types(cfg.num_hidden_layers, "sparse");
    for (int64_t i = 0; i < std::min(cfg.first_k_dense_replace, cfg.num_hidden_layers); ++i) mlp_types[i] = "dense";
    j["mlp_layer_types"] = mlp_types;
    j["moe_intermediate_size"] = cfg.moe_intermediate_size;
    j["n_group"] = cfg.n_group;
    j["n_routed_experts"] = cfg.n_routed_experts;
    j["n_shared_experts"] = cfg.n_shared_experts;
    j["norm_topk_prob"] = cfg.norm_topk_prob;
    j["num_attention_heads"] = cfg.num_attention_heads;
    j["num_experts_per_tok"] = cfg.num_experts_per_tok;
    j["num_hidden_layers"] = cfg.num_hidden_layers;
    j["num_key_value_heads"] = cfg.num_attention_heads;
    j["output_router_logits"] = false;
    j["pad_token_id"] = nullptr;
    j["q_lora_rank"] = cfg.q_lora_rank;
    j["qk_head_dim"] = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
    j["qk_nope_head_dim"] = cfg.qk_nope_head_dim;
    j["qk_rope_head_dim"] = cfg.qk_rope_head_dim;
    j["rms_norm_eps"] = cfg.rms_norm_eps;
    Json rope = Json::object();
    rope["rope_theta"] = cfg.rope_theta;
    const RopeScalingConfig& y = cfg.rope_scaling;
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
    j["rope_parameters"] = rope;
    j["routed_scaling_factor"] = cfg.routed_scaling_factor;
    j["tie_word_embeddings"] = cfg.tie_word_embeddings;
    j["topk_group"] = cfg.topk_group;
    j["use_cache"] = true;
    j["v_head_dim"] = cfg.v_head_dim;
    j["vocab_size"] = cfg.vocab_size;
    return j.dump(2) + "\n";
}

at::Tensor dequantize_fp8_blockwise(const at::Tensor& w8,
                                    const at::Tensor& scale_inv,
                                    const Fp8Format& fmt,
                                    at::ScalarType dtype,
                                    const std::string& what) {
    const int64_t br = fmt.block_rows;
    const int64_t bc = fmt.block_cols;
    if (br <= 0 || bc <= 0) {
        throw CheckpointError(absl::StrCat(what, ": FP8 block size must be positive, got [", br, ", ", bc, "]"));
    }
    if (w8.scalar_type() != at::kFloat8_e4m3fn || w8.dim() != 2) {
        throw CheckpointError(absl::StrCat(what, ": expected a 2-D F8_E4M3 weight, got ",
                                           c10::toString(w8.scalar_type()), " of shape [",
                                           absl::StrJoin(w8.sizes(), ", "), "]"));
    }
    const int64_t rows = w8.size(0);
    const int64_t cols = w8.size(1);
    const int64_t nr = ceil_div(rows, br);
    const int64_t nc = ceil_div(cols, bc);
    if (!at::isFloatingType(scale_inv.scalar_type()) || scale_inv.dim() != 2 || scale_inv.size(0) != nr ||
        scale_inv.size(1) != nc) {
        throw CheckpointError(absl::StrCat(what, ": expected weight_scale_inv of shape [", nr, ", ", nc,
                                           "] (ceil of [", rows, ", ", cols, "] / [", br, ", ", bc, "]), got ",
                                           c10::toString(scale_inv.scalar_type()), " [",
                                           absl::StrJoin(scale_inv.sizes(), ", "), "]"));
    }
    // Pad to whole blocks so each block is a broadcast multiply by its scale, then cut the padding off.
    at::Tensor w = w8.to(at::kFloat);
    const bool padded = nr * br != rows || nc * bc != cols;
    if (padded) w = at::constant_pad_nd(w, {0, nc * bc - cols, 0, nr * br - rows}, 0);
    const at::Tensor scale = scale_inv.to(w.device(), at::kFloat).view({nr, 1, nc, 1});
    w = w.view({nr, br, nc, bc}).mul_(scale).view({nr * br, nc * bc});
    if (padded) w = w.narrow(0, 0, rows).narrow(1, 0, cols);
    return w.to(dtype).contiguous();
}

HfCheckpointReader HfCheckpointReader::open(const std::string& dir) {
    if (!fs::is_dir(dir)) fail(dir, "not a checkpoint directory (it does not exist or is not a directory)");
    HfCheckpointReader r;
    r.dir_ = dir;
    const std::string config_path = fs::join(dir, kConfigFile);
    if (!fs::exists(config_path)) fail(dir, "missing config.json");
    HfConfig parsed = parse_hf_config(config_path, ModelConfig{});
    r.config_ = std::move(parsed.model);
    r.config_.path = dir;
    r.fp8_ = parsed.fp8;

    // Every stored tensor: name -> (file index). Built from the index when there is one.
    std::map<std::string, size_t> stored;
    const std::string index_path = fs::join(dir, kIndexFile);
    if (fs::exists(index_path)) {
        const Json index = parse_json_file(index_path);
        const Fields f(index_path, index, "");
        const Json* map = f.object("weight_map");
        if (map == nullptr) fail(index_path, "missing required key 'weight_map'");
        std::map<std::string, size_t> file_ids;  // shard file name -> index into files_
        std::map<std::string, std::string> indexed;  // tensor -> shard file name
        for (const auto& [name, file] : map->items()) {
            if (!file.is_string()) {
                fail(index_path,
                     absl::StrCat("weight_map['", name, "']: expected a file name, got ", short_dump(file)));
            }
            indexed[name] = file.get<std::string>();
            file_ids.emplace(file.get<std::string>(), 0);
        }
        for (auto& [file, id] : file_ids) {
            const std::string path = fs::join(dir, file);
            if (file.find('/') != std::string::npos || !fs::exists(path)) {
                fail(index_path, absl::StrCat("lists file '", file, "', which does not exist in ", dir));
            }
            id = r.files_.size();
            r.files_.push_back(std::make_shared<SafetensorsFile>(SafetensorsFile::open(path)));
        }
        for (const auto& [name, file] : indexed) {
            const SafetensorsFile& sf = *r.files_[file_ids.at(file)];
            if (!sf.contains(name)) {
                fail(sf.path(), absl::StrCat("missing tensor '", name, "', which ", index_path, " maps to this file"));
            }
            stored[name] = file_ids.at(file);
        }
        for (const auto& [file, id] : file_ids) {
            for (const SafetensorInfo& t : r.files_[id]->tensors()) {
                const auto it = indexed.find(t.name);
                if (it == indexed.end()) {
                    fail(r.files_[id]->path(), absl::StrCat("tensor '", t.name, "' is not listed in ", index_path));
                }
                if (it->second != file) {
                    fail(r.files_[id]->path(), absl::StrCat("duplicate tensor '", t.name, "': ", index_path,
                                                            " maps it to ", fs::join(dir, it->second)));
                }
            }
        }
    } else {
        std::vector<std::string> names;
        if (fs::exists(fs::join(dir, kSingleFile))) {
            names = {kSingleFile};
        } else {
            names = list_files(dir, ".safetensors");
        }
        if (names.empty()) fail(dir, "no model.safetensors, model.safetensors.index.json or *.safetensors file");
        for (const std::string& name : names) {
            r.files_.push_back(std::make_shared<SafetensorsFile>(SafetensorsFile::open(fs::join(dir, name))));
            const size_t id = r.files_.size() - 1;
            for (const SafetensorInfo& t : r.files_[id]->tensors()) {
                const auto [it, inserted] = stored.emplace(t.name, id);
                if (!inserted) {
                    fail(r.files_[id]->path(), absl::StrCat("duplicate tensor '", t.name, "', also stored in ",
                                                            r.files_[it->second]->path()));
                }
            }
        }
    }

    // Fold each X.weight_scale_inv into X.weight.
    for (const auto& [name, id] : stored) {
        if (absl::EndsWith(name, absl::StrCat(".weight", kScaleSuffix))) {
            const std::string weight = name.substr(0, name.size() - std::strlen(kScaleSuffix));
            if (stored.count(weight) == 0) {
                fail(r.files_[id]->path(), absl::StrCat("orphan scale '", name, "': no weight '", weight, "'"));
            }
            continue;
        }
        Entry e;
        e.file = id;
        const std::string scale = name + kScaleSuffix;
        const SafetensorInfo& info = r.files_[id]->info(name);
        if (const auto s = stored.find(scale); s != stored.end()) {
            const SafetensorInfo& sinfo = r.files_[s->second]->info(scale);
            const bool ok_scale = info.scalar_type == at::kFloat8_e4m3fn && info.shape.size() == 2 &&
                                  sinfo.shape.size() == 2 &&
                                  sinfo.shape[0] == ceil_div(info.shape[0], r.fp8_.block_rows) &&
                                  sinfo.shape[1] == ceil_div(info.shape[1], r.fp8_.block_cols) &&
                                  at::isFloatingType(sinfo.scalar_type);
            if (!ok_scale) {
                fail(r.files_[id]->path(),
                     absl::StrCat("tensor '", name, "' (", info.dtype, " [", absl::StrJoin(info.shape, ", "),
                                  "]) does not match its scale '", scale, "' (", sinfo.dtype, " [",
                                  absl::StrJoin(sinfo.shape, ", "), "]): expected a 2-D F8_E4M3 weight and a scale of "
                                  "[ceil(rows/", r.fp8_.block_rows, "), ceil(cols/", r.fp8_.block_cols, ")]"));
            }
            e.scale_name = scale;
            e.scale_file = s->second;
        } else if (info.scalar_type == at::kFloat8_e4m3fn) {
            fail(r.files_[id]->path(), absl::StrCat("F8_E4M3 tensor '", name, "' has no '", scale,
                                                    "'; block-wise FP8 weights need their scales"));
        }
        r.entries_.emplace(name, std::move(e));
    }
    DSRL_LOG(debug) << "hf checkpoint " << dir << ": " << r.entries_.size() << " tensors in " << r.files_.size()
                    << " file(s)";
    return r;
}

std::vector<std::string> HfCheckpointReader::names() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& [name, e] : entries_) out.push_back(name);
    return out;
}

bool HfCheckpointReader::contains(const std::string& name) const { return entries_.count(name) != 0; }

const HfCheckpointReader::Entry& HfCheckpointReader::entry(const std::string& name) const {
    const auto it = entries_.find(name);
    if (it == entries_.end()) fail(dir_, absl::StrCat("missing tensor '", name, "'"));
    return it->second;
}

const SafetensorInfo& HfCheckpointReader::info(const std::string& name) const {
    return files_[entry(name).file]->info(name);
}

const std::string& HfCheckpointReader::file_of(const std::string& name) const {
    return files_[entry(name).file]->path();
}

bool HfCheckpointReader::is_quantized(const std::string& name) const { return !entry(name).scale_name.empty(); }

at::Tensor HfCheckpointReader::load(const std::string& name, at::ScalarType dtype) const {
    TORCH_CHECK(at::isFloatingType(dtype), "HfCheckpointReader::load: dtype must be floating, got ", dtype);
    const Entry& e = entry(name);
    const SafetensorsFile& file = *files_[e.file];
    const at::Tensor stored = file.get(name);  // a view of the mapping (or an aligned copy)
    if (!e.scale_name.empty()) {
        const at::Tensor scale = files_[e.scale_file]->get(e.scale_name);
        return dequantize_fp8_blockwise(stored, scale, fp8_, dtype, absl::StrCat(file.path(), ": tensor '", name, "'"));
    }
    if (at::isFloatingType(stored.scalar_type())) return stored.to(dtype, /*non_blocking=*/false, /*copy=*/true);
    return stored.clone();  // integer/bool buffers keep their dtype
}

bool HfCheckpointReader::is_extra_layer(const std::string& name) const {
    constexpr std::string_view kPrefix = "model.layers.";
    if (name.compare(0, kPrefix.size(), kPrefix) != 0) return false;
    const size_t dot = name.find('.', kPrefix.size());
    if (dot == std::string::npos) return false;
    int64_t layer = 0;
    if (!absl::SimpleAtoi(name.substr(kPrefix.size(), dot - kPrefix.size()), &layer)) return false;
    return layer >= config_.num_hidden_layers;
}

void save_hf_checkpoint(const std::string& dir,
                        const ModelConfig& cfg,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        const SaveOptions& opt) {
    TORCH_CHECK(hf_dtype_name(opt.dtype) != nullptr,
                "save_hf_checkpoint: dtype must be float32, bfloat16 or float16, got ", opt.dtype);
    TORCH_CHECK(opt.max_shard_bytes > 0, "save_hf_checkpoint: max_shard_bytes must be positive, got ",
                opt.max_shard_bytes);
    std::string target = dir;
    while (target.size() > 1 && target.back() == '/') target.pop_back();
    if (target.empty() || target == "/" || target == "." || target == "..") {
        throw CheckpointError(absl::StrCat("save_hf_checkpoint: invalid checkpoint directory '", dir, "'"));
    }
    const std::string config_text = hf_config_json(cfg, opt.dtype);

    // Shards as transformers cuts them: in the given order, a new shard when the next tensor would overflow.
    auto out_dtype = [&](const at::Tensor& t) {
        return at::isFloatingType(t.scalar_type()) ? opt.dtype : t.scalar_type();
    };
    std::set<std::string> seen;
    std::vector<std::vector<size_t>> shards(1);
    int64_t shard_bytes = 0;
    int64_t total_bytes = 0;
    int64_t total_params = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
        const auto& [name, t] = tensors[i];
        TORCH_CHECK(t.defined(), "save_hf_checkpoint: tensor '", name, "' is undefined");
        if (!seen.insert(name).second) {
            throw CheckpointError(absl::StrCat(target, ": tensor '", name, "' is given twice"));
        }
        const int64_t bytes = t.numel() * static_cast<int64_t>(c10::elementSize(out_dtype(t)));
        if (!shards.back().empty() && shard_bytes + bytes > opt.max_shard_bytes) {
            shards.emplace_back();
            shard_bytes = 0;
        }
        shards.back().push_back(i);
        shard_bytes += bytes;
        total_bytes += bytes;
        total_params += t.numel();
    }

    const size_t slash = target.find_last_of('/');
    const std::string parent = slash == std::string::npos ? "." : (slash == 0 ? "/" : target.substr(0, slash));
    const std::string base = slash == std::string::npos ? target : target.substr(slash + 1);
    fs::make_dirs(parent);
    std::string pattern = fs::join(parent, absl::StrCat(".", base, ".tmp-XXXXXX"));
    if (::mkdtemp(pattern.data()) == nullptr) {
        fail(pattern, absl::StrCat("cannot create the temporary checkpoint directory: ", std::strerror(errno)));
    }
    const std::string tmp = pattern;
    DSRL_LOG(info) << "saving HF checkpoint " << target << ": " << tensors.size() << " tensors, "
                   << absl::StrFormat("%.1f", total_bytes / 1048576.0) << " MiB in " << shards.size() << " file(s)";
    try {
        write_file_synced(fs::join(tmp, kConfigFile), config_text);
        Json weight_map = Json::object();
        for (size_t s = 0; s < shards.size(); ++s) {
            const std::string file = shards.size() == 1 ? kSingleFile : shard_name(s, shards.size());
            std::vector<std::pair<std::string, at::Tensor>> converted;
            int64_t bytes = 0;
            for (const size_t i : shards[s]) {
                const auto& [name, t] = tensors[i];
                converted.emplace_back(name, t.detach().to(out_dtype(t)).to(at::kCPU).contiguous());
                bytes += converted.back().second.nbytes();
                weight_map[name] = file;
            }
            save_safetensors(fs::join(tmp, file), converted, {{"format", "pt"}});
            DSRL_LOG(info) << "  wrote " << file << " (" << s + 1 << "/" << shards.size() << ", "
                           << converted.size() << " tensors, " << absl::StrFormat("%.1f", bytes / 1048576.0)
                           << " MiB)";
        }
        if (shards.size() > 1) {
            Json index = {{"metadata", {{"total_parameters", total_params}, {"total_size", total_bytes}}},
                          {"weight_map", weight_map}};
            write_file_synced(fs::join(tmp, kIndexFile), index.dump(2) + "\n");
        }
        fsync_dir(tmp);
        publish_dir(tmp, target, parent);
    } catch (...) {
        try {
            fs::remove_tree(tmp);  // the partial new checkpoint, or the old one after a completed exchange
        } catch (const std::exception& e) {
            DSRL_LOG(warn) << "could not remove the temporary checkpoint directory " << tmp << ": " << e.what();
        }
        throw;
    }
    DSRL_LOG(info) << "saved HF checkpoint " << target;
}

}  // namespace dsrl::dsa
