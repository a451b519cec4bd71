#include "trainer/tensorboard.h"

#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <map>
#include <utility>
#include <vector>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>

#include "core/checksum.h"
#include "core/error.h"
#include "core/fs.h"

namespace dsrl::trainer {
namespace {

// TFRecord's masking of stored CRCs (a CRC of data that contains CRCs is then not degenerate).
uint32_t masked_crc32c(const void* data, size_t n) {
    const uint32_t crc = crc32c(data, n);
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

void put_le(std::string& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A minimal protobuf encoder: just the wire types the Event/Summary messages need.
class ProtoWriter {
public:
    void varint_field(int field, uint64_t v) {
        key(field, 0);
        varint(v);
    }
    void fixed64_field(int field, uint64_t v) {
        key(field, 1);
        put_le(out_, v, 8);
    }
    void bytes_field(int field, const std::string& bytes) {
        key(field, 2);
        varint(bytes.size());
        out_ += bytes;
    }
    void fixed32_field(int field, uint32_t v) {
        key(field, 5);
        put_le(out_, v, 4);
    }
    void double_field(int field, double v) {
        uint64_t bits;
        std::memcpy(&bits, &v, sizeof(bits));
        fixed64_field(field, bits);
    }
    void float_field(int field, float v) {
        uint32_t bits;
        std::memcpy(&bits, &v, sizeof(bits));
        fixed32_field(field, bits);
    }
    const std::string& str() const { return out_; }

private:
    void key(int field, int wire_type) {
        varint((static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(wire_type));
    }
    void varint(uint64_t v) {
        while (v >= 0x80) {
            out_.push_back(static_cast<char>((v & 0x7f) | 0x80));
            v >>= 7;
        }
        out_.push_back(static_cast<char>(v));
    }
    std::string out_;
};

// Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
// Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
std::string encode_summary_event(double wall_time, int64_t step, const std::map<std::string, double>& values) {
    ProtoWriter summary;
    for (const auto& [tag, value] : values) {
        ProtoWriter v;
        v.bytes_field(1, tag);
        v.float_field(2, static_cast<float>(value));
        summary.bytes_field(1, v.str());
    }
    ProtoWriter event;
    event.double_field(1, wall_time);
    event.varint_field(2, static_cast<uint64_t>(step));  // int64: negatives are 10-byte two's complement
    event.bytes_field(5, summary.str());
    return event.str();
}

double now_seconds() {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

std::string hostname() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "localhost";
    return buf;
}

std::atomic<uint64_t> g_file_counter{0};

constexpr const char* kEventFilePrefix = "events.out.tfevents.";

}  // namespace

uint32_t crc32c(const void* data, size_t n) { return dsrl::crc32c(data, n); }

TensorBoardWriter::TensorBoardWriter(const std::string& log_dir) {
    fs::make_dirs(log_dir);
    const double wall_time = now_seconds();
    path_ = fs::join(log_dir, absl::StrCat(kEventFilePrefix, static_cast<int64_t>(wall_time), ".", hostname(), ".",
                                           ::getpid(), ".", g_file_counter.fetch_add(1)));
    // "x": a new file, never an existing one; "e": O_CLOEXEC.
    file_ = std::fopen(path_.c_str(), "wbxe");
    if (file_ == nullptr) {
        throw Error(absl::StrCat("cannot create the TensorBoard event file '", path_, "': ", std::strerror(errno)));
    }
    ProtoWriter event;
    event.double_field(1, wall_time);
    event.varint_field(2, 0);
    event.bytes_field(3, "brain.Event:2");
    write_record(event.str());
    flush();
}

TensorBoardWriter::~TensorBoardWriter() {
    if (file_ != nullptr) std::fclose(file_);
}

TensorBoardWriter::TensorBoardWriter(TensorBoardWriter&& other) noexcept
    : path_(std::move(other.path_)), file_(std::exchange(other.file_, nullptr)) {}

TensorBoardWriter& TensorBoardWriter::operator=(TensorBoardWriter&& other) noexcept {
    if (this != &other) {
        if (file_ != nullptr) std::fclose(file_);
        path_ = std::move(other.path_);
        file_ = std::exchange(other.file_, nullptr);
    }
    return *this;
}

void TensorBoardWriter::add_scalar(const std::string& tag, int64_t step, double value) {
    add_scalar(tag, step, value, now_seconds());
}

void TensorBoardWriter::add_scalar(const std::string& tag, int64_t step, double value, double wall_time) {
    write_record(encode_summary_event(wall_time, step, {{tag, value}}));
}

void TensorBoardWriter::add_scalars(int64_t step, const std::map<std::string, double>& values) {
    if (!values.empty()) write_record(encode_summary_event(now_seconds(), step, values));
    flush();
}

void TensorBoardWriter::flush() {
    DSRL_INTERNAL_ASSERT(file_ != nullptr, "TensorBoardWriter used after being moved from");
    if (std::fflush(file_) != 0) {
        throw Error(absl::StrCat("cannot flush the TensorBoard event file '", path_, "': ", std::strerror(errno)));
    }
}

void TensorBoardWriter::write_record(const std::string& data) {
    DSRL_INTERNAL_ASSERT(file_ != nullptr, "TensorBoardWriter used after being moved from");
    std::string header;
    put_le(header, data.size(), 8);
    std::string record = header;
    put_le(record, masked_crc32c(header.data(), header.size()), 4);
    record += data;
    put_le(record, masked_crc32c(data.data(), data.size()), 4);
    if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) {
        throw Error(absl::StrCat("cannot write to the TensorBoard event file '", path_, "': ", std::strerror(errno)));
    }
}

namespace {

bool is_event_file(const std::string& name) { return name.rfind(kEventFilePrefix, 0) == 0; }

}  // namespace

std::string tensorboard_cursor(const std::string& log_dir) {
    std::string out;
    if (!fs::is_dir(log_dir)) return out;
    for (const std::string& name : fs::list_dir(log_dir)) {
        if (is_event_file(name)) absl::StrAppend(&out, name, "\t", fs::file_size(fs::join(log_dir, name)), "\n");
    }
    return out;
}

int64_t restore_tensorboard(const std::string& log_dir, const std::string& cursor) {
    if (!fs::is_dir(log_dir)) return 0;
    std::map<std::string, int64_t> sizes;
    for (absl::string_view line : absl::StrSplit(cursor, '\n', absl::SkipEmpty())) {
        const std::vector<absl::string_view> parts = absl::StrSplit(line, '\t');
        int64_t size = 0;
        if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &size) || size < 0) {
            throw Error(absl::StrCat("the checkpoint's TensorBoard cursor has a bad line '", line, "'"));
        }
        sizes[std::string(parts[0])] = size;
    }
    int64_t dropped = 0;
    for (const std::string& name : fs::list_dir(log_dir)) {
        if (!is_event_file(name)) continue;
        const std::string path = fs::join(log_dir, name);
        const int64_t size = fs::file_size(path);
        const auto it = sizes.find(name);
        if (it == sizes.end()) {
            dropped += size;
            fs::remove_tree(path);
        } else if (size > it->second) {
            dropped += size - it->second;
            fs::truncate_file(path, it->second);
        }
    }
    return dropped;
}

}  // namespace dsrl::trainer
