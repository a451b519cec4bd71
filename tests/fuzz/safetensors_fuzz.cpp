// libFuzzer harness: a whole .safetensors file (u64 header size, JSON header, data section) through
// SafetensorsFile::open — the header parser (parse_safetensors_header) and the mapping — then every tensor of an
// opened file read back byte by byte (get() must not throw then: open validated everything); and the bytes after the
// size prefix through parse_safetensors_header alone, against a data section of a size taken from the input. Corpus:
// tests/fuzz/safetensors/. docs/fuzzing.md.
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "core/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = dsrl::fuzz::temp_dir() + "/input.safetensors";
    dsrl::fuzz::write_file(path, dsrl::fuzz::bytes_of(data, size));
    std::optional<dsrl::SafetensorsFile> opened;
    dsrl::fuzz::run([&] { opened = dsrl::SafetensorsFile::open(path); });
    if (opened) {
        // open() validated the whole header: reading its tensors must not throw at all.
        const dsrl::SafetensorsFile& f = *opened;
        uint64_t sum = 0;
        for (const dsrl::SafetensorInfo& info : f.tensors()) {
            const at::Tensor t = f.get(info.name);
            // Every byte the tensor claims must lie inside the mapping (ASan or SIGSEGV otherwise).
            const auto* p = static_cast<const uint8_t*>(t.data_ptr());
            for (size_t i = 0; i < t.nbytes(); ++i) sum += p[i];
        }
        for (const auto& [key, value] : f.metadata()) sum += key.size() + value.size();
        if (sum == 1) std::printf(" ");  // keeps the reads
    }
    return dsrl::fuzz::run([&] {
        if (size < 9) return;
        const uint64_t data_size = data[0] | (uint64_t{data[1]} << 8);
        std::map<std::string, std::string> metadata;
        (void)dsrl::parse_safetensors_header(dsrl::fuzz::bytes_of(data + 8, size - 8), data_size, "<fuzz>", &metadata);
    });
}
