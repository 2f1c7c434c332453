#include "index/vector_file.h"


#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"

namespace cairn::index {
namespace {

constexpr char kMagic[8] = {'C', 'A', 'I', 'R', 'N', 'V', 'E', 'C'};
// 2: rows checked by CRC-32C (storage::Crc32c). Format 1 (zlib's CRC-32,
// a few times slower to check on each re-ranked row) is read as before.
constexpr uint32_t kFormat = 2;
constexpr uint32_t kFormatZlibRows = 1;
constexpr size_t kHeaderBytes = 32;
// One read covers at most this much: runs of adjacent rows longer than that
// are split, so a scan of a whole segment needs no large buffer.
constexpr size_t kMaxReadBytes = 1 << 20;

void PutU32(std::string* s, uint32_t v) { s->append(reinterpret_cast<const char*>(&v), 4); }
void PutU64(std::string* s, uint64_t v) { s->append(reinterpret_cast<const char*>(&v), 8); }

std::string Header(uint32_t dim, uint64_t rows) {
  std::string h(kMagic, sizeof(kMagic));
  PutU32(&h, kFormat);
  PutU32(&h, dim);
  PutU64(&h, rows);
  PutU32(&h, 0);
  PutU32(&h, storage::Crc32(h));
  return h;
}

}  // namespace

absl::StatusOr<std::unique_ptr<VectorFile::Writer>> VectorFile::Writer::Create(const std::string& path,
                                                                               uint32_t dim) {
  CAIRN_ASSIGN_OR_RETURN(auto file, storage::SyncedFile::Create(path));
  // The header's row count is filled in by Close.
  CAIRN_RETURN_IF_ERROR(file->Append(Header(dim, 0)));
  return std::unique_ptr<Writer>(new Writer(std::move(file), dim));
}

absl::Status VectorFile::Writer::Append(const float* x, size_t n) {
  const size_t vec_bytes = size_t{dim_} * sizeof(float);
  for (size_t i = 0; i < n; ++i) {
    row_.assign(reinterpret_cast<const char*>(x + i * dim_), vec_bytes);
    PutU32(&row_, storage::Crc32c(std::string_view(row_.data(), vec_bytes)));
    CAIRN_RETURN_IF_ERROR(file_->Append(row_));
  }
  rows_ += n;
  return absl::OkStatus();
}

absl::Status VectorFile::Writer::Close() {
  CAIRN_RETURN_IF_ERROR(file_->WriteAt(0, Header(dim_, rows_)));
  return file_->Close();
}

absl::Status VectorFile::Write(const std::string& path, uint32_t dim, const float* x, size_t n) {
  CAIRN_ASSIGN_OR_RETURN(auto w, Writer::Create(path, dim));
  CAIRN_RETURN_IF_ERROR(w->Append(x, n));
  return w->Close();
}

absl::StatusOr<std::shared_ptr<const VectorFile>> VectorFile::Open(const std::string& path, uint32_t dim,
                                                                   uint64_t rows) {
  auto opened = storage::ReadOnlyFile::Open(path);
  if (absl::IsNotFound(opened.status())) return absl::NotFoundError(absl::StrCat("vector file ", path, " is missing"));
  CAIRN_RETURN_IF_ERROR(opened.status());
  const uint64_t end = (*opened)->size();
  auto* opening = new VectorFile(std::move(*opened), dim, rows);
  std::shared_ptr<const VectorFile> file(opening);
  auto corrupt = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat("vector file ", path, " is corrupt: ", why));
  };
  char h[kHeaderBytes];
  absl::Status st = file->file_->ReadAt(0, h, kHeaderBytes);
  if (absl::IsDataLoss(st)) return corrupt("truncated header");
  CAIRN_RETURN_IF_ERROR(st);
  uint32_t format, file_dim, crc;
  uint64_t file_rows;
  std::memcpy(&format, h + 8, 4);
  std::memcpy(&file_dim, h + 12, 4);
  std::memcpy(&file_rows, h + 16, 8);
  std::memcpy(&crc, h + 28, 4);
  if (std::memcmp(h, kMagic, sizeof(kMagic)) != 0) return corrupt("bad magic");
  if (storage::Crc32(std::string_view(h, 28)) != crc) return corrupt("header checksum mismatch");
  if (format != kFormat && format != kFormatZlibRows) {
    return absl::FailedPreconditionError(absl::StrCat("vector file ", path, " has format ", format,
                                                      "; this build reads formats ", kFormatZlibRows, " and ",
                                                      kFormat));
  }
  opening->zlib_rows_ = format == kFormatZlibRows;
  if (file_dim != dim || file_rows != rows) {
    return absl::FailedPreconditionError(absl::StrCat("vector file ", path, " holds ", file_rows, " rows of ",
                                                      file_dim, " dimensions; its segment has ", rows, " of ",
                                                      dim));
  }
  if (end != kHeaderBytes + rows * file->row_bytes()) {
    return corrupt(absl::StrCat(end, " bytes where its header says ", kHeaderBytes + rows * file->row_bytes()));
  }
  return file;
}

absl::Status VectorFile::ReadRange(uint64_t first, size_t count, float* out) const {
  std::vector<uint64_t> rows(count);
  std::iota(rows.begin(), rows.end(), first);
  std::vector<bool> ok(count, false);
  CAIRN_RETURN_IF_ERROR(Read(rows, out, &ok));
  if (std::find(ok.begin(), ok.end(), false) != ok.end()) {
    return absl::DataLossError(absl::StrCat("vector file ", path(), " has damaged rows in ", first, "..",
                                            first + count - 1));
  }
  return absl::OkStatus();
}

absl::Status VectorFile::Read(absl::Span<const uint64_t> rows, float* out, std::vector<bool>* ok) const {
  const size_t n = rows.size();
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return rows[a] < rows[b]; });
  if (n > 0 && rows[order.back()] >= rows_) {
    return absl::InvalidArgumentError(absl::StrCat("row ", rows[order.back()], " of ", path(), ", which has ", rows_));
  }
  const size_t rb = row_bytes(), vec_bytes = size_t{dim_} * sizeof(float);
  const size_t max_run = std::max<size_t>(1, kMaxReadBytes / rb);
  std::string buf;
  for (size_t a = 0; a < n;) {
    // A run of adjacent (or repeated) rows: one read.
    size_t b = a + 1;
    while (b < n && rows[order[b]] - rows[order[b - 1]] <= 1 && rows[order[b]] - rows[order[a]] < max_run) ++b;
    const uint64_t first = rows[order[a]], count = rows[order[b - 1]] - first + 1;
    buf.resize(count * rb);
    CAIRN_RETURN_IF_ERROR(file_->ReadAt(kHeaderBytes + first * rb, buf.data(), buf.size()));
    uint64_t checked = UINT64_MAX;
    bool good = false;
    for (size_t j = a; j < b; ++j) {
      const uint64_t r = rows[order[j]];
      const char* row = buf.data() + (r - first) * rb;
      if (r != checked) {
        uint32_t crc;
        std::memcpy(&crc, row + vec_bytes, 4);
        const std::string_view v(row, vec_bytes);
        good = (zlib_rows_ ? storage::Crc32(v) : storage::Crc32c(v)) == crc;
        checked = r;
        if (!good && corrupt_rows_.fetch_add(1, std::memory_order_relaxed) == 0) {
          std::fprintf(stderr, "cairn: vector file %s: row %llu is damaged (checksum mismatch); its vector is read from storage\n",
                       path().c_str(), static_cast<unsigned long long>(r));
        }
      }
      if (!good) continue;
      std::memcpy(out + size_t{order[j]} * dim_, row, vec_bytes);
      (*ok)[order[j]] = true;
    }
    a = b;
  }
  return absl::OkStatus();
}

}  // namespace cairn::index
