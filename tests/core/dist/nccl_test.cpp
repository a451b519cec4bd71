// The NCCL backend (CUDA tensors) against the MPI backend (CPU tensors) as the oracle: the same inputs go
// through both and must agree exactly. Runs under mpirun -np 1 on a one-GPU machine (more ranks with more
// GPUs work too); skips with a printed reason where no GPU is visible.
#include <chrono>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <c10/cuda/CUDAFunctions.h>

#include "core/dist/bootstrap.h"
#include "core/dist/communicator.h"
#include "core/dist/watchdog.h"
#include "core/error.h"
#include "tests/core/dist/dist_test_util.h"
#include "tests/test_util.h"

namespace dsrl::dist {
namespace {

using testing::all_dtypes;
using testing::filled;

std::string dtype_name(c10::ScalarType t) { return std::string(c10::toString(t)); }

// This process's GPU: dist::Bootstrap makes the local rank's GPU current (cuda:0 would be another rank's GPU
// on a machine with several, and NCCL refuses tensors off its communicator's device).
at::Tensor cuda(const at::Tensor& t) { return t.to(at::Device(at::kCUDA, c10::cuda::current_device())); }

class NcclTest : public ::testing::Test {
protected:
    void SetUp() override {
        DSRL_REQUIRE_CUDA();
        int argc = 0;
        char** argv = nullptr;
        boot_ = std::make_unique<Bootstrap>(&argc, &argv);
        world_ = Communicator::world(/*timeout_s=*/120);
    }
    std::unique_ptr<Bootstrap> boot_;
    Communicator world_;
};

TEST_F(NcclTest, BootstrapPicksTheLocalGpu) {
    EXPECT_GE(boot_->device(), 0);
    if (boot_->local_rank() == 0) {
        EXPECT_EQ(boot_->device(), 0);  // local rank 0 always drives cuda:0
    }
}

TEST_F(NcclTest, AllReduceMatchesMpiForEveryDtypeAndOp) {
    const int r = world_.rank();
    for (c10::ScalarType dtype : all_dtypes()) {
        for (int64_t len : {0, 1, 7, 4099}) {
            for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg}) {
                if (op == ReduceOp::kAvg && !at::isFloatingType(dtype)) continue;
                const at::Tensor host = filled({len}, dtype, [&](int64_t i) { return (r + 1) + (i % 5); });
                at::Tensor expected = host.clone();
                world_.all_reduce(expected, op);
                at::Tensor dev = cuda(host);
                world_.all_reduce(dev, op);
                EXPECT_ALL_CLOSE(absl::StrCat(reduce_op_name(op), " ", dtype_name(dtype), " len ", len), dev.cpu(),
                                 expected, 0);
            }
        }
    }
}

TEST_F(NcclTest, DataMovementMatchesMpi) {
    const int r = world_.rank();
    const int n = world_.size();
    for (c10::ScalarType dtype : all_dtypes()) {
        for (int64_t k : {0, 1, 3}) {
            const std::string what = absl::StrCat(dtype_name(dtype), " k ", k);
            const at::Tensor host = filled({n * k, 2}, dtype, [&](int64_t i) { return r * 16 + i % 16; });
            at::Tensor b_host = host.clone();
            world_.broadcast(b_host, 0);
            at::Tensor b_dev = cuda(host);
            world_.broadcast(b_dev, 0);
            EXPECT_ALL_CLOSE("broadcast " + what, b_dev.cpu(), b_host, 0);
            EXPECT_ALL_CLOSE("all_gather " + what, world_.all_gather(cuda(host)).cpu(), world_.all_gather(host), 0);
            const at::Tensor rows = filled({r * k + 1, 3}, dtype, [&](int64_t i) { return r * 8 + i % 8; });
            std::vector<int64_t> c_dev;
            std::vector<int64_t> c_host;
            EXPECT_ALL_CLOSE("all_gather_v " + what, world_.all_gather_v(cuda(rows), &c_dev).cpu(),
                             world_.all_gather_v(rows, &c_host), 0);
            EXPECT_EQ(c_dev, c_host);
            EXPECT_ALL_CLOSE("reduce_scatter " + what, world_.reduce_scatter(cuda(host)).cpu(),
                             world_.reduce_scatter(host), 0);
            EXPECT_ALL_CLOSE("all_to_all " + what, world_.all_to_all(cuda(host)).cpu(), world_.all_to_all(host), 0);
            std::vector<int64_t> send_counts(n, k);
            send_counts[0] = 2 * k;
            const at::Tensor v = filled({k * (n + 1), 2}, dtype, [&](int64_t i) { return r * 16 + i % 16; });
            std::vector<int64_t> rc_dev;
            std::vector<int64_t> rc_host;
            EXPECT_ALL_CLOSE("all_to_all_v " + what, world_.all_to_all_v(cuda(v), send_counts, &rc_dev).cpu(),
                             world_.all_to_all_v(v, send_counts, &rc_host), 0);
            EXPECT_EQ(rc_dev, rc_host);
        }
    }
}

TEST_F(NcclTest, SubgroupGetsItsOwnNcclCommunicator) {
    Communicator solo = world_.split("solo", world_.rank(), 0);
    at::Tensor t = cuda(filled({5}, at::kFloat, [&](int64_t i) { return world_.rank() + i; }));
    solo.all_reduce(t);
    EXPECT_ALL_CLOSE("solo", t.cpu(), filled({5}, at::kFloat, [&](int64_t i) { return world_.rank() + i; }), 0);
    world_.barrier();
}

TEST_F(NcclTest, CompletedOpsLeaveTheWatchdog) {
    at::Tensor t = cuda(filled({1 << 16}, at::kFloat, [](int64_t i) { return i % 3; }));
    for (int i = 0; i < 10; ++i) world_.all_reduce(t);
    t.cpu();  // synchronizes the stream
    for (int i = 0; i < 50 && Watchdog::instance().num_pending() > 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_EQ(Watchdog::instance().num_pending(), 0u);
}

}  // namespace
}  // namespace dsrl::dist
