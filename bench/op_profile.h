// Where a benchmark's time goes, from PyTorch's own profiler (Kineto; CUPTI on CUDA): the work of one callable
// grouped by kernel (CUDA: every kernel, copy and memset the device ran and CUPTI traced — not those of CUDA-graph
// replays) or by ATen op (CPU: each op's self time, its children's subtracted), with call counts.
//
//   const bench::OpProfile p = bench::profile_ops(device, [&] { (void)generate(...); }, "dsrl::decode", "/tmp/t.json");
//   bench::print_profile(p, stats.decode_steps, "decode step", 25);
//
// The trace file (optional) opens in chrome://tracing or Perfetto.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <c10/core/Device.h>

namespace dsrl::bench {

struct OpRow {
    std::string name;
    int64_t calls = 0;
    double us = 0;     // device time (CUDA) or self time (CPU), microseconds
    std::string from;  // CUDA: the ATen ops that launched the kernel, most calls first ("aten::to 30, ...")
};

struct OpProfile {
    std::string what;         // "device kernels" or "CPU ops (self time)"
    std::vector<OpRow> rows;  // by time, largest first
    double total_us = 0;      // sum of the rows
    int64_t total_calls = 0;  // sum of the calls
    double wall_us = 0;       // the callable's wall time
};

/// Runs `fn` once under the profiler. With a `region` (a RECORD_USER_SCOPE name, e.g. rollout's "dsrl::decode"), only
/// the work inside such scopes counts: CPU ops nested in one, kernels launched from one.
/// `host` reports the CPU ops (self time) on CUDA too: where the host's time goes while the device works.
OpProfile profile_ops(const c10::Device& device,
                      const std::function<void()>& fn,
                      const std::string& region = "",
                      const std::string& trace_path = "",
                      bool host = false);

/// Prints the `top` largest rows and the rest as one line; counts and times also per `per` units of `unit` (e.g.
/// decode steps) when per > 0.
void print_profile(const OpProfile& p, int64_t per, const std::string& unit, int top);

}  // namespace dsrl::bench
