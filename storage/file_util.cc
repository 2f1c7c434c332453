#include "storage/file_util.h"

#include <fcntl.h>
#include <nmmintrin.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"

namespace cairn::storage {
namespace {

absl::Status ErrnoStatus(std::string_view what, const std::string& path) {
  int e = errno;
  std::string msg = absl::StrCat(std::string(what), " ", path, ": ", std::strerror(e));
  if (e == ENOENT) return absl::NotFoundError(msg);
  if (e == ENOSPC || e == EDQUOT) return absl::ResourceExhaustedError(msg);
  if (e == EACCES || e == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

std::string ParentDir(const std::string& path) {
  std::filesystem::path p(path);
  auto parent = p.parent_path();
  return parent.empty() ? "." : parent.string();
}

}  // namespace

absl::Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open directory", dir);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoStatus("fsync directory", dir);
  return absl::OkStatus();
}

absl::Status WriteFileSynced(const std::string& path, std::string_view data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("create", path);
  absl::Status s = WriteAll(fd, data, path);
  if (s.ok() && ::fsync(fd) != 0) s = ErrnoStatus("fsync", path);
  ::close(fd);
  if (!s.ok()) return s;
  return SyncDir(ParentDir(path));
}

absl::Status WriteFileAtomic(const std::string& path, std::string_view data) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("create", tmp);
  absl::Status s = WriteAll(fd, data, tmp);
  if (s.ok() && ::fsync(fd) != 0) s = ErrnoStatus("fsync", tmp);
  ::close(fd);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) return ErrnoStatus("rename to", path);
  return SyncDir(ParentDir(path));
}

absl::StatusOr<std::unique_ptr<ReadOnlyFile>> ReadOnlyFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status s = ErrnoStatus("stat", path);
    ::close(fd);
    return s;
  }
  return std::unique_ptr<ReadOnlyFile>(new ReadOnlyFile(path, fd, static_cast<uint64_t>(st.st_size)));
}

ReadOnlyFile::~ReadOnlyFile() { ::close(fd_); }

absl::Status ReadOnlyFile::ReadAt(uint64_t offset, void* out, size_t n) const {
  char* buf = static_cast<char*>(out);
  while (n > 0) {
    ssize_t r = ::pread(fd_, buf, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read", path_);
    }
    if (r == 0) return absl::DataLossError(absl::StrCat(path_, " ends before offset ", offset + n));
    buf += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> ReadOnlyFile::Crc32Of(uint64_t end) const {
  std::string buf(std::min<uint64_t>(end, 4 << 20), '\0');
  uint32_t crc = 0;
  for (uint64_t at = 0; at < end;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), end - at));
    CAIRN_RETURN_IF_ERROR(ReadAt(at, buf.data(), n));
    crc = Crc32(std::string_view(buf.data(), n), crc);
    at += n;
  }
  return crc;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open", path);
  std::string out;
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status s = ErrnoStatus("read", path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

absl::Status LinkOrCopyFile(const std::string& from, const std::string& to) {
  if (::link(from.c_str(), to.c_str()) == 0) return absl::OkStatus();
  std::error_code ec;
  std::filesystem::copy_file(from, to, ec);
  if (ec) return absl::InternalError(absl::StrCat("copy ", from, " to ", to, ": ", ec.message()));
  int fd = ::open(to.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open", to);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoStatus("fsync", to);
  return absl::OkStatus();
}

uint32_t Crc32(std::string_view data, uint32_t seed) {
  uLong crc = seed;
  // zlib takes uInt lengths: feed large buffers in pieces.
  while (!data.empty()) {
    size_t n = std::min<size_t>(data.size(), 1u << 30);
    crc = ::crc32(crc, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(n));
    data.remove_prefix(n);
  }
  return static_cast<uint32_t>(crc);
}

namespace {

// CRC-32C's reflected polynomial, a byte at a time.
struct Crc32cTable {
  uint32_t t[256];
  constexpr Crc32cTable() : t() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
  }
};
constexpr Crc32cTable kCrc32c;

__attribute__((target("sse4.2"))) uint32_t Crc32cSse42(const unsigned char* p, size_t n, uint32_t crc) {
  uint64_t c = crc;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  for (; n > 0; ++p, --n) c32 = _mm_crc32_u8(c32, *p);
  return c32;
}

const bool kHasSse42 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}();

}  // namespace

uint32_t Crc32cPortable(std::string_view data, uint32_t seed) {
  uint32_t c = ~seed;
  for (unsigned char b : data) c = kCrc32c.t[(c ^ b) & 0xff] ^ (c >> 8);
  return ~c;
}

uint32_t Crc32c(std::string_view data, uint32_t seed) {
  if (!kHasSse42) return Crc32cPortable(data, seed);
  return ~Crc32cSse42(reinterpret_cast<const unsigned char*>(data.data()), data.size(), ~seed);
}

uint32_t Crc32Combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b) {
  return static_cast<uint32_t>(::crc32_combine64(crc_a, crc_b, static_cast<z_off64_t>(length_b)));
}

namespace {
constexpr size_t kSyncedBuffer = 4 << 20;  // a multiple of every block size O_DIRECT asks to align to
}  // namespace

void SyncedFile::FreeDeleter::operator()(char* p) const { std::free(p); }

absl::StatusOr<std::unique_ptr<SyncedFile>> SyncedFile::Create(const std::string& path, Cache cache) {
  constexpr int kFlags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
  int fd = -1;
  if (cache == Cache::kBypass) {
    fd = ::open(path.c_str(), kFlags | O_DIRECT, 0644);
    if (fd < 0 && errno != EINVAL) return ErrnoStatus("create", path);
  }
  const bool direct = fd >= 0;
  if (!direct) fd = ::open(path.c_str(), kFlags, 0644);
  if (fd < 0) return ErrnoStatus("create", path);
  auto file = std::unique_ptr<SyncedFile>(new SyncedFile(path, fd));
  if (direct) {
    void* block = nullptr;
    if (::posix_memalign(&block, 4096, kSyncedBuffer) != 0) {
      return absl::ResourceExhaustedError(absl::StrCat("no memory for the write buffer of ", path));
    }
    file->block_.reset(static_cast<char*>(block));
  }
  return file;
}

SyncedFile::~SyncedFile() {
  if (!closed_) {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
}

absl::Status SyncedFile::Append(std::string_view data) {
  size_ += data.size();
  return block_ != nullptr ? AppendDirect(data) : AppendBuffered(data);
}

absl::Status SyncedFile::AppendBuffered(std::string_view data) {
  if (buf_.size() + data.size() < kSyncedBuffer) {
    buf_.append(data);
    return absl::OkStatus();
  }
  if (absl::Status s = Flush(); !s.ok()) return s;
  if (data.size() >= kSyncedBuffer) return WriteAll(fd_, data, path_);
  buf_.append(data);
  return absl::OkStatus();
}

absl::Status SyncedFile::AppendDirect(std::string_view data) {
  while (!data.empty()) {
    const size_t take = std::min(kSyncedBuffer - block_used_, data.size());
    std::memcpy(block_.get() + block_used_, data.data(), take);
    block_used_ += take;
    data.remove_prefix(take);
    if (block_used_ < kSyncedBuffer) break;
    // A whole block at an offset that is a multiple of the block's size.
    ssize_t n;
    do {
      n = ::write(fd_, block_.get(), kSyncedBuffer);
    } while (n < 0 && errno == EINTR);
    if (n == static_cast<ssize_t>(kSyncedBuffer)) {
      block_used_ = 0;
      continue;
    }
    if (n < 0 && errno == EINVAL) {
      // The device wants another alignment: on through the cache.
      CAIRN_RETURN_IF_ERROR(EndDirect());
      return AppendBuffered(data);
    }
    if (n < 0) return ErrnoStatus("write", path_);
    return absl::InternalError(absl::StrCat("write ", path_, ": a direct write of a whole block was cut short"));
  }
  return absl::OkStatus();
}

absl::Status SyncedFile::EndDirect() {
  if (block_ == nullptr) return absl::OkStatus();
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags < 0 || ::fcntl(fd_, F_SETFL, flags & ~O_DIRECT) != 0) return ErrnoStatus("fcntl", path_);
  absl::Status s = WriteAll(fd_, std::string_view(block_.get(), block_used_), path_);
  block_.reset();
  block_used_ = 0;
  return s;
}

absl::Status SyncedFile::Flush() {
  if (absl::Status s = EndDirect(); !s.ok()) return s;
  if (buf_.empty()) return absl::OkStatus();
  absl::Status s = WriteAll(fd_, buf_, path_);
  buf_.clear();
  return s;
}

absl::Status SyncedFile::WriteAt(uint64_t offset, std::string_view data) {
  if (absl::Status s = Flush(); !s.ok()) return s;
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd_, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("write", path_);
    data.remove_prefix(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status SyncedFile::Close() {
  if (absl::Status s = Flush(); !s.ok()) return s;
  if (::fsync(fd_) != 0) return ErrnoStatus("fsync", path_);
  if (::close(fd_) != 0) {
    closed_ = true;
    ::unlink(path_.c_str());
    return ErrnoStatus("close", path_);
  }
  closed_ = true;
  return SyncDir(ParentDir(path_));
}

absl::StatusOr<std::unique_ptr<FileLock>> FileLock::Acquire(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("open lock file", path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    ::close(fd);
    if (e == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data directory is in use by another process (lock held on ", path,
          "); stop that process or open another directory"));
    }
    errno = e;
    return ErrnoStatus("lock", path);
  }
  return std::unique_ptr<FileLock>(new FileLock(fd));
}

FileLock::~FileLock() {
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
}

}  // namespace cairn::storage
