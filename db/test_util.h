// Shared helpers for the db/ unit tests: a temp data directory per test,
// seeded random data, and brute-force reference search.
#ifndef CAIRN_DB_TEST_UTIL_H_
#define CAIRN_DB_TEST_UTIL_H_

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cairn/database.h"
#include "gtest/gtest.h"

namespace cairn::testing_util {

// Seed for random data. CAIRN_TEST_SEED replays a run; the default keeps the
// recall thresholds meaningful. Printed once per binary.
inline uint64_t TestSeed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("CAIRN_TEST_SEED");
    uint64_t s = env ? std::strtoull(env, nullptr, 10) : 20240611;
    std::cout << "[ seed     ] CAIRN_TEST_SEED=" << s << std::endl;
    return s;
  }();
  return seed;
}

// Options for tests: no background thread, so nothing happens behind a test's
// back; two FAISS threads (the CI machine has two cores).
inline DatabaseOptions TestOptions() {
  DatabaseOptions o;
  o.background_maintenance = false;
  o.index_threads = 2;
  return o;
}

// A fresh directory per test, removed afterwards; a Database opened on it.
class DbTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::path(::testing::TempDir()) / "cairn-db-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    dir_ = root_ + "/data";
  }
  void TearDown() override {
    db_.reset();
    std::error_code ec;
    std::filesystem::remove_all(root_, ec);
  }

  // Opens (or reopens) db_ on dir_.
  void OpenDb(const DatabaseOptions& options = TestOptions()) {
    db_.reset();
    auto db = Database::Open(dir_, options);
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = *std::move(db);
  }
  void CloseDb() { db_.reset(); }

  std::shared_ptr<Collection> Create(const std::string& name, const CollectionConfig& config) {
    auto c = db_->CreateCollection(name, config);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }
  std::shared_ptr<Collection> Get(const std::string& name) {
    auto c = db_->GetCollection(name);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }

  std::string root_;  // removed after the test
  std::string dir_;   // the data directory, root_/data
  std::unique_ptr<Database> db_;
};

// A point; Point{} with fields left out trips -Wmissing-field-initializers.
inline Point Pt(PointId id, std::vector<float> vector, std::string payload = "",
                std::string text = "") {
  return Point{std::move(id), std::move(vector), std::move(payload), std::move(text)};
}

inline CollectionConfig Config(uint32_t dim, Metric metric = Metric::kL2,
                               IndexType type = IndexType::kHnsw, uint32_t shards = 1) {
  CollectionConfig c;
  c.dimension = dim;
  c.metric = metric;
  c.index.type = type;
  c.num_shards = shards;
  c.seal_threshold = 1000000;  // only explicit Seal() calls seal
  return c;
}

// n vectors around `clusters` random centers, row-major.
inline std::vector<float> Clustered(size_t n, uint32_t dim, uint64_t seed, int clusters = 32,
                                    float spread = 0.2f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> center(-1.0f, 1.0f);
  std::normal_distribution<float> noise(0.0f, spread);
  std::vector<float> centers(static_cast<size_t>(clusters) * dim);
  for (auto& c : centers) c = center(rng);
  std::vector<float> x(n * dim);
  for (size_t i = 0; i < n; ++i) {
    size_t c = rng() % static_cast<size_t>(clusters);
    for (uint32_t j = 0; j < dim; ++j) x[i * dim + j] = centers[c * dim + j] + noise(rng);
  }
  return x;
}

inline std::vector<float> Row(const std::vector<float>& x, size_t i, uint32_t dim) {
  return std::vector<float>(x.begin() + static_cast<ptrdiff_t>(i * dim),
                            x.begin() + static_cast<ptrdiff_t>((i + 1) * dim));
}

// Score as the collection reports it, computed in double.
inline float RefScore(Metric m, const float* a, const float* b, uint32_t dim) {
  double dot = 0, l2 = 0, na = 0, nb = 0;
  for (uint32_t j = 0; j < dim; ++j) {
    dot += double(a[j]) * b[j];
    l2 += (double(a[j]) - b[j]) * (double(a[j]) - b[j]);
    na += double(a[j]) * a[j];
    nb += double(b[j]) * b[j];
  }
  if (m == Metric::kL2) return static_cast<float>(l2);
  if (m == Metric::kInnerProduct) return static_cast<float>(dot);
  if (na == 0 || nb == 0) return 0.0f;
  return static_cast<float>(dot / std::sqrt(na) / std::sqrt(nb));
}

inline bool RefBetter(Metric m, float a, float b) { return m == Metric::kL2 ? a < b : a > b; }

// Exact top k (score, point index) among the rows `keep` accepts.
template <typename Keep>
std::vector<std::pair<float, size_t>> BruteForce(Metric m, const std::vector<float>& x,
                                                 uint32_t dim, const float* q, int k, Keep keep) {
  std::vector<std::pair<float, size_t>> all;
  const size_t n = x.size() / dim;
  for (size_t i = 0; i < n; ++i) {
    if (keep(i)) all.emplace_back(RefScore(m, q, &x[i * dim], dim), i);
  }
  auto better = [m](const auto& a, const auto& b) {
    return a.first != b.first ? RefBetter(m, a.first, b.first) : a.second < b.second;
  };
  size_t kk = std::min<size_t>(static_cast<size_t>(k), all.size());
  std::partial_sort(all.begin(), all.begin() + static_cast<ptrdiff_t>(kk), all.end(), better);
  all.resize(kk);
  return all;
}

inline auto KeepAll() {
  return [](size_t) { return true; };
}

// Upserts rows [begin, end) of x as points with numeric ids id_of(i), in
// batches, with payload_of(i) as payload.
template <typename IdOf, typename PayloadOf>
void UpsertRows(Collection& c, const std::vector<float>& x, uint32_t dim, size_t begin, size_t end,
                IdOf id_of, PayloadOf payload_of, size_t batch = 1000) {
  for (size_t s = begin; s < end; s += batch) {
    std::vector<Point> points;
    for (size_t i = s; i < std::min(end, s + batch); ++i) {
      points.push_back(Pt(id_of(i), Row(x, i, dim), payload_of(i)));
    }
    absl::Status st = c.Upsert(points);
    ASSERT_TRUE(st.ok()) << st;
  }
}

inline void UpsertRows(Collection& c, const std::vector<float>& x, uint32_t dim) {
  UpsertRows(c, x, dim, 0, x.size() / dim, [](size_t i) { return PointId(uint64_t{i}); },
             [](size_t) { return std::string(); });
}

// Waits (up to a minute) until the background indexer has indexed every
// point written: approximate searches then give the same answers each time.
inline void WaitIndexed(const Collection& c) {
  for (int i = 0; i < 6000; ++i) {
    auto info = c.Info();
    ASSERT_TRUE(info.ok()) << info.status();
    if (info->unindexed_points == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  FAIL() << "the tail was not indexed within a minute";
}

// Fraction of the true top-k (point indexes; ids are the numeric point index)
// found in `got`.
inline double RecallOf(const std::vector<ScoredPoint>& got,
                       const std::vector<std::pair<float, size_t>>& truth) {
  if (truth.empty()) return 1.0;
  std::set<uint64_t> want;
  for (const auto& t : truth) want.insert(t.second);
  size_t hit = 0;
  for (const auto& p : got) {
    if (p.id.is_number() && want.count(p.id.number())) ++hit;
  }
  return static_cast<double>(hit) / static_cast<double>(truth.size());
}

inline std::string RecordString(const Record& r) {
  std::string s = r.id.ToString() + " payload=" + r.payload + " text=" + r.text + " vector=";
  char buf[32];
  for (float f : r.vector) {
    std::snprintf(buf, sizeof(buf), "%a,", f);  // exact
    s += buf;
  }
  return s;
}

// Everything a collection holds, as Scroll returns it (sorted, with vectors).
inline std::vector<std::string> Contents(const Collection& c) {
  std::vector<std::string> out;
  ScrollRequest req;
  req.limit = 7;
  req.with_vector = true;
  for (int pages = 0; pages < 100000; ++pages) {
    auto page = c.Scroll(req);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) break;
    for (const auto& r : page->points) out.push_back(RecordString(r));
    if (page->next_cursor.empty()) break;
    req.cursor = page->next_cursor;
  }
  std::sort(out.begin(), out.end());
  return out;
}

inline uint64_t CountOf(const Collection& c, const Filter* f = nullptr) {
  auto n = c.Count(f);
  EXPECT_TRUE(n.ok()) << n.status();
  return n.ok() ? *n : ~uint64_t{0};
}

inline Filter ParseFilter(std::string_view json) {
  auto f = Filter::FromJson(json);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? *std::move(f) : Filter();
}

// Every search the maintenance tests compare, for each of the queries (rows
// of `dim`): exact and (with_index) approximate, with and without a filter on
// an integer field "g" (g >= 1).
inline std::vector<std::vector<ScoredPoint>> SearchesOf(const Collection& c, const std::vector<float>& queries,
                                                        uint32_t dim, int k, bool with_index = true) {
  std::vector<std::vector<ScoredPoint>> out;
  Filter f = ParseFilter(R"({"must": [{"key": "g", "range": {"gte": 1}}]})");
  for (size_t q = 0; q < queries.size() / dim; ++q) {
    for (const Filter* filter : {static_cast<const Filter*>(nullptr), static_cast<const Filter*>(&f)}) {
      for (bool exact : {true, false}) {
        if (!exact && !with_index) continue;
        auto r = c.Search(Row(queries, q, dim), {.k = k, .exact = exact, .filter = filter});
        EXPECT_TRUE(r.ok()) << r.status();
        out.push_back(r.ok() ? *r : std::vector<ScoredPoint>{});
      }
    }
  }
  return out;
}

// The same answers, search by search: ids, scores (within tol) and payloads.
inline void ExpectSameSearches(const std::vector<std::vector<ScoredPoint>>& a,
                               const std::vector<std::vector<ScoredPoint>>& b, const std::string& what,
                               float tol = 1e-5f) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].size(), b[i].size()) << what << " search " << i;
    for (size_t j = 0; j < a[i].size(); ++j) {
      EXPECT_EQ(a[i][j].id, b[i][j].id) << what << " search " << i << " rank " << j;
      EXPECT_NEAR(a[i][j].score, b[i][j].score, tol) << what << " search " << i << " rank " << j;
      EXPECT_EQ(a[i][j].payload, b[i][j].payload) << what;
    }
  }
}

// The files ending in `ext` in the segments directories of every shard of
// the collection at `collection_dir`, sorted.
inline std::vector<std::filesystem::path> SegmentDirFiles(const std::string& collection_dir, const std::string& ext) {
  std::vector<std::filesystem::path> out;
  for (const auto& shard : std::filesystem::directory_iterator(collection_dir)) {
    if (!shard.is_directory()) continue;
    for (const auto& f : std::filesystem::directory_iterator(shard.path() / "segments")) {
      if (f.path().extension() == ext) out.push_back(f.path());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace cairn::testing_util

#endif  // CAIRN_DB_TEST_UTIL_H_
