#include "trainer/run_dir.h"

#include <unistd.h>

#include <ATen/ops/tensor.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/strip.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <memory>
#include <thread>

#include "core/error.h"
#include "core/logging.h"
#include "trainer/checkpoint.h"

namespace dsrl::trainer {
namespace {

constexpr const char* kJobLock = ".dsrl.lock";
constexpr const char* kRanksLock = ".dsrl.ranks.lock";
constexpr auto kPoll = std::chrono::milliseconds(100);

// Rank 0's progress, broadcast after every poll so that all ranks leave the wait together (the other ranks
// never sit in one long collective, which dist.timeout_s would end).
enum Status : int32_t { kWaiting = 0, kLocked = 1, kUnsupported = 2, kTimedOut = 3 };

int32_t share_status(int32_t status, const dist::Communicator& comm) {
    if (comm.size() <= 1) return status;
    at::Tensor t = at::tensor(std::vector<int32_t>{status});
    comm.broadcast(t, 0);
    return t.item<int32_t>();
}

std::string holder_of(const fs::FileLock& lock) {
    std::string text(absl::StripAsciiWhitespace(lock.read_content()));
    return text.empty() ? "an unknown process (the lock file is empty)" : text;
}

// Rank 0's side for one directory: a small state machine advanced by one non-blocking attempt per poll.
class Acquirer {
public:
    Acquirer(const std::string& dir, const std::string& key, const std::string& holder, bool will_wait)
        : dir_(dir),
          key_(key),
          holder_(holder),
          job_(fs::join(dir, kJobLock)),
          ranks_(fs::join(dir, kRanksLock)),
          said_waiting_(!will_wait),
          said_ranks_(!will_wait) {}

    int32_t poll() {
        if (!have_job_) {
            const fs::FileLock::Result r = job_.try_lock(fs::FileLock::Mode::kExclusive);
            if (r == fs::FileLock::Result::kUnsupported) return unsupported(job_);
            if (r == fs::FileLock::Result::kBusy) {
                if (!said_waiting_) {
                    DSRL_LOG(warn) << key_ << " " << dir_ << " is locked by another job (" << holder_of(job_)
                                   << "); waiting for it to end";
                    said_waiting_ = true;
                }
                return kWaiting;
            }
            have_job_ = true;
        }
        // Every process of an earlier job holds .dsrl.ranks.lock shared until it exits.
        const fs::FileLock::Result r = ranks_.try_lock(fs::FileLock::Mode::kExclusive);
        if (r == fs::FileLock::Result::kUnsupported) return unsupported(ranks_);
        if (r == fs::FileLock::Result::kBusy) {
            if (!said_ranks_) {
                DSRL_LOG(warn) << key_ << " " << dir_ << ": processes of an earlier job are still running there; "
                               << "waiting for them to exit";
                said_ranks_ = true;
            }
            return kWaiting;
        }
        ranks_.try_lock(fs::FileLock::Mode::kShared);  // this rank's own share, like every other rank's
        job_.write_content(holder_ + "\n");
        return kLocked;
    }

    std::string refusal(double wait_s) const {
        if (!have_job_) {
            return absl::StrCat(key_, ": ", dir_, " is in use by another dsrl job (", holder_of(job_), "); waited ",
                                wait_s, " s (run.lock_wait_s). Wait for that job to end or stop it, or choose another ",
                                key_);
        }
        return absl::StrCat(key_, ": processes of an earlier job still run in ", dir_, " (they hold ", ranks_.path(),
                            "; its launcher may have died); waited ", wait_s,
                            " s (run.lock_wait_s). Stop them (e.g. pkill -f dsrl_train), then start this job again");
    }

    fs::FileLock take_job() { return std::move(job_); }
    fs::FileLock take_ranks() { return std::move(ranks_); }

private:
    int32_t unsupported(const fs::FileLock& lock) {
        DSRL_LOG(warn) << key_ << " " << dir_ << ": the file system does not support flock (" << lock.error_text()
                       << " on " << lock.path() << "): dsrl cannot keep a second job out of this directory; make "
                       << "sure only one job uses it";
        return kUnsupported;
    }

    std::string dir_, key_, holder_;
    fs::FileLock job_, ranks_;
    bool have_job_ = false;
    bool said_waiting_, said_ranks_;  // the "waiting" warnings, once each (not at all when the job will not wait)
};

}  // namespace

std::string lock_holder_text(const std::string& run_name, int ranks) {
    char host[256] = {};
    if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::snprintf(host, sizeof(host), "unknown");
    const std::time_t now = std::time(nullptr);
    std::tm utc{};
    ::gmtime_r(&now, &utc);
    char started[32] = {};
    std::strftime(started, sizeof(started), "%Y-%m-%dT%H:%M:%SZ", &utc);
    return absl::StrCat("host=", host, " pid=", ::getpid(), " started=", started, " run=", run_name, " ranks=", ranks);
}

RunDirLock RunDirLock::acquire(std::vector<Dir> dirs,
                               double wait_s,
                               const std::string& run_name,
                               const dist::Communicator& comm) {
    // One order for every job, so two jobs never end up holding one lock each.
    std::sort(dirs.begin(), dirs.end(), [](const Dir& a, const Dir& b) { return a.path < b.path; });
    dirs.erase(std::unique(dirs.begin(), dirs.end(), [](const Dir& a, const Dir& b) { return a.path == b.path; }),
               dirs.end());
    const bool root = comm.rank() == 0;
    const std::string holder = lock_holder_text(run_name, comm.size());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(wait_s);
    RunDirLock out;
    for (const Dir& d : dirs) {
        const std::string& dir = d.path;
        std::unique_ptr<Acquirer> acq;
        if (root) {
            fs::make_dirs(dir);
            acq = std::make_unique<Acquirer>(dir, d.key, holder, wait_s > 0);
        }
        int32_t status = kWaiting;
        while (status == kWaiting) {
            if (root) {
                status = acq->poll();
                if (status == kWaiting && std::chrono::steady_clock::now() >= deadline) status = kTimedOut;
            }
            status = share_status(status, comm);
            if (status == kWaiting) std::this_thread::sleep_for(kPoll);
        }
        if (status == kTimedOut) {
            std::string message = root ? acq->refusal(wait_s) : std::string();
            if (comm.size() > 1) comm.broadcast_bytes(message, 0);
            throw ConfigError(message);
        }
        if (status == kUnsupported) continue;
        out.dirs_.push_back(dir);
        if (root) {
            out.locks_.push_back(acq->take_job());
            out.locks_.push_back(acq->take_ranks());
            fs::remove_temporaries(dir);  // nobody else writes here now
        } else {
            fs::FileLock ranks(fs::join(dir, kRanksLock));
            if (ranks.try_lock(fs::FileLock::Mode::kShared) == fs::FileLock::Result::kAcquired) {
                out.locks_.push_back(std::move(ranks));
            }
        }
    }
    if (comm.size() > 1) comm.barrier();
    return out;
}

void prepare_fresh_start(const std::string& checkpoint_root,
                         const std::vector<std::string>& outputs,
                         bool overwrite,
                         const dist::Communicator& comm) {
    const std::string latest_path = fs::join(checkpoint_root, "latest");
    std::string message;
    int32_t earlier = 0;
    if (comm.rank() == 0 && fs::exists(latest_path)) {
        earlier = 1;
        const std::string latest(absl::StripAsciiWhitespace(fs::read_file(latest_path)));
        message = absl::StrCat(checkpoint_root, " holds the checkpoints of an earlier job (latest: ", latest,
                               "); this job starts fresh (no --resume). Pass --resume auto to continue that job, "
                               "--set run.overwrite=true to delete its checkpoints and outputs and start over, or "
                               "choose another run.output_dir");
    } else if (comm.rank() == 0) {
        // No checkpoint, but an earlier job's outputs (one killed before its first checkpoint): appending to its
        // metrics would mix two jobs' rows in one file.
        for (const std::string& p : outputs) {
            if (fs::exists(p) && (fs::is_dir(p) || fs::file_size(p) > 0)) {
                earlier = 1;
                message = absl::StrCat(p,
                                       " is an earlier job's output (it left no checkpoint); this job starts fresh "
                                       "(no --resume). Pass --resume auto to run that job again from its start, "
                                       "--set run.overwrite=true to delete its outputs and start over, or choose "
                                       "another run.output_dir");
                break;
            }
        }
    }
    earlier = share_status(earlier, comm);
    if (earlier == 0) return;
    if (!overwrite) {
        if (comm.size() > 1) comm.broadcast_bytes(message, 0);
        throw ConfigError(message);
    }
    if (comm.rank() == 0) {
        DSRL_LOG(warn) << "run.overwrite: deleting the earlier job's checkpoints in " << checkpoint_root
                       << " and its outputs before starting fresh";
        std::vector<std::string> doomed = outputs;
        doomed.push_back(latest_path);
        for (const std::string& name : step_dirs(checkpoint_root)) doomed.push_back(fs::join(checkpoint_root, name));
        for (const std::string& p : doomed) fs::remove_tree(p);
    }
    if (comm.size() > 1) comm.barrier();
}

}  // namespace dsrl::trainer
