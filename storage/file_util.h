// Small, careful file primitives: atomic replace, fsync of files and
// directories, an advisory process lock, checksums.
#ifndef CAIRN_STORAGE_FILE_UTIL_H_
#define CAIRN_STORAGE_FILE_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace cairn::storage {

// Writes `data` to `path` so that after a crash the file holds either the old
// or the new contents: temp file, fsync, rename, fsync of the directory.
absl::Status WriteFileAtomic(const std::string& path, std::string_view data);
// Writes and fsyncs `path` (created or truncated), and fsyncs its directory.
absl::Status WriteFileSynced(const std::string& path, std::string_view data);
absl::StatusOr<std::string> ReadFile(const std::string& path);
absl::Status SyncDir(const std::string& dir);
// Hard-links `from` to `to`, copying when linking is not possible.
absl::Status LinkOrCopyFile(const std::string& from, const std::string& to);

uint32_t Crc32(std::string_view data, uint32_t seed = 0);

// An exclusive advisory lock (flock) on a file, held until destruction.
// Acquire fails with FailedPrecondition when another process holds it.
class FileLock {
 public:
  static absl::StatusOr<std::unique_ptr<FileLock>> Acquire(const std::string& path);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace cairn::storage

#endif  // CAIRN_STORAGE_FILE_UTIL_H_
