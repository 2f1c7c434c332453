// The saved copy of a shard's growing segment (Shard::CheckpointGrowing): a
// shard destroyed without a close step is what a crash leaves, and the next
// open must load the copy, replay only the writes after it (upserts,
// overwrites and deletes alike), and rebuild from storage when the copy is
// damaged or gone.
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "db/key_codec.h"
#include "db/shard.h"
#include "db/shard_test_util.h"
#include "gtest/gtest.h"

namespace cairn::db {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kDim = 8;

std::vector<float> VectorOf(uint64_t id, int version) { return SeededVector(id, version, kDim); }

class ShardCheckpointTest : public ShardDirTest {
 protected:
  static ShardOptions Options(IndexType type) {
    ShardOptions o;
    o.dimension = kDim;
    o.index.type = type;
    o.index.hnsw_m = 8;
    o.index.ef_construction = 40;
    o.index.nlist = 4;
    o.seal_threshold = 1u << 30;
    o.checkpoint_points = 100;
    o.index_threads = 2;
    return o;
  }

  void Upsert(uint64_t from, uint64_t to, int version) { ShardDirTest::Upsert(from, to, version, kDim); }

  std::vector<std::string> Files(const std::string& prefix) const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(fs::path(dir_) / "segments")) {
      const std::string name = e.path().filename().string();
      if (name.rfind(prefix, 0) == 0) out.push_back(name);
    }
    return out;
  }

  // The ids the index search finds with a candidate list as large as the
  // shard: every point its segments hold and have not tombstoned.
  std::set<uint64_t> IndexedIds() const {
    const uint64_t n = shard_->Stats().points;
    SearchParams p;
    p.k = static_cast<int>(n);
    p.ef = static_cast<int>(n);
    p.with_payload = false;
    std::vector<std::vector<ScoredPoint>> out;
    const std::vector<float> q = VectorOf(0, 0);
    EXPECT_TRUE(shard_->Search(q.data(), 1, p, &out).ok());
    std::set<uint64_t> ids;
    for (const auto& h : out.at(0)) ids.insert(h.id.number());
    return ids;
  }

  // The vector stored for `id`, empty when absent.
  std::vector<float> StoredVector(uint64_t id) const {
    std::vector<std::optional<Record>> out;
    EXPECT_TRUE(shard_->Get({ExternalKey(PointId(id))}, false, true, &out).ok());
    return out.at(0) ? out[0]->vector : std::vector<float>{};
  }

  // The id and score of the nearest point to `q` by the index.
  std::pair<uint64_t, float> Nearest(const std::vector<float>& q) const {
    SearchParams p;
    p.k = 1;
    p.ef = 200;
    std::vector<std::vector<ScoredPoint>> out;
    EXPECT_TRUE(shard_->Search(q.data(), 1, p, &out).ok());
    if (out.empty() || out[0].empty()) return {~0ull, -1};
    return {out[0][0].id.number(), out[0][0].score};
  }

};

// After a crash, the copy is loaded and the writes after it are replayed on
// top: new points, overwrites of saved ones, deletes of saved ones. For an
// HNSW-SQ collection too, whose growing segment is also an HNSW graph (an IVF
// collection's trained one: db/tail_test.cc).
TEST_F(ShardCheckpointTest, CrashAfterCheckpointLoadsTheCopyAndReplaysLaterWrites) {
  for (IndexType type : {IndexType::kHnsw, IndexType::kHnswSq}) {
    SCOPED_TRACE(std::string(IndexTypeName(type)));
    fs::remove_all(dir_);
    Open(Options(type));
    Upsert(0, 300, 0);
    EXPECT_TRUE(shard_->NeedsCheckpoint());
    ASSERT_TRUE(shard_->CheckpointGrowing(/*at_close=*/false).ok());
    EXPECT_EQ(shard_->Stats().growing_saved_points, 300u);
    EXPECT_FALSE(shard_->NeedsCheckpoint());
    ASSERT_EQ(Files("grow-").size(), 1u);

    std::vector<std::string> gone;
    for (uint64_t i = 10; i < 20; ++i) gone.push_back(ExternalKey(PointId(i)));
    ASSERT_EQ(*shard_->Delete(gone), 10u);
    Upsert(20, 30, 1);    // overwrites of saved points
    Upsert(300, 400, 0);  // new points

    Open(Options(type));
    const ShardStats st = shard_->Stats();
    EXPECT_EQ(st.growing_saved_points, 300u);
    EXPECT_EQ(st.points, 390u);
    EXPECT_EQ(st.growing_points, 410u);  // 300 loaded (20 of them tombstoned) + 110 replayed
    std::set<uint64_t> want;
    for (uint64_t i = 0; i < 400; ++i) {
      if (i < 10 || i >= 20) want.insert(i);
    }
    EXPECT_EQ(IndexedIds(), want);
    EXPECT_EQ(StoredVector(25), VectorOf(25, 1));
    EXPECT_TRUE(StoredVector(15).empty());
    EXPECT_EQ(Nearest(VectorOf(25, 1)), std::make_pair(uint64_t{25}, 0.0f));
    EXPECT_EQ(Nearest(VectorOf(350, 0)), std::make_pair(uint64_t{350}, 0.0f));

    // Writes go on after the loaded copy, and the next copy covers them.
    Upsert(400, 600, 0);
    ASSERT_TRUE(shard_->CheckpointGrowing(/*at_close=*/false).ok());
    EXPECT_EQ(shard_->Stats().growing_saved_points, 610u);
    Open(Options(type));
    EXPECT_EQ(shard_->Stats().points, 590u);
    EXPECT_EQ(shard_->Stats().growing_saved_points, 610u);
    EXPECT_EQ(Nearest(VectorOf(599, 0)), std::make_pair(uint64_t{599}, 0.0f));
  }
}

// A new copy waits for checkpoint_points more points and half again what the
// last one held, then replaces it (one file). At close, checkpoint_points (or
// 1,000) new points are enough.
TEST_F(ShardCheckpointTest, CopiesAreSpacedOutAndReplaceEachOther) {
  Open(Options(IndexType::kHnsw));
  Upsert(0, 99, 0);
  EXPECT_FALSE(shard_->NeedsCheckpoint());
  ASSERT_TRUE(shard_->CheckpointGrowing(false).ok());
  EXPECT_TRUE(Files("grow-").empty());
  Upsert(99, 300, 0);
  ASSERT_TRUE(shard_->CheckpointGrowing(false).ok());
  const std::vector<std::string> first = Files("grow-");
  ASSERT_EQ(first.size(), 1u);
  Upsert(300, 449, 0);  // 149 more: under half of 300
  EXPECT_FALSE(shard_->NeedsCheckpoint());
  Upsert(449, 450, 0);
  EXPECT_TRUE(shard_->NeedsCheckpoint());
  ASSERT_TRUE(shard_->CheckpointGrowing(false).ok());
  const std::vector<std::string> second = Files("grow-");
  ASSERT_EQ(second.size(), 1u);
  EXPECT_NE(second, first);
  EXPECT_EQ(shard_->Stats().growing_saved_points, 450u);

  Upsert(450, 549, 0);
  ASSERT_TRUE(shard_->CheckpointGrowing(/*at_close=*/true).ok());
  EXPECT_EQ(shard_->Stats().growing_saved_points, 450u);
  Upsert(549, 550, 0);
  ASSERT_TRUE(shard_->CheckpointGrowing(/*at_close=*/true).ok());
  EXPECT_EQ(shard_->Stats().growing_saved_points, 550u);
  Open(Options(IndexType::kHnsw));
  EXPECT_EQ(shard_->Stats().growing_saved_points, 550u);
  EXPECT_EQ(shard_->Stats().points, 550u);
}

TEST_F(ShardCheckpointTest, FlatSegmentsAndAZeroSettingAreNotSaved) {
  ShardOptions flat = Options(IndexType::kFlat);
  Open(flat);
  Upsert(0, 300, 0);
  EXPECT_FALSE(shard_->NeedsCheckpoint());
  ASSERT_TRUE(shard_->CheckpointGrowing(true).ok());
  EXPECT_TRUE(Files("grow-").empty());

  fs::remove_all(dir_);
  ShardOptions off = Options(IndexType::kHnsw);
  off.checkpoint_points = 0;
  Open(off);
  Upsert(0, 300, 0);
  EXPECT_FALSE(shard_->NeedsCheckpoint());
  ASSERT_TRUE(shard_->CheckpointGrowing(true).ok());
  EXPECT_TRUE(Files("grow-").empty());
}

// The copy is a cache of what storage holds: damaged or missing, the open
// rebuilds the growing segment from storage, and drops the bad file.
TEST_F(ShardCheckpointTest, DamagedOrMissingCopyIsRebuiltFromStorage) {
  for (const std::string damage : {"flip", "truncate", "remove"}) {
    SCOPED_TRACE(damage);
    fs::remove_all(dir_);
    Open(Options(IndexType::kHnsw));
    Upsert(0, 300, 0);
    ASSERT_TRUE(shard_->CheckpointGrowing(false).ok());
    Upsert(300, 350, 0);
    const fs::path file = fs::path(dir_) / "segments" / Files("grow-").at(0);
    shard_.reset();
    if (damage == "remove") {
      fs::remove(file);
    } else if (damage == "truncate") {
      fs::resize_file(file, fs::file_size(file) / 2);
    } else {
      std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(fs::file_size(file) / 2));
      char c = 0;
      f.read(&c, 1);
      f.seekp(static_cast<std::streamoff>(fs::file_size(file) / 2));
      c = static_cast<char>(c ^ 0x5a);
      f.write(&c, 1);
    }
    Open(Options(IndexType::kHnsw));
    EXPECT_EQ(shard_->Stats().growing_saved_points, 0u);
    EXPECT_EQ(shard_->Stats().points, 350u);
    EXPECT_EQ(IndexedIds().size(), 350u);
    EXPECT_TRUE(Files("grow-").empty());
    // The manifest no longer names it: the next open has nothing to say.
    testing::internal::CaptureStderr();
    Open(Options(IndexType::kHnsw));
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
    // And saving works again.
    ASSERT_TRUE(shard_->CheckpointGrowing(true).ok());
    Open(Options(IndexType::kHnsw));
    EXPECT_EQ(shard_->Stats().growing_saved_points, 350u);
  }
}

// A seal that fails after freezing the growing segment (here: its file
// cannot be created) leaves that segment frozen. No copy of the next growing
// segment may be saved meanwhile (open would skip the frozen ids), and the
// next seal finishes the frozen one first; every point stays indexed across
// crashes all along.
TEST_F(ShardCheckpointTest, FailedSealIsFinishedFirstAndBlocksCopies) {
  Open(Options(IndexType::kHnsw));
  Upsert(0, 300, 0);
  std::vector<fs::path> blockers;
  for (int i = 1; i <= 8; ++i) {
    blockers.push_back(fs::path(dir_) / "segments" / ("seg-0000000" + std::to_string(i) + ".cseg"));
    fs::create_directories(blockers.back() / "x");  // not empty: open leaves it
  }
  EXPECT_FALSE(shard_->Seal(/*force=*/true).ok());
  Upsert(300, 400, 0);
  EXPECT_FALSE(shard_->NeedsCheckpoint());
  ASSERT_TRUE(shard_->CheckpointGrowing(/*at_close=*/true).ok());
  EXPECT_TRUE(Files("grow-").empty());
  std::set<uint64_t> all;
  for (uint64_t i = 0; i < 400; ++i) all.insert(i);
  EXPECT_EQ(IndexedIds(), all);

  EXPECT_FALSE(shard_->Seal(/*force=*/true).ok());  // still blocked
  for (const auto& b : blockers) fs::remove_all(b);
  ASSERT_TRUE(shard_->Seal(/*force=*/true).ok());
  EXPECT_EQ(shard_->Stats().sealed_segments, 2u);  // the stuck one, then the growing one
  EXPECT_EQ(shard_->Stats().growing_points, 0u);
  Open(Options(IndexType::kHnsw));
  EXPECT_EQ(shard_->Stats().sealed_segments, 2u);
  EXPECT_EQ(IndexedIds(), all);
}

// Sealing the growing segment drops its copy, in the manifest and on disk.
TEST_F(ShardCheckpointTest, SealDropsTheCopy) {
  Open(Options(IndexType::kHnsw));
  Upsert(0, 300, 0);
  ASSERT_TRUE(shard_->CheckpointGrowing(false).ok());
  ASSERT_TRUE(shard_->Seal(/*force=*/true).ok());
  EXPECT_TRUE(Files("grow-").empty());
  EXPECT_EQ(shard_->Stats().growing_saved_points, 0u);
  Upsert(300, 320, 0);
  Open(Options(IndexType::kHnsw));
  const ShardStats st = shard_->Stats();
  EXPECT_EQ(st.sealed_segments, 1u);
  EXPECT_EQ(st.growing_points, 20u);
  EXPECT_EQ(st.growing_saved_points, 0u);
  EXPECT_EQ(IndexedIds().size(), 320u);
}

// A snapshot carries the copy along with the manifest that names it.
TEST_F(ShardCheckpointTest, SnapshotCarriesTheCopy) {
  Open(Options(IndexType::kHnsw));
  Upsert(0, 300, 0);
  ASSERT_TRUE(shard_->CheckpointGrowing(false).ok());
  Upsert(300, 310, 0);
  const std::string snap = dir_ + "-snapshot";
  ASSERT_TRUE(Shard::SnapshotAll({shard_.get()}, {snap}).ok());
  shard_.reset();
  auto s = Shard::Open(snap, Options(IndexType::kHnsw));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->Stats().growing_saved_points, 300u);
  EXPECT_EQ((*s)->Stats().points, 310u);
  s->reset();
  fs::remove_all(snap);
}

}  // namespace
}  // namespace cairn::db
