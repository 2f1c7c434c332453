// A sealed segment's full-precision vectors on disk, for the segment types
// that keep only codes in memory (hnsw_sq, ivf_sq8, ivf_pq): re-ranking and
// exact scans read candidates from here instead of the store. Row p holds the
// vector at segment position p, as prepared for the metric, followed by its
// CRC32, so a candidate is one positioned read and a damaged row is detected
// alone. The page cache keeps the hot rows; none are held on the heap.
//
// Layout: a 32-byte header (magic "CAIRNVEC", u32 format, u32 dim, u64 rows,
// u32 spare, u32 CRC32 of the 28 bytes before it), then the rows, 4 x dim + 4
// bytes each: the vector and its CRC-32C (format 2; format 1 files, whose
// rows carry zlib's CRC-32, are read as well).
//
// Thread-safety: a VectorFile is immutable once open; Read may be called from
// any number of threads (positioned reads on one descriptor). A Writer is
// used by one thread.
#ifndef CAIRN_INDEX_VECTOR_FILE_H_
#define CAIRN_INDEX_VECTOR_FILE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "storage/file_util.h"

namespace cairn::index {

class VectorFile {
 public:
  // Writes rows in order; Close fsyncs the file and its directory. Without
  // a successful Close the file is removed.
  class Writer {
   public:
    static absl::StatusOr<std::unique_ptr<Writer>> Create(const std::string& path, uint32_t dim);
    // Appends n rows (n x dim floats).
    absl::Status Append(const float* x, size_t n);
    absl::Status Close();
    uint64_t rows() const { return rows_; }

   private:
    Writer(std::unique_ptr<storage::SyncedFile> file, uint32_t dim) : file_(std::move(file)), dim_(dim) {}
    std::unique_ptr<storage::SyncedFile> file_;
    uint32_t dim_;
    uint64_t rows_ = 0;
    std::string row_;
  };

  // Writes the n rows of x (n x dim floats) to `path`, fsynced.
  static absl::Status Write(const std::string& path, uint32_t dim, const float* x, size_t n);

  // Opens a file Write or a Writer made. DataLoss when its header is corrupt
  // or its size is not the header's rows; FailedPrecondition when it holds
  // another dimension or number of rows than `dim` and `rows`; NotFound when
  // it is missing.
  static absl::StatusOr<std::shared_ptr<const VectorFile>> Open(const std::string& path, uint32_t dim,
                                                                uint64_t rows);
  VectorFile(const VectorFile&) = delete;
  VectorFile& operator=(const VectorFile&) = delete;

  // Copies row rows[i] to out[i * dim] and sets (*ok)[i], for each i (rows
  // in any order, repeats allowed). Adjacent rows are read together. A row
  // whose checksum does not match is left unset and counted (corrupt_rows);
  // InvalidArgument for a row past the end, Internal for a failed read.
  // REQUIRES: ok sized like rows.
  absl::Status Read(absl::Span<const uint64_t> rows, float* out, std::vector<bool>* ok) const;
  // Rows [first, first + count) to out, in order: a sequential read back
  // (a build from the file). DataLoss when any of them is damaged.
  absl::Status ReadRange(uint64_t first, size_t count, float* out) const;

  uint32_t dim() const { return dim_; }
  uint64_t rows() const { return rows_; }
  const std::string& path() const { return file_->path(); }
  // Damaged rows met by reads so far (a row read twice counts twice).
  uint64_t corrupt_rows() const { return corrupt_rows_.load(std::memory_order_relaxed); }

 private:
  VectorFile(std::unique_ptr<storage::ReadOnlyFile> file, uint32_t dim, uint64_t rows)
      : file_(std::move(file)), dim_(dim), rows_(rows) {}
  size_t row_bytes() const { return size_t{dim_} * sizeof(float) + 4; }

  const std::unique_ptr<storage::ReadOnlyFile> file_;
  const uint32_t dim_;
  const uint64_t rows_;
  bool zlib_rows_ = false;  // format 1: rows checked by CRC-32, not CRC-32C
  mutable std::atomic<uint64_t> corrupt_rows_{0};
};

}  // namespace cairn::index

#endif  // CAIRN_INDEX_VECTOR_FILE_H_
