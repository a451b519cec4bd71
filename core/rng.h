// Deterministic seeding per rank (SPEC §7: resume is exact). Every random stream in dsrl is derived from
// (run.seed, rank, stream name) with a SplitMix64-based mix, so ranks draw independent streams and a
// resumed run can restore each generator's state exactly.
//   uint64_t s = dsrl::rng::derive_seed(cfg.run.seed, rank, "rollout");
//   at::Generator gen = dsrl::rng::make_cpu_generator(s);
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include <ATen/core/Generator.h>

namespace dsrl::rng {

/// SplitMix64 finalizer: a bijective 64-bit mix.
uint64_t mix64(uint64_t x);
/// A seed for the named stream of `rank`, derived from the run's base seed. Distinct (rank, stream) pairs
/// give unrelated seeds; the same triple always gives the same seed.
uint64_t derive_seed(uint64_t base_seed, int64_t rank, std::string_view stream);
/// An index drawn from `weights` (non-negative, positive sum) by the 64-bit random value `r` (its top 53 bits
/// as a uniform in [0, 1)): i with probability weights[i] / sum; the last index absorbs rounding. The domain
/// mixture of the RL stage and the SFT mixture draw their sources with it.
size_t weighted_index(const std::vector<double>& weights, uint64_t r);
/// A new CPU generator seeded with `seed` (independent of ATen's default generator).
at::Generator make_cpu_generator(uint64_t seed);
/// Seeds ATen's default CPU generator (and every CUDA device's, when CUDA is present) for this rank.
void seed_default_generators(uint64_t base_seed, int64_t rank);

}  // namespace dsrl::rng
