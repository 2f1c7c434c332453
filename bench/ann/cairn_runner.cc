// cairn_runner: Cairn's side of the ANN harness (bench/ann/run.py). Builds
// one index over a dataset prepared by the harness (.npy files), then sweeps
// a search parameter and prints one JSON line per measurement, in the schema
// every engine of the harness shares:
//
//   {"kind":"build", "engine", "index", "dataset", "threads", "build_seconds", "peak_rss_mb"}
//   {"kind":"search", ..., "path", "param", "recall10", "recall100", "qps_batch",
//    "qps_single", "p50_ms", "p99_ms"}
//
// path "embedded" is the engine in-process; "grpc" goes through a cairnd child
// on loopback with --grpc-clients client threads; "filtered-S" searches with
// a payload filter matching a fraction S of the points (recall against the
// exact filtered neighbours the harness computed).
//
// The memory line comes from a child (this program with --serving-memory 1)
// that opens the built database afresh, as a restarted server does, and runs
// the queries once: what the database holds serving, without the build's
// freed and fragmented memory.
//
//   cairn_runner --dataset fashion-mnist --base base.npy --queries queries.npy --gt gt.npy
//                --metric l2 --index hnsw --sweep 16,32,64 --threads 1 [--filtered DIR] [--grpc 1,2]
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cairn/database.h"
#include "cairn/v1/search.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "cairn_runner: %s\n", why.c_str());
  std::exit(1);
}

// A 2-D .npy array of float32, int32 or int64 (C order), as doubles-free raw data.
struct Npy {
  size_t rows = 0, cols = 0;
  std::vector<float> f;    // '<f4'
  std::vector<int64_t> i;  // '<i8' or '<i4'
};

Npy LoadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die("cannot open " + path);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) Die(path + ": not .npy");
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint16_t h;
    in.read(reinterpret_cast<char*>(&h), 2);
    hlen = h;
  } else {
    in.read(reinterpret_cast<char*>(&hlen), 4);
  }
  std::string header(hlen, '\0');
  in.read(header.data(), hlen);
  Npy out;
  size_t sh = header.find("'shape': (");
  unsigned long long r = 0, c = 1;
  if (sh == std::string::npos || std::sscanf(header.c_str() + sh + 10, "%llu, %llu", &r, &c) < 1) {
    Die(path + ": no 2-D shape");
  }
  out.rows = r;
  out.cols = c;
  const size_t n = out.rows * out.cols;
  if (header.find("'<f4'") != std::string::npos) {
    out.f.resize(n);
    in.read(reinterpret_cast<char*>(out.f.data()), static_cast<std::streamsize>(n * 4));
  } else if (header.find("'<i8'") != std::string::npos) {
    out.i.resize(n);
    in.read(reinterpret_cast<char*>(out.i.data()), static_cast<std::streamsize>(n * 8));
  } else if (header.find("'<i4'") != std::string::npos) {
    std::vector<int32_t> t(n);
    in.read(reinterpret_cast<char*>(t.data()), static_cast<std::streamsize>(n * 4));
    out.i.assign(t.begin(), t.end());
  } else {
    Die(path + ": dtype must be <f4, <i4 or <i8");
  }
  if (!in) Die(path + ": truncated");
  return out;
}

// Fraction of the true top k (first k columns of gt) among the first k found.
double Recall(const Npy& gt, const std::vector<int64_t>& found, size_t nq, size_t k, size_t found_k) {
  size_t hit = 0;
  for (size_t q = 0; q < nq; ++q) {
    const int64_t* t = &gt.i[q * gt.cols];
    const int64_t* f = &found[q * found_k];
    for (size_t a = 0; a < k; ++a) {
      if (t[a] < 0) continue;
      for (size_t b = 0; b < k; ++b) {
        if (f[b] == t[a]) {
          ++hit;
          break;
        }
      }
    }
  }
  return static_cast<double>(hit) / static_cast<double>(nq * k);
}

double PeakRssMb() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

// The process's resident memory now (VmRSS), in MiB.
double RssMb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
  }
  return 0;
}

struct Latency {
  double qps = 0, p50_ms = 0, p99_ms = 0;
};

// Runs nq single-query searches on `threads` threads (query q on thread
// q % threads); fills found (nq x k) and returns throughput and latency.
template <typename SearchOne>
Latency SingleQueries(size_t nq, int threads, SearchOne search_one) {
  std::vector<double> lat(nq);
  std::atomic<size_t> next{0};
  auto t0 = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (size_t q; (q = next.fetch_add(1)) < nq;) {
        auto s = Clock::now();
        search_one(q, t);
        lat[q] = Since(s) * 1000;
      }
    });
  }
  for (auto& th : pool) th.join();
  Latency out;
  out.qps = nq / Since(t0);
  std::sort(lat.begin(), lat.end());
  out.p50_ms = lat[nq / 2];
  out.p99_ms = lat[std::min(nq - 1, nq * 99 / 100)];
  return out;
}

std::string Common(const std::string& dataset, const std::string& index, int threads) {
  return absl::StrCat("\"engine\":\"cairn\",\"index\":\"", index, "\",\"dataset\":\"", dataset, "\",\"threads\":", threads);
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int i = 1; i + 1 < argc; i += 2) a[argv[i]] = argv[i + 1];
  auto get = [&](const std::string& k, const std::string& d = "") { return a.count(k) ? a[k] : d; };
  if (!a.count("--base") || !a.count("--queries") || !a.count("--gt")) {
    std::fprintf(stderr, "usage: cairn_runner --dataset NAME --base B.npy --queries Q.npy --gt GT.npy [--metric l2|ip|cosine]\n"
                         "  [--index hnsw|ivf_flat|ivf_pq|ivf_sq8|hnsw_sq] [--m 32] [--ef-construction 100] [--nlist N] [--pq-m M]\n"
                         "  [--rerank F] [--pq-tables auto|on|off]\n"
                         "  [--sweep 16,32,64] [--threads 1] [--max-queries N] [--data-dir DIR] [--filtered DIR]\n"
                         "  [--grpc 1,2] [--cairnd PATH] [--buckets 500,100,10,1] [--reuse 1] [--embedded 0]\n"
                         "  [--vectors-in-memory SHARE]\n");
    return 2;
  }
  const std::string dataset = get("--dataset", "data");
  const Npy queries = LoadNpy(get("--queries")), gt = LoadNpy(get("--gt"));
  const double rss_without_data = RssMb();
  // --serving-memory 1 (the build's child): open --data-dir, print the memory line, exit.
  const bool serving_only = get("--serving-memory") == "1";
  Npy base = serving_only ? Npy{} : LoadNpy(get("--base"));
  if ((!serving_only && (base.f.empty() || base.cols != queries.cols)) || queries.f.empty() || gt.i.empty()) {
    Die("bad inputs");
  }
  const size_t dim = queries.cols;
  size_t n = base.rows;
  const size_t nq = std::min<size_t>(queries.rows, std::strtoull(get("--max-queries", "1000000").c_str(), nullptr, 10));
  const int threads = std::atoi(get("--threads", "1").c_str());
  const std::string index_name = get("--index", "hnsw");

  cairn::CollectionConfig config;
  config.dimension = static_cast<uint32_t>(dim);
  const std::string metric = get("--metric", "l2");
  config.metric = metric == "ip" ? cairn::Metric::kInnerProduct : metric == "cosine" ? cairn::Metric::kCosine : cairn::Metric::kL2;
  static const std::map<std::string, cairn::IndexType> kTypes = {
      {"flat", cairn::IndexType::kFlat},      {"hnsw", cairn::IndexType::kHnsw},       {"ivf_flat", cairn::IndexType::kIvfFlat},
      {"ivf_pq", cairn::IndexType::kIvfPq},   {"ivf_sq8", cairn::IndexType::kIvfSq8},  {"hnsw_sq", cairn::IndexType::kHnswSq}};
  if (!kTypes.count(index_name)) Die("unknown --index " + index_name);
  config.index.type = kTypes.at(index_name);
  config.index.hnsw_m = std::atoi(get("--m", "32").c_str());
  config.index.ef_construction = std::atoi(get("--ef-construction", "100").c_str());
  if (a.count("--nlist")) config.index.nlist = std::atoi(get("--nlist").c_str());
  if (a.count("--pq-m")) config.index.pq_m = std::atoi(get("--pq-m").c_str());
  if (a.count("--rerank")) config.index.rerank_factor = std::atoi(get("--rerank").c_str());
  if (a.count("--pq-tables")) {
    auto t = cairn::ParsePqTables(get("--pq-tables"));
    if (!t.ok()) Die(t.status().ToString());
    config.index.pq_tables = *t;
  }
  config.index.hnsw_int8 = get("--hnsw-int8", "1") != "0";
  config.payload_indexes = {{"bucket", cairn::PayloadType::kInteger}};
  config.seal_threshold = std::max<uint64_t>(1000, n);
  const bool ivf = index_name.rfind("ivf", 0) == 0;
  // --vectors-in-memory F: DatabaseOptions::hnsw_vectors_memory_share (0:
  // HNSW floats are read from their files only).
  const double vectors_share = a.count("--vectors-in-memory") ? std::atof(get("--vectors-in-memory").c_str())
                                                              : cairn::DatabaseOptions().hnsw_vectors_memory_share;
  std::string index_desc = ivf ? absl::StrCat(index_name, "(nlist=", config.index.nlist,
                                              index_name == "ivf_pq" ? absl::StrCat(",m=", config.index.pq_m, ",rerank=",
                                                                                    config.index.rerank_factor,
                                                                                    config.index.pq_tables == cairn::PqTables::kAuto
                                                                                        ? ""
                                                                                        : absl::StrCat(",tables=", std::string(cairn::PqTablesName(config.index.pq_tables))))
                                                                     : "",
                                              ")")
                               : absl::StrCat(index_name, "(M=", config.index.hnsw_m, ",efC=", config.index.ef_construction,
                                              index_name == "hnsw" ? (!config.index.hnsw_int8     ? ",f32 walk"
                                                                     : vectors_share == 0 ? ",int8 walk,floats on disk"
                                                                                          : ",int8 walk")
                                                                   : "",
                                              ")");
  const std::string common = Common(dataset, index_desc, threads);

  // Build: the bulk load (storage written and the index built, durable), one segment.
  const std::string dir = get("--data-dir", "/tmp/cairn-runner");
  // --reuse 1: search the collection an earlier --reuse run with the same
  // options left in --data-dir (no build row), to try search settings quickly.
  const bool keep_dir = get("--reuse", "0") == "1";
  const bool reuse = serving_only || (keep_dir && std::filesystem::exists(dir));
  if (!reuse) std::filesystem::remove_all(dir);
  cairn::DatabaseOptions dbo;
  dbo.index_threads = threads;
  dbo.background_maintenance = false;
  dbo.hnsw_vectors_memory_share = vectors_share;
  auto db = cairn::Database::Open(dir, dbo);
  if (!db.ok()) Die(db.status().ToString());
  auto coll = reuse ? (*db)->GetCollection("bench") : (*db)->CreateCollection("bench", config);
  if (!coll.ok()) Die(coll.status().ToString());
  auto t0 = Clock::now();
  if (!reuse) {
    cairn::BulkLoadOptions blo;
    blo.segment_size = n;
    auto loader = (*coll)->BeginBulkLoad(blo);
    if (!loader.ok()) Die(loader.status().ToString());
    std::vector<cairn::Point> batch;
    for (size_t s = 0; s < n; s += 1000) {
      batch.clear();
      for (size_t i = s; i < std::min(n, s + 1000); ++i) {
        // "bucket" = i % 1000 (an indexed integer) drives the filtered runs.
        batch.push_back({static_cast<uint64_t>(i), std::vector<float>(&base.f[i * dim], &base.f[(i + 1) * dim]),
                         absl::StrCat("{\"bucket\":", i % 1000, "}"), ""});
      }
      if (auto st = (*loader)->Add(batch); !st.ok()) Die(st.ToString());
    }
    auto done = (*loader)->Finish();
    if (!done.ok()) Die(done.status().ToString());
  }
  const double build = Since(t0);
  if (!reuse) std::printf("{\"kind\":\"build\",%s,\"build_seconds\":%.3f,\"peak_rss_mb\":%.1f}\n", common.c_str(), build, PeakRssMb());
  std::fflush(stdout);

  std::vector<int> sweep;
  for (absl::string_view s : absl::StrSplit(get("--sweep", ivf ? "1,2,4,8,16,32,64" : "10,16,24,32,48,64,96,128,256"), ',')) {
    sweep.push_back(std::atoi(std::string(s).c_str()));
  }
  const std::vector<float> qv(queries.f.begin(), queries.f.begin() + static_cast<ptrdiff_t>(nq * dim));

  if (serving_only) {
    // The queries run once at the widest setting; this process's RSS less
    // its own before it opened the database is what the database holds:
    // index, id maps, RocksDB's block cache and memtables.
    cairn::SearchParams warm;
    warm.k = 10;
    warm.with_payload = false;
    if (ivf) warm.nprobe = sweep.back();
    else warm.ef = sweep.back();
    if (auto w = (*coll)->SearchBatch(qv, warm); !w.ok()) Die(w.status().ToString());
    auto info = (*coll)->Info();
    if (!info.ok()) Die(info.status().ToString());
    n = info->points;
    const double rss = RssMb();
    // The shared block cache's blocks (bounded by its capacity, whatever the
    // data's size), reported apart.
    const double cache_mb = (*db)->Memory().storage_cache_bytes / 1048576.0;
    std::printf("{\"kind\":\"memory\",%s,\"points\":%zu,\"rss_mb\":%.1f,\"process_mb\":%.1f,\"index_mb\":%.1f,"
                "\"storage_mb\":%.1f,\"storage_cache_mb\":%.1f,\"bytes_per_vector\":%.1f,"
                "\"bytes_per_vector_without_cache\":%.1f}\n",
                common.c_str(), n, rss, rss_without_data, info->index_memory_bytes / 1048576.0,
                info->storage_memory_bytes / 1048576.0, cache_mb,
                (rss - rss_without_data) * 1048576.0 / static_cast<double>(n),
                (rss - rss_without_data - cache_mb) * 1048576.0 / static_cast<double>(n));
    std::fflush(stdout);
    return 0;
  }
  {
    // Serving memory (with --reuse too): what a restarted server holds. The
    // input vectors are given back and the database closed; a fresh process
    // (this program with --serving-memory 1) opens it, runs the queries once
    // at the sweep's widest setting and prints the memory line. In this
    // process the build's freed memory would stay in RSS, fragmented.
    std::vector<float>().swap(base.f);
    coll->reset();
    db->reset();
    std::fflush(stdout);
    std::vector<std::string> args(argv, argv + argc);
    args.push_back("--serving-memory");
    args.push_back("1");
    args.push_back("--sweep");
    args.push_back(std::to_string(sweep.back()));
    args.push_back("--data-dir");  // the last of a repeated flag wins
    args.push_back(dir);
    std::vector<char*> cargs;
    for (auto& x : args) cargs.push_back(x.data());
    cargs.push_back(nullptr);
    const pid_t child = fork();
    if (child == 0) {
      execv("/proc/self/exe", cargs.data());
      _exit(127);
    }
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      Die("the serving-memory process failed");
    }
    db = cairn::Database::Open(dir, dbo);
    if (!db.ok()) Die(db.status().ToString());
    coll = (*db)->GetCollection("bench");
    if (!coll.ok()) Die(coll.status().ToString());
  }

  const std::string pname = ivf ? "nprobe" : "ef";
  auto params_for = [&](int v, int k) {
    cairn::SearchParams p;
    p.k = k;
    p.with_payload = false;
    if (ivf) p.nprobe = v;
    else p.ef = v;
    return p;
  };
  auto to_ids = [](const std::vector<cairn::ScoredPoint>& hits, size_t k, int64_t* out) {
    for (size_t j = 0; j < k; ++j) out[j] = j < hits.size() ? static_cast<int64_t>(hits[j].id.number()) : -1;
  };
  // Embedded (and filtered): batch of every query, then one query at a time.
  auto run_embedded = [&](const std::string& path, const cairn::Filter* filter, const Npy& truth) {
    {
      // Untimed warm-up: page in the index and start the worker threads, so
      // the first timed parameter is not charged for them.
      cairn::SearchParams warm = params_for(sweep.front(), 10);
      warm.filter = filter;
      if (auto w = (*coll)->SearchBatch(qv, warm); !w.ok()) Die(w.status().ToString());
    }
    for (int v : sweep) {
      const size_t k100 = std::min<size_t>(100, truth.cols);
      cairn::SearchParams p10 = params_for(v, 10), p100 = params_for(v, static_cast<int>(k100));
      p10.filter = p100.filter = filter;
      auto tb = Clock::now();
      auto batch = (*coll)->SearchBatch(qv, p10);
      double qps_batch = nq / Since(tb);
      if (!batch.ok()) Die(batch.status().ToString());
      double recall100 = -1;
      if (k100 == 100) {
        auto b100 = (*coll)->SearchBatch(qv, p100);
        if (!b100.ok()) Die(b100.status().ToString());
        std::vector<int64_t> f100(nq * 100);
        for (size_t q = 0; q < nq; ++q) to_ids((*b100)[q], 100, &f100[q * 100]);
        recall100 = Recall(truth, f100, nq, 100, 100);
      }
      std::vector<int64_t> found(nq * 10);
      Latency lat = SingleQueries(nq, threads, [&](size_t q, int) {
        auto r = (*coll)->Search(absl::MakeConstSpan(&qv[q * dim], dim), p10);
        if (!r.ok()) Die(r.status().ToString());
        to_ids(*r, 10, &found[q * 10]);
      });
      std::printf("{\"kind\":\"search\",%s,\"path\":\"%s\",\"param\":\"%s=%d\",\"recall10\":%.4f,\"recall100\":%.4f,"
                  "\"qps_batch\":%.1f,\"qps_single\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
                  common.c_str(), path.c_str(), pname.c_str(), v, Recall(truth, found, nq, 10, 10), recall100, qps_batch,
                  lat.qps, lat.p50_ms, lat.p99_ms);
      std::fflush(stdout);
    }
  };
  if (get("--embedded", "1") != "0") run_embedded("embedded", nullptr, gt);

  if (a.count("--filtered")) {
    // DIR/gt-bucket-lt-B.npy: exact neighbours among points with bucket < B.
    std::vector<int> buckets;  // of 1000: 50%, 10%, 1%, 0.1% by default
    for (absl::string_view s : absl::StrSplit(get("--buckets", "500,100,10,1"), ',')) {
      buckets.push_back(std::atoi(std::string(s).c_str()));
    }
    for (int b : buckets) {
      const std::string f = absl::StrCat(get("--filtered"), "/gt-bucket-lt-", b, ".npy");
      if (!std::filesystem::exists(f)) continue;
      const Npy ft = LoadNpy(f);
      cairn::Filter filter;
      filter.must.push_back(cairn::Condition::Range("bucket", std::nullopt, std::nullopt, std::nullopt, static_cast<double>(b)));
      run_embedded(absl::StrCat("filtered-", b / 1000.0), &filter, ft);
    }
  }

  if (a.count("--grpc")) {
    // The same data directory served by a cairnd child on loopback.
    coll->reset();
    db->reset();
    const std::string cairnd = get("--cairnd", CAIRND_PATH);
    const std::string log = dir + ".cairnd.log";
    pid_t pid = fork();
    if (pid == 0) {
      std::freopen(log.c_str(), "w", stderr);
      execl(cairnd.c_str(), cairnd.c_str(), "--data-dir", dir.c_str(), "--listen", "127.0.0.1:0", "--http-listen", "",
            "--insecure-no-auth", static_cast<char*>(nullptr));
      _exit(127);
    }
    int port = 0;
    for (int i = 0; i < 600 && port == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::ifstream l(log);
      std::string text((std::istreambuf_iterator<char>(l)), {});
      if (text.find("\"event\":\"serving\"") == std::string::npos) continue;
      size_t p = text.find("\"port\":");
      if (p != std::string::npos) port = std::atoi(text.c_str() + p + 7);
    }
    if (port == 0) {
      kill(pid, SIGKILL);
      Die("cairnd did not start; see " + log);
    }
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
    // Queries [q0, q1) in one SearchBatch request; v is ef or nprobe (0: the collection's).
    auto batch_request = [&](size_t q0, size_t q1, int v) {
      cairn::v1::SearchBatchRequest req;
      req.set_collection("bench");
      req.mutable_vectors()->Add(&qv[q0 * dim], &qv[q1 * dim]);
      req.mutable_params()->set_k(10);
      if (ivf) req.mutable_params()->set_nprobe(static_cast<uint32_t>(v));
      else req.mutable_params()->set_ef(static_cast<uint32_t>(v));
      return req;
    };
    {
      // Untimed warm-up of the server's index, as for the in-process runs.
      auto stub = cairn::v1::Search::NewStub(channel);
      for (size_t q0 = 0; q0 < nq; q0 += 100) {
        const cairn::v1::SearchBatchRequest req = batch_request(q0, std::min(nq, q0 + 100), 0);
        cairn::v1::SearchBatchResponse resp;
        grpc::ClientContext ctx;
        if (auto s = stub->SearchBatch(&ctx, req, &resp); !s.ok()) Die("grpc warm-up: " + s.error_message());
      }
    }
    for (absl::string_view cs : absl::StrSplit(get("--grpc"), ',')) {
      const int clients = std::atoi(std::string(cs).c_str());
      std::vector<std::unique_ptr<cairn::v1::Search::Stub>> stubs;
      for (int c = 0; c < clients; ++c) stubs.push_back(cairn::v1::Search::NewStub(channel));
      for (int v : sweep) {
        std::vector<int64_t> found(nq * 10);
        Latency lat = SingleQueries(nq, clients, [&](size_t q, int t) {
          cairn::v1::SearchRequest req;
          req.set_collection("bench");
          req.mutable_vector()->Add(&qv[q * dim], &qv[(q + 1) * dim]);
          req.mutable_params()->set_k(10);
          if (ivf) req.mutable_params()->set_nprobe(static_cast<uint32_t>(v));
          else req.mutable_params()->set_ef(static_cast<uint32_t>(v));
          cairn::v1::SearchResponse resp;
          grpc::ClientContext ctx;
          auto s = stubs[static_cast<size_t>(t)]->Search(&ctx, req, &resp);
          if (!s.ok()) Die("grpc search: " + s.error_message());
          for (size_t j = 0; j < 10; ++j) {
            found[q * 10 + j] = j < static_cast<size_t>(resp.hits_size()) ? static_cast<int64_t>(resp.hits(static_cast<int>(j)).id().num()) : -1;
          }
        });
        // Batched: each client sends SearchBatch calls of kPerCall queries,
        // the way an agent embedding many chunks at once would.
        constexpr size_t kPerCall = 100;
        const size_t calls = (nq + kPerCall - 1) / kPerCall;
        std::vector<int64_t> found_batch(nq * 10, -1);
        auto tb = Clock::now();
        SingleQueries(calls, clients, [&](size_t c, int t) {
          const size_t q0 = c * kPerCall, q1 = std::min(nq, q0 + kPerCall);
          const cairn::v1::SearchBatchRequest req = batch_request(q0, q1, v);
          cairn::v1::SearchBatchResponse resp;
          grpc::ClientContext ctx;
          auto s = stubs[static_cast<size_t>(t)]->SearchBatch(&ctx, req, &resp);
          if (!s.ok()) Die("grpc search batch: " + s.error_message());
          if (static_cast<size_t>(resp.results_size()) != q1 - q0) Die("grpc search batch: wrong result count");
          for (size_t q = q0; q < q1; ++q) {
            const auto& hits = resp.results(static_cast<int>(q - q0)).hits();
            for (size_t j = 0; j < 10 && j < static_cast<size_t>(hits.size()); ++j) {
              found_batch[q * 10 + j] = static_cast<int64_t>(hits[static_cast<int>(j)].id().num());
            }
          }
        });
        const double qps_batch = nq / Since(tb);
        if (Recall(gt, found_batch, nq, 10, 10) != Recall(gt, found, nq, 10, 10)) {
          std::fprintf(stderr, "note: batched and single gRPC recall differ at %s=%d\n", pname.c_str(), v);
        }
        std::printf("{\"kind\":\"search\",%s,\"path\":\"grpc\",\"clients\":%d,\"param\":\"%s=%d\",\"recall10\":%.4f,"
                    "\"recall100\":-1,\"qps_batch\":%.1f,\"qps_single\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
                    common.c_str(), clients, pname.c_str(), v, Recall(gt, found, nq, 10, 10), qps_batch, lat.qps,
                    lat.p50_ms, lat.p99_ms);
        std::fflush(stdout);
      }
    }
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
  }
  if (!keep_dir) std::filesystem::remove_all(dir);  // kept for the next --reuse run
  return 0;
}
