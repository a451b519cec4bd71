// The process-level watchdog of the distributed runtime (SPEC §8; Note [Dist watchdog] in
// docs/distributed.md). Every collective registers {op, group, start, timeout} while it is in flight. A
// background thread polls the registry; when an entry outlives its timeout it prints
//   [rank r] dist timeout: all_reduce on group 'dp' did not complete within 600 s
// runs the entry's abort hook (ncclCommAbort for NCCL) and calls MPI_Abort, so that no rank hangs. It is the
// only place in the libraries that ends the process (STYLE.md "Errors").
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace dsrl::dist {

class Watchdog {
public:
    using Clock = std::chrono::steady_clock;

    struct Entry {
        std::string op;     ///< "all_reduce", "recv_bytes", ...
        std::string group;  ///< the group's name
        std::string backend;
        Clock::time_point start;
        double timeout_s = 0;  ///< <= 0: never times out
        /// Polled by the watchdog; returns true once the operation completed (asynchronous GPU work). Empty
        /// for blocking host calls, which remove their entry themselves (see Scope).
        std::function<bool()> done;
        /// Run before MPI_Abort on timeout (e.g. ncclCommAbort). May be empty.
        std::function<void()> abort;
        /// Owner tag so that a communicator can drop its entries (forget) before it is destroyed.
        uint64_t owner = 0;
    };

    static Watchdog& instance();

    /// Registers an in-flight operation; returns its id.
    uint64_t add(Entry entry);
    /// Removes an entry (no-op when already gone).
    void remove(uint64_t id);
    /// Registers a health check polled on every tick: returns a non-empty message on failure, which is
    /// printed as "[rank r] dist error: <message>" before `abort` and MPI_Abort run.
    void add_health_check(uint64_t owner, std::function<std::string()> check, std::function<void()> abort);
    /// Drops every entry and health check of `owner`.
    void forget(uint64_t owner);
    /// A fresh owner tag.
    uint64_t new_owner();
    /// Number of registered entries (tests).
    size_t num_pending() const;

    /// RAII registration of a blocking host call (MPI): registered for the scope's lifetime.
    class Scope {
    public:
        Scope(const char* op, const std::string& group, double timeout_s);
        ~Scope();
        Scope(const Scope&) = delete;
        Scope& operator=(const Scope&) = delete;

    private:
        uint64_t id_ = 0;
    };

    ~Watchdog();

private:
    Watchdog();
    struct State;
    State* state_;
};

}  // namespace dsrl::dist
