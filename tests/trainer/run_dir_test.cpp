// RunDirLock (trainer/run_dir.h) on 2 MPI ranks: one job per run directory, a second job waits and is refused
// naming the holder, and processes of an earlier job that outlive its rank 0 keep a new job out.
#include "trainer/run_dir.h"

#include <mpi.h>
#include <unistd.h>

#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/fs.h"

namespace dsrl::trainer {
namespace {

using ::testing::HasSubstr;

struct Shared {
    dist::Communicator world;
    std::string dir;
};

// A fresh directory every rank sees (rank 0 creates it, the name is broadcast).
Shared shared_dir() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    DSRL_INTERNAL_ASSERT(initialized, "run under mpirun");
    Shared s{dist::Communicator::world(60), ""};
    if (s.world.rank() == 0) s.dir = fs::make_temp_dir("dsrl_run_dir_test_");
    s.world.broadcast_bytes(s.dir, 0);
    return s;
}

TEST(RunDirLockTest, SecondJobWaitsThenIsRefusedNamingTheHolder) {
    Shared s = shared_dir();
    const std::string out = fs::join(s.dir, "run");
    RunDirLock first = RunDirLock::acquire({{out, "run.output_dir"}}, 1.0, "first", s.world);
    ASSERT_EQ(first.locked_dirs(), std::vector<std::string>{out});
    const std::string holder = fs::read_file(fs::join(out, ".dsrl.lock"));
    EXPECT_THAT(holder, HasSubstr("run=first ranks=2"));
    const auto t0 = std::chrono::steady_clock::now();
    try {
        RunDirLock::acquire({{out, "run.output_dir"}}, 0.5, "second", s.world);
        FAIL() << "a second job on a locked directory must be refused";
    } catch (const ConfigError& e) {
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        EXPECT_GE(waited, 0.5);  // it waited run.lock_wait_s before refusing
        EXPECT_THAT(e.what(), HasSubstr("run.output_dir: " + out + " is in use by another dsrl job"));
        EXPECT_THAT(e.what(), HasSubstr("run=first"));
        EXPECT_THAT(e.what(), HasSubstr("run.lock_wait_s"));
        // Every rank gets the same message (rank 0's), so the job ends with one reason.
        if (s.world.rank() == 0) {
            EXPECT_THAT(e.what(), HasSubstr(holder.substr(0, holder.find(" started="))));
        }
    }
    first = RunDirLock();  // the first job ends
    s.world.barrier();
    RunDirLock third = RunDirLock::acquire({{out, "run.output_dir"}}, 0.0, "third", s.world);
    EXPECT_THAT(fs::read_file(fs::join(out, ".dsrl.lock")), HasSubstr("run=third"));
    third = RunDirLock();
    s.world.barrier();
    if (s.world.rank() == 0) fs::remove_tree(s.dir);
}

TEST(RunDirLockTest, SurvivingRanksOfAnEarlierJobKeepANewJobOut) {
    Shared s = shared_dir();
    const std::string out = fs::join(s.dir, "run");
    // The earlier job: its rank 0 dies (its locks go), rank 1 keeps running (a killed mpirun's orphan).
    fs::FileLock orphan;
    if (s.world.rank() == 0) {
        fs::make_dirs(out);
        orphan = fs::FileLock(fs::join(out, ".dsrl.ranks.lock"));
        ASSERT_EQ(orphan.try_lock(fs::FileLock::Mode::kShared), fs::FileLock::Result::kAcquired);
    }
    try {
        RunDirLock::acquire({{out, "run.output_dir"}}, 0.3, "new", s.world);
        FAIL() << "a new job must wait for every process of the earlier one";
    } catch (const ConfigError& e) {
        EXPECT_THAT(e.what(), HasSubstr("processes of an earlier job still run in " + out));
    }
    orphan = fs::FileLock();  // the orphan exits
    RunDirLock lock = RunDirLock::acquire({{out, "run.output_dir"}}, 0.3, "new", s.world);
    EXPECT_EQ(lock.locked_dirs().size(), 1u);
    lock = RunDirLock();
    s.world.barrier();
    if (s.world.rank() == 0) fs::remove_tree(s.dir);
}

TEST(RunDirLockTest, RemovesStaleTemporariesUnderTheLockAndLocksEveryDirectory) {
    Shared s = shared_dir();
    const std::string out = fs::join(s.dir, "run");
    const std::string ck = fs::join(s.dir, "ckpt");
    if (s.world.rank() == 0) {
        fs::make_dirs(fs::join(ck, ".step-00000007.tmp"));
        std::ofstream(fs::join(ck, "latest.tmp.777")) << "step-00000007\n";
        std::ofstream(fs::join(ck, "latest")) << "step-00000006\n";
    }
    s.world.barrier();
    RunDirLock lock = RunDirLock::acquire({{out, "run.output_dir"}, {ck, "trainer.checkpoint.dir"}}, 1.0, "r", s.world);
    EXPECT_EQ(lock.locked_dirs(), (std::vector<std::string>{ck, out}));  // sorted: one order for every job
    EXPECT_FALSE(fs::exists(fs::join(ck, ".step-00000007.tmp")));
    EXPECT_FALSE(fs::exists(fs::join(ck, "latest.tmp.777")));
    EXPECT_TRUE(fs::exists(fs::join(ck, "latest")));
    try {
        RunDirLock::acquire({{ck, "trainer.checkpoint.dir"}}, 0.0, "other", s.world);
        FAIL() << "the checkpoint directory is locked as well";
    } catch (const ConfigError& e) {
        EXPECT_THAT(e.what(), HasSubstr("trainer.checkpoint.dir: " + ck + " is in use"));
    }
    lock = RunDirLock();
    s.world.barrier();
    if (s.world.rank() == 0) fs::remove_tree(s.dir);
}

}  // namespace
}  // namespace dsrl::trainer
