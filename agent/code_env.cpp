#include "agent/code_env.h"

#include <absl/strings/str_cat.h>

#include <csignal>
#include <cstring>

#include "agent/sandbox.h"

namespace dsrl::agent {
namespace {

class CodeEnvironment : public Environment {
public:
    CodeEnvironment(std::string python, SandboxLimits limits)
        : python_(std::move(python)), limits_(std::move(limits)) {}

    Json reset(const Json& task) override {
        if (!task.is_object() || !task.contains("question") || !task["question"].is_string() ||
            !task.contains("answer") || !task["answer"].is_string()) {
            throw DataError(absl::StrCat("code_interpreter: a task needs string \"question\" and \"answer\", got ",
                                         task.dump().substr(0, 200)));
        }
        answer_ = task["answer"].get<std::string>();
        const Json tool = {
            {"type", "function"},
            {"function",
             {{"name", "python"},
              {"description", "Run Python 3 code (no network, limited time and memory); returns what it prints."},
              {"parameters",
               {{"type", "object"}, {"properties", {{"code", {{"type", "string"}}}}}, {"required", {"code"}}}}}}};
        return {{"messages", Json::array({{{"role", "user"}, {"content", task["question"]}}})},
                {"tools", Json::array({tool})}};
    }

    Json step(const Json& tool_calls) override {
        Json results = Json::array();
        for (const Json& call : tool_calls) {
            results.push_back({{"tool_call_id", call.value("id", std::string())}, {"content", run(call)}});
        }
        return {{"results", results}, {"done", false}};
    }

    Json verify(const Json& trajectory) override {
        const bool right = contains_answer(final_answer(trajectory), answer_);
        return {{"reward", right ? 1.0 : 0.0}, {"details", {{"answer", answer_}, {"found", right}}}};
    }

private:
    std::string run(const Json& call) const {
        if (call.value("name", std::string()) != "python") {
            return absl::StrCat("error: unknown tool '", call.value("name", std::string()), "' (tools: python)");
        }
        Json args;
        try {
            const Json& a = call.contains("arguments") ? call["arguments"] : Json::object();
            args = a.is_string() ? Json::parse(a.get<std::string>()) : a;
        } catch (const Json::exception&) {
            return "error: the arguments are not valid JSON";
        }
        if (!args.is_object() || !args.contains("code") || !args["code"].is_string()) {
            return "error: python needs a string \"code\"";
        }
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
    std::string answer_;
};

}  // namespace

void register_code_environment(EnvRegistry& reg) {
    reg.add("code_interpreter", "runs model-written Python in the sandbox (no network, CPU/memory/time limits)",
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
            });
}

}  // namespace dsrl::agent
