// What the benchmarks share: measuring in a fresh child process (so each point's peak memory is its own) and the
// --lengths flag. A child prints one line "RESULT v1 v2 ..."; the parent parses it.
//
//   std::optional<std::vector<double>> r = bench::run_child(self, {"--child", "4096"}, "dsrl_bench_model");
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dsrl::bench {

/// Runs `self` with `args`, reads its standard output and returns the numbers of its "RESULT ..." line; nullopt
/// when the child failed (non-zero exit, killed, e.g. out of memory) or printed no such line. dsrl::Error
/// naming `bench` when the child cannot be started.
std::optional<std::vector<double>> run_child(const std::string& self,
                                             const std::vector<std::string>& args,
                                             const std::string& bench);

/// "1024,2048,4096" -> {1024, 2048, 4096}; a ConfigError naming `bench` and the bad entry otherwise.
std::vector<int64_t> parse_lengths(const std::string& text, const std::string& bench);

}  // namespace dsrl::bench
