// The shard's tail (db/shard.h): writes are searchable when acknowledged,
// before the background indexer has put them in the growing segment; the
// tail's size is bounded; deletes, overwrites, seals, checkpoints and
// crashes see every point exactly once whichever side of the tail it is on.
// And IVF collections' growing segments: flat until trained in the
// background, compact after, with writes going on during the training.
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "db/key_codec.h"
#include "db/shard.h"
#include "db/shard_test_util.h"
#include "index/segment.h"
#include "gtest/gtest.h"

namespace cairn::db {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kDim = 8;

std::vector<float> VectorOf(uint64_t id, int version) { return SeededVector(id, version, kDim); }

class TailTest : public ShardDirTest {
 protected:
  // HNSW with no indexer thread: the tail holds what the test wrote until
  // the test (or a full tail) indexes it.
  static ShardOptions Paused() {
    ShardOptions o;
    o.dimension = kDim;
    o.index.type = IndexType::kHnsw;
    o.index.hnsw_m = 8;
    o.index.ef_construction = 40;
    o.seal_threshold = 1u << 30;
    o.checkpoint_points = 0;
    o.index_threads = 2;
    o.index_in_background = false;
    o.payload_indexes = {{"even", PayloadType::kBool}};
    return o;
  }

  void Upsert(uint64_t from, uint64_t to, int version) { ShardDirTest::Upsert(from, to, version, kDim); }

  void Delete(std::vector<uint64_t> ids) {
    std::vector<std::string> keys;
    for (uint64_t i : ids) keys.push_back(ExternalKey(PointId(i)));
    ASSERT_TRUE(shard_->Delete(keys).ok());
  }

  std::vector<ScoredPoint> Search(const std::vector<float>& q, int k, const Filter* filter = nullptr) const {
    SearchParams p;
    p.k = k;
    p.ef = std::max(200, k);
    p.nprobe = 64;  // every list of the IVF tests' indexes
    p.with_payload = false;
    p.filter = filter;
    std::vector<std::vector<ScoredPoint>> out;
    EXPECT_TRUE(shard_->Search(q.data(), 1, p, &out).ok());
    return out.empty() ? std::vector<ScoredPoint>{} : out[0];
  }

  // Every point the shard's search finds, with a candidate list as large as
  // the shard: what its segments and tail hold and have not tombstoned.
  // `dim`: the shard's dimension.
  std::multiset<uint64_t> FoundIds(uint32_t dim = kDim) const {
    const int n = static_cast<int>(shard_->Stats().points) + 10;
    std::multiset<uint64_t> ids;
    for (const auto& h : Search(SeededVector(0, 0, dim), n)) ids.insert(h.id.number());
    return ids;
  }

  // Each id in [from, to) is its own nearest point at distance 0 (version v).
  void ExpectFoundExactly(uint64_t from, uint64_t to, int version) const {
    for (uint64_t i = from; i < to; ++i) {
      auto hits = Search(VectorOf(i, version), 1);
      ASSERT_EQ(hits.size(), 1u) << i;
      EXPECT_EQ(hits[0].id.number(), i);
      EXPECT_EQ(hits[0].score, 0.0f) << i;
    }
  }

};

TEST_F(TailTest, UnindexedWritesAreSearchedExactlyAndThenIndexed) {
  Open(Paused());
  Upsert(0, 1000, 0);
  ShardStats st = shard_->Stats();
  EXPECT_EQ(st.points, 1000u);
  EXPECT_EQ(st.tail_points, 1000u);  // nothing indexed them yet
  EXPECT_EQ(st.growing_points, 1000u);
  ExpectFoundExactly(0, 1000, 0);
  // Filters see the tail too.
  Filter even;
  even.must.push_back(Condition::Match("even", FieldValue(true)));
  for (const auto& h : Search(VectorOf(7, 0), 20, &even)) EXPECT_EQ(h.id.number() % 2, 0u);
  EXPECT_EQ(Search(VectorOf(8, 0), 1, &even).at(0).id.number(), 8u);

  // Deletes and overwrites of points in the tail.
  Delete({3, 4, 5});
  Upsert(10, 20, 1);
  std::multiset<uint64_t> found = FoundIds();
  EXPECT_EQ(found.size(), 997u);
  EXPECT_EQ(found.count(3) + found.count(4) + found.count(5), 0u);
  EXPECT_EQ(found.count(10), 1u);
  ExpectFoundExactly(10, 20, 1);

  ASSERT_TRUE(shard_->IndexTail().ok());
  st = shard_->Stats();
  EXPECT_EQ(st.tail_points, 0u);
  EXPECT_EQ(st.points, 997u);
  found = FoundIds();
  EXPECT_EQ(found.size(), 997u);
  EXPECT_EQ(std::set<uint64_t>(found.begin(), found.end()).size(), 997u);  // each once
  EXPECT_EQ(found.count(4), 0u);
  ExpectFoundExactly(10, 20, 1);
  ExpectFoundExactly(100, 200, 0);
}

TEST_F(TailTest, AFullTailIsIndexedBeforeMoreIsTaken) {
  ShardOptions o = Paused();
  o.tail_floats = uint64_t{kDim} * 4096;  // 4,096 points
  Open(o);
  for (int b = 0; b < 12; ++b) {
    Upsert(static_cast<uint64_t>(b) * 1000, static_cast<uint64_t>(b + 1) * 1000, 0);
    // At most the limit (less one point) and one write.
    EXPECT_LE(shard_->Stats().tail_points, 4096u + 1000u - 1u) << b;
  }
  const ShardStats st = shard_->Stats();
  EXPECT_EQ(st.points, 12000u);
  EXPECT_GT(st.growing_points - st.tail_points, 0u);  // some were indexed
  ExpectFoundExactly(0, 12000, 0);
}

TEST_F(TailTest, ACrashLosesNoPointOfTheTail) {
  Open(Paused());
  Upsert(0, 500, 0);
  Delete({7});
  ASSERT_EQ(shard_->Stats().tail_points, 500u);
  Open(Paused());  // no close step: the tail is rebuilt from storage
  EXPECT_EQ(shard_->Stats().points, 499u);
  EXPECT_EQ(shard_->Stats().tail_points, 0u);  // open indexes what it replays
  EXPECT_EQ(FoundIds().size(), 499u);
  ExpectFoundExactly(100, 200, 0);
}

TEST_F(TailTest, SealAndCheckpointIndexTheTailFirst) {
  ShardOptions o = Paused();
  o.checkpoint_points = 100;
  Open(o);
  Upsert(0, 300, 0);
  ASSERT_TRUE(shard_->NeedsCheckpoint());
  ASSERT_TRUE(shard_->CheckpointGrowing(/*at_close=*/false).ok());
  EXPECT_EQ(shard_->Stats().growing_saved_points, 300u);
  EXPECT_EQ(shard_->Stats().tail_points, 0u);
  Upsert(300, 700, 0);
  ASSERT_TRUE(shard_->Seal(/*force=*/true).ok());
  const ShardStats st = shard_->Stats();
  EXPECT_EQ(st.sealed_segments, 1u);
  EXPECT_EQ(st.growing_points, 0u);
  EXPECT_EQ(st.tail_points, 0u);
  Open(o);
  EXPECT_EQ(shard_->Stats().points, 700u);
  ExpectFoundExactly(0, 700, 0);
}

// With the indexer thread: writers, overwriters and deleters against
// searchers. No search returns an id twice; at the end the shard finds
// exactly the live points, each at its last version.
TEST_F(TailTest, BackgroundIndexingUnderConcurrentWritesAndSearches) {
  ShardOptions o = Paused();
  o.index_in_background = true;
  o.tail_floats = uint64_t{kDim} * 4096;
  Open(o);
  constexpr uint64_t kPoints = 20000;
  std::atomic<bool> done{false};
  std::atomic<int> duplicates{0}, searches{0};
  std::thread searcher([&] {
    std::mt19937_64 rng(7);
    while (!done.load()) {
      auto hits = Search(VectorOf(rng() % kPoints, 0), 50);
      std::set<uint64_t> ids;
      for (const auto& h : hits) duplicates += !ids.insert(h.id.number()).second;
      ++searches;
    }
  });
  std::set<uint64_t> deleted;
  std::vector<int> version(kPoints, 0);
  std::mt19937_64 rng(11);
  for (uint64_t b = 0; b < kPoints / 500; ++b) {
    Upsert(b * 500, (b + 1) * 500, 0);
    if (b > 0) {
      const uint64_t o1 = rng() % (b * 500);
      Upsert(o1, o1 + 1, 1);  // an overwrite, likely of a point in the tail or being indexed
      version[o1] = 1;
      deleted.erase(o1);
      const uint64_t d = rng() % (b * 500);
      Delete({d});
      deleted.insert(d);
    }
  }
  done = true;
  searcher.join();
  EXPECT_EQ(duplicates.load(), 0) << "of " << searches.load() << " searches";
  ASSERT_TRUE(shard_->IndexTail().ok());
  EXPECT_EQ(shard_->Stats().tail_points, 0u);
  EXPECT_EQ(shard_->Stats().points, kPoints - deleted.size());
  std::multiset<uint64_t> found = FoundIds();
  EXPECT_EQ(found.size(), kPoints - deleted.size());
  for (uint64_t d : deleted) EXPECT_EQ(found.count(d), 0u) << d;
  for (uint64_t i = 0; i < kPoints; i += 97) {
    if (deleted.count(i)) continue;
    auto hits = Search(VectorOf(i, version[i]), 1);
    ASSERT_FALSE(hits.empty());
    EXPECT_EQ(hits[0].id.number(), i);
    EXPECT_EQ(hits[0].score, 0.0f);
  }
}

// Flat collections and tail_floats = 0 index each write at once.
TEST_F(TailTest, NoTailForFlatOrWhenTurnedOff) {
  for (bool flat : {true, false}) {
    SCOPED_TRACE(flat ? "flat" : "tail_floats 0");
    ShardOptions o = Paused();
    if (flat) {
      o.index.type = IndexType::kFlat;
    } else {
      o.tail_floats = 0;
    }
    Open(o);
    Upsert(0, 300, 0);
    EXPECT_EQ(shard_->Stats().tail_points, 0u);
    EXPECT_EQ(shard_->Stats().growing_points, 300u);
    ExpectFoundExactly(0, 300, 0);
    shard_.reset();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
}

// An IVF-PQ collection's growing segment: flat (exact) until it holds the
// points to train on, then trained by the indexer into IVF-PQ codes, which
// hold a fraction of the floats' memory; every point is found throughout.
TEST_F(TailTest, IvfGrowingSegmentIsTrainedAndThenCompact) {
  ShardOptions o = Paused();
  o.dimension = 16;
  o.index.type = IndexType::kIvfPq;
  o.index.nlist = 16;
  o.index.pq_m = 4;
  o.index.rerank_factor = 4;
  Open(o);
  const size_t train = index::Segment::GrowingTrainPoints(o.index);
  ASSERT_GT(train, 0u);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> g;
  std::vector<std::vector<float>> vecs;
  auto upsert = [&](uint64_t from, uint64_t to) {
    std::vector<PreparedPoint> b;
    for (uint64_t i = from; i < to; ++i) {
      PreparedPoint p;
      p.id = PointId(i);
      p.ext_key = ExternalKey(p.id);
      p.vector.resize(16);
      for (auto& f : p.vector) f = g(rng);
      vecs.push_back(p.vector);
      p.payload = Json{{"even", i % 2 == 0}};
      p.payload_json = p.payload.dump();
      b.push_back(std::move(p));
    }
    ASSERT_TRUE(shard_->Upsert(std::move(b)).ok());
  };
  for (uint64_t at = 0; at < train + 1000; at += 1000) upsert(at, at + 1000);
  const uint64_t n = vecs.size();
  const ShardStats flat = shard_->Stats();
  EXPECT_EQ(flat.tail_points, 0u);  // straight into the flat segment
  EXPECT_EQ(flat.unindexed_points, n);
  EXPECT_EQ(flat.growing_points, n);
  ASSERT_TRUE(shard_->IndexTail().ok());  // trains it
  upsert(n, n + 2000);                     // into the tail, then the trained index
  ASSERT_TRUE(shard_->IndexTail().ok());
  const ShardStats trained = shard_->Stats();
  EXPECT_EQ(trained.points, n + 2000);
  EXPECT_EQ(trained.tail_points, 0u);
  EXPECT_EQ(trained.unindexed_points, 0u);
  // 4 code bytes and 16 bytes of ids per point against 64 bytes of floats.
  EXPECT_LT(trained.index_memory_bytes, flat.index_memory_bytes / 2)
      << "flat " << flat.index_memory_bytes << ", trained " << trained.index_memory_bytes;
  for (uint64_t i = 0; i < n + 2000; i += 101) {
    auto hits = Search(vecs[i], 1);  // re-ranked from storage: exact scores
    ASSERT_EQ(hits.size(), 1u);
    EXPECT_EQ(hits[0].id.number(), i);
    EXPECT_NEAR(hits[0].score, 0.0f, 1e-3f);
  }
  Delete({5});
  EXPECT_EQ(FoundIds(o.dimension).count(5), 0u);
  // Its saved copy is loaded after a crash, trained as it was.
  o.checkpoint_points = 1000;
  Open(o);  // a crash: replayed flat, trained again
  ASSERT_TRUE(shard_->IndexTail().ok());
  ASSERT_TRUE(shard_->NeedsCheckpoint());
  ASSERT_TRUE(shard_->CheckpointGrowing(/*at_close=*/false).ok());
  EXPECT_EQ(shard_->Stats().growing_saved_points, n + 1999);  // trained from the live points
  Open(o);
  EXPECT_EQ(shard_->Stats().growing_saved_points, n + 1999);  // trained from the live points
  EXPECT_LT(shard_->Stats().index_memory_bytes, flat.index_memory_bytes / 2);
  EXPECT_EQ(FoundIds(o.dimension).count(5), 0u);
  EXPECT_EQ(Search(vecs[1234], 1).at(0).id.number(), 1234u);
  // Sealing it is a write of what it is; reopening loads that.
  ASSERT_TRUE(shard_->Seal(/*force=*/true).ok());
  Open(o);
  EXPECT_EQ(shard_->Stats().points, n + 1999);
  EXPECT_EQ(shard_->Stats().sealed_segments, 1u);
  EXPECT_EQ(Search(vecs[777], 1).at(0).id.number(), 777u);
}

// The indexer trains an IVF-SQ8 growing segment while writers go on
// upserting, overwriting and deleting: no write is lost or seen twice.
TEST_F(TailTest, IvfTrainingInTheBackgroundLosesNoConcurrentWrite) {
  ShardOptions o = Paused();
  o.index_in_background = true;
  o.index.type = IndexType::kIvfSq8;
  o.index.nlist = 16;
  o.tail_floats = uint64_t{kDim} * 4096;
  Open(o);
  const uint64_t points = index::Segment::GrowingTrainPoints(o.index) * 3;
  std::set<uint64_t> deleted;
  std::vector<int> version(points, 0);
  std::mt19937_64 rng(5);
  for (uint64_t b = 0; b < points / 500; ++b) {
    Upsert(b * 500, (b + 1) * 500, 0);
    if (b > 0) {
      const uint64_t o1 = rng() % (b * 500);
      Upsert(o1, o1 + 1, 1);
      version[o1] = 1;
      deleted.erase(o1);
      const uint64_t d = rng() % (b * 500);
      Delete({d});
      deleted.insert(d);
    }
  }
  ASSERT_TRUE(shard_->IndexTail().ok());
  const ShardStats st = shard_->Stats();
  EXPECT_EQ(st.tail_points, 0u);
  EXPECT_EQ(st.points, points - deleted.size());
  // Trained: 8 code bytes and 16 of ids a point, where flat holds 32 bytes
  // of floats and 8 of ids.
  EXPECT_LT(st.index_memory_bytes, points * 36) << "not trained?";
  std::multiset<uint64_t> found = FoundIds();
  EXPECT_EQ(found.size(), points - deleted.size());
  EXPECT_EQ(std::set<uint64_t>(found.begin(), found.end()).size(), found.size());
  for (uint64_t d : deleted) EXPECT_EQ(found.count(d), 0u) << d;
  for (uint64_t i = 0; i < points; i += 97) {
    if (deleted.count(i)) continue;
    auto hits = Search(VectorOf(i, version[i]), 1);
    ASSERT_FALSE(hits.empty());
    EXPECT_EQ(hits[0].id.number(), i);
  }
}

}  // namespace
}  // namespace cairn::db
