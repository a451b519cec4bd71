#include "core/rng.h"

#include "core/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

namespace dsrl::rng {

uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

size_t weighted_index(const std::vector<double>& weights, uint64_t r) {
    DSRL_INTERNAL_ASSERT(!weights.empty(), "weighted_index of no weights");
    double total = 0;
    for (const double w : weights) total += w;
    double x = static_cast<double>(r >> 11) / 9007199254740992.0 * total;  // 2^53
    for (size_t i = 0; i < weights.size(); ++i) {
        if (x < weights[i]) return i;
        x -= weights[i];
    }
    return weights.size() - 1;
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
