// cairn_quickstart: loads Fashion-MNIST (or a synthetic set when the Debian
// package is absent) into a Cairn database, then searches it and prints
// recall@10 against exact search, and latency.
//
//   build/bin/cairn_quickstart --data ./data
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include "cairn/database.h"
#include "examples/datasets.h"

namespace {

constexpr const char* kClassNames[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                         "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

void Usage() {
  std::printf(
      "Usage: cairn_quickstart [--data DIR] [--queries N] [--synthetic] [--fresh]\n"
      "\n"
      "Loads Fashion-MNIST (60,000 x 784, from apt package dataset-fashion-mnist; a\n"
      "synthetic 60,000 x 128 set when it is absent) into collection \"fashion_mnist\"\n"
      "of the Cairn database in DIR, then runs the test queries one at a time and\n"
      "prints recall@10 against exact search and per-query latency.\n"
      "\n"
      "  --data DIR    data directory (default ./data); created when missing\n"
      "  --queries N   queries to run (default 10000, all of them)\n"
      "  --synthetic   use the synthetic set even when Fashion-MNIST is installed\n"
      "  --fresh       drop and reload the collection even when it is loaded already\n");
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "cairn_quickstart: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string data_dir = "./data";
  size_t max_queries = 10000;
  bool synthetic = false, fresh = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      Usage();
      return 0;
    } else if (a == "--data" && i + 1 < argc) {
      data_dir = argv[++i];
    } else if (a == "--queries" && i + 1 < argc) {
      max_queries = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--synthetic") {
      synthetic = true;
    } else if (a == "--fresh") {
      fresh = true;
    } else {
      std::fprintf(stderr, "cairn_quickstart: unknown argument %s\n\n", a.c_str());
      Usage();
      return 2;
    }
  }

  cairn::datasets::Dataset data;
  auto fm = synthetic ? absl::NotFoundError("synthetic requested") : cairn::datasets::LoadFashionMnist();
  if (fm.ok()) {
    data = std::move(*fm);
  } else {
    std::printf("Fashion-MNIST unavailable (%s); using a synthetic set.\n",
                std::string(fm.status().message()).c_str());
    data = cairn::datasets::Synthetic(60000, 10000, 128, 100, 42);
  }
  const size_t dim = data.dim, n = data.n(), nq = std::min(max_queries, data.nq());
  std::printf("dataset: %s, %zu vectors x %zu dims, %zu queries\n", data.name.c_str(), n, dim, nq);

  auto db = cairn::Database::Open(data_dir);
  if (!db.ok()) return Fail(db.status());

  std::shared_ptr<cairn::Collection> coll;
  if (auto existing = (*db)->GetCollection("fashion_mnist"); existing.ok() && !fresh) {
    auto count = (*existing)->Count();
    if (count.ok() && *count == n && (*existing)->config().dimension == dim) coll = *existing;
  }
  if (!coll) {
    if ((*db)->GetCollection("fashion_mnist").ok()) {
      if (auto s = (*db)->DropCollection("fashion_mnist"); !s.ok()) return Fail(s);
    }
    cairn::CollectionConfig config;
    config.dimension = static_cast<uint32_t>(dim);
    config.metric = cairn::Metric::kL2;
    config.index.type = cairn::IndexType::kHnsw;
    config.index.hnsw_m = 32;
    config.index.ef_construction = 100;
    config.payload_indexes = {{"label", cairn::PayloadType::kKeyword}};
    auto created = (*db)->CreateCollection("fashion_mnist", config);
    if (!created.ok()) return Fail(created.status());
    coll = *created;

    auto t0 = std::chrono::steady_clock::now();
    const size_t batch = 1000;
    const bool tty = isatty(fileno(stdout));
    std::vector<cairn::Point> points;
    for (size_t start = 0; start < n; start += batch) {
      points.clear();
      for (size_t i = start; i < std::min(n, start + batch); ++i) {
        cairn::Point p;
        p.id = static_cast<uint64_t>(i);
        p.vector.assign(data.base.begin() + i * dim, data.base.begin() + (i + 1) * dim);
        if (!data.base_labels.empty()) {
          int label = data.base_labels[i];
          p.payload = std::string("{\"label\":\"") +
                      (data.name.rfind("fashion", 0) == 0 ? kClassNames[label] : std::to_string(label)) +
                      "\"}";
        }
        points.push_back(std::move(p));
      }
      if (auto s = coll->Upsert(points); !s.ok()) return Fail(s);
      if (tty) {
        std::printf("\ringest: %zu / %zu", std::min(n, start + batch), n);
        std::fflush(stdout);
      }
    }
    double secs = Seconds(t0);
    std::printf("\ringest: %zu vectors in %.2f s (%.0f vectors/s, durable)\n", n, secs, n / secs);
  } else {
    std::printf("collection fashion_mnist already holds %zu vectors (use --fresh to reload)\n", n);
  }

  // Exact ground truth, by Cairn's own exact search.
  const size_t k = 10;
  auto t0 = std::chrono::steady_clock::now();
  cairn::SearchParams exact;
  exact.k = static_cast<int>(k);
  exact.exact = true;
  exact.with_payload = false;
  std::vector<float> qs(data.queries.begin(), data.queries.begin() + nq * dim);
  auto truth_res = coll->SearchBatch(qs, exact);
  if (!truth_res.ok()) return Fail(truth_res.status());
  std::vector<int64_t> truth(nq * k, -1);
  for (size_t q = 0; q < nq; ++q) {
    for (size_t j = 0; j < (*truth_res)[q].size() && j < k; ++j) {
      truth[q * k + j] = static_cast<int64_t>((*truth_res)[q][j].id.number());
    }
  }
  std::printf("exact ground truth for %zu queries: %.2f s\n", nq, Seconds(t0));

  std::printf("\n%-8s %-10s %-12s %-12s %-12s\n", "ef", "recall@10", "QPS (1 thr)", "p50 ms", "p99 ms");
  for (int ef : {16, 32, 64, 128, 256}) {
    cairn::SearchParams params;
    params.k = static_cast<int>(k);
    params.ef = ef;
    params.with_payload = false;
    std::vector<int64_t> found(nq * k, -1);
    std::vector<double> lat(nq);
    auto start = std::chrono::steady_clock::now();
    for (size_t q = 0; q < nq; ++q) {
      auto t = std::chrono::steady_clock::now();
      auto r = coll->Search(absl::MakeConstSpan(qs.data() + q * dim, dim), params);
      lat[q] = Seconds(t) * 1000;
      if (!r.ok()) return Fail(r.status());
      for (size_t j = 0; j < r->size() && j < k; ++j) found[q * k + j] = static_cast<int64_t>((*r)[j].id.number());
    }
    double total = Seconds(start);
    std::sort(lat.begin(), lat.end());
    std::printf("%-8d %-10.4f %-12.0f %-12.3f %-12.3f\n", ef,
                cairn::datasets::RecallAtK(truth, found, nq, k), nq / total, lat[nq / 2],
                lat[std::min(nq - 1, nq * 99 / 100)]);
  }

  // A filtered search: nearest neighbours among one class only.
  if (!data.base_labels.empty()) {
    std::string label = data.name.rfind("fashion", 0) == 0 ? kClassNames[7] : "7";
    auto filter = cairn::Filter::FromJson("{\"must\":[{\"key\":\"label\",\"match\":{\"value\":\"" + label + "\"}}]}");
    if (!filter.ok()) return Fail(filter.status());
    cairn::SearchParams params;
    params.k = 5;
    params.filter = &*filter;
    auto r = coll->Search(absl::MakeConstSpan(qs.data(), dim), params);
    if (!r.ok()) return Fail(r.status());
    std::printf("\nfiltered search (label = %s), query 0:\n", label.c_str());
    for (const auto& p : *r) {
      std::printf("  id %-6s score %-10.0f payload %s\n", p.id.ToString().c_str(), p.score, p.payload.c_str());
    }
  }
  auto info = coll->Info();
  if (info.ok()) {
    std::printf("\ncollection: %lu points, %lu segments (%lu sealed), index memory %.1f MiB\n",
                static_cast<unsigned long>(info->points), static_cast<unsigned long>(info->segments),
                static_cast<unsigned long>(info->sealed_segments), info->index_memory_bytes / 1048576.0);
  }
  std::printf("data directory: %s\n", data_dir.c_str());
  return 0;
}
