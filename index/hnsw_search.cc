#include "index/hnsw_search.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "index/distance.h"
#include "index/segment.h"

namespace cairn::index {
namespace {

// ---- code kernels (stride is a multiple of 64, padding is zero) ----

int32_t CodeL2Scalar(const uint8_t* c, const int16_t* q, size_t stride) {
  int32_t s = 0;
  for (size_t i = 0; i < stride; ++i) {
    int32_t d = static_cast<int32_t>(c[i]) - q[i];
    s += d * d;
  }
  return s;
}

int32_t CodeDotScalar(const uint8_t* c, const int16_t* q, size_t stride) {
  int32_t s = 0;
  for (size_t i = 0; i < stride; ++i) s += static_cast<int32_t>(c[i]) * q[i];
  return s;
}

__attribute__((target("avx2"))) int32_t Sum256(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

__attribute__((target("avx2"))) int32_t CodeL2Avx2(const uint8_t* c, const int16_t* q, size_t stride) {
  __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
  for (size_t i = 0; i < stride; i += 32) {
    __m256i c0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i)));
    __m256i c1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i + 16)));
    __m256i d0 = _mm256_sub_epi16(c0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i)));
    __m256i d1 = _mm256_sub_epi16(c1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i + 16)));
    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(d0, d0));
    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(d1, d1));
  }
  return Sum256(_mm256_add_epi32(a0, a1));
}

__attribute__((target("avx2"))) int32_t CodeDotAvx2(const uint8_t* c, const int16_t* q, size_t stride) {
  __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
  for (size_t i = 0; i < stride; i += 32) {
    __m256i c0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i)));
    __m256i c1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i + 16)));
    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(c0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i))));
    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(c1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i + 16))));
  }
  return Sum256(_mm256_add_epi32(a0, a1));
}

__attribute__((target("avx512f,avx512bw"))) int32_t CodeL2Avx512(const uint8_t* c, const int16_t* q,
                                                                  size_t stride) {
  __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
  for (size_t i = 0; i < stride; i += 64) {
    __m512i c0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i)));
    __m512i c1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i + 32)));
    __m512i d0 = _mm512_sub_epi16(c0, _mm512_loadu_si512(q + i));
    __m512i d1 = _mm512_sub_epi16(c1, _mm512_loadu_si512(q + i + 32));
    a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(d0, d0));
    a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(d1, d1));
  }
  return _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
}

__attribute__((target("avx512f,avx512bw"))) int32_t CodeDotAvx512(const uint8_t* c, const int16_t* q,
                                                                   size_t stride) {
  __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
  for (size_t i = 0; i < stride; i += 64) {
    __m512i c0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i)));
    __m512i c1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i + 32)));
    a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(c0, _mm512_loadu_si512(q + i)));
    a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(c1, _mm512_loadu_si512(q + i + 32)));
  }
  return _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
}

struct CodeKernels {
  CodeFn l2;
  CodeFn dot;
};

CodeKernels KernelsFor(SimdLevel level) {
  __builtin_cpu_init();
  if (level == SimdLevel::kAvx512 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw")) {
    return {CodeL2Avx512, CodeDotAvx512};
  }
  if (level >= SimdLevel::kAvx2 && __builtin_cpu_supports("avx2")) return {CodeL2Avx2, CodeDotAvx2};
  return {CodeL2Scalar, CodeDotScalar};
}

const CodeKernels kCode = KernelsFor(ActiveSimdLevel());  // honours CAIRN_SIMD

// ---- per-thread scratch ----

// Visited marks: a position is visited in this query when its tag equals the
// query's tag; tags only need clearing when the counter wraps.
struct Scratch {
  std::vector<uint16_t> tags;
  uint16_t tag = 0;
  std::vector<std::pair<float, int32_t>> candidates;  // min-heap
  std::vector<std::pair<float, int32_t>> top;         // max-heap
  std::vector<int32_t> fresh;
  std::vector<int32_t> skipped;
  std::vector<int16_t> qcode;

  void Begin(size_t n) {
    if (tags.size() < n) tags.resize(n, 0);
    if (++tag == 0) {
      std::fill(tags.begin(), tags.end(), 0);
      tag = 1;
    }
    candidates.clear();
    top.clear();
  }
  bool Seen(int32_t i) const { return tags[static_cast<size_t>(i)] == tag; }
  bool Visit(int32_t i) {
    if (tags[static_cast<size_t>(i)] == tag) return false;
    tags[static_cast<size_t>(i)] = tag;
    return true;
  }
};

Scratch& ThreadScratch() {
  thread_local Scratch s;
  return s;
}

inline void Prefetch(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(c + off, _MM_HINT_T0);
}

// Distances where smaller is better: L2, or the negated inner product.
struct FloatDistance {
  const float* base;
  size_t dim;
  const float* q;
  bool l2;
  size_t prefetch_bytes;
  float operator()(int32_t i) const {
    const float* v = base + static_cast<size_t>(i) * dim;
    return l2 ? L2Sqr(q, v, dim) : -InnerProduct(q, v, dim);
  }
  const void* Address(int32_t i) const { return base + static_cast<size_t>(i) * dim; }
};

struct CodeDistance {
  const Int8Codes* codes;
  const int16_t* q;
  bool l2;
  size_t prefetch_bytes;
  float operator()(int32_t i) const {
    const uint8_t* c = codes->row(static_cast<size_t>(i));
    return l2 ? static_cast<float>(kCode.l2(c, q, codes->stride()))
              : -static_cast<float>(kCode.dot(c, q, codes->stride()));
  }
  const void* Address(int32_t i) const { return codes->row(static_cast<size_t>(i)); }
};

// Filters that keep less than this fraction of a segment walk in two hops
// (see Walk) while the graph's layer-0 lists fit in kTwoHopCacheBytes; on a
// larger graph, below kTwoHopBelowLarge. A two-hop step reads a neighbor
// list for about every distance it computes, a one-hop walk computes about
// 1/fraction times as many distances on one list per step: which costs less
// depends on whether the lists are in cache. bench/ann, recall@10 >= 0.95,
// 2 threads, 10% of points allowed: Fashion-MNIST (60k x 784, lists 15 MB)
// two hops 41,200 QPS at recall 0.966, one hop 19,000 at 0.992 (its lowest
// ef); synthetic-1m-128 (lists 256 MB) two hops 3,400 QPS at 0.958, one hop
// 8,000 at 0.949 and 6,200 at 0.966 (int8 walk; float walk: 3,100 at 0.949
// against 6,450 at 0.949).
constexpr double kTwoHopBelow = 0.3;
constexpr double kTwoHopBelowLarge = 0.03;
constexpr size_t kTwoHopCacheBytes = 64u << 20;

// Vectors prefetched ahead of the one being scored: enough to cover a trip to
// memory on indexes larger than the caches.
constexpr size_t kAhead = 6;

using Pair = std::pair<float, int32_t>;
constexpr auto kMinFirst = std::greater<Pair>();  // for a min-heap
constexpr auto kMaxFirst = std::less<Pair>();     // for a max-heap

template <typename Dist>
void Walk(const HnswGraph& g, const HnswQuery& hq, const Dist& dist, Scratch& s, bool two_hop);

// Walks in two hops under a selective filter, and again in one hop when that
// found fewer allowed nodes than it should have: on strongly clustered data
// the graph the filter induces can fall apart into islands.
template <typename Dist>
void Walk(const HnswGraph& g, const HnswQuery& hq, const Dist& dist, Scratch& s) {
  // Not for inner product: the best matches of unnormalized vectors are the
  // long ones wherever they lie, not a neighbourhood the two hops stay in.
  const size_t lists_bytes = g.size * static_cast<size_t>(g.cum_neighbors[1]) * sizeof(int32_t);
  const double below = lists_bytes <= kTwoHopCacheBytes ? kTwoHopBelow : kTwoHopBelowLarge;
  const bool two_hop = hq.allowed != nullptr && hq.allowed_fraction < below && hq.metric != Metric::kInnerProduct;
  Walk(g, hq, dist, s, two_hop);
  if (!two_hop) return;
  const double expected = std::min<double>(static_cast<double>(std::max(hq.ef, 1)),
                                           hq.allowed_fraction * static_cast<double>(g.size));
  if (static_cast<double>(s.top.size()) >= expected) return;
  s.Begin(g.size);
  Walk(g, hq, dist, s, false);
}

template <typename Dist>
void Walk(const HnswGraph& g, const HnswQuery& hq, const Dist& dist, Scratch& s, bool two_hop) {
  auto ok = [&](int32_t i) {
    size_t p = static_cast<size_t>(i);
    if (hq.deleted && (((*hq.deleted)[p >> 6] >> (p & 63)) & 1)) return false;
    return hq.allowed == nullptr || hq.allowed->Test(p);
  };

  // Greedy descent through the upper layers.
  int32_t cur = static_cast<int32_t>(g.entry_point);
  float cur_d = dist(cur);
  for (int level = g.max_level; level > 0; --level) {
    bool moved = true;
    while (moved) {
      moved = false;
      const int32_t* nb = g.neighbors + g.offsets[cur] + g.cum_neighbors[level];
      const int32_t* end = g.neighbors + g.offsets[cur] + g.cum_neighbors[level + 1];
      for (; nb < end && *nb >= 0; ++nb) {
        float d = dist(*nb);
        if (d < cur_d) {
          cur_d = d;
          cur = *nb;
          moved = true;
        }
      }
    }
  }

  // Beam search on layer 0: candidates to expand, and the ef best allowed.
  const size_t ef = static_cast<size_t>(std::max(hq.ef, 1));
  s.Visit(cur);
  s.candidates.push_back({cur_d, cur});
  if (ok(cur)) s.top.push_back({cur_d, cur});
  float bound = s.top.empty() ? std::numeric_limits<float>::infinity() : cur_d;
  const bool filtering = hq.deleted != nullptr || hq.allowed != nullptr;
  while (!s.candidates.empty()) {
    Pair c = s.candidates.front();
    if (c.first > bound && (s.top.size() >= ef || !filtering)) break;
    std::pop_heap(s.candidates.begin(), s.candidates.end(), kMinFirst);
    s.candidates.pop_back();

    const int32_t* nb = g.neighbors + g.offsets[c.second];
    const int32_t* end = g.neighbors + g.offsets[c.second] + g.cum_neighbors[1];
    s.fresh.clear();
    if (!two_hop) {
      for (; nb < end && *nb >= 0; ++nb) {
        if (s.Visit(*nb)) s.fresh.push_back(*nb);
      }
    } else {
      // A selective filter: only allowed nodes get a distance. A neighbor
      // the filter excludes is stepped through, its own neighbors standing
      // in for it (two hops), up to a full neighbor list of allowed nodes per
      // expansion. The walk then moves on the graph the filter induces,
      // without paying for the nodes it skips.
      const size_t cap = static_cast<size_t>(g.cum_neighbors[1]);
      s.skipped.clear();
      for (; nb < end && *nb >= 0; ++nb) {
        if (ok(*nb)) {
          if (s.Visit(*nb)) s.fresh.push_back(*nb);
        } else if (!s.Seen(*nb)) {
          s.skipped.push_back(*nb);
        }
      }
      // The neighbour lists the steps read, fetched together.
      for (size_t j = 0; j < s.skipped.size() && j < 16; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(g.neighbors + g.offsets[s.skipped[j]]), _MM_HINT_T0);
      }
      // An excluded node is marked only once stepped through, so one left
      // over here (the cap reached) can still be stepped through later.
      for (size_t j = 0; j < s.skipped.size() && s.fresh.size() < cap; ++j) {
        const int32_t u = s.skipped[j];
        if (!s.Visit(u)) continue;
        const int32_t* nb2 = g.neighbors + g.offsets[u];
        const int32_t* end2 = nb2 + g.cum_neighbors[1];
        for (; nb2 < end2 && *nb2 >= 0 && s.fresh.size() < cap; ++nb2) {
          if (ok(*nb2) && s.Visit(*nb2)) s.fresh.push_back(*nb2);
        }
      }
    }
    const size_t nf = s.fresh.size();
    for (size_t j = 0; j < nf && j < kAhead; ++j) Prefetch(dist.Address(s.fresh[j]), dist.prefetch_bytes);
    for (size_t j = 0; j < nf; ++j) {
      if (j + kAhead < nf) Prefetch(dist.Address(s.fresh[j + kAhead]), dist.prefetch_bytes);
      const int32_t v = s.fresh[j];
      const float d = dist(v);
      if (s.top.size() < ef || d < bound) {
        s.candidates.push_back({d, v});
        std::push_heap(s.candidates.begin(), s.candidates.end(), kMinFirst);
        if (ok(v)) {
          s.top.push_back({d, v});
          std::push_heap(s.top.begin(), s.top.end(), kMaxFirst);
          if (s.top.size() > ef) {
            std::pop_heap(s.top.begin(), s.top.end(), kMaxFirst);
            s.top.pop_back();
          }
          bound = s.top.front().first;
        }
      }
    }
  }
}

}  // namespace

Int8Codes::Int8Codes(size_t dim)
    : dim_(dim),
      stride_((dim + 63) / 64 * 64),
      lo_(dim, std::numeric_limits<float>::infinity()),
      hi_(dim, -std::numeric_limits<float>::infinity()) {}

void Int8Codes::Fit(const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float* v = x + i * dim_;
    for (size_t d = 0; d < dim_; ++d) {
      lo_[d] = std::min(lo_[d], v[d]);
      hi_[d] = std::max(hi_[d], v[d]);
    }
  }
}

void Int8Codes::Allocate(size_t n) {
  float range = 0;
  for (size_t d = 0; d < dim_; ++d) {
    if (lo_[d] > hi_[d]) lo_[d] = hi_[d] = 0;  // no rows seen
    range = std::max(range, hi_[d] - lo_[d]);
  }
  hi_ = {};
  scale_ = range > 0 ? range / 255.0f : 1.0f;
  codes_.assign(n * stride_, 0);
}

void Int8Codes::Encode(size_t first, const float* x, size_t count) {
  const float inv = 1.0f / scale_;
  for (size_t i = 0; i < count; ++i) {
    const float* v = x + i * dim_;
    uint8_t* out = codes_.data() + (first + i) * stride_;
    for (size_t d = 0; d < dim_; ++d) {
      float t = std::nearbyint((v[d] - lo_[d]) * inv);
      out[d] = static_cast<uint8_t>(std::clamp(t, 0.0f, 255.0f));
    }
  }
}

Int8Codes Int8Codes::Build(const float* x, size_t n, size_t dim) {
  Int8Codes c(dim);
  c.Fit(x, n);
  c.Allocate(n);
  c.Encode(0, x, n);
  return c;
}

// Meta: u32 dim, u32 stride, f32 scale, f32 lo[dim].
std::string Int8Codes::Meta() const {
  std::string out(12 + lo_.size() * sizeof(float), '\0');
  const uint32_t d = static_cast<uint32_t>(dim_), st = static_cast<uint32_t>(stride_);
  std::memcpy(out.data(), &d, 4);
  std::memcpy(out.data() + 4, &st, 4);
  std::memcpy(out.data() + 8, &scale_, 4);
  std::memcpy(out.data() + 12, lo_.data(), lo_.size() * sizeof(float));
  return out;
}

absl::StatusOr<Int8Codes> Int8Codes::FromMeta(std::string_view meta, size_t n) {
  uint32_t d = 0, st = 0;
  float scale = 0;
  if (meta.size() >= 12) {
    std::memcpy(&d, meta.data(), 4);
    std::memcpy(&st, meta.data() + 4, 4);
    std::memcpy(&scale, meta.data() + 8, 4);
  }
  if (meta.size() < 12 || d == 0 || d > kMaxDim || st != (d + 63) / 64 * 64 || meta.size() != 12 + size_t{d} * 4 ||
      !(scale > 0) || !std::isfinite(scale)) {
    return absl::InvalidArgumentError("malformed int8 code grid");
  }
  Int8Codes c(d);
  c.hi_ = {};
  c.scale_ = scale;
  std::memcpy(c.lo_.data(), meta.data() + 12, size_t{d} * 4);
  for (float v : c.lo_) {
    if (!std::isfinite(v)) return absl::InvalidArgumentError("malformed int8 code grid");
  }
  c.codes_.assign(n * c.stride_, 0);
  return c;
}

Int8Codes::Affine Int8Codes::EncodeQuery(const float* q, Metric metric, int16_t* out) const {
  std::fill(out, out + stride_, 0);
  if (metric == Metric::kL2) {
    // On the codes' grid; clamped so that (code - q)^2 sums stay in int32.
    const float inv = 1.0f / scale_;
    for (size_t d = 0; d < dim_; ++d) {
      float t = std::nearbyint((q[d] - lo_[d]) * inv);
      out[d] = static_cast<int16_t>(std::clamp(t, -255.0f, 510.0f));
    }
    return {scale_ * scale_, 0.0f};
  }
  // q . x = q . lo + scale * (q . code): rank by q . code, q scaled to +-1023.
  float m = 0;
  for (size_t d = 0; d < dim_; ++d) m = std::max(m, std::fabs(q[d]));
  if (m == 0) return {0.0f, 0.0f};
  const float f = 1023.0f / m;
  float q_lo = 0;
  for (size_t d = 0; d < dim_; ++d) {
    out[d] = static_cast<int16_t>(std::nearbyint(q[d] * f));
    q_lo += q[d] * lo_[d];
  }
  // The walk's distance is -(q' . code) with q' = f q: -(q . x) is about
  // scale / f times it, less q . lo.
  return {scale_ / f, -q_lo};
}

CodeFn CodeL2Kernel(SimdLevel level) { return KernelsFor(level).l2; }
CodeFn CodeDotKernel(SimdLevel level) { return KernelsFor(level).dot; }
int32_t CodeL2(const uint8_t* c, const int16_t* q, size_t stride) { return kCode.l2(c, q, stride); }
int32_t CodeDot(const uint8_t* c, const int16_t* q, size_t stride) { return kCode.dot(c, q, stride); }

void HnswSearch(const HnswGraph& g, const HnswQuery& hq, const float* query,
                std::vector<std::pair<float, int64_t>>* out) {
  out->clear();
  if (g.entry_point < 0 || g.size == 0) return;
  Scratch& s = ThreadScratch();
  s.Begin(g.size);
  const bool l2 = hq.metric == Metric::kL2;
  const size_t k = hq.k;
  if (hq.codes != nullptr && hq.codes->size() == g.size) {
    s.qcode.resize(hq.codes->stride());
    const Int8Codes::Affine to_real = hq.codes->EncodeQuery(query, hq.metric, s.qcode.data());
    CodeDistance dist{hq.codes, s.qcode.data(), l2, hq.codes->stride()};
    Walk(g, hq, dist, s);
    for (auto& [d, i] : s.top) {
      if (hq.base == nullptr) {
        d = to_real.a * d + to_real.b;  // the caller re-ranks
      } else {
        // Re-rank the walk's best with the full-precision vectors.
        const float* v = hq.base + static_cast<size_t>(i) * hq.dim;
        d = l2 ? L2Sqr(query, v, hq.dim) : -InnerProduct(query, v, hq.dim);
      }
    }
  } else {
    FloatDistance dist{hq.base, hq.dim, query, l2, std::min<size_t>(hq.dim * sizeof(float), 1024)};
    Walk(g, hq, dist, s);
  }
  std::sort(s.top.begin(), s.top.end());
  const size_t m = std::min(k, s.top.size());
  out->reserve(m);
  for (size_t j = 0; j < m; ++j) {
    out->emplace_back(l2 ? s.top[j].first : -s.top[j].first, static_cast<int64_t>(s.top[j].second));
  }
}

}  // namespace cairn::index
