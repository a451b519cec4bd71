// Fault injection for tests of crash safety (issue 26): a process kills itself with SIGKILL at a named point
// of the job, so a test can put a crash exactly where it wants instead of racing a step with `kill`.
//
//   DSRL_FAULT_KILL=<point>:<job step>[:<rank>]      e.g. in_checkpoint:5   step_start:3:1
//
// Points (the code calls fault::kill_point at each):
//   step_start            a rank begins job step N (before its rollout or batch)
//   in_checkpoint         rank 0 has written the model of checkpoint N, before the optimizer state and rename
//   before_latest_rename  rank 0 has written `latest.tmp.<pid>` for checkpoint N, before renaming it
// Without <rank> any rank reaching the point dies. An unknown point or a malformed value is a ConfigError
// naming the variable. Unset (the default), kill_point costs one branch.
#pragma once

#include <cstdint>

namespace dsrl::fault {

/// Raises SIGKILL in this process when DSRL_FAULT_KILL names `point`, `job_step` and (if given) `rank`.
void kill_point(const char* point, int64_t job_step, int rank);

/// Parses DSRL_FAULT_KILL now (dsrl_train calls it at start-up so a typo fails before any work).
void check_environment();

}  // namespace dsrl::fault
