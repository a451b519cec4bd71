// core/checksum.h: CRC-32/IEEE and CRC-32C against their check values, continuation over pieces, the slicing-by-8
// path against a bit-at-a-time reference at every length and alignment, and file digests.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "core/checksum.h"
#include "core/fs.h"
#include "tests/test_util.h"

namespace dsrl {
namespace {

uint32_t bitwise(const std::string& s, uint32_t poly) {
    uint32_t c = 0xFFFFFFFFu;
    for (const char ch : s) {
        c ^= static_cast<uint8_t>(ch);
        for (int k = 0; k < 8; ++k) c = (c & 1) != 0 ? (c >> 1) ^ poly : c >> 1;
    }
    return ~c;
}

TEST(ChecksumTest, CheckValues) {
    EXPECT_EQ(crc32("123456789", 9), 0xCBF43926u);
    EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
    EXPECT_EQ(crc32("", 0), 0u);
    EXPECT_EQ(crc32c("", 0), 0u);
}

TEST(ChecksumTest, SlicingMatchesTheBitwiseDefinitionAndContinues) {
    std::mt19937 rng(3);
    std::string data(1000, '\0');
    for (char& c : data) c = static_cast<char>(rng());
    for (size_t offset = 0; offset < 9; ++offset) {
        for (size_t len : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{63}, size_t{500}}) {
            const std::string piece = data.substr(offset, len);
            EXPECT_EQ(crc32(piece.data(), piece.size()), bitwise(piece, 0xEDB88320u)) << offset << " " << len;
            EXPECT_EQ(crc32c(piece.data(), piece.size()), bitwise(piece, 0x82F63B78u)) << offset << " " << len;
        }
    }
    const uint32_t whole = crc32c(data.data(), data.size());
    EXPECT_EQ(crc32c(data.data() + 333, data.size() - 333, crc32c(data.data(), 333)), whole);
}

TEST(ChecksumTest, FileDigestAndErrors) {
    testing::TempDir tmp;
    std::string big(size_t{9} << 20, 'a');  // more than one 4 MiB read
    big[12345] = 'b';
    fs::write_file_atomic(tmp.path() + "/f", {big});
    const FileDigest d = crc32c_file(tmp.path() + "/f");
    EXPECT_EQ(d.size, static_cast<int64_t>(big.size()));
    EXPECT_EQ(d.crc32c, crc32c(big.data(), big.size()));
    EXPECT_THROW(crc32c_file(tmp.path() + "/missing"), fs::IoError);
}

}  // namespace
}  // namespace dsrl
