// Safetensors IO (SPEC §2.5): a memory-mapped reader that validates the whole header before any tensor is
// touched, and an atomic writer. Every problem is a dsrl::CheckpointError naming the file and, where one is
// involved, the tensor: truncated file, header size past the end, header that is not JSON, unknown dtype,
// negative shape, offsets out of bounds or overlapping, byte size that does not match the shape.
//
//   auto f = SafetensorsFile::open("model-00001-of-00002.safetensors");
//   at::Tensor w = f.get("model.layers.0.mlp.gate.weight");     // zero-copy view of the mapping
//   save_safetensors("out.safetensors", {{"x", x}}, {{"format", "pt"}});   // tmp file, fsync, rename
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dsrl {

struct SafetensorInfo {
    std::string name;
    std::string dtype;  ///< as written in the header: F32, BF16, F8_E4M3, ...
    at::ScalarType scalar_type;
    std::vector<int64_t> shape;
    uint64_t begin = 0;  ///< byte offsets into the data section
    uint64_t end = 0;
};

class SafetensorsFile {
public:
    /// Maps and validates `path`; throws CheckpointError on any problem.
    static SafetensorsFile open(const std::string& path);

    const std::string& path() const { return path_; }
    const std::vector<SafetensorInfo>& tensors() const { return tensors_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    bool contains(const std::string& name) const { return index_.count(name) != 0; }
    /// Throws CheckpointError naming the file and the missing tensor.
    const SafetensorInfo& info(const std::string& name) const;
    /// The tensor as a CPU view of the mapping (kept alive by the tensor), or a copy when its bytes are
    /// not aligned to the element size.
    at::Tensor get(const std::string& name) const;

    struct Mapping;

private:
    std::string path_;
    std::shared_ptr<Mapping> mapping_;
    const uint8_t* data_ = nullptr;  // start of the data section
    std::vector<SafetensorInfo> tensors_;
    std::map<std::string, size_t> index_;
    std::map<std::string, std::string> metadata_;
};

/// Validates a header (the JSON text) against a data section of `data_size` bytes; used by open() and
/// exposed for tests. `path` names the file in errors.
std::vector<SafetensorInfo> parse_safetensors_header(const std::string& header_json,
                                                     uint64_t data_size,
                                                     const std::string& path,
                                                     std::map<std::string, std::string>* metadata);

/// Writes tensors (any device; contiguous copies are made on the CPU) in name order, with 8-byte-aligned
/// data, to `path` atomically: a temporary file in the same directory, fsync, rename, fsync of the directory.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace dsrl
