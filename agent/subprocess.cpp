#include "agent/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace dsrl::agent {
namespace {

constexpr size_t kErrTail = 2000;      // bytes of stderr quoted in errors
constexpr size_t kMaxLine = 64 << 20;  // an answer longer than this is an error, not an allocation

using Clock = std::chrono::steady_clock;

std::string describe_status(int status) {
    if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
    if (WIFSIGNALED(status))
        return absl::StrCat("was killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
    return "stopped";
}

}  // namespace

SubprocessEnvironment::SubprocessEnvironment(std::vector<std::string> argv,
                                             Json params,
                                             std::string name,
                                             double timeout_s)
    : name_(std::move(name)), params_(std::move(params)), timeout_s_(timeout_s) {
    if (argv.empty()) throw ConfigError(absl::StrCat("environment '", name_, "': command is empty"));
    int io[2], err[2], exec_status[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, io) != 0 || ::pipe2(err, O_CLOEXEC) != 0 ||
        ::pipe2(exec_status, O_CLOEXEC) != 0) {
        throw EnvironmentError(absl::StrCat("environment '", name_, "': cannot create pipes: ", std::strerror(errno)));
    }
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) {
        throw EnvironmentError(absl::StrCat("environment '", name_, "': fork failed: ", std::strerror(errno)));
    }
    if (pid_ == 0) {
        // The child: its own process group (a time-out kills everything it started), the socket as stdin and
        // stdout, the pipe as stderr; an exec failure is reported through the status pipe (closed on exec).
        ::setpgid(0, 0);
        ::dup2(io[1], 0);
        ::dup2(io[1], 1);
        ::dup2(err[1], 2);
        ::signal(SIGPIPE, SIG_DFL);
        ::execvp(args[0], args.data());
        const int e = errno;
        (void)!::write(exec_status[1], &e, sizeof(e));
        ::_exit(127);
    }
    ::close(io[1]);
    ::close(err[1]);
    ::close(exec_status[1]);
    io_fd_ = io[0];
    err_fd_ = err[0];
    ::fcntl(err_fd_, F_SETFL, ::fcntl(err_fd_, F_GETFL) | O_NONBLOCK);
    int e = 0;
    const ssize_t n = ::read(exec_status[0], &e, sizeof(e));  // 0 bytes: exec succeeded
    ::close(exec_status[0]);
    if (n == static_cast<ssize_t>(sizeof(e))) {
        stop();
        throw EnvironmentError(
            absl::StrCat("environment '", name_, "': cannot run '", argv[0], "': ", std::strerror(e)));
    }
}

SubprocessEnvironment::~SubprocessEnvironment() { stop(); }

void SubprocessEnvironment::stop() {
    if (io_fd_ >= 0) ::close(io_fd_);  // EOF on its stdin: a well-behaved environment exits
    io_fd_ = -1;
    if (pid_ > 0) {
        int status = 0;
        for (int i = 0; i < 20 && ::waitpid(pid_, &status, WNOHANG) == 0; ++i) ::usleep(5000);
        if (::waitpid(pid_, &status, WNOHANG) == 0) {
            ::kill(-pid_, SIGKILL);
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, &status, 0);
        }
        pid_ = -1;
    }
    if (err_fd_ >= 0) ::close(err_fd_);
    err_fd_ = -1;
}

void SubprocessEnvironment::drain_stderr() {
    char buf[4096];
    while (err_fd_ >= 0) {
        const ssize_t n = ::read(err_fd_, buf, sizeof(buf));
        if (n <= 0) break;
        err_tail_.append(buf, static_cast<size_t>(n));
        if (err_tail_.size() > 2 * kErrTail) err_tail_.erase(0, err_tail_.size() - kErrTail);
    }
}

void SubprocessEnvironment::fail(const char* op, const std::string& what) {
    drain_stderr();
    std::string msg = absl::StrCat("environment '", name_, "' ", op, ": the subprocess ", what);
    if (!err_tail_.empty()) {
        const std::string tail =
            err_tail_.size() > kErrTail ? err_tail_.substr(err_tail_.size() - kErrTail) : err_tail_;
        absl::StrAppend(&msg, "; its stderr ends with: ", tail);
    }
    stop();
    throw EnvironmentError(msg);
}

Json SubprocessEnvironment::request(const char* op, Json body) {
    if (pid_ < 0) throw EnvironmentError(absl::StrCat("environment '", name_, "' ", op, ": the subprocess is gone"));
    body["op"] = op;
    const std::string line = body.dump() + "\n";
    for (size_t done = 0; done < line.size();) {
        const ssize_t n = ::send(io_fd_, line.data() + done, line.size() - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int status = 0;
            ::waitpid(pid_, &status, 0);
            pid_ = -1;
            fail(op, absl::StrCat("cannot be written to (", std::strerror(errno), "): it ", describe_status(status)));
        }
        done += static_cast<size_t>(n);
    }
    // One answer line, within the time limit.
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(timeout_s_ > 0 ? timeout_s_ : 1e9));
    size_t eol;
    while ((eol = out_buf_.find('\n')) == std::string::npos) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) {
            fail(op, absl::StrCat("gave no answer within ", timeout_s_, " s and was killed"));
        }
        pollfd fds[2] = {{io_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
        const int r = ::poll(fds, 2, static_cast<int>(std::min<int64_t>(left, 1000)));
        if (r < 0 && errno == EINTR) continue;
        if (fds[1].revents & POLLIN) drain_stderr();
        if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        char buf[65536];
        const ssize_t n = ::read(io_fd_, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int status = 0;
            ::waitpid(pid_, &status, 0);
            pid_ = -1;
            fail(op, absl::StrCat("closed its stdout without an answer: it ", describe_status(status)));
        }
        out_buf_.append(buf, static_cast<size_t>(n));
        if (out_buf_.size() > kMaxLine)
            fail(op, absl::StrCat("wrote more than ", kMaxLine, " bytes without a newline"));
    }
    const std::string answer = out_buf_.substr(0, eol);
    out_buf_.erase(0, eol + 1);
    Json j;
    try {
        j = Json::parse(answer);
    } catch (const Json::exception& e) {
        const std::string shown = answer.size() > 200 ? answer.substr(0, 200) + "..." : answer;
        fail(op, absl::StrCat("answered malformed JSON (", e.what(), "): ", shown));
    }
    if (j.is_object() && j.contains("error")) {
        throw EnvironmentError(absl::StrCat(
            "environment '", name_, "' ", op,
            " reported an error: ", j["error"].is_string() ? j["error"].get<std::string>() : j["error"].dump()));
    }
    return j;
}

Json SubprocessEnvironment::reset(const Json& task) { return request("reset", {{"task", task}, {"params", params_}}); }

Json SubprocessEnvironment::step(const Json& tool_calls) { return request("step", {{"tool_calls", tool_calls}}); }

Json SubprocessEnvironment::verify(const Json& trajectory) { return request("verify", {{"trajectory", trajectory}}); }

}  // namespace dsrl::agent
