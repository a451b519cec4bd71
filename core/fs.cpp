#include "core/fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/logging.h"

namespace dsrl::fs {
namespace {

[[noreturn]] void fail(const char* what, const std::string& path, int err) {
    throw IoError(absl::StrCat(what, " '", path, "': ", std::strerror(err)), std::strerror(err));
}

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
    return ::remove(path) == 0 || errno == ENOENT ? 0 : errno;
}

}  // namespace

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

bool is_dir(const std::string& path) {
    struct stat st {};
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
    struct stat st {};
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

int64_t file_size(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

void truncate_file(const std::string& path, int64_t size) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open for truncation", path, errno);
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0 || ::fsync(fd) != 0) {
        const int err = errno;
        ::close(fd);
        fail("cannot truncate", path, err);
    }
    ::close(fd);
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

int64_t memory_limit_bytes() {
    int64_t limit = -1;
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) limit = static_cast<int64_t>(pages) * page;
    const int fd = ::open("/sys/fs/cgroup/memory.max", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[32] = {};
        const ssize_t r = ::read(fd, buf, sizeof(buf) - 1);
        ::close(fd);
        char* end = nullptr;
        const long long v = r > 0 ? std::strtoll(buf, &end, 10) : 0;  // "max" (no limit) parses as nothing
        if (end != buf && v > 0 && (limit < 0 || v < limit)) limit = v;
    }
    return limit;
}

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

LineReader::LineReader(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail("cannot open", path, errno);
    struct stat st {};
    if (::fstat(fd_, &st) == 0 && S_ISDIR(st.st_mode)) {
        ::close(fd_);
        fd_ = -1;
        fail("cannot open", path, EISDIR);
    }
}

LineReader::~LineReader() {
    if (fd_ >= 0) ::close(fd_);
}

bool LineReader::fill() {
    if (eof_) return false;
    if (pos_ > 0) {
        buf_.erase(0, pos_);
        pos_ = 0;
    }
    char chunk[1 << 16];
    while (true) {
        const ssize_t r = ::read(fd_, chunk, sizeof(chunk));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) fail("read failed on", path_, errno);
        if (r == 0) {
            eof_ = true;
            return false;
        }
        buf_.append(chunk, static_cast<size_t>(r));
        return true;
    }
}

bool LineReader::next(std::string& line) {
    size_t nl;
    while ((nl = buf_.find('\n', pos_)) == std::string::npos) {
        if (!fill()) break;
    }
    if (nl == std::string::npos) {
        if (pos_ >= buf_.size()) return false;  // the end, after a final '\n' or of an empty file
        nl = buf_.size();                       // a last line without '\n'
    }
    line.assign(buf_, pos_, nl - pos_);
    pos_ = std::min(nl + 1, buf_.size());
    ++line_;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_ == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);
    return true;
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

void write_file_atomic(const std::string& path,
                       const std::vector<std::string_view>& pieces,
                       const std::function<void()>& before_rename) {
    const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
    try {
        write_file_synced(tmp, pieces);
        if (before_rename) before_rename();
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

namespace {

bool all_digits(const std::string& s, size_t from) {
    if (from >= s.size()) return false;
    for (size_t i = from; i < s.size(); ++i) {
        if (s[i] < '0' || s[i] > '9') return false;
    }
    return true;
}

bool ends_with(const std::string& s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool is_temporary_name(const std::string& name) {
    if (name == "." || name == "..") return false;
    // <file>.tmp.<pid> (write_file_atomic)
    if (const size_t p = name.rfind(".tmp."); p != std::string::npos && p > 0 && all_digits(name, p + 5)) return true;
    if (name.size() < 2 || name[0] != '.') return false;
    // .<name>.tmp (training checkpoint step directories)
    if (ends_with(name, ".tmp") && name.size() > 5) return true;
    // .<name>.tmp-XXXXXX and .<name>.tmp-XXXXXX.old (mkdtemp directories of Hugging Face saves)
    const std::string base = ends_with(name, ".old") ? name.substr(0, name.size() - 4) : name;
    const size_t p = base.rfind(".tmp-");
    return p != std::string::npos && p > 1 && base.size() == p + 5 + 6;
}

std::vector<std::string> list_dir(const std::string& dir) {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) fail("cannot list the directory", dir, errno);
    std::vector<std::string> out;
    while (const dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name != "." && name != "..") out.push_back(name);
    }
    ::closedir(d);
    std::sort(out.begin(), out.end());
    return out;
}

int remove_temporaries(const std::string& dir) {
    if (!is_dir(dir)) return 0;
    std::vector<std::string> stale;
    for (const std::string& name : list_dir(dir)) {
        if (is_temporary_name(name)) stale.push_back(name);
    }
    for (const std::string& name : stale) {
        const std::string path = join(dir, name);
        DSRL_LOG(warn) << "removing " << path << " (left behind by a writer that was interrupted)";
        remove_tree(path);
    }
    return static_cast<int>(stale.size());
}

FileLock::FileLock(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot open the lock file", path, errno);
}

FileLock::~FileLock() {
    if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the lock
}

FileLock::FileLock(FileLock&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_), held_(other.held_), last_errno_(other.last_errno_) {
    other.fd_ = -1;
    other.held_ = false;
}

FileLock& FileLock::operator=(FileLock&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        path_ = std::move(other.path_);
        fd_ = other.fd_;
        held_ = other.held_;
        last_errno_ = other.last_errno_;
        other.fd_ = -1;
        other.held_ = false;
    }
    return *this;
}

FileLock::Result FileLock::try_lock(Mode mode) {
    DSRL_INTERNAL_ASSERT(fd_ >= 0, "FileLock::try_lock on a closed lock");
    const int op = (mode == Mode::kExclusive ? LOCK_EX : LOCK_SH) | LOCK_NB;
    while (true) {
        if (::flock(fd_, op) == 0) {
            held_ = true;
            return Result::kAcquired;
        }
        last_errno_ = errno;
        if (last_errno_ == EINTR) continue;
        if (last_errno_ == EWOULDBLOCK) {
            held_ = false;  // a failed conversion has dropped the lock held before (flock(2))
            return Result::kBusy;
        }
        if (last_errno_ == ENOLCK || last_errno_ == ENOSYS || last_errno_ == EOPNOTSUPP || last_errno_ == EINVAL) {
            return Result::kUnsupported;
        }
        fail("cannot lock", path_, last_errno_);
    }
}

void FileLock::unlock() {
    if (fd_ >= 0 && held_) ::flock(fd_, LOCK_UN);
    held_ = false;
}

std::string FileLock::error_text() const { return last_errno_ != 0 ? std::strerror(last_errno_) : ""; }

void FileLock::write_content(const std::string& text) {
    DSRL_INTERNAL_ASSERT(fd_ >= 0, "FileLock::write_content on a closed lock");
    if (::ftruncate(fd_, 0) != 0 || ::lseek(fd_, 0, SEEK_SET) != 0) fail("cannot truncate the lock file", path_, errno);
    if (const int err = write_pieces(fd_, {text}); err != 0) fail("write failed on the lock file", path_, err);
    ::fsync(fd_);
}

std::string FileLock::read_content() const {
    try {
        return read_file(path_);
    } catch (const Error&) {
        return "";
    }
}

}  // namespace dsrl::fs
