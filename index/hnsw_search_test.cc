// Tests for Cairn's HNSW walk (index/hnsw_search.h): the int8 code kernels at
// every SIMD level, the codes themselves, and HNSW segments searched on codes
// against the same segments searched on floats and against brute force:
// recall, exact scores, filters, tombstones, metrics, the visited-list wrap.
#include "index/hnsw_search.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "index/segment.h"

namespace cairn::index {
namespace {

// ---- kernels ----

TEST(CodeKernelTest, EveryLevelMatchesScalar) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> code(0, 255), l2q(-255, 510), dotq(-1023, 1023);
  for (size_t stride : {64, 128, 832, 1536, 4096}) {
    std::vector<uint8_t> c(stride);
    std::vector<int16_t> ql2(stride), qdot(stride);
    for (size_t i = 0; i < stride; ++i) {
      c[i] = static_cast<uint8_t>(code(rng));
      ql2[i] = static_cast<int16_t>(l2q(rng));
      qdot[i] = static_cast<int16_t>(dotq(rng));
    }
    int64_t want_l2 = 0, want_dot = 0;
    for (size_t i = 0; i < stride; ++i) {
      want_l2 += (int64_t{c[i]} - ql2[i]) * (int64_t{c[i]} - ql2[i]);
      want_dot += int64_t{c[i]} * qdot[i];
    }
    for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
      EXPECT_EQ(CodeL2Kernel(level)(c.data(), ql2.data(), stride), want_l2)
          << SimdLevelName(level) << " stride " << stride;
      EXPECT_EQ(CodeDotKernel(level)(c.data(), qdot.data(), stride), want_dot)
          << SimdLevelName(level) << " stride " << stride;
    }
  }
}

// The extremes the encoder can produce at the largest dimension stay in int32.
TEST(CodeKernelTest, WorstCaseSumsDoNotOverflow) {
  const size_t stride = Int8Codes::kMaxDim;
  std::vector<uint8_t> c(stride, 0);
  std::vector<int16_t> q(stride, 510);
  EXPECT_EQ(CodeL2(c.data(), q.data(), stride), int64_t{510} * 510 * stride);
  std::fill(c.begin(), c.end(), 255);
  std::fill(q.begin(), q.end(), -1023);
  EXPECT_EQ(CodeDot(c.data(), q.data(), stride), int64_t{255} * -1023 * static_cast<int64_t>(stride));
}

// ---- codes ----

TEST(Int8CodesTest, IntegerDataOnAUnitGridIsExact) {
  // Pixel-like data: every value an integer in 0..255, as in (Fashion-)MNIST.
  const size_t n = 300, dim = 100;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> px(0, 255);
  std::vector<float> x(n * dim);
  for (auto& v : x) v = static_cast<float>(px(rng));
  for (size_t d = 0; d < dim; ++d) x[d] = 0, x[dim + d] = 255;  // full range in every dimension
  Int8Codes codes = Int8Codes::Build(x.data(), n, dim);
  ASSERT_EQ(codes.size(), n);
  ASSERT_EQ(codes.stride(), 128u);
  std::vector<int16_t> q(codes.stride());
  codes.EncodeQuery(&x[5 * dim], Metric::kL2, q.data());
  for (size_t i = 0; i < n; ++i) {
    double want = 0;
    for (size_t d = 0; d < dim; ++d) want += std::pow(x[5 * dim + d] - x[i * dim + d], 2);
    EXPECT_EQ(CodeL2(codes.row(i), q.data(), codes.stride()), static_cast<int32_t>(want)) << i;
  }
  // Padding is zero, so it adds nothing.
  for (size_t j = dim; j < codes.stride(); ++j) EXPECT_EQ(codes.row(7)[j], 0);
}

TEST(Int8CodesTest, RanksFloatDataLikeFloats) {
  // Gaussian data: the code distance orders pairs like the true distance
  // except where they are within the quantization error.
  const size_t n = 500, dim = 48;
  std::mt19937 rng(12);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(n * dim), q(dim);
  for (auto& v : x) v = g(rng);
  for (auto& v : q) v = g(rng);
  Int8Codes codes = Int8Codes::Build(x.data(), n, dim);
  for (Metric m : {Metric::kL2, Metric::kInnerProduct}) {
    std::vector<int16_t> qc(codes.stride());
    codes.EncodeQuery(q.data(), m, qc.data());
    std::vector<std::pair<double, double>> pairs;  // (true, code)
    for (size_t i = 0; i < n; ++i) {
      double t = m == Metric::kL2 ? L2Sqr(q.data(), &x[i * dim], dim) : InnerProduct(q.data(), &x[i * dim], dim);
      double c = m == Metric::kL2 ? CodeL2(codes.row(i), qc.data(), codes.stride())
                                  : CodeDot(codes.row(i), qc.data(), codes.stride());
      pairs.emplace_back(t, c);
    }
    // Spearman-like check: the true top 20 are inside the code top 40.
    auto by_true = pairs, by_code = pairs;
    const bool smaller = m == Metric::kL2;
    std::vector<size_t> ti(n), ci(n);
    for (size_t i = 0; i < n; ++i) ti[i] = ci[i] = i;
    auto order = [&](std::vector<size_t>& idx, bool code) {
      std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
        double va = code ? pairs[a].second : pairs[a].first, vb = code ? pairs[b].second : pairs[b].first;
        return smaller ? va < vb : va > vb;
      });
    };
    order(ti, false);
    order(ci, true);
    std::set<size_t> top_code(ci.begin(), ci.begin() + 40);
    for (size_t j = 0; j < 20; ++j) EXPECT_TRUE(top_code.count(ti[j])) << "metric " << int(m) << " rank " << j;
  }
}

TEST(Int8CodesTest, ConstantDimensionsAndEmptyInput) {
  std::vector<float> x(10 * 4, 2.5f);
  Int8Codes codes = Int8Codes::Build(x.data(), 10, 4);
  std::vector<int16_t> q(codes.stride());
  codes.EncodeQuery(x.data(), Metric::kL2, q.data());
  EXPECT_EQ(CodeL2(codes.row(3), q.data(), codes.stride()), 0);
  Int8Codes none = Int8Codes::Build(nullptr, 0, 4);
  EXPECT_EQ(none.size(), 0u);
}

// ---- segments: the walk on codes against floats and brute force ----

struct Data {
  size_t n, dim;
  std::vector<float> x, queries;
  std::vector<uint64_t> ids;
};

Data Clustered(size_t n, size_t nq, size_t dim, Metric metric, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> center(-1.0f, 1.0f);
  std::normal_distribution<float> noise(0.0f, 0.2f);
  std::vector<float> centers(32 * dim);
  for (auto& c : centers) c = center(rng);
  Data d{n, dim, {}, {}, {}};
  auto sample = [&](float* out) {
    size_t c = rng() % 32;
    for (size_t j = 0; j < dim; ++j) out[j] = centers[c * dim + j] + noise(rng);
  };
  d.x.resize(n * dim);
  d.queries.resize(nq * dim);
  for (size_t i = 0; i < n; ++i) sample(&d.x[i * dim]);
  for (size_t i = 0; i < nq; ++i) sample(&d.queries[i * dim]);
  PrepareVectors(metric, d.x.data(), n, dim);
  PrepareVectors(metric, d.queries.data(), nq, dim);
  for (size_t i = 0; i < n; ++i) d.ids.push_back(10 + 2 * i);
  return d;
}

std::unique_ptr<Segment> BuildHnsw(const Data& d, Metric metric, bool int8) {
  IndexSpec spec;
  spec.type = IndexType::kHnsw;
  spec.hnsw_m = 16;
  spec.ef_construction = 80;
  spec.hnsw_int8 = int8;
  auto s = Segment::Build(static_cast<uint32_t>(d.dim), metric, spec, d.x.data(), d.ids.data(), d.n, 2);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

// Exact top k ids among positions `keep` accepts.
template <typename Keep>
std::set<int64_t> Truth(const Data& d, Metric m, const float* q, size_t k, Keep keep) {
  std::vector<std::pair<float, int64_t>> all;
  for (size_t i = 0; i < d.n; ++i) {
    if (!keep(i)) continue;
    float s = Score(m, q, &d.x[i * d.dim], d.dim);
    all.emplace_back(m == Metric::kL2 ? s : -s, static_cast<int64_t>(d.ids[i]));
  }
  std::partial_sort(all.begin(), all.begin() + static_cast<ptrdiff_t>(std::min(k, all.size())), all.end());
  std::set<int64_t> out;
  for (size_t j = 0; j < std::min(k, all.size()); ++j) out.insert(all[j].second);
  return out;
}

struct Outcome {
  double recall = 0;
  std::vector<float> scores;
  std::vector<int64_t> ids;
};

template <typename Keep>
Outcome SearchAndCheck(const Segment& seg, const Data& d, Metric m, size_t nq, const SegmentSearchParams& p, Keep keep) {
  Outcome o;
  const size_t k = static_cast<size_t>(p.k);
  o.scores.resize(nq * k);
  o.ids.resize(nq * k);
  absl::Status st = seg.Search(d.queries.data(), nq, p, o.scores.data(), o.ids.data(), 2);
  EXPECT_TRUE(st.ok()) << st;
  double hits = 0, total = 0;
  for (size_t q = 0; q < nq; ++q) {
    std::set<int64_t> want = Truth(d, m, &d.queries[q * d.dim], k, keep);
    total += static_cast<double>(want.size());
    for (size_t j = 0; j < k; ++j) {
      int64_t id = o.ids[q * k + j];
      if (id == kNoId) continue;
      EXPECT_TRUE(keep(static_cast<size_t>((id - 10) / 2))) << "returned a position the search must skip";
      hits += want.count(id);
      // Scores are exact: the re-rank recomputes them from the floats.
      float exact = Score(m, &d.queries[q * d.dim], &d.x[static_cast<size_t>((id - 10) / 2) * d.dim], d.dim);
      EXPECT_NEAR(o.scores[q * k + j], exact, 1e-4f * (1 + std::fabs(exact)));
    }
  }
  o.recall = total == 0 ? 1 : hits / total;
  return o;
}

std::string MetricName(const ::testing::TestParamInfo<Metric>& info) {
  static const char* const kNames[] = {"l2", "ip", "cosine"};
  return kNames[static_cast<int>(info.param)];
}

class HnswWalkTest : public ::testing::TestWithParam<Metric> {};

TEST_P(HnswWalkTest, CodesReachTheRecallOfFloats) {
  const Metric m = GetParam();
  const Data d = Clustered(6000, 60, 64, m, 31);
  auto f32 = BuildHnsw(d, m, false);
  auto i8 = BuildHnsw(d, m, true);
  ASSERT_TRUE(f32 && i8);
  EXPECT_GT(i8->MemoryBytes(), f32->MemoryBytes() + d.n * d.dim - 1) << "int8 codes are held in memory";
  SegmentSearchParams p;
  p.k = 10;
  p.ef = 64;
  auto all = [](size_t) { return true; };
  Outcome a = SearchAndCheck(*f32, d, m, 60, p, all);
  Outcome b = SearchAndCheck(*i8, d, m, 60, p, all);
  EXPECT_GE(a.recall, 0.95);
  EXPECT_GE(b.recall, 0.95);
  EXPECT_GE(b.recall, a.recall - 0.02);
}

TEST_P(HnswWalkTest, FiltersAndTombstonesHoldOnCodes) {
  const Metric m = GetParam();
  const Data d = Clustered(4000, 40, 32, m, 32);
  auto seg = BuildHnsw(d, m, true);
  ASSERT_TRUE(seg);
  // Delete every third point; allow only even positions.
  for (size_t i = 0; i < d.n; i += 3) ASSERT_TRUE(seg->MarkDeleted(d.ids[i]));
  PositionSet allowed;
  allowed.Resize(d.n);
  for (size_t i = 0; i < d.n; i += 2) allowed.Set(i);
  SegmentSearchParams p;
  p.k = 10;
  p.ef = 64;
  p.allowed = &allowed;
  Outcome o = SearchAndCheck(*seg, d, m, 40, p, [](size_t i) { return i % 3 != 0 && i % 2 == 0; });
  EXPECT_GE(o.recall, 0.9);
}

// A selective filter (5%) walks in two hops through excluded nodes (L2 and
// cosine; inner product keeps one hop): only allowed points come back, and
// as many as asked for, although on this strongly clustered data the two-hop
// graph falls apart into clusters (the walk then goes again in one hop).
TEST_P(HnswWalkTest, SelectiveFiltersWalkInTwoHops) {
  const Metric m = GetParam();
  const Data d = Clustered(6000, 40, 32, m, 36);
  auto seg = BuildHnsw(d, m, true);
  ASSERT_TRUE(seg);
  for (size_t i = 0; i < d.n; i += 7) ASSERT_TRUE(seg->MarkDeleted(d.ids[i]));
  PositionSet allowed;
  allowed.Resize(d.n);
  for (size_t i = 0; i < d.n; i += 20) allowed.Set(i);
  SegmentSearchParams p;
  p.k = 10;
  p.ef = 48;
  p.allowed = &allowed;
  Outcome o = SearchAndCheck(*seg, d, m, 40, p, [](size_t i) { return i % 7 != 0 && i % 20 == 0; });
  // Maximum inner product over unnormalized vectors is the hard case for any
  // graph walk (one hop measured 0.805 here).
  EXPECT_GE(o.recall, m == Metric::kInnerProduct ? 0.75 : 0.9);
  for (int64_t id : o.ids) EXPECT_NE(id, kNoId) << "enough allowed points exist for every query";
}

INSTANTIATE_TEST_SUITE_P(Metrics, HnswWalkTest,
                         ::testing::Values(Metric::kL2, Metric::kInnerProduct, Metric::kCosine),
                         MetricName);

TEST(HnswSegmentTest, LargeDimensionsWalkOnFloats) {
  const Data d = Clustered(300, 5, Int8Codes::kMaxDim + 64, Metric::kL2, 33);
  auto f32 = BuildHnsw(d, Metric::kL2, false);
  auto i8 = BuildHnsw(d, Metric::kL2, true);
  ASSERT_TRUE(f32 && i8);
  EXPECT_EQ(i8->MemoryBytes(), f32->MemoryBytes());
  SegmentSearchParams p;
  p.k = 5;
  p.ef = 50;
  Outcome o = SearchAndCheck(*i8, d, Metric::kL2, 5, p, [](size_t) { return true; });
  EXPECT_GE(o.recall, 0.9);
}

// A growing segment walks on floats; once frozen it gets codes, and (on data
// the codes hold exactly) the same answers.
TEST(HnswSegmentTest, FreezingAddsCodesWithTheSameAnswers) {
  const size_t n = 3000, dim = 40;
  std::mt19937 rng(34);
  std::uniform_int_distribution<int> px(0, 255);
  Data d{n, dim, std::vector<float>(n * dim), std::vector<float>(20 * dim), {}};
  for (auto& v : d.x) v = static_cast<float>(px(rng));
  for (auto& v : d.queries) v = static_cast<float>(px(rng));
  for (size_t i = 0; i < n; ++i) d.ids.push_back(10 + 2 * i);
  IndexSpec spec;
  spec.type = IndexType::kHnsw;
  spec.hnsw_m = 16;
  spec.ef_construction = 60;
  auto grown = Segment::CreateGrowing(static_cast<uint32_t>(dim), Metric::kL2, spec);
  ASSERT_TRUE(grown.ok());
  Segment& seg = **grown;
  ASSERT_TRUE(seg.Add(d.x.data(), d.ids.data(), n, 2).ok());
  const uint64_t before = seg.MemoryBytes();
  SegmentSearchParams p;
  p.k = 10;
  p.ef = 40;
  auto all = [](size_t) { return true; };
  Outcome a = SearchAndCheck(seg, d, Metric::kL2, 20, p, all);
  seg.Freeze();
  seg.BuildSearchCodes();
  EXPECT_GT(seg.MemoryBytes(), before);
  Outcome b = SearchAndCheck(seg, d, Metric::kL2, 20, p, all);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.scores, b.scores);
}

// The visited list is tagged per query and cleared when the 16-bit tag wraps:
// past 65,536 queries on one thread the answers do not change.
TEST(HnswSegmentTest, AnswersSurviveTheVisitedTagWrap) {
  const Data d = Clustered(800, 1, 16, Metric::kL2, 35);
  auto seg = BuildHnsw(d, Metric::kL2, true);
  ASSERT_TRUE(seg);
  SegmentSearchParams p;
  p.k = 10;
  p.ef = 32;
  std::vector<float> first_s(10), s(10);
  std::vector<int64_t> first_i(10), ids(10);
  ASSERT_TRUE(seg->Search(d.queries.data(), 1, p, first_s.data(), first_i.data(), 1).ok());
  for (int i = 0; i < 70000; ++i) {
    ASSERT_TRUE(seg->Search(d.queries.data(), 1, p, s.data(), ids.data(), 1).ok());
    if (ids != first_i) FAIL() << "answer changed at query " << i;
  }
}

}  // namespace
}  // namespace cairn::index
