// Helpers of the tests that run under mpirun (MAIN mpi): the world group and whether MPI is up.
#pragma once

#include <mpi.h>

#include "core/dist/communicator.h"

namespace dsrl::testing {

/// True under mpirun (mpi_gtest_main initialized MPI); a test binary run alone skips its multi-rank tests.
inline bool under_mpi() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    return initialized != 0;
}

/// The world group, made once (60 s watchdog).
inline const dist::Communicator& world() {
    static const dist::Communicator w = dist::Communicator::world(60);
    return w;
}

}  // namespace dsrl::testing
