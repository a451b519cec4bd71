#include "core/main_guard.h"

#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <new>
#include <string>
#include <thread>

#include <c10/util/Exception.h>

#include "core/error.h"

namespace dsrl {

namespace {

// The launcher's rank and size before MPI is up (a config error is found before MPI_Init): Open MPI, PMIx/PMI
// (MPICH, Slurm's PMI) and Slurm set them in every process they start; none: one process.
int env_int(std::initializer_list<const char*> names, int fallback) {
    for (const char* name : names) {
        const char* v = std::getenv(name);
        if (v != nullptr && *v != '\0') return std::atoi(v);
    }
    return fallback;
}

// What a job's memory grows with, for the out-of-memory errors (which name no key themselves).
constexpr const char* kMemoryKeys =
    ". What sizes a job's memory: the model (model.*, or model.path's config.json), trainer.micro_batch_size, "
    "rollout.max_batch_size, rollout.prompts_per_step x rollout.group_size, rollout.max_new_tokens, "
    "rollout.cache_blocks / rollout.cache_memory_fraction; lower them, or spread the model with "
    "dist.expert_parallel_size and trainer.zero_stage over more ranks";

}  // namespace

int report_fatal(const char* kind, const char* message, bool same_on_every_rank) {
    int initialized = 0;
    int finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    int rank = env_int({"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"}, 0);
    int size = env_int({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"}, 1);
    const bool mpi_live = initialized && !finalized;
    if (mpi_live) {
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &size);
    }
    // Note [One message per error]: every rank reads the same config, so every rank finds the same config error;
    // rank 0 reports it and the launcher ends the job when rank 0 exits. The other ranks wait a moment first and
    // report it only if they are still alive then — an error of their own, which must not be lost.
    if (same_on_every_rank && rank != 0 && size > 1) std::this_thread::sleep_for(std::chrono::seconds(3));
    std::string line = std::string("[rank ") + std::to_string(rank) + "] " + kind + ": " + message;
    if (line.back() != '\n') line.push_back('\n');
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
    if (mpi_live && size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
}

int guarded_main(const std::function<int()>& body) {
    // MKL (LibTorch's CPU BLAS) picks kernels by the buffers' alignment unless told otherwise, so two runs of one job
    // could round differently. Strict conditional numerical reproducibility makes them agree bit for bit (exact
    // resume, layouts compared against each other); it must be set before MKL's first call. A user's setting wins.
    setenv("MKL_CBWR", "AUTO,STRICT", /*overwrite=*/0);
    try {
        return body();
    } catch (const ConfigError& e) {
        return report_fatal("config error", e.what(), /*same_on_every_rank=*/true);
    } catch (const Error& e) {
        return report_fatal("error", e.what());
    } catch (const c10::OutOfMemoryError& e) {
        const std::string m = std::string("out of device memory: ") + e.what_without_backtrace() + kMemoryKeys;
        return report_fatal("error", m.c_str());
    } catch (const c10::Error& e) {
        // what_without_backtrace keeps the line readable; the backtrace is only noise for users.
        return report_fatal("error", e.what_without_backtrace());
    } catch (const std::bad_alloc&) {
        const std::string m =
            std::string("out of memory: an allocation of host memory failed (std::bad_alloc)") + kMemoryKeys;
        return report_fatal("error", m.c_str());
    } catch (const std::exception& e) {
        return report_fatal("error", e.what());
    } catch (...) {
        return report_fatal("error", "unknown exception");
    }
}

}  // namespace dsrl
