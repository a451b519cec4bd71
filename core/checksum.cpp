#include "core/checksum.h"

#include <fcntl.h>
#include <unistd.h>

#include <absl/strings/str_cat.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

#include "core/fs.h"

namespace dsrl {
namespace {

// Slicing-by-8: table[0] is the classic byte table; table[k][b] advances b's CRC by k more zero bytes, so eight
// input bytes take eight lookups and no data-dependent chain of shifts.
using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables make_tables(uint32_t poly) {
    Tables t{};
    for (uint32_t i = 0; i < 256; ++i) {
        uint32_t c = i;
        for (int k = 0; k < 8; ++k) c = (c & 1) != 0 ? (c >> 1) ^ poly : c >> 1;
        t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i) {
        for (size_t k = 1; k < 8; ++k) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFF];
    }
    return t;
}

constexpr Tables kIeee = make_tables(0xEDB88320u);
constexpr Tables kCastagnoli = make_tables(0x82F63B78u);

uint32_t update(const Tables& t, const void* data, size_t size, uint32_t crc) {
    const auto* p = static_cast<const uint8_t*>(data);
    uint32_t c = ~crc;
    while (size >= 8) {
        uint32_t lo = 0, hi = 0;
        std::memcpy(&lo, p, 4);  // little-endian hosts (x86-64, aarch64)
        std::memcpy(&hi, p + 4, 4);
        lo ^= c;
        c = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^ t[3][hi & 0xFF] ^
            t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
        p += 8;
        size -= 8;
    }
    while (size-- > 0) c = t[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

}  // namespace

uint32_t crc32(const void* data, size_t size, uint32_t crc) { return update(kIeee, data, size, crc); }

uint32_t crc32c(const void* data, size_t size, uint32_t crc) { return update(kCastagnoli, data, size, crc); }

FileDigest crc32c_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        throw fs::IoError(absl::StrCat("cannot open '", path, "': ", std::strerror(errno)), std::strerror(errno));
    std::vector<char> buf(size_t{4} << 20);
    FileDigest d;
    while (true) {
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int e = errno;
            ::close(fd);
            throw fs::IoError(absl::StrCat("cannot read '", path, "': ", std::strerror(e)), std::strerror(e));
        }
        if (n == 0) break;
        d.crc32c = crc32c(buf.data(), static_cast<size_t>(n), d.crc32c);
        d.size += n;
    }
    ::close(fd);
    return d;
}

}  // namespace dsrl
