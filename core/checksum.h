// CRC-32 checksums, one implementation (slicing-by-8 tables) for the three users: rollout records (CRC-32/IEEE, as
// zlib's crc32), TensorBoard event files (CRC-32C, Castagnoli, as TFRecord) and checkpoint manifests (CRC-32C of
// every file, streamed).
//
//   uint32_t a = crc32(buf.data(), buf.size());           // crc32("123456789") == 0xCBF43926
//   uint32_t b = crc32c(buf.data(), buf.size());          // crc32c("123456789") == 0xE3069283
//   uint32_t c = crc32c(more.data(), more.size(), b);     // continues b over `more`
//   FileDigest d = crc32c_file("/ckpt/model.safetensors");  // size + CRC-32C, read in 4 MiB blocks
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace dsrl {

/// CRC-32/IEEE (reflected polynomial 0xEDB88320). `crc` continues an earlier result (0 to start).
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);
/// CRC-32C/Castagnoli (reflected polynomial 0x82F63B78). `crc` continues an earlier result (0 to start).
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

struct FileDigest {
    int64_t size = 0;
    uint32_t crc32c = 0;
};

/// Size and CRC-32C of a file's bytes; an fs::IoError naming the file when it cannot be read.
FileDigest crc32c_file(const std::string& path);

}  // namespace dsrl
