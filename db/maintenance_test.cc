// Sealing, reopening, compaction and snapshots: state survives each of them
// and search results stay the same.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

#include "cairn/database.h"
#include "db/test_util.h"
#include "gtest/gtest.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using testing_util::BruteForce;
using testing_util::Clustered;
using testing_util::Config;
using testing_util::Contents;
using testing_util::CountOf;
using testing_util::DbTest;
using testing_util::ParseFilter;
using testing_util::Pt;
using testing_util::RecallOf;
using testing_util::Row;
using testing_util::TestOptions;
using testing_util::TestSeed;
using testing_util::UpsertRows;

constexpr uint32_t kDim = 16;
constexpr int kK = 10;

// Every search a test compares: exact and index, with and without a filter.
std::vector<std::vector<ScoredPoint>> Searches(const Collection& c, const std::vector<float>& queries,
                                               bool with_index = true) {
  return testing_util::SearchesOf(c, queries, kDim, kK, with_index);
}

// The exact-search results of Searches(with_index=true), in order.
std::vector<std::vector<ScoredPoint>> ExactOnly(const std::vector<std::vector<ScoredPoint>>& all) {
  std::vector<std::vector<ScoredPoint>> out;
  for (size_t i = 0; i < all.size(); i += 2) out.push_back(all[i]);
  return out;
}

void ExpectSame(const std::vector<std::vector<ScoredPoint>>& a,
                const std::vector<std::vector<ScoredPoint>>& b, const std::string& what) {
  testing_util::ExpectSameSearches(a, b, what);
}

size_t SegmentFiles(const std::string& collection_dir) {
  return testing_util::SegmentDirFiles(collection_dir, ".cseg").size();
}

class MaintenanceTest : public DbTest {
 protected:
  void SetUp() override {
    DbTest::SetUp();
    x_ = Clustered(3000, kDim, TestSeed() + 20);
    queries_ = Clustered(10, kDim, TestSeed() + 21);
  }
  std::shared_ptr<Collection> CreateAndFill(const std::string& name, IndexType type, uint32_t shards,
                                            size_t begin, size_t end) {
    CollectionConfig config = Config(kDim, Metric::kL2, type, shards);
    config.payload_indexes = {{"g", PayloadType::kInteger}};
    auto c = Create(name, config);
    if (c) Fill(*c, begin, end);
    return c;
  }
  void Fill(Collection& c, size_t begin, size_t end) {
    UpsertRows(
        c, x_, kDim, begin, end, [](size_t i) { return PointId(uint64_t{i}); },
        [](size_t i) { return "{\"g\": " + std::to_string(i % 3) + "}"; });
  }
  std::string CollectionDir(const std::string& name) const { return dir_ + "/collections/" + name; }

  std::vector<float> x_, queries_;
};

TEST_F(MaintenanceTest, SealThenReopenLoadsSegmentsAndReplaysLaterWrites) {
  OpenDb();
  auto c = CreateAndFill("c", IndexType::kHnsw, 2, 0, 2000);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Seal().ok());
  auto info = c->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->sealed_segments, 2u);
  EXPECT_EQ(SegmentFiles(CollectionDir("c")), 2u);
  // Later writes: new points, overwrites and deletes of sealed points,
  // payload changes.
  Fill(*c, 2000, 3000);
  ASSERT_TRUE(c->Upsert({Pt(5, Row(x_, 2999, kDim), R"({"g": 2})", "moved")}).ok());
  ASSERT_EQ(*c->Delete({PointId(6), PointId(2500)}), 2u);
  ASSERT_TRUE(c->SetPayload({PointId(7)}, R"({"g": 9})").ok());
  const auto contents = Contents(*c);
  const auto results = Searches(*c, queries_);
  Filter g9 = ParseFilter(R"({"must": [{"key": "g", "match": {"value": 9}}]})");
  ASSERT_EQ(CountOf(*c, &g9), 1u);
  c.reset();
  CloseDb();

  OpenDb();
  c = Get("c");
  ASSERT_NE(c, nullptr);
  info = c->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->sealed_segments, 2u) << "sealed segments are loaded from their files";
  EXPECT_EQ(info->points, 2998u);
  EXPECT_GT(info->deleted_in_segments, 0u) << "tombstones are rebuilt from the live set";
  EXPECT_EQ(Contents(*c), contents);
  EXPECT_EQ(CountOf(*c, &g9), 1u);
  // The sealed graphs are the saved ones but the growing part is rebuilt by
  // replay: compare exact search strictly, and check the index finds the
  // replayed points.
  ExpectSame(Searches(*c, queries_, /*with_index=*/false), ExactOnly(results), "exact after reopen");
  for (size_t i : {2100, 2999}) {
    auto hit = c->Search(Row(x_, i, kDim), {.k = 2});
    ASSERT_TRUE(hit.ok());
    ASSERT_FALSE(hit->empty());
    EXPECT_FLOAT_EQ((*hit)[0].score, 0.0f);
    std::set<PointId> top;
    for (const auto& h : *hit) top.insert(h.id);
    EXPECT_TRUE(top.count(PointId(uint64_t{i}))) << i;
  }
  auto moved = c->Get({PointId(5)}, true, true);
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ((*moved)[0]->vector, Row(x_, 2999, kDim));
  EXPECT_EQ((*moved)[0]->text, "moved");
  // Sealing the replayed writes adds segments; a second reopen loads them all.
  ASSERT_TRUE(c->Seal().ok());
  EXPECT_EQ(c->Info()->sealed_segments, 4u);
  c.reset();
  OpenDb();
  c = Get("c");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->Info()->sealed_segments, 4u);
  EXPECT_EQ(Contents(*c), contents);
  EXPECT_EQ(SegmentFiles(CollectionDir("c")), 4u);
}

TEST_F(MaintenanceTest, DeleteAfterSealHidesPointsAndSurvivesReopen) {
  OpenDb();
  auto c = CreateAndFill("c", IndexType::kHnsw, 1, 0, 3000);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Seal().ok());
  // Delete the nearest neighbours of every query.
  std::set<uint64_t> doomed;
  for (size_t q = 0; q < queries_.size() / kDim; ++q) {
    for (const auto& t : BruteForce(Metric::kL2, x_, kDim, &queries_[q * kDim], 5, testing_util::KeepAll())) {
      doomed.insert(t.second);
    }
  }
  std::vector<PointId> ids(doomed.begin(), doomed.end());
  ASSERT_EQ(*c->Delete(ids), doomed.size());
  auto check = [&](const std::string& when) {
    auto info = c->Info();
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->deleted_in_segments, doomed.size()) << when;
    EXPECT_EQ(info->points, 3000 - doomed.size()) << when;
    for (const auto& results : Searches(*c, queries_)) {
      EXPECT_EQ(results.size(), static_cast<size_t>(kK)) << when;
      for (const auto& h : results) EXPECT_FALSE(doomed.count(h.id.number())) << when << ": " << h.id.ToString();
    }
    auto got = c->Get(ids);
    ASSERT_TRUE(got.ok());
    for (const auto& r : *got) EXPECT_FALSE(r.has_value()) << when;
    Filter has = ParseFilter(R"({"must": [{"has_id": [)" + std::to_string(*doomed.begin()) + "]}]}");
    EXPECT_EQ(CountOf(*c, &has), 0u) << when;
  };
  check("before reopen");
  c.reset();
  OpenDb();
  c = Get("c");
  ASSERT_NE(c, nullptr);
  check("after reopen");
}

TEST_F(MaintenanceTest, CompactDropsTombstonesWithResultsUnchanged) {
  OpenDb();
  for (IndexType type : {IndexType::kFlat, IndexType::kHnsw}) {
    const std::string name = std::string(IndexTypeName(type));
    SCOPED_TRACE(name);
    auto c = CreateAndFill(name, type, 2, 0, 3000);
    ASSERT_NE(c, nullptr);
    ASSERT_TRUE(c->Seal().ok());
    // 10% deleted: under the 0.2 ratio, so Compact(false) leaves them.
    std::vector<PointId> doomed;
    for (size_t i = 0; i < 3000; i += 10) doomed.emplace_back(uint64_t{i});
    ASSERT_EQ(*c->Delete(doomed), doomed.size());
    ASSERT_TRUE(c->Compact(false).ok());
    EXPECT_EQ(c->Info()->deleted_in_segments, doomed.size());
    const auto contents = Contents(*c);
    // The flat index's results must be identical; HNSW is rebuilt, so compare
    // its exact results strictly and its index results by recall.
    const bool strict = type == IndexType::kFlat;
    const auto before = Searches(*c, queries_, strict);
    ASSERT_TRUE(c->Compact(true).ok());
    auto info = c->Info();
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->deleted_in_segments, 0u);
    EXPECT_EQ(info->sealed_segments, 2u);
    EXPECT_EQ(info->points, 2700u);
    EXPECT_EQ(Contents(*c), contents);
    ExpectSame(Searches(*c, queries_, strict), before, "after Compact(true)");
    EXPECT_EQ(SegmentFiles(CollectionDir(name)), 2u) << "old segment files are removed";
    if (!strict) {
      double recall = 0;
      for (size_t q = 0; q < queries_.size() / kDim; ++q) {
        auto hits = c->Search(Row(queries_, q, kDim), {.k = kK});
        ASSERT_TRUE(hits.ok());
        recall += RecallOf(*hits, BruteForce(Metric::kL2, x_, kDim, &queries_[q * kDim], kK,
                                             [](size_t i) { return i % 10 != 0; }));
      }
      EXPECT_GE(recall / (queries_.size() / kDim), 0.9);
    }

    // Over the ratio, Compact(false) rewrites too.
    doomed.clear();
    for (size_t i = 1; i < 3000; i += 3) doomed.emplace_back(uint64_t{i});
    ASSERT_TRUE(c->Delete(doomed).ok());
    ASSERT_GT(c->Info()->deleted_in_segments, 0u);
    ASSERT_TRUE(c->Compact(false).ok());
    EXPECT_EQ(c->Info()->deleted_in_segments, 0u);
    // Deleting everything then compacting leaves no sealed segments.
    std::vector<PointId> rest;
    for (size_t i = 0; i < 3000; ++i) rest.emplace_back(uint64_t{i});
    for (size_t s = 0; s < rest.size(); s += 1000) {
      ASSERT_TRUE(c->Delete(std::vector<PointId>(rest.begin() + s, rest.begin() + s + 1000)).ok());
    }
    ASSERT_TRUE(c->Compact(true).ok());
    info = c->Info();
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->points, 0u);
    EXPECT_EQ(info->sealed_segments, 0u);
    EXPECT_EQ(SegmentFiles(CollectionDir(name)), 0u);
  }
  // Compaction survives a reopen.
  auto c = Get("flat");
  ASSERT_TRUE(c->Upsert({Pt(1, Row(x_, 1, kDim))}).ok());
  c.reset();
  OpenDb();
  c = Get("flat");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(CountOf(*c), 1u);
  EXPECT_EQ(c->Info()->sealed_segments, 0u);
}

TEST_F(MaintenanceTest, CompactedCollectionReopensWithSameResults) {
  OpenDb();
  auto c = CreateAndFill("c", IndexType::kHnsw, 1, 0, 3000);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Seal().ok());
  std::vector<PointId> doomed;
  for (size_t i = 0; i < 3000; i += 4) doomed.emplace_back(uint64_t{i});
  ASSERT_TRUE(c->Delete(doomed).ok());
  ASSERT_TRUE(c->Compact(true).ok());
  const auto contents = Contents(*c);
  const auto results = Searches(*c, queries_);  // the compacted graph is saved as is
  c.reset();
  OpenDb();
  c = Get("c");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->Info()->deleted_in_segments, 0u);
  EXPECT_EQ(c->Info()->sealed_segments, 1u);
  EXPECT_EQ(Contents(*c), contents);
  ExpectSame(Searches(*c, queries_), results, "after reopen");
}

TEST_F(MaintenanceTest, ExplicitMaintenanceAlongsideTheBackgroundThread) {
  // With the background thread on, an upsert past seal_threshold wakes it;
  // an explicit Seal at the same time must serialize with it, and closing
  // the database must stop it. Nothing here waits on timing: the assertions
  // hold whichever seal runs first.
  DatabaseOptions options = TestOptions();
  options.background_maintenance = true;
  OpenDb(options);
  CollectionConfig config = Config(kDim, Metric::kL2, IndexType::kHnsw, 2);
  config.seal_threshold = 1000;
  config.payload_indexes = {{"g", PayloadType::kInteger}};
  auto c = Create("c", config);
  ASSERT_NE(c, nullptr);
  Fill(*c, 0, 3000);
  const auto contents = Contents(*c);
  ASSERT_TRUE(c->Seal().ok());
  auto info = c->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_GE(info->sealed_segments, 2u);
  EXPECT_EQ(info->points, 3000u);
  EXPECT_EQ(Contents(*c), contents);
  const auto exact = Searches(*c, queries_, /*with_index=*/false);
  c.reset();
  OpenDb(options);
  c = Get("c");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(Contents(*c), contents);
  ExpectSame(Searches(*c, queries_, false), exact, "after reopen");
}

// Lowering seal_threshold below the growing segment's size seals it soon,
// without waiting for a write or the background thread's 30 s period.
TEST_F(MaintenanceTest, LoweringTheSealThresholdSealsWithoutAWrite) {
  DatabaseOptions options = TestOptions();
  options.background_maintenance = true;
  OpenDb(options);
  CollectionConfig config = Config(kDim, Metric::kL2, IndexType::kHnsw);
  config.seal_threshold = 5000;
  auto c = Create("c", config);
  ASSERT_NE(c, nullptr);
  Fill(*c, 0, 1500);
  ASSERT_EQ(c->Info()->sealed_segments, 0u);
  CollectionConfig lower = c->Info()->config;
  lower.seal_threshold = 1000;
  ASSERT_TRUE(c->UpdateConfig(lower).ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (c->Info()->sealed_segments == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(c->Info()->sealed_segments, 1u);
  EXPECT_EQ(c->Info()->points, 1500u);
}

// One writer upserts points 0, 1, 2, ... one at a time, spread over 4
// shards, while a snapshot is taken. A snapshot of one moment holds a prefix
// of that sequence; shard-by-shard copies at different moments would leave
// holes (a later point on one shard without an earlier one on another).
TEST_F(MaintenanceTest, RestoreCollectionFromSnapshotKeepsTheSnapshotIntact) {
  OpenDb();
  auto c = CreateAndFill("c", IndexType::kHnsw, 2, 0, 1500);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->Seal().ok());
  Fill(*c, 1500, 1700);
  const auto contents = Contents(*c);
  const auto results = Searches(*c, queries_);
  const std::string snap = root_ + "/snap";
  ASSERT_TRUE(db_->Snapshot("c", snap).ok());

  auto restored = db_->RestoreCollection(snap, "copy");
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(Contents(**restored), contents);
  ExpectSame(Searches(**restored, queries_, /*with_index=*/false), ExactOnly(results), "restored exact");
  EXPECT_EQ(db_->RestoreCollection(snap, "copy").status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(db_->RestoreCollection(snap, "../x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(db_->RestoreCollection(root_ + "/nothing-here", "y").status().code(),
            absl::StatusCode::kInvalidArgument);

  // Writes to the restored copy reach neither the original nor the snapshot.
  ASSERT_TRUE((*restored)->Delete({PointId(1), PointId(2), PointId(1600)}).ok());
  ASSERT_TRUE((*restored)->Compact(true).ok());
  EXPECT_EQ(CountOf(**restored), 1697u);
  EXPECT_EQ(CountOf(*c), 1700u);
  CloseDb();
  OpenDb();
  EXPECT_EQ(CountOf(*Get("copy")), 1697u);
  EXPECT_EQ(CountOf(*Get("c")), 1700u);
  auto snap_db = Database::Open(snap, TestOptions());
  ASSERT_TRUE(snap_db.ok()) << snap_db.status();
  auto s = (*snap_db)->GetCollection("c");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(Contents(**s), contents);
}

TEST_F(MaintenanceTest, SnapshotIsOneMomentAcrossShards) {
  OpenDb();
  auto config = Config(4, Metric::kL2, IndexType::kFlat, 4);
  auto c = Create("c", config);
  ASSERT_TRUE(c);
  std::atomic<int> written{0};
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 0; !stop.load() && i < 100000; ++i) {
      float f = static_cast<float>(i);
      ASSERT_TRUE(c->Upsert({Pt(uint64_t(i), {f, f, f, f})}).ok());
      written = i + 1;
    }
  });
  while (written.load() < 200) std::this_thread::yield();
  const std::string snap = root_ + "/snap";
  ASSERT_TRUE(db_->Snapshot("c", snap).ok());
  const int after = written.load();
  stop = true;
  writer.join();

  auto snap_db = Database::Open(snap, TestOptions());
  ASSERT_TRUE(snap_db.ok()) << snap_db.status();
  auto s = (*snap_db)->GetCollection("c");
  ASSERT_TRUE(s.ok());
  auto n = (*s)->Count();
  ASSERT_TRUE(n.ok());
  ASSERT_GE(*n, 200u);
  ASSERT_LE(*n, static_cast<uint64_t>(after) + 1);
  std::vector<PointId> ids;
  for (uint64_t i = 0; i < *n; ++i) ids.push_back(i);
  auto got = (*s)->Get(ids, false, false);
  ASSERT_TRUE(got.ok());
  for (uint64_t i = 0; i < *n; ++i) {
    ASSERT_TRUE((*got)[i].has_value()) << "point " << i << " missing from a snapshot of " << *n
                                       << " points: not one moment";
  }
}

TEST_F(MaintenanceTest, SnapshotOpensElsewhereWithSamePointsAndIsolation) {
  OpenDb();
  auto c = CreateAndFill("c", IndexType::kHnsw, 2, 0, 2000);
  auto other = CreateAndFill("other", IndexType::kFlat, 1, 0, 10);
  ASSERT_TRUE(c && other);
  ASSERT_TRUE(c->Seal().ok());
  Fill(*c, 2000, 2500);  // growing segment too
  ASSERT_TRUE(c->Delete({PointId(1), PointId(2001)}).ok());
  ASSERT_TRUE(c->SetPayload({PointId(3)}, R"({"g": 7, "note": "before"})").ok());
  const auto contents = Contents(*c);
  const auto results = Searches(*c, queries_);
  const std::string snap = root_ + "/snap";
  ASSERT_TRUE(db_->Snapshot("c", snap).ok());

  // Later writes to the source do not reach the snapshot.
  Fill(*c, 2500, 3000);
  ASSERT_TRUE(c->Delete({PointId(5), PointId(2100)}).ok());
  ASSERT_TRUE(c->SetPayload({PointId(3)}, R"({"note": "after"})").ok());
  ASSERT_TRUE(c->Seal().ok());
  ASSERT_TRUE(c->Compact(true).ok());
  EXPECT_EQ(CountOf(*c), 2996u);

  auto snap_db = Database::Open(snap, TestOptions());
  ASSERT_TRUE(snap_db.ok()) << snap_db.status();
  EXPECT_EQ((*snap_db)->ListCollections(), (std::vector<std::string>{"c"}));
  auto s = (*snap_db)->GetCollection("c");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->config().num_shards, 2u);
  ASSERT_EQ((*s)->config().payload_indexes.size(), 1u);
  auto info = (*s)->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->points, 2498u);
  EXPECT_EQ(info->sealed_segments, 2u);
  EXPECT_EQ(Contents(**s), contents);
  ExpectSame(Searches(**s, queries_, /*with_index=*/false), ExactOnly(results), "snapshot exact");
  // The snapshot is a data directory of its own: it takes writes, and they
  // stay there.
  ASSERT_TRUE((*s)->Upsert({Pt("snap-only", Row(x_, 0, kDim))}).ok());
  EXPECT_EQ(CountOf(**s), 2499u);
  auto in_source = c->Get({PointId("snap-only")});
  ASSERT_TRUE(in_source.ok());
  EXPECT_FALSE((*in_source)[0].has_value());
  s->reset();
  snap_db->reset();

  // A snapshot may not overwrite anything; a missing collection is NotFound.
  const auto snap_files = [&] {
    std::vector<std::string> v;
    for (const auto& e : fs::recursive_directory_iterator(snap)) v.push_back(e.path().string());
    std::sort(v.begin(), v.end());
    return v;
  };
  const auto files_before = snap_files();
  EXPECT_EQ(db_->Snapshot("c", snap).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(snap_files(), files_before);
  fs::create_directories(root_ + "/empty-dir");
  EXPECT_EQ(db_->Snapshot("c", root_ + "/empty-dir").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(db_->Snapshot("missing", root_ + "/snap2").code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(root_ + "/snap2"));
  // A trailing slash names the same directory (it once made the temp
  // directory "snap3/.tmp", inside the target, and the rename failed).
  ASSERT_TRUE(db_->Snapshot("c", root_ + "/snap3/").ok());
  EXPECT_FALSE(fs::exists(root_ + "/snap3.tmp"));
  EXPECT_FALSE(fs::exists(root_ + "/snap3/.tmp"));
  {
    auto db3 = Database::Open(root_ + "/snap3", TestOptions());
    ASSERT_TRUE(db3.ok()) << db3.status();
    auto c3 = (*db3)->GetCollection("c");
    ASSERT_TRUE(c3.ok());
    EXPECT_EQ(CountOf(**c3), 2996u);
  }
  // The source is untouched by all this.
  EXPECT_EQ(CountOf(*c), 2996u);
}

}  // namespace
}  // namespace cairn
