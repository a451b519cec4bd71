#include "bench/op_profile.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>

#include "bench/bench_util.h"
#include "core/error.h"

namespace dsrl::bench {
namespace {

namespace prof = torch::profiler::impl;
using torch::autograd::profiler::ProfilerResult;

struct Acc {
    int64_t calls = 0;
    double ns = 0;
    std::map<std::string, int64_t> from;  // launching op -> calls
};

// The CPU events' nesting (from their intervals, per thread): each one's self time (its direct children's time
// subtracted) and whether it runs inside a `region` scope (every event does when `region` is empty).
struct CpuOps {
    struct Op {
        uint64_t thread = 0, start = 0, end = 0, correlation = 0;
        std::string name;
        double self_ns = 0;
        bool in_region = false;
    };
    std::vector<Op> ops;
    int64_t regions = 0;  // region scopes seen
};

CpuOps cpu_ops(const std::vector<torch::autograd::profiler::KinetoEvent>& events, const std::string& region) {
    CpuOps c;
    for (const auto& e : events) {
        if (e.deviceType() != c10::DeviceType::CPU || e.endNs() < e.startNs()) continue;
        c.ops.push_back({.thread = e.startThreadId(),
                         .start = e.startNs(),
                         .end = e.endNs(),
                         .correlation = e.correlationId(),
                         .name = e.name()});
    }
    std::sort(c.ops.begin(), c.ops.end(), [](const CpuOps::Op& a, const CpuOps::Op& b) {
        return a.thread != b.thread ? a.thread < b.thread : a.start != b.start ? a.start < b.start : a.end > b.end;
    });
    std::vector<size_t> open;  // the enclosing events of the current one
    for (size_t i = 0; i < c.ops.size(); ++i) {
        CpuOps::Op& op = c.ops[i];
        while (!open.empty() && (c.ops[open.back()].thread != op.thread || c.ops[open.back()].end <= op.start)) {
            open.pop_back();
        }
        op.self_ns = static_cast<double>(op.end - op.start);
        const bool is_region = !region.empty() && op.name == region;
        c.regions += is_region ? 1 : 0;
        op.in_region = region.empty() || is_region || (!open.empty() && c.ops[open.back()].in_region);
        if (!open.empty()) c.ops[open.back()].self_ns -= op.self_ns;
        open.push_back(i);
    }
    return c;
}

// Kernel names are long template instantiations: the first 110 characters, "void " dropped.
std::string short_name(std::string name) {
    if (name.rfind("void ", 0) == 0) name = name.substr(5);
    if (name.size() > 110) name = name.substr(0, 107) + "...";
    return name;
}

}  // namespace

OpProfile profile_ops(const c10::Device& device,
                      const std::function<void()>& fn,
                      const std::string& region,
                      const std::string& trace_path,
                      bool host) {
    std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
    if (device.is_cuda()) activities.insert(prof::ActivityType::CUDA);
    const prof::ProfilerConfig config(prof::ProfilerState::KINETO, /*report_input_shapes=*/true);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
    std::unique_ptr<ProfilerResult> result;
    double wall_ns = 0;
    try {
        sync_device(device);
        const auto t0 = std::chrono::steady_clock::now();
        fn();
        sync_device(device);
        wall_ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    } catch (...) {
        (void)torch::autograd::profiler::disableProfiler();
        throw;
    }
    result = torch::autograd::profiler::disableProfiler();
    DSRL_INTERNAL_ASSERT(result != nullptr, "profile_ops: the PyTorch profiler returned no result");
    std::map<std::string, Acc> by_name;
    OpProfile p;
    p.wall_us = wall_ns / 1e3;
    const CpuOps cpu = cpu_ops(result->events(), region);
    DSRL_INTERNAL_ASSERT(region.empty() || cpu.regions > 0, "profile_ops: the profiled work ran no '", region,
                         "' scope");
    if (device.is_cuda() && !host) {
        p.what = "device kernels, copies and memsets";
        std::set<uint64_t> launched_in_region;         // correlation ids of the CPU events inside the region
        std::map<uint64_t, const std::string*> op_of;  // correlation id -> the CPU op's name
        for (const CpuOps::Op& op : cpu.ops) {
            if (op.in_region) launched_in_region.insert(op.correlation);
            op_of[op.correlation] = &op.name;
        }
        const auto collect = [&](bool only_region) {
            by_name.clear();
            for (const auto& e : result->events()) {
                if (e.deviceType() != c10::DeviceType::CUDA) continue;
                if (only_region && !launched_in_region.count(e.linkedCorrelationId())) continue;
                Acc& a = by_name[short_name(e.name())];
                ++a.calls;
                a.ns += static_cast<double>(e.durationNs());
                const auto op = op_of.find(e.linkedCorrelationId());
                ++a.from[op != op_of.end() ? *op->second : "?"];
            }
        };
        collect(!region.empty());
        if (by_name.empty() && !region.empty()) {
            // The device events carry no link to the CPU scope that launched them (a profiler without external
            // correlation): count every one, and say so.
            collect(false);
            p.what += " (all of the run's: none was linked to a '" + region + "' scope)";
        }
    } else {
        p.what = "CPU ATen ops (self time)";
        for (const CpuOps::Op& op : cpu.ops) {
            if (!op.in_region) continue;  // the region scope itself: its self time is the host's own code
            Acc& a = by_name[op.name];
            ++a.calls;
            a.ns += std::max(0.0, op.self_ns);
        }
    }
    for (const auto& [name, a] : by_name) {
        std::vector<std::pair<int64_t, std::string>> from;
        for (const auto& [op, n] : a.from) from.emplace_back(n, op);
        std::sort(from.rbegin(), from.rend());
        std::string launched;
        for (size_t i = 0; i < from.size() && i < 3; ++i) {
            absl::StrAppend(&launched, i ? ", " : "", from[i].second, " ", from[i].first);
        }
        p.rows.push_back({name, a.calls, a.ns / 1e3, launched});
        p.total_us += a.ns / 1e3;
        p.total_calls += a.calls;
    }
    std::sort(p.rows.begin(), p.rows.end(), [](const OpRow& a, const OpRow& b) { return a.us > b.us; });
    if (!trace_path.empty()) result->save(trace_path);
    return p;
}

void print_profile(const OpProfile& p, int64_t per, const std::string& unit, int top) {
    const double n = per > 0 ? static_cast<double>(per) : 1.0;
    std::printf("profile: %s: %ld calls, %.0f us (wall %.0f us)%s\n", p.what.c_str(), long(p.total_calls), p.total_us,
                p.wall_us,
                per > 0 ? absl::StrFormat("; per %s: %.1f calls, %.1f us (columns per %s)", unit, p.total_calls / n,
                                          p.total_us / n, unit)
                              .c_str()
                        : "");
    std::printf("%8s %10s %9s %7s  %s\n", "calls", "us", "us/call", "share", "name");
    OpRow rest{"(the rest)"};
    for (size_t i = 0; i < p.rows.size(); ++i) {
        const OpRow& r = p.rows[i];
        if (static_cast<int>(i) >= top) {
            rest.calls += r.calls;
            rest.us += r.us;
            continue;
        }
        std::printf("%8.1f %10.1f %9.2f %6.1f%%  %s%s\n", r.calls / n, r.us / n, r.us / std::max<double>(1, r.calls),
                    100.0 * r.us / std::max(p.total_us, 1e-9), r.name.c_str(),
                    r.from.empty() ? "" : absl::StrCat("  <- ", r.from).c_str());
    }
    if (rest.calls > 0) {
        std::printf("%8.1f %10.1f %9.2f %6.1f%%  %s (%zu names)\n", rest.calls / n, rest.us / n,
                    rest.us / std::max<double>(1, rest.calls), 100.0 * rest.us / std::max(p.total_us, 1e-9),
                    rest.name.c_str(), p.rows.size() - static_cast<size_t>(top));
    }
    std::fflush(stdout);
}

}  // namespace dsrl::bench
