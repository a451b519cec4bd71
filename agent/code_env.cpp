#include "agent/code_env.h"

#include <absl/strings/str_cat.h>

#include <csignal>
#include <cstring>

#include "agent/question_env.h"
#include "agent/sandbox.h"

namespace dsrl::agent {
namespace {

class CodeEnvironment : public QuestionEnvironment {
public:
    CodeEnvironment(std::string python, SandboxLimits limits)
        : QuestionEnvironment("code_interpreter"), python_(std::move(python)), limits_(std::move(limits)) {}

private:
    Json tools() const override {
        return Json::array(
            {tool_schema("python", "Run Python 3 code (no network, limited time and memory); returns what it prints.",
                         {{"code", {{"type", "string"}}}}, {"code"})});
    }

    std::string answer(const std::string& name, const Json& args) const override {
        if (name != "python") return absl::StrCat("error: unknown tool '", name, "' (tools: python)");
        if (!args.contains("code") || !args["code"].is_string()) return "error: python needs a string \"code\"";
        const SandboxResult r = run_sandboxed({python_, "-I", "-c", args["code"].get<std::string>()}, limits_);
        std::string out = r.out;
        if (!r.err.empty()) absl::StrAppend(&out, out.empty() || out.back() == '\n' ? "" : "\n", r.err);
        const auto note = [&out](const std::string& text) {
            if (!out.empty() && out.back() != '\n') out.push_back('\n');
            out += text;
        };
        if (r.timed_out) {
            note("(killed: time limit)");
        } else if (r.signal != 0) {
            note(absl::StrCat("(killed by signal ", r.signal, r.signal == SIGXCPU ? ": CPU time limit" : "", ")"));
        } else if (r.exit_code != 0) {
            note(absl::StrCat("(exit status ", r.exit_code, ")"));
        }
        if (r.truncated) note("(output truncated)");
        return out;
    }

    std::string python_;
    SandboxLimits limits_;
};

}  // namespace

void register_code_environment(EnvRegistry& reg) {
    reg.add(
        "code_interpreter", "runs model-written Python in the sandbox (no network, CPU/memory/time limits)",
        [](const Json& params) -> std::unique_ptr<Environment> {
            std::string why;
            if (!sandbox_available(&why)) {
                throw EnvironmentError(
                    absl::StrCat("environment 'code_interpreter': refusing to start without a sandbox: ", why));
            }
            const Json p = params.is_object() ? params : Json::object();
            SandboxLimits limits;
            limits.cpu_s = p.value("cpu_s", int64_t{5});
            limits.memory_mb = p.value("memory_mb", int64_t{512});
            limits.wall_s = p.value("wall_s", 10.0);
            limits.max_output = p.value("max_output", size_t{4096});
            if (limits.cpu_s < 1 || limits.memory_mb < 16 || limits.wall_s <= 0 || limits.max_output < 1) {
                throw ConfigError(absl::StrCat("environment 'code_interpreter': bad limits ", p.dump(),
                                               " (cpu_s >= 1, memory_mb >= 16, wall_s > 0, max_output >= 1)"));
            }
            return std::make_unique<CodeEnvironment>(p.value("python", std::string("python3")), limits);
        },
        std::vector<std::string>{"cpu_s", "memory_mb", "wall_s", "max_output", "python"});
}

}  // namespace dsrl::agent
