#include "rollout/record.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>

#include <ATen/ops/empty.h>
#include <absl/strings/escaping.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <c10/util/Exception.h>

#include "core/checksum.h"
#include "core/error.h"
#include "core/fs.h"
#include "rollout/indexer_sets.h"

// Note [Rollout record payload]
// All integers little-endian; str = u64 length + bytes; vec<T> = u64 count + count × T.
//   payload := u64 num_groups, group × num_groups            (then nothing: trailing bytes are an error)
//   group   := str domain, i64 prompt_id, u64 num_samples, sample × num_samples
//   sample  := str domain, i64 prompt_id, i32 sample_index, u64 seed, i64 policy_version,
//              vec<i32> prompt, vec<i32> response, u8 finish, vec<f32> logprobs, i64 vocab_size,
//              vec<str> kept (KeptSet::bytes()), i32 num_moe_layers, i32 route_top_k, u8 route_bytes,
//              vec<u8> routes, [version >= 2: i32 indexer_topk, vec<str> indexer],
//              [version >= 3: vec<u8> loss_mask, i32 turns, i32 tool_calls, i32 context_events, str env_error,
//              str trajectory], f32 reward
// logprobs and kept hold either one entry per response token or none (not recorded). Every length is checked
// against the bytes that remain before anything is allocated, so a malformed payload can neither read out of
// bounds nor request an absurd allocation; the CRC catches corruption that stays structurally valid.
// The kept sets' own encoding: rollout/kept_set.cpp.

namespace dsrl::rollout {
namespace {

constexpr char kMagic[8] = {'D', 'S', 'R', 'L', 'R', 'O', 'L', 'L'};
constexpr uint32_t kVersion = 3;            // 2: the keep-indexer fields; 3: multi-turn trajectories
constexpr size_t kHeaderBytes = 8 + 4 + 8;  // magic, version, payload size
constexpr size_t kTrailerBytes = 4;         // CRC-32 of the payload

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

// Describes the first inconsistency of `s` ("" when none): ids against the vocabulary, per-token vectors
// against the response, routes against their declared shape. Shared by the writer and the reader.
std::string sample_problem(const Sample& s) {
    if (static_cast<uint8_t>(s.finish) > static_cast<uint8_t>(FinishReason::kToolLimit)) {
        return absl::StrCat("finish reason ", static_cast<int>(s.finish),
                            " is not one of eos, stop, length, context, tool_limit");
    }
    if (s.vocab_size < 0) return absl::StrCat("vocab_size ", s.vocab_size, " is negative");
    for (const auto* part : {&s.prompt, &s.response}) {
        for (size_t i = 0; i < part->size(); ++i) {
            const int32_t id = (*part)[i];
            if (id < 0 || (s.vocab_size > 0 && id >= s.vocab_size)) {
                return absl::StrCat(part == &s.prompt ? "prompt" : "response", " token ", i, " has id ", id,
                                    " outside the vocabulary [0, ", s.vocab_size, ")");
            }
        }
    }
    const size_t n = s.response.size();
    if (!s.logprobs.empty() && s.logprobs.size() != n) {
        return absl::StrCat(s.logprobs.size(), " log-probs for ", n, " response tokens (expected one each or none)");
    }
    if (!s.loss_mask.empty() && s.loss_mask.size() != n) {
        return absl::StrCat(s.loss_mask.size(), " loss-mask entries for ", n,
                            " response tokens (expected one each or none)");
    }
    for (size_t i = 0; i < s.loss_mask.size(); ++i) {
        if (s.loss_mask[i] > 1) return absl::StrCat("loss-mask entry ", i, " is ", int{s.loss_mask[i]}, ", not 0 or 1");
    }
    if (s.turns < 0 || s.tool_calls < 0 || s.context_events < 0) {
        return absl::StrCat("negative trajectory counts: turns ", s.turns, ", tool_calls ", s.tool_calls,
                            ", context_events ", s.context_events);
    }
    if (!s.kept.empty() && s.kept.size() != n) {
        return absl::StrCat(s.kept.size(), " kept sets for ", n, " response tokens (expected one each or none)");
    }
    for (size_t i = 0; i < s.kept.size(); ++i) {
        if (s.kept[i].bytes().empty() || s.kept[i].vocab() != s.vocab_size) {
            return absl::StrCat("kept set of response token ", i, " is over a vocabulary of ", s.kept[i].vocab(),
                                " ids, the sample's vocab_size is ", s.vocab_size);
        }
    }
    if (s.route_bytes != 1 && s.route_bytes != 2) return absl::StrCat("route_bytes ", s.route_bytes, " is not 1 or 2");
    if (s.num_moe_layers < 0 || s.route_top_k < 0) {
        return absl::StrCat("negative routing shape: num_moe_layers ", s.num_moe_layers, ", route_top_k ",
                            s.route_top_k);
    }
    uint64_t expected = 0;
    if (!checked_mul(s.num_moe_layers, s.num_tokens(), &expected) || !checked_mul(expected, s.route_top_k, &expected) ||
        !checked_mul(expected, s.route_bytes, &expected) || expected != s.routes.size()) {
        return absl::StrCat("routes hold ", s.routes.size(), " bytes, expected num_moe_layers ", s.num_moe_layers,
                            " x num_tokens ", s.num_tokens(), " x route_top_k ", s.route_top_k, " x route_bytes ",
                            s.route_bytes);
    }
    if (!s.indexer.empty()) {
        if (s.indexer_topk < 1) return absl::StrCat("indexer sets recorded with indexer_topk ", s.indexer_topk);
        for (size_t l = 0; l < s.indexer.size(); ++l) {
            try {
                check_indexer_layer(s.indexer[l], s.num_tokens(), s.indexer_topk, absl::StrCat("layer ", l));
            } catch (const DataError& e) {
                return e.what();
            }
        }
    }
    return "";
}

class Writer {
public:
    void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
    void u32(uint32_t v) {
        for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>(v >> (8 * i)));
    }
    void u64(uint64_t v) {
        for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>(v >> (8 * i)));
    }
    void i32(int32_t v) { u32(static_cast<uint32_t>(v)); }
    void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
    void f32(float v) { u32(std::bit_cast<uint32_t>(v)); }
    void str(const std::string& s) {
        u64(s.size());
        out_ += s;
    }
    void i32s(const std::vector<int32_t>& v) {
        u64(v.size());
        for (const int32_t x : v) i32(x);
    }
    void f32s(const std::vector<float>& v) {
        u64(v.size());
        for (const float x : v) f32(x);
    }
    void u8s(const std::vector<uint8_t>& v) {
        u64(v.size());
        out_.append(reinterpret_cast<const char*>(v.data()), v.size());
    }
    std::string& out() { return out_; }

private:
    std::string out_;
};

class Reader {
public:
    Reader(const char* data, size_t size, const std::string& what) : p_(data), left_(size), size_(size), what_(what) {}

    [[noreturn]] void fail(const std::string& msg) const { throw DataError(absl::StrCat(what_, ": ", where, msg)); }

    size_t left() const { return left_; }

    uint8_t u8(const char* field) { return static_cast<uint8_t>(take(1, field)[0]); }
    uint32_t u32(const char* field) { return load<uint32_t>(take(4, field)); }
    uint64_t u64(const char* field) { return load<uint64_t>(take(8, field)); }
    int32_t i32(const char* field) { return static_cast<int32_t>(u32(field)); }
    int64_t i64(const char* field) { return static_cast<int64_t>(u64(field)); }
    float f32(const char* field) { return std::bit_cast<float>(u32(field)); }

    /// A count of elements of at least `min_bytes` each, checked against the bytes that remain.
    uint64_t count(const char* field, uint64_t min_bytes) {
        const uint64_t n = u64(field);
        if (n > left_ / min_bytes) {
            fail(absl::StrCat("truncated or corrupt: ", field, " claims ", n, " entries of >= ", min_bytes,
                              " bytes but only ", left_, " bytes remain"));
        }
        return n;
    }
    std::string str(const char* field) {
        const uint64_t n = count(field, 1);
        const char* s = take(n, field);
        return std::string(s, n);
    }
    std::vector<int32_t> i32s(const char* field) {
        std::vector<int32_t> v(count(field, 4));
        for (auto& x : v) x = i32(field);
        return v;
    }
    std::vector<float> f32s(const char* field) {
        std::vector<float> v(count(field, 4));
        for (auto& x : v) x = f32(field);
        return v;
    }
    std::vector<uint8_t> u8s(const char* field) {
        const uint64_t n = count(field, 1);
        const char* s = take(n, field);
        return std::vector<uint8_t>(s, s + n);
    }

    std::string where;  ///< "group g sample s: ", prefixed to errors

private:
    const char* take(uint64_t n, const char* field) {
        if (n > left_) {
            fail(absl::StrCat("truncated: ", field, " needs ", n, " bytes at payload offset ", size_ - left_, ", only ",
                              left_, " remain"));
        }
        const char* s = p_;
        p_ += n;
        left_ -= n;
        return s;
    }
    template <typename T>
    static T load(const char* s) {
        T v = 0;
        for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<uint8_t>(s[i])) << (8 * i);
        return v;
    }

    const char* p_;
    size_t left_;
    size_t size_;
    const std::string& what_;
};

Sample read_sample(Reader& r, uint32_t version) {
    Sample s;
    s.domain = r.str("domain");
    s.prompt_id = r.i64("prompt_id");
    s.sample_index = r.i32("sample_index");
    s.seed = r.u64("seed");
    s.policy_version = r.i64("policy_version");
    s.prompt = r.i32s("prompt");
    s.response = r.i32s("response");
    const uint8_t finish = r.u8("finish");
    if (finish > static_cast<uint8_t>(FinishReason::kToolLimit)) {
        r.fail(absl::StrCat("finish reason ", static_cast<int>(finish),
                            " is not one of 0 eos, 1 stop, 2 length, 3 context, 4 tool_limit"));
    }
    s.finish = static_cast<FinishReason>(finish);
    s.logprobs = r.f32s("logprobs");
    s.vocab_size = r.i64("vocab_size");
    const uint64_t num_kept = r.count("kept sets", 9);  // each a u64 length + at least the tag byte
    for (uint64_t i = 0; i < num_kept; ++i) {
        std::string bytes = r.str("kept set");
        try {
            s.kept.push_back(KeptSet::from_bytes(std::move(bytes), s.vocab_size));
        } catch (const DataError& e) {
            r.fail(absl::StrCat("response token ", i, ": ", e.what()));
        }
    }
    s.num_moe_layers = r.i32("num_moe_layers");
    s.route_top_k = r.i32("route_top_k");
    s.route_bytes = r.u8("route_bytes");
    s.routes = r.u8s("routes");
    if (version >= 2) {
        s.indexer_topk = r.i32("indexer_topk");
        const uint64_t layers = r.count("indexer layers", 8);
        for (uint64_t l = 0; l < layers; ++l) s.indexer.push_back(r.str("indexer sets"));
    }
    if (version >= 3) {
        s.loss_mask = r.u8s("loss_mask");
        s.turns = r.i32("turns");
        s.tool_calls = r.i32("tool_calls");
        s.context_events = r.i32("context_events");
        s.env_error = r.str("env_error");
        s.trajectory = r.str("trajectory");
    }
    s.reward = r.f32("reward");
    const std::string problem = sample_problem(s);
    if (!problem.empty()) r.fail(problem);
    return s;
}

void write_sample(Writer& w, const Sample& s) {
    w.str(s.domain);
    w.i64(s.prompt_id);
    w.i32(s.sample_index);
    w.u64(s.seed);
    w.i64(s.policy_version);
    w.i32s(s.prompt);
    w.i32s(s.response);
    w.u8(static_cast<uint8_t>(s.finish));
    w.f32s(s.logprobs);
    w.i64(s.vocab_size);
    w.u64(s.kept.size());
    for (const KeptSet& k : s.kept) w.str(k.bytes());
    w.i32(s.num_moe_layers);
    w.i32(s.route_top_k);
    w.u8(static_cast<uint8_t>(s.route_bytes));
    w.u8s(s.routes);
    w.i32(s.indexer_topk);
    w.u64(s.indexer.size());
    for (const std::string& l : s.indexer) w.str(l);
    w.u8s(s.loss_mask);
    w.i32(s.turns);
    w.i32(s.tool_calls);
    w.i32(s.context_events);
    w.str(s.env_error);
    w.str(s.trajectory);
    w.f32(s.reward);
}

}  // namespace

const char* finish_reason_name(FinishReason r) {
    switch (r) {
        case FinishReason::kEos:
            return "eos";
        case FinishReason::kStop:
            return "stop";
        case FinishReason::kLength:
            return "length";
        case FinishReason::kContext:
            return "context";
        case FinishReason::kToolLimit:
            return "tool_limit";
    }
    return "unknown";
}

// ---- Sample routes ----------------------------------------------------------------------------------------

at::Tensor Sample::route_tensor(int32_t layer) const {
    TORCH_CHECK(layer >= 0 && layer < num_moe_layers, "Sample::route_tensor: layer ", layer, " is outside [0, ",
                num_moe_layers, ")");
    TORCH_CHECK((route_bytes == 1 || route_bytes == 2) && route_top_k >= 0 &&
                    routes.size() == static_cast<size_t>(num_moe_layers * num_tokens() * route_top_k * route_bytes),
                "Sample::route_tensor: routes hold ", routes.size(), " bytes, expected num_moe_layers ", num_moe_layers,
                " x num_tokens ", num_tokens(), " x route_top_k ", route_top_k, " x route_bytes ", route_bytes);
    const int64_t n = num_tokens() * route_top_k;
    at::Tensor out = at::empty({num_tokens(), route_top_k}, at::kLong);
    int64_t* o = out.data_ptr<int64_t>();
    const uint8_t* src = routes.data() + static_cast<size_t>(layer) * n * route_bytes;
    for (int64_t i = 0; i < n; ++i) {
        o[i] = route_bytes == 1 ? src[i] : (src[2 * i] | (src[2 * i + 1] << 8));
    }
    return out;
}

void Sample::set_routes(const std::vector<at::Tensor>& per_layer, int64_t n_routed_experts) {
    TORCH_CHECK(n_routed_experts >= 1 && n_routed_experts <= 65536,
                "Sample::set_routes: n_routed_experts must be in [1, 65536], got ", n_routed_experts);
    const int64_t t = num_tokens();
    const int bytes = n_routed_experts <= 256 ? 1 : 2;
    int64_t k = 0;
    std::vector<uint8_t> out;
    for (size_t l = 0; l < per_layer.size(); ++l) {
        const at::Tensor& r = per_layer[l];
        TORCH_CHECK(r.defined() && r.dim() == 2, "Sample::set_routes: layer ", l,
                    " routes must be [num_tokens, top_k], got ", r.defined() ? r.sizes() : at::IntArrayRef{});
        if (l == 0) {
            k = r.size(1);
            TORCH_CHECK(k <= std::numeric_limits<int32_t>::max(), "Sample::set_routes: top_k ", k, " is too large");
            out.reserve(per_layer.size() * t * k * bytes);
        }
        TORCH_CHECK(r.size(0) == t && r.size(1) == k, "Sample::set_routes: layer ", l, " routes must be [", t, ", ", k,
                    "] (num_tokens = prompt + response, top_k of layer 0), got ", r.sizes());
        TORCH_CHECK(
            !at::isFloatingType(r.scalar_type()) && !at::isComplexType(r.scalar_type()) && r.scalar_type() != at::kBool,
            "Sample::set_routes: layer ", l, " routes must be integer expert ids, got ", r.scalar_type());
        const at::Tensor c = r.to(at::kCPU, at::kLong).contiguous();
        const int64_t* p = c.data_ptr<int64_t>();
        for (int64_t i = 0; i < c.numel(); ++i) {
            TORCH_CHECK(p[i] >= 0 && p[i] < n_routed_experts, "Sample::set_routes: layer ", l, " token ", i / k,
                        " slot ", i % k, ": expert id ", p[i], " is outside [0, ", n_routed_experts, ")");
            out.push_back(static_cast<uint8_t>(p[i]));
            if (bytes == 2) out.push_back(static_cast<uint8_t>(p[i] >> 8));
        }
    }
    routes = std::move(out);
    num_moe_layers = static_cast<int32_t>(per_layer.size());
    route_top_k = static_cast<int32_t>(k);
    route_bytes = bytes;
}

// ---- Sample indexer sets (keep-indexer) ---------------------------------------------------------------------

at::Tensor Sample::indexer_sets(int32_t layer) const {
    TORCH_CHECK(layer >= 0 && static_cast<size_t>(layer) < indexer.size(), "Sample::indexer_sets: layer ", layer,
                " of ", indexer.size(), " recorded DSA layers");
    return decode_indexer_layer(indexer[static_cast<size_t>(layer)], num_tokens(), indexer_topk,
                                absl::StrCat("sample ", sample_index, " of prompt ", prompt_id, ", DSA layer ", layer));
}

void Sample::set_indexer(const std::vector<at::Tensor>& per_layer, int64_t k) {
    TORCH_CHECK(k >= 1 && k <= std::numeric_limits<int32_t>::max(), "Sample::set_indexer: k must be >= 1, got ", k);
    std::vector<std::string> out;
    for (size_t l = 0; l < per_layer.size(); ++l) {
        TORCH_CHECK(per_layer[l].defined() && per_layer[l].dim() == 2 && per_layer[l].size(0) == num_tokens(),
                    "Sample::set_indexer: layer ", l, " must be [", num_tokens(), ", k], got ",
                    per_layer[l].defined() ? per_layer[l].sizes() : at::IntArrayRef{});
        out.push_back(encode_indexer_layer(per_layer[l], k));
    }
    indexer = std::move(out);
    indexer_topk = static_cast<int32_t>(k);
}

int64_t Sample::indexer_bytes() const {
    int64_t n = 0;
    for (const std::string& l : indexer) n += static_cast<int64_t>(l.size());
    return n;
}

// ---- Serialization ----------------------------------------------------------------------------------------

uint32_t crc32(const void* data, size_t size) { return dsrl::crc32(data, size); }

std::string serialize_groups(const std::vector<SampleGroup>& groups) {
    Writer w;
    w.out().append(kMagic, sizeof(kMagic));
    w.u32(kVersion);
    w.u64(0);  // payload size, patched below
    w.u64(groups.size());
    for (size_t g = 0; g < groups.size(); ++g) {
        const SampleGroup& group = groups[g];
        w.str(group.domain);
        w.i64(group.prompt_id);
        w.u64(group.samples.size());
        for (size_t i = 0; i < group.samples.size(); ++i) {
            const std::string problem = sample_problem(group.samples[i]);
            if (!problem.empty()) {
                throw DataError(absl::StrCat("serialize_groups: group ", g, " sample ", i, ": ", problem));
            }
            write_sample(w, group.samples[i]);
        }
    }
    std::string& out = w.out();
    const uint64_t payload = out.size() - kHeaderBytes;
    for (int i = 0; i < 8; ++i) out[12 + i] = static_cast<char>(payload >> (8 * i));
    w.u32(crc32(out.data() + kHeaderBytes, payload));
    return std::move(out);
}

std::vector<SampleGroup> deserialize_groups(const std::string& bytes, const std::string& what) {
    const auto fail = [&](const std::string& msg) { throw DataError(absl::StrCat(what, ": ", msg)); };
    if (bytes.size() < sizeof(kMagic)) {
        fail(absl::StrCat("truncated: ", bytes.size(), " bytes, too short for the magic \"DSRLROLL\""));
    }
    if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
        fail(absl::StrCat("bad magic \"", absl::CHexEscape(bytes.substr(0, sizeof(kMagic))),
                          "\", expected \"DSRLROLL\" (not a dsrl rollout file)"));
    }
    if (bytes.size() < kHeaderBytes + kTrailerBytes) {
        fail(absl::StrCat("truncated: ", bytes.size(), " bytes, too short for the header and checksum (",
                          kHeaderBytes + kTrailerBytes, " bytes)"));
    }
    Reader header(bytes.data() + sizeof(kMagic), kHeaderBytes - sizeof(kMagic), what);
    const uint32_t version = header.u32("version");
    if (version > kVersion) {
        fail(absl::StrCat("format version ", version, " is newer than the supported version ", kVersion,
                          " (written by a newer dsrl?)"));
    }
    if (version == 0) fail("format version 0 is not a valid version");
    const uint64_t payload = header.u64("payload size");
    const uint64_t room = bytes.size() - kHeaderBytes - kTrailerBytes;
    if (payload > room) {
        fail(absl::StrCat("truncated: the header announces a ", payload, "-byte payload, the data holds ", room,
                          " bytes before the checksum"));
    }
    if (payload < room) fail(absl::StrCat(room - payload, " unexpected bytes after the checksum"));
    const char* body = bytes.data() + kHeaderBytes;
    Reader crc_reader(body + payload, kTrailerBytes, what);
    const uint32_t stored = crc_reader.u32("checksum");
    const uint32_t computed = crc32(body, payload);
    if (stored != computed) {
        fail(absl::StrFormat("checksum mismatch: stored CRC-32 0x%08x, computed 0x%08x (corrupt data)", stored,
                             computed));
    }

    Reader r(body, payload, what);
    std::vector<SampleGroup> groups;
    const uint64_t num_groups = r.count("group count", 24);  // str length, prompt_id, sample count
    for (uint64_t g = 0; g < num_groups; ++g) {
        r.where = absl::StrCat("group ", g, ": ");
        SampleGroup group;
        group.domain = r.str("domain");
        group.prompt_id = r.i64("prompt_id");
        const uint64_t num_samples = r.count("sample count", 1);
        for (uint64_t i = 0; i < num_samples; ++i) {
            r.where = absl::StrCat("group ", g, " sample ", i, ": ");
            group.samples.push_back(read_sample(r, version));
        }
        groups.push_back(std::move(group));
    }
    r.where.clear();
    if (r.left() != 0) r.fail(absl::StrCat(r.left(), " unparsed bytes at the end of the payload"));
    return groups;
}

void write_groups_file(const std::string& path, const std::vector<SampleGroup>& groups) {
    const std::string bytes = serialize_groups(groups);
    try {
        fs::write_file_atomic(path, {bytes});
    } catch (const Error& e) {
        throw DataError(absl::StrCat("rollout records ", path, ": ", e.what()));
    }
}

std::vector<SampleGroup> read_groups_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw DataError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
    std::string bytes;
    char buf[1 << 16];
    while (true) {
        const ssize_t r = ::read(fd, buf, sizeof(buf));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            const int e = errno;
            ::close(fd);
            throw DataError(absl::StrCat(path, ": read failed: ", std::strerror(e)));
        }
        if (r == 0) break;
        bytes.append(buf, static_cast<size_t>(r));
    }
    ::close(fd);
    return deserialize_groups(bytes, path);
}

}  // namespace dsrl::rollout
