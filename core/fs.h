// File-system helpers on POSIX calls. dsrl does not call std::filesystem operations: the PyPI libtorch.so
// exports its own copies of most of them (create_directories, remove_all, rename, status, ...), and where
// the loader binds our calls to those copies they crash (docs/architecture.md, Note [libstdc++ first]).
// Errors are dsrl::Error naming the path and the system's reason.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace dsrl::fs {

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
/// The whole content of the file at `path`; dsrl::Error naming the path and the reason when it cannot be read.
std::string read_file(const std::string& path);

/// Writes `pieces` (concatenated) to `path` and fsyncs it (not atomic: for files inside a directory that is
/// itself published atomically).
void write_file_synced(const std::string& path, const std::vector<std::string_view>& pieces);

/// Writes `pieces` (concatenated) to `path` atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory. On failure `path` is untouched and the temporary file removed.
void write_file_atomic(const std::string& path, const std::vector<std::string_view>& pieces);

/// fsync of a directory (makes renames and new entries in it durable).
void fsync_dir(const std::string& dir);

/// `dir + "/" + name`, without doubling the separator.
std::string join(const std::string& dir, const std::string& name);

}  // namespace dsrl::fs
