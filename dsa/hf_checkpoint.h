// Hugging Face checkpoint IO for DeepSeek-V3.2 (SPEC §2.5): config.json (dsa/hf_config.h), single or sharded
// safetensors (model.safetensors.index.json), FP8 e4m3 weights with block-wise `weight_scale_inv`
// (dequantized on load), and an atomic writer of the same layout that `transformers` loads.
//
// This layer knows files and names, not the model: it hands out tensors by their checkpoint name. The model
// (dsa/weights.h) decides which names it expects and reports missing/unexpected ones.
//
//   auto ckpt = HfCheckpointReader::open("/models/DeepSeek-V3.2");
//   ModelArch arch = ckpt.arch();
//   at::Tensor w = ckpt.load("model.layers.3.self_attn.q_a_proj.weight", at::kFloat);   // FP8 dequantized
//   save_hf_checkpoint("/out/policy", arch, named_tensors, {.dtype = at::kBFloat16});
//
// Reads are memory-mapped: load() makes the one converted copy of a tensor; nothing else holds the file's
// bytes. Every problem is a dsrl::CheckpointError naming the file (and tensor or key).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/safetensors.h"
#include "dsa/hf_config.h"

namespace dsrl::dist {
class Communicator;
}

namespace dsrl::dsa {

/// W = W8 · scale_inv[r / block_rows, c / block_cols] for a 2-D e4m3 weight [R, C] and scale_inv
/// [ceil(R/block_rows), ceil(C/block_cols)] fp32, returned in `dtype`. Shapes are checked (`what` names the
/// tensor in errors).
at::Tensor dequantize_fp8_blockwise(const at::Tensor& w8,
                                    const at::Tensor& scale_inv,
                                    const Fp8Format& fmt,
                                    at::ScalarType dtype,
                                    const std::string& what);

class HfCheckpointReader {
public:
    /// Opens `dir`: config.json, then the single model.safetensors, or else model.safetensors.index.json (every
    /// shard it lists must exist and hold exactly the tensors the index maps to it), or else every *.safetensors in
    /// the directory — transformers' order (a warning where both a model.safetensors and an index are there). A
    /// tensor name present in two files is an error. Experts stored in transformers' in-memory layout
    /// (`mlp.experts.gate_up_proj` [E, 2I, H] and `mlp.experts.down_proj` [E, H, I], as a saved state_dict has them)
    /// read as the per-expert `mlp.experts.{e}.{gate,up,down}_proj.weight` that save_pretrained writes.
    static HfCheckpointReader open(const std::string& dir);

    const std::string& dir() const { return dir_; }
    /// The architecture of its config.json.
    const ModelArch& arch() const { return arch_; }
    /// Logical tensor names, sorted; `*.weight_scale_inv` companions are folded into their weight.
    std::vector<std::string> names() const;
    bool contains(const std::string& name) const;
    /// Stored dtype/shape of a logical tensor; throws CheckpointError naming dir and tensor when absent.
    const SafetensorInfo& info(const std::string& name) const;
    /// The file that stores `name`.
    const std::string& file_of(const std::string& name) const;
    /// True for FP8 weights that carry a weight_scale_inv.
    bool is_quantized(const std::string& name) const;
    /// A fresh CPU tensor in `dtype` (FP8 dequantized first). Throws CheckpointError naming file and tensor.
    at::Tensor load(const std::string& name, at::ScalarType dtype) const;
    /// True for tensors of layers >= num_hidden_layers (the multi-token-prediction layer), which the
    /// model skips.
    bool is_extra_layer(const std::string& name) const;
    /// Every tensor of the extra layers exactly as stored (FP8 weights with their weight_scale_inv), as CPU views of
    /// the mapped files (which they keep alive): what a model loaded from here writes back unchanged.
    std::vector<std::pair<std::string, at::Tensor>> extra_tensors() const;
    /// config.json's num_nextn_predict_layers (0 when absent).
    int64_t nextn_layers() const { return nextn_layers_; }

private:
    struct Entry {
        size_t file = 0;
        std::string scale_name;  ///< weight_scale_inv companion, empty when not quantized
        size_t scale_file = 0;   ///< the file that stores scale_name (shards may split a weight from its scale)
        /// A per-expert weight cut from transformers' fused layout: rows [row_begin, row_begin + info.shape[0]) of
        /// expert `expert` of the stored tensor `fused` (empty for a tensor stored under its own name).
        std::string fused;
        int64_t expert = 0, row_begin = 0;
        SafetensorInfo info;  ///< its dtype and shape (set only where `fused` is)
    };
    const Entry& entry(const std::string& name) const;  // throws CheckpointError naming dir and tensor
    // Adds the per-expert entries of the fused expert tensor `name` (stored in files_[file]).
    void split_fused_experts(const std::string& name, size_t file);
    std::string dir_;
    ModelArch arch_;
    Fp8Format fp8_;
    int64_t nextn_layers_ = 0;
    std::vector<std::shared_ptr<SafetensorsFile>> files_;
    std::map<std::string, Entry> entries_;
};

struct SaveOptions {
    /// Floating tensors are written in this dtype: float32, bfloat16, float16, or float8_e4m3fn — DeepSeek's FP8
    /// layout: fp8_quantizable weights as e4m3 with 128×128 block scales (weight_scale_inv), the rest in bfloat16,
    /// config.json with its quantization_config.
    at::ScalarType dtype = at::kBFloat16;
    int64_t max_shard_bytes = int64_t{5} << 30;  ///< above: model-0000i-of-0000n.safetensors + index
    /// A checkpoint directory whose tokenizer and generation files (kCompanionFiles) are copied in too, so the
    /// saved checkpoint is complete for other tools; empty: none. Model::save uses the one it was loaded from.
    std::string companion_dir;
    /// Several writers (expert parallelism: each rank holds some experts): every rank of `writers` calls
    /// save_hf_checkpoint with its own tensors (names disjoint over the ranks; the leader, group rank 0, usually
    /// passes the rest of the model) and writes them to its own model-XXXXX-of-YYYYY.safetensors file(s), numbered
    /// in rank order; the leader writes config.json, the companion files and the index of every tensor, and
    /// publishes the directory once every writer's files are synced. Collective over the group; a failure on any
    /// writer is the same CheckpointError on all of them, naming that rank. Null (or one rank): one writer.
    /// The directory must be on a file system every writer sees.
    const dist::Communicator* writers = nullptr;
    /// Tensors written exactly as given, whatever `dtype` (a loaded checkpoint's MTP layer); null: none.
    const std::vector<std::pair<std::string, at::Tensor>>* passthrough = nullptr;
    /// config.json's num_nextn_predict_layers (written when > 0: the MTP layers among the passthrough tensors).
    int64_t nextn_layers = 0;
};

/// DeepSeek's FP8 layout of a 2-D weight: e4m3 values and fp32 weight_scale_inv [ceil(R/br), ceil(C/bc)] with
/// W ≈ W8 · scale_inv per block, each block's largest magnitude mapped to 448. dequantize_fp8_blockwise inverts it.
std::pair<at::Tensor, at::Tensor> quantize_fp8_blockwise(const at::Tensor& w, const Fp8Format& fmt);
/// quantize_fp8_blockwise's scales alone (a block reduction; no quantized copy).
at::Tensor fp8_block_scales(const at::Tensor& w, const Fp8Format& fmt);
/// True for the tensors a float8 export quantizes: the linear layers' 2-D weights (attention projections, the
/// indexer's wq_b and wk, dense and expert MLPs), not embeddings, the LM head, norms, the router or weights_proj.
bool fp8_quantizable(const std::string& name, const at::Tensor& t);

/// The dtype `name` is saved in at SaveOptions::dtype: floating tensors in `dtype`, except the MoE routing bias
/// (e_score_correction_bias), which stays fp32 as in DeepSeek's checkpoints; other tensors keep theirs.
at::ScalarType saved_dtype(const std::string& name, const at::Tensor& t, at::ScalarType dtype);

/// The files of a checkpoint that are not weights or config.json and travel with it on save.
inline constexpr const char* kCompanionFiles[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                                  "generation_config.json", "chat_template.jinja"};

/// Writes config.json, the safetensors file(s) and, when sharded, model.safetensors.index.json into `dir`
/// atomically: everything goes to a sibling temporary directory, is fsynced, and replaces `dir` by rename
/// (an existing `dir` is replaced only after the new one is complete). Tensors may live on any device; they
/// are converted one at a time. Names must be unique. More than one file (or SaveOptions::writers) writes an index.
void save_hf_checkpoint(const std::string& dir,
                        const ModelArch& arch,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        const SaveOptions& opt = {});

}  // namespace dsrl::dsa
