// The node's memory limit (DatabaseOptions::memory_limit_bytes): an upsert
// that would take the collections past it is refused with RESOURCE_EXHAUSTED
// and a message saying what holds the memory and what to do, and writes
// nothing; reads, searches and deletes go on; room made (a dropped
// collection) is seen at once.
#include <unistd.h>

#include <string>
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
