#include "examples/datasets.h"

#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace cairn::datasets {
namespace {

absl::StatusOr<std::string> ReadGzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  int err = 0;
  const char* msg = gzerror(f, &err);
  gzclose(f);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) {
    return absl::DataLossError(absl::StrCat(path, ": ", msg ? msg : "gzip error"));
  }
  return out;
}

uint32_t BigEndian32(const std::string& s, size_t off) {
  return (uint32_t(uint8_t(s[off])) << 24) | (uint32_t(uint8_t(s[off + 1])) << 16) |
         (uint32_t(uint8_t(s[off + 2])) << 8) | uint32_t(uint8_t(s[off + 3]));
}

// IDX files: magic 0x00000803 (images: count, rows, cols) or 0x00000801 (labels).
absl::Status ReadImages(const std::string& path, std::vector<float>* out, size_t* dim) {
  auto data = ReadGzip(path);
  if (!data.ok()) return data.status();
  if (data->size() < 16 || BigEndian32(*data, 0) != 0x803) {
    return absl::DataLossError(absl::StrCat(path, ": not an IDX image file"));
  }
  size_t n = BigEndian32(*data, 4), rows = BigEndian32(*data, 8), cols = BigEndian32(*data, 12);
  if (data->size() != 16 + n * rows * cols) return absl::DataLossError(absl::StrCat(path, ": truncated"));
  *dim = rows * cols;
  out->resize(n * *dim);
  for (size_t i = 0; i < out->size(); ++i) (*out)[i] = static_cast<uint8_t>((*data)[16 + i]);
  return absl::OkStatus();
}

absl::Status ReadLabels(const std::string& path, std::vector<int>* out) {
  auto data = ReadGzip(path);
  if (!data.ok()) return data.status();
  if (data->size() < 8 || BigEndian32(*data, 0) != 0x801) {
    return absl::DataLossError(absl::StrCat(path, ": not an IDX label file"));
  }
  size_t n = BigEndian32(*data, 4);
  if (data->size() != 8 + n) return absl::DataLossError(absl::StrCat(path, ": truncated"));
  out->resize(n);
  for (size_t i = 0; i < n; ++i) (*out)[i] = static_cast<uint8_t>((*data)[8 + i]);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Dataset> LoadFashionMnist(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::exists(fs::path(dir) / "train-images-idx3-ubyte.gz")) {
    return absl::NotFoundError(absl::StrCat(
        "Fashion-MNIST not found in ", dir, " (apt-get install dataset-fashion-mnist)"));
  }
  Dataset d;
  d.name = "fashion-mnist-784-euclidean";
  size_t dim_q = 0;
  if (auto s = ReadImages((fs::path(dir) / "train-images-idx3-ubyte.gz").string(), &d.base, &d.dim); !s.ok()) return s;
  if (auto s = ReadImages((fs::path(dir) / "t10k-images-idx3-ubyte.gz").string(), &d.queries, &dim_q); !s.ok()) return s;
  if (dim_q != d.dim) return absl::DataLossError("Fashion-MNIST train and test dimensions differ");
  if (auto s = ReadLabels((fs::path(dir) / "train-labels-idx1-ubyte.gz").string(), &d.base_labels); !s.ok()) return s;
  return d;
}

Dataset Synthetic(size_t n, size_t nq, size_t dim, size_t clusters, uint64_t seed) {
  Dataset d;
  d.name = absl::StrCat("synthetic-", n, "x", dim, "-c", clusters, "-s", seed);
  d.dim = dim;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> centers(clusters * dim);
  for (auto& c : centers) c = g(rng) * 4.0f;
  auto fill = [&](std::vector<float>* v, size_t count, std::vector<int>* labels) {
    v->resize(count * dim);
    std::uniform_int_distribution<size_t> pick(0, clusters - 1);
    for (size_t i = 0; i < count; ++i) {
      size_t c = pick(rng);
      if (labels) labels->push_back(static_cast<int>(c));
      for (size_t j = 0; j < dim; ++j) (*v)[i * dim + j] = centers[c * dim + j] + g(rng);
    }
  };
  fill(&d.base, n, &d.base_labels);
  fill(&d.queries, nq, nullptr);
  return d;
}

double RecallAtK(const std::vector<int64_t>& truth, const std::vector<int64_t>& found, size_t nq,
                 size_t k) {
  size_t hit = 0;
  for (size_t q = 0; q < nq; ++q) {
    std::unordered_set<int64_t> t(truth.begin() + q * k, truth.begin() + (q + 1) * k);
    for (size_t j = 0; j < k; ++j) {
      if (found[q * k + j] >= 0 && t.count(found[q * k + j])) ++hit;
    }
  }
  return nq == 0 ? 0 : static_cast<double>(hit) / static_cast<double>(nq * k);
}

}  // namespace cairn::datasets
