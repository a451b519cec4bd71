#include "dsa/hf_checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string_view>

#include <ATen/TensorOperators.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/where.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_join.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include "core/dist/communicator.h"
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

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// transformers' in-memory expert tensors (model.layers.L.mlp.experts.gate_up_proj / down_proj, no ".weight").
bool is_fused_experts(const std::string& name) {
    return absl::StartsWith(name, "model.layers.") &&
           (absl::EndsWith(name, ".mlp.experts.gate_up_proj") || absl::EndsWith(name, ".mlp.experts.down_proj"));
}

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
    std::vector<std::string> names;
    try {
        names = fs::list_dir(dir);
    } catch (const fs::IoError& e) {
        fail(dir, absl::StrCat("cannot list the directory: ", e.reason()));
    }
    std::vector<std::string> out;
    for (const std::string& name : names) {
        if (name.size() > suffix.size() && absl::EndsWith(name, suffix) && !fs::is_dir(fs::join(dir, name))) {
            out.push_back(name);
        }
    }
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
            fail(dir,
                 absl::StrCat("cannot rename the temporary directory ", tmp, " into place: ", std::strerror(errno)));
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

namespace {

// A 2-D weight padded to whole blocks (zero padding changes no block's amax), viewed [nr, br, nc, bc].
at::Tensor fp8_blocks(const at::Tensor& w, const Fp8Format& fmt) {
    TORCH_CHECK(w.dim() == 2 && at::isFloatingType(w.scalar_type()), "quantize_fp8_blockwise: expected a 2-D floating ",
                "weight, got ", w.sizes());
    const int64_t nr = ceil_div(w.size(0), fmt.block_rows), nc = ceil_div(w.size(1), fmt.block_cols);
    return at::constant_pad_nd(w.to(at::kFloat),
                               {0, nc * fmt.block_cols - w.size(1), 0, nr * fmt.block_rows - w.size(0)})
        .view({nr, fmt.block_rows, nc, fmt.block_cols});
}

at::Tensor scales_of(const at::Tensor& blocks) {
    const at::Tensor amax = blocks.abs().amax({1, 3});  // [nr, nc]
    return at::where(amax > 0, amax / 448.0, at::ones_like(amax)).contiguous();
}

}  // namespace

at::Tensor fp8_block_scales(const at::Tensor& w, const Fp8Format& fmt) { return scales_of(fp8_blocks(w, fmt)); }

std::pair<at::Tensor, at::Tensor> quantize_fp8_blockwise(const at::Tensor& w, const Fp8Format& fmt) {
    // Each block scaled so its largest magnitude maps to e4m3's 448: W = W8 · scale.
    const at::Tensor blocks = fp8_blocks(w, fmt);
    const at::Tensor scale = scales_of(blocks);
    const int64_t nr = scale.size(0), nc = scale.size(1);
    const at::Tensor q = (blocks / scale.view({nr, 1, nc, 1})).clamp(-448.0, 448.0).view({nr * fmt.block_rows, -1});
    return {q.narrow(0, 0, w.size(0)).narrow(1, 0, w.size(1)).to(at::kFloat8_e4m3fn).contiguous(), scale};
}

bool fp8_quantizable(const std::string& name, const at::Tensor& t) {
    // DeepSeek's FP8 checkpoints quantize the linear layers' weights; embeddings, the LM head, norms, the router
    // (mlp.gate), its bias and the indexer's head weights stay in higher precision.
    if (t.dim() != 2 || !at::isFloatingType(t.scalar_type()) || !absl::EndsWith(name, ".weight")) return false;
    for (const char* keep : {"embed_tokens.", "lm_head.", "norm.", "mlp.gate.weight", "weights_proj."}) {
        if (name.find(keep) != std::string::npos) return false;
    }
    return true;
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
        throw CheckpointError(absl::StrCat(what, ": expected weight_scale_inv of shape [", nr, ", ", nc, "] (ceil of [",
                                           rows, ", ", cols, "] / [", br, ", ", bc, "]), got ",
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
    HfConfig parsed = read_hf_config_file(config_path);
    r.arch_ = std::move(parsed.arch);
    r.fp8_ = parsed.fp8;
    r.nextn_layers_ = parsed.nextn_layers;

    // Every stored tensor: name -> (file index). Built from the index when there is one.
    std::map<std::string, size_t> stored;
    // As transformers' from_pretrained: a model.safetensors wins over an index next to it (said, not silent).
    const std::string index_path = fs::join(dir, kIndexFile);
    const bool single = fs::exists(fs::join(dir, kSingleFile));
    if (single && fs::exists(index_path)) {
        DSRL_LOG(warn) << dir << " holds both " << kSingleFile << " and " << kIndexFile << ": loading " << kSingleFile
                       << " (as transformers does); the index and its shards are ignored";
    }
    if (!single && fs::exists(index_path)) {
        const Json index = read_json_object(index_path);
        const auto map = index.find("weight_map");
        if (map == index.end() || map->is_null()) fail(index_path, "missing required key 'weight_map'");
        if (!map->is_object()) {
            fail(index_path, absl::StrCat("key 'weight_map': expected an object, got ", json_excerpt(*map)));
        }
        std::map<std::string, size_t> file_ids;      // shard file name -> index into files_
        std::map<std::string, std::string> indexed;  // tensor -> shard file name
        for (const auto& [name, file] : map->items()) {
            if (!file.is_string()) {
                fail(index_path,
                     absl::StrCat("weight_map['", name, "']: expected a file name, got ", json_excerpt(file)));
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
        if (single) {
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
    std::map<std::string, size_t> fused;  // transformers' fused expert tensors, cut up below
    for (const auto& [name, id] : stored) {
        if (is_fused_experts(name) && !r.is_extra_layer(name)) {
            fused.emplace(name, id);
            continue;
        }
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
            const bool ok_scale =
                info.scalar_type == at::kFloat8_e4m3fn && info.shape.size() == 2 && sinfo.shape.size() == 2 &&
                sinfo.shape[0] == ceil_div(info.shape[0], r.fp8_.block_rows) &&
                sinfo.shape[1] == ceil_div(info.shape[1], r.fp8_.block_cols) && at::isFloatingType(sinfo.scalar_type);
            if (!ok_scale) {
                fail(r.files_[id]->path(),
                     absl::StrCat("tensor '", name, "' (", info.dtype, " [", absl::StrJoin(info.shape, ", "),
                                  "]) does not match its scale '", scale, "' (", sinfo.dtype, " [",
                                  absl::StrJoin(sinfo.shape, ", "),
                                  "]): expected a 2-D F8_E4M3 weight and a scale of "
                                  "[ceil(rows/",
                                  r.fp8_.block_rows, "), ceil(cols/", r.fp8_.block_cols, ")]"));
            }
            e.scale_name = scale;
            e.scale_file = s->second;
        } else if (info.scalar_type == at::kFloat8_e4m3fn) {
            fail(r.files_[id]->path(), absl::StrCat("F8_E4M3 tensor '", name, "' has no '", scale,
                                                    "'; block-wise FP8 weights need their scales"));
        }
        r.entries_.emplace(name, std::move(e));
    }
    for (const auto& [name, id] : fused) r.split_fused_experts(name, id);
    DSRL_LOG(debug) << "hf checkpoint " << dir << ": " << r.entries_.size() << " tensors in " << r.files_.size()
                    << " file(s)";
    return r;
}

void HfCheckpointReader::split_fused_experts(const std::string& name, size_t id) {
    const SafetensorInfo& info = files_[id]->info(name);
    const bool gate_up = absl::EndsWith(name, ".gate_up_proj");
    const std::string prefix = name.substr(0, name.rfind('.') + 1);  // model.layers.L.mlp.experts.
    const int64_t hidden = arch_.hidden_size, inter = arch_.moe_intermediate_size;
    const std::vector<int64_t> want = gate_up ? std::vector<int64_t>{arch_.n_routed_experts, 2 * inter, hidden}
                                              : std::vector<int64_t>{arch_.n_routed_experts, hidden, inter};
    if (info.shape != want || !at::isFloatingType(info.scalar_type) || info.scalar_type == at::kFloat8_e4m3fn) {
        fail(files_[id]->path(),
             absl::StrCat("fused expert tensor '", name, "' (", info.dtype, " [", absl::StrJoin(info.shape, ", "),
                          "]): expected a floating (not FP8) tensor of [n_routed_experts, ",
                          gate_up ? "2 * moe_intermediate_size, hidden_size" : "hidden_size, moe_intermediate_size",
                          "] = [", absl::StrJoin(want, ", "), "] (transformers' layout)"));
    }
    struct Part {
        const char* proj;
        int64_t row_begin, rows;
    };
    const std::vector<Part> parts = gate_up ? std::vector<Part>{{"gate_proj", 0, inter}, {"up_proj", inter, inter}}
                                            : std::vector<Part>{{"down_proj", 0, hidden}};
    for (int64_t e = 0; e < want[0]; ++e) {
        for (const Part& part : parts) {
            const std::string per_expert = absl::StrCat(prefix, e, ".", part.proj, ".weight");
            Entry entry;
            entry.file = id;
            entry.fused = name;
            entry.expert = e;
            entry.row_begin = part.row_begin;
            entry.info = info;
            entry.info.name = per_expert;
            entry.info.shape = {part.rows, info.shape[2]};
            if (!entries_.emplace(per_expert, std::move(entry)).second) {
                fail(files_[id]->path(),
                     absl::StrCat("tensor '", per_expert, "' is stored both on its own and in the fused '", name, "'"));
            }
        }
    }
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
    const Entry& e = entry(name);
    return e.fused.empty() ? files_[e.file]->info(name) : e.info;
}

const std::string& HfCheckpointReader::file_of(const std::string& name) const {
    return files_[entry(name).file]->path();
}

bool HfCheckpointReader::is_quantized(const std::string& name) const { return !entry(name).scale_name.empty(); }

at::Tensor HfCheckpointReader::load(const std::string& name, at::ScalarType dtype) const {
    TORCH_CHECK(at::isFloatingType(dtype), "HfCheckpointReader::load: dtype must be floating, got ", dtype);
    const Entry& e = entry(name);
    const SafetensorsFile& file = *files_[e.file];
    if (!e.fused.empty()) {
        const at::Tensor part = file.get(e.fused).select(0, e.expert).narrow(0, e.row_begin, e.info.shape[0]);
        return part.to(dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();
    }
    const at::Tensor stored = file.get(name);  // a view of the mapping (or an aligned copy)
    if (!e.scale_name.empty()) {
        const at::Tensor scale = files_[e.scale_file]->get(e.scale_name);
        return dequantize_fp8_blockwise(stored, scale, fp8_, dtype, absl::StrCat(file.path(), ": tensor '", name, "'"));
    }
    if (at::isFloatingType(stored.scalar_type())) return stored.to(dtype, /*non_blocking=*/false, /*copy=*/true);
    return stored.clone();  // integer/bool buffers keep their dtype
}

std::vector<std::pair<std::string, at::Tensor>> HfCheckpointReader::extra_tensors() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const std::string& name : names()) {
        if (!is_extra_layer(name)) continue;
        const Entry& e = entry(name);
        out.emplace_back(name, files_[e.file]->get(name));
        if (!e.scale_name.empty()) out.emplace_back(e.scale_name, files_[e.scale_file]->get(e.scale_name));
    }
    return out;
}

bool HfCheckpointReader::is_extra_layer(const std::string& name) const {
    constexpr std::string_view kPrefix = "model.layers.";
    if (name.compare(0, kPrefix.size(), kPrefix) != 0) return false;
    const size_t dot = name.find('.', kPrefix.size());
    if (dot == std::string::npos) return false;
    int64_t layer = 0;
    if (!absl::SimpleAtoi(name.substr(kPrefix.size(), dot - kPrefix.size()), &layer)) return false;
    return layer >= arch_.num_hidden_layers;
}

namespace {

// What one writer saves, in order: the model's tensors (converted to the save dtype; with float8 the quantizable
// weights become an e4m3 weight plus its weight_scale_inv, converted lazily per file) and the passthrough tensors,
// written exactly as given.
struct SaveItem {
    std::string name;
    at::Tensor tensor;
    enum Kind { kConverted, kExact, kFp8Weight, kFp8Scale } kind = kConverted;
};

bool fp8_export(const SaveOptions& opt) { return opt.dtype == at::kFloat8_e4m3fn; }

std::vector<SaveItem> save_items(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                 const SaveOptions& opt) {
    std::vector<SaveItem> items;
    for (const auto& [name, t] : tensors) {
        if (fp8_export(opt) && fp8_quantizable(name, t)) {
            items.push_back({name, t, SaveItem::kFp8Weight});
            items.push_back({absl::StrCat(name, "_scale_inv"), t, SaveItem::kFp8Scale});
        } else {
            items.push_back({name, t, SaveItem::kConverted});
        }
    }
    if (opt.passthrough != nullptr) {
        for (const auto& [name, t] : *opt.passthrough) items.push_back({name, t, SaveItem::kExact});
    }
    return items;
}

// The bytes an item takes in the file (without converting it).
int64_t saved_bytes(const SaveItem& it, const SaveOptions& opt) {
    const Fp8Format fmt;
    switch (it.kind) {
        case SaveItem::kExact:
            return it.tensor.numel() * static_cast<int64_t>(it.tensor.element_size());
        case SaveItem::kFp8Weight:
            return it.tensor.numel();
        case SaveItem::kFp8Scale:
            return ceil_div(it.tensor.size(0), fmt.block_rows) * ceil_div(it.tensor.size(1), fmt.block_cols) * 4;
        case SaveItem::kConverted:
            break;
    }
    const at::ScalarType base = fp8_export(opt) ? at::kBFloat16 : opt.dtype;
    return it.tensor.numel() * static_cast<int64_t>(c10::elementSize(saved_dtype(it.name, it.tensor, base)));
}

// The item as written: a contiguous CPU tensor.
at::Tensor saved_tensor(const SaveItem& it, const SaveOptions& opt) {
    const at::Tensor t = it.tensor.detach();
    switch (it.kind) {
        case SaveItem::kExact:
            return t.to(at::kCPU).contiguous();
        case SaveItem::kFp8Weight:
            return quantize_fp8_blockwise(t.to(at::kCPU), Fp8Format{}).first;
        case SaveItem::kFp8Scale:
            return fp8_block_scales(t.to(at::kCPU), Fp8Format{});  // its weight item quantizes separately
        case SaveItem::kConverted:
            break;
    }
    const at::ScalarType base = fp8_export(opt) ? at::kBFloat16 : opt.dtype;
    return t.to(saved_dtype(it.name, t, base)).to(at::kCPU).contiguous();
}

// One writer's part of a save: its items cut into shard files in the given order, a new file when the next item
// would overflow max_shard_bytes (as transformers cuts them).
struct ShardPlan {
    std::vector<std::vector<size_t>> files;
    int64_t bytes = 0;
    int64_t params = 0;
};

ShardPlan plan_shards(const std::string& target, const std::vector<SaveItem>& items, const SaveOptions& opt) {
    ShardPlan plan;
    std::set<std::string> seen;
    int64_t file_bytes = 0;
    for (size_t i = 0; i < items.size(); ++i) {
        const SaveItem& it = items[i];
        TORCH_CHECK(it.tensor.defined(), "save_hf_checkpoint: tensor '", it.name, "' is undefined");
        if (!seen.insert(it.name).second) {
            throw CheckpointError(absl::StrCat(target, ": tensor '", it.name, "' is given twice"));
        }
        const int64_t bytes = saved_bytes(it, opt);
        if (plan.files.empty() || (!plan.files.back().empty() && file_bytes + bytes > opt.max_shard_bytes)) {
            plan.files.emplace_back();
            file_bytes = 0;
        }
        plan.files.back().push_back(i);
        file_bytes += bytes;
        plan.bytes += bytes;
        if (it.kind != SaveItem::kFp8Scale) plan.params += it.tensor.numel();
    }
    return plan;
}

// Writes the plan's file `s` as `file` into `tmp`; adds its tensors to `weight_map`.
void write_shard(const std::string& tmp,
                 const std::string& file,
                 const std::vector<SaveItem>& items,
                 const std::vector<size_t>& members,
                 const SaveOptions& opt,
                 Json& weight_map) {
    std::vector<std::pair<std::string, at::Tensor>> converted;
    int64_t bytes = 0;
    for (const size_t i : members) {
        converted.emplace_back(items[i].name, saved_tensor(items[i], opt));
        bytes += static_cast<int64_t>(converted.back().second.nbytes());
        weight_map[items[i].name] = file;
    }
    save_safetensors(fs::join(tmp, file), converted, {{"format", "pt"}});
    DSRL_LOG(info) << "  wrote " << file << " (" << converted.size() << " tensors, "
                   << absl::StrFormat("%.1f", bytes / 1048576.0) << " MiB)";
}

void remove_quietly(const std::string& tmp) {
    try {
        fs::remove_tree(tmp);  // the partial new checkpoint, or the old one after a completed exchange
    } catch (const std::exception& e) {
        DSRL_LOG(warn) << "could not remove the temporary checkpoint directory " << tmp << ": " << e.what();
    }
}

// A failure on any writer becomes the same CheckpointError on every writer (no rank is left waiting in a
// collective); `mine` is this rank's message or "".
void agree_on_failure(const dist::Communicator& group, const std::string& target, const std::string& mine) {
    const std::vector<std::string> all = group.all_gather_bytes(mine);
    for (size_t r = 0; r < all.size(); ++r) {
        if (!all[r].empty()) {
            throw CheckpointError(
                absl::StrCat(target, ": writer rank ", r, " of group '", group.name(), "' failed: ", all[r]));
        }
    }
}

}  // namespace

at::ScalarType saved_dtype(const std::string& name, const at::Tensor& t, at::ScalarType dtype) {
    // The routing bias stays fp32 whatever the dtype (as in DeepSeek's checkpoints): its updates
    // (moe.bias_update_speed, 1e-3) are below bf16's resolution at its magnitude, and a bf16 copy would change
    // routing on resume.
    if (absl::EndsWith(name, "e_score_correction_bias")) return at::kFloat;
    return at::isFloatingType(t.scalar_type()) ? dtype : t.scalar_type();
}

void save_hf_checkpoint(const std::string& dir,
                        const ModelArch& arch,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        const SaveOptions& opt) {
    TORCH_CHECK(hf_dtype_name(opt.dtype) != nullptr || fp8_export(opt),
                "save_hf_checkpoint: dtype must be float32, bfloat16, float16 or float8_e4m3fn, got ", opt.dtype);
    TORCH_CHECK(opt.max_shard_bytes > 0, "save_hf_checkpoint: max_shard_bytes must be positive, got ",
                opt.max_shard_bytes);
    std::string target = dir;
    while (target.size() > 1 && target.back() == '/') target.pop_back();
    if (target.empty() || target == "/" || target == "." || target == "..") {
        throw CheckpointError(absl::StrCat("save_hf_checkpoint: invalid checkpoint directory '", dir, "'"));
    }
    const dist::Communicator* group = opt.writers != nullptr && opt.writers->size() > 1 ? opt.writers : nullptr;
    const bool leader = group == nullptr || group->rank() == 0;
    const std::string config_text = hf_config_json(arch, fp8_export(opt) ? at::kBFloat16 : opt.dtype,
                                                   {.nextn_layers = opt.nextn_layers, .fp8 = fp8_export(opt)});
    const std::vector<SaveItem> items = save_items(tensors, opt);
    ShardPlan plan = plan_shards(target, items, opt);
    if (group == nullptr && plan.files.empty()) plan.files.emplace_back();  // a model without tensors: one empty file

    // Several writers: each numbers its files after the files of the ranks before it; names must be disjoint.
    size_t first_file = 0, total_files = plan.files.size();
    int64_t total_bytes = plan.bytes, total_params = plan.params;
    if (group != nullptr) {
        Json mine = {{"files", plan.files.size()}, {"bytes", plan.bytes}, {"params", plan.params}};
        Json names = Json::array();
        for (const SaveItem& it : items) names.push_back(it.name);
        mine["names"] = std::move(names);
        const std::vector<std::string> parts = group->all_gather_bytes(mine.dump());
        std::set<std::string> seen;
        total_files = 0;
        total_bytes = total_params = 0;
        for (size_t r = 0; r < parts.size(); ++r) {
            const Json p = Json::parse(parts[r]);
            if (static_cast<int>(r) == group->rank()) first_file = total_files;
            total_files += p.at("files").get<size_t>();
            total_bytes += p.at("bytes").get<int64_t>();
            total_params += p.at("params").get<int64_t>();
            for (const auto& n : p.at("names")) {
                if (!seen.insert(n.get<std::string>()).second) {
                    throw CheckpointError(absl::StrCat(target, ": tensor '", n.get<std::string>(),
                                                       "' is given by two writers (rank ", r, " of group '",
                                                       group->name(), "' among them)"));
                }
            }
        }
    }
    const bool indexed = total_files > 1;

    const size_t slash = target.find_last_of('/');
    const std::string parent = slash == std::string::npos ? "." : (slash == 0 ? "/" : target.substr(0, slash));
    const std::string base = slash == std::string::npos ? target : target.substr(slash + 1);
    std::string tmp, failure;
    if (leader) {
        try {
            fs::make_dirs(parent);
            std::string pattern = fs::join(parent, absl::StrCat(".", base, ".tmp-XXXXXX"));
            if (::mkdtemp(pattern.data()) == nullptr) {
                fail(pattern, absl::StrCat("cannot create the temporary checkpoint directory: ", std::strerror(errno)));
            }
            tmp = pattern;
        } catch (const std::exception& e) {
            if (group == nullptr) throw;
            failure = e.what();
        }
        DSRL_LOG(info) << "saving HF checkpoint " << target << ": " << absl::StrFormat("%.1f", total_bytes / 1048576.0)
                       << " MiB in " << total_files << " file(s)"
                       << (group != nullptr ? absl::StrCat(" from ", group->size(), " writers") : "");
    }
    if (group != nullptr) {
        agree_on_failure(*group, target, failure);
        group->broadcast_bytes(tmp, 0);
    }
    // This writer's shard files.
    Json weight_map = Json::object();
    try {
        for (size_t s = 0; s < plan.files.size(); ++s) {
            const std::string file = indexed ? shard_name(first_file + s, total_files) : kSingleFile;
            write_shard(tmp, file, items, plan.files[s], opt, weight_map);
        }
    } catch (const std::exception& e) {
        if (group == nullptr) {
            remove_quietly(tmp);
            throw;
        }
        failure = e.what();
    }
    if (group != nullptr) {
        try {
            agree_on_failure(*group, target, failure);
        } catch (...) {
            if (leader) remove_quietly(tmp);
            throw;
        }
        // The leader's index covers every writer's tensors.
        const std::vector<std::string> maps = group->all_gather_bytes(weight_map.dump());
        if (leader) {
            for (const std::string& m : maps) weight_map.update(Json::parse(m));
        }
    }
    failure.clear();
    if (leader) {
        try {
            write_file_synced(fs::join(tmp, kConfigFile), config_text);
            if (!opt.companion_dir.empty()) {
                for (const char* name : kCompanionFiles) {
                    const std::string from = fs::join(opt.companion_dir, name);
                    if (fs::exists(from)) write_file_synced(fs::join(tmp, name), fs::read_file(from));
                }
            }
            if (indexed) {
                Json index = {{"metadata", {{"total_parameters", total_params}, {"total_size", total_bytes}}},
                              {"weight_map", weight_map}};
                write_file_synced(fs::join(tmp, kIndexFile), index.dump(2) + "\n");
            }
            fsync_dir(tmp);
            publish_dir(tmp, target, parent);
        } catch (const std::exception& e) {
            remove_quietly(tmp);
            if (group == nullptr) throw;
            failure = e.what();
        }
    }
    if (group != nullptr) agree_on_failure(*group, target, failure);
    if (leader) {
        DSRL_LOG(info) << "saved HF checkpoint " << target;
    }
}

}  // namespace dsrl::dsa
