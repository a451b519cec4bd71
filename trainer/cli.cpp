#include "trainer/cli.h"

#include <algorithm>

#include "core/config_binder.h"
#include "core/env.h"
#include "core/error.h"

namespace dsrl::trainer {

namespace {
const std::vector<std::string> kFlags = {"--config",       "--set",   "--resume", "--print-config",
                                         "--print-schema", "--check", "--help",   "--dump-rollouts"};
}  // namespace

CliOptions parse_cli(const std::vector<std::string>& args) {
    CliOptions opt;
    for (size_t i = 0; i < args.size(); ++i) {
        std::string flag = args[i];
        std::string value;
        bool has_inline_value = false;
        if (const size_t eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
            value = flag.substr(eq + 1);
            flag = flag.substr(0, eq);
            has_inline_value = true;
        }
        auto take_value = [&]() -> std::string {
            if (has_inline_value) return value;
            if (i + 1 >= args.size()) throw ConfigError(absl::StrCat(flag, " needs a value (see --help)"));
            // `--resume --check` would take --check as a path and then run the job: a value that is one of our flags
            // is its value missing (`--set` values are key=value and never look like a flag).
            const std::string& next = args[i + 1];
            const std::string next_flag = next.substr(0, next.find('='));
            if (std::find(kFlags.begin(), kFlags.end(), next_flag) != kFlags.end() || next == "-c" || next == "-h") {
                throw ConfigError(absl::StrCat(flag, " needs a value, got the option ", next, " (see --help)"));
            }
            return args[++i];
        };
        if (flag == "--config" || flag == "-c") {
            if (!opt.config_path.empty()) {
                throw ConfigError(absl::StrCat("--config given twice ('", opt.config_path, "' and '", take_value(),
                                               "'): a job has one configuration file; use --set to change keys"));
            }
            opt.config_path = take_value();
            if (opt.config_path.empty()) throw ConfigError("--config needs a file");
        } else if (flag == "--set") {
            opt.overrides.push_back(take_value());
        } else if (flag == "--resume") {
            opt.resume = take_value();
            if (opt.resume.empty()) throw ConfigError("--resume needs 'auto' or a checkpoint path");
        } else if (flag == "--print-config") {
            opt.print_config = true;
        } else if (flag == "--print-schema") {
            opt.print_schema = true;
        } else if (flag == "--dump-rollouts") {
            opt.dump_rollouts = take_value();
            if (opt.dump_rollouts.empty()) throw ConfigError("--dump-rollouts needs a directory");
        } else if (flag == "--check") {
            opt.check = true;
        } else if (flag == "--help" || flag == "-h") {
            opt.help = true;
        } else {
            const auto hint = config::nearest(flag, kFlags);
            throw ConfigError(absl::StrCat("unknown argument '", args[i], "'",
                                           hint ? absl::StrCat("; did you mean ", *hint, "?") : "; see --help"));
        }
    }
    return opt;
}

std::string usage() {
    std::string text = R"(usage: mpirun -np N dsrl_train --config FILE [options]

Runs a dsrl job: the stages listed in run.stages (sft, indexer_warmup, sparse_train, grpo).

options:
  --config FILE        job configuration (YAML). Without it the embedded demo job is used.
  --set KEY=VALUE      override one config key, e.g. --set grpo.beta=0.01 or --set domains.0.weight=2.
                       Repeatable; applied in order after the file. VALUE is YAML ([1, 2] is a list).
  --resume auto|PATH   resume from the latest checkpoint of the run (auto) or from PATH.
  --dump-rollouts DIR  write every GRPO step's rollout groups to DIR/step-NNNNNNNN.rank-R.dsrlroll (one file per
                       rank and step; print one with dsrl_tool rollouts FILE).
  --print-config       print the resolved configuration as YAML and exit.
  --print-schema       print every configuration key (markdown table, as docs/configuration.md) and exit.
  --check              validate the configuration, reward plugins and data files, and exit.
  --help               this text.

environment:
)";
    for (const env::Knob& k : env::all_knobs()) {
        const std::string def = *k.default_value ? absl::StrCat(" (default ", k.default_value, ")") : "";
        absl::StrAppend(&text, absl::StrFormat("  %-28s %s%s\n", k.name, k.doc, def));
    }
    return text;
}

}  // namespace dsrl::trainer
