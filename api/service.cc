#include "api/service.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "api/convert.h"
#include "api/http_server.h"
#include "api/metrics.h"
#include "cairn/status.h"
#include "cairn/v1/cluster.grpc.pb.h"
#include "cairn/v1/collections.grpc.pb.h"
#include "cluster/cluster.h"
#include "cairn/v1/points.grpc.pb.h"
#include "cairn/v1/search.grpc.pb.h"
#include "cairn/v1/server.grpc.pb.h"
#include "cairn/v1/snapshots.grpc.pb.h"
#include "api/tar_stream.h"
#include <filesystem>
#include <nlohmann/json.hpp>
#include "index/distance.h"
#include "index/gpu/gpu.h"
#include "storage/file_util.h"

namespace cairn::api {
namespace {

constexpr const char* kVersion = "0.1.0";

// A fixed set of threads and a bounded queue of tasks.
class WorkerPool {
 public:
  WorkerPool(int threads, int max_queued) : max_queued_(max_queued) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // False when the queue is full.
  bool Submit(std::function<void()> task) {
    {
      std::lock_guard l(mu_);
      if (static_cast<int>(queue_.size()) >= max_queued_) return false;
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    return true;
  }

 private:
  void Run() {
    while (true) {
      std::function<void()> task;
      {
        std::unique_lock l(mu_);
        cv_.wait(l, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping, and nothing left to run
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }
  const int max_queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// Answers shared by every service.
grpc::Status Loading() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "cairnd is still loading its data; retry shortly");
}
grpc::Status ShuttingDown() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "cairnd is shutting down; retry on another replica");
}
grpc::Status Overloaded() {
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      "cairnd is overloaded (request queue full); retry with backoff");
}

// A streaming call answered at once with a status (auth, loading, draining).
template <typename Reactor>
class Refusal final : public Reactor {
 public:
  explicit Refusal(const grpc::Status& s) { this->Finish(s); }
  void OnDone() override { delete this; }
};

// What every service needs: the database (null while loading), the worker
// lanes and the keys.
struct Backend {
  std::atomic<Database*> db{nullptr};
  // Requests run in three lanes of their own threads, by the role they need:
  // reads, writes and admin calls. A write that waits (for a quorum, or for a
  // shard's new map during a split) or a long admin call (a snapshot) never
  // holds up a search, and the other way round.
  std::unique_ptr<WorkerPool> reads, writes, admin;
  WorkerPool& Lane(Role role) {
    switch (role) {
      case Role::kRead: return *reads;
      case Role::kWrite: return *writes;
      default: return *admin;
    }
  }
  // Null when auth is off; replaced whole when the keys file changes.
  std::atomic<std::shared_ptr<const ApiKeys>> keys;
  RequestMetrics metrics;
  // Calls accepted and not yet finished, for draining; new calls are refused
  // once draining starts.
  std::mutex inflight_mu;
  std::condition_variable inflight_cv;
  int inflight = 0;        // guarded by inflight_mu
  bool draining = false;   // guarded by inflight_mu

  // False when draining: the caller answers UNAVAILABLE.
  bool Enter() {
    std::lock_guard l(inflight_mu);
    if (draining) return false;
    ++inflight;
    return true;
  }
  void Leave() {
    std::lock_guard l(inflight_mu);
    if (--inflight == 0) inflight_cv.notify_all();
  }
  // Refuses new calls, then waits until none is in flight or `deadline`.
  void Drain(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock l(inflight_mu);
    draining = true;
    inflight_cv.wait_until(l, deadline, [this] { return inflight == 0; });
  }
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

  // Finishes a unary call and records it.
  void Finish(grpc::ServerUnaryReactor* reactor, const char* method,
              std::chrono::steady_clock::time_point t0, const grpc::Status& s) {
    metrics.Record(method, static_cast<int>(s.error_code()),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    reactor->Finish(s);
  }

  // OK when the call's key has at least role `need` (or auth is off).
  grpc::Status Authorize(const grpc::CallbackServerContext* ctx, Role need) const {
    const std::shared_ptr<const ApiKeys> keys = this->keys.load();
    if (!keys) return grpc::Status::OK;
    const auto& md = ctx->client_metadata();
    std::string key;
    if (auto it = md.find("authorization"); it != md.end()) {
      std::string v(it->second.data(), it->second.size());
      if (v.rfind("Bearer ", 0) == 0) key = v.substr(7);
    } else if (auto it2 = md.find("x-api-key"); it2 != md.end()) {
      key.assign(it2->second.data(), it2->second.size());
    }
    if (key.empty()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "no API key: send metadata \"authorization: Bearer KEY\"");
    }
    std::optional<Role> role = keys->Lookup(key);
    if (!role) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the API key is not valid");
    if (static_cast<int>(*role) < static_cast<int>(need)) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          absl::StrCat("this call needs the ", RoleName(need), " role; the key has ",
                                       RoleName(*role)));
    }
    return grpc::Status::OK;
  }

  // Calls running on gRPC's own threads now (see Run's `inline_ok`), at
  // most max_inline at once.
  std::atomic<int> inline_running{0};
  std::atomic<bool> clustered{false};
  int max_inline = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  // Checks the key, runs fn(db) and finishes the call with its status. With
  // `inline_ok` (short calls of bounded cost: a plain vector search) fn runs
  // on the gRPC thread that took the call, saving the two thread hand-offs of
  // its lane, as long as fewer than max_inline such calls run; otherwise, and
  // for every other call, on its lane.
  template <typename Fn>
  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* ctx, Role need, const char* method, Fn fn,
                                bool inline_ok = false) {
    auto t0 = std::chrono::steady_clock::now();
    auto* reactor = ctx->DefaultReactor();
    if (grpc::Status auth = Authorize(ctx, need); !auth.ok()) {
      Finish(reactor, method, t0, auth);
      return reactor;
    }
    Database* database = db.load();
    if (database == nullptr) {
      Finish(reactor, method, t0,
             Loading());
      return reactor;
    }
    if (!Enter()) {
      Finish(reactor, method, t0,
             ShuttingDown());
      return reactor;
    }
    auto finish = [this, reactor, method, t0](const grpc::Status& s) {
      Finish(reactor, method, t0, s);
      Leave();
    };
    // In a cluster a search may wait for a shard's leader: never on gRPC's threads.
    if (inline_ok && !clustered.load(std::memory_order_relaxed)) {
      if (inline_running.fetch_add(1, std::memory_order_acq_rel) < max_inline) {
        grpc::Status st = ToGrpc(fn(*database));
        inline_running.fetch_sub(1, std::memory_order_acq_rel);
        finish(st);
        return reactor;
      }
      inline_running.fetch_sub(1, std::memory_order_acq_rel);
    }
    bool queued = Lane(need).Submit([ctx, database, finish, fn = std::move(fn)]() mutable {
      if (ctx->IsCancelled()) {
        finish(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled"));
        return;
      }
      if (std::chrono::system_clock::now() > ctx->deadline()) {
        finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the deadline passed before the request could run"));
        return;
      }
      finish(ToGrpc(fn(*database)));
    });
    if (!queued) {
      finish(Overloaded());
    }
    return reactor;
  }
};

absl::StatusOr<std::shared_ptr<Collection>> Open(Database& db, const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("collection: the name is empty");
  return db.GetCollection(name);
}

class CollectionsService final : public v1::Collections::CallbackService {
 public:
  explicit CollectionsService(Backend* b) : b_(b) {}

  grpc::ServerUnaryReactor* Create(grpc::CallbackServerContext* ctx,
                                   const v1::CreateCollectionRequest* req,
                                   v1::CollectionInfo* resp) override {
    return b_->Run(ctx, Role::kAdmin, "Collections/Create", [req, resp](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(CollectionConfig config, FromProto(req->config()));
      CAIRN_ASSIGN_OR_RETURN(auto c, db.CreateCollection(req->name(), config));
      CAIRN_ASSIGN_OR_RETURN(CollectionInfo info, c->Info());
      ToProto(info, resp);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx,
                                const v1::GetCollectionRequest* req,
                                v1::CollectionInfo* resp) override {
    return b_->Run(ctx, Role::kRead, "Collections/Get", [req, resp](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(auto c, Open(db, req->name()));
      CAIRN_ASSIGN_OR_RETURN(CollectionInfo info, c->Info());
      ToProto(info, resp);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* ctx,
                                 const v1::ListCollectionsRequest* req,
                                 v1::ListCollectionsResponse* resp) override {
    return b_->Run(ctx, Role::kRead, "Collections/List", [resp](Database& db) -> absl::Status {
      for (const auto& n : db.ListCollections()) resp->add_names(n);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx,
                                   const v1::DeleteCollectionRequest* req,
                                   v1::DeleteCollectionResponse* resp) override {
    return b_->Run(ctx, Role::kAdmin, "Collections/Delete", [req](Database& db) { return db.DropCollection(req->name()); });
  }

  grpc::ServerUnaryReactor* Update(grpc::CallbackServerContext* ctx,
                                   const v1::UpdateCollectionRequest* req,
                                   v1::CollectionInfo* resp) override {
    return b_->Run(ctx, Role::kAdmin, "Collections/Update", [req, resp](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(auto c, Open(db, req->name()));
      CollectionConfig config = c->config();
      auto clamp = [](uint64_t v) { return v > (1u << 30) ? (1 << 30) : static_cast<int>(v); };
      if (req->has_ef_search()) config.index.ef_search = clamp(req->ef_search());
      if (req->has_nprobe()) config.index.nprobe = clamp(req->nprobe());
      if (req->has_rerank_factor()) config.index.rerank_factor = clamp(req->rerank_factor());
      if (req->has_seal_threshold()) config.seal_threshold = req->seal_threshold();
      if (req->has_compaction_deleted_ratio()) config.compaction_deleted_ratio = req->compaction_deleted_ratio();
      if (req->has_replication_factor()) config.replication_factor = req->replication_factor();
      if (req->has_split_points()) config.split_points = req->split_points();
      CAIRN_RETURN_IF_ERROR(c->UpdateConfig(config));
      CAIRN_ASSIGN_OR_RETURN(CollectionInfo info, c->Info());
      ToProto(info, resp);
      return absl::OkStatus();
    });
  }

 private:
  Backend* b_;
};

// Client-streaming upsert: each message is applied (durably) before the next
// is read, so a failure leaves exactly the earlier batches applied.
class UpsertStreamReactor final : public grpc::ServerReadReactor<v1::UpsertRequest> {
 public:
  UpsertStreamReactor(Backend* b, Database* db, v1::UpsertResponse* resp)
      : b_(b), db_(db), resp_(resp), t0_(std::chrono::steady_clock::now()) {
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client has sent everything
      Done(grpc::Status::OK);
      return;
    }
    bool queued = b_->writes->Submit([this] {
      absl::Status s = Apply();
      if (!s.ok()) {
        Done(ToGrpc(absl::Status(s.code(), absl::StrCat("message ", messages_, " (", AppliedSoFar(), "): ",
                                                        s.message()))));
        return;
      }
      ++messages_;
      StartRead(&req_);
    });
    if (!queued) {
      const grpc::Status o = Overloaded();
      Done(grpc::Status(o.error_code(), absl::StrCat(o.error_message(), "; message ", messages_, " was not applied (",
                                                     AppliedSoFar(), ")")));
    }
  }

  void OnDone() override {
    Backend* b = b_;
    delete this;
    b->Leave();
  }

 private:
  void Done(const grpc::Status& s) {
    b_->metrics.Record("Points/UpsertStream", static_cast<int>(s.error_code()),
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count());
    Finish(s);
  }
  // What a failed stream's status says was applied (a failed call returns
  // no response message).
  std::string AppliedSoFar() const {
    const uint64_t points = resp_->points();
    return absl::StrCat("counting from 0; applied before it: ", messages_, messages_ == 1 ? " message, " : " messages, ",
                        points, points == 1 ? " point" : " points");
  }
  absl::Status Apply() {
    CAIRN_ASSIGN_OR_RETURN(auto c, Open(*db_, req_.collection()));
    CAIRN_ASSIGN_OR_RETURN(std::vector<Point> points, FromProto(req_));
    CAIRN_RETURN_IF_ERROR(c->Upsert(points));
    resp_->set_points(resp_->points() + points.size());
    b_->metrics.AddPointsUpserted(points.size());
    return absl::OkStatus();
  }

  Backend* b_;
  Database* db_;
  v1::UpsertResponse* resp_;
  std::chrono::steady_clock::time_point t0_;
  v1::UpsertRequest req_;
  uint64_t messages_ = 0;
};

class PointsService final : public v1::Points::CallbackService {
 public:
  explicit PointsService(Backend* b) : b_(b) {}

  grpc::ServerUnaryReactor* Upsert(grpc::CallbackServerContext* ctx, const v1::UpsertRequest* req,
                                   v1::UpsertResponse* resp) override {
    Backend* b = b_;
    return b_->Run(ctx, Role::kWrite, "Points/Upsert", [b, req, resp](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(auto c, Open(db, req->collection()));
      CAIRN_ASSIGN_OR_RETURN(std::vector<Point> points, FromProto(*req));
      CAIRN_RETURN_IF_ERROR(c->Upsert(points));
      resp->set_points(points.size());
      b->metrics.AddPointsUpserted(points.size());
      return absl::OkStatus();
    });
  }

  grpc::ServerReadReactor<v1::UpsertRequest>* UpsertStream(grpc::CallbackServerContext* ctx,
                                                           v1::UpsertResponse* resp) override {
    using Refuse = Refusal<grpc::ServerReadReactor<v1::UpsertRequest>>;
    if (grpc::Status auth = b_->Authorize(ctx, Role::kWrite); !auth.ok()) return new Refuse(auth);
    Database* db = b_->db.load();
    if (db == nullptr) {
      return new Refuse(Loading());
    }
    if (!b_->Enter()) {
      return new Refuse(ShuttingDown());
    }
    return new UpsertStreamReactor(b_, db, resp);
  }

  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx, const v1::GetPointsRequest* req,
                                v1::GetPointsResponse* resp) override {
    return b_->Run(ctx, Role::kRead, "Points/Get", [req, resp](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(auto c, Open(db, req->collection()));
      CAIRN_ASSIGN_OR_RETURN(auto ids, FromProto(req->ids(), "ids"));
      CAIRN_ASSIGN_OR_RETURN(ReadOptions read,
                             ReadOptionsFromProto(req->consistency(), req->max_staleness_ms(), "get"));
      CAIRN_ASSIGN_OR_RETURN(auto records, c->Get(ids, req->with_payload(), req->with_vector(), read));
      for (const auto& r : records) {
        auto* l = resp->add_results();
        l->set_found(r.has_value());
        if (r) ToProto(*r, l->mutable_record());
      }
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx,
                                   const v1::DeletePointsRequest* req,
                                   v1::DeletePointsResponse* resp) override {
    return b_->Run(ctx, Role::kWrite, "Points/Delete", [req, resp](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(auto c, Open(db, req->collection()));
      CAIRN_ASSIGN_OR_RETURN(auto filter, FromProto(req->filter(), req->has_filter()));
      if (filter && req->ids_size() > 0) {
        return absl::InvalidArgumentError("delete: give ids or a filter, not both");
      }
      if (filter) {
        CAIRN_ASSIGN_OR_RETURN(uint64_t n, c->DeleteByFilter(*filter));
        resp->set_deleted(n);
        return absl::OkStatus();
      }
      if (req->ids_size() == 0) return absl::InvalidArgumentError("delete: give ids or a non-empty filter");
      CAIRN_ASSIGN_OR_RETURN(auto ids, FromProto(req->ids(), "ids"));
      CAIRN_ASSIGN_OR_RETURN(uint64_t n, c->Delete(ids));
      resp->set_deleted(n);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* SetPayload(grpc::CallbackServerContext* ctx,
                                       const v1::SetPayloadRequest* req,
                                       v1::SetPayloadResponse* resp) override {
    return b_->Run(ctx, Role::kWrite, "Points/SetPayload", [req](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(auto c, Open(db, req->collection()));
      CAIRN_ASSIGN_OR_RETURN(auto ids, FromProto(req->ids(), "ids"));
      CAIRN_ASSIGN_OR_RETURN(std::string payload, StructToJson(req->payload(), "payload"));
      return req->overwrite() ? c->OverwritePayload(ids, payload) : c->SetPayload(ids, payload);
    });
  }

  grpc::ServerUnaryReactor* Count(grpc::CallbackServerContext* ctx, const v1::CountRequest* req,
                                  v1::CountResponse* resp) override {
    return b_->Run(ctx, Role::kRead, "Points/Count", [req, resp](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(auto c, Open(db, req->collection()));
      CAIRN_ASSIGN_OR_RETURN(auto filter, FromProto(req->filter(), req->has_filter()));
      CAIRN_ASSIGN_OR_RETURN(ReadOptions read,
                             ReadOptionsFromProto(req->consistency(), req->max_staleness_ms(), "count"));
      CAIRN_ASSIGN_OR_RETURN(uint64_t n, c->Count(filter ? &*filter : nullptr, read));
      resp->set_count(n);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* Scroll(grpc::CallbackServerContext* ctx, const v1::ScrollRequest* req,
                                   v1::ScrollResponse* resp) override {
    return b_->Run(ctx, Role::kRead, "Points/Scroll", [req, resp](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(auto c, Open(db, req->collection()));
      CAIRN_ASSIGN_OR_RETURN(auto filter, FromProto(req->filter(), req->has_filter()));
      ScrollRequest sr;
      sr.cursor = req->cursor();
      sr.limit = req->limit() == 0 ? 100 : req->limit();
      sr.filter = filter ? &*filter : nullptr;
      sr.with_payload = req->with_payload();
      sr.with_vector = req->with_vector();
      CAIRN_ASSIGN_OR_RETURN(ReadOptions read,
                             ReadOptionsFromProto(req->consistency(), req->max_staleness_ms(), "scroll"));
      sr.consistency = read.consistency;
      sr.max_staleness_ms = read.max_staleness_ms;
      CAIRN_ASSIGN_OR_RETURN(ScrollPage page, c->Scroll(sr));
      for (const auto& r : page.points) ToProto(r, resp->add_points());
      resp->set_next_cursor(page.next_cursor);
      return absl::OkStatus();
    });
  }

 private:
  Backend* b_;
};

class SearchService final : public v1::Search::CallbackService {
 public:
  explicit SearchService(Backend* b) : b_(b) {}

  grpc::ServerUnaryReactor* Search(grpc::CallbackServerContext* ctx, const v1::SearchRequest* req,
                                   v1::SearchResponse* resp) override {
    return b_->Run(ctx, Role::kRead, "Search/Search", [req, resp](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(auto c, Open(db, req->collection()));
      SearchParams params;
      CAIRN_RETURN_IF_ERROR(FromProto(req->params(), &params));
      CAIRN_ASSIGN_OR_RETURN(auto filter, FromProto(req->params().filter(), req->params().has_filter()));
      params.filter = filter ? &*filter : nullptr;
      CAIRN_ASSIGN_OR_RETURN(auto hits, c->Search(req->vector(), params));
      for (const auto& h : hits) ToProto(h, resp->add_hits());
      return absl::OkStatus();
    }, /*inline_ok=*/!req->params().has_filter() && !req->params().exact() && req->params().k() <= 100 &&
                         req->params().ef() <= 512);
  }

  grpc::ServerUnaryReactor* SearchBatch(grpc::CallbackServerContext* ctx,
                                        const v1::SearchBatchRequest* req,
                                        v1::SearchBatchResponse* resp) override {
    return b_->Run(ctx, Role::kRead, "Search/SearchBatch", [req, resp](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(auto c, Open(db, req->collection()));
      SearchParams params;
      CAIRN_RETURN_IF_ERROR(FromProto(req->params(), &params));
      CAIRN_ASSIGN_OR_RETURN(auto filter, FromProto(req->params().filter(), req->params().has_filter()));
      params.filter = filter ? &*filter : nullptr;
      CAIRN_ASSIGN_OR_RETURN(auto results, c->SearchBatch(req->vectors(), params));
      for (const auto& hits : results) {
        auto* r = resp->add_results();
        for (const auto& h : hits) ToProto(h, r->add_hits());
      }
      return absl::OkStatus();
    });
  }

 private:
  Backend* b_;
};

class ServerService final : public v1::Server::CallbackService {
 public:
  explicit ServerService(Backend* b) : b_(b) {}

  grpc::ServerUnaryReactor* Info(grpc::CallbackServerContext* ctx, const v1::ServerInfoRequest* req,
                                 v1::ServerInfo* resp) override {
    Backend* b = b_;
    return b_->Run(ctx, Role::kRead, "Server/Info", [b, resp](Database& db) -> absl::Status {
      resp->set_version(kVersion);
      resp->set_format_version(kFormatVersion);
      resp->set_simd(index::SimdLevelName(index::ActiveSimdLevel()));
      resp->set_device(index::gpu::PathSummary(db.options().device));
      for (const auto& n : db.ListCollections()) resp->add_collections(n);
      resp->set_uptime_seconds(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                                         std::chrono::steady_clock::now() - b->started)
                                                         .count()));
      return absl::OkStatus();
    });
  }

 private:
  Backend* b_;
};


class ClusterService final : public v1::Cluster::CallbackService {
 public:
  explicit ClusterService(Backend* b) : b_(b) {}

  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* ctx, const v1::ClusterStatusRequest* req,
                                   v1::ClusterStatusResponse* resp) override {
    return b_->Run(ctx, Role::kRead, "Cluster/Status", [resp](Database& db) -> absl::Status {
      auto* c = dynamic_cast<cluster::Cluster*>(&db);
      if (c == nullptr) {
        resp->set_mode("single-node");
        return absl::OkStatus();
      }
      const cluster::ClusterStatus st = c->Status();
      resp->set_mode("cluster");
      resp->set_cluster_id(st.cluster_id);
      resp->set_node_id(st.node_id);
      resp->set_node_name(st.node_name);
      for (const auto& n : st.nodes) NodeToProto(n, resp->add_nodes());
      for (const auto& o : st.operations) {
        auto* po = resp->add_operations();
        po->set_group(o.group);
        po->set_collection(o.collection);
        po->set_shard(o.shard);
        po->set_kind(o.kind);
        po->set_from_replica(o.from_replica);
        po->set_to_replica(o.to_replica);
        po->set_to_node_id(o.to_node);
        po->set_reason(o.reason);
        po->set_step(o.step);
        po->set_new_group(o.new_group);
      }
      for (const auto& g : st.groups) {
        auto* pg = resp->add_groups();
        pg->set_group(g.group);
        pg->set_collection(g.collection);
        pg->set_shard(g.shard);
        pg->set_leader_node_id(g.leader_node);
        pg->set_term(g.term);
        pg->set_commit(g.commit);
        pg->set_leader_changes(g.leader_changes);
        for (const auto& r : g.replicas) {
          auto* pr = pg->add_replicas();
          pr->set_replica_id(r.replica);
          pr->set_node_id(r.node);
          pr->set_leader(r.leader);
          pr->set_reported(r.reported);
          pr->set_applied(r.applied);
          pr->set_match(r.match);
          pr->set_lag(r.lag);
        }
      }
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* DrainNode(grpc::CallbackServerContext* ctx, const v1::NodeRequest* req,
                                      v1::ClusterNode* resp) override {
    return ChangeNode(ctx, "Cluster/DrainNode", req, resp, &cluster::Cluster::DrainNode);
  }
  grpc::ServerUnaryReactor* ActivateNode(grpc::CallbackServerContext* ctx, const v1::NodeRequest* req,
                                         v1::ClusterNode* resp) override {
    return ChangeNode(ctx, "Cluster/ActivateNode", req, resp, &cluster::Cluster::ActivateNode);
  }
  grpc::ServerUnaryReactor* RemoveNode(grpc::CallbackServerContext* ctx, const v1::NodeRequest* req,
                                       v1::ClusterNode* resp) override {
    return ChangeNode(ctx, "Cluster/RemoveNode", req, resp, &cluster::Cluster::RemoveNode);
  }
  grpc::ServerUnaryReactor* SplitShards(grpc::CallbackServerContext* ctx, const v1::SplitShardsRequest* req,
                                        v1::SplitShardsResponse* resp) override {
    return b_->Run(ctx, Role::kAdmin, "Cluster/SplitShards", [req, resp](Database& db) -> absl::Status {
      auto* c = dynamic_cast<cluster::Cluster*>(&db);
      if (c == nullptr) {
        return absl::FailedPreconditionError(
            "this server runs in single-node mode: a collection's shards are split in a cluster (cairnd --cluster); "
            "here its shard count is set at creation (--shards)");
      }
      if (req->collection().empty()) return absl::InvalidArgumentError("collection: name a collection");
      CAIRN_ASSIGN_OR_RETURN(auto map, c->ShardMapOf(req->collection()));
      CAIRN_RETURN_IF_ERROR(c->SplitCollection(req->collection()));
      resp->set_splitting(static_cast<uint32_t>(map.groups.size()));
      return absl::OkStatus();
    });
  }

 private:
  static void NodeToProto(const cluster::ClusterStatus::Node& n, v1::ClusterNode* pn) {
    pn->set_id(n.id);
    pn->set_name(n.name);
    pn->set_address(n.address);
    pn->set_zone(n.zone);
    pn->set_state(n.state);
    pn->set_reachable(n.reachable);
    pn->set_replicas(n.replicas);
    pn->set_leaders(n.leaders);
    pn->set_bytes(n.bytes);
    pn->set_metadata_voter(n.metadata_voter);
    pn->set_removable(n.removable);
  }
  // Runs `change` on the node named in `req` and answers with the node as
  // the status then shows it.
  grpc::ServerUnaryReactor* ChangeNode(grpc::CallbackServerContext* ctx, const char* method, const v1::NodeRequest* req,
                                       v1::ClusterNode* resp,
                                       absl::Status (cluster::Cluster::*change)(const std::string&)) {
    return b_->Run(ctx, Role::kAdmin, method, [req, resp, change](Database& db) -> absl::Status {
      auto* c = dynamic_cast<cluster::Cluster*>(&db);
      if (c == nullptr) {
        return absl::FailedPreconditionError("this server runs in single-node mode: it has no other nodes");
      }
      if (req->node().empty()) return absl::InvalidArgumentError("node: name a node (its name or id)");
      CAIRN_RETURN_IF_ERROR((c->*change)(req->node()));
      for (const auto& n : c->Status().nodes) {
        if (n.name == req->node() || std::to_string(n.id) == req->node()) {
          NodeToProto(n, resp);
          if (n.state != "removed") break;
        }
      }
      return absl::OkStatus();
    });
  }

  Backend* b_;
};

// Snapshots live in DATA/snapshots/NAME, each a data directory of one
// collection plus snapshot.json ({"collection", "created_unix"}).
namespace fs = std::filesystem;

bool ValidSnapshotName(const std::string& name) {
  if (name.empty() || name.size() > 128 || name[0] == '.' || name[0] == '-') return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  }
  return name.find("..") == std::string::npos;
}

fs::path SnapshotRoot(Database& db) { return fs::path(db.dir()) / "snapshots"; }

absl::StatusOr<v1::SnapshotInfo> ReadSnapshotInfo(const fs::path& dir) {
  CAIRN_ASSIGN_OR_RETURN(std::string text, storage::ReadFile((dir / "snapshot.json").string()));
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return absl::DataLossError(absl::StrCat("malformed ", (dir / "snapshot.json").string()));
  v1::SnapshotInfo info;
  info.set_name(dir.filename().string());
  info.set_collection(j.value("collection", std::string()));
  info.set_created_unix(j.value("created_unix", int64_t{0}));
  uint64_t size = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    if (it->is_regular_file()) size += it->file_size();
  }
  info.set_size_bytes(size);
  return info;
}

// Streams a snapshot's tar archive, one chunk per write, reading on the admin lane.
class DownloadReactor final : public grpc::ServerWriteReactor<v1::SnapshotChunk> {
 public:
  DownloadReactor(Backend* b, TarStream tar) : b_(b), tar_(std::move(tar)) { Produce(); }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    Produce();
  }
  void OnDone() override {
    Backend* b = b_;
    delete this;
    b->Leave();
  }

 private:
  void Produce() {
    bool queued = b_->admin->Submit([this] {
      chunk_.Clear();
      chunk_.set_offset(offset_);
      std::string* data = chunk_.mutable_data();
      auto more = tar_.Next(1 << 20, data);
      if (!more.ok()) {
        Finish(ToGrpc(more.status()));
        return;
      }
      if (!*more) {
        Finish(grpc::Status::OK);
        return;
      }
      offset_ += data->size();
      StartWrite(&chunk_);
    });
    if (!queued) {
      Finish(Overloaded());
    }
  }
  Backend* b_;
  TarStream tar_;
  v1::SnapshotChunk chunk_;
  uint64_t offset_ = 0;
};

class SnapshotsService final : public v1::Snapshots::CallbackService {
 public:
  explicit SnapshotsService(Backend* b) : b_(b) {}

  grpc::ServerUnaryReactor* Create(grpc::CallbackServerContext* ctx, const v1::CreateSnapshotRequest* req,
                                   v1::SnapshotInfo* resp) override {
    return b_->Run(ctx, Role::kAdmin, "Snapshots/Create", [this, req, resp](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(auto c, Open(db, req->collection()));
      (void)c;
      auto now = std::chrono::system_clock::now();
      int64_t unix_secs = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
      std::time_t t = static_cast<std::time_t>(unix_secs);
      std::tm tm{};
      gmtime_r(&t, &tm);
      char stamp[32];
      std::strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
      std::error_code ec;
      fs::create_directories(SnapshotRoot(db), ec);
      fs::path dir;
      do {
        dir = SnapshotRoot(db) / absl::StrCat(req->collection(), "-", stamp, "-", ++counter_);
      } while (fs::exists(dir, ec));
      CAIRN_RETURN_IF_ERROR(db.Snapshot(req->collection(), dir.string()));
      nlohmann::json meta{{"collection", req->collection()}, {"created_unix", unix_secs}};
      CAIRN_RETURN_IF_ERROR(storage::WriteFileAtomic((dir / "snapshot.json").string(), meta.dump() + "\n"));
      CAIRN_ASSIGN_OR_RETURN(*resp, ReadSnapshotInfo(dir));
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* ctx, const v1::ListSnapshotsRequest* req,
                                 v1::ListSnapshotsResponse* resp) override {
    return b_->Run(ctx, Role::kAdmin, "Snapshots/List", [req, resp](Database& db) -> absl::Status {
      std::vector<v1::SnapshotInfo> all;
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(SnapshotRoot(db), ec)) {
        if (!e.is_directory() || !ValidSnapshotName(e.path().filename().string())) continue;
        auto info = ReadSnapshotInfo(e.path());
        if (!info.ok()) continue;  // interrupted: no snapshot.json yet
        if (!req->collection().empty() && info->collection() != req->collection()) continue;
        all.push_back(*std::move(info));
      }
      std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
        return a.created_unix() != b.created_unix() ? a.created_unix() > b.created_unix() : a.name() > b.name();
      });
      for (auto& i : all) *resp->add_snapshots() = std::move(i);
      return absl::OkStatus();
    });
  }

  grpc::ServerWriteReactor<v1::SnapshotChunk>* Download(grpc::CallbackServerContext* ctx,
                                                        const v1::DownloadSnapshotRequest* req) override {
    using Refuse = Refusal<grpc::ServerWriteReactor<v1::SnapshotChunk>>;
    if (grpc::Status auth = b_->Authorize(ctx, Role::kAdmin); !auth.ok()) return new Refuse(auth);
    Database* db = b_->db.load();
    if (db == nullptr) return new Refuse(Loading());
    auto dir = Resolve(*db, req->name());
    if (!dir.ok()) return new Refuse(ToGrpc(dir.status()));
    auto tar = TarStream::Open(dir->string());
    if (!tar.ok()) return new Refuse(ToGrpc(tar.status()));
    if (!b_->Enter()) {
      return new Refuse(ShuttingDown());
    }
    return new DownloadReactor(b_, *std::move(tar));
  }

  grpc::ServerUnaryReactor* Restore(grpc::CallbackServerContext* ctx, const v1::RestoreSnapshotRequest* req,
                                    v1::RestoreSnapshotResponse* resp) override {
    return b_->Run(ctx, Role::kAdmin, "Snapshots/Restore", [req](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(fs::path dir, Resolve(db, req->name()));
      return db.RestoreCollection(dir.string(), req->collection()).status();
    });
  }

  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx, const v1::DeleteSnapshotRequest* req,
                                   v1::DeleteSnapshotResponse* resp) override {
    return b_->Run(ctx, Role::kAdmin, "Snapshots/Delete", [this, req](Database& db) -> absl::Status {
      CAIRN_ASSIGN_OR_RETURN(fs::path dir, Resolve(db, req->name()));
      // Out of sight first (one rename; List skips names starting with '.'),
      // then removed; what an earlier call left half removed goes too.
      std::error_code ec;
      const fs::path doomed = SnapshotRoot(db) / absl::StrCat(".deleting-", req->name(), "-", ++counter_);
      fs::rename(dir, doomed, ec);
      if (ec) return absl::InternalError(absl::StrCat("delete snapshot ", req->name(), ": ", ec.message()));
      for (const auto& e : fs::directory_iterator(SnapshotRoot(db), ec)) {
        if (e.path().filename().string().rfind(".deleting-", 0) == 0) fs::remove_all(e.path(), ec);
      }
      return absl::OkStatus();
    });
  }

 private:
  // The directory of snapshot `name`; never a path outside the snapshot root.
  static absl::StatusOr<fs::path> Resolve(Database& db, const std::string& name) {
    if (!ValidSnapshotName(name)) {
      return absl::InvalidArgumentError(absl::StrCat("\"", name, "\" is not a snapshot name (see Snapshots/List)"));
    }
    fs::path dir = SnapshotRoot(db) / name;
    std::error_code ec;
    if (!fs::exists(dir / "snapshot.json", ec)) {
      return absl::NotFoundError(absl::StrCat("snapshot \"", name, "\" does not exist"));
    }
    return dir;
  }
  Backend* b_;
  std::atomic<uint64_t> counter_{0};
};

}  // namespace

struct CairnServer::Impl {
  ServerOptions options;
  Backend backend;
  std::unique_ptr<Database> db;
  CollectionsService collections{&backend};
  PointsService points{&backend};
  SearchService search{&backend};
  ServerService server_service{&backend};
  SnapshotsService snapshots{&backend};
  ClusterService cluster{&backend};
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<HttpServer> http;
  int http_port = 0;
  std::atomic<bool> draining{false};

  HttpResponse HandleHttp(const std::string& path) {
    Database* database = backend.db.load();
    bool ready = database != nullptr && !draining.load();
    if (path == "/healthz") return {200, "text/plain; charset=utf-8", "ok\n"};
    if (path == "/readyz") {
      return ready ? HttpResponse{200, "text/plain; charset=utf-8", "ready\n"}
                   : HttpResponse{503, "text/plain; charset=utf-8",
                                  draining.load() ? "draining\n" : "loading\n"};
    }
    if (path != "/metrics") return {404, "text/plain; charset=utf-8", "not found: try /metrics, /healthz, /readyz\n"};
    std::string out;
    absl::StrAppend(&out, "# HELP cairn_build_info Build of this server.\n# TYPE cairn_build_info gauge\n",
                    "cairn_build_info{version=\"", kVersion, "\",simd=\"",
                    index::SimdLevelName(index::ActiveSimdLevel()), "\",format_version=\"", kFormatVersion,
                    "\"} 1\n");
    absl::StrAppend(&out, "# HELP cairn_ready 1 when serving, 0 while loading or draining.\n",
                    "# TYPE cairn_ready gauge\ncairn_ready ", ready ? 1 : 0, "\n");
    absl::StrAppend(&out, "# HELP cairn_uptime_seconds Seconds since start.\n# TYPE cairn_uptime_seconds gauge\n",
                    "cairn_uptime_seconds ",
                    std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() -
                                                                     backend.started).count(),
                    "\n");
    backend.metrics.AppendPrometheus(&out);
    const index::gpu::UseCounts gpu_use = index::gpu::GetUseCounts();
    absl::StrAppend(
        &out, "# HELP cairn_gpu_available 1 when a usable GPU can serve this server's indexes (see Server/Info).\n",
        "# TYPE cairn_gpu_available gauge\ncairn_gpu_available ", index::gpu::ProcessDevice().ok() ? 1 : 0, "\n",
        "# HELP cairn_gpu_memory_bytes Device memory held by GPU copies of segments.\n",
        "# TYPE cairn_gpu_memory_bytes gauge\ncairn_gpu_memory_bytes ", index::gpu::ProcessMemoryInUse(), "\n",
        "# HELP cairn_gpu_segment_searches_total Segment searches served by the GPU.\n",
        "# TYPE cairn_gpu_segment_searches_total counter\ncairn_gpu_segment_searches_total ", gpu_use.searches, "\n",
        "# HELP cairn_gpu_search_fallbacks_total GPU searches that failed and were served by the CPU.\n",
        "# TYPE cairn_gpu_search_fallbacks_total counter\ncairn_gpu_search_fallbacks_total ", gpu_use.fallbacks,
        "\n");
    if (database != nullptr) {
      const NodeMemory m = database->Memory();
      absl::StrAppend(
          &out, "# HELP cairn_memory_limit_bytes The memory limit upserts are admitted under (0: none).\n",
          "# TYPE cairn_memory_limit_bytes gauge\ncairn_memory_limit_bytes ", m.limit_bytes, "\n",
          "# HELP cairn_memory_bytes What the collections (a cluster node: its replicas) hold, as the limit "
          "counts it: indexes, and storage (RocksDB blocks, memtables, table readers).\n",
          "# TYPE cairn_memory_bytes gauge\ncairn_memory_bytes{kind=\"index\"} ", m.index_bytes,
          "\ncairn_memory_bytes{kind=\"storage\"} ", m.storage_bytes, "\n",
          "# HELP cairn_storage_cache_bytes Blocks in the block cache every shard's RocksDB shares.\n",
          "# TYPE cairn_storage_cache_bytes gauge\ncairn_storage_cache_bytes ", m.storage_cache_bytes, "\n",
          "# HELP cairn_storage_cache_capacity_bytes The shared block cache's size, which bounds the memtables too.\n",
          "# TYPE cairn_storage_cache_capacity_bytes gauge\ncairn_storage_cache_capacity_bytes ",
          m.storage_cache_capacity_bytes, "\n");
    }
    if (auto* c = dynamic_cast<cluster::Cluster*>(database)) {
      // The groups this node hosts, from its own loop: cheap, and answered
      // even when a shard has no quorum.
      c->AppendPrometheus(&out);
    } else if (database != nullptr) {
      std::string points, segments, sealed, deleted, memory, storage, gpu_segments, unindexed;
      for (const auto& name : database->ListCollections()) {
        auto info = database->DescribeCollection(name);
        if (!info.ok()) continue;
        std::string label = absl::StrCat("{collection=\"", name, "\"} ");
        absl::StrAppend(&points, "cairn_collection_points", label, info->points, "\n");
        absl::StrAppend(&segments, "cairn_collection_segments", label, info->segments, "\n");
        absl::StrAppend(&sealed, "cairn_collection_sealed_segments", label, info->sealed_segments, "\n");
        absl::StrAppend(&deleted, "cairn_collection_deleted_in_segments", label, info->deleted_in_segments, "\n");
        absl::StrAppend(&memory, "cairn_collection_index_memory_bytes", label, info->index_memory_bytes, "\n");
        absl::StrAppend(&storage, "cairn_collection_storage_memory_bytes", label, info->storage_memory_bytes, "\n");
        absl::StrAppend(&gpu_segments, "cairn_collection_gpu_segments", label, info->gpu_segments, "\n");
        absl::StrAppend(&unindexed, "cairn_collection_unindexed_points", label, info->unindexed_points, "\n");
      }
      absl::StrAppend(&out, "# HELP cairn_collection_points Live points per collection.\n",
                      "# TYPE cairn_collection_points gauge\n", points,
                      "# HELP cairn_collection_segments Segments (growing and sealed) per collection.\n",
                      "# TYPE cairn_collection_segments gauge\n", segments,
                      "# HELP cairn_collection_sealed_segments Sealed segments per collection.\n",
                      "# TYPE cairn_collection_sealed_segments gauge\n", sealed,
                      "# HELP cairn_collection_deleted_in_segments Tombstones not yet compacted.\n",
                      "# TYPE cairn_collection_deleted_in_segments gauge\n", deleted,
                      "# HELP cairn_collection_index_memory_bytes Resident index memory (estimate).\n",
                      "# TYPE cairn_collection_index_memory_bytes gauge\n", memory,
                      "# HELP cairn_collection_storage_memory_bytes RocksDB memtables, table readers, block cache.\n",
                      "# TYPE cairn_collection_storage_memory_bytes gauge\n", storage,
                      "# HELP cairn_collection_gpu_segments Sealed segments searched on a GPU copy.\n",
                      "# TYPE cairn_collection_gpu_segments gauge\n", gpu_segments,
                      "# HELP cairn_collection_unindexed_points Points written and not yet indexed (searched exactly).\n",
                      "# TYPE cairn_collection_unindexed_points gauge\n", unindexed);
    }
    return {200, "text/plain; version=0.0.4; charset=utf-8", out};
  }
};

int CairnServer::http_port() const { return impl_->http_port; }

CairnServer::CairnServer(ServerOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  int threads = impl_->options.worker_threads > 0
                    ? impl_->options.worker_threads
                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int queued = impl_->options.max_queued_requests;
  impl_->backend.reads = std::make_unique<WorkerPool>(threads, queued);
  impl_->backend.writes = std::make_unique<WorkerPool>(threads, queued);
  impl_->backend.admin = std::make_unique<WorkerPool>(std::min(threads, 2), queued);
  if (impl_->options.api_keys) {
    impl_->backend.keys = std::make_shared<const ApiKeys>(*impl_->options.api_keys);
  }
}

CairnServer::~CairnServer() { Shutdown(std::chrono::milliseconds(0)); }

absl::StatusOr<int> CairnServer::Start() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  const ServerOptions& o = impl_->options;
  if (!o.tls_cert_pem.empty() || !o.tls_key_pem.empty()) {
    if (o.tls_cert_pem.empty() || o.tls_key_pem.empty()) {
      return absl::InvalidArgumentError("TLS needs both a certificate and its private key");
    }
    grpc::SslServerCredentialsOptions ssl(o.tls_client_ca_pem.empty()
                                              ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = o.tls_client_ca_pem;
    ssl.pem_key_cert_pairs.push_back({o.tls_key_pem, o.tls_cert_pem});
    creds = grpc::SslServerCredentials(ssl);
  } else if (!o.tls_client_ca_pem.empty()) {
    return absl::InvalidArgumentError("mTLS (a client CA) needs TLS: give a certificate and key too");
  }
  // gRPC sets SO_REUSEPORT by default on Linux: a second server on the same
  // port would start, and clients would reach either at random.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(o.listen, creds, &port);
  builder.SetMaxReceiveMessageSize(impl_->options.max_request_bytes);
  builder.RegisterService(&impl_->collections);
  builder.RegisterService(&impl_->points);
  builder.RegisterService(&impl_->search);
  builder.RegisterService(&impl_->server_service);
  builder.RegisterService(&impl_->snapshots);
  builder.RegisterService(&impl_->cluster);
  impl_->server = builder.BuildAndStart();
  if (impl_->server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", impl_->options.listen,
                                               " (in use, or not an address of this host?)"));
  }
  // The server as a whole ("") and each service by name; SetServingStatus(bool)
  // below switches them all.
  for (const char* name : {"cairn.v1.Collections", "cairn.v1.Points", "cairn.v1.Search", "cairn.v1.Server",
                           "cairn.v1.Snapshots"}) {
    impl_->server->GetHealthCheckService()->SetServingStatus(name, false);
  }
  impl_->server->GetHealthCheckService()->SetServingStatus(false);
  if (!o.http_listen.empty()) {
    impl_->http = std::make_unique<HttpServer>([impl = impl_.get()](const std::string& path) {
      return impl->HandleHttp(path);
    });
    auto http_port = impl_->http->Start(o.http_listen);
    if (!http_port.ok()) {
      impl_->server->Shutdown();
      impl_->server.reset();
      return http_port.status();
    }
    impl_->http_port = *http_port;
  }
  return port;
}

void CairnServer::Serve(std::unique_ptr<Database> db) {
  impl_->db = std::move(db);
  impl_->backend.clustered = dynamic_cast<cluster::Cluster*>(impl_->db.get()) != nullptr;
  impl_->backend.db.store(impl_->db.get());
  impl_->server->GetHealthCheckService()->SetServingStatus(true);
}

void CairnServer::StopReady() {
  impl_->draining = true;
  if (impl_->server) impl_->server->GetHealthCheckService()->SetServingStatus(false);
}

absl::Status CairnServer::SetApiKeys(ApiKeys keys) {
  if (!impl_->backend.keys.load()) {
    return absl::FailedPreconditionError("this server runs without API keys; it cannot take new ones");
  }
  impl_->backend.keys = std::make_shared<const ApiKeys>(std::move(keys));
  return absl::OkStatus();
}

void CairnServer::Shutdown(std::chrono::milliseconds grace) {
  StopReady();
  if (impl_->server) {
    // Let calls in flight finish (refusing new ones), then stop gRPC with a
    // short flush window: waiting in gRPC's own Shutdown also waits out idle
    // client connections, seconds for nothing.
    auto deadline = std::chrono::steady_clock::now() + grace;
    impl_->backend.Drain(deadline);
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    auto flush = std::clamp(left, std::chrono::milliseconds(0), std::chrono::milliseconds(500));
    impl_->server->Shutdown(std::chrono::system_clock::now() + flush);
    impl_->server.reset();
  }
  // Each runs what was queued, then joins.
  impl_->backend.reads.reset();
  impl_->backend.writes.reset();
  impl_->backend.admin.reset();
  impl_->backend.db.store(nullptr);
  if (impl_->http) impl_->http->Stop();
  impl_->db.reset();
}

}  // namespace cairn::api
