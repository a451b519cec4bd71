#include "core/rng.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

namespace dsrl::rng {

uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

uint64_t derive_seed(uint64_t base_seed, int64_t rank, std::string_view stream) {
    // FNV-1a over the stream name, then mix it with the base seed and the rank.
    uint64_t h = 0xCBF29CE484222325ull;
    for (char c : stream) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001B3ull;
    }
    return mix64(mix64(mix64(base_seed) ^ static_cast<uint64_t>(rank)) ^ h);
}

at::Generator make_cpu_generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

void seed_default_generators(uint64_t base_seed, int64_t rank) {
    const uint64_t seed = derive_seed(base_seed, rank, "default");
    {
        auto gen = at::detail::getDefaultCPUGenerator();
        std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_current_seed(seed);
    }
    if (at::hasCUDA()) {
        const auto num_devices = at::detail::getCUDAHooks().deviceCount();
        for (c10::DeviceIndex i = 0; i < num_devices; ++i) {
            auto gen = at::detail::getCUDAHooks().getDefaultGenerator(i);
            std::lock_guard<std::mutex> lock(gen.mutex());
            gen.set_current_seed(seed);
        }
    }
}

}  // namespace dsrl::rng
