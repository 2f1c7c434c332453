// Segments that keep their vectors lossily (ivf_pq, ivf_sq8, hnsw_sq) re-rank
// and scan exactly from a vector file written beside them: whichever way the
// segment was made (seal of a flat or of a trained growing segment, bulk
// load, compaction), the answers are the ones storage gives, and a missing or
// damaged file changes no answer.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>

#include "cairn/database.h"
#include "db/test_util.h"
#include "gtest/gtest.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using testing_util::BruteForce;
using testing_util::Clustered;
using testing_util::Config;
using testing_util::DbTest;
using testing_util::KeepAll;
using testing_util::Pt;
using testing_util::RefScore;
using testing_util::Row;
using testing_util::TestSeed;
using testing_util::UpsertRows;

constexpr uint32_t kDim = 16;
constexpr int kK = 10;

class RerankTest : public DbTest {
 protected:
  void SetUp() override {
    DbTest::SetUp();
    queries_ = Clustered(12, kDim, TestSeed() + 41);
  }
  // The re-rank from vector files and storage is what these tests follow:
  // HNSW floats are not also kept in memory (MemoryLimitTest covers that;
  // with them there, a filtered search may be an exact scan instead).
  void OpenDb(DatabaseOptions options = testing_util::TestOptions()) {
    options.hnsw_vectors_memory_share = 0;
    DbTest::OpenDb(options);
  }
  std::string CollectionDir(const std::string& name) const { return dir_ + "/collections/" + name; }

  CollectionConfig LossyConfig(IndexType type, Metric metric, uint32_t shards = 1) const {
    CollectionConfig config = Config(kDim, metric, type, shards);
    config.index.rerank_factor = 4;
    config.payload_indexes = {{"g", PayloadType::kInteger}};
    return config;
  }

  std::vector<std::vector<ScoredPoint>> Searches(const Collection& c) const {
    return testing_util::SearchesOf(c, queries_, kDim, kK);
  }
  // Scores equal to the bit: the same vectors are read, wherever from.
  static void ExpectSame(const std::vector<std::vector<ScoredPoint>>& a,
                         const std::vector<std::vector<ScoredPoint>>& b, const std::string& what) {
    testing_util::ExpectSameSearches(a, b, what, 0.0f);
  }

  // Re-ranked scores are the exact scores of the points' vectors, and exact
  // searches find the brute-force answer.
  void ExpectExactScores(const Collection& c, Metric metric, const std::vector<float>& x, const std::string& what,
                         const std::function<bool(size_t)>& live = KeepAll()) const {
    for (size_t q = 0; q < queries_.size() / kDim; ++q) {
      const auto query = Row(queries_, q, kDim);
      auto hits = c.Search(query, {.k = kK});
      ASSERT_TRUE(hits.ok()) << hits.status();
      ASSERT_EQ(hits->size(), static_cast<size_t>(kK));
      for (const auto& h : *hits) {
        EXPECT_NEAR(h.score, RefScore(metric, query.data(), &x[h.id.number() * kDim], kDim), 1e-4)
            << what << " query " << q;
      }
      auto exact = c.Search(query, {.k = kK, .exact = true});
      ASSERT_TRUE(exact.ok());
      auto truth = BruteForce(metric, x, kDim, query.data(), kK, live);
      ASSERT_EQ(exact->size(), truth.size());
      for (size_t i = 0; i < truth.size(); ++i) {
        EXPECT_NEAR((*exact)[i].score, truth[i].first, 1e-4) << what << " exact, query " << q << " rank " << i;
      }
    }
  }

  std::vector<float> queries_;
};

TEST_F(RerankTest, SealedLossySegmentsReRankFromTheirVectorFiles) {
  const auto x = Clustered(5000, kDim, TestSeed() + 40);  // above the 4,096 a trained segment needs
  for (IndexType type : {IndexType::kIvfPq, IndexType::kIvfSq8, IndexType::kHnswSq, IndexType::kHnsw}) {
    for (Metric metric : {Metric::kL2, Metric::kCosine}) {
      const std::string name = std::string(IndexTypeName(type)) + "-" + std::string(MetricName(metric));
      SCOPED_TRACE(name);
      OpenDb();
      CollectionConfig config = LossyConfig(type, metric);
      // HNSW re-ranks its walk's candidates itself, whatever the factor.
      if (type == IndexType::kHnsw) config.index.rerank_factor = 0;
      auto c = Create(name, config);
      ASSERT_NE(c, nullptr);
      UpsertRows(
          *c, x, kDim, 0, x.size() / kDim, [](size_t i) { return PointId(uint64_t{i}); },
          [](size_t i) { return "{\"g\": " + std::to_string(i % 3) + "}"; });
      ASSERT_TRUE(c->Seal().ok());
      const auto segs = testing_util::SegmentDirFiles(CollectionDir(name), ".cseg");
      const auto vecs = testing_util::SegmentDirFiles(CollectionDir(name), ".vec");
      ASSERT_EQ(segs.size(), 1u);
      ASSERT_EQ(vecs.size(), 1u);
      EXPECT_EQ(vecs[0].stem(), segs[0].stem());
      EXPECT_EQ(fs::file_size(vecs[0]), 32 + 5000 * (kDim * 4 + 4));
      ExpectExactScores(*c, metric, x, "with the vector file");
      const auto with_file = Searches(*c);

      // Closes the database, changes its files, reopens it: the same answers.
      auto reopen = [&](const std::function<void()>& change, const std::string& what) {
        c.reset();
        CloseDb();
        change();
        OpenDb();
        c = Get(name);
        ASSERT_NE(c, nullptr);
        ExpectSame(with_file, Searches(*c), what);
      };
      reopen([] {}, "reopened: the file is used again");
      reopen(
          [&] {
            std::fstream f(vecs[0], std::ios::in | std::ios::out | std::ios::binary);
            for (size_t row = 0; row < 5000; row += 7) {
              f.seekp(static_cast<std::streamoff>(32 + row * (kDim * 4 + 4) + 5));
              f.put('\x7f');
            }
          },
          "every 7th row damaged: those read from storage");
      reopen([&] { fs::remove(vecs[0]); }, "without the vector file: from storage");
      reopen([] {}, "reopened without the vector file, which the manifest no longer names");
      EXPECT_TRUE(testing_util::SegmentDirFiles(CollectionDir(name), ".vec").empty());
      // Maintenance writes it again (from storage), and it is used.
      ASSERT_TRUE(c->Compact().ok());
      ASSERT_EQ(testing_util::SegmentDirFiles(CollectionDir(name), ".vec"), vecs);
      ExpectSame(with_file, Searches(*c), "rewritten by maintenance");
      reopen([] {}, "reopened with the rewritten vector file");
      EXPECT_EQ(testing_util::SegmentDirFiles(CollectionDir(name), ".vec"), vecs);
    }
  }
}

TEST_F(RerankTest, ATrainedGrowingSegmentSealsWithAVectorFileFromStorage) {
  // Enough points for the growing segment to be trained into an IVF-SQ8
  // index before the seal: the seal writes its vector file from storage.
  const size_t n = 12000;
  const auto x = Clustered(n, kDim, TestSeed() + 42);
  OpenDb();
  CollectionConfig config = LossyConfig(IndexType::kIvfSq8, Metric::kCosine);
  config.index.nlist = 16;  // trains at 10,000 points
  auto c = Create("c", config);
  ASSERT_NE(c, nullptr);
  UpsertRows(
      *c, x, kDim, 0, n, [](size_t i) { return PointId(uint64_t{i}); },
      [](size_t i) { return "{\"g\": " + std::to_string(i % 3) + "}"; }, 3000);
  testing_util::WaitIndexed(*c);
  // Deleted before the seal: their rows are zeros, never read.
  ASSERT_EQ(*c->Delete({PointId(uint64_t{3}), PointId(uint64_t{4000})}), 2u);
  ASSERT_TRUE(c->Seal().ok());
  ASSERT_EQ(testing_util::SegmentDirFiles(CollectionDir("c"), ".vec").size(), 1u);
  auto info = c->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->points, n - 2);
  ExpectExactScores(*c, Metric::kCosine, x, "sealed from a trained growing segment",
                    [](size_t i) { return i != 3 && i != 4000; });
  const auto with_file = Searches(*c);
  for (const auto& r : with_file) {
    for (const auto& h : r) EXPECT_TRUE(h.id.number() != 3 && h.id.number() != 4000);
  }
  c.reset();
  CloseDb();
  for (const auto& f : testing_util::SegmentDirFiles(CollectionDir("c"), ".vec")) fs::remove(f);
  OpenDb();
  c = Get("c");
  ASSERT_NE(c, nullptr);
  ExpectSame(with_file, Searches(*c), "without the vector file");
}

TEST_F(RerankTest, BulkLoadCompactionAndSnapshotsKeepVectorFilesBesideTheirSegments) {
  const size_t n = 12000;
  const auto x = Clustered(n, kDim, TestSeed() + 43);
  OpenDb();
  for (IndexType type : {IndexType::kIvfPq, IndexType::kHnsw}) {
    const std::string name(IndexTypeName(type));
    SCOPED_TRACE(name);
    CollectionConfig config = LossyConfig(type, Metric::kL2);
    if (type == IndexType::kHnsw) config.index.rerank_factor = 0;
    auto c = Create(name, config);
    ASSERT_NE(c, nullptr);
    auto loader = c->BeginBulkLoad({.segment_size = 6000});
    ASSERT_TRUE(loader.ok()) << loader.status();
    std::vector<Point> points;
    for (size_t i = 0; i < n; ++i) {
      points.push_back(Pt(PointId(uint64_t{i}), Row(x, i, kDim), "{\"g\": " + std::to_string(i % 3) + "}"));
    }
    ASSERT_TRUE((*loader)->Add(points).ok());
    ASSERT_TRUE((*loader)->Finish().ok());
    loader->reset();
    auto segs = testing_util::SegmentDirFiles(CollectionDir(name), ".cseg");
    auto vecs = testing_util::SegmentDirFiles(CollectionDir(name), ".vec");
    ASSERT_EQ(segs.size(), 2u);
    ASSERT_EQ(vecs.size(), 2u);
    ExpectExactScores(*c, Metric::kL2, x, "bulk loaded");

    // Compaction rewrites the segment with deletes, and its vector file (4,500
    // points left: still trained, not flat).
    std::vector<PointId> doomed;
    for (uint64_t i = 0; i < 6000; i += 4) doomed.push_back(PointId(i));
    ASSERT_EQ(*c->Delete(doomed), doomed.size());
    ASSERT_TRUE(c->Compact(true).ok());
    auto segs2 = testing_util::SegmentDirFiles(CollectionDir(name), ".cseg");
    auto vecs2 = testing_util::SegmentDirFiles(CollectionDir(name), ".vec");
    ASSERT_EQ(segs2.size(), 2u);
    ASSERT_EQ(vecs2.size(), 2u);
    for (size_t i = 0; i < 2; ++i) EXPECT_EQ(vecs2[i].stem(), segs2[i].stem());
    EXPECT_NE(vecs2, vecs) << "the compacted segment has a new vector file, the old one is gone";
    for (const auto& r : Searches(*c)) {
      for (const auto& h : r) EXPECT_TRUE(h.id.number() >= 6000 || h.id.number() % 4 != 0);
    }
    auto live = [](size_t i) { return i >= 6000 || i % 4 != 0; };
    ExpectExactScores(*c, Metric::kL2, x, "compacted", live);

    // A snapshot carries the vector files; the restored copy answers alike.
    const auto compacted = Searches(*c);
    ASSERT_TRUE(db_->Snapshot(name, root_ + "/snap-" + name).ok());
    auto restored = db_->RestoreCollection(root_ + "/snap-" + name, name + "-copy");
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_EQ(testing_util::SegmentDirFiles(CollectionDir(name + "-copy"), ".vec").size(), 2u);
    ExpectSame(compacted, Searches(**restored), "restored from a snapshot");
  }
}

// HNSW walking on float32 (hnsw_int8 off) keeps its vectors in memory: no
// vector file, exact scores from memory.
TEST_F(RerankTest, AnHnswSegmentWalkingOnFloatsKeepsThemInMemory) {
  const auto x = Clustered(5000, kDim, TestSeed() + 44);
  OpenDb();
  CollectionConfig config = Config(kDim, Metric::kL2, IndexType::kHnsw, 1);
  config.index.hnsw_int8 = false;
  auto c = Create("f32", config);
  ASSERT_NE(c, nullptr);
  UpsertRows(*c, x, kDim);
  ASSERT_TRUE(c->Seal().ok());
  EXPECT_EQ(testing_util::SegmentDirFiles(CollectionDir("f32"), ".cseg").size(), 1u);
  EXPECT_TRUE(testing_util::SegmentDirFiles(CollectionDir("f32"), ".vec").empty());
  ExpectExactScores(*c, Metric::kL2, x, "float walk");
}

}  // namespace
}  // namespace cairn
