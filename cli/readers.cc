#include "cli/readers.h"

#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace cairn::cli {
namespace {

// A gzip-or-plain file (zlib reads plain files as they are).
class Input {
 public:
  static absl::StatusOr<std::unique_ptr<Input>> Open(const std::string& path) {
    errno = 0;
    gzFile f = path == "-" ? gzdopen(dup(STDIN_FILENO), "rb") : gzopen(path.c_str(), "rb");
    if (f == nullptr) {
      const int e = errno;
      return absl::NotFoundError(absl::StrCat(path, ": cannot open", e != 0 ? ": " : "", e != 0 ? std::strerror(e) : ""));
    }
    gzbuffer(f, 1 << 20);
    auto in = std::unique_ptr<Input>(new Input(path, f));
    struct stat st;
    if (path != "-" && ::stat(path.c_str(), &st) == 0) in->size_ = static_cast<uint64_t>(st.st_size);
    return in;
  }
  ~Input() { gzclose(f_); }
  // Reads exactly n bytes: true; 0 bytes at the end: false; else an error.
  absl::StatusOr<bool> ReadExact(void* buf, size_t n, const std::string& what) {
    size_t got = 0;
    while (got < n) {
      auto r = Raw(static_cast<char*>(buf) + got, n - got);
      if (!r.ok()) return r.status();
      if (*r == 0) break;
      got += *r;
    }
    bytes_ += got;
    if (got == 0) return false;
    if (got < n) return absl::DataLossError(absl::StrCat(path_, ": ", what, " is truncated"));
    return true;
  }
  // The next line without its newline; false at the end.
  absl::StatusOr<bool> ReadLine(std::string* line) {
    line->clear();
    if (!ahead_.empty()) {
      size_t nl = ahead_.find('\n');
      line->append(ahead_, 0, nl == std::string::npos ? ahead_.size() : nl + 1);
      ahead_.erase(0, line->size());
      if (nl != std::string::npos) return EndLine(line);
    }
    char buf[1 << 16];
    while (true) {
      if (gzgets(f_, buf, sizeof(buf)) == nullptr) {
        int err = 0;
        gzerror(f_, &err);
        if (err != Z_OK && err != Z_STREAM_END) return Error();
        bytes_ += line->size();
        return !line->empty();
      }
      size_t n = std::strlen(buf);
      line->append(buf, n);
      if (n > 0 && buf[n - 1] == '\n') return EndLine(line);
    }
  }
  // Up to n bytes; 0 at the end.
  absl::StatusOr<size_t> ReadSome(void* buf, size_t n) {
    auto r = Raw(buf, n);
    if (r.ok()) bytes_ += *r;
    return r;
  }
  // Up to n bytes from the start, left to be read again (format detection;
  // works on stdin too).
  absl::StatusOr<std::string_view> Peek(size_t n) {
    while (ahead_.size() < n) {
      char buf[64];
      int r = gzread(f_, buf, static_cast<unsigned>(std::min(sizeof(buf), n - ahead_.size())));
      if (r < 0) return Error();
      if (r == 0) break;
      ahead_.append(buf, static_cast<size_t>(r));
    }
    return std::string_view(ahead_);
  }
  uint64_t bytes() const { return bytes_; }
  // Share of the file read (compressed bytes for gzip), 0 when unknown.
  double fraction() const {
    if (size_ == 0) return 0;
    return std::min(1.0, static_cast<double>(gzoffset(f_)) / static_cast<double>(size_));
  }
  const std::string& path() const { return path_; }
  bool compressed() { return gzdirect(f_) == 0; }

 private:
  Input(std::string path, gzFile f) : path_(std::move(path)), f_(f) {}
  absl::StatusOr<bool> EndLine(std::string* line) {
    bytes_ += line->size();
    line->pop_back();
    if (!line->empty() && line->back() == '\r') line->pop_back();
    return true;
  }
  // Up to n bytes, peeked ones first. zlib's gzread returns 0 both at the end
  // and for a stream cut short: only gzerror tells them apart.
  absl::StatusOr<size_t> Raw(void* buf, size_t n) {
    if (!ahead_.empty()) {
      size_t k = std::min(n, ahead_.size());
      std::memcpy(buf, ahead_.data(), k);
      ahead_.erase(0, k);
      return k;
    }
    int r = gzread(f_, buf, static_cast<unsigned>(n));
    if (r < 0) return Error();
    if (r == 0) {
      int err = Z_OK;
      gzerror(f_, &err);
      if (err != Z_OK && err != Z_STREAM_END) return Error();
    }
    return static_cast<size_t>(r);
  }
  absl::Status Error() {
    int err = 0;
    const char* msg = gzerror(f_, &err);
    return absl::DataLossError(absl::StrCat(path_, ": cannot decompress (", msg ? msg : "?", ")"));
  }
  std::string path_;
  gzFile f_;
  uint64_t bytes_ = 0, size_ = 0;
  std::string ahead_;  // peeked, not yet read
};

absl::Status CheckFinite(const std::string& path, uint64_t rec, const std::vector<float>& v,
                         const char* unit = "record") {
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", unit, " ", rec, ": vector value ", i, " is not finite"));
    }
  }
  return absl::OkStatus();
}

// fvecs / ivecs / bvecs: each record is int32 d, then d float32 / int32 /
// uint8 values, little-endian. Ids are the record's position (0-based), as in
// the ANN benchmark files.
enum class VecsType { kFloat, kInt, kByte };

class FvecsReader final : public RecordReader {
 public:
  FvecsReader(std::unique_ptr<Input> in, VecsType type) : in_(std::move(in)), type_(type) {}
  absl::StatusOr<std::optional<InputRecord>> Next() override {
    int32_t d = 0;
    auto more = in_->ReadExact(&d, 4, absl::StrCat("record ", n_ + 1));
    if (!more.ok()) return more.status();
    if (!*more) return std::optional<InputRecord>();
    ++n_;
    if (d <= 0 || d > 65536) {
      // The file's structure is broken: nothing after this can be read.
      return absl::DataLossError(absl::StrCat(in_->path(), ": record ", n_, ": bad dimension ", d,
                                              " (is this a *vecs file?)"));
    }
    if (dim_ == 0) dim_ = d;
    InputRecord r;
    r.number = n_;
    r.positional = true;
    r.num_id = n_ - 1;
    r.vector.resize(static_cast<size_t>(d));
    const size_t width = type_ == VecsType::kByte ? 1 : 4;
    buf_.resize(static_cast<size_t>(d) * width);
    auto ok = in_->ReadExact(buf_.data(), buf_.size(), absl::StrCat("record ", n_));
    if (!ok.ok()) return ok.status();
    if (!*ok) return absl::DataLossError(absl::StrCat(in_->path(), ": record ", n_, " is truncated"));
    for (size_t i = 0; i < r.vector.size(); ++i) {
      if (type_ == VecsType::kFloat) {
        std::memcpy(&r.vector[i], &buf_[i * 4], 4);
      } else if (type_ == VecsType::kInt) {
        int32_t v;
        std::memcpy(&v, &buf_[i * 4], 4);
        r.vector[i] = static_cast<float>(v);
      } else {
        r.vector[i] = static_cast<float>(static_cast<uint8_t>(buf_[i]));
      }
    }
    if (d != dim_) {  // read whole, so the next record can still be read
      return absl::InvalidArgumentError(absl::StrCat(in_->path(), ": record ", n_, ": dimension ", d,
                                                     " differs from the first record's ", dim_));
    }
    if (auto s = CheckFinite(in_->path(), n_, r.vector); !s.ok()) return s;
    return std::optional<InputRecord>(std::move(r));
  }
  uint64_t bytes() const override { return in_->bytes(); }
  double fraction() const override { return in_->fraction(); }

 private:
  std::unique_ptr<Input> in_;
  VecsType type_;
  std::string buf_;
  uint64_t n_ = 0;
  int32_t dim_ = 0;
};

// JSON Lines: {"id": 7 or "doc-7", "vector": [...], "payload": {...}, "text": "..."}
// (vectors_only: "id" optional, or a bare array [...] as the vector).
class JsonlReader final : public RecordReader {
 public:
  JsonlReader(std::unique_ptr<Input> in, bool vectors_only) : in_(std::move(in)), vectors_only_(vectors_only) {}
  absl::StatusOr<std::optional<InputRecord>> Next() override {
    std::string line;
    while (true) {
      auto more = in_->ReadLine(&line);
      if (!more.ok()) return more.status();
      if (!*more) return std::optional<InputRecord>();
      ++n_;
      if (line.find_first_not_of(" \t") != std::string::npos) break;  // skip blank lines
    }
    auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat(in_->path(), ": line ", n_, ": ", why));
    };
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (vectors_only_ && j.is_array()) j = nlohmann::json{{"vector", std::move(j)}};
    if (j.is_discarded() || !j.is_object()) {
      return bad(vectors_only_ ? "not a JSON object or array" : "not a JSON object");
    }
    InputRecord r;
    r.number = n_;
    auto id = j.find("id");
    if (id == j.end()) {
      if (!vectors_only_) return bad("no \"id\"");
    } else if (id->is_number_unsigned() || (id->is_number_integer() && id->get<int64_t>() >= 0)) {
      r.num_id = id->get<uint64_t>();
    } else if (id->is_string() && !id->get<std::string>().empty()) {
      r.str_id = id->get<std::string>();
    } else {
      return bad("\"id\" must be an unsigned integer or a non-empty string");
    }
    auto vec = j.find("vector");
    if (vec == j.end() || !vec->is_array() || vec->empty()) return bad("\"vector\" must be a non-empty array of numbers");
    r.vector.reserve(vec->size());
    for (const auto& x : *vec) {
      if (!x.is_number()) return bad("\"vector\" holds something that is not a number");
      r.vector.push_back(x.get<float>());
    }
    if (auto s = CheckFinite(in_->path(), n_, r.vector, "line"); !s.ok()) return s;
    if (auto p = j.find("payload"); p != j.end() && !p->is_null()) {
      if (!p->is_object()) return bad("\"payload\" must be an object");
      r.payload_json = p->dump();
    }
    if (auto t = j.find("text"); t != j.end() && !t->is_null()) {
      if (!t->is_string()) return bad("\"text\" must be a string");
      r.text = t->get<std::string>();
    }
    return std::optional<InputRecord>(std::move(r));
  }
  uint64_t bytes() const override { return in_->bytes(); }
  double fraction() const override { return in_->fraction(); }

 private:
  std::unique_ptr<Input> in_;
  bool vectors_only_;
  uint64_t n_ = 0;
};

// NumPy .npy: a 2-D C-order array of float32 ('<f4'), float16 ('<f2') or
// uint8 ('|u1'); row i is the vector of id i. Also reads IDX rows (OpenIdx).
float HalfToFloat(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31) v = mant ? NAN : INFINITY;
  else v = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

class NpyReader final : public RecordReader {
 public:
  static absl::StatusOr<std::unique_ptr<RecordReader>> Open(std::unique_ptr<Input> in) {
    auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat(in->path(), ": not a supported .npy file: ", why));
    };
    char magic[8];
    auto ok = in->ReadExact(magic, 8, "header");
    if (!ok.ok()) return ok.status();
    if (!*ok || std::memcmp(magic, "\x93NUMPY", 6) != 0) return bad("no NUMPY magic");
    uint32_t header_len = 0;
    if (magic[6] == 1) {
      uint16_t l;
      ok = in->ReadExact(&l, 2, "header");
      header_len = l;
    } else {
      ok = in->ReadExact(&header_len, 4, "header");
    }
    if (!ok.ok()) return ok.status();
    if (!*ok || header_len > (1u << 20)) return bad("bad header length");
    std::string header(header_len, '\0');
    ok = in->ReadExact(header.data(), header_len, "header");
    if (!ok.ok()) return ok.status();
    if (!*ok) return bad("truncated header");
    if (header.find("'fortran_order': False") == std::string::npos) return bad("only C-order arrays");
    char kind;
    size_t width;
    if (header.find("'<f4'") != std::string::npos) width = 4, kind = 'f';
    else if (header.find("'<f2'") != std::string::npos) width = 2, kind = 'h';
    else if (header.find("'|u1'") != std::string::npos) width = 1, kind = 'u';
    else return bad("dtype must be float32, float16 or uint8");
    size_t sh = header.find("'shape': (");
    if (sh == std::string::npos) return bad("no shape");
    unsigned long long n = 0, d = 0;
    if (std::sscanf(header.c_str() + sh + 10, "%llu, %llu)", &n, &d) != 2 || d == 0 || d > 65536) {
      return bad("shape must be (rows, dimension)");
    }
    return std::unique_ptr<RecordReader>(new NpyReader(std::move(in), kind, width, n, d));
  }
  absl::StatusOr<std::optional<InputRecord>> Next() override {
    if (n_ == rows_) {
      // The header's count is reached: the file must end here, and a gzip
      // stream must end whole (its trailer checked).
      if (!checked_end_) {
        checked_end_ = true;
        char c;
        auto more = in_->ReadSome(&c, 1);
        if (!more.ok()) return more.status();
        if (*more > 0) {
          return absl::DataLossError(
              absl::StrCat(in_->path(), ": data after the last of the header's ", rows_, " records"));
        }
      }
      return std::optional<InputRecord>();
    }
    ++n_;
    buf_.resize(dim_ * width_);
    auto ok = in_->ReadExact(buf_.data(), buf_.size(), absl::StrCat("record ", n_));
    if (!ok.ok()) return ok.status();
    if (!*ok) return absl::DataLossError(absl::StrCat(in_->path(), ": record ", n_, " is truncated"));
    InputRecord r;
    r.number = n_;
    r.positional = true;
    r.num_id = n_ - 1;
    r.vector.resize(dim_);
    for (size_t i = 0; i < dim_; ++i) {
      if (kind_ == 'f') std::memcpy(&r.vector[i], &buf_[i * 4], 4);
      else if (kind_ == 'u') r.vector[i] = static_cast<uint8_t>(buf_[i]);
      else {
        uint16_t h;
        std::memcpy(&h, &buf_[i * 2], 2);
        r.vector[i] = HalfToFloat(h);
      }
    }
    if (auto s = CheckFinite(in_->path(), n_, r.vector); !s.ok()) return s;
    return std::optional<InputRecord>(std::move(r));
  }
  uint64_t bytes() const override { return in_->bytes(); }
  double fraction() const override { return in_->fraction(); }
  // Rows of `dim` values of `kind` ('f' float32, 'h' float16, 'u' uint8).
  NpyReader(std::unique_ptr<Input> in, char kind, size_t width, uint64_t rows, size_t dim)
      : in_(std::move(in)), width_(width), dim_(dim), kind_(kind), rows_(rows) {}

 private:
  std::unique_ptr<Input> in_;
  size_t width_, dim_;
  char kind_;
  uint64_t rows_, n_ = 0;
  bool checked_end_ = false;
  std::string buf_;
};

// IDX (the MNIST / Fashion-MNIST image files): big-endian magic 0x00000803
// (unsigned bytes, 3 dimensions), then count, rows, columns; each image is
// one vector of rows x columns values, read like a uint8 .npy.
absl::StatusOr<std::unique_ptr<RecordReader>> OpenIdx(std::unique_ptr<Input> in) {
  unsigned char h[16];
  auto ok = in->ReadExact(h, 16, "header");
  if (!ok.ok()) return ok.status();
  auto be = [&](int i) {
    return (uint32_t{h[i]} << 24) | (uint32_t{h[i + 1]} << 16) | (uint32_t{h[i + 2]} << 8) | h[i + 3];
  };
  if (!*ok || be(0) != 0x803) {
    return absl::InvalidArgumentError(absl::StrCat(in->path(), ": not an IDX image file (unsigned bytes, 3 dimensions)"));
  }
  const size_t dim = size_t{be(8)} * be(12);
  if (dim == 0 || dim > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(in->path(), ": IDX image size ", dim, " is out of range"));
  }
  return std::unique_ptr<RecordReader>(new NpyReader(std::move(in), 'u', 1, be(4), dim));
}

// HDF5 in the ann-benchmarks layout: 2-D datasets "train", "test",
// "neighbors", "distances" at the root. Any numeric element type is
// converted to float32 by the library. Rows are read in blocks. HDF5 needs
// random access, so a gzip-compressed file is first inflated to a temporary
// file (in TMPDIR), removed when the reader closes.
class Hdf5Reader final : public RecordReader {
 public:
  static absl::StatusOr<std::unique_ptr<RecordReader>> Open(const std::string& path, const std::string& dataset) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors come back as statuses, not printed
    auto r = std::unique_ptr<Hdf5Reader>(new Hdf5Reader(path));
    std::string file = path;
    {
      auto in = Input::Open(path);
      if (!in.ok()) return in.status();
      if ((*in)->compressed()) {
        if (auto s = r->Inflate(**in); !s.ok()) return s;
        file = r->temp_;
      }
    }
    r->file_ = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (r->file_ < 0) return absl::DataLossError(absl::StrCat(path, ": cannot open as HDF5 (not HDF5, or damaged)"));
    if (H5Lexists(r->file_, dataset.c_str(), H5P_DEFAULT) <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": no dataset \"", dataset, "\" (the file has: ",
                                                     r->DatasetNames(), "); pick one with --dataset"));
    }
    r->data_ = H5Dopen2(r->file_, dataset.c_str(), H5P_DEFAULT);
    if (r->data_ < 0) return absl::DataLossError(absl::StrCat(path, ": cannot open dataset \"", dataset, "\""));
    r->space_ = H5Dget_space(r->data_);
    hsize_t dims[2] = {0, 0};
    hid_t type = H5Dget_type(r->data_);
    H5T_class_t cls = H5Tget_class(type);
    H5Tclose(type);
    if (r->space_ < 0 || H5Sget_simple_extent_ndims(r->space_) != 2 ||
        H5Sget_simple_extent_dims(r->space_, dims, nullptr) != 2 || dims[1] == 0 || dims[1] > 65536 ||
        (cls != H5T_FLOAT && cls != H5T_INTEGER)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": dataset \"", dataset, "\" is not a 2-D numeric array (rows, dimension)"));
    }
    r->rows_ = dims[0];
    r->dim_ = dims[1];
    return std::unique_ptr<RecordReader>(std::move(r));
  }
  ~Hdf5Reader() override {
    if (space_ >= 0) H5Sclose(space_);
    if (data_ >= 0) H5Dclose(data_);
    if (file_ >= 0) H5Fclose(file_);
    if (!temp_.empty()) std::remove(temp_.c_str());
  }
  absl::StatusOr<std::optional<InputRecord>> Next() override {
    if (n_ == rows_) return std::optional<InputRecord>();
    if (n_ == block_start_ + block_rows_) {
      block_start_ = n_;
      block_rows_ = std::min<uint64_t>(kBlock, rows_ - n_);
      block_.resize(block_rows_ * dim_);
      hsize_t start[2] = {block_start_, 0}, count[2] = {block_rows_, dim_};
      hid_t mem = H5Screate_simple(2, count, nullptr);
      herr_t st = H5Sselect_hyperslab(space_, H5S_SELECT_SET, start, nullptr, count, nullptr);
      if (st >= 0) st = H5Dread(data_, H5T_NATIVE_FLOAT, mem, space_, H5P_DEFAULT, block_.data());
      H5Sclose(mem);
      if (st < 0) {
        return absl::DataLossError(
            absl::StrCat(path_, ": cannot read records ", n_ + 1, "..", n_ + block_rows_, " (damaged file?)"));
      }
    }
    ++n_;
    InputRecord r;
    r.number = n_;
    r.positional = true;
    r.num_id = n_ - 1;
    const float* row = block_.data() + (n_ - 1 - block_start_) * dim_;
    r.vector.assign(row, row + dim_);
    if (auto s = CheckFinite(path_, n_, r.vector); !s.ok()) return s;
    return std::optional<InputRecord>(std::move(r));
  }
  uint64_t bytes() const override { return n_ * dim_ * sizeof(float); }
  double fraction() const override { return rows_ ? static_cast<double>(n_) / static_cast<double>(rows_) : 1.0; }

 private:
  static constexpr uint64_t kBlock = 4096;
  explicit Hdf5Reader(std::string path) : path_(std::move(path)) {}
  absl::Status Inflate(Input& in) {
    const char* dir = std::getenv("TMPDIR");
    std::string tmpl = absl::StrCat(dir && *dir ? dir : "/tmp", "/cairn-hdf5-XXXXXX");
    int fd = mkstemp(tmpl.data());
    if (fd < 0) return absl::InternalError(absl::StrCat("cannot create a temporary file in ", tmpl));
    temp_ = tmpl;
    std::vector<char> buf(1 << 20);
    while (true) {
      auto some = in.ReadSome(buf.data(), buf.size());
      if (!some.ok()) {
        close(fd);
        return some.status();
      }
      const auto got = static_cast<ssize_t>(*some);
      if (got == 0) break;
      if (write(fd, buf.data(), static_cast<size_t>(got)) != got) {
        close(fd);
        return absl::ResourceExhaustedError(absl::StrCat("cannot write ", temp_, " (disk full?)"));
      }
    }
    close(fd);
    return absl::OkStatus();
  }
  std::string DatasetNames() {
    H5G_info_t info;
    if (H5Gget_info(file_, &info) < 0) return "?";
    std::vector<std::string> names;
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      char name[256] = {0};
      if (H5Lget_name_by_idx(file_, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof(name), H5P_DEFAULT) > 0) {
        names.emplace_back(name);
      }
    }
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out.empty() ? "nothing" : out;
  }
  std::string path_, temp_;
  hid_t file_ = -1, data_ = -1, space_ = -1;
  uint64_t rows_ = 0, dim_ = 0, n_ = 0, block_start_ = 0, block_rows_ = 0;
  std::vector<float> block_;
};

// Joins a binary vector file with a JSON Lines file of payloads, one line a
// record, in order.
class PayloadJoinReader final : public RecordReader {
 public:
  PayloadJoinReader(std::unique_ptr<RecordReader> vectors, std::unique_ptr<Input> payloads)
      : vectors_(std::move(vectors)), payloads_(std::move(payloads)) {}
  absl::StatusOr<std::optional<InputRecord>> Next() override {
    auto rec = vectors_->Next();
    // A bad vector record still uses up its payload line, to keep the two in step.
    std::string line;
    bool have_line = false;
    if (rec.ok() ? rec->has_value() : absl::IsInvalidArgument(rec.status())) {
      auto more = payloads_->ReadLine(&line);
      if (!more.ok()) return more.status();
      have_line = *more;
      ++lines_;
      if (!have_line) {
        return absl::DataLossError(absl::StrCat(payloads_->path(), ": has ", lines_ - 1,
                                                " lines, fewer than the vector file's records"));
      }
    }
    if (!rec.ok()) return rec.status();
    if (!rec->has_value()) {
      auto more = payloads_->ReadLine(&line);
      if (!more.ok()) return more.status();
      if (*more) {
        return absl::DataLossError(
            absl::StrCat(payloads_->path(), ": has more lines than the vector file has records (", lines_, ")"));
      }
      return rec;
    }
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !(j.is_object() || j.is_null())) {
      return absl::InvalidArgumentError(
          absl::StrCat(payloads_->path(), ": line ", lines_, ": not a JSON object (or null)"));
    }
    if (j.is_object() && !j.empty()) (*rec)->payload_json = j.dump();
    return rec;
  }
  uint64_t bytes() const override { return vectors_->bytes() + payloads_->bytes(); }
  double fraction() const override { return vectors_->fraction(); }

 private:
  std::unique_ptr<RecordReader> vectors_;
  std::unique_ptr<Input> payloads_;
  uint64_t lines_ = 0;
};

}  // namespace

namespace {

std::optional<std::string> FormatFromName(const std::string& path) {
  std::string name = path;
  if (absl::EndsWith(name, ".gz")) name = name.substr(0, name.size() - 3);
  static const std::pair<const char*, const char*> kSuffixes[] = {
      {".fvecs", "fvecs"}, {".ivecs", "ivecs"}, {".bvecs", "bvecs"}, {".npy", "npy"},
      {".hdf5", "hdf5"},   {".h5", "hdf5"},     {".jsonl", "jsonl"}, {".ndjson", "jsonl"},
      {"-idx3-ubyte", "idx"}};
  for (const auto& [suffix, format] : kSuffixes) {
    if (absl::EndsWith(name, suffix)) return std::string(format);
  }
  return std::nullopt;
}

// From the first bytes (decompressed), left in `in` to be read again.
absl::StatusOr<std::string> FormatFromContent(Input& in) {
  auto peek = in.Peek(8);
  if (!peek.ok()) return peek.status();
  std::string_view h = *peek;
  auto starts = [&](std::string_view magic) { return h.substr(0, magic.size()) == magic; };
  if (starts("\x93NUMPY")) return std::string("npy");
  if (starts(std::string_view("\x89HDF\r\n\x1a\n", 8))) return std::string("hdf5");
  if (starts(std::string_view("\0\0\x08\x03", 4))) return std::string("idx");
  // JSON Lines: an object, or (queries) a bare array. Text, not the first
  // bytes of a *vecs file whose dimension reads as '{' or '[' (123, 91).
  size_t first = h.find_first_not_of(" \t\r\n");
  if (first != std::string_view::npos && (h[first] == '{' || h[first] == '[') &&
      (first + 1 >= h.size() || h[first + 1] != '\0')) {
    return std::string("jsonl");
  }
  if (h.size() >= 4) {
    int32_t d;
    std::memcpy(&d, h.data(), 4);
    if (d > 0 && d <= 65536) return std::string("fvecs");  // *vecs: float is by far the commonest
  }
  return absl::InvalidArgumentError(absl::StrCat(
      in.path(), ": cannot tell the format from the name or the content; pass --format fvecs, ivecs, bvecs, npy, "
                 "hdf5, idx or jsonl"));
}

}  // namespace

absl::StatusOr<std::string> DetectFormat(const std::string& path) {
  if (auto f = FormatFromName(path)) return *f;
  auto in = Input::Open(path);
  if (!in.ok()) return in.status();
  return FormatFromContent(**in);
}

absl::StatusOr<std::unique_ptr<RecordReader>> OpenReader(const std::string& path, const ReaderOptions& options) {
  static const char* kFormats[] = {"auto", "fvecs", "ivecs", "bvecs", "npy", "hdf5", "idx", "jsonl"};
  if (std::find(std::begin(kFormats), std::end(kFormats), options.format) == std::end(kFormats)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown format \"", options.format,
                                                   "\" (auto, fvecs, ivecs, bvecs, npy, hdf5, idx, jsonl)"));
  }
  std::string f = options.format;
  std::unique_ptr<Input> input;
  if (f == "auto") {
    if (auto by_name = FormatFromName(path)) {
      f = *by_name;
    } else {
      auto in = Input::Open(path);
      if (!in.ok()) return in.status();
      auto by_content = FormatFromContent(**in);
      if (!by_content.ok()) return by_content.status();
      f = *by_content;
      input = *std::move(in);
    }
  }
  absl::StatusOr<std::unique_ptr<RecordReader>> r;
  if (f == "hdf5") {
    if (path == "-") return absl::InvalidArgumentError("HDF5 cannot be read from stdin; name the file");
    input.reset();
    r = Hdf5Reader::Open(path, options.hdf5_dataset);
  } else {
    absl::StatusOr<std::unique_ptr<Input>> in = std::move(input);
    if (*in == nullptr) in = Input::Open(path);
    if (!in.ok()) return in.status();
    if (f == "fvecs") r = std::unique_ptr<RecordReader>(new FvecsReader(*std::move(in), VecsType::kFloat));
    else if (f == "ivecs") r = std::unique_ptr<RecordReader>(new FvecsReader(*std::move(in), VecsType::kInt));
    else if (f == "bvecs") r = std::unique_ptr<RecordReader>(new FvecsReader(*std::move(in), VecsType::kByte));
    else if (f == "npy") r = NpyReader::Open(*std::move(in));
    else if (f == "idx") r = OpenIdx(*std::move(in));
    else if (f == "jsonl") r = std::unique_ptr<RecordReader>(new JsonlReader(*std::move(in), options.vectors_only));
  }
  if (!r.ok() || options.payloads_path.empty()) return r;
  if (f == "jsonl") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": --payloads goes with a binary vector file; JSON Lines records carry \"payload\" themselves"));
  }
  auto payloads = Input::Open(options.payloads_path);
  if (!payloads.ok()) return payloads.status();
  return std::unique_ptr<RecordReader>(new PayloadJoinReader(*std::move(r), *std::move(payloads)));
}

}  // namespace cairn::cli
