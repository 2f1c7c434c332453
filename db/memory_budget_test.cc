// The node's memory limit (DatabaseOptions::memory_limit_bytes): an upsert
// that would take the collections past it is refused with RESOURCE_EXHAUSTED
// and a message saying what holds the memory and what to do, and writes
// nothing; reads, searches and deletes go on; room made (a dropped
// collection) is seen at once.
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "db/memory_budget.h"
#include "db/test_util.h"
#include "gtest/gtest.h"

namespace cairn {
namespace {

using testing_util::Config;
using testing_util::DbTest;
using testing_util::Pt;
using testing_util::TestOptions;

constexpr uint32_t kDim = 1024;  // 4 KiB a point

std::vector<Point> Batch(uint64_t first, size_t n) {
  std::vector<Point> out;
  for (size_t i = 0; i < n; ++i) {
    std::vector<float> v(kDim, 0.0f);
    v[(first + i) % kDim] = 1.0f + static_cast<float>((first + i) / kDim);
    out.push_back(Pt(PointId(first + i), std::move(v)));
  }
  return out;
}

class MemoryLimitTest : public DbTest {};

TEST_F(MemoryLimitTest, WritesPastTheLimitAreRefusedAndChangeNothing) {
  DatabaseOptions o = TestOptions();
  o.memory_limit_bytes = 48ull << 20;
  OpenDb(o);
  auto docs = Create("docs", Config(kDim, Metric::kL2, IndexType::kFlat));
  auto other = Create("other", Config(kDim, Metric::kL2, IndexType::kFlat));
  ASSERT_TRUE(docs && other);
  absl::Status refused;
  uint64_t written = 0;
  for (int b = 0; b < 200 && refused.ok(); ++b) {  // 200 MiB at most
    refused = docs->Upsert(Batch(written, 256));
    if (refused.ok()) written += 256;
  }
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "memory limit is 48.0 MiB")) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "collection docs")) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "ivf_pq")) << refused;
  EXPECT_GT(written, 4096u);  // most of the limit was usable
  // Nothing of the refused batch was written; what is held is within the limit.
  auto info = docs->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->points, written);
  // (Admission adds estimates between measures, each a sixteenth of the
  // limit apart: the last ones may be off by part of that.)
  EXPECT_LE(info->index_memory_bytes + info->storage_memory_bytes, o.memory_limit_bytes / 16 * 17);
  // The limit is the node's: another collection is refused too (at once, or
  // after a batch or two when a memtable flush freed some memory meanwhile).
  absl::Status other_refused;
  for (uint64_t b = 0; b < 8 && other_refused.ok(); ++b) other_refused = other->Upsert(Batch(b * 256, 256));
  EXPECT_EQ(other_refused.code(), absl::StatusCode::kResourceExhausted) << other_refused;
  // Reads, searches and deletes go on.
  auto got = docs->Get({PointId(uint64_t{7})});
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE((*got)[0].has_value());
  std::vector<float> q(kDim, 0.0f);
  q[7] = 1.0f;
  auto hits = docs->Search(q, {.k = 1});
  ASSERT_TRUE(hits.ok()) << hits.status();
  EXPECT_EQ((*hits)[0].id, PointId(uint64_t{7}));
  auto deleted = docs->Delete({PointId(uint64_t{7})});
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(*deleted, 1u);
  // Dropping a collection makes room at once.
  ASSERT_TRUE(db_->DropCollection("docs").ok());
  EXPECT_TRUE(other->Upsert(Batch(0, 256)).ok());
}

TEST_F(MemoryLimitTest, NoLimitAdmitsEverything) {
  DatabaseOptions o = TestOptions();
  o.memory_limit_bytes = kNoMemoryLimit;
  OpenDb(o);
  auto docs = Create("docs", Config(kDim, Metric::kL2, IndexType::kFlat));
  for (uint64_t b = 0; b < 20; ++b) ASSERT_TRUE(docs->Upsert(Batch(b * 256, 256)).ok());
  EXPECT_EQ(docs->Info()->points, 20u * 256);
}

// n points of `dim` around a few centers, ids from `first`.
std::vector<Point> Clustered(uint64_t first, size_t n, uint32_t dim, uint64_t seed) {
  const std::vector<float> x = testing_util::Clustered(n, dim, seed);
  std::vector<Point> out;
  for (size_t i = 0; i < n; ++i) {
    out.push_back(Pt(PointId(first + i), std::vector<float>(x.begin() + i * dim, x.begin() + (i + 1) * dim)));
  }
  return out;
}

std::vector<std::vector<ScoredPoint>> SearchAll(Collection& c, const std::vector<Point>& queries) {
  std::vector<std::vector<ScoredPoint>> out;
  for (const Point& q : queries) {
    auto hits = c.Search(q.vector, {.k = 10, .ef = 24});
    EXPECT_TRUE(hits.ok()) << hits.status();
    out.push_back(hits.ok() ? *hits : std::vector<ScoredPoint>());
  }
  return out;
}

void ExpectSameHits(const std::vector<std::vector<ScoredPoint>>& a, const std::vector<std::vector<ScoredPoint>>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t q = 0; q < a.size(); ++q) {
    ASSERT_EQ(a[q].size(), b[q].size()) << "query " << q;
    for (size_t i = 0; i < a[q].size(); ++i) {
      EXPECT_EQ(a[q][i].id, b[q][i].id) << "query " << q << " rank " << i;
      EXPECT_EQ(a[q][i].score, b[q][i].score) << "query " << q << " rank " << i;
    }
  }
}

// A sealed HNSW segment (int8 walk) keeps its floats in its vector file; the
// node also keeps them in memory while its budget holds them
// (hnsw_vectors_memory_share): after a seal and on open, with the same
// answers either way.
TEST_F(MemoryLimitTest, HnswFloatsStayInMemoryWhileTheBudgetHoldsThem) {
  constexpr uint32_t kD = 64;
  constexpr size_t kN = 3000;
  constexpr uint64_t kFloatBytes = kN * kD * sizeof(float);
  DatabaseOptions o = TestOptions();
  o.memory_limit_bytes = 512ull << 20;
  ASSERT_EQ(o.hnsw_vectors_memory_share, 0.5);  // the default
  OpenDb(o);
  auto docs = Create("docs", Config(kD));
  ASSERT_NE(docs, nullptr);
  ASSERT_TRUE(docs->Upsert(Clustered(0, kN, kD, 5)).ok());
  ASSERT_TRUE(docs->Seal().ok());
  const std::vector<Point> queries = Clustered(100000, 20, kD, 6);
  const auto in_memory = SearchAll(*docs, queries);
  const uint64_t with_floats = docs->Info()->index_memory_bytes;

  docs.reset();
  o.hnsw_vectors_memory_share = 0;  // from the files only
  OpenDb(o);
  docs = Get("docs");
  const uint64_t without = docs->Info()->index_memory_bytes;
  EXPECT_NEAR(static_cast<double>(with_floats - without), static_cast<double>(kFloatBytes), kFloatBytes / 20.0);
  ExpectSameHits(SearchAll(*docs, queries), in_memory);

  docs.reset();
  o.hnsw_vectors_memory_share = 0.5;  // open brings them back
  OpenDb(o);
  docs = Get("docs");
  EXPECT_NEAR(static_cast<double>(docs->Info()->index_memory_bytes), static_cast<double>(with_floats),
              kFloatBytes / 20.0);
  ExpectSameHits(SearchAll(*docs, queries), in_memory);

  // With a maintenance thread, Open returns at once and the thread brings
  // them in.
  docs.reset();
  o.background_maintenance = true;
  OpenDb(o);
  docs = Get("docs");
  uint64_t held = 0;
  for (int i = 0; i < 200 && held < with_floats - kFloatBytes / 20; ++i) {
    held = docs->Info()->index_memory_bytes;
    if (held < with_floats - kFloatBytes / 20) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NEAR(static_cast<double>(held), static_cast<double>(with_floats), kFloatBytes / 20.0);
  ExpectSameHits(SearchAll(*docs, queries), in_memory);
  o.background_maintenance = false;

  // A budget that cannot hold them: they stay in the file.
  docs.reset();
  o.memory_limit_bytes = 16ull << 20;
  o.storage_cache_bytes = 8ull << 20;
  o.hnsw_vectors_memory_share = 0.01;
  OpenDb(o);
  docs = Get("docs");
  EXPECT_NEAR(static_cast<double>(docs->Info()->index_memory_bytes), static_cast<double>(without),
              kFloatBytes / 20.0);
  ExpectSameHits(SearchAll(*docs, queries), in_memory);

  o.hnsw_vectors_memory_share = 1.5;
  docs.reset();
  db_.reset();
  auto bad = Database::Open(dir_, o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "hnsw_vectors_memory_share")) << bad.status();
}

// Floats kept in memory beside their files are the first memory a node
// gives back: a write that would pass the limit frees them and goes in.
TEST_F(MemoryLimitTest, HnswFloatsInMemoryAreGivenBackBeforeAWriteIsRefused) {
  constexpr uint32_t kD = 512;
  constexpr size_t kN = 6000;
  constexpr uint64_t kFloatBytes = kN * kD * sizeof(float);  // 11.7 MiB
  DatabaseOptions o = TestOptions();
  o.memory_limit_bytes = 64ull << 20;
  o.hnsw_vectors_memory_share = 1.0;
  OpenDb(o);
  auto docs = Create("docs", Config(kD));
  auto other = Create("other", Config(kDim, Metric::kL2, IndexType::kFlat));
  ASSERT_TRUE(docs && other);
  for (size_t b = 0; b < kN; b += 500) ASSERT_TRUE(docs->Upsert(Clustered(b, 500, kD, 7 + b)).ok());
  ASSERT_TRUE(docs->Seal().ok());
  const std::vector<Point> queries = Clustered(100000, 20, kD, 8);
  const auto before = SearchAll(*docs, queries);
  const uint64_t held = docs->Info()->index_memory_bytes;
  ASSERT_GT(held, kFloatBytes) << "the floats came into memory";

  // Fill the node with another collection until a write is refused.
  absl::Status refused;
  uint64_t written = 0;
  for (int b = 0; b < 200 && refused.ok(); ++b) {
    refused = other->Upsert(Batch(written, 64));
    if (refused.ok()) written += 64;
  }
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  const uint64_t after = docs->Info()->index_memory_bytes;
  EXPECT_LE(after + kFloatBytes, held + held / 50) << "the floats left memory before the refusal";
  // The other collection got the room they made (4 KiB a point).
  EXPECT_GT(written * kDim * sizeof(float), kFloatBytes);
  // Searches answer as before, from the files.
  ExpectSameHits(SearchAll(*docs, queries), before);
}

TEST(StorageMemory, IsAnEighthOfTheLimitWithinBounds) {
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  EXPECT_EQ(db::StorageMemoryFor(100 * kMiB, 1024 * kMiB), 100 * kMiB);  // as configured
  EXPECT_EQ(db::StorageMemoryFor(0, 0), 1024 * kMiB);                   // no limit
  EXPECT_EQ(db::StorageMemoryFor(0, 16384 * kMiB), 2048 * kMiB);
  EXPECT_EQ(db::StorageMemoryFor(0, 1024 * kMiB), 256 * kMiB);
  EXPECT_EQ(db::StorageMemoryFor(0, 48 * kMiB), 12 * kMiB);  // a quarter of a small limit
  EXPECT_EQ(db::StorageMemoryFor(0, 1024 * 1024 * kMiB), 8192 * kMiB);
}

TEST_F(MemoryLimitTest, StorageCacheOptionIsChecked) {
  DatabaseOptions o = TestOptions();
  o.storage_cache_bytes = 1 << 20;
  auto small = Database::Open(dir_, o);
  EXPECT_EQ(small.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(small.status().message(), "storage_cache_bytes")) << small.status();
  o.memory_limit_bytes = 64ull << 20;
  o.storage_cache_bytes = 64ull << 20;
  EXPECT_EQ(Database::Open(dir_, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.storage_cache_bytes = 16ull << 20;
  OpenDb(o);
  auto docs = Create("docs", Config(kDim, Metric::kL2, IndexType::kFlat));
  ASSERT_NE(docs, nullptr);
  ASSERT_TRUE(docs->Upsert(Batch(0, 256)).ok());
}

TEST(DefaultMemoryLimit, IsMostOfWhatTheProcessMayUse) {
  const uint64_t physical =
      static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGE_SIZE));
  const uint64_t limit = db::DefaultMemoryLimit();
  EXPECT_GT(limit, 0u);
  EXPECT_LE(limit, physical / 100 * 85);
}

}  // namespace
}  // namespace cairn
