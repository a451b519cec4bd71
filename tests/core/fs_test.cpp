#include "core/fs.h"

#include <unistd.h>

#include <fstream>
#include <iterator>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/error.h"

namespace dsrl::fs {
namespace {

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
    std::ifstream in(path);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(text, "second");
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

}  // namespace
}  // namespace dsrl::fs
