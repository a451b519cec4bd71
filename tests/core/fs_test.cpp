#include "core/fs.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "core/error.h"

namespace dsrl::fs {
namespace {

TEST(FsTest, MemoryLimitIsKnownOnLinux) {
    const int64_t limit = fs::memory_limit_bytes();
    EXPECT_GT(limit, int64_t{64} << 20);  // more than 64 MiB: the physical memory or a cgroup's limit
    EXPECT_LE(limit, static_cast<int64_t>(::sysconf(_SC_PHYS_PAGES)) * ::sysconf(_SC_PAGE_SIZE));
}

TEST(FsTest, MakeDirsAndRemoveTree) {
    const std::string root = make_temp_dir("dsrl_fs_test_");
    ASSERT_TRUE(is_dir(root));
    const std::string deep = join(root, "a/b/c");
    make_dirs(deep);
    make_dirs(deep + "/");  // idempotent, trailing slash
    EXPECT_TRUE(is_dir(deep));
    std::ofstream(join(deep, "file.txt")) << "x";
    EXPECT_TRUE(exists(join(deep, "file.txt")));
    EXPECT_FALSE(is_dir(join(deep, "file.txt")));
    remove_tree(root);
    EXPECT_FALSE(exists(root));
    remove_tree(root);  // missing is fine
}

TEST(FsTest, ErrorsNameThePath) {
    const std::string root = make_temp_dir("dsrl_fs_test_");
    const std::string file = join(root, "plain");
    std::ofstream(file) << "x";
    try {
        make_dirs(join(file, "sub"));
        FAIL();
    } catch (const Error& e) {
        EXPECT_THAT(std::string(e.what()), ::testing::HasSubstr("cannot create directory '" + file + "': File exists"));
    }
    remove_tree(root);
    EXPECT_EQ(join("a/", "b"), "a/b");
    EXPECT_EQ(join("a", "b"), "a/b");
}

TEST(FsTest, AtomicWriteReplacesWholeFilesAndLeavesNothingOnFailure) {
    const std::string dir = make_temp_dir("dsrl_fs_atomic_");
    const std::string path = join(dir, "f.bin");
    write_file_atomic(path, {"hello ", "world"});
    write_file_atomic(path, {"second"});
    EXPECT_EQ(read_file(path), "second");
    try {
        write_file_atomic(join(dir, "missing/f.bin"), {"x"});
        FAIL() << "a missing directory must be an error";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), ::testing::HasSubstr("missing/f.bin"));
    }
    // The failed write left no temporary file; the earlier file is intact.
    EXPECT_TRUE(exists(path));
    EXPECT_FALSE(exists(join(dir, "missing")));
    EXPECT_FALSE(exists(path + ".tmp." + std::to_string(::getpid())));
    remove_tree(dir);
}

TEST(FsTest, TemporaryNamesAreTheWritersOwn) {
    for (const char* name : {"latest.tmp.123", "model.safetensors.tmp.98765", "eval.json.tmp.1", ".step-00000005.tmp",
                             ".model.tmp-Ab12Cd", ".model.tmp-Ab12Cd.old"}) {
        EXPECT_TRUE(is_temporary_name(name)) << name;
    }
    for (const char* name : {"latest", "step-00000005", "metrics.jsonl", ".dsrl.lock", ".dsrl.ranks.lock", "a.tmp",
                             "x.tmp.", "x.tmp.12a", ".tmp", "model.tmp-Ab12Cd", ".model.tmp-Ab12", "tb", ".", ".."}) {
        EXPECT_FALSE(is_temporary_name(name)) << name;
    }
}

TEST(FsTest, RemoveTemporariesKeepsEverythingElse) {
    const std::string dir = make_temp_dir("dsrl_fs_test_");
    make_dirs(join(dir, ".step-00000003.tmp/model"));
    std::ofstream(join(dir, ".step-00000003.tmp/model/x")) << "x";
    std::ofstream(join(dir, "latest.tmp.4242")) << "step-00000003\n";
    std::ofstream(join(dir, "latest")) << "step-00000002\n";
    make_dirs(join(dir, "step-00000002"));
    EXPECT_EQ(remove_temporaries(dir), 2);
    EXPECT_FALSE(exists(join(dir, ".step-00000003.tmp")));
    EXPECT_FALSE(exists(join(dir, "latest.tmp.4242")));
    EXPECT_TRUE(exists(join(dir, "latest")));
    EXPECT_TRUE(is_dir(join(dir, "step-00000002")));
    EXPECT_EQ(remove_temporaries(dir), 0);
    EXPECT_EQ(remove_temporaries(join(dir, "missing")), 0);
    remove_tree(dir);
}

TEST(FsTest, WriteFileAtomicRunsTheHookBeforeTheRename) {
    const std::string dir = make_temp_dir("dsrl_fs_test_");
    const std::string path = join(dir, "latest");
    bool ran = false;
    write_file_atomic(path, {"a"}, [&] {
        ran = true;
        EXPECT_FALSE(exists(path));
        EXPECT_TRUE(exists(path + ".tmp." + std::to_string(::getpid())));
    });
    EXPECT_TRUE(ran);
    EXPECT_EQ(read_file(path), "a");
    remove_tree(dir);
}

TEST(FsTest, FileLocksConflictAcrossDescriptorsAndRecordTheHolder) {
    const std::string dir = make_temp_dir("dsrl_fs_test_");
    const std::string path = join(dir, ".lock");
    FileLock a(path), b(path);
    EXPECT_EQ(a.try_lock(FileLock::Mode::kExclusive), FileLock::Result::kAcquired);
    a.write_content("host=h pid=1\n");
    EXPECT_EQ(b.try_lock(FileLock::Mode::kExclusive), FileLock::Result::kBusy);
    EXPECT_EQ(b.try_lock(FileLock::Mode::kShared), FileLock::Result::kBusy);
    EXPECT_EQ(b.read_content(), "host=h pid=1\n");
    a.write_content("short\n");  // replaced, not overwritten in place
    EXPECT_EQ(b.read_content(), "short\n");
    a.unlock();
    EXPECT_EQ(b.try_lock(FileLock::Mode::kShared), FileLock::Result::kAcquired);
    EXPECT_EQ(a.try_lock(FileLock::Mode::kShared), FileLock::Result::kAcquired);  // shared with shared
    EXPECT_EQ(a.try_lock(FileLock::Mode::kExclusive), FileLock::Result::kBusy);   // b still shares it
    EXPECT_FALSE(a.held());  // the failed conversion dropped a's shared lock
    {
        FileLock moved = std::move(b);  // the lock travels with the descriptor; destruction releases it
        EXPECT_TRUE(moved.held());
    }
    EXPECT_EQ(a.try_lock(FileLock::Mode::kExclusive), FileLock::Result::kAcquired);
    try {
        FileLock bad(join(dir, "missing/.lock"));
        FAIL() << "a lock file in a missing directory must be an error";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), ::testing::HasSubstr("missing/.lock"));
    }
    remove_tree(dir);
}

TEST(FsTest, LineReaderStreamsLinesOfAnyEndingAndNamesThePathOnErrors) {
    const std::string dir = make_temp_dir("dsrl_fs_lines_");
    auto lines_of = [&](const std::string& text) {
        const std::string path = join(dir, "f.txt");
        write_file_atomic(path, {text});
        LineReader in(path);
        std::vector<std::string> out;
        for (std::string line; in.next(line);) {
            EXPECT_EQ(in.line_number(), static_cast<int64_t>(out.size()) + 1);
            out.push_back(line);
        }
        return out;
    };
    using V = std::vector<std::string>;
    EXPECT_EQ(lines_of(""), V{});
    EXPECT_EQ(lines_of("a\nb\n"), (V{"a", "b"}));
    EXPECT_EQ(lines_of("a\nb"), (V{"a", "b"})) << "a last line without a newline";
    EXPECT_EQ(lines_of("a\r\n\r\nc\r\n"), (V{"a", "", "c"})) << "CRLF";
    EXPECT_EQ(lines_of("\xEF\xBB\xBF"
                       "a\n\xEF\xBB\xBF"
                       "b\n"),
              (V{"a",
                 "\xEF\xBB\xBF"
                 "b"}))
        << "BOM on line 1 only";
    std::string big(200000, 'x');  // longer than one read
    EXPECT_EQ(lines_of(big + "\n" + big), (V{big, big}));
    try {
        LineReader in(dir);
        FAIL() << "a directory must be an error";
    } catch (const IoError& e) {
        EXPECT_THAT(e.what(), ::testing::HasSubstr("cannot open '" + dir + "'"));
        EXPECT_EQ(e.reason(), std::strerror(EISDIR));
    }
    EXPECT_THROW(LineReader(join(dir, "missing")), IoError);
    remove_tree(dir);
}

}  // namespace
}  // namespace dsrl::fs
