// Command line of dsrl_train (SPEC §7):
//   dsrl_train --config FILE [--set key=value ...] [--resume auto|PATH] [--print-config] [--print-schema]
//              [--check] [--dump-rollouts DIR] [--help]
// Parsing is separate from main() so that it is testable; errors are dsrl::ConfigError naming the flag.
#pragma once

#include <string>
#include <vector>

namespace dsrl::trainer {

struct CliOptions {
    std::string config_path;             ///< empty: the embedded defaults (the demo job)
    std::vector<std::string> overrides;  ///< "a.b.c=value", applied in order after the file
    std::string resume;                  ///< "", "auto" or a checkpoint path
    std::string dump_rollouts;           ///< directory for every GRPO step's rollout records; "" = none
    bool print_config = false;
    bool print_schema = false;
    bool check = false;
    bool help = false;
};

/// Parses argv (argv[0] is skipped). Throws dsrl::ConfigError on an unknown flag (with a suggestion) or a
/// flag that lacks its value.
CliOptions parse_cli(const std::vector<std::string>& args);

/// The --help text, including the environment knobs.
std::string usage();

}  // namespace dsrl::trainer
