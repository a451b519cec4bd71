#include "bench/bench_util.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>

#include "core/error.h"

extern char** environ;

namespace dsrl::bench {

std::optional<std::vector<double>> run_child(const std::string& self,
                                             const std::vector<std::string>& args,
                                             const std::string& bench) {
    int fds[2];
    if (pipe(fds) != 0) throw Error(absl::StrCat(bench, ": pipe() failed"));
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    std::vector<std::string> all = {self};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (const std::string& a : all) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, self.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        throw Error(absl::StrCat(bench, ": cannot spawn ", self));
    }
    std::string text;
    char buf[4096];
    for (ssize_t n; (n = read(fds[0], buf, sizeof(buf))) > 0;) text.append(buf, static_cast<size_t>(n));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const size_t at = text.find("RESULT ");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || at == std::string::npos) return std::nullopt;
    const size_t end = text.find('\n', at);
    std::vector<double> out;
    for (absl::string_view field : absl::StrSplit(text.substr(at + 7, end == std::string::npos ? end : end - at - 7), ' ',
                                                  absl::SkipEmpty())) {
        double v = 0;
        if (!absl::SimpleAtod(field, &v)) return std::nullopt;
        out.push_back(v);
    }
    return out;
}

std::vector<int64_t> parse_lengths(const std::string& text, const std::string& bench) {
    std::vector<int64_t> out;
    for (absl::string_view part : absl::StrSplit(text, ',')) {
        int64_t v = 0;
        if (!absl::SimpleAtoi(part, &v) || v < 1) {
            throw ConfigError(absl::StrCat(bench, ": bad --lengths entry '", std::string(part), "'"));
        }
        out.push_back(v);
    }
    return out;
}

}  // namespace dsrl::bench
