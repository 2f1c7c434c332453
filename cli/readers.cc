#include "cli/readers.h"

#include <zlib.h>

#include <cmath>
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
    gzFile f = gzopen(path.c_str(), "rb");
    if (f == nullptr) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
    gzbuffer(f, 1 << 20);
    return std::unique_ptr<Input>(new Input(path, f));
  }
  ~Input() { gzclose(f_); }
  // Reads exactly n bytes: true; 0 bytes at the end: false; else an error.
  absl::StatusOr<bool> ReadExact(void* buf, size_t n, const std::string& what) {
    size_t got = 0;
    while (got < n) {
      int r = gzread(f_, static_cast<char*>(buf) + got, static_cast<unsigned>(n - got));
      if (r < 0) return Error();
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    bytes_ += got;
    if (got == 0) return false;
    if (got < n) return absl::DataLossError(absl::StrCat(path_, ": ", what, " is truncated"));
    return true;
  }
  // The next line without its newline; false at the end.
  absl::StatusOr<bool> ReadLine(std::string* line) {
    line->clear();
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
      if (n > 0 && buf[n - 1] == '\n') {
        bytes_ += line->size();
        line->pop_back();
        if (!line->empty() && line->back() == '\r') line->pop_back();
        return true;
      }
    }
  }
  uint64_t bytes() const { return bytes_; }
  const std::string& path() const { return path_; }

 private:
  Input(std::string path, gzFile f) : path_(std::move(path)), f_(f) {}
  absl::Status Error() {
    int err = 0;
    const char* msg = gzerror(f_, &err);
    return absl::DataLossError(absl::StrCat(path_, ": cannot decompress (", msg ? msg : "?", ")"));
  }
  std::string path_;
  gzFile f_;
  uint64_t bytes_ = 0;
};

absl::Status CheckFinite(const std::string& path, uint64_t rec, const std::vector<float>& v) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": record ", rec, ": vector value ", i, " is not finite"));
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
    if (d != dim_) {
      return absl::DataLossError(absl::StrCat(in_->path(), ": record ", n_, ": dimension ", d,
                                              " differs from the first record's ", dim_));
    }
    InputRecord r;
    r.number = n_;
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
    if (auto s = CheckFinite(in_->path(), n_, r.vector); !s.ok()) return s;
    return std::optional<InputRecord>(std::move(r));
  }
  uint64_t bytes() const override { return in_->bytes(); }

 private:
  std::unique_ptr<Input> in_;
  VecsType type_;
  std::string buf_;
  uint64_t n_ = 0;
  int32_t dim_ = 0;
};

// JSON Lines: {"id": 7 or "doc-7", "vector": [...], "payload": {...}, "text": "..."}
class JsonlReader final : public RecordReader {
 public:
  explicit JsonlReader(std::unique_ptr<Input> in) : in_(std::move(in)) {}
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
    if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
    InputRecord r;
    r.number = n_;
    auto id = j.find("id");
    if (id == j.end()) return bad("no \"id\"");
    if (id->is_number_unsigned() || (id->is_number_integer() && id->get<int64_t>() >= 0)) {
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
    if (auto s = CheckFinite(in_->path(), n_, r.vector); !s.ok()) return s;
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

 private:
  std::unique_ptr<Input> in_;
  uint64_t n_ = 0;
};

// NumPy .npy: a 2-D C-order array of float32 ('<f4'), float16 ('<f2') or
// uint8 ('|u1'); row i is the vector of id i.
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
    auto r = std::unique_ptr<NpyReader>(new NpyReader(std::move(in)));
    if (header.find("'fortran_order': False") == std::string::npos) return bad("only C-order arrays");
    if (header.find("'<f4'") != std::string::npos) r->width_ = 4, r->kind_ = 'f';
    else if (header.find("'<f2'") != std::string::npos) r->width_ = 2, r->kind_ = 'h';
    else if (header.find("'|u1'") != std::string::npos) r->width_ = 1, r->kind_ = 'u';
    else return bad("dtype must be float32, float16 or uint8");
    size_t sh = header.find("'shape': (");
    if (sh == std::string::npos) return bad("no shape");
    unsigned long long n = 0, d = 0;
    if (std::sscanf(header.c_str() + sh + 10, "%llu, %llu)", &n, &d) != 2 || d == 0 || d > 65536) {
      return bad("shape must be (rows, dimension)");
    }
    r->rows_ = n;
    r->dim_ = d;
    return std::unique_ptr<RecordReader>(std::move(r));
  }
  absl::StatusOr<std::optional<InputRecord>> Next() override {
    if (n_ == rows_) return std::optional<InputRecord>();
    ++n_;
    buf_.resize(dim_ * width_);
    auto ok = in_->ReadExact(buf_.data(), buf_.size(), absl::StrCat("row ", n_));
    if (!ok.ok()) return ok.status();
    if (!*ok) return absl::DataLossError(absl::StrCat(in_->path(), ": record ", n_, " is truncated"));
    InputRecord r;
    r.number = n_;
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

 private:
  explicit NpyReader(std::unique_ptr<Input> in) : in_(std::move(in)) {}
  std::unique_ptr<Input> in_;
  size_t width_ = 4, dim_ = 0;
  char kind_ = 'f';
  uint64_t rows_ = 0, n_ = 0;
  std::string buf_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RecordReader>> OpenReader(const std::string& path, const std::string& format) {
  std::string f = format;
  if (f == "auto") {
    std::string name = path;
    if (absl::EndsWith(name, ".gz")) name = name.substr(0, name.size() - 3);
    if (absl::EndsWith(name, ".fvecs")) f = "fvecs";
    else if (absl::EndsWith(name, ".ivecs")) f = "ivecs";
    else if (absl::EndsWith(name, ".bvecs")) f = "bvecs";
    else if (absl::EndsWith(name, ".npy")) f = "npy";
    else if (absl::EndsWith(name, ".jsonl") || absl::EndsWith(name, ".ndjson")) f = "jsonl";
    else {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": cannot tell the format from the name; pass --format fvecs, ivecs, bvecs, npy or jsonl"));
    }
  }
  auto in = Input::Open(path);
  if (!in.ok()) return in.status();
  if (f == "fvecs") return std::unique_ptr<RecordReader>(new FvecsReader(*std::move(in), VecsType::kFloat));
  if (f == "ivecs") return std::unique_ptr<RecordReader>(new FvecsReader(*std::move(in), VecsType::kInt));
  if (f == "bvecs") return std::unique_ptr<RecordReader>(new FvecsReader(*std::move(in), VecsType::kByte));
  if (f == "npy") return NpyReader::Open(*std::move(in));
  if (f == "jsonl") return std::unique_ptr<RecordReader>(new JsonlReader(*std::move(in)));
  return absl::InvalidArgumentError(
      absl::StrCat("unknown format \"", format, "\" (auto, fvecs, ivecs, bvecs, npy, jsonl)"));
}

}  // namespace cairn::cli
