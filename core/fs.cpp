#include "core/fs.h"

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace dsrl::fs {
namespace {

[[noreturn]] void fail(const char* what, const std::string& path, int err) {
    throw Error(absl::StrCat(what, " '", path, "': ", std::strerror(err)));
}

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
    return ::remove(path) == 0 || errno == ENOENT ? 0 : errno;
}

}  // namespace

bool exists(const std::string& path) {
    struct stat st{};
    return ::stat(path.c_str(), &st) == 0;
}

bool is_dir(const std::string& path) {
    struct stat st{};
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_dirs(const std::string& path) {
    if (path.empty() || is_dir(path)) return;
    const size_t slash = path.find_last_of('/', path.size() - (path.back() == '/' ? 2 : 1));
    if (slash != std::string::npos && slash > 0) make_dirs(path.substr(0, slash));
    if (::mkdir(path.c_str(), 0755) != 0 && !(errno == EEXIST && is_dir(path))) {
        fail("cannot create directory", path, errno);
    }
}

void remove_tree(const std::string& path) {
    struct stat st{};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return;
        fail("cannot remove", path, errno);
    }
    const int rc = ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (rc != 0) fail("cannot remove", path, rc > 0 ? rc : errno);
}

std::string make_temp_dir(const std::string& prefix) {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = join(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", prefix + "XXXXXX");
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) fail("cannot create a temporary directory", pattern, errno);
    return std::string(buf.data());
}

std::string join(const std::string& dir, const std::string& name) {
    if (dir.empty()) return name;
    return dir.back() == '/' ? dir + name : dir + "/" + name;
}

}  // namespace dsrl::fs
