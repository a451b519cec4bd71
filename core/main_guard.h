// The only place where dsrl ends a process (STYLE.md "Errors"). A binary's main() is
//   int main(int argc, char** argv) { return dsrl::guarded_main([&] { return run(argc, argv); }); }
// An exception escaping `body` is printed as one line "[rank r] error: <message>" on stderr (r: the real rank, from
// MPI or, before MPI_Init, from the launcher's environment); when MPI is running with more than one process,
// MPI_Abort then ends every rank so that no peer waits forever. A config error, which every rank finds alike, is
// printed once, by rank 0 (Note [One message per error] in main_guard.cpp).
#pragma once

#include <functional>

namespace dsrl {

/// Runs `body`, returning its exit code, or 1 after printing an escaped exception (see banner).
int guarded_main(const std::function<int()>& body);

/// Prints "[rank r] error: message" and, under multi-process MPI, aborts the job (does not return then).
/// Returns the exit code to use otherwise. `same_on_every_rank`: ranks other than 0 of a multi-rank job wait 3 s
/// before printing, so the launcher, ending the job after rank 0's report, leaves one message.
int report_fatal(const char* kind, const char* message, bool same_on_every_rank = false);

}  // namespace dsrl
