#include "core/main_guard.h"

#include <mpi.h>

#include <cstdio>
#include <exception>
#include <string>

#include <c10/util/Exception.h>

#include "core/error.h"

namespace dsrl {

int report_fatal(const char* kind, const char* message) {
    int initialized = 0;
    int finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    int rank = 0;
    int size = 1;
    const bool mpi_live = initialized && !finalized;
    if (mpi_live) {
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &size);
    }
    std::string line = std::string("[rank ") + std::to_string(rank) + "] " + kind + ": " + message;
    if (line.back() != '\n') line.push_back('\n');
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
    if (mpi_live && size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
}

int guarded_main(const std::function<int()>& body) {
    try {
        return body();
    } catch (const ConfigError& e) {
        return report_fatal("config error", e.what());
    } catch (const Error& e) {
        return report_fatal("error", e.what());
    } catch (const c10::Error& e) {
        // what_without_backtrace keeps the line readable; the backtrace is only noise for users.
        return report_fatal("error", e.what_without_backtrace());
    } catch (const std::exception& e) {
        return report_fatal("error", e.what());
    } catch (...) {
        return report_fatal("error", "unknown exception");
    }
}

}  // namespace dsrl
