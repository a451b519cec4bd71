// An environment in another process, any language (issue 20): the program named by `command` reads one JSON request
// per line on stdin and writes one JSON answer per line on stdout (agent/environment.h has the protocol):
//   {"op": "reset", "task": T, "params": P}   {"op": "step", "tool_calls": [...]}   {"op": "verify", "trajectory":
//   {...}}
// An answer {"error": "..."} is the environment's own failure. stderr is free for logs (its tail is quoted in errors).
// One process per instance (per trajectory), in its own process group: a call without an answer within `timeout_s`
// kills the group; a crash, an exit or a malformed line is an EnvironmentError naming the environment, the operation
// and what happened (exit status or signal, the stderr tail). The destructor closes stdin and kills what is left.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "agent/environment.h"

namespace dsrl::agent {

class SubprocessEnvironment : public Environment {
public:
    /// Starts `argv` (argv[0] searched in PATH). EnvironmentError when it cannot be started.
    SubprocessEnvironment(std::vector<std::string> argv, Json params, std::string name, double timeout_s);
    ~SubprocessEnvironment() override;
    SubprocessEnvironment(const SubprocessEnvironment&) = delete;
    SubprocessEnvironment& operator=(const SubprocessEnvironment&) = delete;

    Json reset(const Json& task) override;
    Json step(const Json& tool_calls) override;
    Json verify(const Json& trajectory) override;

    pid_t pid() const { return pid_; }

private:
    Json request(const char* op, Json body);
    [[noreturn]] void fail(const char* op, const std::string& what);
    void drain_stderr();
    void stop();

    std::string name_;
    Json params_;
    double timeout_s_;
    pid_t pid_ = -1;
    int io_fd_ = -1;   // our end of the socket that is the child's stdin and stdout
    int err_fd_ = -1;  // the child's stderr
    std::string out_buf_;
    std::string err_tail_;
};

}  // namespace dsrl::agent
