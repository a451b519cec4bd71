#include "core/fault.h"

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>

#include <csignal>
#include <optional>
#include <string>
#include <vector>

#include "core/env.h"
#include "core/error.h"
#include "core/logging.h"

namespace dsrl::fault {
namespace {

constexpr const char* kKnob = "DSRL_FAULT_KILL";
constexpr const char* kPoints[] = {"step_start", "in_checkpoint", "before_latest_rename"};

struct Spec {
    std::string point;
    int64_t step = 0;
    std::optional<int> rank;
};

std::optional<Spec> parse(const std::string& text) {
    if (text.empty()) return std::nullopt;
    const std::vector<std::string> parts = absl::StrSplit(text, ':');
    const auto bad = [&](const std::string& why) {
        return ConfigError(absl::StrCat("environment variable ", kKnob, "='", text, "': ", why,
                                        "; expected <point>:<job step>[:<rank>] with point one of step_start, "
                                        "in_checkpoint, before_latest_rename"));
    };
    if (parts.size() < 2 || parts.size() > 3) throw bad("wrong number of fields");
    Spec s;
    s.point = parts[0];
    bool known = false;
    for (const char* p : kPoints) known |= s.point == p;
    if (!known) throw bad(absl::StrCat("unknown point '", s.point, "'"));
    if (!absl::SimpleAtoi(parts[1], &s.step) || s.step < 0) throw bad(absl::StrCat("bad job step '", parts[1], "'"));
    if (parts.size() == 3) {
        int r = 0;
        if (!absl::SimpleAtoi(parts[2], &r) || r < 0) throw bad(absl::StrCat("bad rank '", parts[2], "'"));
        s.rank = r;
    }
    return s;
}

const std::optional<Spec>& spec() {
    static const std::optional<Spec> s = parse(env::get_string(kKnob));
    return s;
}

}  // namespace

void check_environment() { (void)spec(); }

void kill_point(const char* point, int64_t job_step, int rank) {
    const std::optional<Spec>& s = spec();
    if (!s || s->point != point || s->step != job_step || (s->rank && *s->rank != rank)) return;
    DSRL_LOG(warn) << kKnob << "=" << env::get_string(kKnob) << ": rank " << rank << " kills itself at " << point
                   << " of job step " << job_step;
    std::raise(SIGKILL);
}

}  // namespace dsrl::fault
