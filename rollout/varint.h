// Unsigned LEB128 varints of 32-bit values, shared by the record encodings (kept sets, indexer sets).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace dsrl::rollout {

inline constexpr int kMaxVarintBytes = 5;  // 32 bits in 7-bit groups

inline int varint_len(uint32_t v) {
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        ++n;
    }
    return n;
}

inline void put_varint(std::string& out, uint32_t v) {
    while (v >= 0x80) {
        out.push_back(static_cast<char>((v & 0x7F) | 0x80));
        v >>= 7;
    }
    out.push_back(static_cast<char>(v));
}

/// Reads the varint at bytes[*pos] into *out and advances *pos. Returns nullptr, or what is wrong ("truncated
/// varint", "varint longer than 5 bytes", "varint above 2^32 - 1") — the caller names where.
inline const char* get_varint(const std::string& bytes, size_t* pos, uint32_t* out) {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
        if (*pos >= bytes.size()) return "truncated varint";
        if (shift >= 7 * kMaxVarintBytes) return "varint longer than 5 bytes";
        const auto b = static_cast<uint8_t>(bytes[(*pos)++]);
        v |= static_cast<uint64_t>(b & 0x7F) << shift;
        if ((b & 0x80) == 0) break;
    }
    if (v > UINT32_MAX) return "varint above 2^32 - 1";
    *out = static_cast<uint32_t>(v);
    return nullptr;
}

}  // namespace dsrl::rollout
