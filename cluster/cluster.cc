#include "cluster/cluster.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <random>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cairn/status.h"
#include "cluster/placement.h"
#include "db/collection_impl.h"
#include "db/config_codec.h"
#include "db/shard_command.h"
#include "db/snapshot_dir.h"
#include "grpcpp/grpcpp.h"
#include "storage/byte_codec.h"
#include "storage/file_util.h"

namespace cairn::cluster {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr char kMembershipKey[] = "membership";

void Log(const std::string& what) { std::fprintf(stderr, "cairn: cluster: %s\n", what.c_str()); }

// Errors a retry (on this replica or another) may cure.
bool Retryable(const absl::Status& s) {
  // A shard split since is not asked again: the caller routes anew.
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsCancelled(s) ||
         (absl::IsAborted(s) && !db::IsMovedBySplit(s));
}

absl::Status FromShardResponse(const pb::ShardResponse& r) {
  if (r.code() == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(r.code()), r.message());
}

void SetStatus(const absl::Status& s, pb::ShardResponse* r) {
  r->set_code(static_cast<int32_t>(s.code()));
  r->set_message(std::string(s.message()));
}

const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

// Calls `attempt` until it succeeds or fails in a way `retry` says a retry
// cannot cure, pausing 10 ms, doubling to 200 ms, between attempts, until
// `deadline`; then its last answer.
template <typename Fn, typename Pred = bool (*)(const absl::Status&)>
auto RetryUntil(Clock::time_point deadline, Fn attempt, Pred retry = Retryable) -> decltype(attempt()) {
  decltype(attempt()) last = absl::DeadlineExceededError("not tried before the deadline");
  auto backoff = std::chrono::milliseconds(10);
  while (Clock::now() < deadline) {
    last = attempt();
    if (last.ok() || !retry(StatusOf(last))) return last;
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline - Clock::now()));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(200));
  }
  return last;
}

std::string HostOf(const std::string& address) {
  auto colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

}  // namespace

// ---- a small pool for peer requests that must not run on gRPC's threads --

class Cluster::Executor {
 public:
  explicit Executor(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~Executor() {
    {
      std::lock_guard l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void Post(std::function<void()> fn) {
    {
      std::lock_guard l(mu_);
      queue_.push_back(std::move(fn));
    }
    cv_.notify_one();
  }

 private:
  void Run() {
    std::unique_lock l(mu_);
    while (true) {
      cv_.wait(l, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      auto fn = std::move(queue_.front());
      queue_.pop_front();
      l.unlock();
      fn();
      l.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// ---- one replica of one shard on this node -----------------------------------

class ShardReplica final : public raft::StateMachine {
 public:
  ShardReplica(uint64_t group, uint64_t replica, std::string collection, std::string dir, db::ShardOptions options,
               std::unique_ptr<db::Shard> shard)
      : group_(group),
        replica_(replica),
        collection_(std::move(collection)),
        dir_(std::move(dir)),
        options_(std::move(options)),
        shard_(std::move(shard)) {}

  absl::Status Apply(const std::vector<raft::Entry>& entries,
                     std::vector<absl::StatusOr<uint64_t>>* results) override {
    CAIRN_ASSIGN_OR_RETURN(auto shard, Serving());
    std::vector<db::ShardCommand> cmds;
    cmds.reserve(entries.size());
    std::vector<db::Shard::LogEntry> log;
    log.reserve(entries.size());
    for (const auto& e : entries) {
      db::Shard::LogEntry le{e.index, nullptr};
      if (e.type == raft::EntryType::kNormal && !e.data.empty()) {
        auto c = db::ShardCommand::Decode(e.data);
        if (!c.ok()) return absl::DataLossError(absl::StrCat("entry ", e.index, ": ", c.status().message()));
        cmds.push_back(*std::move(c));
      }
      log.push_back(le);
    }
    // Pointers into cmds once it no longer grows.
    size_t next = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
      if (entries[i].type == raft::EntryType::kNormal && !entries[i].data.empty()) log[i].command = &cmds[next++];
    }
    std::vector<db::Shard::ApplyResult> res;
    // A split: the entries before it are applied first, then the new group's
    // first state is copied from the shard as they left it.
    // (A split proposed again may come twice in one call: the copy is the
    // first one's, on every replica alike.)
    size_t from = 0;
    std::set<uint64_t> copied;
    for (size_t i = 0; i < log.size(); ++i) {
      const db::ShardCommand* c = log[i].command;
      if (c == nullptr || c->kind != db::ShardCommand::Kind::kSplit || log[i].index <= shard->applied_index()) continue;
      if (shard->split_record().child_group == c->child_group || !copied.insert(c->child_group).second) continue;
      std::vector<db::Shard::ApplyResult> part;
      CAIRN_RETURN_IF_ERROR(shard->Apply({log.begin() + from, log.begin() + i}, &part));
      res.insert(res.end(), part.begin(), part.end());
      from = i;
      CAIRN_RETURN_IF_ERROR(WriteSplitChild(*shard, *c));
    }
    {
      std::vector<db::Shard::ApplyResult> part;
      CAIRN_RETURN_IF_ERROR(shard->Apply({log.begin() + from, log.end()}, &part));
      res.insert(res.end(), part.begin(), part.end());
    }
    for (const auto& r : res) {
      if (r.status.ok()) {
        results->push_back(r.count);
      } else {
        results->push_back(r.status);
      }
    }
    return absl::OkStatus();
  }
  uint64_t AppliedIndex() const override {
    auto shard = Serving();
    return shard.ok() ? (*shard)->applied_index() : 0;
  }
  // Installs the files the snapshot's descriptor names, which the
  // SnapshotReceiver staged and verified beside the replica's directory.
  absl::Status Restore(const raft::Snapshot& snapshot) override {
    if (snapshot.data.empty()) {
      // The group's first state (empty), or a snapshot this replica made of
      // itself, whose data its files already hold.
      if (snapshot.meta.index <= 1 || AppliedIndex() >= snapshot.meta.index) return absl::OkStatus();
      return absl::FailedPreconditionError(absl::StrCat("group ", group_, ": a snapshot at ", snapshot.meta.index,
                                                        " without files, and the replica is behind it"));
    }
    CAIRN_ASSIGN_OR_RETURN(SnapshotDescriptor desc, SnapshotDescriptor::Decode(snapshot.data));
    const std::string staged = dir_ + ".staged";
    if (!IsStagedComplete(staged, desc.id)) {
      return absl::FailedPreconditionError(absl::StrCat("group ", group_, ": the files of snapshot ", desc.id,
                                                        " are not staged in ", staged));
    }
    std::shared_ptr<db::Shard> old;
    {
      std::lock_guard l(mu_);
      old = std::move(shard_);
    }
    // Requests that hold the old files finish first (they are short).
    for (int i = 0; i < 1000 && old && old.use_count() > 1; ++i) std::this_thread::sleep_for(10ms);
    old.reset();
    CAIRN_RETURN_IF_ERROR(InstallStaged(staged, dir_));
    CAIRN_ASSIGN_OR_RETURN(auto opened, db::Shard::Open(dir_, options_));
    std::lock_guard l(mu_);
    shard_ = std::move(opened);
    return absl::OkStatus();
  }
  absl::StatusOr<Compaction> PrepareCompaction() override {
    CAIRN_ASSIGN_OR_RETURN(auto shard, Serving());
    // The files are the snapshot: the log's snapshot needs no data.
    CAIRN_ASSIGN_OR_RETURN(uint64_t durable, shard->SyncApplied());
    return Compaction{durable, {}};
  }
  // A copy of the replica's files in `dir` (a new directory), for a snapshot.
  absl::Status Checkpoint(const std::string& dir) const {
    CAIRN_ASSIGN_OR_RETURN(auto shard, Serving());
    return db::Shard::SnapshotAll({shard.get()}, {dir});
  }

  // Where a split's new group `child` finds its first state on this node.
  static std::string SplitChildDir(const std::string& groups_dir, uint64_t child) {
    return (fs::path(groups_dir) / absl::StrCat(child, ".split")).string();
  }

  // The shard, or Unavailable while a snapshot is being installed.
  absl::StatusOr<std::shared_ptr<db::Shard>> Serving() const {
    std::lock_guard l(mu_);
    if (!shard_) {
      return absl::UnavailableError(absl::StrCat("the replica of group ", group_, " is installing a snapshot; retry"));
    }
    return shard_;
  }
  uint64_t group() const { return group_; }
  uint64_t replica() const { return replica_; }
  const std::string& collection() const { return collection_; }
  const std::string& dir() const { return dir_; }
  // The bytes of its files, as of the last MeasureBytes.
  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }
  void MeasureBytes() {
    uint64_t total = 0;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(dir_, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      std::error_code fec;
      if (it->is_regular_file(fec)) total += it->file_size(fec);
    }
    bytes_.store(total, std::memory_order_relaxed);
  }
  // This replica votes in its group: it holds what was committed before it
  // joined, so it may serve reads. (A replica added by a move is a learner
  // until it has caught up.)
  bool voter_seen() const { return voter_seen_.load(std::memory_order_acquire); }
  void set_voter_seen() { voter_seen_.store(true, std::memory_order_release); }

 private:
  // Takes the copy of the shard split `c`'s new group starts from, beside
  // this replica: the shard as it is (hard links), with a note of the class
  // the new group keeps (PrepareSplitCopy reads it where the copy is opened,
  // off the apply path).
  absl::Status WriteSplitChild(db::Shard& shard, const db::ShardCommand& c) const {
    const std::string final_dir = SplitChildDir(fs::path(dir_).parent_path().string(), c.child_group);
    const std::string tmp = final_dir + ".tmp";
    std::error_code ec;
    fs::remove_all(tmp, ec);
    CAIRN_RETURN_IF_ERROR(db::Shard::SnapshotAll({&shard}, {tmp}));
    CAIRN_RETURN_IF_ERROR(storage::WriteFileAtomic((fs::path(tmp) / kSplitNote).string(),
                                                   absl::StrCat(c.child.modulus, " ", c.child.residue)));
    fs::remove_all(final_dir, ec);
    fs::rename(tmp, final_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
    return storage::SyncDir(fs::path(dir_).parent_path().string());
  }

 public:
  // The class a split's copy in `dir` keeps (its note), or every key ({})
  // for a directory that is no such copy, or no longer one.
  static absl::StatusOr<db::HashClass> SplitCopyClass(const std::string& dir) {
    const std::string note = (fs::path(dir) / kSplitNote).string();
    if (!fs::exists(note)) return db::HashClass{};
    CAIRN_ASSIGN_OR_RETURN(std::string text, storage::ReadFile(note));
    uint32_t modulus = 0, residue = 0;
    std::vector<std::string> parts = absl::StrSplit(text, ' ');
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &modulus) || !absl::SimpleAtoi(parts[1], &residue) ||
        modulus == 0 || residue >= modulus) {
      return absl::DataLossError(absl::StrCat("malformed ", note));
    }
    return db::HashClass{modulus, residue};
  }
  // A copy a split took (WriteSplitChild), opened as `shard` in `dir` with
  // load_class = cls = SplitCopyClass(dir): keeps the class in it and sets
  // its applied index to 1 (the group's log starts over, from a first state
  // at 1), then drops the note. Nothing to do for any other shard (cls {}).
  // Done again after a crash before the note goes.
  static absl::Status PrepareSplitCopy(db::Shard& shard, const std::string& dir, db::HashClass cls) {
    if (cls.modulus == 0) return absl::OkStatus();
    CAIRN_RETURN_IF_ERROR(shard.KeepHashClass(cls, 1));
    CAIRN_RETURN_IF_ERROR(shard.SyncApplied().status());
    const std::string note = (fs::path(dir) / kSplitNote).string();
    std::error_code ec;
    fs::remove(note, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot remove ", note, ": ", ec.message()));
    return storage::SyncDir(dir);
  }

 private:
  static constexpr char kSplitNote[] = "split-copy";

  std::atomic<uint64_t> bytes_{0};
  std::atomic<bool> voter_seen_{false};
  const uint64_t group_;
  const uint64_t replica_;
  const std::string collection_;
  const std::string dir_;
  const db::ShardOptions options_;
  mutable std::mutex mu_;
  std::shared_ptr<db::Shard> shard_;  // guarded by mu_; null while installing a snapshot
};

namespace {

// A shard of a replicated collection, reached through its Raft group.
//
// A write its group refuses because the shard was split meanwhile
// (MovedBySplitError: the command changed nothing) is sent again, once this
// node knows the new shard map, to the shards that now hold its ids; a read
// refused so fails with that error, and the collection retries it whole with
// the new map (ClusterCollection).
class ReplicatedShard final : public db::ShardAccess {
 public:
  // `cls`: the class of ids it holds; `recorded`: as the group's replicas
  // record it (ShardGroup::cls).
  ReplicatedShard(Cluster* cluster, const std::string& collection, uint32_t shard, uint64_t group,
                  db::HashClass cls, db::HashClass recorded)
      : cluster_(cluster), collection_(collection), group_(group), cls_(cls), recorded_(recorded),
        what_(What(collection, shard, group)) {}

  absl::Status Upsert(std::vector<db::PreparedPoint> points) override {
    return Routed<db::PreparedPoint>(group_, recorded_, what_, std::move(points),
                                     [](const db::PreparedPoint& p) { return p.ext_key; },
                                     [](std::vector<db::PreparedPoint> part) {
                                       db::ShardCommand c;
                                       c.kind = db::ShardCommand::Kind::kUpsert;
                                       c.points = std::move(part);
                                       return c;
                                     })
        .status();
  }
  absl::StatusOr<uint64_t> Delete(const std::vector<std::string>& ext_keys) override {
    db::ShardCommand c;
    c.kind = db::ShardCommand::Kind::kDelete;
    return RoutedKeys(c, ext_keys);
  }
  absl::StatusOr<uint64_t> DeleteByFilter(const Filter& filter) override {
    return DeleteByFilterIn(group_, recorded_, cls_, what_, filter.ToJson());
  }
  absl::Status SetPayload(const std::vector<std::string>& ext_keys, const db::Json& payload,
                          bool overwrite) override {
    db::ShardCommand c;
    c.kind = db::ShardCommand::Kind::kSetPayload;
    c.payload = payload;
    c.overwrite = overwrite;
    return RoutedKeys(c, ext_keys).status();
  }

  absl::Status Get(const std::vector<std::string>& ext_keys, bool with_payload, bool with_vector,
                   const ReadOptions& read, std::vector<std::optional<Record>>* out) const override {
    std::optional<std::chrono::milliseconds> staleness;
    CAIRN_ASSIGN_OR_RETURN(auto local, ReplicaFor(read, &staleness));
    CAIRN_ASSIGN_OR_RETURN(auto shard, ServingHere(local));
    if (shard) return shard->Get(ext_keys, with_payload, with_vector, out);
    ShardReadRequest q;
    q.op = ShardReadRequest::Op::kGet;
    q.keys = ext_keys;
    q.with_payload = with_payload;
    q.with_vector = with_vector;
    CAIRN_ASSIGN_OR_RETURN(std::string body, Remote(q, staleness));
    CAIRN_ASSIGN_OR_RETURN(*out, DecodeGetAnswer(body));
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> Count(const Filter* filter, const ReadOptions& read) const override {
    std::optional<std::chrono::milliseconds> staleness;
    CAIRN_ASSIGN_OR_RETURN(auto local, ReplicaFor(read, &staleness));
    CAIRN_ASSIGN_OR_RETURN(auto shard, ServingHere(local));
    if (shard) return shard->Count(filter);
    ShardReadRequest q;
    q.op = ShardReadRequest::Op::kCount;
    if (filter) q.filter_json = filter->ToJson();
    CAIRN_ASSIGN_OR_RETURN(std::string body, Remote(q, staleness));
    return DecodeCountAnswer(body);
  }
  absl::Status Scroll(const std::string& after, uint32_t limit, const Filter* filter, bool with_payload,
                      bool with_vector, const ReadOptions& read, std::vector<Record>* out, std::string* last_key,
                      bool* more) const override {
    std::optional<std::chrono::milliseconds> staleness;
    CAIRN_ASSIGN_OR_RETURN(auto local, ReplicaFor(read, &staleness));
    CAIRN_ASSIGN_OR_RETURN(auto shard, ServingHere(local));
    if (shard) return shard->Scroll(after, limit, filter, with_payload, with_vector, out, last_key, more);
    ShardReadRequest q;
    q.op = ShardReadRequest::Op::kScroll;
    q.after = after;
    q.limit = limit;
    if (filter) q.filter_json = filter->ToJson();
    q.with_payload = with_payload;
    q.with_vector = with_vector;
    CAIRN_ASSIGN_OR_RETURN(std::string body, Remote(q, staleness));
    CAIRN_ASSIGN_OR_RETURN(ScrollAnswer a, DecodeScrollAnswer(body));
    for (auto& r : a.records) out->push_back(std::move(r));
    *last_key = a.last_key;
    *more = a.more;
    return absl::OkStatus();
  }
  absl::Status Search(const float* queries, size_t nq, const SearchParams& params,
                      std::vector<std::vector<ScoredPoint>>* out) const override {
    std::optional<std::chrono::milliseconds> staleness;
    CAIRN_ASSIGN_OR_RETURN(auto local, ReplicaFor({params.consistency, params.max_staleness_ms}, &staleness));
    CAIRN_ASSIGN_OR_RETURN(auto shard, ServingHere(local));
    if (shard) return shard->Search(queries, nq, params, out);
    ShardReadRequest q;
    q.op = ShardReadRequest::Op::kSearch;
    q.nq = static_cast<uint32_t>(nq);
    q.queries.assign(queries, queries + nq * dim_);
    q.k = params.k;
    q.ef = params.ef;
    q.nprobe = params.nprobe;
    q.exact = params.exact;
    q.with_payload = params.with_payload;
    q.with_vector = params.with_vector;
    if (params.filter) q.filter_json = params.filter->ToJson();
    CAIRN_ASSIGN_OR_RETURN(std::string body, Remote(q, staleness));
    CAIRN_ASSIGN_OR_RETURN(*out, DecodeSearchAnswer(body));
    return absl::OkStatus();
  }
  absl::StatusOr<db::ShardStats> ReadStats() const override {
    CAIRN_ASSIGN_OR_RETURN(auto local, cluster_->ReadableReplica(group_, what_));
    CAIRN_ASSIGN_OR_RETURN(auto shard, ServingHere(local));
    if (shard) return shard->Stats();
    ShardReadRequest q;
    q.op = ShardReadRequest::Op::kStats;
    CAIRN_ASSIGN_OR_RETURN(std::string body, Remote(q));
    return DecodeStatsAnswer(body);
  }

  void set_config(const CollectionConfig& config) {
    dim_ = config.dimension;
    bytes_per_point_ = db::BytesPerPoint(config);
  }

 private:
  static std::string What(const std::string& collection, size_t shard, uint64_t group) {
    return absl::StrCat("shard ", shard, " of collection \"", collection, "\" (group ", group, ")");
  }
  absl::StatusOr<uint64_t> Propose(uint64_t gid, db::ShardCommand c, const std::string& what) const {
    c.request_id = cluster_->NewRequestId();
    Cluster::Admission admit;
    if (c.kind == db::ShardCommand::Kind::kUpsert) {
      admit = {c.points.size() * bytes_per_point_, absl::StrCat("an upsert of ", c.points.size(), " points to ", what)};
    }
    return cluster_->ProposeToShard(gid, c.Encode(), what, admit);
  }
  // Proposes the command `make(items)` to group `gid`, which holds
  // `recorded`; when its shard was split since, each item again to the
  // shard that holds its id now. The counts summed.
  template <typename T, typename KeyOf, typename Make>
  absl::StatusOr<uint64_t> Routed(uint64_t gid, db::HashClass recorded, const std::string& what, std::vector<T> items,
                                  const KeyOf& key_of, const Make& make) const {
    auto r = Propose(gid, make(items), what);
    if (r.ok() || !db::IsMovedBySplit(r.status())) return r;
    CAIRN_ASSIGN_OR_RETURN(Cluster::ShardMap map, cluster_->ShardMapAfterSplit(collection_, gid, recorded));
    std::map<size_t, std::vector<T>> parts;
    for (auto& item : items) parts[map.router.ShardOf(key_of(item))].push_back(std::move(item));
    uint64_t total = 0;
    for (auto& [s, part] : parts) {
      CAIRN_ASSIGN_OR_RETURN(uint64_t n, Routed(map.groups[s], map.recorded[s], What(collection_, s, map.groups[s]),
                                                std::move(part), key_of, make));
      total += n;
    }
    return total;
  }
  // `base` (a delete or a payload change) of the points `ext_keys`, routed.
  absl::StatusOr<uint64_t> RoutedKeys(const db::ShardCommand& base, const std::vector<std::string>& ext_keys) const {
    return Routed<std::string>(group_, recorded_, what_, ext_keys, [](const std::string& k) { return k; },
                               [&](std::vector<std::string> part) {
                                 db::ShardCommand c = base;
                                 c.ext_keys = std::move(part);
                                 return c;
                               });
  }
  // A delete by filter of group `gid`'s ids; when its shard was split since,
  // of each shard that now holds a part of them.
  absl::StatusOr<uint64_t> DeleteByFilterIn(uint64_t gid, db::HashClass recorded, db::HashClass cls,
                                            const std::string& what, const std::string& filter_json) const {
    db::ShardCommand c;
    c.kind = db::ShardCommand::Kind::kDeleteByFilter;
    c.filter_json = filter_json;
    c.expect = recorded;
    auto r = Propose(gid, c, what);
    if (r.ok() || !db::IsMovedBySplit(r.status())) return r;
    CAIRN_ASSIGN_OR_RETURN(Cluster::ShardMap map, cluster_->ShardMapAfterSplit(collection_, gid, recorded));
    uint64_t total = 0;
    for (size_t s = 0; s < map.groups.size(); ++s) {
      if (!map.classes[s].Within(cls)) continue;
      CAIRN_ASSIGN_OR_RETURN(uint64_t n, DeleteByFilterIn(map.groups[s], map.recorded[s], map.classes[s],
                                                          What(collection_, s, map.groups[s]), filter_json));
      total += n;
    }
    return total;
  }

  // The shard of the replica here, or null (none here, or it is installing a
  // snapshot): then a node holding another replica answers.
  // A replica behind a split this node knows of is not read either; one
  // split since fails the read with MovedBySplitError.
  absl::StatusOr<std::shared_ptr<db::Shard>> ServingHere(const std::shared_ptr<ShardReplica>& replica) const {
    if (!replica) return nullptr;
    auto shard = replica->Serving();
    if (!shard.ok()) return nullptr;
    const absl::Status held = CheckHashClass(**shard, recorded_);
    if (db::IsMovedBySplit(held)) return held;
    return held.ok() ? *std::move(shard) : nullptr;
  }
  absl::StatusOr<std::string> Remote(ShardReadRequest q,
                                     std::optional<std::chrono::milliseconds> staleness = std::nullopt) const {
    q.expect = recorded_;
    return cluster_->RemoteRead(group_, q, what_, staleness);
  }
  // The replica here to read from as `read` asks, after the wait it needs
  // (a ReadIndex round, or a check of the staleness bound); null when this
  // node holds none, and the read goes to one that does with `*staleness`.
  absl::StatusOr<std::shared_ptr<ShardReplica>> ReplicaFor(
      const ReadOptions& read, std::optional<std::chrono::milliseconds>* staleness) const {
    if (read.consistency == ReadConsistency::kLocal) {
      *staleness = std::chrono::milliseconds(read.max_staleness_ms == 0 ? 5000 : read.max_staleness_ms);
      return cluster_->FreshReplica(group_, **staleness, what_);
    }
    return cluster_->ReadableReplica(group_, what_);
  }

  Cluster* const cluster_;
  const std::string collection_;
  const uint64_t group_;
  const db::HashClass cls_, recorded_;
  const std::string what_;
  size_t dim_ = 0;
  uint64_t bytes_per_point_ = 0;  // the memory estimate of an upserted point
};

// A collection of the cluster: requests are checked, routed and merged by a
// CollectionImpl over the collection's replicated shards; what changes the
// collection itself goes through the metadata group.
class ClusterCollection final : public Collection {
 public:
  ClusterCollection(Cluster* cluster, std::string name, CollectionConfig config,
                    std::function<absl::Status(const CollectionConfig&)> update)
      : cluster_(cluster), name_(std::move(name)), config_(std::move(config)), update_(std::move(update)) {}

  const std::string& name() const override { return name_; }
  CollectionConfig config() const override {
    auto c = cluster_->CurrentConfig(name_);
    return c.ok() ? *c : config_;
  }
  absl::Status UpdateConfig(const CollectionConfig& config) override { return update_(config); }
  absl::StatusOr<CollectionInfo> Info() const override {
    CAIRN_ASSIGN_OR_RETURN(CollectionInfo info, Read([&](const db::CollectionImpl& c) { return c.Info(); }));
    info.config = config();
    return info;
  }
  absl::Status Upsert(absl::Span<const Point> points) override {
    CAIRN_ASSIGN_OR_RETURN(auto impl, Current());
    return impl->Upsert(points);
  }
  absl::StatusOr<std::vector<std::optional<Record>>> Get(absl::Span<const PointId> ids, bool with_payload,
                                                         bool with_vector, const ReadOptions& read) const override {
    return Read([&](const db::CollectionImpl& c) { return c.Get(ids, with_payload, with_vector, read); });
  }
  absl::StatusOr<uint64_t> Delete(absl::Span<const PointId> ids) override {
    CAIRN_ASSIGN_OR_RETURN(auto impl, Current());
    return impl->Delete(ids);
  }
  absl::StatusOr<uint64_t> DeleteByFilter(const Filter& filter) override {
    CAIRN_ASSIGN_OR_RETURN(auto impl, Current());
    return impl->DeleteByFilter(filter);
  }
  absl::Status SetPayload(absl::Span<const PointId> ids, std::string_view payload_json) override {
    CAIRN_ASSIGN_OR_RETURN(auto impl, Current());
    return impl->SetPayload(ids, payload_json);
  }
  absl::Status OverwritePayload(absl::Span<const PointId> ids, std::string_view payload_json) override {
    CAIRN_ASSIGN_OR_RETURN(auto impl, Current());
    return impl->OverwritePayload(ids, payload_json);
  }
  absl::StatusOr<uint64_t> Count(const Filter* filter, const ReadOptions& read) const override {
    return Read([&](const db::CollectionImpl& c) { return c.Count(filter, read); });
  }
  absl::StatusOr<ScrollPage> Scroll(const ScrollRequest& request) const override {
    return Read([&](const db::CollectionImpl& c) { return c.Scroll(request); });
  }
  absl::StatusOr<std::vector<ScoredPoint>> Search(absl::Span<const float> query,
                                                  const SearchParams& params) const override {
    return Read([&](const db::CollectionImpl& c) { return c.Search(query, params); });
  }
  absl::StatusOr<std::vector<std::vector<ScoredPoint>>> SearchBatch(absl::Span<const float> queries,
                                                                    const SearchParams& params) const override {
    return Read([&](const db::CollectionImpl& c) { return c.SearchBatch(queries, params); });
  }
  absl::Status Seal() override {
    return absl::FailedPreconditionError(
        "in a cluster every replica seals its growing segment on its own once it holds seal_threshold points");
  }
  absl::Status Compact(bool) override {
    return absl::FailedPreconditionError("in a cluster every replica compacts its segments on its own");
  }
  absl::StatusOr<std::unique_ptr<BulkLoader>> BeginBulkLoad(const BulkLoadOptions&) override {
    return absl::FailedPreconditionError(
        "bulk loads write files beside the replicated log and are not available in a cluster; use upserts "
        "(cairn ingest without --offline)");
  }

 private:
  // Requests are checked, routed and merged over the shard map this node
  // knows now: built again when a split changed it.
  absl::StatusOr<std::shared_ptr<db::CollectionImpl>> Current() const {
    // (The map is looked at again only when the metadata changed.)
    const uint64_t at = cluster_->MetadataIndex();
    {
      std::lock_guard l(mu_);
      if (impl_ && at == map_at_) return impl_;
    }
    CAIRN_ASSIGN_OR_RETURN(Cluster::ShardMap map, cluster_->ShardMapOf(name_));
    std::lock_guard l(mu_);
    map_at_ = at;
    if (impl_ && map.groups == map_.groups && map.recorded == map_.recorded) return impl_;
    std::vector<std::shared_ptr<db::ShardAccess>> shards;
    for (size_t s = 0; s < map.groups.size(); ++s) {
      auto rs = std::make_shared<ReplicatedShard>(cluster_, name_, static_cast<uint32_t>(s), map.groups[s],
                                                  map.classes[s], map.recorded[s]);
      rs->set_config(config_);
      shards.push_back(std::move(rs));
    }
    impl_ = db::CollectionImpl::OverShards(name_, config_, cluster_->options(), std::move(shards), map.router);
    map_ = std::move(map);
    return impl_;
  }
  // A read over the current map; one a shard split meanwhile refused is
  // read again, whole, once this node knows the new map.
  template <typename Fn>
  auto Read(const Fn& fn) const -> decltype(fn(std::declval<const db::CollectionImpl&>())) {
    while (true) {
      CAIRN_ASSIGN_OR_RETURN(auto impl, Current());
      auto r = fn(*impl);
      if (r.ok() || !db::IsMovedBySplit(r.status())) return r;
      Cluster::ShardMap seen;
      {
        std::lock_guard l(mu_);
        seen = map_;
      }
      CAIRN_RETURN_IF_ERROR(cluster_->AwaitShardMap(name_, [&](const Cluster::ShardMap& m) {
                                      return m.groups != seen.groups || m.recorded != seen.recorded;
                                    }).status());
    }
  }

  Cluster* const cluster_;
  const std::string name_;
  const CollectionConfig config_;
  std::function<absl::Status(const CollectionConfig&)> update_;
  mutable std::mutex mu_;
  mutable Cluster::ShardMap map_;                        // guarded by mu_
  mutable uint64_t map_at_ = 0;                          // guarded by mu_: the metadata index map_ is as of
  mutable std::shared_ptr<db::CollectionImpl> impl_;     // guarded by mu_
};

}  // namespace

// ---- start -------------------------------------------------------------------

Cluster::Cluster(ClusterOptions options)
    : options_(std::move(options)),
      kv_memory_(db::NewKvMemory(options_.db)),
      budget_(std::make_shared<db::MemoryBudget>(
          db::MemoryLimitFor(options_.db.memory_limit_bytes), [this] { return MeasureMemory(); },
          [this] { return ReleaseVectors(); })),
      incarnation_((static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}()) {}

std::string Cluster::NewRequestId() {
  std::string id;
  storage::PutU64(&id, self_.id);
  storage::PutU64(&id, incarnation_);
  storage::PutU64(&id, next_request_.fetch_add(1));
  return id;
}

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Open(ClusterOptions options) {
  if (options.data_dir.empty()) return absl::InvalidArgumentError("cluster: a data directory is required");
  if (options.node_name.empty()) return absl::InvalidArgumentError("cluster: a node name is required");
  if (options.advertise.empty()) {
    for (const auto& s : options.seeds) {
      const std::string host = HostOf(s);
      if (host == options.node_name || absl::StartsWith(host, options.node_name + ".")) options.advertise = s;
    }
    if (options.advertise.empty()) options.advertise = options.peer_listen;
  }
  std::unique_ptr<Cluster> c(new Cluster(std::move(options)));
  CAIRN_RETURN_IF_ERROR(c->Start());
  return c;
}

// The node loop's transport: Raft messages go to the peer clients, except a
// shard's InstallSnapshot, which goes to the snapshot sender (it makes the
// checkpoint the message then names).
class Cluster::SnapshotRouter final : public raft::Transport {
 public:
  explicit SnapshotRouter(Cluster* c) : c_(c) {}
  void Send(uint64_t to_node, std::vector<GroupMessage> batch) override {
    std::vector<GroupMessage> rest;
    rest.reserve(batch.size());
    for (auto& gm : batch) {
      // The group's first state (index 1) is empty but for a split's new
      // group, whose first state is the split's copy: files then too.
      if (gm.msg.type == raft::MessageType::kSnap && gm.group != kMetadataGroup && gm.msg.snapshot &&
          (gm.msg.snapshot->meta.index > 1 || c_->MadeBySplit(gm.group))) {
        c_->sender_->Offer(to_node, std::move(gm));
      } else {
        rest.push_back(std::move(gm));
      }
    }
    // An empty batch is a keepalive and goes too.
    if (!rest.empty() || batch.empty()) c_->clients_->Send(to_node, std::move(rest));
  }

 private:
  Cluster* const c_;
};

absl::Status Cluster::Start() {
  std::error_code ec;
  fs::create_directories(options_.data_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", options_.data_dir, ": ", ec.message()));
  CAIRN_ASSIGN_OR_RETURN(lock_, storage::FileLock::Acquire((fs::path(options_.data_dir) / "LOCK").string()));
  CAIRN_ASSIGN_OR_RETURN(self_, LoadOrCreateIdentity(options_.data_dir, options_.node_name));
  CAIRN_ASSIGN_OR_RETURN(store_, raft::LogStore::Open((fs::path(options_.data_dir) / "raftlog").string()));
  executor_ = std::make_unique<Executor>(4);
  clients_ = std::make_unique<PeerClients>(self_.id, options_.security);
  CAIRN_ASSIGN_OR_RETURN(server_, PeerServer::Start(options_.peer_listen, options_.security, this));
  Log(absl::StrCat("node \"", self_.name, "\" (id ", self_.id, ") peer port ", options_.peer_listen, ", reached at ",
                   options_.advertise));
  CAIRN_RETURN_IF_ERROR(AwaitMembership());

  clients_->SetClusterId(membership_.cluster_id);
  std::map<uint64_t, uint64_t> meta_nodes;
  std::vector<uint64_t> learners;
  for (const auto& s : membership_.seeds) {
    meta_nodes[s.node_id] = s.node_id;
    if (s.node_id != self_.id) clients_->SetAddress(s.node_id, s.address);
    if (std::find(membership_.initial_voters.begin(), membership_.initial_voters.end(), s.node_id) ==
        membership_.initial_voters.end()) {
      learners.push_back(s.node_id);
    }
  }
  if (!meta_nodes.count(self_.id)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this node (id ", self_.id, ") is not among the members its membership record names; joining an existing "
        "cluster as a new member is not supported by this version"));
  }
  meta_ = std::make_unique<MetadataMachine>([this] {
    {
      std::lock_guard l(loop_mu_);
      dirty_ = true;
    }
    loop_cv_.notify_all();
  });
  StartSnapshotTransfers();
  raft::NodeOptions no;
  no.node_id = self_.id;
  no.store = store_.get();
  no.transport = transport_.get();
  no.tick = options_.tick;
  no.election_tick = options_.election_tick;
  no.compact_after_entries = options_.log_compact_entries;
  no.quiesce = options_.quiesce;
  no.keep_entries = options_.log_keep_entries;
  no.max_keep_entries = options_.log_max_keep_entries;
  CAIRN_ASSIGN_OR_RETURN(node_, raft::Node::Start(no));
  clients_->SetNode(node_.get());
  node_ptr_.store(node_.get());
  raft::GroupSpec spec;
  spec.group = kMetadataGroup;
  spec.replica = self_.id;
  spec.nodes = meta_nodes;
  // The initial voters write group 0's first state (with the other seeds as
  // learners) and elect its first leader; every other node, a learner among
  // the seeds or a node that joined later, waits for the leader to send it.
  if (std::find(membership_.initial_voters.begin(), membership_.initial_voters.end(), self_.id) !=
      membership_.initial_voters.end()) {
    spec.initial_voters = membership_.initial_voters;
    spec.initial_learners = learners;
  }
  spec.state_machine = meta_.get();
  CAIRN_RETURN_IF_ERROR(node_->AddGroup(spec));

  reconciler_ = std::thread([this] { ReconcileLoop(); });
  maintenance_ = std::thread([this] { MaintenanceLoop(); });

  // Say who and where this node is (every start: the address may change),
  // then catch up with the metadata and open this node's replicas.
  NodeInfo info{self_.id, self_.name, options_.advertise, options_.zone};
  auto last_log = Clock::now();
  while (true) {
    absl::Status s = ProposeMetadataAnywhere(AddNodeCommand(info));
    if (s.ok()) break;
    if (!Retryable(s)) return s;
    if (Clock::now() - last_log > 10s) {
      Log(absl::StrCat("waiting for a quorum of the metadata group to register this node: ", s.ToString()));
      last_log = Clock::now();
    }
    std::unique_lock l(loop_mu_);
    if (loop_cv_.wait_for(l, 200ms, [this] { return stop_; })) return absl::CancelledError("stopping");
  }
  // Caught up with the metadata (a node that just joined waits to be added
  // to group 0 and sent its log), then this node's replicas open.
  while (true) {
    absl::Status s = MetadataReadIndex();
    if (s.ok()) break;
    if (!Retryable(s)) return s;
    Log(absl::StrCat("waiting to catch up with the metadata group: ", s.ToString()));
    std::unique_lock l(loop_mu_);
    if (loop_cv_.wait_for(l, 200ms, [this] { return stop_; })) return absl::CancelledError("stopping");
  }
  RemoveOrphanReplicas();
  Reconcile();
  Log(absl::StrCat("node \"", self_.name, "\" is a member of cluster ", membership_.cluster_id));
  return absl::OkStatus();
}

pb::HelloResponse Cluster::SelfHello() const {
  pb::HelloResponse r;
  r.set_node_id(self_.id);
  r.set_name(self_.name);
  for (const auto& s : options_.seeds) r.add_seeds(s);
  if (member_.load(std::memory_order_acquire)) {
    r.set_cluster_id(membership_.cluster_id);
    for (uint64_t v : membership_.initial_voters) r.add_initial_voters(v);
    // The members: the seeds it formed with (a seed adopting the cluster
    // needs them all) and the nodes that joined since, without the removed.
    const auto st = meta_ ? meta_->State() : std::make_shared<const MetadataState>();
    std::map<uint64_t, NodeInfo> members;
    for (const auto& s : membership_.seeds) members[s.node_id] = NodeInfo{s.node_id, s.name, s.address, ""};
    for (const auto& [id, n] : st->nodes) members[id] = n;
    for (const auto& [id, n] : members) {
      if (st->removed_nodes.count(id)) continue;
      auto* m = r.add_members();
      m->set_node_id(id);
      m->set_name(n.name);
      m->set_peer_address(n.peer_address);
    }
  }
  return r;
}

absl::Status Cluster::AwaitMembership() {
  CAIRN_ASSIGN_OR_RETURN(auto record, store_->GetMeta(kMembershipKey));
  if (record) {
    CAIRN_ASSIGN_OR_RETURN(membership_, Membership::Decode(*record));
    member_.store(true, std::memory_order_release);
    Log(absl::StrCat("restarting as a member of cluster ", membership_.cluster_id, " (--seeds is not consulted)"));
    return absl::OkStatus();
  }
  if (options_.seeds.empty()) {
    return absl::InvalidArgumentError("this node has no cluster yet: give --seeds, the peer addresses of the nodes "
                                      "that form it (the same list on each)");
  }
  auto last_log = Clock::now() - 1h;
  std::string last_why;
  while (true) {
    std::vector<SeedAnswer> answers;
    for (const auto& seed : options_.seeds) {
      SeedAnswer a;
      a.address = seed;
      if (seed == options_.advertise) {
        a.response = SelfHello();
      } else {
        auto stub = clients_->StubFor(seed);
        auto ctx = clients_->NewContext(2s);
        pb::HelloRequest req;
        req.set_node_id(self_.id);
        req.set_name(self_.name);
        req.set_peer_address(options_.advertise);
        for (const auto& s : options_.seeds) req.add_seeds(s);
        pb::HelloResponse resp;
        grpc::Status st = stub->Hello(ctx.get(), req, &resp);
        if (st.ok()) {
          a.response = resp;
        } else {
          a.error = st.error_message();
        }
      }
      answers.push_back(std::move(a));
    }
    Decision d = Decide(self_, options_.seeds, answers);
    if (d.kind == Decision::Kind::kForm || d.kind == Decision::Kind::kAdopt) {
      CAIRN_RETURN_IF_ERROR(store_->PutMeta(kMembershipKey, d.membership.Encode()));
      membership_ = d.membership;
      member_.store(true, std::memory_order_release);
      Log(absl::StrCat(d.kind == Decision::Kind::kForm ? "formed" : "joined the forming of", " cluster ",
                       membership_.cluster_id, " with metadata voters ",
                       absl::StrJoin(membership_.initial_voters, ",")));
      return absl::OkStatus();
    }
    std::string why = d.why;
    if (d.kind == Decision::Kind::kJoin) {
      auto joined = Join(d.membership);
      if (joined.ok()) return absl::OkStatus();
      why = absl::StrCat(d.why, "; joining it: ", joined.message());
    }
    if (why != last_why || Clock::now() - last_log > 10s) {
      Log(why);
      last_why = why;
      last_log = Clock::now();
    }
    std::unique_lock l(loop_mu_);
    if (loop_cv_.wait_for(l, 500ms, [this] { return stop_; })) return absl::CancelledError("stopping");
  }
}

absl::Status Cluster::Join(const Membership& cluster) {
  // A node of this name in the cluster is this node's former self (its disk
  // was wiped): this node takes its place, once it is sure that one is gone.
  // Otherwise this is a new node.
  const Membership::Seed* former = nullptr;
  for (const auto& m : cluster.seeds) {
    if (m.name == self_.name && m.node_id != self_.id) former = &m;
  }
  if (former != nullptr && former->address != options_.advertise) {
    pb::HelloResponse resp;
    auto ctx = clients_->NewContext(1s);
    if (clients_->StubFor(former->address)->Hello(ctx.get(), pb::HelloRequest(), &resp).ok() &&
        resp.node_id() == former->node_id) {
      return absl::FailedPreconditionError(absl::StrCat("node \"", self_.name, "\" (id ", former->node_id,
                                                        ") is alive at ", former->address,
                                                        ": two nodes may not share a name"));
    }
  }
  // Registered through the members (this node has no node loop yet).
  membership_ = cluster;
  membership_.seeds.push_back({self_.id, self_.name, options_.advertise});
  NodeInfo info{self_.id, self_.name, options_.advertise, options_.zone};
  absl::Status s = ProposeMetadataAnywhere(former ? ReplaceNodeCommand(former->node_id, info) : AddNodeCommand(info));
  if (absl::IsFailedPrecondition(s)) {
    // Replaced already (this node stopped before writing its record down),
    // or the former one was removed meanwhile: as a node of its own.
    s = ProposeMetadataAnywhere(AddNodeCommand(info));
  }
  if (!s.ok()) return s;
  CAIRN_RETURN_IF_ERROR(store_->PutMeta(kMembershipKey, membership_.Encode()));
  member_.store(true, std::memory_order_release);
  Log(former ? absl::StrCat("joined cluster ", membership_.cluster_id, " in place of node ", former->node_id,
                            " (the same name on a wiped disk); that id is refused from now on")
             : absl::StrCat("joined cluster ", membership_.cluster_id, " as a new node"));
  return absl::OkStatus();
}

Cluster::~Cluster() {
  budget_->Detach();
  {
    std::lock_guard l(loop_mu_);
    stop_ = true;
  }
  loop_cv_.notify_all();
  if (reconciler_.joinable()) reconciler_.join();
  if (maintenance_.joinable()) maintenance_.join();
  // Receiving stops first (snapshot fetches too), then the loop (which
  // sends through the clients and the snapshot sender), then the clients,
  // then the replicas.
  if (server_) server_->Shutdown(1s);
  receiver_.reset();
  if (clients_) clients_->SetNode(nullptr);
  node_ptr_.store(nullptr);
  node_.reset();
  sender_.reset();
  executor_.reset();
  clients_.reset();
  std::lock_guard l(mu_);
  for (auto& [gid, r] : replicas_) {
    // A clean close: growing segments are saved so that the next start loads them.
    auto shard = r->Serving();
    if (!shard.ok()) continue;
    absl::Status s = (*shard)->SealIfOnlyAWrite(options_.db.seal_on_close_points);
    if (s.ok()) s = (*shard)->CheckpointGrowing(/*at_close=*/true);
    if (!s.ok()) Log(absl::StrCat("group ", gid, ": saving the growing segment at close failed: ", s.ToString()));
  }
  replicas_.clear();
}

// ---- proposals and reads -----------------------------------------------------

absl::StatusOr<uint64_t> Cluster::ProposeAndWait(uint64_t gid, const std::string& data, Clock::time_point deadline) {
  auto p = std::make_shared<std::promise<absl::StatusOr<uint64_t>>>();
  auto f = p->get_future();
  node_->Propose(gid, data, deadline, [p](absl::StatusOr<uint64_t> r) { p->set_value(std::move(r)); });
  return f.get();
}

absl::Status Cluster::ReadIndexAndWait(uint64_t gid, Clock::time_point deadline) {
  auto p = std::make_shared<std::promise<absl::Status>>();
  auto f = p->get_future();
  node_->ReadIndex(gid, deadline, [p](absl::Status s) { p->set_value(std::move(s)); });
  return f.get();
}

absl::Status Cluster::ProposeMetadata(const MetadataCommand& cmd, uint64_t* result) {
  // Aborted: the command was placed on a view that moved on; its caller places it again.
  const auto deadline = Clock::now() + options_.request_timeout;
  auto r = RetryUntil(
      deadline, [&] { return ProposeAndWait(kMetadataGroup, cmd.json, std::min(deadline, Clock::now() + 2s)); },
      [](const absl::Status& s) { return Retryable(s) && !absl::IsAborted(s); });
  if (r.ok()) {
    if (result) *result = *r;
    return absl::OkStatus();
  }
  if (!Retryable(r.status()) || absl::IsAborted(r.status())) return r.status();
  return absl::UnavailableError(absl::StrCat("the metadata group accepted no change within ",
                                             options_.request_timeout.count(), " ms: no leader or no quorum (",
                                             r.status().message(), ")"));
}

absl::Status Cluster::MetadataReadIndex() {
  const auto deadline = Clock::now() + options_.request_timeout;
  absl::Status s = RetryUntil(deadline, [&] {
    return ReadIndexAndWait(kMetadataGroup, std::min(deadline, Clock::now() + 2s));
  });
  if (s.ok() || !Retryable(s)) return s;
  return absl::UnavailableError(absl::StrCat("the metadata group confirmed no read within ",
                                             options_.request_timeout.count(), " ms: no leader or no quorum (",
                                             s.message(), ")"));
}

absl::Status Cluster::ProposeMetadataAnywhere(const MetadataCommand& cmd) {
  absl::Status last;
  if (node_ptr_.load() != nullptr) {
    auto r = ProposeAndWait(kMetadataGroup, cmd.json, Clock::now() + 2s);
    if (r.ok() || !Retryable(r.status())) return r.status();
    last = r.status();
  }
  // This node's replica of group 0 knows no leader (it has not joined the
  // group yet, or it is cut off): through the other members.
  std::vector<std::string> addresses;
  if (meta_) {
    for (const auto& [id, n] : meta_->State()->nodes) {
      if (id != self_.id) addresses.push_back(n.peer_address);
    }
  }
  for (const auto& m : membership_.seeds) {
    if (m.node_id != self_.id) addresses.push_back(m.address);
  }
  std::sort(addresses.begin(), addresses.end());
  addresses.erase(std::unique(addresses.begin(), addresses.end()), addresses.end());
  for (const auto& address : addresses) {
    if (address == options_.advertise) continue;
    pb::ShardRequest req;
    req.set_cluster_id(membership_.cluster_id);
    req.set_group(kMetadataGroup);
    req.set_timeout_ms(2000);
    req.set_metadata(cmd.json);
    pb::ShardResponse resp;
    auto ctx = clients_->NewContext(3s);
    grpc::Status g = clients_->StubFor(address)->Shard(ctx.get(), req, &resp);
    if (!g.ok()) {
      // Down, starting, or not in the cluster yet: another member may answer.
      last = absl::UnavailableError(absl::StrCat(address, ": ", g.error_message()));
      continue;
    }
    absl::Status s = FromShardResponse(resp);
    if (s.ok() || !Retryable(s)) return s;
    last = s;
  }
  return last.ok() ? absl::UnavailableError("no member of the metadata group answered") : last;
}

std::shared_ptr<ShardReplica> Cluster::LocalReplica(uint64_t gid) const {
  std::lock_guard l(mu_);
  auto it = replicas_.find(gid);
  return it == replicas_.end() ? nullptr : it->second;
}

std::vector<uint64_t> Cluster::NodesOf(uint64_t gid) const {
  const auto st_ptr = meta_->State();
  const MetadataState& st = *st_ptr;
  std::vector<uint64_t> out;
  auto it = st.groups.find(gid);
  if (it == st.groups.end()) return out;
  // The preferred leader first.
  for (uint64_t v : it->second.initial_voters) {
    auto r = it->second.replicas.find(v);
    if (r != it->second.replicas.end()) out.push_back(r->second);
  }
  for (const auto& [replica, node] : it->second.replicas) {
    if (std::find(out.begin(), out.end(), node) == out.end()) out.push_back(node);
  }
  return out;
}

absl::StatusOr<pb::ShardResponse> Cluster::SendToReplica(uint64_t gid, const pb::ShardRequest& req, size_t* next_node) {
  const std::vector<uint64_t> nodes = NodesOf(gid);
  if (nodes.empty()) return absl::FailedPreconditionError("the collection was dropped");
  const uint64_t node = nodes[(*next_node)++ % nodes.size()];
  const auto st = meta_->State();
  auto n = st->nodes.find(node);
  if (n == st->nodes.end()) return absl::UnavailableError(absl::StrCat("node ", node, " has no address yet"));
  pb::ShardResponse resp;
  auto ctx = clients_->NewContext(3s);
  grpc::Status gs = clients_->StubFor(n->second.peer_address)->Shard(ctx.get(), req, &resp);
  if (!gs.ok()) return absl::UnavailableError(absl::StrCat("node ", n->second.name, ": ", gs.error_message()));
  CAIRN_RETURN_IF_ERROR(FromShardResponse(resp));
  return resp;
}

db::MemoryUsage Cluster::MeasureMemory() const {
  std::vector<std::shared_ptr<ShardReplica>> replicas;
  {
    std::lock_guard l(mu_);
    for (const auto& [gid, r] : replicas_) replicas.push_back(r);
  }
  db::MemoryUsage u;
  u.storage_bytes = kv_memory_->BlockCacheBytes();  // shared: each replica reports its memtables
  std::map<std::string, uint64_t> by_collection;
  for (const auto& r : replicas) {
    auto shard = r->Serving();
    if (!shard.ok()) continue;  // installing a snapshot
    const db::ShardStats st = (*shard)->Stats();
    u.index_bytes += st.index_memory_bytes;
    u.storage_bytes += st.storage_memory_bytes;
    by_collection[r->collection()] += st.index_memory_bytes + st.storage_memory_bytes;
  }
  for (const auto& [name, bytes] : by_collection) {
    if (bytes > u.largest_bytes) u.largest = name, u.largest_bytes = bytes;
  }
  return u;
}

uint64_t Cluster::ReleaseVectors() const {
  std::vector<std::shared_ptr<ShardReplica>> replicas;
  {
    std::lock_guard l(mu_);
    for (const auto& [gid, r] : replicas_) replicas.push_back(r);
  }
  uint64_t freed = 0;
  for (const auto& r : replicas) {
    if (auto shard = r->Serving(); shard.ok()) freed += (*shard)->ReleaseVectors();
  }
  if (freed > 0) db::ReleaseFreeMemory();
  return freed;
}

absl::StatusOr<uint64_t> Cluster::ProposeToShard(uint64_t gid, const std::string& command, const std::string& what,
                                                 const Admission& admit) {
  size_t next_node = 0;
  const auto deadline = Clock::now() + options_.request_timeout;
  // Admitted once: an attempt that timed out may still commit, and its retry
  // (the same request id, applied once) must not be refused for the memory
  // the first one takes.
  Admission pending = admit;
  auto r = RetryUntil(deadline, [&]() -> absl::StatusOr<uint64_t> {
    if (!meta_->State()->groups.count(gid)) {
      return absl::FailedPreconditionError(absl::StrCat(what, " no longer exists: the collection was dropped"));
    }
    if (LocalReplica(gid)) {
      if (pending.bytes > 0) CAIRN_RETURN_IF_ERROR(budget_->Admit(pending.bytes, pending.what));
      pending = {};
      return ProposeAndWait(gid, command, std::min(deadline, Clock::now() + 2s));
    }
    pb::ShardRequest req;
    req.set_cluster_id(membership_.cluster_id);
    req.set_group(gid);
    req.set_timeout_ms(2000);
    req.set_command(command);
    req.set_admit_bytes(pending.bytes);  // a refusal there is final (not retried)
    req.set_admit_what(pending.what);
    pending = {};
    CAIRN_ASSIGN_OR_RETURN(pb::ShardResponse resp, SendToReplica(gid, req, &next_node));
    return resp.result();
  });
  if (r.ok() || !Retryable(r.status())) return r;
  return absl::UnavailableError(absl::StrCat(what, " took no write within ", options_.request_timeout.count(),
                                             " ms: it has no leader or no quorum (", r.status().message(), ")"));
}

std::shared_ptr<ShardReplica> Cluster::VotingReplica(uint64_t gid) const {
  auto local = LocalReplica(gid);
  if (!local) return local;
  raft::Node* node = node_ptr_.load();
  if (node == nullptr) return nullptr;
  // Stopped, or no longer in its group (a move took it out, and the map
  // does not say so yet): it applies nothing more, so it serves no read.
  switch (node->MembershipOf(gid)) {
    case raft::Membership::kVoter:
      if (!local->voter_seen()) local->set_voter_seen();
      return local;
    case raft::Membership::kLearner:
      return local->voter_seen() ? local : nullptr;
    case raft::Membership::kNone:
      break;
  }
  return nullptr;
}

absl::StatusOr<std::shared_ptr<ShardReplica>> Cluster::ReadableReplica(uint64_t gid, const std::string& what) {
  auto local = VotingReplica(gid);
  if (!local) {
    if (!meta_->State()->groups.count(gid)) {
      return absl::FailedPreconditionError(absl::StrCat(what, " no longer exists: the collection was dropped"));
    }
    return std::shared_ptr<ShardReplica>();
  }
  const auto deadline = Clock::now() + options_.request_timeout;
  bool here = true;
  absl::Status s = RetryUntil(deadline, [&] {
    // The replica here may leave its group meanwhile: then a node holding
    // one answers.
    if (!VotingReplica(gid)) {
      here = false;
      return absl::OkStatus();
    }
    return ReadIndexAndWait(gid, std::min(deadline, Clock::now() + 2s));
  });
  if (!here) return std::shared_ptr<ShardReplica>();
  if (s.ok()) return local;
  if (!Retryable(s)) return s;
  return absl::UnavailableError(absl::StrCat(what, " could not confirm a linearizable read within ",
                                             options_.request_timeout.count(), " ms: it has no leader or no quorum (",
                                             s.message(), ")"));
}

absl::StatusOr<std::shared_ptr<ShardReplica>> Cluster::FreshReplica(uint64_t gid, std::chrono::milliseconds staleness,
                                                                     const std::string& what) {
  auto local = VotingReplica(gid);
  if (!local) {
    if (!meta_->State()->groups.count(gid)) {
      return absl::FailedPreconditionError(absl::StrCat(what, " no longer exists: the collection was dropped"));
    }
    return std::shared_ptr<ShardReplica>();
  }
  CAIRN_ASSIGN_OR_RETURN(raft::GroupStatus st, node_->GroupStatusOf(gid));
  if (st.stopped) return absl::UnavailableError(absl::StrCat(what, ": the replica here stopped: ", st.stop_reason));
  const auto age = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - st.leader_contact);
  if (age > staleness) {
    return absl::UnavailableError(absl::StrCat(what, ": the replica on node ", self_.name, " has not heard from its ",
                                               "leader for ", age.count() > 3600000 ? std::string("ever")
                                                                                    : absl::StrCat(age.count(), " ms"),
                                               ", more than the ", staleness.count(),
                                               " ms a local read allows; read linearizably or retry"));
  }
  return local;
}

absl::StatusOr<std::string> Cluster::RemoteRead(uint64_t gid, const ShardReadRequest& q, const std::string& what,
                                                std::optional<std::chrono::milliseconds> staleness) {
  pb::ShardRequest req;
  req.set_cluster_id(membership_.cluster_id);
  req.set_group(gid);
  req.set_timeout_ms(2000);
  req.mutable_read()->set_consistency(staleness ? 1 : 0);
  if (staleness) req.mutable_read()->set_max_staleness_ms(static_cast<uint32_t>(staleness->count()));
  req.mutable_read()->set_request(q.Encode());
  size_t next_node = 0;
  auto r = RetryUntil(Clock::now() + options_.request_timeout, [&]() -> absl::StatusOr<std::string> {
    auto resp = SendToReplica(gid, req, &next_node);
    if (absl::IsFailedPrecondition(resp.status()) && NodesOf(gid).empty()) {
      return absl::FailedPreconditionError(absl::StrCat(what, " no longer exists: the collection was dropped"));
    }
    if (!resp.ok()) return resp.status();
    return std::move(*resp->mutable_body());
  });
  if (r.ok() || !Retryable(r.status())) return r;
  return absl::UnavailableError(absl::StrCat(what, " answered no read within ", options_.request_timeout.count(),
                                             " ms (", r.status().message(), ")"));
}

// ---- the peer port's requests ------------------------------------------------

std::string Cluster::ClusterId() const {
  return member_.load(std::memory_order_acquire) ? membership_.cluster_id : std::string();
}

pb::HelloResponse Cluster::Hello(const pb::HelloRequest&) { return SelfHello(); }

void Cluster::Shard(const pb::ShardRequest& req, std::function<void(pb::ShardResponse)> done) {
  raft::Node* node = node_ptr_.load();
  const uint64_t gid = req.group();
  auto deadline = Clock::now() + std::chrono::milliseconds(std::clamp<uint64_t>(req.timeout_ms(), 1, 60000));
  pb::ShardResponse resp;
  if (node == nullptr) {
    SetStatus(absl::UnavailableError("this node is starting"), &resp);
    return done(resp);
  }
  // Proposes `data` to `group` here; the answer carries the apply result.
  auto propose = [&](uint64_t group, const std::string& data) {
    node->Propose(group, data, deadline, [done](absl::StatusOr<uint64_t> r) {
      pb::ShardResponse resp;
      if (r.ok()) {
        resp.set_result(*r);
      } else {
        SetStatus(r.status(), &resp);
      }
      done(resp);
    });
  };
  switch (req.kind_case()) {
    case pb::ShardRequest::kCommand:
      if (!LocalReplica(gid)) {
        SetStatus(absl::UnavailableError(absl::StrCat("group ", gid, " has no replica on node ", self_.name)), &resp);
        return done(resp);
      }
      if (req.admit_bytes() > 0) {
        absl::Status admitted =
            budget_->Admit(req.admit_bytes(), req.admit_what().empty() ? absl::StrCat("a write to group ", gid)
                                                                       : req.admit_what());
        if (!admitted.ok()) {
          SetStatus(admitted, &resp);
          return done(resp);
        }
      }
      return propose(gid, req.command());
    case pb::ShardRequest::kMetadata:
      // A node that has not joined group 0 yet (or is cut off) registers itself.
      return propose(kMetadataGroup, req.metadata());
    case pb::ShardRequest::kRead: {
      auto local = VotingReplica(gid);
      if (!local) {
        SetStatus(absl::UnavailableError(absl::StrCat("group ", gid, " has no replica on node ", self_.name,
                                                      " that may serve reads (none, or one catching up)")),
                  &resp);
        return done(resp);
      }
      auto q = ShardReadRequest::Decode(req.read().request());
      if (!q.ok()) {
        SetStatus(q.status(), &resp);
        return done(resp);
      }
      // The read runs on the executor, not on the node loop's thread.
      auto run = [this, gid, local, q = *std::move(q), done] {
        pb::ShardResponse resp;
        absl::StatusOr<std::string> body;
        if (q.op == ShardReadRequest::Op::kExport) {
          auto desc = sender_->Export(gid);
          body = desc.ok() ? absl::StatusOr<std::string>(desc->Encode()) : desc.status();
        } else {
          auto shard = local->Serving();
          body = shard.ok() ? ExecuteRead(**shard, q) : absl::StatusOr<std::string>(shard.status());
        }
        if (body.ok()) {
          resp.set_body(*std::move(body));
        } else {
          SetStatus(body.status(), &resp);
        }
        done(resp);
      };
      if (req.read().consistency() == 1) {
        auto fresh = FreshReplica(gid, std::chrono::milliseconds(req.read().max_staleness_ms()),
                                  absl::StrCat("group ", gid));
        if (!fresh.ok()) {
          SetStatus(fresh.status(), &resp);
          return done(resp);
        }
        executor_->Post(std::move(run));
        return;
      }
      node->ReadIndex(gid, deadline, [this, run = std::move(run), done](absl::Status s) mutable {
        if (!s.ok()) {
          pb::ShardResponse resp;
          SetStatus(s, &resp);
          return done(resp);
        }
        executor_->Post(std::move(run));
      });
      return;
    }
    default:
      SetStatus(absl::InvalidArgumentError("peer: a shard request without a command or a read"), &resp);
      return done(resp);
  }
}

// ---- the metadata's consequences on this node ---------------------------------

void Cluster::ReconcileLoop() {
  std::unique_lock l(loop_mu_);
  while (!stop_) {
    // While an operation is under way its steps wait on Raft (a learner
    // catching up, a membership change committing), not on the metadata:
    // look again soon (the replicas this node opens change only with it).
    // So too while splits are queued: the next starts when one ends.
    const auto st = meta_->State();
    const auto period = !st->ops.empty() || st->SplitsUnderWay() ? 100ms : 1000ms;
    loop_cv_.wait_for(l, period, [this] { return stop_ || dirty_; });
    if (stop_) break;
    const bool dirty = std::exchange(dirty_, false);
    l.unlock();
    if (dirty || Clock::now() - last_reconcile_ >= 1s) {
      Reconcile();
      last_reconcile_ = Clock::now();
    }
    DriveOps();
    Control();
    l.lock();
  }
}

namespace {

// A learner within this many entries of the commit index is caught up.
constexpr uint64_t kCaughtUp = 64;

bool Contains(const std::vector<uint64_t>& v, uint64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// The last index replica `r` holds, as `gs` (a leader's status) knows it.
uint64_t MatchOf(const raft::GroupStatus& gs, uint64_t r) {
  if (r == gs.replica) return gs.last_index;
  for (const auto& p : gs.peers) {
    if (p.replica == r) return p.match;
  }
  return 0;
}

// The voter other than `gs`'s own replica that holds most of the log and
// passes `ok` (ties: the first); 0 when none. With `whole_log`, only one that
// holds all of it.
uint64_t BestVoter(const raft::GroupStatus& gs, bool whole_log, const std::function<bool(uint64_t)>& ok = nullptr) {
  uint64_t best = 0;
  for (uint64_t v : gs.voters) {
    if (v == gs.replica || (ok && !ok(v)) || (whole_log && MatchOf(gs, v) < gs.last_index)) continue;
    if (best == 0 || MatchOf(gs, v) > MatchOf(gs, best)) best = v;
  }
  return best;
}

}  // namespace

void Cluster::ChangeMembers(uint64_t group, raft::ConfChange::Type type, uint64_t replica, const std::string& what) {
  if (node_->ProposeConfChange(group, raft::ConfChange{type, replica}).ok()) {
    Log(absl::StrCat(group == kMetadataGroup ? std::string("metadata group") : absl::StrCat("group ", group), ": ",
                     what, " ", replica));
  }
}

void Cluster::DriveOps() {
  const auto st = meta_->State();
  auto live = [&](uint64_t op_id) {
    for (const auto& [gid, op] : st->ops) {
      if (op.id == op_id) return true;
    }
    return false;
  };
  for (auto it = split_proposed_.begin(); it != split_proposed_.end();) {
    it = live(it->first / 2) ? std::next(it) : split_proposed_.erase(it);
  }
  for (auto it = split_open_seen_.begin(); it != split_open_seen_.end();) {
    it = live(it->first) ? std::next(it) : split_open_seen_.erase(it);
  }
  for (auto it = split_campaigned_.begin(); it != split_campaigned_.end();) {
    it = live(it->first) ? std::next(it) : split_campaigned_.erase(it);
  }
  for (const raft::GroupStatus& gs : node_->Status()) {
    if (gs.role != raft::Role::kLeader || gs.stopped) continue;
    auto change = [&](raft::ConfChange::Type type, uint64_t replica, const std::string& what) {
      ChangeMembers(gs.group, type, replica, what);
    };
    // This leader hands its leadership to a voter holding its whole log.
    auto hand_off = [&] {
      if (uint64_t v = BestVoter(gs, /*whole_log=*/true); v != 0) node_->TransferLeadership(gs.group, v);
    };
    if (gs.group == kMetadataGroup) {
      DriveMetadataMembers(*st, gs);
      continue;
    }
    auto op_it = st->ops.find(gs.group);
    if (op_it == st->ops.end()) continue;
    const GroupOp& op = op_it->second;
    auto record = [&](const std::string& step) {
      if (op.step != step) (void)ProposeMetadataAnywhere(OpStepCommand(gs.group, op.id, step));
    };
    auto end = [&](bool abandoned) {
      if (ProposeMetadataAnywhere(EndOpCommand(gs.group, op.id, abandoned)).ok()) {
        Log(absl::StrCat("group ", gs.group, ": ", OpKindName(op.kind), " (", op.reason, ") ",
                         abandoned ? "abandoned" : "done"));
      }
    };
    if (op.kind == GroupOp::Kind::kSplit) {
      DriveSplit(*st, gs, op);
      continue;
    }
    if (op.kind == GroupOp::Kind::kTransferLeader) {
      if (gs.replica == op.to) {
        end(false);
      } else if (Contains(gs.voters, op.to) && MatchOf(gs, op.to) >= gs.last_index) {
        node_->TransferLeadership(gs.group, op.to);
      }
      continue;
    }
    // A move, one membership change at a time (dissertation 4.1).
    const bool to_voter = op.to != 0 && Contains(gs.voters, op.to), to_learner = op.to != 0 && Contains(gs.learners, op.to);
    const bool from_in = op.from != 0 && (Contains(gs.voters, op.from) || Contains(gs.learners, op.from));
    if (op.step == "abandon") {
      if (to_voter || to_learner) {
        if (op.to == gs.replica) {
          hand_off();
        } else {
          change(raft::ConfChange::Type::kRemove, op.to, "abandoning move: removing");
        }
      } else {
        end(true);
      }
      continue;
    }
    if (op.to != 0 && !to_voter && !to_learner) {
      record("add_learner");
      change(raft::ConfChange::Type::kAddLearner, op.to, absl::StrCat("move (", op.reason, "): adding learner"));
    } else if (to_learner) {
      if (MatchOf(gs, op.to) + kCaughtUp >= gs.commit) {
        record("promote");
        change(raft::ConfChange::Type::kAddVoter, op.to, "move: promoting caught-up learner");
      } else {
        record("catch_up");
      }
    } else if (from_in) {
      record("remove_old");
      if (op.from == gs.replica) {
        hand_off();  // the leader leaves: another leads first
      } else {
        change(raft::ConfChange::Type::kRemove, op.from, "move: removing");
      }
    } else {
      end(false);
    }
  }
}

void Cluster::DriveSplit(const MetadataState& st, const raft::GroupStatus& gs, const GroupOp& op) {
  auto group = st.groups.find(gs.group);
  auto replica = LocalReplica(gs.group);
  if (group == st.groups.end() || !replica) return;
  auto shard = replica->Serving();
  if (!shard.ok()) return;
  const db::Shard::SplitRecord rec = (*shard)->split_record();
  const auto now = Clock::now();
  // One of the group's entries, proposed again every 3 s while not applied
  // (a second one applied changes nothing).
  auto propose = [&](db::ShardCommand::Kind kind, db::HashClass keep, db::HashClass moved, const char* what) {
    auto& last = split_proposed_[op.id * 2 + (kind == db::ShardCommand::Kind::kSplitDone)];
    if (now - last < 3s) return;
    last = now;
    db::ShardCommand c;
    c.kind = kind;
    c.keep = keep;
    c.child = moved;
    c.child_group = op.to;
    node_->Propose(gs.group, c.Encode(), now + 10s, [](absl::StatusOr<uint64_t>) {});
    Log(absl::StrCat("group ", gs.group, ": split (", op.reason, "): ", what));
  };
  if (op.step == "split") {
    if (rec.child_group == op.to) {
      // Fenced here, so committed: the new group's replicas open.
      (void)ProposeMetadataAnywhere(SplitFencedCommand(gs.group, op.id, rec.index));
      return;
    }
    const db::HashClass cls = st.ClassOf(group->second);
    propose(db::ShardCommand::Kind::kSplit, cls.KeepHalf(), cls.MovedHalf(),
            absl::StrCat("fencing the half group ", op.to, " takes (1/", cls.modulus * 2, " of the id hash)").c_str());
    return;
  }
  if (op.step == "open") {
    // Routed to once it has a leader (its replicas are beside this group's:
    // this node holds one), or after 15 s whatever it has.
    auto [seen, fresh] = split_open_seen_.try_emplace(op.id, now);
    auto child = node_->GroupStatusOf(op.to);
    const bool leads = child.ok() && child->leader != raft::kNone;
    if (auto [last, fresh] = split_campaigned_.try_emplace(op.id, now);
        !leads && child.ok() && !fresh && now - last->second >= 150ms) {
      // Its replica here campaigned when it opened, perhaps before the
      // others had opened theirs (they dropped its votes): again, rather
      // than after an election timeout.
      last->second = now;
      node_->Campaign(op.to);
    }
    if ((leads || now - seen->second > 15s) && ProposeMetadataAnywhere(SwitchSplitCommand(gs.group, op.id)).ok()) {
      Log(absl::StrCat("group ", gs.group, ": split at index ", op.split_index, "; group ", op.to,
                       leads ? " leads" : " has no leader yet", " and now holds the other half of its ids"));
      // Applied here: reads over the new map wait for the moved half to
      // leave this group, so that goes at once, not at the next turn.
      propose(db::ShardCommand::Kind::kSplitDone, rec.writes, st.ClassOf(group->second).MovedHalf(),
              "the moved half leaves it");
    }
    return;
  }
  if (op.step == "hide") {
    auto child = st.groups.find(op.to);
    if (rec.cls == rec.writes && rec.child_group == op.to) {
      if (ProposeMetadataAnywhere(EndOpCommand(gs.group, op.id, false)).ok()) {
        Log(absl::StrCat("group ", gs.group, ": split done"));
      }
    } else if (child != st.groups.end() && rec.fenced()) {
      propose(db::ShardCommand::Kind::kSplitDone, rec.writes, child->second.cls, "the moved half leaves it");
    }
  }
}

void Cluster::DriveMetadataMembers(const MetadataState& st, const raft::GroupStatus& gs) {
  // Replica ids of the metadata group are node ids.
  auto change = [&](raft::ConfChange::Type type, uint64_t node, const char* what) {
    ChangeMembers(kMetadataGroup, type, node, what);
  };
  // Every member follows the metadata (a learner at least).
  for (const auto& [id, n] : st.nodes) {
    if (st.removed_nodes.count(id) || Contains(gs.voters, id) || Contains(gs.learners, id)) continue;
    change(raft::ConfChange::Type::kAddLearner, id, "adding learner");
    return;
  }
  // Three voters (fewer with fewer active nodes), on active nodes of
  // distinct zones when it can: a caught-up learner is promoted first, then
  // a voter on a node that is not active is demoted (removed when the node
  // was removed). A removed node's learner leaves.
  // A voter that has not registered yet (a seed starting) counts as active.
  auto active_node = [&](uint64_t n) { return !st.nodes.count(n) || st.Is(n, NodeState::kActive); };
  size_t active = 0, good = 0;
  std::set<std::string> voter_zones;
  for (const auto& [id, n] : st.nodes) active += st.Is(id, NodeState::kActive);
  for (uint64_t v : gs.voters) {
    if (active_node(v)) {
      ++good;
      if (st.nodes.count(v)) voter_zones.insert(st.nodes.at(v).zone);
    }
  }
  const size_t want = std::min<size_t>(3, active);
  if (good < want) {
    uint64_t best = 0;
    std::tuple<bool, bool, uint64_t> best_key;
    for (uint64_t l : gs.learners) {
      if (!st.Is(l, NodeState::kActive) || MatchOf(gs, l) + kCaughtUp < gs.commit) continue;
      // The successor of a replaced voter first, then a zone no voter uses.
      bool successor = false;
      for (uint64_t v : gs.voters) successor = successor || Successor(st, v) == l;
      auto key = std::make_tuple(!successor, voter_zones.count(st.nodes.at(l).zone) > 0, l);
      if (best == 0 || key < best_key) {
        best = l;
        best_key = key;
      }
    }
    if (best != 0) change(raft::ConfChange::Type::kAddVoter, best, "promoting caught-up learner");
    return;
  }
  for (uint64_t v : gs.voters) {
    // A dead voter keeps its vote until three active ones are there without
    // it (it may come back); a draining one leaves once enough are.
    if (active_node(v) || (st.Is(v, NodeState::kDead) && good < 3)) continue;
    if (v == self_.id) {
      // The leader leaves its vote: a caught-up active voter leads first.
      if (uint64_t o = BestVoter(gs, /*whole_log=*/true, active_node); o != 0) {
        node_->TransferLeadership(kMetadataGroup, o);
      }
      return;
    }
    if (st.removed_nodes.count(v)) {
      change(raft::ConfChange::Type::kRemove, v, "removing the vote of removed node");
    } else {
      change(raft::ConfChange::Type::kAddLearner, v, "demoting to learner the voter on inactive node");
    }
    return;
  }
  for (uint64_t l : gs.learners) {
    if (st.removed_nodes.count(l)) {
      change(raft::ConfChange::Type::kRemove, l, "removing removed node");
      return;
    }
  }
}

void Cluster::Control() {
  raft::Node* node = node_ptr_.load();
  if (node == nullptr || stopping_.load()) return;  // a stopping node hands its leadership off
  auto meta = node->GroupStatusOf(kMetadataGroup);
  const auto now = Clock::now();
  if (!meta.ok() || meta->role != raft::Role::kLeader) {
    controlling_since_.reset();
    return;
  }
  if (!controlling_since_) controlling_since_ = now;
  if (now - last_control_ < 1s) return;
  last_control_ = now;
  auto st = meta_->State();
  // 1. Nodes: dead after the timeout of silence, active again when heard.
  const auto heard = node->LastHeard();
  for (const auto& [id, n] : st->nodes) {
    if (id == self_.id || st->removed_nodes.count(id)) continue;
    auto h = heard.find(id);
    const auto last = std::max(*controlling_since_, h == heard.end() ? Clock::time_point{} : h->second);
    const auto silent = now - last;
    if (n.state == NodeState::kActive && silent > options_.dead_node_timeout) {
      Log(absl::StrCat("node ", n.name, " (", id, ") has been silent for ",
                       std::chrono::duration_cast<std::chrono::seconds>(silent).count(),
                       " s: marking it dead; its replicas will be re-created elsewhere"));
      (void)ProposeMetadataAnywhere(SetNodeStateCommand(id, NodeState::kDead));
    } else if (n.state == NodeState::kDead && h != heard.end() && silent < options_.tick * options_.election_tick) {
      Log(absl::StrCat("node ", n.name, " (", id, ") is back: active again"));
      (void)ProposeMetadataAnywhere(SetNodeStateCommand(id, NodeState::kActive));
    }
  }
  // Moves whose target is no longer active are undone; transfers that did
  // not happen in 30 s are given up.
  st = meta_->State();
  for (uint64_t gid : OpsToAbandon(*st)) {
    const GroupOp& op = st->ops.at(gid);
    Log(absl::StrCat("group ", gid, ": abandoning a ", OpKindName(op.kind), " to node ", op.to_node,
                     ", no longer active"));
    // A move's new replica leaves the group first; a transfer just ends.
    (void)ProposeMetadataAnywhere(op.kind == GroupOp::Kind::kMove ? OpStepCommand(gid, op.id, "abandon")
                                                                    : EndOpCommand(gid, op.id, /*abandoned=*/true));
  }
  // Nodes silent for an election timeout (or stopping): not asked for
  // reports, given no replica or leadership, and a transfer to one of them
  // is given up.
  std::set<uint64_t> silent;
  for (const auto& [id, n] : st->nodes) {
    auto h = heard.find(id);
    if (id != self_.id && (h == heard.end() || now - h->second > options_.tick * options_.election_tick)) silent.insert(id);
  }
  // What the leaders report; a node that says it is stopping counts as silent.
  const auto reports = Reports(*st, silent);
  for (const auto& [id, r] : reports) {
    if (r.stopping()) silent.insert(id);
  }
  std::map<uint64_t, Clock::time_point> seen;
  for (const auto& [gid, op] : st->ops) {
    auto it = op_seen_.find(op.id);
    seen[op.id] = it == op_seen_.end() ? now : it->second;
    if (op.kind == GroupOp::Kind::kTransferLeader && (now - seen[op.id] > 30s || silent.count(op.to_node))) {
      (void)ProposeMetadataAnywhere(EndOpCommand(gid, op.id, /*abandoned=*/true));
    }
  }
  op_seen_ = std::move(seen);
  // 2-6: the plan.
  ControllerView view;
  std::map<uint64_t, uint64_t> view_term;  // a deposed leader not yet told is not the one to trust
  for (const auto& [id, r] : reports) {
    for (const auto& g : r.groups()) {
      if (!g.is_leader() || g.group() == kMetadataGroup) continue;
      if (auto t = view_term.find(g.group()); t != view_term.end() && t->second > g.term()) continue;
      view_term[g.group()] = g.term();
      GroupView& v = view[g.group()];
      v = GroupView();
      v.leader = g.leader_replica();
      v.last_index = g.last_index();
      v.match.insert(g.match().begin(), g.match().end());
      v.voters.assign(g.voters().begin(), g.voters().end());
      v.bytes = g.bytes();
      v.points = g.points();
    }
  }
  // The next split: queued by cairn collection split, or a shard past its
  // collection's split_points; one at a time.
  if (uint64_t gid = SplitDue(*st, view); gid != 0) {
    const auto& queue = st->collections.at(st->groups.at(gid).collection).split_queue;
    const char* reason =
        std::find(queue.begin(), queue.end(), gid) != queue.end() ? "cairn collection split" : "split_points";
    const uint64_t points = view.count(gid) ? view.at(gid).points : 0;
    if (ProposeMetadata(StartSplitCommand(*st, gid, reason), nullptr).ok()) {
      Log(absl::StrCat("group ", gid, ": split (", reason, "): it holds ", points, " points"));
    }
    st = meta_->State();
  }
  for (const PlannedOp& p : PlanOperations(*st, view, silent)) {
    st = meta_->State();
    absl::Status s;
    if (p.kind == GroupOp::Kind::kMove) {
      s = ProposeMetadata(StartMoveCommand(*st, p.group, p.from, p.to_node, p.reason), nullptr);
    } else {
      s = ProposeMetadata(StartTransferCommand(p.group, p.to, p.reason), nullptr);
    }
    if (s.ok()) {
      Log(absl::StrCat("group ", p.group, ": ", OpKindName(p.kind), " (", p.reason, ")",
                       p.from != 0 ? absl::StrCat(" of replica ", p.from) : std::string(),
                       p.to_node != 0 ? absl::StrCat(" to node ", p.to_node) : std::string(),
                       p.to != 0 ? absl::StrCat(" to replica ", p.to) : std::string()));
    }
  }
}

void Cluster::Reconcile() {
  std::lock_guard rl(reconcile_mu_);
  const auto st_ptr = meta_->State();
  const MetadataState& st = *st_ptr;
  // A removed node is never addressed again (its replicas leave their groups).
  for (const auto& [id, n] : st.nodes) {
    if (id == self_.id) continue;
    if (st.removed_nodes.count(id)) {
      clients_->Forget(id);
    } else {
      clients_->SetAddress(id, n.peer_address);
    }
  }
  // Where each group's replicas are, for the node loop (members come and go).
  auto set_nodes = [this](uint64_t gid, std::map<uint64_t, uint64_t> nodes) {
    auto& known = replica_nodes_[gid];
    if (known == nodes) return;
    if (node_->SetReplicaNodes(gid, nodes).ok()) known = std::move(nodes);
  };
  {
    std::map<uint64_t, uint64_t> members;
    for (const auto& [id, n] : st.nodes) members[id] = id;
    for (const auto& s : membership_.seeds) members[s.node_id] = s.node_id;
    set_nodes(kMetadataGroup, std::move(members));
  }
  // The groups splits make, before they are routed to: their replicas open
  // (and elect) from the split's fence on.
  std::map<uint64_t, ShardGroup> opening;
  for (const auto& [gid, op] : st.ops) {
    if (op.kind == GroupOp::Kind::kSplit && op.step == "open" && !st.groups.count(op.to)) {
      opening[op.to] = st.SplitChild(gid, op);
    }
  }
  for (const auto& [gid, g] : st.groups) {
    if (LocalReplica(gid)) set_nodes(gid, g.replicas);
  }
  for (const auto& [gid, g] : opening) {
    if (LocalReplica(gid)) set_nodes(gid, g.replicas);
  }
  // Replicas the map places here and this node does not have yet.
  std::vector<const ShardGroup*> here = st.GroupsOn(self_.id);
  for (const auto& [gid, g] : opening) {
    for (const auto& [r, n] : g.replicas) {
      if (n == self_.id) here.push_back(&g);
    }
  }
  for (const ShardGroup* g : here) {
    if (LocalReplica(g->group)) continue;
    auto coll = st.collections.find(g->collection);
    if (coll == st.collections.end()) continue;
    uint64_t replica = 0;
    for (const auto& [r, n] : g->replicas) {
      if (n == self_.id) replica = r;
    }
    db::ShardOptions so = db::ShardOptionsFor(g->collection, coll->second.config, options_.db, kv_memory_);
    so.sync_writes = false;  // the Raft log is the write-ahead log
    const std::string dir = GroupDir(g->group);
    // What is on disk for this group may be an earlier replica's (moved off
    // this node, then back as a new replica): it goes, log included.
    if (absl::Status s = ClaimGroupDir(g->group, replica); !s.ok()) {
      Log(absl::StrCat("cannot prepare the directory of group ", g->group, ": ", s.ToString()));
      continue;
    }
    // The first replicas write the group's first state; a replica added
    // later (in place of a lost one) starts empty and waits for the leader.
    bool first = std::find(g->initial_voters.begin(), g->initial_voters.end(), replica) != g->initial_voters.end();
    bool from_copy = false;
    if (g->split_from != 0 && first) {
      // A split's new group: its first state is the copy this node's replica
      // of the parent took when it applied the split; `<dir>.first-state`
      // records that it was installed. Without a copy (the parent's replica
      // here was installed from a snapshot past the split, or is gone) the
      // replica starts empty, for good, and the leader sends it one. (The
      // parent's applied index is read first: a copy the apply takes is
      // there before the index passes the split.)
      const std::string marker = dir + ".first-state";
      if (!fs::exists(dir)) {
        auto parent = LocalReplica(g->split_from);
        const uint64_t parent_applied = parent ? parent->AppliedIndex() : 0;
        const std::string copy = ShardReplica::SplitChildDir(fs::path(dir).parent_path().string(), g->group);
        if (fs::exists(copy)) {
          // (The note first: a crash before the rename installs it again.)
          std::error_code ec;
          absl::Status s = storage::WriteFileAtomic(marker, absl::StrCat(g->split_from, " ", g->split_index));
          if (s.ok()) fs::rename(copy, dir, ec);
          if (s.ok() && ec) s = absl::InternalError(ec.message());
          if (s.ok()) s = storage::SyncDir(fs::path(dir).parent_path().string());
          if (!s.ok()) {
            Log(absl::StrCat("cannot install the first state of group ", g->group, " from ", copy, ": ", s.ToString()));
            continue;
          }
          Log(absl::StrCat("group ", g->group, ": starts from the split of group ", g->split_from, " at index ",
                           g->split_index));
          from_copy = true;
        } else if (fs::exists(marker)) {
          // Noted, and then lost (nothing removes a copy a replica here
          // still needs): never bootstrap empty; the leader sends a copy.
          Log(absl::StrCat("group ", g->group, ": its first state was noted but is missing; it waits for a snapshot"));
          std::error_code ec;
          fs::remove(marker, ec);
        } else if (parent && parent_applied < g->split_index) {
          continue;  // it applies the split soon
        }
      }
      first = fs::exists(marker);
    }
    // A snapshot install a crash interrupted is finished (or undone) first.
    if (absl::Status s = RecoverInstall(dir + ".staged", dir); !s.ok()) {
      Log(absl::StrCat("cannot recover the replica of group ", g->group, " in ", dir, ": ", s.ToString()));
      continue;
    }
    // A split's copy loads only the half its group keeps.
    auto copy_class = ShardReplica::SplitCopyClass(dir);
    if (!copy_class.ok()) {
      Log(absl::StrCat("cannot open the replica of group ", g->group, " in ", dir, ": ", copy_class.status().ToString()));
      continue;
    }
    db::ShardOptions open_options = so;
    open_options.load_class = *copy_class;
    // Its vectors from the replica here of the group it was split from, in
    // memory (the same points under the same ids), not read from storage.
    std::shared_ptr<db::Shard> parent_shard;
    if (copy_class->modulus != 0 && g->split_from != 0) {
      if (auto parent = LocalReplica(g->split_from)) parent_shard = parent->Serving().value_or(nullptr);
    }
    auto shard = db::Shard::Open(dir, open_options, parent_shard.get());
    parent_shard.reset();
    if (!shard.ok()) {
      Log(absl::StrCat("cannot open the replica of group ", g->group, " in ", dir, ": ", shard.status().ToString()));
      continue;
    }
    if (absl::Status s = ShardReplica::PrepareSplitCopy(**shard, dir, *copy_class); !s.ok()) {
      Log(absl::StrCat("cannot prepare the first state of group ", g->group, " in ", dir, ": ", s.ToString()));
      continue;
    }
    auto rep = std::make_shared<ShardReplica>(g->group, replica, g->collection, dir, so, std::move(*shard));
    raft::GroupSpec spec;
    spec.group = g->group;
    spec.replica = replica;
    spec.nodes = g->replicas;
    if (first) spec.initial_voters = g->initial_voters;
    spec.state_machine = rep.get();
    {
      std::lock_guard l(mu_);
      replicas_[g->group] = rep;
    }
    replica_nodes_[g->group] = spec.nodes;
    if (absl::Status s = node_->AddGroup(spec); !s.ok()) {
      Log(absl::StrCat("cannot start group ", g->group, ": ", s.ToString()));
      std::lock_guard l(mu_);
      replicas_.erase(g->group);
    } else if (from_copy) {
      // The parent's leader campaigns at once: the new group's ids wait for
      // no election timeout.
      auto parent = node_->GroupStatusOf(g->split_from);
      if (parent.ok() && parent->role == raft::Role::kLeader) node_->Campaign(g->group);
    }
  }
  // Replicas of dropped collections; tunables of the others.
  std::vector<uint64_t> gone;
  {
    std::lock_guard l(mu_);
    for (auto& [gid, rep] : replicas_) {
      auto g = st.groups.find(gid);
      // Dropped with its collection, or moved off this node (Raft removed it
      // before the map did).
      auto placed = g != st.groups.end() ? &g->second.replicas
                    : opening.count(gid) ? &opening.at(gid).replicas
                                         : nullptr;
      if (placed == nullptr || !placed->count(rep->replica()) || placed->at(rep->replica()) != self_.id) {
        gone.push_back(gid);
        continue;
      }
      auto coll = st.collections.find(rep->collection());
      if (coll != st.collections.end()) {
        const CollectionConfig& c = coll->second.config;
        if (auto shard = rep->Serving(); shard.ok()) {
          (*shard)->SetTunables(
              {c.index.ef_search, c.index.nprobe, c.index.rerank_factor, c.seal_threshold, c.compaction_deleted_ratio});
        }
      }
    }
  }
  for (uint64_t gid : gone) {
    (void)node_->RemoveGroup(gid, /*drop_log=*/true);
    replica_nodes_.erase(gid);
    receiver_->Cancel(gid);
    std::error_code ec;
    fs::remove_all(GroupDir(gid) + ".staged", ec);
    fs::remove(GroupDir(gid) + ".replica", ec);
    fs::remove(GroupDir(gid) + ".first-state", ec);
    Log(absl::StrCat("group ", gid, ": the replica here left the group; its files go"));
    std::lock_guard l(mu_);
    dropped_.push_back({replicas_[gid], GroupDir(gid)});
    replicas_.erase(gid);
  }
  RemoveStaleSplitCopies(st);
  FlushBeforeSplits(st);
  // Files of dropped replicas go once no request holds them.
  std::lock_guard l(mu_);
  for (auto it = dropped_.begin(); it != dropped_.end();) {
    if (it->first.use_count() == 1) {
      it->first.reset();
      std::error_code ec;
      fs::remove_all(it->second, ec);
      it = dropped_.erase(it);
    } else {
      ++it;
    }
  }
}

absl::Status Cluster::ClaimGroupDir(uint64_t gid, uint64_t replica) {
  const std::string dir = GroupDir(gid), marker = dir + ".replica";
  std::error_code ec;
  fs::create_directories(fs::path(dir).parent_path(), ec);
  if (fs::exists(marker, ec)) {
    CAIRN_ASSIGN_OR_RETURN(std::string held, storage::ReadFile(marker));
    if (held == std::to_string(replica)) return absl::OkStatus();
    Log(absl::StrCat("group ", gid, ": the files here are those of replica ", held, ", not of replica ", replica,
                     ": removing them"));
    CAIRN_RETURN_IF_ERROR(ForgetGroup(gid));
  }
  // (A directory without a marker was written before markers were: it is
  // this replica's.)
  return storage::WriteFileAtomic(marker, std::to_string(replica));
}

absl::Status Cluster::ForgetGroup(uint64_t gid) {
  const std::string dir = GroupDir(gid);
  std::error_code ec;
  for (const std::string& p : {dir, dir + ".staged", dir + ".old", dir + ".split", dir + ".split.tmp"}) {
    fs::remove_all(p, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot remove ", p, ": ", ec.message()));
  }
  fs::remove(dir + ".replica", ec);
  fs::remove(dir + ".first-state", ec);
  return store_->DropGroup(gid);
}

void Cluster::FlushBeforeSplits(const MetadataState& st) {
  std::set<uint64_t> ops;
  for (const auto& [gid, op] : st.ops) {
    if (op.kind != GroupOp::Kind::kSplit) continue;
    ops.insert(op.id);
    if (split_flushed_.count(op.id)) continue;
    split_flushed_.insert(op.id);
    auto rep = LocalReplica(gid);
    if (!rep) continue;
    auto shard = rep->Serving();
    if (!shard.ok()) continue;
    // A saved copy of an HNSW growing segment too: the new group's replicas
    // load it instead of building the graph again.
    absl::Status s = (*shard)->CheckpointGrowing(/*at_close=*/true);
    if (s.ok()) s = (*shard)->FlushStorage();
    if (!s.ok()) {
      Log(absl::StrCat("group ", gid, ": preparing for its split failed (the split takes longer): ", s.ToString()));
    }
  }
  for (auto it = split_flushed_.begin(); it != split_flushed_.end();) it = ops.count(*it) ? std::next(it) : split_flushed_.erase(it);
}

void Cluster::RemoveStaleSplitCopies(const MetadataState& st) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(options_.data_dir) / "groups", ec)) {
    const std::string name = e.path().filename().string();
    const auto dot = name.find(".split");
    uint64_t gid = 0;
    if (dot == std::string::npos || !absl::SimpleAtoi(name.substr(0, dot), &gid)) continue;
    // Kept while its split is under way (or not known here yet: this node's
    // metadata may lag its replica of the group being split), and until the
    // replica here opens.
    bool wanted = gid >= st.next_group;
    for (const auto& [parent, op] : st.ops) wanted = wanted || (op.kind == GroupOp::Kind::kSplit && op.to == gid);
    if (auto g = st.groups.find(gid); g != st.groups.end() && !LocalReplica(gid)) {
      for (const auto& [r, n] : g->second.replicas) wanted = wanted || n == self_.id;
    }
    if (wanted) continue;
    std::error_code rec;
    fs::remove_all(e.path(), rec);
    Log(absl::StrCat("group ", gid, ": removed the copy a split left here (", name, "), which no replica here needs"));
  }
}

void Cluster::RemoveOrphanReplicas() {
  std::lock_guard rl(reconcile_mu_);
  const auto st = meta_->State();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(options_.data_dir) / "groups", ec)) {
    const std::string name = e.path().filename().string();
    uint64_t gid = 0;
    if (!absl::SimpleAtoi(name, &gid) || gid == kMetadataGroup || gid >= st->next_group || LocalReplica(gid)) continue;
    auto g = st->groups.find(gid);
    bool here = false;
    if (g != st->groups.end()) {
      for (const auto& [r, n] : g->second.replicas) here = here || n == self_.id;
    }
    if (here) continue;
    Log(absl::StrCat("group ", gid, ": no replica of it is placed on this node any more; removing its files"));
    if (absl::Status s = ForgetGroup(gid); !s.ok()) Log(s.ToString());
  }
}

constexpr size_t kDropForeignBatch = 2048;

void Cluster::MaintenanceLoop() {
  std::unique_lock l(loop_mu_);
  for (uint64_t round = 0; !stop_; ++round) {
    loop_cv_.wait_for(l, 1s, [this] { return stop_; });
    if (stop_) break;
    l.unlock();
    std::vector<std::shared_ptr<ShardReplica>> reps;
    {
      std::lock_guard ml(mu_);
      for (auto& [gid, r] : replicas_) reps.push_back(r);
    }
    for (auto& r : reps) {
      auto shard = r->Serving();
      if (!shard.ok()) continue;  // installing a snapshot
      absl::Status s = (*shard)->Seal(/*force=*/false);
      if (s.ok()) s = (*shard)->Compact(/*force=*/false);
      // What a split left outside the shard's class leaves storage in
      // batches that keep the shard's writers waiting no longer than a few
      // milliseconds each, for at most 50 ms of each round (a second): the
      // cost is spread, not taken from the requests while a split runs.
      for (auto t0 = Clock::now(); s.ok() && Clock::now() - t0 < 50ms;) {
        auto more = (*shard)->DropForeign(kDropForeignBatch);
        s = more.status();
        if (!more.ok() || !*more) break;
      }
      if (s.ok()) s = (*shard)->CheckpointGrowing(/*at_close=*/false);
      if (!s.ok()) Log(absl::StrCat("maintenance of group ", r->group(), " failed: ", s.ToString()));
      if (const double share = options_.db.hnsw_vectors_memory_share; share > 0) {
        (*shard)->KeepVectorsInMemory([&](uint64_t bytes) { return budget_->Reserve(bytes, share); });
      }
      if (round % 10 == 0) r->MeasureBytes();  // for the controller's balance of bytes
    }
    l.lock();
  }
}

// ---- nodes coming and going ---------------------------------------------------

absl::StatusOr<uint64_t> Cluster::ResolveNode(const MetadataState& st, const std::string& node) const {
  uint64_t id = 0;
  const bool numeric = absl::SimpleAtoi(node, &id);
  for (const auto& [nid, n] : st.nodes) {
    if (st.removed_nodes.count(nid)) continue;
    if (n.name == node || (numeric && nid == id)) return nid;
  }
  if (numeric && st.removed_nodes.count(id)) {
    return absl::FailedPreconditionError(absl::StrCat("node ", id, " was removed from the cluster already"));
  }
  return absl::NotFoundError(absl::StrCat("no node \"", node, "\" in this cluster; cairn cluster nodes lists them"));
}

absl::Status Cluster::DrainNode(const std::string& node) {
  CAIRN_RETURN_IF_ERROR(MetadataReadIndex());
  const auto st = meta_->State();
  CAIRN_ASSIGN_OR_RETURN(uint64_t id, ResolveNode(*st, node));
  if (st->Is(id, NodeState::kDraining)) return absl::OkStatus();
  size_t others = 0;
  for (const auto& [nid, n] : st->nodes) others += nid != id && st->Is(nid, NodeState::kActive);
  for (const auto& [name, c] : st->collections) {
    if (c.config.replication_factor > others) {
      return absl::FailedPreconditionError(absl::StrCat(
          "draining node \"", st->nodes.at(id).name, "\" would leave ", others, " active node(s), fewer than the ",
          c.config.replication_factor, " replicas of collection \"", name,
          "\": add a node first, or lower its replication factor (cairn collection update ", name,
          " --replication-factor N)"));
    }
  }
  CAIRN_RETURN_IF_ERROR(ProposeMetadata(SetNodeStateCommand(id, NodeState::kDraining), nullptr));
  Log(absl::StrCat("node ", st->nodes.at(id).name, " (", id, ") is draining"));
  return absl::OkStatus();
}

absl::Status Cluster::ActivateNode(const std::string& node) {
  CAIRN_RETURN_IF_ERROR(MetadataReadIndex());
  const auto st = meta_->State();
  CAIRN_ASSIGN_OR_RETURN(uint64_t id, ResolveNode(*st, node));
  return ProposeMetadata(SetNodeStateCommand(id, NodeState::kActive), nullptr);
}

absl::Status Cluster::RemoveNode(const std::string& node) {
  CAIRN_RETURN_IF_ERROR(MetadataReadIndex());
  const auto st = meta_->State();
  CAIRN_ASSIGN_OR_RETURN(uint64_t id, ResolveNode(*st, node));
  const std::string& name = st->nodes.at(id).name;
  if (st->Is(id, NodeState::kActive)) {
    return absl::FailedPreconditionError(absl::StrCat("node \"", name, "\" is active: drain it first (cairn cluster drain ",
                                                      name, "), then remove it once it holds no replica"));
  }
  // Its vote in the metadata group leaves first (the metadata leader moves
  // it off a draining or dead node), so that the group keeps its majority.
  auto meta = node_->GroupStatusOf(kMetadataGroup);
  if (meta.ok() && std::find(meta->voters.begin(), meta->voters.end(), id) != meta->voters.end()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "node \"", name, "\" still votes in the metadata group: its vote moves to an active node once one has caught "
        "up (seconds; a dead voter keeps it while fewer than three active nodes vote); retry"));
  }
  CAIRN_RETURN_IF_ERROR(ProposeMetadata(RemoveNodeCommand(id), nullptr));
  Log(absl::StrCat("node ", name, " (", id, ") was removed from the cluster; its id is refused from now on"));
  return absl::OkStatus();
}

size_t Cluster::HandOffLeadership(std::chrono::milliseconds timeout) {
  raft::Node* node = node_ptr_.load();
  if (node == nullptr) return 0;
  // What is handed off must not come back: this node declines transfers,
  // and tells the controller it is stopping.
  stopping_ = true;
  node->DeclineLeadership();
  const auto deadline = Clock::now() + timeout;
  size_t leading = 0;
  for (int round = 0;; ++round) {
    leading = 0;
    for (const raft::GroupStatus& gs : node->Status()) {
      if (gs.role != raft::Role::kLeader || gs.stopped) continue;
      ++leading;
      // The voter holding most of the log (Raft sends it the rest first).
      const uint64_t best = BestVoter(gs, /*whole_log=*/false);
      if (best != 0 && round % 10 == 0) node->TransferLeadership(gs.group, best);
    }
    if (leading == 0 || Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(50ms, options_.tick));
  }
  return leading;
}

// ---- Database ----------------------------------------------------------------

absl::StatusOr<std::shared_ptr<Collection>> Cluster::CreateCollection(const std::string& name,
                                                                      const CollectionConfig& config) {
  CAIRN_RETURN_IF_ERROR(db::ValidateCollectionName(name));
  CAIRN_RETURN_IF_ERROR(db::ValidateConfig(config));
  CAIRN_RETURN_IF_ERROR(MetadataReadIndex());
  for (int attempt = 0; attempt < 5; ++attempt) {
    const auto st_ptr = meta_->State();
    const MetadataState& st = *st_ptr;
    if (st.collections.count(name)) return absl::AlreadyExistsError(absl::StrCat("collection \"", name, "\" already exists"));
    CollectionConfig c = config;
    if (c.replication_factor == 0) {
      size_t active = 0;
      for (const auto& [id, n] : st.nodes) active += st.Is(id, NodeState::kActive);
      c.replication_factor = static_cast<uint32_t>(std::min<size_t>(3, std::max<size_t>(active, 1)));
    }
    // Nodes that do not answer now get replicas only when the others are too few.
    std::set<uint64_t> unreachable;
    std::vector<std::pair<uint64_t, std::future<bool>>> probes;
    for (const auto& [id, n] : st.nodes) {
      if (id == self_.id || st.removed_nodes.count(id)) continue;
      const std::string address = n.peer_address;
      // The node itself must answer: not a new node (a wiped disk) at its address.
      probes.push_back({id, std::async(std::launch::async, [this, address, id = id] {
                          auto ctx = clients_->NewContext(1s);
                          pb::HelloResponse resp;
                          return clients_->StubFor(address)->Hello(ctx.get(), pb::HelloRequest(), &resp).ok() &&
                                 resp.node_id() == id && resp.cluster_id() == membership_.cluster_id;
                        })});
    }
    for (auto& [id, f] : probes) {
      if (!f.get()) unreachable.insert(id);
    }
    CAIRN_ASSIGN_OR_RETURN(auto placement, PlaceShards(st, c.num_shards, c.replication_factor, unreachable));
    absl::Status s = ProposeMetadata(CreateCollectionCommand(st, name, c, placement), nullptr);
    if (absl::IsAborted(s)) continue;  // the map moved on: place again
    CAIRN_RETURN_IF_ERROR(s);
    Reconcile();
    return GetCollection(name);
  }
  return absl::AbortedError("the cluster's map kept changing while the collection was placed; retry");
}

absl::StatusOr<std::shared_ptr<Collection>> Cluster::GetCollection(const std::string& name) const {
  auto* self = const_cast<Cluster*>(this);
  auto st = meta_->State();
  auto it = st->collections.find(name);
  if (it == st->collections.end()) {
    // Created through another node a moment ago? Catch up, then look again.
    CAIRN_RETURN_IF_ERROR(self->MetadataReadIndex());
    st = meta_->State();
    it = st->collections.find(name);
    if (it == st->collections.end()) {
      return absl::NotFoundError(absl::StrCat("collection \"", name, "\" does not exist"));
    }
  }
  auto update = [self, name](const CollectionConfig& update) -> absl::Status {
    const auto st = self->meta_->State();
    auto it = st->collections.find(name);
    if (it == st->collections.end()) return absl::NotFoundError(absl::StrCat("collection \"", name, "\" does not exist"));
    CAIRN_RETURN_IF_ERROR(db::ValidateConfig(update));
    CAIRN_RETURN_IF_ERROR(db::CheckConfigUpdate(it->second.config, update, /*replication_factor_may_change=*/true));
    CollectionConfig next = it->second.config;
    if (update.replication_factor != 0 && update.replication_factor != next.replication_factor) {
      size_t active = 0;
      for (const auto& [id, n] : st->nodes) active += st->Is(id, NodeState::kActive);
      if (update.replication_factor > active) {
        return absl::InvalidArgumentError(absl::StrCat(
            "config.replication_factor is ", update.replication_factor, ", but the cluster has ", active,
            " active nodes: each replica of a shard needs a node of its own; add nodes first"));
      }
      next.replication_factor = update.replication_factor;
    }
    next.index.ef_search = update.index.ef_search;
    next.index.nprobe = update.index.nprobe;
    next.index.rerank_factor = update.index.rerank_factor;
    next.seal_threshold = update.seal_threshold;
    next.compaction_deleted_ratio = update.compaction_deleted_ratio;
    next.split_points = update.split_points;
    CAIRN_RETURN_IF_ERROR(self->ProposeMetadata(UpdateConfigCommand(name, next), nullptr));
    self->Reconcile();
    return absl::OkStatus();
  };
  return std::shared_ptr<Collection>(
      std::make_shared<ClusterCollection>(self, name, it->second.config, update));
}

bool Cluster::MadeBySplit(uint64_t gid) const {
  const auto st = meta_->State();
  if (auto g = st->groups.find(gid); g != st->groups.end()) return g->second.split_from != 0;
  for (const auto& [parent, op] : st->ops) {
    if (op.kind == GroupOp::Kind::kSplit && op.to == gid) return true;
  }
  return false;
}

absl::StatusOr<Cluster::ShardMap> Cluster::ShardMapOf(const std::string& collection) const {
  const auto st = meta_->State();
  auto it = st->collections.find(collection);
  if (it == st->collections.end()) {
    return absl::NotFoundError(absl::StrCat("collection \"", collection, "\" does not exist"));
  }
  ShardMap map;
  for (uint64_t gid : it->second.groups) {
    auto g = st->groups.find(gid);
    if (g == st->groups.end()) return absl::InternalError(absl::StrCat("the metadata has no group ", gid));
    map.groups.push_back(gid);
    map.classes.push_back(st->ClassOf(g->second));
    map.recorded.push_back(g->second.cls);
  }
  CAIRN_ASSIGN_OR_RETURN(map.router, db::HashRouter::Build(map.classes));
  return map;
}

absl::StatusOr<Cluster::ShardMap> Cluster::AwaitShardMap(const std::string& collection,
                                                         const std::function<bool(const ShardMap&)>& ready) const {
  const auto deadline = Clock::now() + options_.request_timeout;
  auto pause = 5ms;
  while (true) {
    CAIRN_ASSIGN_OR_RETURN(ShardMap map, ShardMapOf(collection));
    if (ready(map)) return map;
    if (Clock::now() >= deadline) {
      return absl::UnavailableError(absl::StrCat("a split of collection \"", collection, "\" did not reach node ",
                                                 self_.name, " within ", options_.request_timeout.count(),
                                                 " ms; retry"));
    }
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::milliseconds>(pause * 2, 100ms);
  }
}

absl::StatusOr<Cluster::ShardMap> Cluster::ShardMapAfterSplit(const std::string& collection, uint64_t gid,
                                                              db::HashClass was) const {
  return AwaitShardMap(collection, [&](const ShardMap& m) {
    for (size_t s = 0; s < m.groups.size(); ++s) {
      if (m.groups[s] == gid) return m.recorded[s] != was;
    }
    return true;  // gone: the caller finds out
  });
}

absl::Status Cluster::SplitCollection(const std::string& name) {
  uint64_t shards = 0;
  CAIRN_RETURN_IF_ERROR(ProposeMetadata(QueueSplitsCommand(name), &shards));
  Log(absl::StrCat("collection ", name, ": its ", shards, " shard(s) are queued to split, one at a time"));
  return absl::OkStatus();
}

absl::StatusOr<CollectionConfig> Cluster::CurrentConfig(const std::string& name) const {
  const auto st_ptr = meta_->State();
  const MetadataState& st = *st_ptr;
  auto it = st.collections.find(name);
  if (it == st.collections.end()) return absl::NotFoundError(absl::StrCat("collection \"", name, "\" does not exist"));
  return it->second.config;
}

std::vector<std::string> Cluster::ListCollections() const {
  std::vector<std::string> out;
  for (const auto& [name, c] : meta_->State()->collections) out.push_back(name);
  return out;
}

absl::StatusOr<CollectionInfo> Cluster::DescribeCollection(const std::string& name) const {
  CAIRN_ASSIGN_OR_RETURN(auto c, GetCollection(name));
  return c->Info();
}

absl::Status Cluster::DropCollection(const std::string& name) {
  CAIRN_RETURN_IF_ERROR(ProposeMetadata(DropCollectionCommand(name), nullptr));
  Reconcile();
  return absl::OkStatus();
}

absl::Status Cluster::Snapshot(const std::string& name, const std::string& target) {
  CAIRN_RETURN_IF_ERROR(MetadataReadIndex());
  const auto st = meta_->State();
  auto it = st->collections.find(name);
  if (it == st->collections.end()) return absl::NotFoundError(absl::StrCat("collection \"", name, "\" does not exist"));
  if (it->second.initial_shards != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "collection \"", name, "\" had its shards split: snapshots of split collections are not supported yet (a "
        "snapshot's shards are routed by the id hash modulo their count, which a split collection's are not)"));
  }
  const CollectionConfig config = it->second.config;
  const std::vector<uint64_t> groups = it->second.groups;
  return db::WriteSnapshotDir(target, name, config, [&](const std::string& cdir) -> absl::Status {
    for (size_t s = 0; s < groups.size(); ++s) {
      const std::string what = absl::StrCat("shard ", s, " of collection \"", name, "\" (group ", groups[s], ")");
      CAIRN_RETURN_IF_ERROR(CopyShard(groups[s], what, (fs::path(cdir) / db::ShardDirName(s)).string()));
    }
    return absl::OkStatus();
  });
}

absl::Status Cluster::CopyShard(uint64_t gid, const std::string& what, const std::string& dir) {
  // Every write acknowledged before the copy began is in it: the replica
  // copied first waits as for a linearizable read.
  CAIRN_ASSIGN_OR_RETURN(auto local, ReadableReplica(gid, what));
  if (local) {
    absl::Status s = local->Checkpoint(dir);
    if (!absl::IsUnavailable(s)) return s;
    std::error_code ec;
    fs::remove_all(dir, ec);  // it began installing a snapshot: another replica serves the copy
  }
  ShardReadRequest q;
  q.op = ShardReadRequest::Op::kExport;
  CAIRN_ASSIGN_OR_RETURN(std::string body, RemoteRead(gid, q, what));
  CAIRN_ASSIGN_OR_RETURN(SnapshotDescriptor desc, SnapshotDescriptor::Decode(body));
  FetchOptions fo;
  fo.rate_bytes_per_second = options_.snapshot_rate_bytes;
  const uint64_t source = desc.source_node;
  auto fetched = FetchSnapshot(
      desc, dir, /*live=*/"",
      [&](const std::string& path, uint64_t offset, uint32_t length) {
        return FetchSnapshotChunk(source, desc.id, path, offset, length);
      },
      fo);
  TellSnapshotDone(source, desc.id, fetched.ok(), fetched.ok() ? "" : fetched.status().ToString());
  if (!fetched.ok()) return absl::Status(fetched.status().code(), absl::StrCat(what, ": ", fetched.status().message()));
  std::error_code ec;
  fs::remove(fs::path(dir) / kCompleteMarker, ec);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Collection>> Cluster::RestoreCollection(const std::string& snapshot_dir,
                                                                       const std::string& name) {
  CAIRN_RETURN_IF_ERROR(db::ValidateCollectionName(name));
  CAIRN_ASSIGN_OR_RETURN(db::SnapshotContents snap, db::ReadSnapshotDir(snapshot_dir));
  // The snapshot's points are written again through the collection's Raft
  // groups, from a copy of it opened as a single-node database (the
  // snapshot itself is left as it was).
  const fs::path work = fs::path(options_.data_dir) / "restores" / absl::StrCat(name, "-", absl::BytesToHexString(NewRequestId()));
  std::error_code ec;
  fs::remove_all(work, ec);
  auto cleanup = absl::MakeCleanup([&] { fs::remove_all(work, ec); });
  CAIRN_RETURN_IF_ERROR(db::CopyTree(snapshot_dir, work));
  fs::remove(work / "LOCK", ec);
  DatabaseOptions dbo = options_.db;
  dbo.background_maintenance = false;
  CAIRN_ASSIGN_OR_RETURN(auto source_db, Database::Open(work.string(), dbo));
  const std::string source_name = snap.collection_dir.filename().string();
  CAIRN_ASSIGN_OR_RETURN(auto source, source_db->GetCollection(source_name));
  CollectionConfig config = snap.config;
  CAIRN_ASSIGN_OR_RETURN(auto target, CreateCollection(name, config));
  absl::Status s = [&]() -> absl::Status {
    ScrollRequest sr;
    sr.limit = static_cast<uint32_t>(std::min<uint64_t>(1000, options_.db.max_batch_points));
    sr.with_payload = true;
    sr.with_vector = true;
    while (true) {
      CAIRN_ASSIGN_OR_RETURN(ScrollPage page, source->Scroll(sr));
      // Writes of at most 4 MiB each: every one is a Raft entry.
      std::vector<Point> points;
      uint64_t bytes = 0;
      for (size_t i = 0; i < page.points.size(); ++i) {
        Record& r = page.points[i];
        bytes += r.vector.size() * sizeof(float) + r.payload.size() + r.text.size();
        points.push_back(Point{r.id, std::move(r.vector), std::move(r.payload), std::move(r.text)});
        if (bytes >= (4u << 20) || i + 1 == page.points.size()) {
          CAIRN_RETURN_IF_ERROR(target->Upsert(points));
          points.clear();
          bytes = 0;
        }
      }
      if (page.next_cursor.empty()) return absl::OkStatus();
      sr.cursor = page.next_cursor;
    }
  }();
  if (!s.ok()) {
    // Nothing is left of a restore that failed half-way.
    (void)DropCollection(name);
    return absl::Status(s.code(), absl::StrCat("restore ", name, " from ", snapshot_dir, ": ", s.message()));
  }
  return target;
}

absl::StatusOr<std::map<uint64_t, db::Shard::Checksum>> Cluster::LocalChecksums() const {
  std::vector<std::shared_ptr<ShardReplica>> reps;
  {
    std::lock_guard l(mu_);
    for (auto& [gid, r] : replicas_) reps.push_back(r);
  }
  std::map<uint64_t, db::Shard::Checksum> out;
  for (auto& r : reps) {
    CAIRN_ASSIGN_OR_RETURN(auto shard, r->Serving());
    CAIRN_ASSIGN_OR_RETURN(out[r->group()], shard->DataChecksum());
  }
  return out;
}

// ---- snapshot transfers ---------------------------------------------------------

std::string Cluster::GroupDir(uint64_t gid) const {
  return (fs::path(options_.data_dir) / "groups" / std::to_string(gid)).string();
}

std::string Cluster::PeerAddress(uint64_t node) const {
  const auto st = meta_->State();
  auto it = st->nodes.find(node);
  return it == st->nodes.end() ? std::string() : it->second.peer_address;
}

void Cluster::StartSnapshotTransfers() {
  transport_ = std::make_unique<SnapshotRouter>(this);
  SnapshotSender::Hooks sh;
  sh.checkpoint = [this](uint64_t gid, const std::string& dir) -> absl::Status {
    auto rep = LocalReplica(gid);
    if (!rep) return absl::NotFoundError(absl::StrCat("group ", gid, " has no replica here"));
    return rep->Checkpoint(dir);
  };
  sh.send = [this](uint64_t to_node, raft::Transport::GroupMessage gm) {
    std::vector<raft::Transport::GroupMessage> batch;
    batch.push_back(std::move(gm));
    clients_->Send(to_node, std::move(batch));
  };
  sh.report = [this](uint64_t gid, uint64_t replica, bool ok) {
    if (raft::Node* node = node_ptr_.load()) node->ReportSnapshot(gid, replica, ok);
  };
  sender_ = std::make_unique<SnapshotSender>(self_.id, (fs::path(options_.data_dir) / "snapshots-out").string(),
                                             std::move(sh), TransferOptions());
  SnapshotReceiver::Hooks rh;
  rh.group_dir = [this](uint64_t gid) { return GroupDir(gid); };
  rh.read_chunk = [this](uint64_t node, const std::string& id, const std::string& path, uint64_t offset,
                         uint32_t length) { return FetchSnapshotChunk(node, id, path, offset, length); };
  rh.done = [this](uint64_t node, const std::string& id, bool ok, const std::string& error) {
    TellSnapshotDone(node, id, ok, error);
  };
  rh.deliver = [this](uint64_t from, raft::Transport::GroupMessage gm) {
    std::vector<raft::Transport::GroupMessage> batch;
    batch.push_back(std::move(gm));
    if (raft::Node* node = node_ptr_.load()) node->Deliver(from, std::move(batch));
  };
  rh.reached = [this](uint64_t gid, uint64_t index) {
    raft::Node* node = node_ptr_.load();
    if (node == nullptr) return false;
    auto st = node->GroupStatusOf(gid);
    return st.ok() && (st->snapshot_index >= index || st->applied >= index);
  };
  FetchOptions fo;
  fo.rate_bytes_per_second = options_.snapshot_rate_bytes;
  receiver_ = std::make_unique<SnapshotReceiver>(std::move(rh), fo);
}

absl::StatusOr<std::string> Cluster::FetchSnapshotChunk(uint64_t node, const std::string& id,
                                                        const std::string& path, uint64_t offset, uint32_t length) {
  const std::string address = PeerAddress(node);
  if (address.empty()) return absl::UnavailableError(absl::StrCat("node ", node, " has no known address"));
  pb::SnapshotChunkRequest req;
  req.set_cluster_id(membership_.cluster_id);
  req.set_snapshot_id(id);
  req.set_path(path);
  req.set_offset(offset);
  req.set_length(length);
  pb::SnapshotChunk chunk;
  auto ctx = clients_->NewContext(30s);
  grpc::Status s = clients_->StubFor(address)->FetchSnapshotChunk(ctx.get(), req, &chunk);
  if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  return std::move(*chunk.mutable_data());
}

void Cluster::TellSnapshotDone(uint64_t node, const std::string& id, bool ok, const std::string& error) {
  const std::string address = PeerAddress(node);
  if (address.empty()) return;
  pb::SnapshotDoneRequest req;
  req.set_cluster_id(membership_.cluster_id);
  req.set_snapshot_id(id);
  req.set_ok(ok);
  req.set_error(error);
  pb::SnapshotDoneResponse resp;
  auto ctx = clients_->NewContext(5s);
  (void)clients_->StubFor(address)->SnapshotDone(ctx.get(), req, &resp);
}

void Cluster::DeliverRaft(uint64_t from, std::vector<raft::Transport::GroupMessage> batch) {
  raft::Node* node = node_ptr_.load();
  if (node == nullptr) return;
  if (meta_->State()->removed_nodes.count(from)) {
    // A node removed from the cluster (replaced after its disk was wiped, or
    // a copy of that disk started again): never heard again.
    static std::atomic<int> logged{0};
    if (logged++ % 1000 == 0) {
      Log(absl::StrCat("refused Raft messages from node ", from, ", which was removed from the cluster"));
    }
    return;
  }
  std::vector<raft::Transport::GroupMessage> rest;
  rest.reserve(batch.size());
  for (auto& gm : batch) {
    // A shard's snapshot reaches Raft once its files are here.
    if (gm.msg.type == raft::MessageType::kSnap && gm.group != kMetadataGroup && gm.msg.snapshot &&
        !gm.msg.snapshot->data.empty()) {
      receiver_->Offer(from, std::move(gm));
    } else {
      rest.push_back(std::move(gm));
    }
  }
  node->Deliver(from, std::move(rest));
}

absl::StatusOr<std::string> Cluster::ReadSnapshotChunk(const std::string& id, const std::string& path,
                                                       uint64_t offset, uint32_t length) {
  if (!sender_) return absl::UnavailableError("this node is starting");
  return sender_->ReadChunk(id, path, offset, length);
}

void Cluster::SnapshotDone(const std::string& id, bool ok, const std::string& error) {
  if (sender_) sender_->Done(id, ok, error);
}

void Cluster::AppendPrometheus(std::string* out) const {
  raft::Node* node = node_ptr_.load();
  if (node == nullptr) return;
  const auto st_ptr = meta_->State();
  const MetadataState& st = *st_ptr;
  std::string term, commit, applied, leader, changes, lag, stopped, latency, first, compactions, installed, quiet;
  for (const auto& g : node->Status()) {
    std::string label = absl::StrCat("{group=\"", g.group, "\"");
    if (auto it = st.groups.find(g.group); it != st.groups.end()) {
      absl::StrAppend(&label, ",collection=\"", it->second.collection, "\",shard=\"", it->second.shard, "\"");
    } else if (g.group == kMetadataGroup) {
      absl::StrAppend(&label, ",collection=\"\",shard=\"metadata\"");
    }
    absl::StrAppend(&term, "cairn_raft_term", label, "} ", g.term, "\n");
    absl::StrAppend(&commit, "cairn_raft_commit_index", label, "} ", g.commit, "\n");
    absl::StrAppend(&applied, "cairn_raft_applied_index", label, "} ", g.applied, "\n");
    absl::StrAppend(&leader, "cairn_raft_is_leader", label, "} ", g.role == raft::Role::kLeader ? 1 : 0, "\n");
    absl::StrAppend(&changes, "cairn_raft_leader_changes_total", label, "} ", g.leader_changes, "\n");
    absl::StrAppend(&stopped, "cairn_raft_group_stopped", label, "} ", g.stopped ? 1 : 0, "\n");
    absl::StrAppend(&quiet, "cairn_raft_quiesced", label, "} ", g.quiesced ? 1 : 0, "\n");
    absl::StrAppend(&first, "cairn_raft_log_first_index", label, "} ", g.first_index, "\n");
    absl::StrAppend(&compactions, "cairn_raft_log_compactions_total", label, "} ", g.compactions, "\n");
    absl::StrAppend(&installed, "cairn_raft_snapshots_installed_total", label, "} ", g.snapshots_installed, "\n");
    absl::StrAppend(&latency, "cairn_raft_proposal_seconds_sum", label, "} ", g.proposal_seconds, "\n",
                    "cairn_raft_proposal_seconds_count", label, "} ", g.proposals_applied, "\n");
    for (const auto& p : g.peers) {
      if (p.node == self_.id) continue;
      absl::StrAppend(&lag, "cairn_raft_follower_lag", label, ",node=\"", p.node, "\"} ",
                      g.last_index > p.match ? g.last_index - p.match : 0, "\n");
    }
  }
  absl::StrAppend(out, "# HELP cairn_raft_term Raft term of each group hosted here.\n# TYPE cairn_raft_term gauge\n",
                  term, "# HELP cairn_raft_commit_index Committed log index.\n# TYPE cairn_raft_commit_index gauge\n",
                  commit, "# HELP cairn_raft_applied_index Log index applied here.\n",
                  "# TYPE cairn_raft_applied_index gauge\n", applied,
                  "# HELP cairn_raft_is_leader 1 when this node's replica leads the group.\n",
                  "# TYPE cairn_raft_is_leader gauge\n", leader,
                  "# HELP cairn_raft_leader_changes_total Leader changes seen here.\n",
                  "# TYPE cairn_raft_leader_changes_total counter\n", changes,
                  "# HELP cairn_raft_group_stopped 1 when the replica stopped on an error (see the log).\n",
                  "# TYPE cairn_raft_group_stopped gauge\n", stopped,
                  "# HELP cairn_raft_quiesced 1 while the group is idle and quiet (no heartbeats, no election timer).\n",
                  "# TYPE cairn_raft_quiesced gauge\n", quiet,
                  "# HELP cairn_raft_proposal_seconds From proposing a write through this node to applying it here.\n",
                  "# TYPE cairn_raft_proposal_seconds summary\n", latency,
                  "# HELP cairn_raft_follower_lag Entries a follower lacks, seen from its leader.\n",
                  "# TYPE cairn_raft_follower_lag gauge\n", lag,
                  "# HELP cairn_raft_log_first_index The first entry the Raft log still holds (compacted before).\n",
                  "# TYPE cairn_raft_log_first_index gauge\n", first,
                  "# HELP cairn_raft_log_compactions_total Times the Raft log was compacted behind a snapshot.\n",
                  "# TYPE cairn_raft_log_compactions_total counter\n", compactions,
                  "# HELP cairn_raft_snapshots_installed_total Snapshots from a leader installed here.\n",
                  "# TYPE cairn_raft_snapshots_installed_total counter\n", installed);
  const auto sent = sender_->stats();
  const auto received = receiver_->stats();
  absl::StrAppend(out, "# HELP cairn_snapshot_transfers_total Shard snapshot transfers, by direction and result.\n",
                  "# TYPE cairn_snapshot_transfers_total counter\n",
                  "cairn_snapshot_transfers_total{direction=\"sent\",result=\"ok\"} ", sent.succeeded, "\n",
                  "cairn_snapshot_transfers_total{direction=\"sent\",result=\"failed\"} ", sent.failed, "\n",
                  "cairn_snapshot_transfers_total{direction=\"received\",result=\"ok\"} ", received.succeeded, "\n",
                  "cairn_snapshot_transfers_total{direction=\"received\",result=\"failed\"} ", received.failed,
                  "\n", "# HELP cairn_snapshot_bytes_total Snapshot bytes served, fetched, and kept (the receiver ",
                  "had them).\n# TYPE cairn_snapshot_bytes_total counter\n",
                  "cairn_snapshot_bytes_total{kind=\"served\"} ", sent.bytes_served, "\n",
                  "cairn_snapshot_bytes_total{kind=\"fetched\"} ", received.bytes.bytes_fetched, "\n",
                  "cairn_snapshot_bytes_total{kind=\"kept\"} ", received.bytes.bytes_kept, "\n");
  absl::StrAppend(out,
                  "# HELP cairn_peer_batches_sent_total Raft batches sent to other nodes.\n",
                  "# TYPE cairn_peer_batches_sent_total counter\ncairn_peer_batches_sent_total ", clients_->sent(), "\n",
                  "# HELP cairn_peer_batches_dropped_total Raft batches dropped (peer unreachable or queue full).\n",
                  "# TYPE cairn_peer_batches_dropped_total counter\ncairn_peer_batches_dropped_total ",
                  clients_->dropped(), "\n");
}

pb::NodeStatusResponse Cluster::NodeStatus() {
  pb::NodeStatusResponse r;
  r.set_node_id(self_.id);
  r.set_stopping(stopping_.load());
  raft::Node* node = node_ptr_.load();
  if (node == nullptr) return r;
  for (const auto& g : node->Status()) {
    auto* gr = r.add_groups();
    gr->set_group(g.group);
    gr->set_leader_replica(g.leader);
    gr->set_term(g.term);
    gr->set_commit(g.commit);
    gr->set_applied(g.applied);
    gr->set_last_index(g.last_index);
    gr->set_leader_changes(g.leader_changes);
    gr->set_is_leader(g.role == raft::Role::kLeader);
    for (const auto& p : g.peers) (*gr->mutable_match())[p.replica] = p.match;
    gr->set_stopped(g.stopped);
    if (auto rep = LocalReplica(g.group)) {
      gr->set_bytes(rep->bytes());
      if (auto shard = rep->Serving(); shard.ok()) gr->set_points((*shard)->Count(nullptr).value_or(0));
    }
    gr->set_stop_reason(g.stop_reason);
    for (uint64_t v : g.voters) gr->add_voters(v);
    for (uint64_t l : g.learners) gr->add_learners(l);
  }
  return r;
}

std::map<uint64_t, pb::NodeStatusResponse> Cluster::Reports(const MetadataState& st,
                                                             const std::set<uint64_t>& skip) const {
  // Every node's report, asked at once.
  std::map<uint64_t, pb::NodeStatusResponse> reports;
  reports[self_.id] = const_cast<Cluster*>(this)->NodeStatus();
  std::vector<std::pair<uint64_t, std::future<std::optional<pb::NodeStatusResponse>>>> asks;
  for (const auto& [id, n] : st.nodes) {
    if (id == self_.id || st.removed_nodes.count(id) || skip.count(id)) continue;
    const std::string address = n.peer_address;
    asks.push_back({id, std::async(std::launch::async, [this, address]() -> std::optional<pb::NodeStatusResponse> {
                      pb::NodeStatusRequest req;
                      req.set_cluster_id(membership_.cluster_id);
                      pb::NodeStatusResponse resp;
                      auto ctx = clients_->NewContext(1s);
                      if (!clients_->StubFor(address)->NodeStatus(ctx.get(), req, &resp).ok()) return std::nullopt;
                      return resp;
                    })});
  }
  for (auto& [id, f] : asks) {
    if (auto r = f.get()) reports[id] = *std::move(r);
  }
  return reports;
}

ClusterStatus Cluster::Status() const {
  ClusterStatus out;
  out.cluster_id = ClusterId();
  out.node_id = self_.id;
  out.node_name = self_.name;
  if (!meta_) return out;
  const auto st_ptr = meta_->State();
  const MetadataState& st = *st_ptr;
  const auto reports = Reports(st);
  for (const auto& [id, n] : st.nodes) {
    ClusterStatus::Node node;
    node.id = id;
    node.name = n.name;
    node.address = n.peer_address;
    node.zone = n.zone;
    node.state = st.removed_nodes.count(id) ? "removed" : NodeStateName(n.state);
    node.reachable = reports.count(id) > 0;
    node.replicas = st.GroupsOn(id).size();
    if (auto r = reports.find(id); r != reports.end()) {
      for (const auto& g : r->second.groups()) {
        node.bytes += g.bytes();
        if (g.is_leader() && g.group() != kMetadataGroup) ++node.leaders;
      }
    }
    out.nodes.push_back(std::move(node));
  }
  for (const auto& [name, c] : st.collections) {
    for (uint64_t gid : c.split_queue) {
      auto g = st.groups.find(gid);
      out.operations.push_back({gid, name, g == st.groups.end() ? 0 : g->second.shard, "split", 0, 0, 0,
                                "cairn collection split", "queued", 0});
    }
  }
  for (const auto& [gid, op] : st.ops) {
    auto g = st.groups.find(gid);
    const bool split = op.kind == GroupOp::Kind::kSplit;
    out.operations.push_back({gid, g == st.groups.end() ? "" : g->second.collection,
                              g == st.groups.end() ? 0 : g->second.shard, OpKindName(op.kind), op.from,
                              split ? 0 : op.to, op.to_node, op.reason, op.step, split ? op.to : 0});
  }
  // group -> node -> report
  std::map<uint64_t, std::map<uint64_t, const pb::GroupReport*>> by_group;
  for (const auto& [node, r] : reports) {
    for (const auto& g : r.groups()) by_group[g.group()][node] = &g;
  }
  auto build = [&](uint64_t gid, const std::string& collection, uint32_t shard,
                   const std::map<uint64_t, uint64_t>& replicas) {
    ClusterStatus::Group g;
    g.group = gid;
    g.collection = collection;
    g.shard = shard;
    const auto& reps = by_group[gid];
    const pb::GroupReport* leader = nullptr;
    for (const auto& [node, r] : reps) {
      if (r->is_leader() && (leader == nullptr || r->term() > leader->term())) leader = r;
    }
    for (const auto& [replica, node] : replicas) {
      ClusterStatus::Replica rep;
      rep.replica = replica;
      rep.node = node;
      if (auto it = reps.find(node); it != reps.end()) {
        rep.reported = true;
        rep.applied = it->second->applied();
        if (leader == nullptr && it->second->term() >= g.term) {
          g.term = it->second->term();
          g.commit = std::max(g.commit, it->second->commit());
        }
      }
      if (leader != nullptr) {
        rep.leader = leader->leader_replica() == replica;
        auto m = leader->match().find(replica);
        if (m != leader->match().end()) {
          rep.match = m->second;
          rep.lag = leader->last_index() > m->second ? leader->last_index() - m->second : 0;
        }
        if (rep.leader) g.leader_node = node;
      }
      g.replicas.push_back(rep);
    }
    if (leader != nullptr) {
      g.term = leader->term();
      g.commit = leader->commit();
      g.leader_changes = leader->leader_changes();
    }
    out.groups.push_back(std::move(g));
  };
  // The metadata group's members (replica id = node id): as its leader has
  // them, else every member node.
  std::map<uint64_t, uint64_t> meta_replicas;
  for (const auto& [node, r] : by_group[kMetadataGroup]) {
    if (!r->is_leader()) continue;
    for (uint64_t v : r->voters()) meta_replicas[v] = v;
    for (uint64_t l : r->learners()) meta_replicas[l] = l;
  }
  if (meta_replicas.empty()) {
    for (const auto& [id, n] : st.nodes) {
      if (!st.removed_nodes.count(id)) meta_replicas[id] = id;
    }
  }
  build(kMetadataGroup, "", 0, meta_replicas);
  // Votes, and who has not caught up with the metadata yet (as its leader
  // sees them).
  for (const auto& [node, r] : by_group[kMetadataGroup]) {
    if (!r->is_leader()) continue;
    for (auto& n : out.nodes) {
      n.metadata_voter = std::find(r->voters().begin(), r->voters().end(), n.id) != r->voters().end();
      auto m = r->match().find(n.id);
      const bool member = n.metadata_voter || std::find(r->learners().begin(), r->learners().end(), n.id) !=
                                                   r->learners().end();
      if (n.state == "active" && n.id != node &&
          (!member || m == r->match().end() || m->second + kCaughtUp < r->commit())) {
        n.state = "joining";
      }
    }
  }
  for (auto& n : out.nodes) {
    n.removable = (n.state == "draining" || n.state == "dead") && n.replicas == 0 && !n.metadata_voter;
  }
  for (const auto& [gid, g] : st.groups) build(gid, g.collection, g.shard, g.replicas);
  return out;
}

}  // namespace cairn::cluster
