// Front half of the Communicator (core/dist/communicator.h): argument checks, peer agreement, watchdog
// registration and dispatch to the MPI (CPU tensors) or NCCL (CUDA tensors) backend.
#include "core/dist/communicator.h"

#include <mpi.h>

#include <array>
#include <climits>
#include <exception>
#include <mutex>
#include <numeric>

#include <ATen/ops/empty.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

#include "core/dist/backend.h"
#include "core/dist/watchdog.h"
#include "core/env.h"
#include "core/error.h"

namespace dsrl::dist {

const char* reduce_op_name(ReduceOp op) {
    switch (op) {
        case ReduceOp::kSum:
            return "sum";
        case ReduceOp::kAvg:
            return "avg";
        case ReduceOp::kMax:
            return "max";
        case ReduceOp::kMin:
            return "min";
    }
    return "?";
}

namespace detail {

struct GroupState {
    GroupInfo info;
    bool member = false;
    std::mutex mu;  // guards lazy backend creation
    std::unique_ptr<Backend> mpi;
    std::unique_ptr<Backend> nccl;

    ~GroupState() {
        nccl.reset();
        mpi.reset();
        // MPI_Comm_free is collective; while an exception unwinds (peers may be stuck elsewhere) the
        // communicator is leaked instead, see Note [No finalize while unwinding] in bootstrap.cpp.
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized && info.comm != MPI_COMM_NULL && std::uncaught_exceptions() == 0) MPI_Comm_free(&info.comm);
    }
};

int mpi_count(int64_t count, const char* op, const std::string& group) {
    if (count > INT_MAX) {
        throw DistError(absl::StrCat("dist ", op, " on group '", group, "': ", count,
                                     " elements exceed MPI's int count limit (", INT_MAX,
                                     "); split the tensor into smaller chunks"));
    }
    return static_cast<int>(count);
}

void check_mpi(int rc, const char* what, const std::string& group) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    throw DistError(absl::StrCat("dist ", what, " on group '", group, "' failed in MPI: ", std::string(text, len)));
}

}  // namespace detail

namespace {

using detail::check_mpi;
using detail::GroupState;
using detail::mpi_count;

enum class OpCode : int64_t {
    kAllReduce = 1,
    kBroadcast,
    kAllGather,
    kAllGatherV,
    kReduceScatter,
    kAllToAll,
    kAllToAllV,
    kBarrier,
    kBroadcastBytes,
    kAllGatherBytes,
};

const char* op_name(int64_t code) {
    switch (static_cast<OpCode>(code)) {
        case OpCode::kAllReduce:
            return "all_reduce";
        case OpCode::kBroadcast:
            return "broadcast";
        case OpCode::kAllGather:
            return "all_gather";
        case OpCode::kAllGatherV:
            return "all_gather_v";
        case OpCode::kReduceScatter:
            return "reduce_scatter";
        case OpCode::kAllToAll:
            return "all_to_all";
        case OpCode::kAllToAllV:
            return "all_to_all_v";
        case OpCode::kBarrier:
            return "barrier";
        case OpCode::kBroadcastBytes:
            return "broadcast_bytes";
        case OpCode::kAllGatherBytes:
            return "all_gather_bytes";
    }
    return "unknown op";
}

bool peer_checks_enabled() {
    static const bool enabled = env::get_bool("DSRL_DIST_CHECK_PEERS");
    return enabled;
}

// Note [Peer agreement]: one MPI_Allgather of 6 int64 per collective lets every rank see what every other
// rank called. All ranks see the same table, so all of them throw the same DistError instead of hanging or
// corrupting memory. Fields: op, dtype, device type, then three op-specific values (named per op).
struct Sig {
    std::array<int64_t, 6> v{};
};

struct SigNames {
    std::array<const char*, 3> names{nullptr, nullptr, nullptr};
    // Field i of the op-specific values must agree across ranks when agree[i] is true.
    std::array<bool, 3> agree{true, true, true};
};

std::string describe(const Sig& s, const SigNames& n) {
    std::string out = absl::StrCat(op_name(s.v[0]), "(");
    std::vector<std::string> parts;
    if (s.v[1] >= 0) parts.push_back(absl::StrCat("dtype=", c10::toString(static_cast<c10::ScalarType>(s.v[1]))));
    if (s.v[2] >= 0) {
        parts.push_back(absl::StrCat("device=", c10::DeviceTypeName(static_cast<c10::DeviceType>(s.v[2]), true)));
    }
    for (int i = 0; i < 3; ++i) {
        if (n.names[i] != nullptr) parts.push_back(absl::StrCat(n.names[i], "=", s.v[3 + i]));
    }
    return absl::StrCat(out, absl::StrJoin(parts, ", "), ")");
}

std::vector<Sig> exchange(const GroupState& g, const Sig& mine, const char* op) {
    std::vector<Sig> all(g.info.size);
    check_mpi(MPI_Allgather(mine.v.data(), 6, MPI_INT64_T, all.data(), 6, MPI_INT64_T, g.info.comm), op, g.info.name);
    return all;
}

void verify(const GroupState& g, const std::vector<Sig>& all, const SigNames& names) {
    const Sig& first = all[0];
    for (int r = 1; r < g.info.size; ++r) {
        const Sig& s = all[r];
        bool same = s.v[0] == first.v[0] && s.v[1] == first.v[1] && s.v[2] == first.v[2];
        for (int i = 0; same && i < 3; ++i) same = !names.agree[i] || s.v[3 + i] == first.v[3 + i];
        if (same) continue;
        const bool same_op = s.v[0] == first.v[0];
        throw DistError(
            absl::StrCat("dist ", op_name(g.info.rank < g.info.size ? all[g.info.rank].v[0] : first.v[0]),
                         " on group '", g.info.name, "' (size ", g.info.size, "): ranks disagree: rank 0 (world rank ",
                         g.info.world_ranks[0], ") called ", describe(first, names), " but rank ", r, " (world rank ",
                         g.info.world_ranks[r], ") called ", describe(s, names), "; ",
                         same_op ? "every rank must pass matching tensors"
                                 : "every rank of a group must call the same collectives in the same order"));
    }
}

SigNames names_of(const char* a, const char* b = nullptr, const char* c = nullptr) {
    SigNames n;
    n.names = {a, b, c};
    return n;
}

Sig make_sig(OpCode op, const at::Tensor* t, int64_t a, int64_t b = 0, int64_t c = 0) {
    Sig s;
    s.v = {static_cast<int64_t>(op),
           t != nullptr ? static_cast<int64_t>(t->scalar_type()) : -1,
           t != nullptr ? static_cast<int64_t>(t->device().type()) : -1,
           a,
           b,
           c};
    return s;
}

void agree(const GroupState& g, const char* op, const Sig& mine, const SigNames& names) {
    if (!peer_checks_enabled() || g.info.size == 1) return;
    verify(g, exchange(g, mine, op), names);
}

bool supported_dtype(c10::ScalarType t) {
    switch (t) {
        case at::kFloat:
        case at::kDouble:
        case at::kBFloat16:
        case at::kHalf:
        case at::kLong:
        case at::kInt:
        case at::kByte:
            return true;
        default:
            return false;
    }
}

void check_tensor(const char* op, const at::Tensor& t, bool needs_contiguous) {
    TORCH_CHECK(t.defined(), "dist ", op, ": expected a defined tensor, got an undefined one");
    TORCH_CHECK(supported_dtype(t.scalar_type()), "dist ", op, ": unsupported dtype ", t.scalar_type(),
                "; expected one of Float, Double, BFloat16, Half, Long, Int, Byte");
    TORCH_CHECK(t.device().is_cpu() || t.device().is_cuda(), "dist ", op, ": expected a CPU or CUDA tensor, got ",
                t.device());
    if (needs_contiguous) {
        TORCH_CHECK(t.is_contiguous(), "dist ", op,
                    ": expected a contiguous tensor (it is updated in place), got sizes ", t.sizes(), " strides ",
                    t.strides());
    }
}

void check_rank_arg(const GroupState& g, const char* op, const char* what, int r) {
    TORCH_CHECK(r >= 0 && r < g.info.size, "dist ", op, " on group '", g.info.name, "': ", what,
                " must be a group rank in [0, ", g.info.size, "), got ", r);
}

void check_tag(const char* op, int tag) {
    TORCH_CHECK(tag >= 0 && tag <= 32767, "dist ", op, ": tag must be in [0, 32767], got ", tag);
}

int64_t trailing_numel(const at::Tensor& t) {
    int64_t n = 1;
    for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
    return n;
}

std::vector<int64_t> with_dim0(const at::Tensor& t, int64_t n0) {
    std::vector<int64_t> sizes(t.sizes().begin(), t.sizes().end());
    sizes[0] = n0;
    return sizes;
}

detail::Backend& backend_for(GroupState& g, const at::Tensor& t, const char* op) {
    std::lock_guard<std::mutex> lock(g.mu);
    if (t.device().is_cpu()) {
        if (!g.mpi) g.mpi = detail::make_mpi_backend(g.info);
        return *g.mpi;
    }
#ifdef DSRL_WITH_CUDA
    if (!g.nccl) {
        Watchdog::Scope scope("nccl_init", g.info.name, static_cast<double>(g.info.timeout_s));
        g.nccl = detail::make_nccl_backend(g.info);
    }
    return *g.nccl;
#else
    throw DistError(absl::StrCat("dist ", op, " on group '", g.info.name,
                                 "': got a CUDA tensor but dsrl was built "
                                 "without CUDA (configure with -DDSRL_WITH_CUDA=ON for the NCCL backend)"));
#endif
}

std::shared_ptr<GroupState> make_state(MPI_Comm comm, const std::string& name, int64_t timeout_s) {
    auto st = std::make_shared<GroupState>();
    st->member = true;
    st->info.comm = comm;
    st->info.name = name;
    st->info.timeout_s = timeout_s;
    // Errors come back as codes and become DistErrors naming the op (check_mpi), not silent aborts.
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm, &st->info.rank);
    MPI_Comm_size(comm, &st->info.size);
    int world_rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    st->info.world_ranks.resize(st->info.size);
    check_mpi(MPI_Allgather(&world_rank, 1, MPI_INT, st->info.world_ranks.data(), 1, MPI_INT, comm), "split", name);
    return st;
}

template <class Buf>
void broadcast_bytes_impl(const GroupState& g, Buf& buf, int root) {
    check_rank_arg(g, "broadcast_bytes", "root", root);
    Watchdog::Scope scope("broadcast_bytes", g.info.name, static_cast<double>(g.info.timeout_s));
    agree(g, "broadcast_bytes", make_sig(OpCode::kBroadcastBytes, nullptr, root), names_of("root"));
    uint64_t n = buf.size();
    check_mpi(MPI_Bcast(&n, 1, MPI_UINT64_T, root, g.info.comm), "broadcast_bytes", g.info.name);
    buf.resize(n);
    constexpr uint64_t kChunk = uint64_t{1} << 30;
    for (uint64_t off = 0; off < n; off += kChunk) {
        const int len = static_cast<int>(std::min(kChunk, n - off));
        check_mpi(MPI_Bcast(buf.data() + off, len, MPI_BYTE, root, g.info.comm), "broadcast_bytes", g.info.name);
    }
}

template <class Buf>
void send_bytes_impl(const GroupState& g, const Buf& buf, int dst, int tag) {
    check_rank_arg(g, "send_bytes", "dst", dst);
    check_tag("send_bytes", tag);
    TORCH_CHECK(dst != g.info.rank, "dist send_bytes on group '", g.info.name, "': cannot send to self (rank ", dst,
                ")");
    Watchdog::Scope scope("send_bytes", g.info.name, static_cast<double>(g.info.timeout_s));
    const uint64_t n = buf.size();
    check_mpi(MPI_Send(&n, 1, MPI_UINT64_T, dst, tag, g.info.comm), "send_bytes", g.info.name);
    constexpr uint64_t kChunk = uint64_t{1} << 30;
    for (uint64_t off = 0; off < n; off += kChunk) {
        const int len = static_cast<int>(std::min(kChunk, n - off));
        check_mpi(MPI_Send(buf.data() + off, len, MPI_BYTE, dst, tag, g.info.comm), "send_bytes", g.info.name);
    }
}

template <class Buf>
Buf recv_bytes_impl(const GroupState& g, int src, int tag) {
    check_rank_arg(g, "recv_bytes", "src", src);
    check_tag("recv_bytes", tag);
    TORCH_CHECK(src != g.info.rank, "dist recv_bytes on group '", g.info.name, "': cannot receive from self (rank ",
                src, ")");
    Watchdog::Scope scope("recv_bytes", g.info.name, static_cast<double>(g.info.timeout_s));
    uint64_t n = 0;
    MPI_Status status;
    check_mpi(MPI_Recv(&n, 1, MPI_UINT64_T, src, tag, g.info.comm, &status), "recv_bytes", g.info.name);
    Buf buf;
    buf.resize(n);
    constexpr uint64_t kChunk = uint64_t{1} << 30;
    for (uint64_t off = 0; off < n; off += kChunk) {
        const int len = static_cast<int>(std::min(kChunk, n - off));
        check_mpi(MPI_Recv(buf.data() + off, len, MPI_BYTE, src, tag, g.info.comm, &status), "recv_bytes", g.info.name);
    }
    return buf;
}

template <class Buf>
std::vector<Buf> all_gather_bytes_impl(const GroupState& g, const Buf& buf) {
    Watchdog::Scope scope("all_gather_bytes", g.info.name, static_cast<double>(g.info.timeout_s));
    agree(g, "all_gather_bytes", make_sig(OpCode::kAllGatherBytes, nullptr, 0), names_of(nullptr));
    const int64_t mine = static_cast<int64_t>(buf.size());
    std::vector<int64_t> sizes(g.info.size);
    check_mpi(MPI_Allgather(&mine, 1, MPI_INT64_T, sizes.data(), 1, MPI_INT64_T, g.info.comm), "all_gather_bytes",
              g.info.name);
    const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
    mpi_count(total, "all_gather_bytes", g.info.name);
    std::vector<int> counts(g.info.size);
    std::vector<int> displs(g.info.size);
    for (int r = 0, off = 0; r < g.info.size; ++r) {
        counts[r] = static_cast<int>(sizes[r]);
        displs[r] = off;
        off += counts[r];
    }
    std::vector<char> flat(std::max<int64_t>(total, 1));
    check_mpi(MPI_Allgatherv(buf.data(), static_cast<int>(mine), MPI_BYTE, flat.data(), counts.data(), displs.data(),
                             MPI_BYTE, g.info.comm),
              "all_gather_bytes", g.info.name);
    std::vector<Buf> out(g.info.size);
    for (int r = 0; r < g.info.size; ++r) out[r].assign(flat.data() + displs[r], flat.data() + displs[r] + counts[r]);
    return out;
}

double timeout_of(const GroupState& g) { return static_cast<double>(g.info.timeout_s); }

}  // namespace

// --- construction ------------------------------------------------------------------------------------------

Communicator Communicator::world(int64_t timeout_s) {
    int initialized = 0;
    int finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized) {
        throw DistError(
            "dist: Communicator::world() needs MPI to be initialized (create a dsrl::dist::Bootstrap "
            "first, and keep it alive while communicators are in use)");
    }
    MPI_Comm comm = MPI_COMM_NULL;
    check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm), "world", "world");
    return Communicator(make_state(comm, "world", timeout_s));
}

Communicator Communicator::split(const std::string& name, int color, int key) const {
    GroupState& g = checked_state("split");
    Watchdog::Scope scope("split", g.info.name, timeout_of(g));
    MPI_Comm comm = MPI_COMM_NULL;
    check_mpi(MPI_Comm_split(g.info.comm, color < 0 ? MPI_UNDEFINED : color, key, &comm), "split", g.info.name);
    if (comm == MPI_COMM_NULL) {
        auto st = std::make_shared<GroupState>();
        st->info.name = name;
        st->info.timeout_s = g.info.timeout_s;
        return Communicator(st);
    }
    return Communicator(make_state(comm, name, g.info.timeout_s));
}

GroupState& Communicator::checked_state(const char* op) const {
    if (!state_) throw DistError(absl::StrCat("dist ", op, ": called on an empty Communicator handle"));
    if (!state_->member) {
        int world_rank = 0;
        MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
        throw DistError(absl::StrCat("dist ", op, ": world rank ", world_rank, " is not a member of group '",
                                     state_->info.name, "' (check is_member() before using the group)"));
    }
    return *state_;
}

bool Communicator::is_member() const { return state_ && state_->member; }
const std::string& Communicator::name() const {
    static const std::string kEmpty;
    return state_ ? state_->info.name : kEmpty;
}
int Communicator::rank() const { return is_member() ? state_->info.rank : -1; }
int Communicator::size() const { return is_member() ? state_->info.size : 0; }
const std::vector<int>& Communicator::world_ranks() const {
    static const std::vector<int> kEmpty;
    return is_member() ? state_->info.world_ranks : kEmpty;
}
int64_t Communicator::timeout_s() const { return state_ ? state_->info.timeout_s : 0; }

// --- tensor ops ----------------------------------------------------------------------------------------------

void Communicator::all_reduce(at::Tensor& t, ReduceOp op) const {
    GroupState& g = checked_state("all_reduce");
    check_tensor("all_reduce", t, /*needs_contiguous=*/true);
    TORCH_CHECK(op != ReduceOp::kAvg || at::isFloatingType(t.scalar_type()),
                "dist all_reduce: avg needs a floating dtype, got ", t.scalar_type(), " (use sum and divide)");
    Watchdog::Scope scope("all_reduce", g.info.name, timeout_of(g));
    agree(g, "all_reduce", make_sig(OpCode::kAllReduce, &t, t.numel(), static_cast<int64_t>(op)),
          names_of("numel", "op"));
    backend_for(g, t, "all_reduce").all_reduce(t, op);
}

void Communicator::broadcast(at::Tensor& t, int root) const {
    GroupState& g = checked_state("broadcast");
    check_tensor("broadcast", t, /*needs_contiguous=*/true);
    check_rank_arg(g, "broadcast", "root", root);
    Watchdog::Scope scope("broadcast", g.info.name, timeout_of(g));
    agree(g, "broadcast", make_sig(OpCode::kBroadcast, &t, t.numel(), root), names_of("numel", "root"));
    backend_for(g, t, "broadcast").broadcast(t, root);
}

at::Tensor Communicator::all_gather(const at::Tensor& t) const {
    GroupState& g = checked_state("all_gather");
    check_tensor("all_gather", t, /*needs_contiguous=*/false);
    const at::Tensor in = t.contiguous();
    std::vector<int64_t> sizes{g.info.size};
    sizes.insert(sizes.end(), t.sizes().begin(), t.sizes().end());
    at::Tensor out = at::empty(sizes, t.options());
    Watchdog::Scope scope("all_gather", g.info.name, timeout_of(g));
    agree(g, "all_gather", make_sig(OpCode::kAllGather, &t, t.numel(), t.dim()), names_of("numel", "dim"));
    backend_for(g, t, "all_gather").all_gather(in, out);
    return out;
}

at::Tensor Communicator::all_gather_v(const at::Tensor& t, std::vector<int64_t>* counts) const {
    GroupState& g = checked_state("all_gather_v");
    check_tensor("all_gather_v", t, /*needs_contiguous=*/false);
    TORCH_CHECK(t.dim() >= 1,
                "dist all_gather_v: expected a tensor with at least one dimension [n, ...], got a scalar");
    const at::Tensor in = t.contiguous();
    const int64_t row = trailing_numel(t);
    Watchdog::Scope scope("all_gather_v", g.info.name, timeout_of(g));
    // The signature exchange doubles as the exchange of row counts (field 3 may differ across ranks).
    SigNames names = names_of("dim", "row_numel", "rows");
    names.agree = {true, true, false};
    const std::vector<Sig> all =
        exchange(g, make_sig(OpCode::kAllGatherV, &t, t.dim(), row, t.size(0)), "all_gather_v");
    if (peer_checks_enabled()) verify(g, all, names);
    std::vector<int64_t> rows(g.info.size);
    std::vector<int64_t> elems(g.info.size);
    int64_t total_rows = 0;
    for (int r = 0; r < g.info.size; ++r) {
        rows[r] = all[r].v[5];
        elems[r] = rows[r] * row;
        total_rows += rows[r];
    }
    at::Tensor out = at::empty(with_dim0(t, total_rows), t.options());
    backend_for(g, t, "all_gather_v").all_gather_v(in, out, elems);
    if (counts != nullptr) *counts = std::move(rows);
    return out;
}

at::Tensor Communicator::reduce_scatter(const at::Tensor& t, ReduceOp op) const {
    GroupState& g = checked_state("reduce_scatter");
    check_tensor("reduce_scatter", t, /*needs_contiguous=*/false);
    TORCH_CHECK(t.dim() >= 1 && t.size(0) % g.info.size == 0, "dist reduce_scatter on group '", g.info.name,
                "': expected dim 0 divisible by the group size ", g.info.size, ", got sizes ", t.sizes());
    TORCH_CHECK(op != ReduceOp::kAvg || at::isFloatingType(t.scalar_type()),
                "dist reduce_scatter: avg needs a floating dtype, got ", t.scalar_type());
    const at::Tensor in = t.contiguous();
    at::Tensor out = at::empty(with_dim0(t, t.size(0) / g.info.size), t.options());
    Watchdog::Scope scope("reduce_scatter", g.info.name, timeout_of(g));
    agree(g, "reduce_scatter", make_sig(OpCode::kReduceScatter, &t, t.numel(), static_cast<int64_t>(op)),
          names_of("numel", "op"));
    backend_for(g, t, "reduce_scatter").reduce_scatter(in, out, op);
    return out;
}

at::Tensor Communicator::all_to_all(const at::Tensor& t) const {
    GroupState& g = checked_state("all_to_all");
    check_tensor("all_to_all", t, /*needs_contiguous=*/false);
    TORCH_CHECK(t.dim() >= 1 && t.size(0) % g.info.size == 0, "dist all_to_all on group '", g.info.name,
                "': expected dim 0 divisible by the group size ", g.info.size, ", got sizes ", t.sizes());
    const at::Tensor in = t.contiguous();
    at::Tensor out = at::empty(t.sizes(), t.options());
    Watchdog::Scope scope("all_to_all", g.info.name, timeout_of(g));
    agree(g, "all_to_all", make_sig(OpCode::kAllToAll, &t, t.numel()), names_of("numel"));
    const std::vector<int64_t> counts(g.info.size, t.numel() / g.info.size);
    backend_for(g, t, "all_to_all").all_to_all_v(in, out, counts, counts);
    return out;
}

at::Tensor Communicator::all_to_all_v(const at::Tensor& t,
                                      const std::vector<int64_t>& send_counts,
                                      std::vector<int64_t>* recv_counts) const {
    GroupState& g = checked_state("all_to_all_v");
    check_tensor("all_to_all_v", t, /*needs_contiguous=*/false);
    TORCH_CHECK(t.dim() >= 1,
                "dist all_to_all_v: expected a tensor with at least one dimension [n, ...], got a scalar");
    TORCH_CHECK(static_cast<int64_t>(send_counts.size()) == g.info.size, "dist all_to_all_v on group '", g.info.name,
                "': expected ", g.info.size, " send counts (one per rank), got ", send_counts.size());
    int64_t sum = 0;
    for (size_t j = 0; j < send_counts.size(); ++j) {
        TORCH_CHECK(send_counts[j] >= 0, "dist all_to_all_v: send_counts[", j, "] must be >= 0, got ", send_counts[j]);
        sum += send_counts[j];
    }
    TORCH_CHECK(sum == t.size(0), "dist all_to_all_v: send counts sum to ", sum, " rows but the tensor has ", t.size(0),
                " rows (sizes ", t.sizes(), ")");
    const at::Tensor in = t.contiguous();
    const int64_t row = trailing_numel(t);
    Watchdog::Scope scope("all_to_all_v", g.info.name, timeout_of(g));
    agree(g, "all_to_all_v", make_sig(OpCode::kAllToAllV, &t, t.dim(), row), names_of("dim", "row_numel"));
    std::vector<int64_t> recv(g.info.size);
    check_mpi(MPI_Alltoall(send_counts.data(), 1, MPI_INT64_T, recv.data(), 1, MPI_INT64_T, g.info.comm),
              "all_to_all_v", g.info.name);
    std::vector<int64_t> send_elems(g.info.size);
    std::vector<int64_t> recv_elems(g.info.size);
    int64_t total = 0;
    for (int r = 0; r < g.info.size; ++r) {
        send_elems[r] = send_counts[r] * row;
        recv_elems[r] = recv[r] * row;
        total += recv[r];
    }
    at::Tensor out = at::empty(with_dim0(t, total), t.options());
    backend_for(g, t, "all_to_all_v").all_to_all_v(in, out, send_elems, recv_elems);
    if (recv_counts != nullptr) *recv_counts = std::move(recv);
    return out;
}

void Communicator::send(const at::Tensor& t, int dst, int tag) const {
    GroupState& g = checked_state("send");
    check_tensor("send", t, /*needs_contiguous=*/false);
    check_rank_arg(g, "send", "dst", dst);
    check_tag("send", tag);
    TORCH_CHECK(dst != g.info.rank, "dist send on group '", g.info.name, "': cannot send to self (rank ", dst, ")");
    const at::Tensor in = t.contiguous();
    Watchdog::Scope scope("send", g.info.name, timeout_of(g));
    backend_for(g, t, "send").send(in, dst, tag);
}

void Communicator::recv(at::Tensor& t, int src, int tag) const {
    GroupState& g = checked_state("recv");
    check_tensor("recv", t, /*needs_contiguous=*/true);
    check_rank_arg(g, "recv", "src", src);
    check_tag("recv", tag);
    TORCH_CHECK(src != g.info.rank, "dist recv on group '", g.info.name, "': cannot receive from self (rank ", src,
                ")");
    Watchdog::Scope scope("recv", g.info.name, timeout_of(g));
    backend_for(g, t, "recv").recv(t, src, tag);
}

void Communicator::barrier() const {
    GroupState& g = checked_state("barrier");
    Watchdog::Scope scope("barrier", g.info.name, timeout_of(g));
    agree(g, "barrier", make_sig(OpCode::kBarrier, nullptr, 0), names_of(nullptr));
    check_mpi(MPI_Barrier(g.info.comm), "barrier", g.info.name);
}

// --- byte buffers --------------------------------------------------------------------------------------------

void Communicator::broadcast_bytes(std::string& buf, int root) const {
    broadcast_bytes_impl(checked_state("broadcast_bytes"), buf, root);
}
void Communicator::broadcast_bytes(std::vector<uint8_t>& buf, int root) const {
    broadcast_bytes_impl(checked_state("broadcast_bytes"), buf, root);
}
void Communicator::send_bytes(const std::string& buf, int dst, int tag) const {
    send_bytes_impl(checked_state("send_bytes"), buf, dst, tag);
}
void Communicator::send_bytes(const std::vector<uint8_t>& buf, int dst, int tag) const {
    send_bytes_impl(checked_state("send_bytes"), buf, dst, tag);
}
std::string Communicator::recv_bytes(int src, int tag) const {
    return recv_bytes_impl<std::string>(checked_state("recv_bytes"), src, tag);
}
std::vector<uint8_t> Communicator::recv_bytes_vec(int src, int tag) const {
    return recv_bytes_impl<std::vector<uint8_t>>(checked_state("recv_bytes"), src, tag);
}
std::vector<std::string> Communicator::all_gather_bytes(const std::string& buf) const {
    return all_gather_bytes_impl(checked_state("all_gather_bytes"), buf);
}
std::vector<std::vector<uint8_t>> Communicator::all_gather_bytes(const std::vector<uint8_t>& buf) const {
    return all_gather_bytes_impl(checked_state("all_gather_bytes"), buf);
}

}  // namespace dsrl::dist
