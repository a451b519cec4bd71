// One job per run directory (issue 26; docs/checkpoints.md "Run directory lock"). A job locks every directory
// it writes — run.output_dir and, when it lies elsewhere, trainer.checkpoint.dir — for its whole life:
//
//   <dir>/.dsrl.lock        rank 0 holds an exclusive flock; its content names the holder (host, pid, start)
//   <dir>/.dsrl.ranks.lock  every rank holds a shared flock
//
// A new job's rank 0 takes the exclusive lock and then, briefly, an exclusive lock on .dsrl.ranks.lock: the
// second waits until every process of an earlier job on the directory has exited — also the ranks that
// outlive a killed mpirun for a second or two (Open MPI starts each rank in its own process group). It waits
// up to run.lock_wait_s for both, then refuses with a ConfigError naming the holder. Once it holds them it
// removes the temporary files that killed writers leave (fs::remove_temporaries). The kernel drops flocks
// when a process dies, so a killed job never leaves a stale lock. On a file system without flock the job
// warns that it cannot exclude a second job and runs unlocked.
#pragma once

#include <string>
#include <vector>

#include "core/dist/communicator.h"
#include "core/fs.h"

namespace dsrl::trainer {

class RunDirLock {
public:
    RunDirLock() = default;
    RunDirLock(RunDirLock&&) = default;
    RunDirLock& operator=(RunDirLock&&) = default;

    struct Dir {
        std::string path;
        std::string key;  ///< the setting that names it, for messages: "run.output_dir"
    };

    /// Collective over `comm`. Creates each of `dirs` (rank 0) and locks them in sorted order, waiting up to
    /// `wait_s` seconds in all. Throws ConfigError on every rank, naming the directory, its key and the
    /// holder, when the wait runs out. Then rank 0 removes stale temporary files in each directory.
    static RunDirLock acquire(std::vector<Dir> dirs,
                              double wait_s,
                              const std::string& run_name,
                              const dist::Communicator& comm);

    /// The directories locked (empty where the file system has no flock).
    const std::vector<std::string>& locked_dirs() const { return dirs_; }

private:
    std::vector<std::string> dirs_;
    std::vector<fs::FileLock> locks_;
};

/// A fresh start (no --resume) where an earlier job left checkpoints (`<checkpoint_root>/latest`): saving into
/// them would mix two jobs' steps (and keep_last would delete the new job's first checkpoint, the oldest by
/// number). Likewise where it left no checkpoint but one of `outputs` (a non-empty file or a directory): its
/// metrics rows would mix with the new job's. Refused with a ConfigError naming the path and the ways out, unless
/// `overwrite` (run.overwrite): then rank 0 deletes the earlier checkpoints and `outputs` (metrics, eval.json, tb/)
/// first, with a warning. Collective; call it under the run lock.
void prepare_fresh_start(const std::string& checkpoint_root,
                         const std::vector<std::string>& outputs,
                         bool overwrite,
                         const dist::Communicator& comm);

/// "host=<host> pid=<pid> started=<UTC time> run=<name> ranks=<n>": what .dsrl.lock records.
std::string lock_holder_text(const std::string& run_name, int ranks);

}  // namespace dsrl::trainer
