// grpc_bench: search through cairnd over gRPC on loopback against the same
// search in-process, with 1..N client threads: QPS, p50/p99 latency, and the
// ratio. Also the online ingest rate (client-streaming upsert), and the floor:
// the same unary calls to a server that answers without searching, with the
// CPU time each call costs client and server together.
//
//   build/bin/grpc_bench                      # Fashion-MNIST when installed
//   build/bin/grpc_bench --synthetic 100000 128 --queries 2000 --threads 1,2,4
//
// With --target HOST:PORT it uses a running cairnd instead (a node of a
// cluster: bench/cluster/consistency.sh) and compares, on the same data,
// linearizable searches (the default) with local ones: QPS, p50/p99 and
// recall@10 against exact search for each. With --target and --load
// COLLECTION SECONDS it only searches that collection (random queries of its
// dimension, k=10) for that long and prints one JSON line: calls/s, p50/p99
// and the calls that failed; with --writes FIRST_ID BATCH it upserts instead,
// BATCH new points a call (ids from FIRST_ID on; "points_written" counts the
// acknowledged ones); --latency-log FILE also writes each call's end
// (Unix ms), latency (ms) and outcome (1 ok, 0 failed) as a line, so that a
// script can take the figures of any time window (bench/cluster/elastic.sh:
// while a cluster moves replicas or splits shards).
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "cairn/database.h"
#include "cairn/v1/collections.grpc.pb.h"
#include "cairn/v1/points.grpc.pb.h"
#include "cairn/v1/search.grpc.pb.h"
#include "examples/datasets.h"

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "grpc_bench: %s\n", what.c_str());
  std::exit(1);
}

struct Result {
  double qps, p50_ms, p99_ms;
};

// Runs nq queries split over `threads` threads; `one(q)` runs query q.
Result Measure(size_t nq, int threads, const std::function<void(size_t)>& one) {
  std::vector<double> lat(nq);
  std::atomic<size_t> next{0};
  auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      for (size_t q; (q = next++) < nq;) {
        auto s = Clock::now();
        one(q);
        lat[q] = Since(s) * 1000;
      }
    });
  }
  for (auto& t : ts) t.join();
  double secs = Since(t0);
  std::sort(lat.begin(), lat.end());
  return {nq / secs, lat[nq / 2], lat[std::min(nq - 1, nq * 99 / 100)]};
}

// cairn.v1.Search answering every call at once with 10 empty hits: what a
// unary call costs on this machine before any search runs.
class NoopSearch final : public cairn::v1::Search::CallbackService {
  grpc::ServerUnaryReactor* Search(grpc::CallbackServerContext* ctx, const cairn::v1::SearchRequest*,
                                   cairn::v1::SearchResponse* resp) override {
    for (int i = 0; i < 10; ++i) resp->add_hits()->mutable_id()->set_num(static_cast<uint64_t>(i));
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// Creates collection `name` on `channel` and loads the data by client-streaming
// upsert; seconds it took.
double CreateAndLoad(const std::shared_ptr<grpc::Channel>& channel, const std::string& name,
                     const cairn::datasets::Dataset& data, uint32_t shards) {
  auto collections = cairn::v1::Collections::NewStub(channel);
  auto points = cairn::v1::Points::NewStub(channel);
  {
    grpc::ClientContext ctx;
    cairn::v1::CreateCollectionRequest req;
    req.set_name(name);
    req.mutable_config()->set_dimension(static_cast<uint32_t>(data.dim));
    if (shards > 0) req.mutable_config()->set_num_shards(shards);
    cairn::v1::CollectionInfo info;
    auto s = collections->Create(&ctx, req, &info);
    if (!s.ok()) Die(s.error_message());
  }
  const size_t n = data.n(), dim = data.dim;
  auto t0 = Clock::now();
  grpc::ClientContext ctx;
  cairn::v1::UpsertResponse resp;
  auto writer = points->UpsertStream(&ctx, &resp);
  for (size_t s = 0; s < n; s += 1000) {
    cairn::v1::UpsertRequest req;
    req.set_collection(name);
    for (size_t i = s; i < std::min(n, s + 1000); ++i) {
      auto* p = req.add_points();
      p->mutable_id()->set_num(i);
      p->mutable_vector()->Add(data.base.begin() + i * dim, data.base.begin() + (i + 1) * dim);
    }
    if (!writer->Write(req)) break;
  }
  writer->WritesDone();
  auto s = writer->Finish();
  if (!s.ok()) Die(s.error_message());
  return Since(t0);
}

cairn::v1::SearchRequest Request(const cairn::datasets::Dataset& data, const std::string& name, size_t q) {
  cairn::v1::SearchRequest req;
  req.set_collection(name);
  req.mutable_vector()->Add(data.queries.begin() + q * data.dim, data.queries.begin() + (q + 1) * data.dim);
  req.mutable_params()->set_k(10);
  req.mutable_params()->set_ef(64);
  return req;
}

// A running cairnd (a cluster node): linearizable against local searches.
int RunAgainstTarget(const cairn::datasets::Dataset& data, size_t nq, const std::vector<int>& thread_counts,
                     const std::string& target, uint32_t shards) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  const std::string name = "bench_consistency";
  const double ingest = CreateAndLoad(channel, name, data, shards);
  std::printf("loaded %zu points into %u shards through %s in %.2f s\n", data.n(), shards, target.c_str(), ingest);
  auto search = cairn::v1::Search::NewStub(channel);
  auto ids = [&](size_t q, cairn::v1::ReadConsistency c, bool exact) {
    auto req = Request(data, name, q);
    req.mutable_params()->set_consistency(c);
    req.mutable_params()->set_exact(exact);
    grpc::ClientContext ctx;
    cairn::v1::SearchResponse resp;
    auto s = search->Search(&ctx, req, &resp);
    if (!s.ok() || resp.hits_size() != 10) Die("search failed: " + s.error_message());
    std::vector<uint64_t> out;
    for (const auto& h : resp.hits()) out.push_back(h.id().num());
    return out;
  };
  // Recall@10 against exact search, over the first 200 queries.
  const size_t nr = std::min<size_t>(200, nq);
  std::vector<std::vector<uint64_t>> truth(nr);
  for (size_t q = 0; q < nr; ++q) truth[q] = ids(q, cairn::v1::READ_CONSISTENCY_LINEARIZABLE, true);
  std::printf("\n%-14s %-8s %-10s %-9s %-9s %-9s\n", "consistency", "threads", "qps", "p50_ms", "p99_ms",
              "recall@10");
  for (auto c : {cairn::v1::READ_CONSISTENCY_LINEARIZABLE, cairn::v1::READ_CONSISTENCY_LOCAL}) {
    const char* cname = c == cairn::v1::READ_CONSISTENCY_LOCAL ? "local" : "linearizable";
    size_t found = 0;
    for (size_t q = 0; q < nr; ++q) {
      auto got = ids(q, c, false);
      for (uint64_t id : got) found += std::count(truth[q].begin(), truth[q].end(), id);
    }
    const double recall = static_cast<double>(found) / static_cast<double>(nr * 10);
    for (int t : thread_counts) {
      Result r = Measure(nq, t, [&](size_t q) { ids(q, c, false); });
      std::printf("%-14s %-8d %-10.0f %-9.3f %-9.3f %-9.4f\n", cname, t, r.qps, r.p50_ms, r.p99_ms, recall);
      std::printf("{\"bench\":\"cluster_search_consistency\",\"dataset\":\"%s\",\"consistency\":\"%s\","
                  "\"threads\":%d,\"qps\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"recall_at_10\":%.4f}\n",
                  data.name.c_str(), cname, t, r.qps, r.p50_ms, r.p99_ms, recall);
    }
  }
  return 0;
}

std::atomic<bool> g_stop_load{false};

// Searches `collection` through `target` for `seconds` (or until SIGTERM)
// with `threads` clients; one JSON line.
// The load of --load: searches (random queries, k=10) or, with `write_batch`
// > 0, upserts of that many new points a call (random vectors, ids from
// `first_id` on, each call the next ones).
int Load(const std::string& target, const std::string& collection, double seconds, int threads,
         const std::string& latency_log, uint64_t first_id, uint32_t write_batch) {
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  uint32_t dim = 0;
  {
    grpc::ClientContext ctx;
    cairn::v1::GetCollectionRequest req;
    req.set_name(collection);
    cairn::v1::CollectionInfo info;
    auto s = cairn::v1::Collections::NewStub(channel)->Get(&ctx, req, &info);
    if (!s.ok()) Die(s.error_message());
    dim = info.config().dimension();
  }
  auto search = cairn::v1::Search::NewStub(channel);
  auto points = cairn::v1::Points::NewStub(channel);
  signal(SIGTERM, [](int) { g_stop_load.store(true); });
  std::atomic<uint64_t> errors{0}, next_id{first_id};
  std::mutex mu;
  std::vector<double> lat;
  std::string first_error;
  struct Call {
    int64_t end_ms;
    double ms;
    bool ok;
  };
  std::vector<Call> calls;
  const auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      std::mt19937 rng(static_cast<uint32_t>(t + 1 + first_id));
      std::uniform_real_distribution<float> u(0, 1);
      std::vector<double> mine;
      std::vector<Call> my_calls;
      while (Since(t0) < seconds && !g_stop_load.load()) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        grpc::Status s;
        const auto s0 = Clock::now();
        if (write_batch == 0) {
          cairn::v1::SearchRequest req;
          req.set_collection(collection);
          for (uint32_t d = 0; d < dim; ++d) req.add_vector(u(rng));
          req.mutable_params()->set_k(10);
          cairn::v1::SearchResponse resp;
          s = search->Search(&ctx, req, &resp);
        } else {
          cairn::v1::UpsertRequest req;
          req.set_collection(collection);
          const uint64_t id = next_id.fetch_add(write_batch);
          for (uint32_t i = 0; i < write_batch; ++i) {
            auto* p = req.add_points();
            p->mutable_id()->set_num(id + i);
            for (uint32_t d = 0; d < dim; ++d) p->add_vector(u(rng));
          }
          cairn::v1::UpsertResponse resp;
          s = points->Upsert(&ctx, req, &resp);
        }
        const int64_t end_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count();
        my_calls.push_back({end_ms, Since(s0) * 1000, s.ok()});
        if (s.ok()) {
          mine.push_back(Since(s0) * 1000);
        } else {
          ++errors;
          std::lock_guard l(mu);
          if (first_error.empty()) first_error = s.error_message();
        }
      }
      std::lock_guard l(mu);
      lat.insert(lat.end(), mine.begin(), mine.end());
      calls.insert(calls.end(), my_calls.begin(), my_calls.end());
    });
  }
  for (auto& t : ts) t.join();
  const double secs = Since(t0);
  if (!latency_log.empty()) {
    FILE* f = std::fopen(latency_log.c_str(), "w");
    if (f == nullptr) Die("cannot write " + latency_log);
    for (const Call& c : calls) std::fprintf(f, "%lld %.3f %d\n", static_cast<long long>(c.end_ms), c.ms, c.ok ? 1 : 0);
    std::fclose(f);
  }
  std::sort(lat.begin(), lat.end());
  const size_t n = lat.size();
  std::printf("{\"bench\":\"%s\",\"collection\":\"%s\",\"threads\":%d,\"seconds\":%.2f,"
              "\"calls\":%zu,\"per_second\":%.1f,\"points_written\":%llu,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
              "\"errors\":%llu,\"first_error\":\"%s\"}\n",
              write_batch == 0 ? "cluster_search_load" : "cluster_write_load", collection.c_str(), threads, secs, n,
              n / secs, static_cast<unsigned long long>(n * write_batch), n ? lat[n / 2] : 0.0,
              n ? lat[std::min(n - 1, n * 99 / 100)] : 0.0, static_cast<unsigned long long>(errors.load()),
              first_error.substr(0, 200).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  size_t max_queries = 2000, syn_n = 0, syn_dim = 0;
  std::vector<int> thread_counts = {1, 2, 4};
  std::string dir = "/tmp/cairn-grpc-bench";
  std::string target;
  uint32_t shards = 2;
  std::string load, latency_log;
  double load_seconds = 0;
  uint64_t first_id = 0;
  uint32_t write_batch = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--queries" && i + 1 < argc) max_queries = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--synthetic" && i + 2 < argc) {
      syn_n = std::strtoull(argv[++i], nullptr, 10);
      syn_dim = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--threads" && i + 1 < argc) {
      thread_counts.clear();
      for (auto p : absl::StrSplit(argv[++i], ',')) thread_counts.push_back(std::atoi(std::string(p).c_str()));
    } else if (a == "--data" && i + 1 < argc) dir = argv[++i];
    else if (a == "--target" && i + 1 < argc) target = argv[++i];
    else if (a == "--load" && i + 2 < argc) {
      load = argv[++i];
      load_seconds = std::strtod(argv[++i], nullptr);
    } else if (a == "--latency-log" && i + 1 < argc) latency_log = argv[++i];
    else if (a == "--writes" && i + 2 < argc) {
      first_id = std::strtoull(argv[++i], nullptr, 10);
      write_batch = static_cast<uint32_t>(std::strtoul(argv[++i], nullptr, 10));
    }
    else if (a == "--shards" && i + 1 < argc) shards = static_cast<uint32_t>(std::strtoul(argv[++i], nullptr, 10));
    else {
      std::printf("Usage: grpc_bench [--queries N] [--synthetic N DIM] [--threads 1,2,4] [--data DIR]\n"
                  "                  [--target HOST:PORT [--shards N | --load COLLECTION SECONDS\n"
                  "                   [--writes FIRST_ID BATCH] [--latency-log FILE]]]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  if (!load.empty()) {
    if (target.empty()) Die("--load needs --target");
    return Load(target, load, load_seconds, thread_counts.empty() ? 1 : thread_counts[0], latency_log, first_id,
                write_batch);
  }
  cairn::datasets::Dataset data;
  if (syn_n > 0) {
    data = cairn::datasets::Synthetic(syn_n, 10000, syn_dim, 256, 7);
  } else {
    auto fm = cairn::datasets::LoadFashionMnist();
    data = fm.ok() ? std::move(*fm) : cairn::datasets::Synthetic(60000, 10000, 128, 256, 7);
  }
  const size_t dim = data.dim, n = data.n(), nq = std::min(max_queries, data.nq());
  std::printf("# %s: n=%zu dim=%zu queries=%zu, HNSW M=32 efC=100, search ef=64 k=10\n", data.name.c_str(), n,
              dim, nq);
  if (!target.empty()) return RunAgainstTarget(data, nq, thread_counts, target, shards);
  std::filesystem::remove_all(dir);

  // 1. cairnd: online ingest by client-streaming upsert, then search over gRPC.
  int fds[2];
  if (pipe(fds) != 0) Die("pipe");
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    execl(CAIRND_PATH, CAIRND_PATH, "--listen", "127.0.0.1:0", "--http-listen", "", "--data-dir", dir.c_str(),
          "--insecure-no-auth", static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  close(fds[1]);
  FILE* log = fdopen(fds[0], "r");
  char line[4096];
  int port = 0;
  while (fgets(line, sizeof(line), log)) {
    std::string l = line;
    if (auto p = l.find("\"port\":"); p != std::string::npos && l.find("listening") != std::string::npos) {
      port = std::stoi(l.substr(p + 7));
    }
    if (l.find("\"event\":\"serving\"") != std::string::npos) break;
  }
  if (port == 0) Die("cairnd did not start");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args);
  auto search = cairn::v1::Search::NewStub(channel);
  const double ingest = CreateAndLoad(channel, "bench", data, 0);
  std::printf("online ingest (client-streaming upsert, batches of 1000, durable): %.2f s, %.0f vectors/s, %.1f MB/s\n",
              ingest, n / ingest, n * dim * 4 / ingest / 1e6);

  // Query q as a Search request (k=10, ef=64).
  auto request = [&](size_t q) { return Request(data, "bench", q); };
  auto grpc_search = [&](size_t q) {
    grpc::ClientContext ctx;
    cairn::v1::SearchResponse resp;
    auto s = search->Search(&ctx, request(q), &resp);
    if (!s.ok() || resp.hits_size() != 10) Die("search failed: " + s.error_message());
  };
  std::vector<Result> remote;
  for (int t : thread_counts) remote.push_back(Measure(nq, t, grpc_search));
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  fclose(log);

  // 2. The same data and searches in-process.
  auto db = cairn::Database::Open(dir);
  if (!db.ok()) Die(db.status().ToString());
  auto coll = (*db)->GetCollection("bench");
  if (!coll.ok()) Die(coll.status().ToString());
  cairn::SearchParams params;
  params.k = 10;
  params.ef = 64;
  auto local_search = [&](size_t q) {
    auto r = (*coll)->Search(absl::MakeConstSpan(data.queries.data() + q * dim, dim), params);
    if (!r.ok() || r->size() != 10) Die("in-process search failed");
  };
  // 3. The floor: the same calls to a server that does no work (in this
  // process, so its CPU time covers client and server).
  NoopSearch noop;
  grpc::ServerBuilder builder;
  int noop_port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &noop_port);
  builder.RegisterService(&noop);
  auto noop_server = builder.BuildAndStart();
  if (!noop_server) Die("cannot start the no-op server");
  auto noop_stub = cairn::v1::Search::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(noop_port), grpc::InsecureChannelCredentials()));
  auto noop_call = [&](size_t q) {
    grpc::ClientContext ctx;
    cairn::v1::SearchResponse resp;
    if (!noop_stub->Search(&ctx, request(q), &resp).ok()) Die("no-op call failed");
  };

  std::printf("\n%-8s %-10s %-9s %-9s %-10s %-9s %-9s %-6s %-10s %-12s\n", "threads", "grpc_qps", "grpc_p50",
              "grpc_p99", "local_qps", "local_p50", "local_p99", "ratio", "floor_qps", "floor_cpu_us");
  for (size_t i = 0; i < thread_counts.size(); ++i) {
    Result local = Measure(nq, thread_counts[i], local_search);
    const double cpu0 = CpuSeconds();
    Result floor = Measure(nq, thread_counts[i], noop_call);
    const double floor_cpu_us = (CpuSeconds() - cpu0) / static_cast<double>(nq) * 1e6;
    const Result& r = remote[i];
    std::printf("%-8d %-10.0f %-9.3f %-9.3f %-10.0f %-9.3f %-9.3f %-6.2f %-10.0f %-12.0f\n", thread_counts[i], r.qps,
                r.p50_ms, r.p99_ms, local.qps, local.p50_ms, local.p99_ms, r.qps / local.qps, floor.qps, floor_cpu_us);
    std::printf("{\"bench\":\"grpc_search\",\"dataset\":\"%s\",\"threads\":%d,\"grpc_qps\":%.1f,\"grpc_p50_ms\":%.3f,"
                "\"grpc_p99_ms\":%.3f,\"local_qps\":%.1f,\"local_p50_ms\":%.3f,\"local_p99_ms\":%.3f,"
                "\"floor_qps\":%.1f,\"floor_p50_ms\":%.3f,\"floor_cpu_us_per_call\":%.1f}\n",
                data.name.c_str(), thread_counts[i], r.qps, r.p50_ms, r.p99_ms, local.qps, local.p50_ms,
                local.p99_ms, floor.qps, floor.p50_ms, floor_cpu_us);
  }
  noop_server->Shutdown();
  return 0;
}
