// File-system helpers on POSIX calls. dsrl does not call std::filesystem operations: the PyPI libtorch.so
// exports its own copies of most of them (create_directories, remove_all, rename, status, ...), and where
// the loader binds our calls to those copies they crash (docs/architecture.md, Note [libstdc++ first]).
// Errors are fs::IoError (a dsrl::Error) naming the operation and the path; reason() is the system's reason,
// for callers that word their own message ("config file 'x' cannot be read: <reason>").
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace dsrl::fs {

/// A failed file operation: what() is "<operation> '<path>': <reason>", reason() the system's reason alone.
class IoError : public Error {
public:
    IoError(const std::string& message, std::string reason) : Error(message), reason_(std::move(reason)) {}
    const std::string& reason() const { return reason_; }

private:
    std::string reason_;
};

/// True when `path` exists (any file type; symlinks are followed).
bool exists(const std::string& path);
/// True when `path` is a directory.
bool is_dir(const std::string& path);
/// mkdir -p: creates `path` and its missing parents (mode 0755). Existing directories are fine.
void make_dirs(const std::string& path);
/// rm -rf: removes `path` and everything below it without following symlinks. A missing path is fine.
void remove_tree(const std::string& path);
/// A new private directory under $TMPDIR (or /tmp) whose name starts with `prefix`.
std::string make_temp_dir(const std::string& prefix);
/// The names in directory `dir` (not "." and ".."), sorted; IoError naming it when it cannot be listed.
std::vector<std::string> list_dir(const std::string& dir);
/// The whole content of the file at `path`; IoError naming the path and the reason when it cannot be read.
std::string read_file(const std::string& path);

/// Streams the lines of a text file (JSONL data, prompts): '\n' ends a line; a trailing '\r' (CRLF files) and a
/// UTF-8 byte-order mark before the first line are dropped. IoError when the file cannot be opened (a directory
/// included) or read.
///
///   fs::LineReader in(path);
///   for (std::string line; in.next(line);) use(in.line_number(), line);
class LineReader {
public:
    explicit LineReader(const std::string& path);
    ~LineReader();
    LineReader(const LineReader&) = delete;
    LineReader& operator=(const LineReader&) = delete;

    /// The next line into `line`; false at the end of the file.
    bool next(std::string& line);
    /// 1-based number of the line `next` returned last.
    int64_t line_number() const { return line_; }
    const std::string& path() const { return path_; }

private:
    bool fill();  // reads more bytes into buf_; false at the end of the file
    std::string path_;
    int fd_ = -1;
    std::string buf_;
    size_t pos_ = 0;
    bool eof_ = false;
    int64_t line_ = 0;
};

/// Writes `pieces` (concatenated) to `path` and fsyncs it (not atomic: for files inside a directory that is
/// itself published atomically).
void write_file_synced(const std::string& path, const std::vector<std::string_view>& pieces);

/// Writes `pieces` (concatenated) to `path` atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory. On failure `path` is untouched and the temporary file removed.
/// `before_rename` (may be empty) runs between the write and the rename: the fault-injection point of tests.
void write_file_atomic(const std::string& path,
                       const std::vector<std::string_view>& pieces,
                       const std::function<void()>& before_rename = {});

/// fsync of a directory (makes renames and new entries in it durable).
void fsync_dir(const std::string& dir);

/// The size of the file at `path` in bytes, -1 when it does not exist.
int64_t file_size(const std::string& path);

/// The memory this process's machine lets it use, in bytes: the physical memory, or the cgroup's limit
/// (/sys/fs/cgroup/memory.max, cgroup v2) where that is lower; -1 when neither is known.
int64_t memory_limit_bytes();
/// Cuts the file at `path` to `size` bytes and fsyncs it; dsrl::Error naming it on failure.
void truncate_file(const std::string& path, int64_t size);

/// `dir + "/" + name`, without doubling the separator.
std::string join(const std::string& dir, const std::string& name);

/// True when `name` (an entry name, not a path) is a temporary file or directory that dsrl's own writers
/// create and rename into place: `<file>.tmp.<pid>` (write_file_atomic), `.<name>.tmp` (training checkpoints'
/// step directories) and `.<name>.tmp-XXXXXX[.old]` (Hugging Face checkpoint saves). Left behind only by a
/// writer that was killed between creating and renaming it.
bool is_temporary_name(const std::string& name);

/// Removes every entry of `dir` (not recursive) for which is_temporary_name holds, with one warning each;
/// returns how many. Call it only while no other writer can use `dir` (under a run lock).
int remove_temporaries(const std::string& dir);

/// An advisory lock (flock(2)) on a file, held while this object lives. The kernel releases it when the
/// process dies, however it dies, so a killed holder never leaves a stale lock. The descriptor is
/// close-on-exec. Two FileLock objects on one path conflict even inside one process.
///
///   fs::FileLock lock(fs::join(dir, ".lock"));
///   if (lock.try_lock(fs::FileLock::Mode::kExclusive) == fs::FileLock::Result::kBusy) { ... }
class FileLock {
public:
    enum class Mode { kShared, kExclusive };
    enum class Result {
        kAcquired,
        kBusy,         ///< another open file description holds a conflicting lock
        kUnsupported,  ///< the file system does not implement flock (ENOLCK, ENOSYS, EOPNOTSUPP, EINVAL)
    };

    FileLock() = default;
    /// Opens (creating it, mode 0644) the lock file at `path`; dsrl::Error naming it when that fails.
    explicit FileLock(const std::string& path);
    ~FileLock();
    FileLock(FileLock&& other) noexcept;
    FileLock& operator=(FileLock&& other) noexcept;
    FileLock(const FileLock&) = delete;
    FileLock& operator=(const FileLock&) = delete;

    /// Non-blocking. A lock already held in the other mode is converted; flock's conversion is not atomic, and
    /// a conversion that fails (kBusy) leaves no lock held.
    /// Other errors are a dsrl::Error naming the file. After kUnsupported, error_text() gives the reason.
    Result try_lock(Mode mode);
    void unlock();
    bool held() const { return held_; }
    const std::string& path() const { return path_; }
    std::string error_text() const;

    /// Replaces the lock file's content (e.g. who holds it) and fsyncs it. Hold the exclusive lock.
    void write_content(const std::string& text);
    /// The lock file's content ("" when it cannot be read).
    std::string read_content() const;

private:
    std::string path_;
    int fd_ = -1;
    bool held_ = false;
    int last_errno_ = 0;
};

}  // namespace dsrl::fs
