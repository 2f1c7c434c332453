// Concurrent writers, searchers, deleters and sealing on one collection: no
// write is lost, no search fails or returns a point that never existed, and
// the final state is exactly what the writers made.
#include <atomic>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "cairn/database.h"
#include "gtest/gtest.h"

namespace cairn {
namespace {

constexpr uint32_t kDim = 8;

std::vector<float> VectorOf(uint64_t id) {
  std::vector<float> v(kDim);
  for (uint32_t i = 0; i < kDim; ++i) v[i] = static_cast<float>((id * 31 + i * 7) % 97);
  return v;
}

class ConcurrencyTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("cairn-concurrency-" + std::to_string(::getpid()) + "-" + std::to_string(GetParam()));
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_P(ConcurrencyTest, WritersSearchersDeletersAndSealingTogether) {
  DatabaseOptions options;
  options.background_maintenance = false;
  auto db = Database::Open(dir_.string(), options);
  ASSERT_TRUE(db.ok()) << db.status();
  CollectionConfig config;
  config.dimension = kDim;
  config.num_shards = static_cast<uint32_t>(GetParam());
  config.index.hnsw_m = 8;
  config.index.ef_construction = 32;
  config.seal_threshold = 1000;
  config.payload_indexes = {{"writer", PayloadType::kInteger}};
  auto coll = (*db)->CreateCollection("c", config);
  ASSERT_TRUE(coll.ok()) << coll.status();

  constexpr int kWriters = 4, kBatches = 40, kPerBatch = 25;
  std::atomic<bool> done{false};
  std::atomic<int> search_errors{0}, bad_results{0}, searches{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int b = 0; b < kBatches; ++b) {
        std::vector<Point> points;
        for (int i = 0; i < kPerBatch; ++i) {
          uint64_t id = static_cast<uint64_t>(w) * 1000000 + b * 1000 + i;
          points.push_back({id, VectorOf(id), "{\"writer\":" + std::to_string(w) + "}", ""});
        }
        ASSERT_TRUE((*coll)->Upsert(points).ok());
        // Writer 0 also deletes its previous batch: the final state keeps
        // only its last batch.
        if (w == 0 && b > 0) {
          std::vector<PointId> ids;
          for (int i = 0; i < kPerBatch; ++i) ids.push_back(uint64_t{(b - 1) * 1000ull + i});
          auto n = (*coll)->Delete(ids);
          ASSERT_TRUE(n.ok());
          ASSERT_EQ(*n, static_cast<uint64_t>(kPerBatch));
        }
      }
    });
  }
  for (int s = 0; s < 2; ++s) {
    threads.emplace_back([&, s] {
      std::mt19937_64 rng(s);
      Filter f;
      f.must.push_back(Condition::Match("writer", int64_t{2}));
      while (!done.load()) {
        SearchParams p;
        p.k = 5;
        if (rng() % 2) p.filter = &f;
        auto r = (*coll)->Search(VectorOf(rng() % 4000000), p);
        ++searches;
        if (!r.ok()) {
          ++search_errors;
          continue;
        }
        for (const auto& hit : *r) {
          uint64_t id = hit.id.number();
          if (id / 1000000 >= kWriters || (p.filter && id / 1000000 != 2)) ++bad_results;
        }
      }
    });
  }
  threads.emplace_back([&] {
    while (!done.load()) {
      ASSERT_TRUE((*coll)->Seal().ok());
      std::this_thread::yield();
    }
  });
  for (int w = 0; w < kWriters; ++w) threads[w].join();
  done = true;
  for (size_t i = kWriters; i < threads.size(); ++i) threads[i].join();

  EXPECT_EQ(search_errors.load(), 0);
  EXPECT_EQ(bad_results.load(), 0);
  EXPECT_GT(searches.load(), 0);
  auto count = (*coll)->Count();
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(*count, static_cast<uint64_t>((kWriters - 1) * kBatches * kPerBatch + kPerBatch));
  // Every surviving point is exactly as written, and findable.
  for (int w = 1; w < kWriters; ++w) {
    std::vector<PointId> ids;
    for (int b = 0; b < kBatches; ++b) {
      for (int i = 0; i < kPerBatch; ++i) ids.push_back(uint64_t{w * 1000000ull + b * 1000 + i});
    }
    auto got = (*coll)->Get(ids, true, true);
    ASSERT_TRUE(got.ok());
    for (size_t i = 0; i < ids.size(); ++i) {
      ASSERT_TRUE((*got)[i].has_value()) << ids[i].ToString();
      EXPECT_EQ((*got)[i]->vector, VectorOf(ids[i].number()));
    }
  }
  SearchParams exact;
  exact.k = 1;
  exact.exact = true;
  uint64_t probe = 3 * 1000000ull + 17 * 1000 + 3;
  auto r = (*coll)->Search(VectorOf(probe), exact);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].score, 0.0f);
}

// A point replaced over and over while it is read: every read sees one
// whole version of it, never an id without its payload or vector.
TEST_P(ConcurrencyTest, AGetNeverSeesHalfOfAReplacedPoint) {
  auto db = Database::Open(dir_.string());
  ASSERT_TRUE(db.ok()) << db.status();
  CollectionConfig config;
  config.dimension = kDim;
  config.num_shards = static_cast<uint32_t>(GetParam());
  auto coll = (*db)->CreateCollection("c", config);
  ASSERT_TRUE(coll.ok()) << coll.status();
  const PointId key(std::string("k"));
  ASSERT_TRUE((*coll)->Upsert({{key, VectorOf(0), "{\"v\":0}", ""}}).ok());
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int i = 1; i <= 3000; ++i) {
      ASSERT_TRUE((*coll)->Upsert({{key, VectorOf(i), "{\"v\":" + std::to_string(i) + "}", ""}}).ok());
    }
    done = true;
  });
  int reads = 0, torn = 0;
  while (!done.load()) {
    auto got = (*coll)->Get({key}, /*with_payload=*/true, /*with_vector=*/true);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE((*got)[0].has_value());
    ++reads;
    if ((*got)[0]->payload.find("\"v\"") == std::string::npos || (*got)[0]->vector.size() != kDim) ++torn;
  }
  writer.join();
  EXPECT_GT(reads, 0);
  EXPECT_EQ(torn, 0) << "of " << reads << " reads";
}

INSTANTIATE_TEST_SUITE_P(Shards, ConcurrencyTest, ::testing::Values(1, 3));

}  // namespace
}  // namespace cairn
