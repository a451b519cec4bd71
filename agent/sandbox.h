// A sandbox for model-written code (issue 20 item 5a): runs a program in a child process with no network (a new,
// empty network namespace), CPU-time, address-space, file-size and process limits, a private temporary working
// directory (removed afterwards), an empty environment and a wall-clock limit (the process group is killed), and
// returns its exit status and the first bytes of its stdout and stderr. run_sandboxed refuses to run — a
// SandboxError saying why — when the sandbox cannot be made (no network namespace: not root and no user
// namespaces); it never falls back to running the code unconfined.
//
//   SandboxResult r = run_sandboxed({"python3", "-I", "-c", code}, {.cpu_s = 5, .memory_mb = 512});
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"

namespace dsrl::agent {

class SandboxError : public Error {
public:
    using Error::Error;
};

struct SandboxLimits {
    double wall_s = 10.0;         ///< the process group is killed after this
    int64_t cpu_s = 5;            ///< RLIMIT_CPU
    int64_t memory_mb = 1024;     ///< RLIMIT_AS
    int64_t file_mb = 16;         ///< RLIMIT_FSIZE
    int64_t max_processes = 64;   ///< RLIMIT_NPROC (per user: only effective for an unprivileged user)
    size_t max_output = 1 << 16;  ///< bytes of stdout and of stderr kept (the rest is dropped, flagged)
    std::string stdin_text;       ///< written to its stdin
};

struct SandboxResult {
    int exit_code = -1;  ///< when it exited
    int signal = 0;      ///< when it was killed (SIGKILL after the wall limit, SIGXCPU for CPU time)
    bool timed_out = false;
    std::string out, err;
    bool truncated = false;
};

/// Runs `argv` (argv[0] searched in PATH) in the sandbox. SandboxError when the sandbox cannot be made or the program
/// cannot be started.
SandboxResult run_sandboxed(const std::vector<std::string>& argv, const SandboxLimits& limits = {});

/// Whether this process can make the sandbox (a network namespace), with the reason when not.
bool sandbox_available(std::string* why = nullptr);

}  // namespace dsrl::agent
