// Process bootstrap of the distributed runtime (SPEC §8): owns MPI init/finalize, knows the world rank and
// size, the node-local rank and the GPU this process drives (local rank modulo visible GPUs).
//   int main(int argc, char** argv) {
//       return dsrl::guarded_main([&] {
//           dsrl::dist::Bootstrap boot(&argc, &argv);
//           auto world = dsrl::dist::Communicator::world(boot.timeout_s(cfg.dist));
//           ...
//       });
//   }
// When MPI is already initialized (e.g. by a test main) the bootstrap reuses it and does not finalize it.
#pragma once

#include <cstdint>

namespace dsrl {
struct DistConfig;
}

namespace dsrl::dist {

class Bootstrap {
public:
    /// Initializes MPI (MPI_THREAD_MULTIPLE when the library offers it, else MPI_THREAD_FUNNELED), finds the
    /// local rank (OMPI_COMM_WORLD_LOCAL_RANK, else MPI_Comm_split_type SHARED) and selects the GPU
    /// `local_rank % num_visible_gpus` as the current CUDA device. Calls dsrl::log::set_rank(world_rank).
    /// Throws dsrl::DistError when MPI cannot be initialized or reports a thread level below FUNNELED.
    Bootstrap(int* argc, char*** argv);
    /// Finalizes MPI when this object initialized it, except while an exception unwinds the stack: then
    /// main_guard must still be able to MPI_Abort the job (finalizing would wait for the peers forever).
    ~Bootstrap();
    Bootstrap(const Bootstrap&) = delete;
    Bootstrap& operator=(const Bootstrap&) = delete;

    int world_rank() const { return world_rank_; }
    int world_size() const { return world_size_; }
    int local_rank() const { return local_rank_; }
    int local_size() const { return local_size_; }
    /// The CUDA device of this process, or -1 when no GPU is visible (or CUDA is compiled out).
    int device() const { return device_; }
    /// The MPI thread level obtained (MPI_THREAD_FUNNELED or MPI_THREAD_MULTIPLE, or the existing one).
    int thread_level() const { return thread_level_; }
    bool owns_mpi() const { return owns_mpi_; }

private:
    int world_rank_ = 0;
    int world_size_ = 1;
    int local_rank_ = 0;
    int local_size_ = 1;
    int device_ = -1;
    int thread_level_ = 0;
    bool owns_mpi_ = false;
    int uncaught_at_start_ = 0;
};

/// The collective timeout in seconds: DSRL_DIST_TIMEOUT_S when set, else `cfg.timeout_s`. 0 disables the
/// watchdog; a negative value is a dsrl::ConfigError naming the key.
int64_t effective_timeout_s(const DistConfig& cfg);

/// The node-local rank: OMPI_COMM_WORLD_LOCAL_RANK when the launcher sets it, else the rank within
/// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED). Needs MPI to be initialized.
int detect_local_rank(int* local_size);

}  // namespace dsrl::dist
