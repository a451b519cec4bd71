// Communicator over MPI (CPU tensors) under mpirun -np 2 and -np 3: every rank contributes a rank-dependent
// value and asserts a closed form computed locally; every op, every dtype, sizes including 0 and odd lengths.
#include <mpi.h>

#include <cstdlib>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/dist/bootstrap.h"
#include "core/dist/communicator.h"
#include "core/dist/config.h"
#include "core/error.h"
#include "tests/core/dist/dist_test_util.h"
#include "tests/test_util.h"

namespace dsrl::dist {
namespace {

using testing::all_dtypes;
using testing::filled;
using ::testing::HasSubstr;

const std::vector<int64_t> kSizes = {0, 1, 7, 1003};

Communicator make_world() { return Communicator::world(/*timeout_s=*/120); }

std::string dtype_name(c10::ScalarType t) { return std::string(c10::toString(t)); }

TEST(BootstrapTest, ReusesAnInitializedMpi) {
    int argc = 0;
    char** argv = nullptr;
    Bootstrap boot(&argc, &argv);
    int rank = -1;
    int size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    EXPECT_FALSE(boot.owns_mpi());
    EXPECT_EQ(boot.world_rank(), rank);
    EXPECT_EQ(boot.world_size(), size);
    EXPECT_GE(boot.local_rank(), 0);
    EXPECT_LT(boot.local_rank(), boot.local_size());
    // mpirun on one host: the local rank is the world rank.
    EXPECT_EQ(boot.local_rank(), rank);
}

TEST(BootstrapTest, LocalRankFallsBackToSharedMemorySplit) {
    const char* saved = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    const std::string keep = saved != nullptr ? saved : "";
    unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
    int local_size = 0;
    const int local = detect_local_rank(&local_size);
    if (saved != nullptr) setenv("OMPI_COMM_WORLD_LOCAL_RANK", keep.c_str(), 1);
    int rank = -1;
    int size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    EXPECT_EQ(local, rank);
    EXPECT_EQ(local_size, size);
}

TEST(BootstrapTest, TimeoutComesFromConfigOrEnv) {
    DistConfig cfg;
    cfg.timeout_s = 42;
    unsetenv("DSRL_DIST_TIMEOUT_S");
    EXPECT_EQ(effective_timeout_s(cfg), 42);
    setenv("DSRL_DIST_TIMEOUT_S", "7", 1);
    EXPECT_EQ(effective_timeout_s(cfg), 7);
    setenv("DSRL_DIST_TIMEOUT_S", "-1", 1);
    try {
        effective_timeout_s(cfg);
        ADD_FAILURE() << "expected a ConfigError";
    } catch (const ConfigError& e) {
        EXPECT_THAT(e.what(), HasSubstr("DSRL_DIST_TIMEOUT_S must be >= 0"));
        EXPECT_THAT(e.what(), HasSubstr("got -1"));
    }
    unsetenv("DSRL_DIST_TIMEOUT_S");
}

TEST(CommunicatorTest, WorldKnowsRankAndSize) {
    Communicator w = make_world();
    int rank = -1;
    int size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ASSERT_GE(size, 2) << "run under mpirun -np >= 2";
    EXPECT_TRUE(w.is_member());
    EXPECT_EQ(w.name(), "world");
    EXPECT_EQ(w.rank(), rank);
    EXPECT_EQ(w.size(), size);
    ASSERT_EQ(w.world_ranks().size(), static_cast<size_t>(size));
    for (int r = 0; r < size; ++r) EXPECT_EQ(w.world_ranks()[r], r);
}

TEST(CommunicatorTest, AllReduceEveryDtypeOpAndSize) {
    Communicator w = make_world();
    const int r = w.rank();
    const double n = w.size();
    for (c10::ScalarType dtype : all_dtypes()) {
        for (int64_t len : kSizes) {
            auto mine = [&] { return filled({len}, dtype, [&](int64_t i) { return (r + 1) + (i % 5); }); };
            const std::string what = absl::StrCat(dtype_name(dtype), " len ", len);
            at::Tensor t = mine();
            w.all_reduce(t, ReduceOp::kSum);
            EXPECT_ALL_CLOSE("sum " + what, t,
                             filled({len}, dtype, [&](int64_t i) { return n * (n + 1) / 2 + n * (i % 5); }), 0);
            t = mine();
            w.all_reduce(t, ReduceOp::kMax);
            EXPECT_ALL_CLOSE("max " + what, t, filled({len}, dtype, [&](int64_t i) { return n + (i % 5); }), 0);
            t = mine();
            w.all_reduce(t, ReduceOp::kMin);
            EXPECT_ALL_CLOSE("min " + what, t, filled({len}, dtype, [&](int64_t i) { return 1 + (i % 5); }), 0);
            if (at::isFloatingType(dtype)) {
                t = mine();
                w.all_reduce(t, ReduceOp::kAvg);
                EXPECT_ALL_CLOSE("avg " + what, t,
                                 filled({len}, dtype, [&](int64_t i) { return (n + 1) / 2 + (i % 5); }), 0);
            }
        }
    }
}

TEST(CommunicatorTest, HalfPrecisionSumsInFloat32AndRoundsOnce) {
    Communicator w = make_world();
    const int n = w.size();
    for (c10::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
        // 1/3 is inexact in 16 bits; summing pairwise in 16 bits would round at every step.
        at::Tensor t = filled({9}, dtype, [&](int64_t i) { return 1.0 / 3.0 + i; });
        const at::Tensor expected = t.to(at::kFloat).mul(static_cast<double>(n)).to(dtype);
        w.all_reduce(t, ReduceOp::kSum);
        EXPECT_ALL_CLOSE(dtype_name(dtype), t, expected, 0);
        EXPECT_EQ(t.scalar_type(), dtype);
    }
}

TEST(CommunicatorTest, BroadcastFromEveryRoot) {
    Communicator w = make_world();
    for (int root = 0; root < w.size(); ++root) {
        for (c10::ScalarType dtype : all_dtypes()) {
            for (int64_t len : kSizes) {
                at::Tensor t = filled({len}, dtype, [&](int64_t i) { return w.rank() * 10 + (i % 50); });
                w.broadcast(t, root);
                EXPECT_ALL_CLOSE(absl::StrCat("root ", root, " ", dtype_name(dtype), " len ", len), t,
                                 filled({len}, dtype, [&](int64_t i) { return root * 10 + (i % 50); }), 0);
            }
        }
    }
}

TEST(CommunicatorTest, AllGatherStacksRanks) {
    Communicator w = make_world();
    const int n = w.size();
    for (c10::ScalarType dtype : all_dtypes()) {
        for (int64_t len : kSizes) {
            const at::Tensor mine = filled({len}, dtype, [&](int64_t i) { return w.rank() * 10 + (i % 7); });
            const at::Tensor out = w.all_gather(mine);
            const at::Tensor expected = filled({n, len}, dtype, [&](int64_t k) {
                return (len == 0 ? 0 : k / len) * 10 + ((k % std::max<int64_t>(len, 1)) % 7);
            });
            EXPECT_ALL_CLOSE(absl::StrCat(dtype_name(dtype), " len ", len), out, expected, 0);
        }
    }
    // A 0-dim tensor gathers to [size]; a non-contiguous input is accepted (read only).
    const at::Tensor scalar = filled({}, at::kLong, [&](int64_t) { return w.rank() + 1; });
    EXPECT_ALL_CLOSE("scalar", w.all_gather(scalar), filled({n}, at::kLong, [](int64_t k) { return k + 1; }), 0);
    const at::Tensor mat = filled({3, 5}, at::kFloat, [&](int64_t i) { return w.rank() * 100 + i; });
    const at::Tensor gathered = w.all_gather(mat.t());
    for (int q = 0; q < n; ++q) {
        EXPECT_ALL_CLOSE(absl::StrCat("transposed from ", q), gathered[q],
                         filled({3, 5}, at::kFloat, [&](int64_t i) { return q * 100 + i; }).t(), 0);
    }
}

TEST(CommunicatorTest, AllGatherVConcatenatesVariableRows) {
    Communicator w = make_world();
    const int n = w.size();
    for (c10::ScalarType dtype : all_dtypes()) {
        for (int64_t scale : {0, 1, 3}) {
            // Rank q contributes q * scale rows of 3 (rank 0 none; scale 0: nobody sends anything).
            auto rows_of = [&](int q) { return q * scale; };
            const at::Tensor mine = filled({rows_of(w.rank()), 3}, dtype, [&](int64_t i) { return w.rank() * 20 + i; });
            std::vector<int64_t> counts;
            const at::Tensor out = w.all_gather_v(mine, &counts);
            std::vector<double> expect;
            for (int q = 0; q < n; ++q) {
                EXPECT_EQ(counts[q], rows_of(q));
                for (int64_t i = 0; i < rows_of(q) * 3; ++i) expect.push_back(q * 20 + i);
            }
            const int64_t total = static_cast<int64_t>(expect.size()) / 3;
            EXPECT_ALL_CLOSE(absl::StrCat(dtype_name(dtype), " scale ", scale), out,
                             filled({total, 3}, dtype, [&](int64_t k) { return expect[k]; }), 0);
        }
    }
}

TEST(CommunicatorTest, ReduceScatterGivesEachRankItsReducedBlock) {
    Communicator w = make_world();
    const int r = w.rank();
    const double n = w.size();
    for (c10::ScalarType dtype : all_dtypes()) {
        for (int64_t block : {0, 1, 3}) {
            // Row j of rank q holds (q + 1) * (j % 4 + 1): sums, maxima and minima stay exact in every dtype.
            const at::Tensor in =
                filled({w.size() * block, 2}, dtype, [&](int64_t i) { return (r + 1) * ((i / 2) % 4 + 1); });
            auto global_row = [&](int64_t i) { return (r * block + i / 2) % 4 + 1; };
            const std::string what = absl::StrCat(dtype_name(dtype), " block ", block);
            EXPECT_ALL_CLOSE("sum " + what, w.reduce_scatter(in, ReduceOp::kSum),
                             filled({block, 2}, dtype, [&](int64_t i) { return n * (n + 1) / 2 * global_row(i); }), 0);
            EXPECT_ALL_CLOSE("max " + what, w.reduce_scatter(in, ReduceOp::kMax),
                             filled({block, 2}, dtype, [&](int64_t i) { return n * global_row(i); }), 0);
            EXPECT_ALL_CLOSE("min " + what, w.reduce_scatter(in, ReduceOp::kMin),
                             filled({block, 2}, dtype, [&](int64_t i) { return global_row(i); }), 0);
            if (at::isFloatingType(dtype)) {
                EXPECT_ALL_CLOSE("avg " + what, w.reduce_scatter(in, ReduceOp::kAvg),
                                 filled({block, 2}, dtype, [&](int64_t i) { return (n + 1) / 2 * global_row(i); }), 0);
            }
        }
    }
}

TEST(CommunicatorTest, AllToAllTransposesBlocks) {
    Communicator w = make_world();
    const int r = w.rank();
    const int n = w.size();
    for (c10::ScalarType dtype : all_dtypes()) {
        for (int64_t k : {0, 1, 3}) {
            // Element p of the block for rank j holds r*16 + j*4 + p; rank j then sees block i = i*16 + j*4 + p.
            const at::Tensor in = filled({n * k}, dtype, [&](int64_t e) { return r * 16 + (e / k) * 4 + e % k; });
            const at::Tensor out = w.all_to_all(in);
            EXPECT_ALL_CLOSE(absl::StrCat(dtype_name(dtype), " k ", k), out,
                             filled({n * k}, dtype, [&](int64_t e) { return (e / k) * 16 + r * 4 + e % k; }), 0);
        }
    }
}

TEST(CommunicatorTest, AllToAllVRoutesVariableRows) {
    Communicator w = make_world();
    const int r = w.rank();
    const int n = w.size();
    auto count = [&](int from, int to) -> int64_t { return (from + 2 * to) % 3; };  // 0, 1 or 2 rows
    for (c10::ScalarType dtype : all_dtypes()) {
        std::vector<int64_t> send_counts;
        std::vector<double> send_vals;
        for (int j = 0; j < n; ++j) {
            send_counts.push_back(count(r, j));
            for (int64_t p = 0; p < count(r, j) * 2; ++p) send_vals.push_back(r * 16 + j * 4 + p);
        }
        const int64_t rows = static_cast<int64_t>(send_vals.size()) / 2;
        const at::Tensor in = filled({rows, 2}, dtype, [&](int64_t e) { return send_vals[e]; });
        std::vector<int64_t> recv_counts;
        const at::Tensor out = w.all_to_all_v(in, send_counts, &recv_counts);
        std::vector<double> expect;
        for (int i = 0; i < n; ++i) {
            EXPECT_EQ(recv_counts[i], count(i, r));
            for (int64_t p = 0; p < count(i, r) * 2; ++p) expect.push_back(i * 16 + r * 4 + p);
        }
        EXPECT_ALL_CLOSE(
            dtype_name(dtype), out,
            filled({static_cast<int64_t>(expect.size()) / 2, 2}, dtype, [&](int64_t e) { return expect[e]; }), 0);
    }
}

TEST(CommunicatorTest, SendRecvAroundARing) {
    Communicator w = make_world();
    const int r = w.rank();
    const int n = w.size();
    const int next = (r + 1) % n;
    const int prev = (r + n - 1) % n;
    for (c10::ScalarType dtype : all_dtypes()) {
        // Odd lengths 5 + rank; rank 0 first sends, others first receive (no reliance on eager buffering).
        const at::Tensor mine = filled({5 + r}, dtype, [&](int64_t i) { return r * 10 + i; });
        at::Tensor got = at::empty({5 + prev}, at::TensorOptions().dtype(dtype));
        if (r == 0) {
            w.send(mine, next, /*tag=*/7);
            w.recv(got, prev, /*tag=*/7);
        } else {
            w.recv(got, prev, /*tag=*/7);
            w.send(mine, next, /*tag=*/7);
        }
        EXPECT_ALL_CLOSE(dtype_name(dtype), got, filled({5 + prev}, dtype, [&](int64_t i) { return prev * 10 + i; }),
                         0);
    }
    // Empty messages work too.
    at::Tensor empty = at::empty({0}, at::TensorOptions().dtype(at::kFloat));
    if (r == 0) w.send(empty, 1, 3);
    if (r == 1) w.recv(empty, 0, 3);
}

TEST(CommunicatorTest, RecvOfTheWrongSizeNamesBothRanks) {
    Communicator w = make_world();
    if (w.rank() == 0) {
        w.send(filled({4}, at::kFloat, [](int64_t i) { return i; }), 1, 9);
    } else if (w.rank() == 1) {
        at::Tensor wrong = at::empty({5}, at::TensorOptions().dtype(at::kFloat));
        try {
            w.recv(wrong, 0, 9);
            ADD_FAILURE() << "expected a DistError";
        } catch (const DistError& e) {
            EXPECT_THAT(e.what(), HasSubstr("dist recv on group 'world'"));
            EXPECT_THAT(e.what(), HasSubstr("expected 20 bytes"));
            EXPECT_THAT(e.what(), HasSubstr("from rank 0"));
            EXPECT_THAT(e.what(), HasSubstr("has 16 bytes"));
        }
        at::Tensor right = at::empty({4}, at::TensorOptions().dtype(at::kFloat));
        w.recv(right, 0, 9);  // the message is still there
        EXPECT_ALL_CLOSE("right", right, filled({4}, at::kFloat, [](int64_t i) { return i; }), 0);
    }
    w.barrier();
}

TEST(CommunicatorTest, ByteBuffers) {
    Communicator w = make_world();
    const int r = w.rank();
    const int n = w.size();
    auto record = [](int q) {
        std::string s(q * 3, '\0');  // rank 0: empty; others contain NUL bytes
        for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>((q * 31 + i) % 256);
        return s;
    };
    // broadcast
    for (int root = 0; root < n; ++root) {
        std::string s = r == root ? record(root + 1) : std::string("stale");
        w.broadcast_bytes(s, root);
        EXPECT_EQ(s, record(root + 1));
        std::vector<uint8_t> v =
            r == root ? std::vector<uint8_t>{1, 2, 3, static_cast<uint8_t>(root)} : std::vector<uint8_t>{};
        w.broadcast_bytes(v, root);
        EXPECT_EQ(v, (std::vector<uint8_t>{1, 2, 3, static_cast<uint8_t>(root)}));
    }
    // all_gather of variable sizes
    const std::vector<std::string> all = w.all_gather_bytes(record(r));
    ASSERT_EQ(all.size(), static_cast<size_t>(n));
    for (int q = 0; q < n; ++q) EXPECT_EQ(all[q], record(q)) << "from rank " << q;
    const std::string mine = record(r);
    const auto all_vec = w.all_gather_bytes(std::vector<uint8_t>(mine.begin(), mine.end()));
    for (int q = 0; q < n; ++q) EXPECT_EQ(std::string(all_vec[q].begin(), all_vec[q].end()), record(q));
    // send / recv: every rank > 0 sends its record to rank 0 (tag = rank), rank 0 replies with a vector.
    if (r == 0) {
        for (int q = n - 1; q >= 1; --q) EXPECT_EQ(w.recv_bytes(q, q), record(q)) << "from rank " << q;
        for (int q = 1; q < n; ++q) w.send_bytes(std::vector<uint8_t>(q, 0xAB), q, 1);
    } else {
        w.send_bytes(record(r), 0, r);
        EXPECT_EQ(w.recv_bytes_vec(0, 1), std::vector<uint8_t>(r, 0xAB));
    }
}

TEST(CommunicatorTest, PeersThatDisagreeGetADistErrorNotAHang) {
    Communicator w = make_world();
    const int r = w.rank();
    at::Tensor t = filled({4 + (r == 1 ? 1 : 0)}, at::kFloat, [](int64_t) { return 1; });
    try {
        w.all_reduce(t);
        ADD_FAILURE() << "expected a DistError";
    } catch (const DistError& e) {
        EXPECT_THAT(e.what(), HasSubstr("dist all_reduce on group 'world'"));
        EXPECT_THAT(e.what(),
                    HasSubstr("rank 0 (world rank 0) called all_reduce(dtype=Float, device=cpu, numel=4, op=0)"));
        EXPECT_THAT(e.what(), HasSubstr("rank 1 (world rank 1) called all_reduce(dtype=Float, device=cpu, numel=5"));
    }
    // Different operations in the same slot.
    at::Tensor u = filled({3}, at::kInt, [](int64_t) { return 1; });
    try {
        if (r == 0) {
            w.all_reduce(u);
        } else {
            w.broadcast(u, 0);
        }
        ADD_FAILURE() << "expected a DistError";
    } catch (const DistError& e) {
        EXPECT_THAT(e.what(), HasSubstr("ranks disagree"));
        EXPECT_THAT(e.what(), HasSubstr("called all_reduce("));
        EXPECT_THAT(e.what(), HasSubstr("called broadcast("));
        EXPECT_THAT(e.what(), HasSubstr("same collectives in the same order"));
    }
    // Dtype mismatch.
    at::Tensor v = filled({3}, r == 0 ? at::kFloat : at::kBFloat16, [](int64_t) { return 1; });
    EXPECT_THROW(w.all_gather(v), DistError);
    // The communicator is still usable afterwards.
    at::Tensor ok = filled({2}, at::kLong, [](int64_t) { return 1; });
    w.all_reduce(ok);
    EXPECT_ALL_CLOSE("after errors", ok, filled({2}, at::kLong, [&](int64_t) { return w.size(); }), 0);
}

TEST(CommunicatorTest, BadArgumentsAreTorchChecksWithTheActualValue) {
    Communicator w = make_world();
    at::Tensor nc = filled({4, 6}, at::kFloat, [](int64_t i) { return i; }).t();
    try {
        w.all_reduce(nc);
        ADD_FAILURE() << "expected a c10::Error";
    } catch (const c10::Error& e) {
        EXPECT_THAT(e.what_without_backtrace(), HasSubstr("all_reduce: expected a contiguous tensor"));
        EXPECT_THAT(e.what_without_backtrace(), HasSubstr("strides [1, 6]"));
    }
    at::Tensor b = filled({3}, at::kFloat, [](int64_t) { return 1; }).to(at::kBool);
    try {
        w.all_reduce(b);
        ADD_FAILURE() << "expected a c10::Error";
    } catch (const c10::Error& e) {
        EXPECT_THAT(e.what_without_backtrace(), HasSubstr("unsupported dtype Bool"));
    }
    at::Tensor i = filled({3}, at::kInt, [](int64_t) { return 1; });
    EXPECT_THROW(w.all_reduce(i, ReduceOp::kAvg), c10::Error);
    EXPECT_THROW(w.broadcast(i, w.size()), c10::Error);
    EXPECT_THROW(w.reduce_scatter(filled({w.size() + 1}, at::kFloat, [](int64_t) { return 1; })), c10::Error);
    EXPECT_THROW(w.all_to_all_v(i, std::vector<int64_t>(w.size(), 0)), c10::Error);  // counts sum to 0, not 3
    EXPECT_THROW(w.send(i, w.rank()), c10::Error);
    EXPECT_THROW(w.send(i, 0, /*tag=*/40000), c10::Error);
    EXPECT_THROW(Communicator().barrier(), DistError);
}

TEST(CommunicatorTest, SplitFormsIndependentGroups) {
    Communicator w = make_world();
    const int r = w.rank();
    const int n = w.size();
    // Parity groups, ordered by descending world rank.
    Communicator parity = w.split("parity", r % 2, -r);
    ASSERT_TRUE(parity.is_member());
    EXPECT_EQ(parity.name(), "parity");
    std::vector<int> members;
    for (int q = n - 1; q >= 0; --q) {
        if (q % 2 == r % 2) members.push_back(q);
    }
    EXPECT_EQ(parity.world_ranks(), members);
    EXPECT_EQ(parity.size(), static_cast<int>(members.size()));
    at::Tensor t = filled({3}, at::kLong, [&](int64_t i) { return r + i; });
    parity.all_reduce(t);
    int64_t sum = 0;
    for (int q : members) sum += q;
    EXPECT_ALL_CLOSE("parity sum", t, filled({3}, at::kLong, [&](int64_t i) { return sum + members.size() * i; }), 0);
    const at::Tensor g = parity.all_gather(filled({1}, at::kInt, [&](int64_t) { return r; }));
    EXPECT_ALL_CLOSE("parity gather", g.flatten(),
                     filled({static_cast<int64_t>(members.size())}, at::kInt, [&](int64_t k) { return members[k]; }),
                     0);
    // Rank 0 opts out of a group.
    Communicator others = w.split("others", r == 0 ? -1 : 0, r);
    EXPECT_EQ(others.is_member(), r != 0);
    if (r == 0) {
        try {
            others.barrier();
            ADD_FAILURE() << "expected a DistError";
        } catch (const DistError& e) {
            EXPECT_THAT(e.what(), HasSubstr("world rank 0 is not a member of group 'others'"));
        }
    } else {
        EXPECT_EQ(others.size(), n - 1);
        EXPECT_EQ(others.rank(), r - 1);
        std::string s = others.rank() == 0 ? "hello" : "";
        others.broadcast_bytes(s, 0);
        EXPECT_EQ(s, "hello");
    }
    // Subgroups of subgroups.
    Communicator solo = parity.split("solo", parity.rank(), 0);
    EXPECT_EQ(solo.size(), 1);
    at::Tensor x = filled({2}, at::kFloat, [&](int64_t) { return r; });
    solo.all_reduce(x, ReduceOp::kAvg);
    EXPECT_ALL_CLOSE("solo", x, filled({2}, at::kFloat, [&](int64_t) { return r; }), 0);
    w.barrier();
}

}  // namespace
}  // namespace dsrl::dist
