#include "core/dist/bootstrap.h"

#include <mpi.h>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <exception>
#include <thread>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>

#include "core/dist/backend.h"
#include "core/dist/config.h"
#include "core/env.h"
#include "core/error.h"
#include "core/logging.h"

namespace dsrl::dist {

int detect_local_rank(int* local_size) {
    const char* env_rank = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    const char* env_size = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    int rank = 0;
    int size = 0;
    if (env_rank != nullptr && env_size != nullptr && absl::SimpleAtoi(env_rank, &rank) &&
        absl::SimpleAtoi(env_size, &size) && rank >= 0 && rank < size) {
        if (local_size != nullptr) *local_size = size;
        return rank;
    }
    // Not launched by Open MPI's mpirun (or a launcher that does not export it): ask MPI which ranks share
    // this node's memory.
    MPI_Comm node = MPI_COMM_NULL;
    int rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    if (rc != MPI_SUCCESS) throw DistError("dist bootstrap: MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) failed");
    MPI_Comm_rank(node, &rank);
    MPI_Comm_size(node, &size);
    MPI_Comm_free(&node);
    if (local_size != nullptr) *local_size = size;
    return rank;
}

int64_t effective_timeout_s(const DistConfig& cfg) {
    int64_t t = cfg.timeout_s;
    const char* key = "dist.timeout_s";
    if (!env::get_string("DSRL_DIST_TIMEOUT_S").empty()) {
        t = env::get_int("DSRL_DIST_TIMEOUT_S");
        key = "DSRL_DIST_TIMEOUT_S";
    }
    if (t < 0) throw ConfigError(absl::StrCat(key, " must be >= 0 seconds (0 disables the watchdog), got ", t));
    return t;
}

namespace {

// Note [Launcher death]: Open MPI starts every rank in its own process group, so when mpirun (or a node's
// daemon) dies by SIGKILL — a launcher or node failure, a scheduler killing the launcher — nothing kills the
// ranks: they run on unsupervised, writing checkpoints into a run directory that a restarted job may already
// want (issue 26). Seen: orphaned ranks finishing the whole job after their mpirun was killed. A rank whose
// parent changes has lost its launcher; it says so and exits. Polled, not PR_SET_PDEATHSIG: that signal
// follows the death of the parent *thread* that forked us, which a launcher's helper thread can be.
void watch_launcher(int rank) {
    const pid_t launcher = ::getppid();
    std::thread([launcher, rank] {
        while (true) {
            std::this_thread::sleep_for(std::chrono::milliseconds(250));
            if (::getppid() != launcher) {
                const std::string line =
                    absl::StrCat("[rank ", rank, "] the launcher (pid ", launcher,
                                 ") died: ending this rank (DSRL_EXIT_WITH_LAUNCHER=0 keeps it)\n");
                (void)!::write(STDERR_FILENO, line.data(), line.size());
                ::_exit(1);
            }
        }
    }).detach();
}

// Started by a launcher (mpirun, srun, a PMIx/PMI server) rather than as a singleton from a shell.
bool launched() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "SLURM_STEP_ID"}) {
        if (std::getenv(v) != nullptr) return true;
    }
    return false;
}

}  // namespace

Bootstrap::Bootstrap(int* argc, char*** argv) : uncaught_at_start_(std::uncaught_exceptions()) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (finalized) throw DistError("dist bootstrap: MPI was already finalized in this process");
        MPI_Query_thread(&thread_level_);
    } else {
        int provided = 0;
        int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
        if (rc != MPI_SUCCESS) throw DistError(absl::StrCat("dist bootstrap: MPI_Init_thread failed with code ", rc));
        owns_mpi_ = true;
        if (provided < MPI_THREAD_FUNNELED) {
            // MPI_Init_thread returns the best level it supports; FUNNELED is the floor we need (the watchdog
            // thread only calls MPI_Abort).
            throw DistError(absl::StrCat("dist bootstrap: MPI provides thread level ", provided,
                                         ", below MPI_THREAD_FUNNELED (", MPI_THREAD_FUNNELED,
                                         "); rebuild Open MPI with thread support"));
        }
        thread_level_ = provided;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size_);
    log::set_rank(world_rank_);
    if (owns_mpi_ && launched() && env::get_bool("DSRL_EXIT_WITH_LAUNCHER")) watch_launcher(world_rank_);
    local_rank_ = detect_local_rank(&local_size_);
#ifdef DSRL_WITH_CUDA
    const int num_gpus = detail::cuda_device_count();
    if (num_gpus > 0) {
        device_ = local_rank_ % num_gpus;
        detail::set_cuda_device(device_);
        if (local_size_ > num_gpus) {
            DSRL_LOG(warn) << "dist bootstrap: " << local_size_ << " ranks on this node share " << num_gpus
                           << " visible GPUs; local rank " << local_rank_ << " uses cuda:" << device_;
        }
    }
#endif
    DSRL_LOG(info) << "dist bootstrap: world size " << world_size_ << ", local size " << local_size_
                   << ", thread level " << thread_level_ << ", device "
                   << (device_ >= 0 ? absl::StrCat("cuda:", device_) : std::string("cpu"));
}

Bootstrap::~Bootstrap() {
    if (!owns_mpi_) return;
    // Note [No finalize while unwinding]: MPI_Finalize waits for the peers; when an exception is on its way
    // to main_guard, finalizing here would hang this rank and keep main_guard from calling MPI_Abort.
    if (std::uncaught_exceptions() > uncaught_at_start_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

}  // namespace dsrl::dist
