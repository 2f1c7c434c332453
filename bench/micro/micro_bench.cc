// Microbenchmarks (Google Benchmark) of the engine's hot paths:
//   distance kernels: Cairn's dispatch (and each SIMD level) against FAISS's
//     fvec_L2sqr / fvec_inner_product as Debian builds them, and the int8
//     code kernels of the HNSW walk;
//   segment search: an HNSW segment, one query, by ef;
//   filter bitmaps: a payload-index range over 1000 integer values at 50%,
//     10%, 1% and 0.1% selectivity, and the union alone;
//   RocksDB write path: WriteBatch of 1..1000 vectors, WAL synced or not;
//   id-map lookups: MultiGet of external ids.
//
//   build/bin/micro_bench                          # everything
//   build/bin/micro_bench --benchmark_filter=L2    # one family
#include <benchmark/benchmark.h>
#include <faiss/utils/distances.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "cairn/database.h"
#include "db/key_codec.h"
#include "db/payload_index.h"
#include "index/distance.h"
#include "index/hnsw_search.h"
#include "index/segment.h"
#include "storage/kv_store.h"

namespace {

using cairn::index::SimdLevel;

std::vector<float> Random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

// ---- distance kernels ------------------------------------------------------------
// One query against 1000 base vectors per iteration (cache-resident), so the
// kernel's arithmetic, not memory, is timed.
constexpr size_t kBase = 1000;

template <typename Fn>
void Distances(benchmark::State& state, Fn fn) {
  const size_t d = static_cast<size_t>(state.range(0));
  auto base = Random(kBase * d, 1), q = Random(d, 2);
  for (auto _ : state) {
    float acc = 0;
    for (size_t i = 0; i < kBase; ++i) acc += fn(q.data(), &base[i * d], d);
    benchmark::DoNotOptimize(acc);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBase));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kBase * d * sizeof(float)));
}

void BM_L2_Cairn(benchmark::State& s) { Distances(s, cairn::index::L2Sqr); }
void BM_L2_CairnScalar(benchmark::State& s) { Distances(s, cairn::index::L2SqrKernel(SimdLevel::kScalar)); }
void BM_L2_CairnAvx2(benchmark::State& s) { Distances(s, cairn::index::L2SqrKernel(SimdLevel::kAvx2)); }
void BM_L2_CairnAvx512(benchmark::State& s) { Distances(s, cairn::index::L2SqrKernel(SimdLevel::kAvx512)); }
void BM_L2_Faiss(benchmark::State& s) { Distances(s, faiss::fvec_L2sqr); }
void BM_IP_Cairn(benchmark::State& s) { Distances(s, cairn::index::InnerProduct); }
void BM_IP_Faiss(benchmark::State& s) { Distances(s, faiss::fvec_inner_product); }
BENCHMARK(BM_L2_Cairn)->Arg(128)->Arg(768)->Arg(784);
BENCHMARK(BM_L2_CairnScalar)->Arg(128)->Arg(768);
BENCHMARK(BM_L2_CairnAvx2)->Arg(128)->Arg(768);
BENCHMARK(BM_L2_CairnAvx512)->Arg(128)->Arg(768);
BENCHMARK(BM_L2_Faiss)->Arg(128)->Arg(768)->Arg(784);
BENCHMARK(BM_IP_Cairn)->Arg(128)->Arg(768);
BENCHMARK(BM_IP_Faiss)->Arg(128)->Arg(768);

// The int8 code kernels the HNSW walk uses (index/hnsw_search.h): one query
// against 1000 code rows, a quarter of the bytes of float rows.
void CodeDistances(benchmark::State& state, cairn::Metric metric) {
  const size_t d = static_cast<size_t>(state.range(0));
  auto base = Random(kBase * d, 1), q = Random(d, 2);
  const auto codes = cairn::index::Int8Codes::Build(base.data(), kBase, d);
  std::vector<int16_t> qc(codes.stride());
  codes.EncodeQuery(q.data(), metric, qc.data());
  for (auto _ : state) {
    int64_t acc = 0;
    for (size_t i = 0; i < kBase; ++i) {
      acc += metric == cairn::Metric::kL2 ? cairn::index::CodeL2(codes.row(i), qc.data(), codes.stride())
                                          : cairn::index::CodeDot(codes.row(i), qc.data(), codes.stride());
    }
    benchmark::DoNotOptimize(acc);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBase));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kBase * codes.stride()));
}
void BM_CodeL2(benchmark::State& s) { CodeDistances(s, cairn::Metric::kL2); }
void BM_CodeDot(benchmark::State& s) { CodeDistances(s, cairn::Metric::kInnerProduct); }
BENCHMARK(BM_CodeL2)->Arg(128)->Arg(768)->Arg(784);
BENCHMARK(BM_CodeDot)->Arg(128)->Arg(768);

// ---- segment search -----------------------------------------------------------------
void BM_SegmentSearchHnsw(benchmark::State& state) {
  constexpr size_t n = 20000, d = 128;
  static const auto seg = [] {
    auto x = Random(n * d, 3);
    std::vector<uint64_t> ids(n);
    for (size_t i = 0; i < n; ++i) ids[i] = i + 1;
    cairn::IndexSpec spec;
    auto s = cairn::index::Segment::Build(d, cairn::Metric::kL2, spec, x.data(), ids.data(), n, 2);
    return std::shared_ptr<cairn::index::Segment>(std::move(*s));
  }();
  auto queries = Random(100 * d, 4);
  cairn::index::SegmentSearchParams p;
  p.k = 10;
  p.ef = static_cast<int>(state.range(0));
  std::vector<float> scores(10);
  std::vector<int64_t> ids(10);
  size_t q = 0;
  for (auto _ : state) {
    (void)seg->Search(&queries[(q++ % 100) * d], 1, p, scores.data(), ids.data(), 1);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_SegmentSearchHnsw)->Arg(16)->Arg(64)->Arg(256);

// ---- filter bitmaps -------------------------------------------------------------------
// 100,000 points with "bucket" = i % 1000 (an integer index); the range
// bucket < B matches B/1000 of them.
const cairn::db::PayloadIndex& BucketIndex() {
  static const auto* index = [] {
    auto* idx = new cairn::db::PayloadIndex({{"bucket", cairn::PayloadType::kInteger}});
    for (uint64_t i = 1; i <= 100000; ++i) {
      for (const auto& k : idx->KeysFor(nlohmann::json{{"bucket", (i - 1) % 1000}}, i)) idx->AddKey(k);
    }
    return idx;
  }();
  return *index;
}

void BM_FilterRange(benchmark::State& state) {
  const auto& idx = BucketIndex();
  cairn::db::Bitmap live;
  for (uint64_t i = 1; i <= 100000; ++i) live.add(i);
  auto c = cairn::Condition::Range("bucket", std::nullopt, std::nullopt, std::nullopt, static_cast<double>(state.range(0)));
  for (auto _ : state) {
    auto b = idx.Evaluate(c, live);
    benchmark::DoNotOptimize(b->cardinality());
  }
  char label[64];
  std::snprintf(label, sizeof(label), "%g%% of 100k points", state.range(0) / 10.0);
  state.SetLabel(label);
}
BENCHMARK(BM_FilterRange)->Arg(500)->Arg(100)->Arg(10)->Arg(1);

// Whole filtered searches through a collection (50,000 x 128, HNSW, one
// sealed segment): the filter's evaluation, the allow-list and the graph walk
// together, against the same search unfiltered (Arg 1000).
// Closed by main before exit (static destructors run after RocksDB's own).
std::unique_ptr<cairn::Database> filter_db;
std::shared_ptr<cairn::Collection> filter_coll;

std::string FilterDir() { return "/tmp/cairn-micro-coll-" + std::to_string(getpid()); }

cairn::Collection& FilterCollection() {
  auto& db = filter_db;
  auto& coll = filter_coll;
  if (!coll) {
    const std::string dir = FilterDir();
    std::filesystem::remove_all(dir);
    cairn::DatabaseOptions o;
    o.background_maintenance = false;
    o.index_threads = 1;
    db = std::move(*cairn::Database::Open(dir, o));
    cairn::CollectionConfig c;
    c.dimension = 128;
    c.payload_indexes = {{"bucket", cairn::PayloadType::kInteger}};
    coll = *db->CreateCollection("c", c);
    auto x = Random(50000 * 128, 7);
    auto loader = std::move(*coll->BeginBulkLoad({50000}));
    std::vector<cairn::Point> pts;
    for (size_t i = 0; i < 50000; ++i) {
      pts.push_back({cairn::PointId(uint64_t{i}), std::vector<float>(&x[i * 128], &x[(i + 1) * 128]),
                     "{\"bucket\":" + std::to_string(i % 1000) + "}", ""});
    }
    (void)loader->Add(pts);
    (void)loader->Finish();
  }
  return *coll;
}

void BM_FilteredSearch(benchmark::State& state) {
  auto& coll = FilterCollection();
  auto queries = Random(100 * 128, 8);
  cairn::Filter f;
  f.must.push_back(cairn::Condition::Range("bucket", std::nullopt, std::nullopt, std::nullopt, static_cast<double>(state.range(0))));
  cairn::SearchParams p;
  p.k = 10;
  p.ef = 32;
  p.with_payload = false;
  if (state.range(0) < 1000) p.filter = &f;
  size_t q = 0;
  for (auto _ : state) {
    auto r = coll.Search(absl::MakeConstSpan(&queries[(q++ % 100) * 128], 128), p);
    benchmark::DoNotOptimize(r->size());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_FilteredSearch)->Arg(1000)->Arg(500)->Arg(100)->Arg(10)->Arg(1);

// ---- RocksDB write path -------------------------------------------------------------------
void BM_RocksWrite(benchmark::State& state) {
  const size_t batch = static_cast<size_t>(state.range(0));
  const bool sync = state.range(1) != 0;
  const std::string dir = "/tmp/cairn-micro-rocks-" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  cairn::storage::KvOptions o;
  o.sync = sync;
  auto kv = cairn::storage::KvStore::Open(dir, o);
  auto v = Random(128, 5);
  const std::string value = cairn::db::EncodeVector(v);
  uint64_t id = 1;
  for (auto _ : state) {
    cairn::storage::WriteBatch b;
    for (size_t i = 0; i < batch; ++i, ++id) b.Put(cairn::storage::Cf::kVectors, cairn::db::InternalKey(id), value);
    if (!(*kv)->Write(b).ok()) state.SkipWithError("write failed");
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * batch * value.size()));
  kv->reset();
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_RocksWrite)->ArgsProduct({{1, 100, 1000}, {0, 1}})->ArgNames({"batch", "sync"});

// ---- id-map lookups -------------------------------------------------------------------------
void BM_IdLookup(benchmark::State& state) {
  const std::string dir = "/tmp/cairn-micro-ids-" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  cairn::storage::KvOptions o;
  o.sync = false;
  auto kv = cairn::storage::KvStore::Open(dir, o);
  constexpr uint64_t n = 200000;
  for (uint64_t s = 0; s < n; s += 10000) {
    cairn::storage::WriteBatch b;
    for (uint64_t i = s; i < s + 10000; ++i) {
      b.Put(cairn::storage::Cf::kIds, cairn::db::ExternalKey(cairn::PointId("doc-" + std::to_string(i))),
            cairn::db::InternalKey(i + 1));
    }
    (void)(*kv)->Write(b);
  }
  (void)(*kv)->Flush();
  std::mt19937_64 rng(6);
  const size_t batch = static_cast<size_t>(state.range(0));
  std::vector<std::string> keys(batch);
  std::vector<std::optional<std::string>> out;
  for (auto _ : state) {
    state.PauseTiming();
    for (auto& k : keys) k = cairn::db::ExternalKey(cairn::PointId("doc-" + std::to_string(rng() % n)));
    state.ResumeTiming();
    if (!(*kv)->MultiGet(cairn::storage::Cf::kIds, keys, &out).ok()) state.SkipWithError("multiget failed");
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch));
  kv->reset();
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_IdLookup)->Arg(1)->Arg(10)->Arg(100);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (filter_db) {
    filter_coll.reset();
    filter_db.reset();
    std::filesystem::remove_all(FilterDir());
  }
  return 0;
}
