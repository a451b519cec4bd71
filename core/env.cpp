#include "core/env.h"

#include <cstdlib>

#include <absl/strings/ascii.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>

#include "core/error.h"

namespace dsrl::env {

const std::vector<Knob>& all_knobs() {
    static const std::vector<Knob> knobs = {
        {"DSRL_LOG_LEVEL", "info", "Minimum log level: debug, info, warn, error."},
        {"DSRL_LOG_ALL_RANKS", "0", "1: every rank logs at info level (default: only rank 0; warnings from all)."},
        {"DSRL_DIST_TIMEOUT_S", "", "Overrides dist.timeout_s: seconds before a stuck collective aborts the job."},
        {"DSRL_DIST_CHECK_PEERS", "1",
         "1: every collective first checks (one small MPI allgather) that all ranks of the group called the same op "
         "with matching tensors, raising a DistError instead of hanging; 0 skips the check."},
        {"DSRL_EXIT_WITH_LAUNCHER", "1",
         "1: a rank whose launcher (mpirun, srun) died exits within a second instead of running on unsupervised "
         "(Open MPI's ranks outlive a killed mpirun); 0 lets it run on."},
        {"DSRL_FAULT_KILL", "",
         "Fault injection for tests (core/fault.h): <point>:<job step>[:<rank>] makes that rank (any rank when "
         "omitted) SIGKILL itself at the point of that job step. Points: step_start, in_checkpoint (after the "
         "model of the checkpoint is written, before its rename), before_latest_rename (`latest.tmp.<pid>` "
         "written, not yet renamed). Empty disables."},
        {"DSRL_PDL", "1",
         "1: dsrl's CUDA kernels launch with programmatic dependent launch on sm_90+ (a kernel's start overlaps the "
         "previous one's tail); 0 launches them plainly (measurements)."},
        {"DSRL_DECODE_LINEAR", "1",
         "1: a decode step's small bf16/fp16 projections run on dsrl's tensor-core kernel, launched under PDL with its "
         "first weight chunks staged before it waits (dsa/linear_cuda.h); 0: cuBLAS (at::linear), for measurements."},
        {"DSRL_TILE_STAGE", "1",
         "1: a decode step's router kernel (two rows a block) copies its gate into shared memory before it waits for "
         "the kernel before (core/kernels/row_dot.cuh); 0: reads it from L2 after, for measurements."},
        {"DSRL_ATTN_STAGES", "",
         "The tensor-core sparse attention's sub-tiles per tile (dsa/kernels/sparse_mla_mma.cuh): empty for the "
         "default (one: the tile staged whole), or 1, 2 or 4 (a ring of sub-tiles), for measurements."},
        {"DSRL_SAMPLE_SORT", "warp",
         "The sampling kernel's sort: warp (stages of stride < 32 by warp shuffles where a row fits one element a "
         "thread) or block (every stage through shared memory; the same records, for measurements)."},
    };
    return knobs;
}

namespace {
const Knob& find(const char* name) {
    for (const Knob& k : all_knobs()) {
        if (std::string_view(k.name) == name) return k;
    }
    DSRL_INTERNAL_ASSERT(false, "environment knob ", name, " is not registered in core/env.cpp");
    __builtin_unreachable();
}
}  // namespace

std::string get_string(const char* name) {
    const Knob& knob = find(name);
    const char* v = std::getenv(knob.name);
    return v != nullptr ? std::string(v) : std::string(knob.default_value);
}

int64_t get_int(const char* name) {
    const std::string v = get_string(name);
    int64_t out = 0;
    if (!absl::SimpleAtoi(v, &out)) {
        throw ConfigError(absl::StrCat("environment variable ", name, "='", v, "' is not an integer"));
    }
    return out;
}

std::string get_choice(const char* name, std::initializer_list<const char*> choices) {
    const std::string v = get_string(name);
    std::string list;
    for (const char* c : choices) {
        if (v == c) return v;
        absl::StrAppend(&list, list.empty() ? "" : ", ", c);
    }
    throw ConfigError(absl::StrCat("environment variable ", name, "='", v, "' is not one of: ", list));
}

bool get_bool(const char* name) {
    const std::string v = absl::AsciiStrToLower(get_string(name));
    if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
    if (v == "0" || v == "false" || v == "no" || v == "off" || v.empty()) return false;
    throw ConfigError(absl::StrCat("environment variable ", name, "='", v, "' is not a boolean (use 1 or 0)"));
}

}  // namespace dsrl::env
