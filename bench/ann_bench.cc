// ann_bench: Cairn against FAISS's own IndexHNSWFlat on the same data, in the
// same process, with the same HNSW parameters.
//
// Measures, per engine: build / ingest time (Cairn: durable, WAL-synced
// upserts of 1,000 vectors; FAISS: in-memory add alone), then for a sweep of
// ef: recall@10 against exact ground truth and single-thread, one-query-at-a-
// time QPS. Prints a table and one JSON line per measurement.
//
//   build/bin/ann_bench                       # Fashion-MNIST (apt dataset-fashion-mnist)
//   build/bin/ann_bench --synthetic 100000 128
//   build/bin/ann_bench --queries 2000 --data /tmp/cairn-bench
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "cairn/database.h"
#include "examples/datasets.h"

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void Die(const absl::Status& s) {
  std::fprintf(stderr, "ann_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

// Runs every query one at a time through `coll`; fills found (nq x k ids)
// and returns queries per second.
double RunQueries(cairn::Collection& coll, const cairn::datasets::Dataset& data, size_t nq,
                  const cairn::SearchParams& params, std::vector<int64_t>* found) {
  const size_t dim = data.dim, k = static_cast<size_t>(params.k);
  found->assign(nq * k, -1);
  auto t0 = Clock::now();
  for (size_t q = 0; q < nq; ++q) {
    auto r = coll.Search(absl::MakeConstSpan(data.queries.data() + q * dim, dim), params);
    if (!r.ok()) Die(r.status());
    for (size_t j = 0; j < r->size() && j < k; ++j) {
      (*found)[q * k + j] = static_cast<int64_t>((*r)[j].id.number());
    }
  }
  return nq / Since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  size_t max_queries = 10000, syn_n = 0, syn_dim = 0;
  int m = 32, ef_construction = 100;
  std::string dir = "/tmp/cairn-ann-bench";
  std::vector<int> efs = {10, 16, 24, 32, 48, 64, 96, 128, 256};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--queries" && i + 1 < argc) max_queries = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--synthetic" && i + 2 < argc) {
      syn_n = std::strtoull(argv[++i], nullptr, 10);
      syn_dim = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--data" && i + 1 < argc) dir = argv[++i];
    else if (a == "--m" && i + 1 < argc) m = std::atoi(argv[++i]);
    else if (a == "--ef-construction" && i + 1 < argc) ef_construction = std::atoi(argv[++i]);
    else {
      std::printf("Usage: ann_bench [--queries N] [--synthetic N DIM] [--data DIR] [--m M] [--ef-construction E]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  cairn::datasets::Dataset data;
  if (syn_n > 0) {
    data = cairn::datasets::Synthetic(syn_n, 10000, syn_dim, 256, 7);
  } else {
    auto fm = cairn::datasets::LoadFashionMnist();
    if (!fm.ok()) Die(fm.status());
    data = std::move(*fm);
  }
  const size_t dim = data.dim, n = data.n(), nq = std::min(max_queries, data.nq()), k = 10;
  const int threads = omp_get_max_threads();
  std::printf("# %s: n=%zu dim=%zu queries=%zu HNSW M=%d efConstruction=%d, build threads=%d\n",
              data.name.c_str(), n, dim, nq, m, ef_construction, threads);

  // Exact ground truth (FAISS flat, BLAS).
  std::vector<int64_t> truth(nq * k);
  {
    faiss::IndexFlatL2 flat(static_cast<int>(dim));
    flat.add(static_cast<faiss::Index::idx_t>(n), data.base.data());
    std::vector<float> d(nq * k);
    std::vector<faiss::Index::idx_t> l(nq * k);
    flat.search(static_cast<faiss::Index::idx_t>(nq), data.queries.data(), k, d.data(), l.data());
    for (size_t i = 0; i < nq * k; ++i) truth[i] = l[i];
  }

  // FAISS: in-memory add alone.
  faiss::IndexHNSWFlat faiss_index(static_cast<int>(dim), m);
  faiss_index.hnsw.efConstruction = ef_construction;
  auto t0 = Clock::now();
  faiss_index.add(static_cast<faiss::Index::idx_t>(n), data.base.data());
  double faiss_build = Since(t0);

  // Cairn: durable ingest in batches of 1,000.
  std::filesystem::remove_all(dir);
  auto db = cairn::Database::Open(dir);
  if (!db.ok()) Die(db.status());
  cairn::CollectionConfig config;
  config.dimension = static_cast<uint32_t>(dim);
  config.index.type = cairn::IndexType::kHnsw;
  config.index.hnsw_m = m;
  config.index.ef_construction = ef_construction;
  config.payload_indexes = {{"bucket", cairn::PayloadType::kInteger}};
  auto coll = (*db)->CreateCollection("bench", config);
  if (!coll.ok()) Die(coll.status());
  t0 = Clock::now();
  std::vector<cairn::Point> batch;
  for (size_t s = 0; s < n; s += 1000) {
    batch.clear();
    for (size_t i = s; i < std::min(n, s + 1000); ++i) {
      // "bucket" (i % 1000, declared as an integer index) drives the filtered runs.
      batch.push_back({static_cast<uint64_t>(i),
                       std::vector<float>(data.base.begin() + i * dim, data.base.begin() + (i + 1) * dim),
                       "{\"bucket\":" + std::to_string(i % 1000) + "}", ""});
    }
    if (auto st = (*coll)->Upsert(batch); !st.ok()) Die(st);
  }
  double cairn_build = Since(t0);
  std::printf("\nbuild/ingest seconds: faiss_add=%.2f cairn_durable_ingest=%.2f ratio=%.2f\n",
              faiss_build, cairn_build, cairn_build / faiss_build);
  std::printf("{\"bench\":\"ingest\",\"dataset\":\"%s\",\"faiss_add_s\":%.3f,\"cairn_ingest_s\":%.3f,\"ratio\":%.3f}\n",
              data.name.c_str(), faiss_build, cairn_build, cairn_build / faiss_build);

  // Single-thread, one query at a time.
  omp_set_num_threads(1);
  std::printf("\n%-6s %-14s %-12s %-14s %-12s %-8s\n", "ef", "faiss_recall", "faiss_qps", "cairn_recall",
              "cairn_qps", "ratio");
  for (int ef : efs) {
    std::vector<int64_t> found(nq * k, -1);
    std::vector<float> d(k);
    std::vector<faiss::Index::idx_t> l(k);
    faiss_index.hnsw.efSearch = ef;
    t0 = Clock::now();
    for (size_t q = 0; q < nq; ++q) {
      faiss_index.search(1, data.queries.data() + q * dim, k, d.data(), l.data());
      for (size_t j = 0; j < k; ++j) found[q * k + j] = l[j];
    }
    double faiss_qps = nq / Since(t0);
    double faiss_recall = cairn::datasets::RecallAtK(truth, found, nq, k);

    cairn::SearchParams p;
    p.k = static_cast<int>(k);
    p.ef = ef;
    p.with_payload = false;
    double cairn_qps = RunQueries(**coll, data, nq, p, &found);
    double cairn_recall = cairn::datasets::RecallAtK(truth, found, nq, k);
    std::printf("%-6d %-14.4f %-12.0f %-14.4f %-12.0f %-8.2f\n", ef, faiss_recall, faiss_qps, cairn_recall,
                cairn_qps, cairn_qps / faiss_qps);
    std::printf("{\"bench\":\"search\",\"dataset\":\"%s\",\"ef\":%d,\"faiss_recall\":%.4f,\"faiss_qps\":%.1f,"
                "\"cairn_recall\":%.4f,\"cairn_qps\":%.1f}\n",
                data.name.c_str(), ef, faiss_recall, faiss_qps, cairn_recall, cairn_qps);
  }

  // Filtered search: bucket < B matches B/1000 of the points. Ground truth is
  // Cairn's exact search under the same filter.
  std::printf("\n%-12s %-8s %-14s %-12s %-12s\n", "selectivity", "ef", "recall@10", "qps", "exact_qps");
  for (int buckets : {500, 100, 10, 1}) {
    cairn::Filter filter;
    filter.must.push_back(cairn::Condition::Range("bucket", std::nullopt, std::nullopt, std::nullopt,
                                                  static_cast<double>(buckets)));
    cairn::SearchParams ex;
    ex.k = static_cast<int>(k);
    ex.exact = true;
    ex.with_payload = false;
    ex.filter = &filter;
    std::vector<int64_t> ftruth, found;
    double exact_qps = RunQueries(**coll, data, nq, ex, &ftruth);
    for (int ef : {32, 64}) {
      cairn::SearchParams p = ex;
      p.exact = false;
      p.ef = ef;
      double qps = RunQueries(**coll, data, nq, p, &found);
      double recall = cairn::datasets::RecallAtK(ftruth, found, nq, k);
      std::printf("%-12.3f %-8d %-14.4f %-12.0f %-12.0f\n", buckets / 1000.0, ef, recall, qps, exact_qps);
      std::printf("{\"bench\":\"filtered\",\"dataset\":\"%s\",\"selectivity\":%.4f,\"ef\":%d,"
                  "\"recall\":%.4f,\"qps\":%.1f,\"exact_qps\":%.1f}\n",
                  data.name.c_str(), buckets / 1000.0, ef, recall, qps, exact_qps);
    }
  }
  return 0;
}
