// dsrl_train: the job binary (SPEC §7). `mpirun -np N build/bin/dsrl_train --config configs/x.yaml`.
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "core/dist/bootstrap.h"
#include "core/dist/communicator.h"
#include "core/logging.h"
#include "core/main_guard.h"
#include "data/prompts.h"
#include "rewards/plugin.h"
#include "rewards/reward.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/judge_backend.h"
#include "trainer/train.h"

#include <absl/strings/str_join.h>

namespace {

int run(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    const dsrl::trainer::CliOptions opt = dsrl::trainer::parse_cli(args);
    if (opt.help) {
        std::cout << dsrl::trainer::usage();
        return 0;
    }
    if (opt.print_schema) {
        std::cout << dsrl::config::schema_markdown(dsrl::config::schema_of<dsrl::JobConfig>());
        return 0;
    }
    dsrl::JobConfig cfg = dsrl::load_job_config(opt.config_path, opt.overrides);
    // DSRL_LOG_LEVEL, when set, overrides run.log_level (quiet a job without editing its config).
    if (std::getenv("DSRL_LOG_LEVEL") == nullptr) {
        dsrl::log::set_level(dsrl::log::parse_level(cfg.run.log_level, "run.log_level"));
    }
    if (opt.print_config) {
        std::cout << dsrl::to_yaml(cfg);
        return 0;
    }
    const std::string source = opt.config_path.empty() ? std::string("the embedded defaults") : opt.config_path;
    // Start-up checks that need more than the YAML: reward plugins load (ABI checked), then check_job (stages
    // and options this build runs, reward modules and params, data files).
    dsrl::rewards::Registry& registry = dsrl::rewards::Registry::global();
    dsrl::trainer::register_model_judge(registry);  // `judge`: rewards/ knows no model, the trainer injects it
    dsrl::rewards::load_plugins(cfg.rewards.plugins, "", registry);
    dsrl::trainer::check_job(cfg);
    if (opt.check) {
        std::cout << "config OK: " << source << " (run '" << cfg.run.name << "', " << cfg.run.stages.size()
                  << " stage(s), " << cfg.domains.size() << " domain(s))\n";
        return 0;
    }
    // Run: MPI up (one process without mpirun), the world communicator, then the stages.
    dsrl::dist::Bootstrap bootstrap(&argc, &argv);
    const dsrl::dist::Communicator world = dsrl::dist::Communicator::world(cfg.dist.timeout_s);
    if (bootstrap.world_rank() == 0) {
        std::cout << "dsrl_train: " << source << " on " << world.size() << " rank(s), stages "
                  << absl::StrJoin(cfg.run.stages, " -> ") << ", output " << cfg.run.output_dir << "\n";
    }
    return dsrl::trainer::run_job(
        cfg, {.resume = opt.resume, .config_yaml = dsrl::to_yaml(cfg), .dump_rollouts = opt.dump_rollouts}, world);
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
