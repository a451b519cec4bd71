#include "core/safetensors.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/rng.h"
#include "tests/test_util.h"

namespace dsrl {
namespace {

using ::testing::HasSubstr;

std::string read_bytes(const std::string& path) { return fs::read_file(path); }

void write_bytes(const std::string& path, const std::string& bytes) { fs::write_file_atomic(path, {bytes}); }

// A raw safetensors file from a header string and a data section.
std::string raw_file(const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
    return out + header + data;
}

std::string fs_path(const testing::TempDir& dir, const std::string& name) { return dir.path() + "/" + name; }

std::string open_error(const std::string& path) {
    try {
        SafetensorsFile::open(path);
    } catch (const CheckpointError& e) {
        return e.what();
    }
    return "";
}

TEST(SafetensorsTest, RoundTripsEveryDtypeShapeAndMetadata) {
    testing::TempDir dir;
    auto gen = rng::make_cpu_generator(1);
    std::vector<std::pair<std::string, at::Tensor>> tensors = {
        {"f32", at::randn({3, 5}, gen)},
        {"bf16", at::randn({7}, gen).to(at::kBFloat16)},
        {"f16", at::randn({2, 2, 2}, gen).to(at::kHalf)},
        {"f8", at::randn({4, 3}, gen).to(at::kFloat8_e4m3fn)},
        {"i64", at::arange(10, at::kLong)},
        {"u8", at::arange(5, at::kByte)},
        {"empty", at::zeros({0, 4})},
        {"scalar", at::randn({}, gen)},
        {"strided", at::randn({4, 6}, gen).t()},
    };
    const std::string path = fs_path(dir, "x.safetensors");
    save_safetensors(path, tensors, {{"format", "pt"}});
    const SafetensorsFile f = SafetensorsFile::open(path);
    EXPECT_EQ(f.tensors().size(), tensors.size());
    EXPECT_EQ(f.metadata().at("format"), "pt");
    for (const auto& [name, t] : tensors) {
        const at::Tensor got = f.get(name);
        EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
        EXPECT_EQ(got.sizes(), t.sizes()) << name;
        EXPECT_TRUE(at::equal(got.reshape({-1}).view(at::kByte), t.contiguous().reshape({-1}).view(at::kByte))) << name;
    }
    EXPECT_THAT(open_error(path + ".nope"), HasSubstr("cannot open"));
    try {
        f.info("missing.weight");
        FAIL();
    } catch (const CheckpointError& e) {
        EXPECT_THAT(e.what(), HasSubstr(path + ": missing tensor 'missing.weight'"));
    }
}

TEST(SafetensorsTest, ViewsOutliveTheFileObject) {
    testing::TempDir dir;
    const std::string path = fs_path(dir, "x.safetensors");
    save_safetensors(path, {{"a", at::arange(1000, at::kFloat)}});
    at::Tensor a;
    { a = SafetensorsFile::open(path).get("a"); }
    EXPECT_EQ(a[999].item<float>(), 999.0f);
}

// A tensor with no elements at an offset its dtype is not aligned to (found by the safetensors fuzzer: the copy
// path once called memcpy on the null data of an empty tensor): an empty tensor of the stored shape.
TEST(SafetensorsTest, AnEmptyTensorAtAMisalignedOffsetReadsAsEmpty) {
    testing::TempDir dir;
    const std::string path = fs_path(dir, "empty.safetensors");
    // 8 + 67 header bytes: the data section starts at 75, not a multiple of 4.
    std::string header = R"({"t": {"dtype": "F32", "shape": [0, 5], "data_offsets": [0, 0]}})";
    header.resize(67, ' ');
    write_bytes(path, raw_file(header, ""));
    const at::Tensor t = SafetensorsFile::open(path).get("t");
    EXPECT_EQ(t.sizes(), (std::vector<int64_t>{0, 5}));
    EXPECT_EQ(t.scalar_type(), at::kFloat);
}

// Empty tensors hold no bytes, so their offsets may equal where a neighbour starts — transformers saves a config's zero
// shared experts as [x, x] with a real tensor at [x, y], in whatever order its header lists them. No overlap.
TEST(SafetensorsTest, EmptyTensorsAtANeighboursOffsetDoNotOverlap) {
    testing::TempDir dir;
    const std::string path = fs_path(dir, "zero_size.safetensors");
    const std::string data(16, '\0');
    for (
        const char* header :
        {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0,48],"data_offsets":[8,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
         R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"e":{"dtype":"F32","shape":[48,0],"data_offsets":[8,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
         R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"e":{"dtype":"BF16","shape":[0],"data_offsets":[4,4]}})"}) {
        write_bytes(path, raw_file(header, data));
        EXPECT_THAT(open_error(path), ::testing::IsEmpty()) << header;
    }
    EXPECT_EQ(SafetensorsFile::open(path).get("e").numel(), 0);
}

TEST(SafetensorsTest, EachBadInputHasAClearError) {
    testing::TempDir dir;
    const std::string path = fs_path(dir, "bad.safetensors");
    auto error_for = [&](const std::string& header, const std::string& data) {
        write_bytes(path, raw_file(header, data));
        return open_error(path);
    };
    const std::string data16(16, '\0');
    EXPECT_THAT(error_for(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data16), ::testing::IsEmpty());
    EXPECT_THAT(error_for("{not json", data16), HasSubstr("not valid JSON"));
    EXPECT_THAT(error_for(R"({"a":{"dtype":"F48","shape":[4],"data_offsets":[0,16]}})", data16),
                HasSubstr("tensor 'a': unsupported dtype 'F48'"));
    EXPECT_THAT(error_for(R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data16),
                HasSubstr("tensor 'a': shape entries must be non-negative"));
    // Empty, but with strides no tensor can have (found by fuzzing: tests/fuzz/safetensors/regressions/).
    EXPECT_THAT(
        error_for(R"({"a":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}})", data16),
        HasSubstr("tensor 'a': shape [0,1099511627776,1099511627776] overflows"));
    EXPECT_THAT(error_for(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}})", data16),
                HasSubstr("exceed the 16-byte data section (truncated file?)"));
    EXPECT_THAT(error_for(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", data16),
                HasSubstr("16 bytes do not hold F32 shape [3] (12 bytes)"));
    EXPECT_THAT(
        error_for(
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            data16),
        HasSubstr("overlap"));
    EXPECT_THAT(error_for(R"({"a":{"dtype":"F32","shape":[4]}})", data16), HasSubstr("data_offsets must be"));
    write_bytes(path, "abc");
    EXPECT_THAT(open_error(path), HasSubstr("truncated: 3 bytes"));
    write_bytes(path, raw_file("{}", "").replace(0, 8, std::string("\xff\xff\xff\x00\x00\x00\x00\x00", 8)));
    EXPECT_THAT(open_error(path), HasSubstr("header size 16777215 exceeds the file"));
}

// Fuzz: mutated headers and every truncation of a valid file either open or throw CheckpointError; nothing
// else escapes and nothing crashes.
TEST(SafetensorsTest, MutatedAndTruncatedFilesNeverCrash) {
    testing::TempDir dir;
    const std::string good = fs_path(dir, "good.safetensors");
    save_safetensors(good, {{"w", at::arange(24, at::kFloat).view({2, 3, 4})}, {"b", at::arange(6, at::kByte)}},
                     {{"k", "v"}});
    const std::string bytes = read_bytes(good);
    const std::string path = fs_path(dir, "fuzz.safetensors");
    std::mt19937_64 rng(7);
    int opened = 0, rejected = 0;
    for (int iter = 0; iter < 3000; ++iter) {
        std::string mutated = bytes;
        const int edits = 1 + static_cast<int>(rng() % 4);
        for (int e = 0; e < edits; ++e) {
            const size_t pos = rng() % std::min<size_t>(mutated.size(), 8 + 200);  // mostly the header
            mutated[pos] = static_cast<char>(rng() % 256);
        }
        write_bytes(path, mutated);
        try {
            const SafetensorsFile f = SafetensorsFile::open(path);
            for (const auto& t : f.tensors()) f.get(t.name).sum();
            ++opened;
        } catch (const CheckpointError&) {
            ++rejected;
        }
    }
    for (size_t len = 0; len < bytes.size(); ++len) {
        write_bytes(path, bytes.substr(0, len));
        EXPECT_THROW(SafetensorsFile::open(path), CheckpointError) << "truncated to " << len << " bytes";
    }
    EXPECT_GT(rejected, 0);
    std::cout << "fuzz: " << opened << " mutated files opened, " << rejected << " rejected\n";
}

}  // namespace
}  // namespace dsrl
