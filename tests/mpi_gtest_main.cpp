// gtest main for tests run under mpirun: initializes MPI, runs the tests on every rank, and all-reduces a
// failure flag so that the job (and CTest) fails when any rank failed. Only rank 0 prints gtest's output
// unless DSRL_TEST_ALL_RANKS_OUTPUT=1.
#include <mpi.h>

#include <cstdlib>

#include <gtest/gtest.h>

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const char* all = std::getenv("DSRL_TEST_ALL_RANKS_OUTPUT");
    if (rank != 0 && !(all != nullptr && all[0] == '1')) {
        auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
        delete listeners.Release(listeners.default_result_printer());
    }
    const int local_failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
    int any_failed = 0;
    MPI_Allreduce(&local_failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (local_failed) std::fprintf(stderr, "[rank %d] tests FAILED on this rank\n", rank);
    MPI_Finalize();
    return any_failed;
}
