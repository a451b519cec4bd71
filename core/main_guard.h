// The only place where dsrl ends a process (STYLE.md "Errors"). A binary's main() is
//   int main(int argc, char** argv) { return dsrl::guarded_main([&] { return run(argc, argv); }); }
// An exception escaping `body` is printed as one line "[rank r] error: <message>" on stderr; when MPI is
// running with more than one process, MPI_Abort then ends every rank so that no peer waits forever.
#pragma once

#include <functional>

namespace dsrl {

/// Runs `body`, returning its exit code, or 1 after printing an escaped exception (see banner).
int guarded_main(const std::function<int()>& body);

/// Prints "[rank r] error: message" and, under multi-process MPI, aborts the job (does not return then).
/// Returns the exit code to use otherwise.
int report_fatal(const char* kind, const char* message);

}  // namespace dsrl
