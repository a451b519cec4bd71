#include "trainer/stage_loop.h"

#include <ATen/ops/tensor.h>
#include <c10/cuda/CUDACachingAllocator.h>

#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_split.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "core/fault.h"
#include "core/logging.h"
#include "trainer/moe_balance.h"
#include "trainer/tensorboard.h"

namespace dsrl::trainer {
namespace {

using Clock = std::chrono::steady_clock;

std::atomic<int> g_signal{0};
extern "C" void on_signal(int sig) { g_signal.store(sig); }

// True on every rank when any rank received SIGTERM/SIGINT (so all stop after the same step).
bool stop_requested(const dist::Communicator& comm) {
    at::Tensor flag = at::tensor(std::vector<int32_t>{g_signal.load() != 0 ? 1 : 0});
    if (comm.size() > 1) comm.all_reduce(flag, dist::ReduceOp::kMax);
    return flag.item<int32_t>() != 0;
}

// Step time, throughput and the GPU's allocation peak for a step's metrics (console and metrics.jsonl): built
// before the step (it resets the peak), applied to the step's rank-averaged metrics after it.
class StepMeter {
public:
    explicit StepMeter(c10::Device device) : device_(device), t0_(Clock::now()) {
        if (device_.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index());
    }
    /// seconds (this rank's wall time of the step), tokens_per_s = tokens / seconds (tokens: the global
    /// batch's) and, on a GPU, gpu_peak_mem_gib (this rank's peak of allocated memory during the step).
    void finish(std::map<std::string, double>& m, double tokens) const {
        m["seconds"] = std::chrono::duration<double>(Clock::now() - t0_).count();
        m["tokens_per_s"] = tokens / std::max(1e-9, m["seconds"]);
        if (device_.is_cuda()) {
            m["gpu_peak_mem_gib"] =
                static_cast<double>(
                    c10::cuda::CUDACachingAllocator::getDeviceStats(device_.index()).allocated_bytes[0].peak) /
                double(1 << 30);
        }
    }
    /// "  1234 tok/s  mem 1.23 GiB" for the console line.
    std::string text(const std::map<std::string, double>& m) const {
        std::string out = absl::StrFormat("  %.0f tok/s", m.at("tokens_per_s"));
        if (device_.is_cuda()) absl::StrAppendFormat(&out, "  mem %.2f GiB", m.at("gpu_peak_mem_gib"));
        return out;
    }

private:
    c10::Device device_;
    Clock::time_point t0_;
};

// A periodic checkpoint after `step`; every_steps 0 means none (only at the end of a stage and on a signal).
bool checkpoint_due(int64_t step, int64_t every_steps) { return every_steps > 0 && step % every_steps == 0; }

std::string eta(double seconds_per_step, int64_t remaining) {
    const int64_t s = static_cast<int64_t>(seconds_per_step * static_cast<double>(remaining));
    return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
}

}  // namespace

MetricsLog::MetricsLog(const std::string& path, const std::string& tb_dir, bool active) : active_(active) {
    if (!active_) return;
    path_ = path;
    out_.open(path, std::ios::app);
    if (!out_) throw Error(absl::StrCat("cannot open the metrics file ", path, ": ", std::strerror(errno)));
    if (!tb_dir.empty()) tb_ = std::make_unique<TensorBoardWriter>(tb_dir);
}

MetricsLog::~MetricsLog() = default;

void MetricsLog::write(const std::string& stage, int64_t step, const std::map<std::string, double>& m) {
    if (!active_) return;
    nlohmann::json j = m;
    j["stage"] = stage;
    j["step"] = step;
    out_ << j.dump() << "\n";
    out_.flush();
    // A row that did not reach the file (disk full, quota, I/O error) stops the job: the metrics would be lost
    // without a word otherwise. The last checkpoint's row count is what a resume cuts the file back to.
    if (!out_) {
        throw Error(absl::StrCat("cannot write the metrics file ", path_, " (", stage, " step ", step,
                                 "): ", std::strerror(errno), " — disk full?"));
    }
    if (tb_) {
        std::map<std::string, double> tagged;
        for (const auto& [k, v] : m) tagged[stage + "/" + k] = v;
        tb_->add_scalars(step, tagged);
    }
}

void install_stop_handlers() {
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    std::signal(SIGUSR1, on_signal);  // what mpirun forwards to every rank (scripts/dsrl_mpirun sends it)
}

std::string metrics_text(const std::map<std::string, double>& m) {
    std::string text;
    for (const auto& [k, v] : m) absl::StrAppendFormat(&text, "%s %.17g\n", k, v);
    return text;
}

std::map<std::string, double> parse_metrics_text(std::string_view text) {
    std::map<std::string, double> out;
    for (absl::string_view line :
         absl::StrSplit(absl::string_view(text.data(), text.size()), '\n', absl::SkipEmpty())) {
        const size_t sp = line.rfind(' ');
        double v = 0;
        if (sp == absl::string_view::npos || !absl::SimpleAtod(line.substr(sp + 1), &v)) continue;
        out[std::string(line.substr(0, sp))] = v;
    }
    return out;
}

std::map<std::string, double> reduce_metrics(const std::map<std::string, double>& local,
                                             const dist::Communicator& comm) {
    if (comm.size() <= 1) return local;
    std::map<std::string, double> sum;
    std::map<std::string, int> count;
    // Extremes over the ranks stay extremes (ratio_min / ratio_max): the whole batch's, whatever the layout.
    const auto extreme = [](const std::string& key) {
        return absl::EndsWith(key, "_min") ? -1 : absl::EndsWith(key, "_max") ? 1 : 0;
    };
    for (const std::string& s : comm.all_gather_bytes(metrics_text(local))) {
        for (const auto& [key, v] : parse_metrics_text(s)) {
            const int e = extreme(key);
            double& acc = sum[key];
            acc = count[key] == 0 ? v : e < 0 ? std::min(acc, v) : e > 0 ? std::max(acc, v) : acc + v;
            ++count[key];
        }
    }
    for (auto& [k, v] : sum) {
        if (extreme(k) == 0) v /= count[k];
    }
    return sum;
}

int64_t int_cursor(const std::map<std::string, std::string>& cursors, const std::string& name, int64_t fallback) {
    const auto it = cursors.find(name);
    if (it == cursors.end()) return fallback;
    int64_t value = 0;
    if (!absl::SimpleAtoi(it->second, &value)) {
        throw CheckpointError(absl::StrCat("checkpoint cursor '", name, "' is malformed: '", it->second, "'"));
    }
    return value;
}

dsa::MoeBalance* JobContext::balance() const { return expert_balance != nullptr ? expert_balance->tracker() : nullptr; }

bool run_stage(Stage& stage, JobContext& ctx) {
    const JobConfig& job = ctx.job;
    const int rank = ctx.comm.rank();
    const std::string name = stage.name();
    const int64_t total = stage.total_steps();
    int64_t& done = stage.steps_done(ctx.state);
    if (done >= total) return true;
    stage.begin(done == 0);
    const auto t0 = Clock::now();
    const int64_t first = done;
    int64_t idle_steps = 0;
    while (done < total) {
        fault::kill_point("step_start", ctx.state.job_step() + 1, rank);
        const StepMeter meter(ctx.device);
        StepOutput out = stage.step(done);
        if (ctx.expert_balance != nullptr) ctx.expert_balance->take_metrics(out.metrics);
        ++done;
        ctx.state.skipped_steps += out.skipped_steps;
        std::map<std::string, double> m = reduce_metrics(out.metrics, ctx.comm);
        meter.finish(m, stage.globalize(m, ctx.data_parallel_size()));
        ctx.metrics->write(name, done, m);
        if (rank == 0 && (done % job.trainer.log_every == 0 || done == total)) {
            const double per_step =
                std::chrono::duration<double>(Clock::now() - t0).count() / static_cast<double>(done - first);
            std::printf("[%s] step %ld/%ld  %s%s  eta %s\n", name.c_str(), long(done), long(total),
                        stage.console_text(m).c_str(), meter.text(m).c_str(), eta(per_step, total - done).c_str());
            std::fflush(stdout);
        }
        stage.after_step(done);
        // Steps that trained nothing: an update skipped for non-finite gradients (diverged), or every sample of an RL
        // step failed (a broken environment or reward). The reduced metrics are the same on every rank, so every rank
        // stops here together, before this step's checkpoint (its weights may be NaN; it would refuse them anyway).
        const auto metric = [&m](const char* key) { return m.count(key) != 0 ? m.at(key) : 0.0; };
        const bool skipped = metric("skipped_steps") > 0;
        const bool all_failed = metric("samples") > 0 && metric("reward_failed") >= metric("samples");
        const bool empty = !out.nothing_to_train.empty();
        idle_steps = skipped || all_failed || empty ? idle_steps + 1 : 0;
        if (job.trainer.max_skipped_steps > 0 && idle_steps >= job.trainer.max_skipped_steps) {
            throw Error(absl::StrCat(
                name, " step ", done, ": the last ", idle_steps, " steps trained nothing (trainer.max_skipped_steps): ",
                empty        ? out.nothing_to_train
                : all_failed ? "every sample failed (the warnings above name the failures: a broken environment "
                               "or reward?)"
                             : "their optimizer updates were skipped for non-finite gradients — training has diverged "
                               "(NaN or infinite weights, a learning rate too high, non-finite inputs)",
                ". The checkpoints before stay as they were"));
        }
        const bool stop = stop_requested(ctx.comm);
        if (stop || checkpoint_due(done, job.trainer.checkpoint.every_steps) || done == total) ctx.checkpoint();
        if (stop) {
            if (rank == 0) {
                DSRL_LOG(info) << "stopping after " << name << " step " << done
                               << " (signal); resume with --resume auto";
            }
            return false;
        }
    }
    return true;
}

}  // namespace dsrl::trainer
