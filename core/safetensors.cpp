#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <absl/strings/str_join.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"

namespace dsrl {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // as the reference implementation

struct DtypeEntry {
    const char* name;
    at::ScalarType type;
};
const DtypeEntry kDtypes[] = {
    {"F64", at::kDouble},
    {"F32", at::kFloat},
    {"F16", at::kHalf},
    {"BF16", at::kBFloat16},
    {"I64", at::kLong},
    {"I32", at::kInt},
    {"I16", at::kShort},
    {"I8", at::kChar},
    {"U8", at::kByte},
    {"BOOL", at::kBool},
    {"U16", at::kUInt16},
    {"U32", at::kUInt32},
    {"U64", at::kUInt64},
    {"F8_E4M3", at::kFloat8_e4m3fn},
    {"F8_E5M2", at::kFloat8_e5m2},
};

const char* dtype_name(at::ScalarType t) {
    for (const auto& d : kDtypes) {
        if (d.type == t) return d.name;
    }
    return nullptr;
}

[[noreturn]] void bad(const std::string& path, const std::string& what) {
    throw CheckpointError(absl::StrCat(path, ": ", what));
}

}  // namespace

struct SafetensorsFile::Mapping {
    void* addr = nullptr;
    size_t size = 0;
    ~Mapping() {
        if (addr != nullptr && size > 0) ::munmap(addr, size);
    }
};

std::vector<SafetensorInfo> parse_safetensors_header(const std::string& header_json,
                                                     uint64_t data_size,
                                                     const std::string& path,
                                                     std::map<std::string, std::string>* metadata) {
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(header_json);
    } catch (const nlohmann::json::exception& e) {
        bad(path, absl::StrCat("corrupt safetensors header (not valid JSON): ", e.what()));
    }
    if (!header.is_object()) bad(path, "corrupt safetensors header: expected a JSON object");
    std::vector<SafetensorInfo> out;
    for (const auto& [name, entry] : header.items()) {
        if (name == "__metadata__") {
            if (!entry.is_object()) bad(path, "__metadata__ must be an object of strings");
            for (const auto& [k, v] : entry.items()) {
                if (!v.is_string()) bad(path, absl::StrCat("__metadata__['", k, "'] must be a string"));
                if (metadata != nullptr) (*metadata)[k] = v.get<std::string>();
            }
            continue;
        }
        const std::string where = absl::StrCat("tensor '", name, "'");
        if (!entry.is_object()) bad(path, absl::StrCat(where, ": header entry must be an object"));
        if (!entry.contains("dtype") || !entry["dtype"].is_string()) bad(path, absl::StrCat(where, ": missing dtype"));
        if (!entry.contains("shape") || !entry["shape"].is_array()) bad(path, absl::StrCat(where, ": missing shape"));
        if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
            bad(path, absl::StrCat(where, ": data_offsets must be [begin, end]"));
        }
        SafetensorInfo info;
        info.name = name;
        info.dtype = entry["dtype"].get<std::string>();
        bool known = false;
        for (const auto& d : kDtypes) {
            if (info.dtype == d.name) {
                info.scalar_type = d.type;
                known = true;
            }
        }
        if (!known) bad(path, absl::StrCat(where, ": unsupported dtype '", info.dtype, "'"));
        // ATen computes strides from the non-zero sizes, so even an empty tensor's other sizes must multiply to at
        // most 2^63 - 1 (found by fuzzing, tests/fuzz/safetensors/regressions/empty_huge_shape: [0, 2^40, 2^40]
        // opened, then get() failed with c10's "Stride calculation overflowed", naming neither file nor tensor).
        uint64_t numel = 1;
        uint64_t span = 1;  // the product of the sizes, zeros counted as 1
        for (const auto& dim : entry["shape"]) {
            if (!dim.is_number_integer() || dim.get<int64_t>() < 0) {
                bad(path, absl::StrCat(where, ": shape entries must be non-negative integers, got ", dim.dump()));
            }
            const auto d = static_cast<uint64_t>(dim.get<int64_t>());
            info.shape.push_back(static_cast<int64_t>(d));
            if (d != 0 && span > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / d) {
                bad(path, absl::StrCat(where, ": shape ", entry["shape"].dump(),
                                       " overflows: the product of its non-zero sizes exceeds 2^63 - 1"));
            }
            span *= std::max<uint64_t>(d, 1);
            numel *= d;  // <= span
        }
        for (const auto& o : entry["data_offsets"]) {
            if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0)) {
                bad(path, absl::StrCat(where, ": data_offsets must be non-negative integers"));
            }
        }
        info.begin = entry["data_offsets"][0].get<uint64_t>();
        info.end = entry["data_offsets"][1].get<uint64_t>();
        if (info.begin > info.end || info.end > data_size) {
            bad(path, absl::StrCat(where, ": data_offsets [", info.begin, ", ", info.end, "] exceed the ", data_size,
                                   "-byte data section (truncated file?)"));
        }
        const uint64_t itemsize = c10::elementSize(info.scalar_type);
        if (numel > std::numeric_limits<uint64_t>::max() / itemsize || info.end - info.begin != numel * itemsize) {
            bad(path, absl::StrCat(where, ": ", info.end - info.begin, " bytes do not hold ", info.dtype, " shape [",
                                   absl::StrJoin(info.shape, ", "), "] (", numel * itemsize, " bytes)"));
        }
        out.push_back(std::move(info));
    }
    // Byte ranges must not overlap (they may leave no holes in files we write; others may). An empty tensor (a zero
    // size: transformers writes a config's zero shared experts so) holds no bytes and overlaps nothing; its offsets
    // may equal a neighbour's start.
    std::vector<const SafetensorInfo*> order;
    for (const auto& t : out) {
        if (t.end > t.begin) order.push_back(&t);
    }
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < order.size(); ++i) {
        if (order[i]->begin < order[i - 1]->end) {
            bad(path, absl::StrCat("tensors '", order[i - 1]->name, "' and '", order[i]->name, "' overlap"));
        }
    }
    return out;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) bad(path, absl::StrCat("cannot open: ", std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        const int err = errno;
        ::close(fd);
        bad(path, absl::StrCat("cannot stat: ", std::strerror(err)));
    }
    SafetensorsFile f;
    f.path_ = path;
    f.mapping_ = std::make_shared<Mapping>();
    const auto file_size = static_cast<uint64_t>(st.st_size);
    if (file_size < 8) {
        ::close(fd);
        bad(path, absl::StrCat("truncated: ", file_size, " bytes, too short for a safetensors header"));
    }
    void* addr = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    if (addr == MAP_FAILED) bad(path, absl::StrCat("cannot map: ", std::strerror(err)));
    f.mapping_->addr = addr;
    f.mapping_->size = file_size;
    const auto* bytes = static_cast<const uint8_t*>(addr);
    uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];  // little-endian
    if (header_size > kMaxHeaderBytes || header_size > file_size - 8) {
        bad(path, absl::StrCat("corrupt or truncated: header size ", header_size, " exceeds the file (", file_size,
                               " bytes) or the 100 MiB limit"));
    }
    const std::string header(reinterpret_cast<const char*>(bytes + 8), header_size);
    f.data_ = bytes + 8 + header_size;
    f.tensors_ = parse_safetensors_header(header, file_size - 8 - header_size, path, &f.metadata_);
    for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_[f.tensors_[i].name] = i;
    return f;
}

const SafetensorInfo& SafetensorsFile::info(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) bad(path_, absl::StrCat("missing tensor '", name, "'"));
    return tensors_[it->second];
}

at::Tensor SafetensorsFile::get(const std::string& name) const {
    const SafetensorInfo& t = info(name);
    const auto options = at::TensorOptions().dtype(t.scalar_type);
    void* ptr = const_cast<uint8_t*>(data_ + t.begin);  // mapped read-only and private: never written
    const size_t itemsize = c10::elementSize(t.scalar_type);
    if (t.end == t.begin) return at::empty(t.shape, options);  // no elements (a dimension of 0): nothing to read
    if (reinterpret_cast<uintptr_t>(ptr) % itemsize != 0) {
        at::Tensor copy = at::empty(t.shape, options);
        std::memcpy(copy.data_ptr(), ptr, t.end - t.begin);
        return copy;
    }
    std::shared_ptr<Mapping> keep = mapping_;
    return at::from_blob(
        ptr, t.shape, [keep](void*) mutable { keep.reset(); }, options);
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
    std::vector<std::pair<std::string, at::Tensor>> sorted;
    for (const auto& [name, t] : tensors) {
        TORCH_CHECK(dtype_name(t.scalar_type()) != nullptr, "save_safetensors: tensor '", name, "' has dtype ",
                    t.scalar_type(), ", which safetensors cannot store");
        sorted.emplace_back(name, t.detach().to(at::kCPU).contiguous());
    }
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    uint64_t offset = 0;
    for (const auto& [name, t] : sorted) {
        const uint64_t bytes = t.numel() * t.element_size();
        header[name] = {{"dtype", dtype_name(t.scalar_type())},
                        {"shape", t.sizes().vec()},
                        {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
    }
    std::string text = header.dump();
    text.append((8 - (8 + text.size()) % 8) % 8, ' ');  // data starts 8-byte aligned
    uint8_t size_le[8];
    const uint64_t header_size = text.size();
    for (int i = 0; i < 8; ++i) size_le[i] = static_cast<uint8_t>(header_size >> (8 * i));
    std::vector<std::string_view> pieces{std::string_view(reinterpret_cast<const char*>(size_le), 8), text};
    for (const auto& [name, t] : sorted) {
        pieces.emplace_back(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
    }
    try {
        fs::write_file_atomic(path, pieces);
    } catch (const Error& e) {
        throw CheckpointError(absl::StrCat("saving safetensors ", path, ": ", e.what()));
    }
}

}  // namespace dsrl
