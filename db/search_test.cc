// Search through a Collection compared with brute force computed here: every
// metric, filters of several selectivities, shards, batches, sealing, and the
// trained (lossy) index types.
#include <cmath>
#include <map>
#include <set>

#include "cairn/database.h"
#include "db/test_util.h"
#include "gtest/gtest.h"

namespace cairn {
namespace {

using testing_util::BruteForce;
using testing_util::Clustered;
using testing_util::Config;
using testing_util::DbTest;
using testing_util::KeepAll;
using testing_util::ParseFilter;
using testing_util::Pt;
using testing_util::RecallOf;
using testing_util::RefScore;
using testing_util::Row;
using testing_util::TestSeed;
using testing_util::UpsertRows;

constexpr int kK = 10;

std::string MetricLabel(Metric m) { return std::string(MetricName(m)); }

// Checks `got` is exactly the brute-force answer: the same scores rank by
// rank, and the same ids (up to exact ties).
void ExpectExact(Metric m, const std::vector<ScoredPoint>& got,
                 const std::vector<std::pair<float, size_t>>& truth, const std::string& what) {
  ASSERT_EQ(got.size(), truth.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    const float tol = 1e-4f * std::max(1.0f, std::abs(truth[i].first));
    EXPECT_NEAR(got[i].score, truth[i].first, tol) << what << " rank " << i;
  }
  EXPECT_EQ(RecallOf(got, truth), 1.0) << what;
}

void ExpectSameResults(const std::vector<ScoredPoint>& a, const std::vector<ScoredPoint>& b,
                       const std::string& what, float tol = 0.0f) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].id, b[i].id) << what << " rank " << i;
    EXPECT_NEAR(a[i].score, b[i].score, tol) << what << " rank " << i;
  }
}

class MetricSearchTest : public DbTest, public ::testing::WithParamInterface<Metric> {};

TEST_P(MetricSearchTest, ResultsMatchBruteForce) {
  const Metric m = GetParam();
  const uint32_t dim = 24;
  const size_t n = 3000, nq = 30;
  const auto x = Clustered(n, dim, TestSeed());
  const auto queries = Clustered(nq, dim, TestSeed() + 99);
  OpenDb();
  auto flat = Create("flat", Config(dim, m, IndexType::kFlat));
  auto hnsw = Create("hnsw", Config(dim, m, IndexType::kHnsw));
  ASSERT_TRUE(flat && hnsw);
  UpsertRows(*flat, x, dim);
  UpsertRows(*hnsw, x, dim);
  double recall = 0;
  for (size_t q = 0; q < nq; ++q) {
    const auto query = Row(queries, q, dim);
    auto truth = BruteForce(m, x, dim, query.data(), kK, KeepAll());
    auto a = flat->Search(query, {.k = kK});
    ASSERT_TRUE(a.ok()) << a.status();
    ExpectExact(m, *a, truth, "flat index");
    auto b = hnsw->Search(query, {.k = kK, .exact = true});
    ASSERT_TRUE(b.ok()) << b.status();
    ExpectExact(m, *b, truth, "hnsw collection, exact=true");
    auto c = flat->Search(query, {.k = kK, .exact = true});
    ASSERT_TRUE(c.ok());
    ExpectExact(m, *c, truth, "flat collection, exact=true");
    auto h = hnsw->Search(query, {.k = kK});
    ASSERT_TRUE(h.ok());
    ASSERT_EQ(h->size(), static_cast<size_t>(kK));
    recall += RecallOf(*h, truth);
    // Scores are by the metric, best first.
    for (size_t i = 0; i < h->size(); ++i) {
      const auto& p = (*h)[i];
      EXPECT_NEAR(p.score, RefScore(m, query.data(), &x[p.id.number() * dim], dim),
                  1e-3 * std::max(1.0f, std::abs(p.score)));
      if (i > 0) {
        EXPECT_FALSE(testing_util::RefBetter(m, p.score, (*h)[i - 1].score)) << "rank " << i;
      }
    }
  }
  recall /= nq;
  std::cout << MetricName(m) << " hnsw recall@10 = " << recall << std::endl;
  // With the default ef_search (64) inner product is the hardest metric for
  // HNSW here (0.89 on this data, L2 and cosine 0.97); a request's larger ef
  // must take effect and lift every metric well above 0.9.
  EXPECT_GE(recall, 0.85);
  double wide = 0;
  for (size_t q = 0; q < nq; ++q) {
    const auto query = Row(queries, q, dim);
    auto h = hnsw->Search(query, {.k = kK, .ef = 128});
    ASSERT_TRUE(h.ok());
    wide += RecallOf(*h, BruteForce(m, x, dim, query.data(), kK, KeepAll()));
  }
  wide /= nq;
  std::cout << MetricName(m) << " hnsw recall@10 with ef=128 = " << wide << std::endl;
  EXPECT_GE(wide, 0.95);
  if (m != Metric::kInnerProduct) {
    EXPECT_GE(recall, 0.9);
  }
  // k larger than the collection returns every point.
  auto all = flat->Search(Row(queries, 0, dim), {.k = 5000});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), n);
}

INSTANTIATE_TEST_SUITE_P(Metrics, MetricSearchTest,
                         ::testing::Values(Metric::kL2, Metric::kInnerProduct, Metric::kCosine),
                         [](const auto& info) { return MetricLabel(info.param); });

TEST_F(DbTest, CosineScoresAreSimilaritiesOfTheRawVectors) {
  OpenDb();
  auto c = Create("c", Config(3, Metric::kCosine, IndexType::kFlat));
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Upsert({Pt(1, {10, 0, 0}), Pt(2, {0, 5, 0}), Pt(3, {-1, 0, 0}),
                         Pt(4, {1, 1, 0})})
                  .ok());
  auto hits = c->Search(std::vector<float>{3, 0, 0}, {.k = 4, .with_vector = true});
  ASSERT_TRUE(hits.ok());
  ASSERT_EQ(hits->size(), 4u);
  EXPECT_EQ((*hits)[0].id, PointId(1));
  EXPECT_NEAR((*hits)[0].score, 1.0, 1e-6);
  EXPECT_EQ((*hits)[0].vector, (std::vector<float>{10, 0, 0}));  // as given, not normalized
  EXPECT_EQ((*hits)[1].id, PointId(4));
  EXPECT_NEAR((*hits)[1].score, std::sqrt(0.5), 1e-6);
  EXPECT_NEAR((*hits)[2].score, 0.0, 1e-6);
  EXPECT_EQ((*hits)[3].id, PointId(3));
  EXPECT_NEAR((*hits)[3].score, -1.0, 1e-6);
}

// Search results name their points through a cache of internal -> external
// ids: a deleted point is not returned once its delete is acknowledged, an
// overwritten point is returned once under its id, and string ids resolve.
TEST_F(DbTest, ResolvedIdsFollowDeletesAndOverwrites) {
  OpenDb();
  for (bool sealed : {false, true}) {
    auto c = Create(sealed ? "sealed" : "growing", Config(2, Metric::kL2, IndexType::kHnsw));
    ASSERT_NE(c, nullptr);
    std::vector<Point> pts;
    for (int i = 0; i < 50; ++i) pts.push_back(Pt(i, {static_cast<float>(i), 0}));
    pts.push_back(Pt("doc-a", {100, 0}));
    ASSERT_TRUE(c->Upsert(pts).ok());
    if (sealed) {
      ASSERT_TRUE(c->Seal().ok());
    }
    auto ids_near = [&](float x) {
      auto r = c->Search(std::vector<float>{x, 0}, {.k = 3});
      EXPECT_TRUE(r.ok()) << r.status();
      std::vector<PointId> out;
      for (const auto& h : *r) out.push_back(h.id);
      return out;
    };
    // Twice: the second search resolves from the cache.
    for (int round = 0; round < 2; ++round) {
      EXPECT_EQ(ids_near(10), (std::vector<PointId>{10, 9, 11})) << round;  // ties: lower id first
      EXPECT_EQ(ids_near(100)[0], PointId("doc-a"));
    }
    ASSERT_EQ(*c->Delete({PointId(10)}), 1u);
    EXPECT_EQ(ids_near(10), (std::vector<PointId>{9, 11, 8}));
    // Point 9 moves far away: it is found there, once, and no longer near 10.
    ASSERT_TRUE(c->Upsert({Pt(9, {-50, 0})}).ok());
    EXPECT_EQ(ids_near(10), (std::vector<PointId>{11, 8, 12}));
    EXPECT_EQ(ids_near(-50), (std::vector<PointId>{9, 0, 1}));
    ASSERT_EQ(*c->Delete({PointId("doc-a")}), 1u);
    EXPECT_EQ(ids_near(100)[0], PointId(49));
  }
}

TEST_F(DbTest, SearchingAnEmptyCollectionFindsNothing) {
  OpenDb();
  for (IndexType type : {IndexType::kHnsw, IndexType::kFlat, IndexType::kIvfPq}) {
    auto c = Create(std::string(IndexTypeName(type)), Config(8, Metric::kL2, type, 2));
    ASSERT_NE(c, nullptr);
    Filter f = ParseFilter(R"({"must": [{"key": "a", "match": {"value": 1}}]})");
    const std::vector<float> q(8, 0.5f);
    for (const Filter* filter : {static_cast<const Filter*>(nullptr), static_cast<const Filter*>(&f)}) {
      for (bool exact : {false, true}) {
        auto r = c->Search(q, {.k = 5, .exact = exact, .filter = filter});
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_TRUE(r->empty());
      }
    }
    auto batch = c->SearchBatch(std::vector<float>(24, 0.5f), {.k = 5});
    ASSERT_TRUE(batch.ok());
    ASSERT_EQ(batch->size(), 3u);
    for (const auto& r : *batch) EXPECT_TRUE(r.empty());
    // Sealing and compacting nothing is fine too.
    EXPECT_TRUE(c->Seal().ok());
    EXPECT_TRUE(c->Compact(true).ok());
    EXPECT_EQ(c->Info()->sealed_segments, 0u);
  }
}

// ---- filtered search --------------------------------------------------------

class FilteredSearchTest : public DbTest {
 protected:
  static constexpr uint32_t kDim = 16;
  static constexpr size_t kN = 6000;
  void SetUp() override {
    DbTest::SetUp();
    x_ = Clustered(kN, kDim, TestSeed() + 1);
    queries_ = Clustered(20, kDim, TestSeed() + 2);
    OpenDb();
    CollectionConfig config = Config(kDim, Metric::kL2, IndexType::kHnsw);
    config.payload_indexes = {{"bucket", PayloadType::kInteger}};
    c_ = Create("c", config);
    ASSERT_NE(c_, nullptr);
    // bucket is indexed, free (the same value) is not: both paths are tested.
    UpsertRows(
        *c_, x_, kDim, 0, kN, [](size_t i) { return PointId(uint64_t{i}); },
        [](size_t i) {
          const std::string b = std::to_string(Bucket(i));
          return "{\"bucket\": " + b + ", \"free\": " + b + "}";
        });
  }
  static int Bucket(size_t i) { return static_cast<int>((i * 7919) % 1000); }

  // Runs the selectivity sweep; returns nothing, asserts inside.
  void Sweep(const std::string& field, const std::string& stage) {
    for (int below : {500, 100, 10, 1}) {
      const std::string what = stage + " " + field + " < " + std::to_string(below);
      Filter f = ParseFilter("{\"must\": [{\"key\": \"" + field + "\", \"range\": {\"lt\": " +
                             std::to_string(below) + "}}]}");
      auto keep = [this, below](size_t i) { return Bucket(i) < below && !deleted_.count(i); };
      size_t matching = 0;
      for (size_t i = 0; i < kN; ++i) matching += keep(i);
      ASSERT_EQ(testing_util::CountOf(*c_, &f), matching) << what;
      double recall = 0;
      for (size_t q = 0; q < 20; ++q) {
        const auto query = Row(queries_, q, kDim);
        auto truth = BruteForce(Metric::kL2, x_, kDim, query.data(), kK, keep);
        for (bool exact : {false, true}) {
          auto hits = c_->Search(query, {.k = kK, .exact = exact, .filter = &f});
          ASSERT_TRUE(hits.ok()) << what << ": " << hits.status();
          EXPECT_EQ(hits->size(), std::min<size_t>(kK, matching)) << what;
          for (const auto& h : *hits) {
            ASSERT_TRUE(keep(h.id.number())) << what << ": id " << h.id.ToString() << " does not match";
            auto payload = nlohmann::json::parse(h.payload);
            EXPECT_LT(payload[field].get<int>(), below);
          }
          if (exact) {
            ExpectExact(Metric::kL2, *hits, truth, what + " exact");
          } else {
            recall += RecallOf(*hits, truth);
          }
        }
      }
      recall /= 20;
      std::cout << what << ": " << matching << " points, recall@10 = " << recall << std::endl;
      EXPECT_GE(recall, 0.9) << what;
    }
  }

  std::vector<float> x_, queries_;
  std::set<size_t> deleted_;
  std::shared_ptr<Collection> c_;
};

TEST_F(FilteredSearchTest, SelectivitiesInGrowingSegment) {
  Sweep("bucket", "growing");
  Sweep("free", "growing");
}

TEST_F(FilteredSearchTest, SelectivitiesAfterSealAndWithDeletes) {
  ASSERT_TRUE(c_->Seal().ok());
  // Re-upsert every 10th point unchanged (new internal ids, now in the
  // growing segment, tombstones in the sealed one), and delete every 7th
  // for good.
  std::vector<Point> again;
  for (size_t i = 0; i < kN; i += 10) {
    const std::string b = std::to_string(Bucket(i));
    again.push_back(Pt(uint64_t{i}, Row(x_, i, kDim), "{\"bucket\": " + b + ", \"free\": " + b + "}"));
  }
  ASSERT_TRUE(c_->Upsert(again).ok());
  std::vector<PointId> doomed;
  for (size_t i = 0; i < kN; i += 7) {
    doomed.emplace_back(uint64_t{i});
    deleted_.insert(i);
  }
  auto n = c_->Delete(doomed);
  ASSERT_TRUE(n.ok());
  ASSERT_EQ(*n, doomed.size());
  auto info = c_->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->sealed_segments, 1u);
  EXPECT_EQ(info->points, kN - doomed.size());
  EXPECT_GT(info->deleted_in_segments, 0u);
  Sweep("bucket", "sealed+growing");
  Sweep("free", "sealed+growing");
}

// ---- shards, batches, sealing ----------------------------------------------

TEST_F(DbTest, MultiShardGivesTheSameResultsAsOneShard) {
  const uint32_t dim = 16;
  const auto x = Clustered(2000, dim, TestSeed() + 3);
  const auto queries = Clustered(20, dim, TestSeed() + 4);
  OpenDb();
  for (Metric m : {Metric::kL2, Metric::kInnerProduct}) {
    auto one = Create("one-" + MetricLabel(m), Config(dim, m, IndexType::kHnsw, 1));
    auto four = Create("four-" + MetricLabel(m), Config(dim, m, IndexType::kHnsw, 4));
    auto flat4 = Create("flat4-" + MetricLabel(m), Config(dim, m, IndexType::kFlat, 4));
    ASSERT_TRUE(one && four && flat4);
    std::vector<Point> points;
    for (size_t i = 0; i < 2000; ++i) {
      points.push_back(Pt(uint64_t{i}, Row(x, i, dim), "{\"odd\": " + std::to_string(i % 2) + "}"));
    }
    for (auto& c : {one, four, flat4}) {
      ASSERT_TRUE(c->Upsert(std::vector<Point>(points.begin(), points.begin() + 1000)).ok());
      ASSERT_TRUE(c->Upsert(std::vector<Point>(points.begin() + 1000, points.end())).ok());
    }
    // Upserts reach a shard's tail first (each tail chunk counts as a
    // segment) and are indexed in the background: wait for it.
    testing_util::WaitIndexed(*four);
    auto info = four->Info();
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->segments, 4u);  // one growing segment per shard
    Filter odd = ParseFilter(R"({"must": [{"key": "odd", "match": {"value": 1}}]})");
    for (size_t q = 0; q < 20; ++q) {
      const auto query = Row(queries, q, dim);
      for (const Filter* f : {static_cast<const Filter*>(nullptr), static_cast<const Filter*>(&odd)}) {
        std::string what = MetricLabel(m) + (f ? " filtered" : "");
        auto a = one->Search(query, {.k = kK, .exact = true, .filter = f});
        auto b = four->Search(query, {.k = kK, .exact = true, .filter = f});
        auto c = flat4->Search(query, {.k = kK, .filter = f});
        ASSERT_TRUE(a.ok() && b.ok() && c.ok());
        ExpectSameResults(*a, *b, what + " 1 vs 4 shards", 1e-5f);
        ExpectSameResults(*a, *c, what + " 1 shard vs 4 flat shards", 1e-4f);
        auto truth = BruteForce(m, x, dim, query.data(), kK,
                                [f](size_t i) { return f == nullptr || i % 2 == 1; });
        ExpectExact(m, *b, truth, what);
      }
    }
    EXPECT_EQ(testing_util::CountOf(*four), 2000u);
    EXPECT_EQ(testing_util::CountOf(*four, &odd), 1000u);
  }
}

TEST_F(DbTest, BatchSearchEqualsSingleSearches) {
  const uint32_t dim = 16;
  const size_t nq = 25;
  const auto x = Clustered(3000, dim, TestSeed() + 5);
  const auto queries = Clustered(nq, dim, TestSeed() + 6);
  OpenDb();
  CollectionConfig config = Config(dim, Metric::kL2, IndexType::kHnsw, 2);
  auto c = Create("c", config);
  ASSERT_NE(c, nullptr);
  UpsertRows(
      *c, x, dim, 0, 3000, [](size_t i) { return PointId(uint64_t{i}); },
      [](size_t i) { return "{\"g\": " + std::to_string(i % 3) + "}"; });
  testing_util::WaitIndexed(*c);  // the same index for both
  Filter g0 = ParseFilter(R"({"must": [{"key": "g", "match": {"value": 0}}]})");
  for (const Filter* f : {static_cast<const Filter*>(nullptr), static_cast<const Filter*>(&g0)}) {
    for (bool exact : {false, true}) {
      SearchParams p{.k = kK, .exact = exact, .filter = f};
      auto batch = c->SearchBatch(queries, p);
      ASSERT_TRUE(batch.ok()) << batch.status();
      ASSERT_EQ(batch->size(), nq);
      for (size_t q = 0; q < nq; ++q) {
        auto single = c->Search(Row(queries, q, dim), p);
        ASSERT_TRUE(single.ok());
        ExpectSameResults((*batch)[q], *single,
                          "query " + std::to_string(q) + (f ? " filtered" : "") + (exact ? " exact" : ""),
                          1e-4f);
      }
    }
  }
  // A batch must be whole queries.
  std::vector<float> ragged(queries.begin(), queries.begin() + dim + 1);
  EXPECT_EQ(c->SearchBatch(ragged, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(DbTest, ResultsIdenticalBeforeAndAfterSeal) {
  const uint32_t dim = 16;
  const auto x = Clustered(3000, dim, TestSeed() + 7);
  const auto queries = Clustered(20, dim, TestSeed() + 8);
  OpenDb();
  for (IndexType type : {IndexType::kHnsw, IndexType::kFlat}) {
    for (Metric m : {Metric::kL2, Metric::kCosine}) {
      const std::string name = std::string(IndexTypeName(type)) + "-" + MetricLabel(m);
      SCOPED_TRACE(name);
      auto c = Create(name, Config(dim, m, type, 2));
      ASSERT_NE(c, nullptr);
      UpsertRows(
          *c, x, dim, 0, 3000, [](size_t i) { return PointId(uint64_t{i}); },
          [](size_t i) { return "{\"g\": " + std::to_string(i % 4) + "}"; });
      // Approximate answers are only comparable once the background indexer has
      // caught up: a tail still being indexed is searched exactly before the seal.
      testing_util::WaitIndexed(*c);
      Filter g = ParseFilter(R"({"must_not": [{"key": "g", "match": {"value": 0}}]})");
      std::vector<std::vector<ScoredPoint>> before;
      auto run = [&](std::vector<std::vector<ScoredPoint>>* out) {
        for (size_t q = 0; q < 20; ++q) {
          for (const Filter* f : {static_cast<const Filter*>(nullptr), static_cast<const Filter*>(&g)}) {
            for (bool exact : {false, true}) {
              auto r = c->Search(Row(queries, q, dim), {.k = kK, .exact = exact, .filter = f});
              ASSERT_TRUE(r.ok()) << r.status();
              out->push_back(*r);
            }
          }
        }
      };
      run(&before);
      ASSERT_TRUE(c->Seal().ok());
      auto info = c->Info();
      ASSERT_TRUE(info.ok());
      EXPECT_EQ(info->sealed_segments, 2u);
      EXPECT_EQ(info->points, 3000u);
      std::vector<std::vector<ScoredPoint>> after;
      run(&after);
      ASSERT_EQ(before.size(), after.size());
      for (size_t i = 0; i < before.size(); ++i) {
        ExpectSameResults(before[i], after[i], "search " + std::to_string(i));
      }
      // Sealing again with nothing new is a no-op; new points land in a new
      // growing segment and are found.
      ASSERT_TRUE(c->Seal().ok());
      EXPECT_EQ(c->Info()->sealed_segments, 2u);
      std::vector<float> far(dim, 50.0f);
      ASSERT_TRUE(c->Upsert({Pt("far", far)}).ok());
      auto hit = c->Search(far, {.k = 1});
      ASSERT_TRUE(hit.ok());
      EXPECT_EQ((*hit)[0].id, PointId("far"));
    }
  }
}

// ---- trained, lossy index types after Seal ----------------------------------

struct LossyCase {
  IndexType type;
  int rerank_factor;
  double min_recall;
};

class LossyIndexTest : public DbTest, public ::testing::WithParamInterface<LossyCase> {};

TEST_P(LossyIndexTest, RecallAfterSealIsSane) {
  const uint32_t dim = 32;
  const size_t n = 5000;  // above the 4096 points a trained index needs
  const size_t nq = 30;
  const auto x = Clustered(n, dim, TestSeed() + 9, 64, 0.25f);
  const auto queries = Clustered(nq, dim, TestSeed() + 10, 64, 0.25f);
  OpenDb();
  CollectionConfig config = Config(dim, Metric::kL2, GetParam().type);
  config.index.rerank_factor = GetParam().rerank_factor;
  config.index.nprobe = 24;
  config.payload_indexes = {{"half", PayloadType::kBool}};
  auto c = Create("c", config);
  ASSERT_NE(c, nullptr);
  UpsertRows(
      *c, x, dim, 0, n, [](size_t i) { return PointId(uint64_t{i}); },
      [](size_t i) { return std::string(i % 2 ? "{\"half\": true}" : "{\"half\": false}"); }, 2500);
  ASSERT_TRUE(c->Seal().ok());
  auto info = c->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->sealed_segments, 1u);
  EXPECT_EQ(info->points, n);
  if (GetParam().type == IndexType::kIvfPq || GetParam().type == IndexType::kIvfSq8) {
    // Really the compressed index (not a flat fallback): a code (IVF-PQ: 8
    // sub-quantizers of a byte) and a 4-byte list position a point, well
    // under raw size. IVF-PQ's distance tables (128 lists x 8 x 256 floats)
    // would cost more than the codes here: the segment does not keep them.
    const uint64_t code = GetParam().type == IndexType::kIvfPq ? 8 : dim;
    EXPECT_LT(info->index_memory_bytes, n * dim * sizeof(float) / 2);
    EXPECT_GE(info->index_memory_bytes, n * (code + 4));
  }
  // Delete some of each query's true neighbours after sealing.
  std::set<size_t> deleted;
  for (size_t q = 0; q < nq; q += 3) {
    auto truth = BruteForce(Metric::kL2, x, dim, &queries[q * dim], 2, KeepAll());
    for (auto& t : truth) deleted.insert(t.second);
  }
  std::vector<PointId> ids(deleted.begin(), deleted.end());
  ASSERT_EQ(*c->Delete(ids), deleted.size());
  auto live = [&](size_t i) { return !deleted.count(i); };
  Filter half = ParseFilter(R"({"must": [{"key": "half", "match": {"value": true}}]})");
  double recall = 0, filtered_recall = 0;
  for (size_t q = 0; q < nq; ++q) {
    const auto query = Row(queries, q, dim);
    auto truth = BruteForce(Metric::kL2, x, dim, query.data(), kK, live);
    auto hits = c->Search(query, {.k = kK});
    ASSERT_TRUE(hits.ok()) << hits.status();
    for (const auto& h : *hits) EXPECT_FALSE(deleted.count(h.id.number())) << "deleted point returned";
    recall += RecallOf(*hits, truth);
    // Exact search reads raw vectors, whatever the index.
    auto exact = c->Search(query, {.k = kK, .exact = true});
    ASSERT_TRUE(exact.ok());
    ExpectExact(Metric::kL2, *exact, truth, "exact");
    // With re-ranking, scores are exact distances.
    if (GetParam().rerank_factor > 1) {
      for (const auto& h : *hits) {
        EXPECT_NEAR(h.score, RefScore(Metric::kL2, query.data(), &x[h.id.number() * dim], dim), 1e-3);
      }
    }
    auto ftruth = BruteForce(Metric::kL2, x, dim, query.data(), kK,
                             [&](size_t i) { return live(i) && i % 2 == 1; });
    auto fh = c->Search(query, {.k = kK, .filter = &half});
    ASSERT_TRUE(fh.ok());
    for (const auto& h : *fh) EXPECT_EQ(h.id.number() % 2, 1u);
    filtered_recall += RecallOf(*fh, ftruth);
  }
  recall /= nq;
  filtered_recall /= nq;
  std::cout << IndexTypeName(GetParam().type) << " rerank " << GetParam().rerank_factor
            << ": recall@10 = " << recall << ", filtered (50%) = " << filtered_recall << std::endl;
  EXPECT_GE(recall, GetParam().min_recall);
  EXPECT_GE(filtered_recall, GetParam().min_recall - 0.05);
  // Higher nprobe / ef never hurts much and usually helps.
  double wide = 0;
  for (size_t q = 0; q < nq; ++q) {
    const auto query = Row(queries, q, dim);
    auto hits = c->Search(query, {.k = kK, .ef = 256, .nprobe = 128});
    ASSERT_TRUE(hits.ok());
    wide += RecallOf(*hits, BruteForce(Metric::kL2, x, dim, query.data(), kK, live));
  }
  EXPECT_GE(wide / nq, recall - 0.02);
}

INSTANTIATE_TEST_SUITE_P(Types, LossyIndexTest,
                         ::testing::Values(LossyCase{IndexType::kIvfFlat, 0, 0.9},
                                           LossyCase{IndexType::kIvfPq, 0, 0.6},
                                           LossyCase{IndexType::kIvfPq, 4, 0.85},
                                           LossyCase{IndexType::kIvfSq8, 0, 0.85},
                                           LossyCase{IndexType::kHnswSq, 0, 0.85}),
                         [](const auto& info) {
                           return std::string(IndexTypeName(info.param.type)) + "_rerank" +
                                  std::to_string(info.param.rerank_factor);
                         });

}  // namespace
}  // namespace cairn

namespace cairn {
namespace {

using testing_util::Config;
using testing_util::DbTest;
using testing_util::ParseFilter;
using testing_util::Pt;

// Filter results are cached per shard between writes: every kind of write,
// and seal and compaction, must be seen by the next filtered search.
TEST_F(DbTest, RepeatedFilterSeesEveryWrite) {
  OpenDb();
  CollectionConfig cfg = Config(2);
  cfg.payload_indexes.push_back({"tag", PayloadType::kKeyword});
  auto c = Create("c", cfg);
  ASSERT_NE(c, nullptr);
  std::vector<Point> pts;
  for (uint64_t i = 0; i < 3000; ++i) {
    pts.push_back(Pt(PointId(i), {static_cast<float>(i), 0.0f}, i % 2 ? R"({"tag":"odd"})" : R"({"tag":"even"})"));
  }
  ASSERT_TRUE(c->Upsert(pts).ok());
  Filter odd = ParseFilter(R"({"must":[{"key":"tag","match":{"value":"odd"}}]})");
  SearchParams p;
  p.k = 1;
  p.filter = &odd;
  auto top = [&](std::vector<float> q) {
    auto r = c->Search(q, p);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && !r->empty() ? (*r)[0].id.number() : uint64_t{999999};
  };
  EXPECT_EQ(top({10.2f, 0}), 11u);
  // An upsert that makes a point match.
  ASSERT_TRUE(c->Upsert({Pt(PointId(uint64_t{10}), {10.0f, 0.0f}, R"({"tag":"odd"})")}).ok());
  EXPECT_EQ(top({10.2f, 0}), 10u);
  // A payload change that makes it stop matching.
  ASSERT_TRUE(c->OverwritePayload({PointId(uint64_t{10})}, R"({"tag":"even"})").ok());
  EXPECT_EQ(top({10.2f, 0}), 11u);
  // A delete.
  ASSERT_EQ(*c->Delete({PointId(uint64_t{11})}), 1u);
  EXPECT_EQ(top({10.9f, 0}), 9u);
  // Seal and compaction move points into new segments.
  ASSERT_TRUE(c->Seal().ok());
  EXPECT_EQ(top({10.9f, 0}), 9u);
  ASSERT_TRUE(c->Compact(true).ok());
  EXPECT_EQ(top({10.9f, 0}), 9u);
  ASSERT_TRUE(c->SetPayload({PointId(uint64_t{12})}, R"({"tag":"odd"})").ok());
  EXPECT_EQ(top({12.1f, 0}), 12u);
}

}  // namespace
}  // namespace cairn
