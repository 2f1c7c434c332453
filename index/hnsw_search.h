// Cairn's HNSW search: a beam search over a graph FAISS built, with Cairn's
// SIMD kernels, a per-thread visited list that is never cleared between
// queries, prefetching of the next candidates' vectors, and optionally int8
// codes of the vectors for the walk, whose candidates are then re-ranked with
// the full-precision vectors.
//
// FAISS 1.7.3's own IndexHNSW::search allocates a visited table the size of
// the index and opens an OpenMP region per call and computes distances one
// float at a time (Debian builds it for baseline x86-64): this is what
// Segment::Search uses instead for HNSW segments over flat storage.
#ifndef CAIRN_INDEX_HNSW_SEARCH_H_
#define CAIRN_INDEX_HNSW_SEARCH_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

#include "cairn/options.h"
#include "index/distance.h"

namespace cairn::index {

struct PositionSet;

// Uniform 8-bit codes of n vectors: code = round((x[d] - lo[d]) / scale), one
// scale for every dimension, so L2 differences and inner products of codes are
// the real ones times a constant (plus, for inner products, a per-query
// constant). Rows are padded with zeros to a multiple of 64 bytes.
class Int8Codes {
 public:
  // Dimensions above this keep float search (int32 sums could overflow).
  static constexpr size_t kMaxDim = 4096;

  static Int8Codes Build(const float* x, size_t n, size_t dim);

  // The same codes built from rows that are not all in memory at once: Fit
  // sees every row (in chunks, any order), Allocate fixes the grid and makes
  // n zero rows, Encode then writes rows [first, first + count).
  explicit Int8Codes(size_t dim = 0);
  void Fit(const float* x, size_t n);
  void Allocate(size_t n);
  void Encode(size_t first, const float* x, size_t count);

  size_t dim() const { return dim_; }
  size_t stride() const { return stride_; }
  // The grid: value = lo[d] + scale * code.
  float scale() const { return scale_; }
  const std::vector<float>& lo() const { return lo_; }
  size_t size() const { return stride_ == 0 ? 0 : codes_.size() / stride_; }
  const uint8_t* row(size_t i) const { return codes_.data() + i * stride_; }
  uint64_t MemoryBytes() const { return codes_.size() + lo_.size() * sizeof(float); }

  // Saved form: Meta() (dim, stride, scale, lo), then the size() x stride()
  // bytes at data(). FromMeta makes n zero rows on that grid for a reader to
  // fill through mutable_data(); InvalidArgument when meta is malformed.
  std::string Meta() const;
  static absl::StatusOr<Int8Codes> FromMeta(std::string_view meta, size_t n);
  const uint8_t* data() const { return codes_.data(); }
  uint8_t* mutable_data() { return codes_.data(); }

  // Approximate distance from a walk distance on codes (smaller is better:
  // code L2, or the negated code dot product): a * walk + b is about the L2
  // distance, or the negated inner product.
  struct Affine {
    float a = 1;
    float b = 0;
  };
  // The query as int16 codes (stride() entries, zero padded): for L2 on the
  // codes' grid, for inner product scaled to +-1023. Returns how its walk
  // distances map to real ones.
  Affine EncodeQuery(const float* q, Metric metric, int16_t* out) const;

 private:
  size_t dim_ = 0;
  size_t stride_ = 0;
  float scale_ = 1;
  std::vector<float> lo_;
  std::vector<float> hi_;  // while fitting
  std::vector<uint8_t> codes_;
};

// Sum over the stride of (c - q)^2, and of c * q, with runtime SIMD dispatch.
int32_t CodeL2(const uint8_t* c, const int16_t* q, size_t stride);
int32_t CodeDot(const uint8_t* c, const int16_t* q, size_t stride);
// The kernels of one SIMD level (index/distance.h), for tests; a level the CPU
// lacks falls back to the best one below it.
using CodeFn = int32_t (*)(const uint8_t*, const int16_t*, size_t);
CodeFn CodeL2Kernel(SimdLevel level);
CodeFn CodeDotKernel(SimdLevel level);

// A FAISS HNSW graph, borrowed (see faiss::HNSW for the layout).
struct HnswGraph {
  const int32_t* neighbors = nullptr;
  const size_t* offsets = nullptr;
  const int* cum_neighbors = nullptr;  // cum_nneighbor_per_level
  int64_t entry_point = -1;
  int max_level = -1;
  size_t size = 0;
};

struct HnswQuery {
  // size x dim full-precision vectors. Null with codes: the walk's best are
  // returned with their approximate scores, for the caller to re-rank.
  const float* base = nullptr;
  size_t dim = 0;
  Metric metric = Metric::kL2;         // vectors already prepared (cosine: normalized)
  const Int8Codes* codes = nullptr;    // when set, walk on codes and re-rank
  const std::vector<uint64_t>* deleted = nullptr;  // bitset of positions, or null
  const PositionSet* allowed = nullptr;
  double allowed_fraction = 1.0;       // of the graph's nodes in `allowed`
  int ef = 64;
  size_t k = 10;
};

// Up to q.k (score, position) pairs, best first, with exact scores (L2
// distance, or inner product / cosine similarity); approximate ones when
// q.base is null (then by the codes' order).
void HnswSearch(const HnswGraph& g, const HnswQuery& q, const float* query,
                std::vector<std::pair<float, int64_t>>* out);

}  // namespace cairn::index

#endif  // CAIRN_INDEX_HNSW_SEARCH_H_
