#include "core/dist/watchdog.h"

#include <mpi.h>

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <absl/strings/str_format.h>

namespace dsrl::dist {

namespace {

int world_rank_or_zero() {
    int initialized = 0;
    int finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    int rank = 0;
    if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

// Note [Dist watchdog]: the message is written with one fwrite so lines of different ranks do not
// interleave, then MPI_Abort ends every rank of the job (mpirun reports the abort and exits non-zero).
[[noreturn]] void die(const std::string& message, const std::function<void()>& abort_hook) {
    const std::string line = absl::StrFormat("[rank %d] %s\n", world_rank_or_zero(), message);
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
    if (abort_hook) abort_hook();
    int initialized = 0;
    int finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, 1);
    // Without MPI there are no peers to release; std::_Exit keeps destructors of a wedged process from running.
    std::_Exit(1);
}

std::string format_seconds(double s) {
    return s == static_cast<double>(static_cast<int64_t>(s)) ? absl::StrFormat("%d", static_cast<int64_t>(s))
                                                             : absl::StrFormat("%.3g", s);
}

}  // namespace

struct Watchdog::State {
    mutable std::mutex mu;
    std::condition_variable cv;
    std::unordered_map<uint64_t, Entry> entries;
    struct Health {
        uint64_t owner;
        std::function<std::string()> check;
        std::function<void()> abort;
    };
    std::vector<Health> health;
    uint64_t next_id = 1;
    uint64_t next_owner = 1;
    bool stop = false;
    std::thread thread;

    void ensure_thread() {
        if (!thread.joinable()) thread = std::thread([this] { loop(); });
    }

    void loop() {
        std::unique_lock<std::mutex> lock(mu);
        while (!stop) {
            cv.wait_for(lock, std::chrono::milliseconds(100));
            if (stop) break;
            const auto now = Clock::now();
            for (auto it = entries.begin(); it != entries.end();) {
                Entry& e = it->second;
                if (e.done && e.done()) {
                    it = entries.erase(it);
                    continue;
                }
                const double elapsed = std::chrono::duration<double>(now - e.start).count();
                if (e.timeout_s > 0 && elapsed > e.timeout_s) {
                    die(absl::StrFormat("dist timeout: %s on group '%s' did not complete within %s s (%s backend); "
                                        "aborting the job (a peer rank is stuck, dead or skipped this operation)",
                                        e.op, e.group, format_seconds(e.timeout_s), e.backend),
                        e.abort);
                }
                ++it;
            }
            for (const Health& h : health) {
                std::string failure = h.check();
                if (!failure.empty()) die("dist error: " + failure + "; aborting the job", h.abort);
            }
        }
    }
};

Watchdog& Watchdog::instance() {
    // Leaked on purpose: the thread may still be polling while static destructors of other units run.
    static Watchdog* w = new Watchdog();
    return *w;
}

Watchdog::Watchdog() : state_(new State()) {}

Watchdog::~Watchdog() {
    {
        std::lock_guard<std::mutex> lock(state_->mu);
        state_->stop = true;
    }
    state_->cv.notify_all();
    if (state_->thread.joinable()) state_->thread.join();
    delete state_;
}

uint64_t Watchdog::add(Entry entry) {
    std::lock_guard<std::mutex> lock(state_->mu);
    const uint64_t id = state_->next_id++;
    state_->entries.emplace(id, std::move(entry));
    state_->ensure_thread();
    return id;
}

void Watchdog::remove(uint64_t id) {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->entries.erase(id);
}

void Watchdog::add_health_check(uint64_t owner, std::function<std::string()> check, std::function<void()> abort) {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->health.push_back({owner, std::move(check), std::move(abort)});
    state_->ensure_thread();
}

void Watchdog::forget(uint64_t owner) {
    std::lock_guard<std::mutex> lock(state_->mu);
    for (auto it = state_->entries.begin(); it != state_->entries.end();) {
        it = it->second.owner == owner ? state_->entries.erase(it) : std::next(it);
    }
    std::erase_if(state_->health, [owner](const State::Health& h) { return h.owner == owner; });
}

uint64_t Watchdog::new_owner() {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->next_owner++;
}

size_t Watchdog::num_pending() const {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->entries.size();
}

Watchdog::Scope::Scope(const char* op, const std::string& group, double timeout_s) {
    if (timeout_s <= 0) return;
    Entry e;
    e.op = op;
    e.group = group;
    e.backend = "MPI";
    e.start = Clock::now();
    e.timeout_s = timeout_s;
    id_ = Watchdog::instance().add(std::move(e));
}

Watchdog::Scope::~Scope() {
    if (id_ != 0) Watchdog::instance().remove(id_);
}

}  // namespace dsrl::dist
