// Collection::BeginBulkLoad: the offline fast path must end with exactly the
// data that the same points upserted one batch at a time give.
#include <filesystem>
#include <set>

#include "db/test_util.h"
#include "storage/rss_test_util.h"

namespace cairn {
namespace {

using testing_util::Clustered;
using testing_util::Config;
using testing_util::DbTest;
using testing_util::Pt;
using testing_util::ParseFilter;
using testing_util::Row;

constexpr uint32_t kDim = 16;

CollectionConfig LoadConfig(IndexType type, uint32_t shards) {
  CollectionConfig c = Config(kDim, Metric::kL2, type, shards);
  c.payload_indexes.push_back(PayloadIndexSpec{"group", PayloadType::kInteger});
  return c;
}

std::string GroupPayload(size_t i) { return "{\"group\":" + std::to_string(i % 10) + "}"; }

class BulkLoadTest : public DbTest, public ::testing::WithParamInterface<IndexType> {};

// 3000 points with string ids over 2 shards, segments of 500; ids s-0..s-99
// come again at the end with other vectors and payloads (the last one wins).
TEST_P(BulkLoadTest, LoadsWhatUpsertWouldWithLastOneWinning) {
  OpenDb();
  auto c = Create("bulk", LoadConfig(GetParam(), 2));
  ASSERT_NE(c, nullptr);
  const size_t n = 3000;
  auto x = Clustered(n + 100, kDim, testing_util::TestSeed());
  {
    BulkLoadOptions o;
    o.segment_size = 500;
    auto loader = c->BeginBulkLoad(o);
    ASSERT_TRUE(loader.ok()) << loader.status();
    for (size_t s = 0; s < n + 100; s += 250) {
      std::vector<Point> batch;
      for (size_t i = s; i < std::min(n + 100, s + 250); ++i) {
        size_t id = i < n ? i : i - n;
        batch.push_back(Pt(PointId("s-" + std::to_string(id)), Row(x, i, kDim), GroupPayload(i), "t" + std::to_string(i)));
      }
      ASSERT_TRUE((*loader)->Add(batch).ok());
    }
    auto loaded = (*loader)->Finish();
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(*loaded, n);
  }
  auto check = [&](Collection& col) {
    auto count = col.Count();
    ASSERT_TRUE(count.ok());
    EXPECT_EQ(*count, n);
    auto info = col.Info();
    ASSERT_TRUE(info.ok());
    EXPECT_GE(info->sealed_segments, 6u);  // 3100 points in segments of 500, over 2 shards
    // Each repeated id holds its last point; the others their only one.
    for (size_t id : {size_t{0}, size_t{57}, size_t{99}, size_t{100}, size_t{2999}}) {
      auto got = col.Get({PointId("s-" + std::to_string(id))}, true, true);
      ASSERT_TRUE(got.ok());
      ASSERT_TRUE((*got)[0].has_value()) << id;
      size_t row = id < 100 ? n + id : id;
      EXPECT_EQ((*got)[0]->vector, Row(x, row, kDim)) << id;
      EXPECT_EQ((*got)[0]->text, "t" + std::to_string(row));
      EXPECT_EQ(nlohmann::json::parse((*got)[0]->payload)["group"], static_cast<int>(row % 10));
    }
    // Search finds a point's own vector first; the replaced vectors are gone.
    SearchParams p;
    p.k = 1;
    p.ef = 64;
    p.nprobe = 64;
    auto hit = col.Search(Row(x, 1234, kDim), p);
    ASSERT_TRUE(hit.ok());
    ASSERT_EQ(hit->size(), 1u);
    EXPECT_EQ((*hit)[0].id, PointId("s-1234"));
    p.exact = true;
    auto old = col.Search(Row(x, 5, kDim), p);
    ASSERT_TRUE(old.ok());
    EXPECT_NE((*old)[0].id, PointId("s-5"));
    // The payload index was loaded: group 3 filters to 300 points exactly.
    auto f = Filter::FromJson(R"({"must":[{"key":"group","match":{"value":3}}]})");
    ASSERT_TRUE(f.ok());
    auto in_group = col.Count(&*f);
    ASSERT_TRUE(in_group.ok());
    EXPECT_EQ(*in_group, 300u);
  };
  check(*c);
  c.reset();
  OpenDb();  // everything is durable and reloads from the manifest
  auto again = Get("bulk");
  ASSERT_NE(again, nullptr);
  check(*again);
  // Ordinary writes work after a load.
  ASSERT_TRUE(again->Upsert({Pt(PointId("s-new"), Row(x, 7, kDim), GroupPayload(3))}).ok());
  EXPECT_EQ(*again->Count(), n + 1);
  ASSERT_TRUE(again->Seal().ok());
}

// (Segments of 500 are too small to train: the types that keep codes load
// them through their vector files and store them flat.)
INSTANTIATE_TEST_SUITE_P(Types, BulkLoadTest,
                         ::testing::Values(IndexType::kHnsw, IndexType::kIvfFlat, IndexType::kFlat, IndexType::kIvfPq,
                                           IndexType::kIvfSq8, IndexType::kHnswSq),
                         [](const auto& info) { return std::string(IndexTypeName(info.param)); });

class BulkPeakTest : public DbTest {
 protected:
  // Whether RSS peaks can be measured here.
  static bool Measurable() { return !testing_util::kAddressSanitizer && testing_util::ResetPeakRss(); }
  static constexpr const char* kWhyNot = "freed memory stays resident under AddressSanitizer, or the kernel "
                                         "cannot reset the peak RSS";
  // Bulk-loads `rows` uniform vectors of `d` dimensions into one segment of a
  // new collection and returns the load's peak RSS growth, having checked
  // that the segment (with its vector file when `vector_file`) finds a
  // loaded point exactly.
  double LoadGrowth(const std::string& name, const CollectionConfig& cfg, size_t rows, size_t d, bool vector_file) {
    auto c = Create(name, cfg);
    EXPECT_NE(c, nullptr);
    if (c == nullptr) return 0;
    uint64_t state = testing_util::TestSeed();
    auto next = [&] {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return static_cast<float>(state >> 40) / 16777216.0f;
    };
    EXPECT_TRUE(testing_util::ResetPeakRss());
    const double before = static_cast<double>(testing_util::ProcStatusBytes("VmRSS:"));
    auto loader = c->BeginBulkLoad({.segment_size = rows});
    EXPECT_TRUE(loader.ok()) << loader.status();
    if (!loader.ok()) return 0;
    std::vector<float> probe;
    for (size_t s = 0; s < rows; s += 5000) {
      std::vector<Point> batch;
      for (size_t i = s; i < std::min(rows, s + 5000); ++i) {
        std::vector<float> v(d);
        for (auto& f : v) f = next();
        if (i == 4321) probe = v;
        batch.push_back(Pt(PointId(uint64_t{i}), std::move(v), "{}"));
      }
      EXPECT_TRUE((*loader)->Add(batch).ok());
    }
    auto loaded = (*loader)->Finish();
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (!loaded.ok()) return 0;
    EXPECT_EQ(*loaded, rows);
    loader->reset();
    const double grew = static_cast<double>(testing_util::ProcStatusBytes("VmHWM:")) - before;
    // One segment, which finds a point exactly.
    auto info = c->Info();
    EXPECT_TRUE(info.ok());
    if (info.ok()) {
      EXPECT_EQ(info->sealed_segments, 1u);
    }
    EXPECT_EQ(testing_util::SegmentDirFiles(dir_ + "/collections/" + name, ".vec").size(), vector_file ? 1u : 0u);
    SearchParams p;
    p.k = 1;
    p.exact = true;
    auto hit = c->Search(probe, p);
    EXPECT_TRUE(hit.ok()) << hit.status();
    if (hit.ok() && hit->size() == 1) {
      EXPECT_EQ((*hit)[0].id, PointId(uint64_t{4321}));
      EXPECT_FLOAT_EQ((*hit)[0].score, 0.0f);
    } else {
      ADD_FAILURE() << "no hit";
    }
    return grew;
  }
};

// A bulk load of a type that keeps codes (here IVF-PQ, one segment of
// 200,000 x 128, 100 MB of floats, 3 MB of codes) writes each vector to the
// segment's vector file as it arrives and builds the segment from the file a
// chunk at a time: it never holds the segment's floats (it held them all).
TEST_F(BulkPeakTest, ABulkLoadOfCodesHoldsNoSegmentOfFloats) {
  if (!Measurable()) GTEST_SKIP() << kWhyNot;
  OpenDb();
  CollectionConfig cfg = Config(128, Metric::kL2, IndexType::kIvfPq, 1);
  cfg.index.nlist = 64;
  cfg.index.pq_m = 16;
  // Codes, ids, the training sample, a chunk, the loader's id maps: about
  // half the floats at this size (a constant part of it), far less at scale.
  const double floats = 200000 * 128 * sizeof(float);
  EXPECT_LT(LoadGrowth("codes", cfg, 200000, 128, true), 0.6 * floats) << "the load held the segment's floats";
}

// So does HNSW walking on int8 codes (80,000 x 256, 82 MB of floats, 20 MB of
// codes): its graph is linked on the codes, derived from the vector file,
// where the floats stay (it held them all, then the codes beside them). The
// same load walking on floats holds them, as it must.
TEST_F(BulkPeakTest, AnHnswBulkLoadHoldsNoSegmentOfFloats) {
  if (!Measurable()) GTEST_SKIP() << kWhyNot;
  constexpr size_t kRows = 80000, kD = 256;
  OpenDb();
  CollectionConfig cfg = Config(kD, Metric::kL2, IndexType::kHnsw, 1);
  cfg.index.hnsw_m = 8;
  cfg.index.ef_construction = 40;
  // First, so that the second's growth is not hidden by memory the first
  // gave back to the allocator but not to the system.
  const double on_codes = LoadGrowth("codes", cfg, kRows, kD, true);
  cfg.index.hnsw_int8 = false;
  const double on_floats = LoadGrowth("floats", cfg, kRows, kD, false);
  const double floats = kRows * kD * sizeof(float);
  EXPECT_GT(on_floats, floats);
  EXPECT_LT(on_codes, on_floats - 0.6 * floats) << "the load held the segment's floats";
}

// An IVF-Flat load large enough to train (one segment): its lists hold the
// exact vectors, and the scans that read vectors by id (a selective filter's
// exact scan, compaction's rebuild) must get those, not zeros. (The load
// once gave such a segment a vector file written before its points reached
// storage: every row zero.)
TEST_F(DbTest, AnIvfFlatBulkLoadScansAndCompactsItsRealVectors) {
  OpenDb();
  CollectionConfig cfg = LoadConfig(IndexType::kIvfFlat, 1);
  cfg.index.nlist = 16;
  auto c = Create("ivf", cfg);
  ASSERT_NE(c, nullptr);
  const size_t n = 6000;
  const auto x = Clustered(n, kDim, testing_util::TestSeed() + 5);
  auto group = [](size_t i) { return static_cast<int>(i % 500); };
  {
    auto loader = c->BeginBulkLoad();
    ASSERT_TRUE(loader.ok()) << loader.status();
    std::vector<Point> pts;
    for (size_t i = 0; i < n; ++i) {
      pts.push_back(Pt(PointId(uint64_t{i}), Row(x, i, kDim), "{\"group\":" + std::to_string(group(i)) + "}"));
    }
    ASSERT_TRUE((*loader)->Add(pts).ok());
    ASSERT_TRUE((*loader)->Finish().ok());
  }
  ASSERT_EQ(c->Info()->sealed_segments, 1u);
  std::set<size_t> deleted;
  auto check = [&](const std::string& stage) {
    SCOPED_TRACE(stage);
    // 12 points match: the filter's exact scan scores them by id.
    Filter f = ParseFilter(R"({"must": [{"key": "group", "match": {"value": 7}}]})");
    for (size_t q : {size_t{3}, size_t{1234}, size_t{5999}}) {
      const auto query = Row(x, q, kDim);
      auto keep = [&](size_t i) { return group(i) == 7 && !deleted.count(i); };
      const auto truth = testing_util::BruteForce(Metric::kL2, x, kDim, query.data(), 5, keep);
      auto hits = c->Search(query, {.k = 5, .filter = &f});
      ASSERT_TRUE(hits.ok()) << hits.status();
      ASSERT_EQ(hits->size(), truth.size());
      for (size_t j = 0; j < truth.size(); ++j) {
        EXPECT_EQ((*hits)[j].id, PointId(uint64_t{truth[j].second})) << "query " << q << " rank " << j;
        EXPECT_NEAR((*hits)[j].score, truth[j].first, 1e-3f * (1 + truth[j].first));
      }
    }
    // Every point left is its own nearest, at distance 0.
    for (size_t i = 1; i < n; i += 97) {
      if (deleted.count(i)) continue;
      auto hit = c->Search(Row(x, i, kDim), {.k = 1, .nprobe = 16});
      ASSERT_TRUE(hit.ok() && hit->size() == 1) << i;
      EXPECT_EQ((*hit)[0].id, PointId(uint64_t{i}));
      EXPECT_NEAR((*hit)[0].score, 0.0f, 1e-4f);
    }
  };
  check("loaded");
  // A third deleted, then a forced compaction rebuilds the segment from the
  // vectors of the points left.
  std::vector<PointId> doomed;
  for (size_t i = 0; i < n; i += 3) {
    doomed.emplace_back(uint64_t{i});
    deleted.insert(i);
  }
  ASSERT_EQ(*c->Delete(doomed), doomed.size());
  ASSERT_TRUE(c->Compact(true).ok());
  check("compacted");
  c.reset();
  OpenDb();
  c = Get("ivf");
  ASSERT_NE(c, nullptr);
  check("reopened");
}

TEST_F(DbTest, BulkLoadNeedsAnEmptyCollectionAndBlocksWrites) {
  OpenDb();
  auto c = Create("c", LoadConfig(IndexType::kHnsw, 1));
  ASSERT_NE(c, nullptr);
  auto x = Clustered(10, kDim, 1);
  {
    auto loader = c->BeginBulkLoad();
    ASSERT_TRUE(loader.ok());
    // A second load, and writes, are refused while one runs.
    EXPECT_EQ(c->BeginBulkLoad().status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(c->Upsert({Pt(PointId(uint64_t{1}), Row(x, 1, kDim))}).code(), absl::StatusCode::kUnavailable);
    // A bad point: the whole call is refused, nothing of it is taken.
    std::vector<Point> bad = {Pt(PointId(uint64_t{1}), Row(x, 1, kDim)), Pt(PointId(uint64_t{2}), {1.0f, 2.0f})};
    EXPECT_EQ((*loader)->Add(bad).code(), absl::StatusCode::kInvalidArgument);
    ASSERT_TRUE((*loader)->Add({Pt(PointId(uint64_t{3}), Row(x, 3, kDim))}).ok());
    auto n = (*loader)->Finish();
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, 1u);
    EXPECT_EQ((*loader)->Finish().status().code(), absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(*c->Count(), 1u);
  EXPECT_EQ(c->BeginBulkLoad().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(DbTest, AbandonedBulkLoadLeavesNothing) {
  OpenDb();
  auto c = Create("c", LoadConfig(IndexType::kHnsw, 1));
  ASSERT_NE(c, nullptr);
  auto x = Clustered(300, kDim, 2);
  {
    BulkLoadOptions o;
    o.segment_size = 100;  // segment files are written before Finish
    auto loader = c->BeginBulkLoad(o);
    ASSERT_TRUE(loader.ok());
    std::vector<Point> pts;
    for (size_t i = 0; i < 300; ++i) pts.push_back(Pt(PointId(uint64_t{i}), Row(x, i, kDim)));
    ASSERT_TRUE((*loader)->Add(pts).ok());
  }  // destroyed without Finish
  EXPECT_EQ(*c->Count(), 0u);
  ASSERT_TRUE(c->Upsert({Pt(PointId(uint64_t{1}), Row(x, 1, kDim))}).ok());
  c.reset();
  OpenDb();
  EXPECT_EQ(*Get("c")->Count(), 1u);
  size_t files = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir_)) {
    EXPECT_EQ(e.path().filename().string().find("bulk-load"), std::string::npos) << e.path();
    if (e.path().extension() == ".cseg") ++files;
  }
  EXPECT_EQ(files, 0u);
}

}  // namespace
}  // namespace cairn
