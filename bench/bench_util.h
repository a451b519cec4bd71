// What the benchmarks share: their flags, measuring in a fresh child process (so each point's peak memory is its
// own) and the --lengths flag. A child prints one line "RESULT v1 v2 ..."; the parent parses it.
//
//   bench::Flags flags("dsrl_bench_model");
//   flags.text("--device", &device, "cpu or cuda").integer("--topk", &topk, 1, "index_topk");
//   if (!flags.parse(argc, argv)) return 0;   // --help printed the usage
//   std::optional<std::vector<double>> r = bench::run_child(bench::self_exe(argv[0]), {"--child", "4096"}, "...");
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/Device.h>

namespace dsrl::bench {

/// Runs `self` with `args`, reads its standard output and returns the numbers of its "RESULT ..." line; nullopt
/// when the child failed (non-zero exit, killed, e.g. out of memory) or printed no such line. dsrl::Error
/// naming `bench` when the child cannot be started.
std::optional<std::vector<double>> run_child(const std::string& self,
                                             const std::vector<std::string>& args,
                                             const std::string& bench);

/// A benchmark's `--name value` flags, each bound to a variable that holds its default.
class Flags {
public:
    explicit Flags(std::string program) : program_(std::move(program)) {}
    Flags& text(const std::string& name, std::string* v, const std::string& help);
    Flags& integer(const std::string& name, int64_t* v, int64_t min, const std::string& help);
    Flags& integer(const std::string& name, int* v, int min, const std::string& help);
    Flags& number(const std::string& name, double* v, const std::string& help);
    /// A flag of its own syntax: `set` parses the value (throwing ConfigError on a bad one).
    Flags& custom(const std::string& name,
                  std::function<void(const std::string&)> set,
                  const std::string& help,
                  const std::string& shown_default);
    /// Parses argv[1..]; false after printing the usage for --help/-h. A ConfigError naming the program and the flag
    /// for an unknown flag, a missing value or a value that is not a number or below its minimum.
    bool parse(int argc, char** argv) const;

private:
    struct Flag {
        std::string name, help, shown_default;
        std::function<void(const std::string&)> set;
    };
    std::string program_;
    std::vector<Flag> flags_;
};

/// The running executable's path (/proc/self/exe; `argv0` where that cannot be read), to start child measurements.
std::string self_exe(const char* argv0);

/// Waits for the device's queued work (a no-op on the CPU), so a timer read after it covers that work.
void sync_device(const c10::Device& device);

/// "1024,2048,4096" -> {1024, 2048, 4096}; a ConfigError naming `bench` and the bad entry otherwise.
std::vector<int64_t> parse_lengths(const std::string& text, const std::string& bench);

}  // namespace dsrl::bench
