#include "bench/bench_util.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>

#include <c10/cuda/CUDAFunctions.h>

#include "core/error.h"

extern char** environ;

namespace dsrl::bench {

Flags& Flags::text(const std::string& name, std::string* v, const std::string& help) {
    flags_.push_back({name, help, *v, [v](const std::string& s) { *v = s; }});
    return *this;
}

namespace {

// An integer flag value >= min (and within T's range), or a ConfigError naming program and flag.
template <class T>
std::function<void(const std::string&)> integer_setter(std::string program, std::string name, T* v, T min) {
    return [=](const std::string& s) {
        T x = 0;
        if (!absl::SimpleAtoi(s, &x) || x < min) {
            throw ConfigError(absl::StrCat(program, ": ", name, " '", s, "' must be an integer >= ", min));
        }
        *v = x;
    };
}

}  // namespace

Flags& Flags::integer(const std::string& name, int64_t* v, int64_t min, const std::string& help) {
    return custom(name, integer_setter(program_, name, v, min), help, std::to_string(*v));
}

Flags& Flags::integer(const std::string& name, int* v, int min, const std::string& help) {
    return custom(name, integer_setter(program_, name, v, min), help, std::to_string(*v));
}

Flags& Flags::number(const std::string& name, double* v, const std::string& help) {
    const std::string program = program_;
    flags_.push_back({name, help, absl::StrCat(*v), [=](const std::string& s) {
                          if (!absl::SimpleAtod(s, v)) {
                              throw ConfigError(absl::StrCat(program, ": ", name, " '", s, "' must be a number"));
                          }
                      }});
    return *this;
}

Flags& Flags::custom(const std::string& name,
                     std::function<void(const std::string&)> set,
                     const std::string& help,
                     const std::string& shown_default) {
    flags_.push_back({name, help, shown_default, std::move(set)});
    return *this;
}

bool Flags::parse(int argc, char** argv) const {
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            std::printf("usage: %s [flags]\n", program_.c_str());
            for (const Flag& f : flags_) {
                std::printf("  %-16s %s (default %s)\n", f.name.c_str(), f.help.c_str(), f.shown_default.c_str());
            }
            return false;
        }
        const auto it = std::find_if(flags_.begin(), flags_.end(), [&](const Flag& f) { return f.name == a; });
        if (it == flags_.end()) throw ConfigError(absl::StrCat(program_, ": unknown flag '", a, "' (see --help)"));
        if (i + 1 >= argc) throw ConfigError(absl::StrCat(program_, ": ", a, " needs a value"));
        it->set(argv[++i]);
    }
    return true;
}

void sync_device(const c10::Device& device) {
    if (device.is_cuda()) c10::cuda::device_synchronize();
}

std::string self_exe(const char* argv0) {
    char resolved[4096];
    const ssize_t n = ::readlink("/proc/self/exe", resolved, sizeof(resolved) - 1);
    return n > 0 ? std::string(resolved, static_cast<size_t>(n)) : std::string(argv0);
}

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
    const int rc = posix_spawnp(&pid, self.c_str(), &actions, nullptr, argv.data(), environ);
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
    for (absl::string_view field :
         absl::StrSplit(text.substr(at + 7, end == std::string::npos ? end : end - at - 7), ' ', absl::SkipEmpty())) {
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
