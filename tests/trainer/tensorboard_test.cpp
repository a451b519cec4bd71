// TensorBoard event files (trainer/tensorboard.h): CRC-32C, the file name TensorBoard globs for, and the
// records read back by a small independent TFRecord + protobuf reader that checks both CRCs of each record.
// TensorBoard.WritesForPythonReader also feeds tests/trainer/tensorboard_read.py (ctest dsrl_tensorboard_*).
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>
#include <memory>
#include <regex>
#include <stdexcept>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include "core/error.h"
#include "core/fs.h"
#include "tests/test_util.h"
#include "trainer/tensorboard.h"

namespace dsrl::trainer {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// --- A tiny reader, independent of the writer's encoder -------------------------------------------------------

uint32_t masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

uint64_t get_le(const std::string& s, size_t pos, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(s.at(pos + i))) << (8 * i);
    return v;
}

// Splits a TFRecord file into its records; throws std::runtime_error on a bad CRC or truncation.
std::vector<std::string> read_records(const std::string& file) {
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos < file.size()) {
        if (file.size() - pos < 12) throw std::runtime_error("truncated header");
        const uint64_t len = get_le(file, pos, 8);
        if (masked(crc32c(file.data() + pos, 8)) != get_le(file, pos + 8, 4)) throw std::runtime_error("length crc");
        pos += 12;
        if (file.size() - pos < len + 4) throw std::runtime_error("truncated data");
        std::string data = file.substr(pos, len);
        if (masked(crc32c(data.data(), data.size())) != get_le(file, pos + len, 4))
            throw std::runtime_error("data crc");
        pos += len + 4;
        out.push_back(std::move(data));
    }
    return out;
}

struct Field {
    int number = 0;
    int wire_type = 0;
    uint64_t scalar = 0;  // varint / fixed64 / fixed32
    std::string bytes;    // length-delimited
};

uint64_t read_varint(const std::string& s, size_t& pos) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        const auto b = static_cast<unsigned char>(s.at(pos++));
        v |= static_cast<uint64_t>(b & 0x7f) << shift;
        if ((b & 0x80) == 0) return v;
    }
    throw std::runtime_error("varint too long");
}

std::vector<Field> parse_message(const std::string& s) {
    std::vector<Field> out;
    size_t pos = 0;
    while (pos < s.size()) {
        const uint64_t key = read_varint(s, pos);
        Field f{.number = static_cast<int>(key >> 3), .wire_type = static_cast<int>(key & 7)};
        switch (f.wire_type) {
            case 0:
                f.scalar = read_varint(s, pos);
                break;
            case 1:
                f.scalar = get_le(s, pos, 8);
                pos += 8;
                break;
            case 5:
                f.scalar = get_le(s, pos, 4);
                pos += 4;
                break;
            case 2: {
                const uint64_t n = read_varint(s, pos);
                if (pos + n > s.size()) throw std::runtime_error("truncated field");
                f.bytes = s.substr(pos, n);
                pos += n;
                break;
            }
            default:
                throw std::runtime_error(absl::StrCat("unexpected wire type ", f.wire_type));
        }
        out.push_back(std::move(f));
    }
    if (pos != s.size()) throw std::runtime_error("message overrun");
    return out;
}

struct Event {
    double wall_time = 0;
    int64_t step = 0;
    std::string file_version;
    std::vector<std::pair<std::string, float>> values;
};

Event parse_event(const std::string& data) {
    Event e;
    for (const Field& f : parse_message(data)) {
        if (f.number == 1 && f.wire_type == 1) {
            std::memcpy(&e.wall_time, &f.scalar, 8);
        } else if (f.number == 2 && f.wire_type == 0) {
            e.step = static_cast<int64_t>(f.scalar);
        } else if (f.number == 3 && f.wire_type == 2) {
            e.file_version = f.bytes;
        } else if (f.number == 5 && f.wire_type == 2) {
            for (const Field& v : parse_message(f.bytes)) {
                if (v.number != 1 || v.wire_type != 2) throw std::runtime_error("Summary: unexpected field");
                std::pair<std::string, float> tv;
                bool has_value = false;
                for (const Field& g : parse_message(v.bytes)) {
                    if (g.number == 1 && g.wire_type == 2) {
                        tv.first = g.bytes;
                    } else if (g.number == 2 && g.wire_type == 5) {
                        const auto bits = static_cast<uint32_t>(g.scalar);
                        std::memcpy(&tv.second, &bits, 4);
                        has_value = true;
                    } else {
                        throw std::runtime_error("Value: unexpected field");
                    }
                }
                if (!has_value) throw std::runtime_error("Value without simple_value");
                e.values.push_back(tv);
            }
        } else {
            throw std::runtime_error(absl::StrCat("Event: unexpected field ", f.number));
        }
    }
    return e;
}

std::vector<Event> read_events(const std::string& path) {
    std::vector<Event> out;
    for (const std::string& r : read_records(fs::read_file(path))) out.push_back(parse_event(r));
    return out;
}

std::vector<std::string> list_dir(const std::string& dir) {
    return fs::is_dir(dir) ? fs::list_dir(dir) : std::vector<std::string>{};
}

bool same_float(float a, float b) { return std::isnan(a) ? std::isnan(b) : a == b; }

// --- Tests ----------------------------------------------------------------------------------------------------

TEST(TensorBoard, Crc32cKnownVectors) {
    EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
    EXPECT_EQ(crc32c("", 0), 0u);
    const std::string zeros(32, '\0');
    EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720 B.4
    const std::string ones(32, '\xff');
    EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
}

TEST(TensorBoard, FileNameMatchesPatternAndDirIsCreated) {
    testing::TempDir tmp;
    const std::string dir = tmp.path() + "/runs/a";  // missing parents are created
    // The writer's clock (CLOCK_REALTIME): std::time reads the coarse clock, which can lag it by a tick across a
    // second boundary (this test failed once that way).
    const auto now = [] {
        timespec ts{};
        ::clock_gettime(CLOCK_REALTIME, &ts);
        return static_cast<int64_t>(ts.tv_sec);
    };
    const int64_t before = now();
    TensorBoardWriter w1(dir);
    TensorBoardWriter w2(dir);  // a second writer in the same second gets its own file
    const int64_t after = now();
    char host[256] = {};
    ASSERT_EQ(::gethostname(host, sizeof(host) - 1), 0);

    const std::vector<std::string> names = list_dir(dir);
    ASSERT_EQ(names.size(), 2u);
    EXPECT_NE(w1.path(), w2.path());
    const std::regex re(R"(events\.out\.tfevents\.(\d+)\.(.+)\.(\d+)\.(\d+))");
    for (const std::string& name : names) {
        std::smatch m;
        ASSERT_TRUE(std::regex_match(name, m, re)) << name;
        EXPECT_GE(std::stoll(m[1]), before);
        EXPECT_LE(std::stoll(m[1]), after);
        EXPECT_EQ(m[2], std::string(host));
        EXPECT_EQ(std::stoll(m[3]), ::getpid());
        EXPECT_TRUE(w1.path() == fs::join(dir, name) || w2.path() == fs::join(dir, name)) << name;
    }

    // The constructor flushed the file_version record: readable before any scalar.
    const std::vector<Event> events = read_events(w1.path());
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].file_version, "brain.Event:2");
    EXPECT_TRUE(events[0].values.empty());
    EXPECT_GE(events[0].wall_time, static_cast<double>(before));
    EXPECT_LE(events[0].wall_time, static_cast<double>(after + 1));
}

TEST(TensorBoard, ScalarsRoundTripIncludingNonFiniteAndStepOrder) {
    testing::TempDir tmp;
    TensorBoardWriter w(tmp.path());
    w.add_scalar("loss", 0, 0.1, 1700000000.25);
    w.add_scalar("loss", 1, std::nan(""), 1700000001.5);
    w.add_scalar("loss", 2, kInf, 1700000002.0);
    w.add_scalar("loss", 3, -kInf, 1700000003.0);
    w.add_scalar("neg", -7, -2.5, 1.0);   // negative step
    w.add_scalar("order", 10, 1.0, 2.0);  // steps going backwards
    w.add_scalar("order", 5, 2.0, 3.0);
    w.add_scalar("order", int64_t{1} << 40, 3.0, 4.0);  // large step (multi-byte varint)
    const double t0 = static_cast<double>(std::time(nullptr));
    w.add_scalar("now", 4, 1e30);  // current wall time
    w.add_scalars(5, {{"b/x", 1.0 / 3.0}, {"a/y", std::nan("")}, {"c/z", 1e-30}});
    w.flush();

    const std::vector<Event> ev = read_events(w.path());
    ASSERT_EQ(ev.size(), 11u);
    EXPECT_EQ(ev[0].file_version, "brain.Event:2");
    struct Want {
        int64_t step;
        double wall_time;
        std::string tag;
        float value;
    };
    const std::vector<Want> want = {
        {0, 1700000000.25, "loss", 0.1f},
        {1, 1700000001.5, "loss", kNaN},
        {2, 1700000002.0, "loss", INFINITY},
        {3, 1700000003.0, "loss", -INFINITY},
        {-7, 1.0, "neg", -2.5f},
        {10, 2.0, "order", 1.0f},
        {5, 3.0, "order", 2.0f},
        {int64_t{1} << 40, 4.0, "order", 3.0f},
    };
    for (size_t i = 0; i < want.size(); ++i) {
        const Event& e = ev[i + 1];
        SCOPED_TRACE(absl::StrCat("event ", i + 1));
        EXPECT_TRUE(e.file_version.empty());
        EXPECT_EQ(e.step, want[i].step);
        EXPECT_EQ(e.wall_time, want[i].wall_time);
        ASSERT_EQ(e.values.size(), 1u);
        EXPECT_EQ(e.values[0].first, want[i].tag);
        EXPECT_TRUE(same_float(e.values[0].second, want[i].value)) << e.values[0].second << " vs " << want[i].value;
    }
    EXPECT_EQ(ev[9].step, 4);
    EXPECT_GE(ev[9].wall_time, t0);
    EXPECT_LE(ev[9].wall_time, t0 + 60);
    ASSERT_EQ(ev[9].values.size(), 1u);
    EXPECT_EQ(ev[9].values[0].second, 1e30f);

    // add_scalars: one Event, one Value per tag (std::map order).
    EXPECT_EQ(ev[10].step, 5);
    ASSERT_EQ(ev[10].values.size(), 3u);
    EXPECT_EQ(ev[10].values[0].first, "a/y");
    EXPECT_TRUE(std::isnan(ev[10].values[0].second));
    EXPECT_EQ(ev[10].values[1].first, "b/x");
    EXPECT_EQ(ev[10].values[1].second, static_cast<float>(1.0 / 3.0));
    EXPECT_EQ(ev[10].values[2].first, "c/z");
    EXPECT_EQ(ev[10].values[2].second, 1e-30f);
}

TEST(TensorBoard, RecordFramingAndCrcs) {
    testing::TempDir tmp;
    std::string path;
    {
        TensorBoardWriter w(tmp.path());
        w.add_scalar("x", 1, 1.0, 5.0);
        path = w.path();
    }  // the destructor closes (and flushes) the file
    const std::string file = fs::read_file(path);
    const std::vector<std::string> records = read_records(file);
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(file.size(), records[0].size() + records[1].size() + 2 * 16);

    // The second record byte by byte: Event{wall_time=5.0, step=1, summary{value{tag="x", simple_value=1.0f}}}.
    const std::string want_data(
        "\x09\x00\x00\x00\x00\x00\x00\x14\x40"  // wall_time: fixed64 5.0
        "\x10\x01"                              // step: varint 1
        "\x2a\x0a"
        "\x0a\x08"               // summary { value {
        "\x0a\x01x"              //   tag "x"
        "\x15\x00\x00\x80\x3f",  //   simple_value fixed32 1.0f }}
        23);
    EXPECT_EQ(records[1], want_data);

    // A flipped bit in the length or in the data is caught by the matching CRC.
    std::string bad_len = file;
    bad_len[1] ^= 1;
    EXPECT_THROW(read_records(bad_len), std::runtime_error);
    std::string bad_data = file;
    bad_data[12] ^= 1;
    EXPECT_THROW(read_records(bad_data), std::runtime_error);
}

TEST(TensorBoard, MovedWriterKeepsWriting) {
    testing::TempDir tmp;
    TensorBoardWriter a(tmp.path());
    TensorBoardWriter b = std::move(a);
    b.add_scalars(3, {{"m", 2.0}});
    const std::vector<Event> ev = read_events(b.path());
    ASSERT_EQ(ev.size(), 2u);
    EXPECT_EQ(ev[1].step, 3);
}

TEST(TensorBoard, ErrorsNameThePath) {
    testing::TempDir tmp;
    const std::string file = tmp.write("not_a_dir", "x");
    try {
        TensorBoardWriter w(file + "/tb");
        FAIL() << "expected dsrl::Error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
    }
}

// Writes known scalars to $DSRL_TB_DIR (a temp dir when unset) plus expected.json, which
// tests/trainer/tensorboard_read.py checks with TensorBoard's own reader (ctest dsrl_tensorboard_read).
// Resume: records written after the checkpoint are cut from the file that was open then, files begun after it (a
// resumed run killed again) are removed, other files in the directory are left alone.
TEST(TensorBoard, ResumeCutsEventsWrittenAfterTheCheckpoint) {
    testing::TempDir tmp;
    const std::string dir = tmp.path();
    std::string cursor;
    std::string first;
    {
        TensorBoardWriter w(dir);
        first = w.path();
        for (int64_t step = 1; step <= 3; ++step) w.add_scalars(step, {{"loss", 1.0 / static_cast<double>(step)}});
        cursor = tensorboard_cursor(dir);
        for (int64_t step = 4; step <= 5; ++step) w.add_scalars(step, {{"loss", 0.5}});
    }
    {
        TensorBoardWriter again(dir);  // a resumed run that was killed before its next checkpoint
        again.add_scalars(4, {{"loss", 0.25}});
    }
    fs::write_file_synced(fs::join(dir, "notes.txt"), {"not an event file"});
    EXPECT_GT(restore_tensorboard(dir, cursor), 0);
    EXPECT_EQ(list_dir(dir), (std::vector<std::string>{first.substr(first.rfind('/') + 1), "notes.txt"}));
    const std::vector<Event> events = read_events(first);
    ASSERT_EQ(events.size(), 4u);  // file_version, steps 1-3
    for (int64_t step = 1; step <= 3; ++step) EXPECT_EQ(events[static_cast<size_t>(step)].step, step);
    EXPECT_EQ(restore_tensorboard(dir, cursor), 0) << "a second resume from the same checkpoint drops nothing";
    // No checkpoint at all: every event file goes.
    restore_tensorboard(dir, "");
    EXPECT_EQ(list_dir(dir), (std::vector<std::string>{"notes.txt"}));
    EXPECT_THROW(restore_tensorboard(dir, "events.out.tfevents.1.h.2.3\tmany\n"), Error);
    EXPECT_EQ(restore_tensorboard(fs::join(dir, "missing"), cursor), 0);
}

TEST(TensorBoard, WritesForPythonReader) {
    const char* env = std::getenv("DSRL_TB_DIR");
    std::unique_ptr<testing::TempDir> tmp;
    std::string dir;
    if (env != nullptr && *env != '\0') {
        dir = env;
        fs::remove_tree(dir);  // exactly one fresh event file
    } else {
        tmp = std::make_unique<testing::TempDir>();
        dir = tmp->path() + "/tb";
    }

    struct Scalar {
        std::string tag;
        int64_t step;
        double value;
        double wall_time;  // < 0: now
    };
    std::vector<Scalar> scalars;
    for (int64_t s = 0; s < 5; ++s) scalars.push_back({"loss/policy", s, 1.0 / static_cast<double>(s + 3), -1});
    scalars.push_back({"loss/policy", 5, std::nan(""), -1});
    scalars.push_back({"loss/policy", 6, 0.125, -1});
    scalars.push_back({"reward/mean", 0, kInf, 1600000000.5});
    scalars.push_back({"reward/mean", 1, -kInf, 1600000001.5});
    scalars.push_back({"reward/mean", 2, -3.3, 1600000002.5});
    scalars.push_back({"order/backwards", 30, 1e30, -1});
    scalars.push_back({"order/backwards", 20, 1e-30, -1});
    scalars.push_back({"order/backwards", -1, 0.7, -1});

    std::string json = R"({"file_version": "brain.Event:2", "scalars": [)";
    {
        TensorBoardWriter w(dir);
        for (size_t i = 0; i < scalars.size(); ++i) {
            const Scalar& s = scalars[i];
            if (s.wall_time >= 0) {
                w.add_scalar(s.tag, s.step, s.value, s.wall_time);
            } else {
                w.add_scalar(s.tag, s.step, s.value);
            }
            const std::string value = std::isnan(s.value)   ? "\"nan\""
                                      : std::isinf(s.value) ? (s.value > 0 ? "\"inf\"" : "\"-inf\"")
                                                            : absl::StrFormat("%.17g", s.value);
            absl::StrAppend(&json, i == 0 ? "" : ",", "\n  {\"tag\": \"", s.tag, "\", \"step\": ", s.step,
                            ", \"value\": ", value,
                            s.wall_time >= 0 ? absl::StrFormat(", \"wall_time\": %.17g", s.wall_time) : "", "}");
        }
        // One Event with several values.
        w.add_scalars(7, {{"loss/policy", 0.0625}, {"lr", 3e-4}});
        absl::StrAppend(&json, ",\n  {\"tag\": \"loss/policy\", \"step\": 7, \"value\": 0.0625}",
                        ",\n  {\"tag\": \"lr\", \"step\": 7, \"value\": ", absl::StrFormat("%.17g", 3e-4), "}");
    }
    json += "\n]}\n";
    fs::write_file_synced(fs::join(dir, "expected.json"), {json});

    // The C++ reader agrees too.
    std::vector<std::string> events;
    for (const std::string& name : list_dir(dir)) {
        if (name.rfind("events.out.tfevents.", 0) == 0) events.push_back(name);
    }
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(read_events(fs::join(dir, events[0])).size(), scalars.size() + 2);
}

}  // namespace
}  // namespace dsrl::trainer
