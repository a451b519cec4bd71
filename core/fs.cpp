#include "core/fs.h"

#include <fcntl.h>
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

namespace {

// Writes every piece to `fd`, retrying short writes and EINTR; returns errno on failure, 0 on success.
int write_pieces(int fd, const std::vector<std::string_view>& pieces) {
    for (std::string_view piece : pieces) {
        const char* p = piece.data();
        size_t n = piece.size();
        while (n > 0) {
            const ssize_t w = ::write(fd, p, n);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return w < 0 ? errno : EIO;
            p += w;
            n -= static_cast<size_t>(w);
        }
    }
    return 0;
}

}  // namespace

std::string read_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot read", path, errno);
    std::string out;
    char buf[1 << 16];
    while (true) {
        const ssize_t r = ::read(fd, buf, sizeof(buf));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            const int err = errno;
            ::close(fd);
            fail("read failed on", path, err);
        }
        if (r == 0) break;
        out.append(buf, static_cast<size_t>(r));
    }
    ::close(fd);
    return out;
}

void write_file_synced(const std::string& path, const std::vector<std::string_view>& pieces) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("cannot create", path, errno);
    if (const int err = write_pieces(fd, pieces); err != 0) {
        ::close(fd);
        fail("write failed on", path, err);
    }
    if (::fsync(fd) != 0) {
        const int err = errno;
        ::close(fd);
        fail("fsync failed on", path, err);
    }
    if (::close(fd) != 0) fail("close failed on", path, errno);
}

void write_file_atomic(const std::string& path, const std::vector<std::string_view>& pieces) {
    const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
    try {
        write_file_synced(tmp, pieces);
    } catch (...) {
        ::unlink(tmp.c_str());
        throw;
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        fail("cannot rename the temporary file into place at", path, err);
    }
    const size_t slash = path.find_last_of('/');
    fsync_dir(slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash)));
}

void fsync_dir(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) fail("cannot open the directory to fsync it:", dir, errno);
    const int rc = ::fsync(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0) fail("fsync failed on the directory", dir, err);
}

}  // namespace dsrl::fs
