#include "agent/sandbox.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <absl/strings/str_cat.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "core/fs.h"

namespace dsrl::agent {
namespace {

// What the child reports through the status pipe before exec (nothing: exec succeeded).
struct ChildFailure {
    int stage = 0;  // 1: no network namespace, 2: exec
    int err = 0;
};

// In the child: a network namespace of its own — directly when privileged, else inside a new user namespace.
bool isolate_network() {
    if (::unshare(CLONE_NEWNET) == 0) return true;
    return ::unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0;
}

void set_limit(int resource, rlim_t value) {
    const rlimit r{value, value};
    ::setrlimit(resource, &r);
}

}  // namespace

bool sandbox_available(std::string* why) {
    int status_pipe[2];
    if (::pipe2(status_pipe, O_CLOEXEC) != 0) {
        if (why) *why = std::strerror(errno);
        return false;
    }
    const pid_t pid = ::fork();
    if (pid == 0) {
        const int err = isolate_network() ? 0 : errno;
        (void)!::write(status_pipe[1], &err, sizeof(err));
        ::_exit(0);
    }
    ::close(status_pipe[1]);
    int err = -1;
    (void)!::read(status_pipe[0], &err, sizeof(err));
    ::close(status_pipe[0]);
    int status = 0;
    if (pid > 0) ::waitpid(pid, &status, 0);
    if (err != 0 && why) {
        *why = absl::StrCat("cannot create a network namespace (", err > 0 ? std::strerror(err) : "fork failed",
                            "): run as root or enable unprivileged user namespaces");
    }
    return err == 0;
}

SandboxResult run_sandboxed(const std::vector<std::string>& argv, const SandboxLimits& limits) {
    if (argv.empty()) throw SandboxError("sandbox: no program to run");
    const std::string dir = fs::make_temp_dir("dsrl_sandbox_");
    ::chmod(dir.c_str(), 0777);  // writable by the namespace's unmapped user too
    int in[2], out[2], err[2], status_pipe[2];
    // stdin is a socket, so writing to a program that exited is an error, not a SIGPIPE for the trainer.
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0 || ::pipe2(out, O_CLOEXEC) != 0 ||
        ::pipe2(err, O_CLOEXEC) != 0 || ::pipe2(status_pipe, O_CLOEXEC) != 0) {
        fs::remove_tree(dir);
        throw SandboxError(absl::StrCat("sandbox: cannot create pipes: ", std::strerror(errno)));
    }
    // Everything the child needs is built here: between fork and exec it only makes system calls (the trainer is
    // multi-threaded; malloc or setenv in the child could deadlock).
    std::vector<std::string> args_copy = argv;
    std::vector<char*> args;
    for (std::string& a : args_copy) args.push_back(a.data());
    args.push_back(nullptr);
    std::vector<std::string> env_copy = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + dir, "TMPDIR=" + dir};
    std::vector<char*> envp;
    for (std::string& e : env_copy) envp.push_back(e.data());
    envp.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
        fs::remove_tree(dir);
        throw SandboxError(absl::StrCat("sandbox: fork failed: ", std::strerror(errno)));
    }
    if (pid == 0) {
        ::setpgid(0, 0);
        ChildFailure f;
        if (!isolate_network()) {
            f = {1, errno};
            (void)!::write(status_pipe[1], &f, sizeof(f));
            ::_exit(126);
        }
        set_limit(RLIMIT_CPU, static_cast<rlim_t>(limits.cpu_s));
        set_limit(RLIMIT_AS, static_cast<rlim_t>(limits.memory_mb) << 20);
        set_limit(RLIMIT_FSIZE, static_cast<rlim_t>(limits.file_mb) << 20);
        set_limit(RLIMIT_NPROC, static_cast<rlim_t>(limits.max_processes));
        set_limit(RLIMIT_CORE, 0);
        if (::chdir(dir.c_str()) != 0) ::_exit(126);
        ::dup2(in[1], 0);
        ::dup2(out[1], 1);
        ::dup2(err[1], 2);
        ::signal(SIGPIPE, SIG_DFL);
        ::execvpe(args[0], args.data(), envp.data());  // PATH searched in our environment, the program gets envp
        f = {2, errno};
        (void)!::write(status_pipe[1], &f, sizeof(f));
        ::_exit(127);
    }
    for (const int fd : {in[1], out[1], err[1], status_pipe[1]}) ::close(fd);
    ChildFailure f;
    const ssize_t got = ::read(status_pipe[0], &f, sizeof(f));
    ::close(status_pipe[0]);
    auto finish_failed = [&](const std::string& why) {
        for (const int fd : {in[0], out[0], err[0]}) ::close(fd);
        int status = 0;
        ::waitpid(pid, &status, 0);
        fs::remove_tree(dir);
        throw SandboxError(why);
    };
    if (got == static_cast<ssize_t>(sizeof(f))) {
        if (f.stage == 1) {
            finish_failed(absl::StrCat("sandbox: refusing to run '", argv[0],
                                       "' unconfined: cannot create a network namespace (", std::strerror(f.err),
                                       "); run as root or enable unprivileged user namespaces"));
        }
        finish_failed(absl::StrCat("sandbox: cannot run '", argv[0], "': ", std::strerror(f.err)));
    }
    // Its stdin (a small input; a program that does not read it does not block us: the socket buffers it).
    if (!limits.stdin_text.empty()) {
        (void)!::send(in[0], limits.stdin_text.data(), limits.stdin_text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    ::shutdown(in[0], SHUT_WR);
    SandboxResult r;
    const auto deadline =
        std::chrono::steady_clock::now() +
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(limits.wall_s));
    int open_fds = 2;
    pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    std::string* sinks[2] = {&r.out, &r.err};
    while (open_fds > 0) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
        if (left <= 0) {
            r.timed_out = true;
            ::kill(-pid, SIGKILL);
            break;
        }
        const int n = ::poll(fds, 2, static_cast<int>(std::min<int64_t>(left, 200)));
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
            char buf[8192];
            const ssize_t k = ::read(fds[i].fd, buf, sizeof(buf));
            if (k <= 0) {
                ::close(fds[i].fd);
                fds[i].fd = -1;
                --open_fds;
                continue;
            }
            const size_t room = limits.max_output > sinks[i]->size() ? limits.max_output - sinks[i]->size() : 0;
            sinks[i]->append(buf, std::min(room, static_cast<size_t>(k)));
            if (static_cast<size_t>(k) > room) r.truncated = true;
        }
    }
    for (const pollfd& p : fds) {
        if (p.fd >= 0) ::close(p.fd);
    }
    // Its exit, still within the wall limit (a program may close its outputs and go on running).
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() >= deadline) {
            r.timed_out = true;
            ::kill(-pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            break;
        }
        ::usleep(2000);
    }
    ::kill(-pid, SIGKILL);  // anything it left running in its group
    ::close(in[0]);
    if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
    fs::remove_tree(dir);
    return r;
}

}  // namespace dsrl::agent
