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
// CRC-32C (Castagnoli), chained through `seed` as Crc32 is; with SSE4.2's
// crc32 instruction where the CPU has it (a few times faster than zlib's
// CRC-32 on short records), else a table. For new checksummed records on hot
// read paths.
uint32_t Crc32c(std::string_view data, uint32_t seed = 0);
// The table computation Crc32c falls back to (for tests).
uint32_t Crc32cPortable(std::string_view data, uint32_t seed = 0);
// The CRC of A followed by B, from Crc32(A), Crc32(B) and B's length.
uint32_t Crc32Combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b);

// A file written as a stream (for large files: no copy of the whole content
// in memory), with writes at earlier offsets allowed, fsynced (with its
// directory) by Close. Without a successful Close the file is removed.
class SyncedFile {
 public:
  // kBypass writes the file's whole 4 MiB blocks around the page cache
  // (O_DIRECT), for large files that are read back only when opened later:
  // the cache would hold a copy nothing reads (in a container, charged to
  // its memory limit) and Close's fsync would write it out all the same.
  // Falls back to kKeep where the file system refuses O_DIRECT. Whatever
  // follows the last whole block, and every WriteAt, goes through the cache.
  enum class Cache { kKeep, kBypass };
  static absl::StatusOr<std::unique_ptr<SyncedFile>> Create(const std::string& path, Cache cache = Cache::kKeep);
  ~SyncedFile();
  SyncedFile(const SyncedFile&) = delete;
  SyncedFile& operator=(const SyncedFile&) = delete;
  // Buffered append at the end.
  absl::Status Append(std::string_view data);
  // Writes at `offset`, which must lie within what was appended.
  absl::Status WriteAt(uint64_t offset, std::string_view data);
  absl::Status Close();
  uint64_t size() const { return size_; }

 private:
  struct FreeDeleter {
    void operator()(char* p) const;
  };
  SyncedFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status Flush();
  absl::Status AppendBuffered(std::string_view data);
  // Bypass mode: appends into the aligned block, written when full.
  absl::Status AppendDirect(std::string_view data);
  // Leaves bypass mode, writing what the block holds through the cache.
  absl::Status EndDirect();
  std::string path_;
  int fd_;
  std::string buf_;
  std::unique_ptr<char, FreeDeleter> block_;  // bypass mode while set
  size_t block_used_ = 0;
  uint64_t size_ = 0;
  bool closed_ = false;
};

// A file read at offsets (pread), for files too large to hold whole. Reads
// from several threads at once are fine.
class ReadOnlyFile {
 public:
  // NotFound when `path` does not exist.
  static absl::StatusOr<std::unique_ptr<ReadOnlyFile>> Open(const std::string& path);
  ~ReadOnlyFile();
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
  // Reads exactly n bytes at `offset`; DataLoss when the file ends first.
  absl::Status ReadAt(uint64_t offset, void* out, size_t n) const;
  // CRC32 (as Crc32) of the bytes in [0, end), read a piece at a time.
  absl::StatusOr<uint32_t> Crc32Of(uint64_t end) const;
  uint64_t size() const { return size_; }  // when opened
  const std::string& path() const { return path_; }

 private:
  ReadOnlyFile(std::string path, int fd, uint64_t size) : path_(std::move(path)), fd_(fd), size_(size) {}
  const std::string path_;
  const int fd_;
  const uint64_t size_;
};

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
