// Cluster: one node of a replicated, sharded Cairn (cairnd --cluster), seen
// through the same cairn::Database interface as the embedded engine, so the
// gRPC service and the CLI work unchanged against any node.
//
// Each collection is split into shards and each shard is a Raft group of
// replication_factor replicas on distinct nodes (db::Shard::Apply applies its
// committed entries). The metadata group (metadata.h) holds the nodes, the
// collections and the shard map; every node follows it and opens the replicas
// the map places on it. A request may arrive at any node: writes go to the
// shard's group (proposed here when this node holds a replica, else passed to
// a node that does), reads are linearizable (ReadIndex) on whichever replica
// serves them, searches go to every shard and their top-k are merged.
//
// Open forms or rejoins the cluster (bootstrap.h) and returns once this node
// follows the metadata group and has opened its replicas. Requests that find
// no leader or no quorum are retried until options.request_timeout, then end
// with Unavailable naming the shard.
//
// Thread-safety: all methods are thread-safe.
#ifndef CAIRN_CLUSTER_CLUSTER_H_
#define CAIRN_CLUSTER_CLUSTER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cairn/database.h"
#include "cluster/bootstrap.h"
#include "cluster/metadata.h"
#include "cluster/peer.h"
#include "cluster/shard_wire.h"
#include "cluster/snapshot_transfer.h"
#include "db/memory_budget.h"
#include "db/shard.h"
#include "replication/node.h"

namespace cairn::storage {
class FileLock;
}

namespace cairn::cluster {

struct ClusterOptions {
  // This node's data directory. Required.
  std::string data_dir;
  // This node's name, unique in the cluster (a StatefulSet pod's name).
  // Required.
  std::string node_name;
  // Where the peer port listens. Default: 127.0.0.1:7602.
  std::string peer_listen = "127.0.0.1:7602";
  // This node's peer address as the others reach it; when it is one of
  // `seeds`, this node is that seed. Default: the seed whose host is the node
  // name or starts with "<node name>.", else peer_listen.
  std::string advertise;
  // The peer addresses of the nodes that form the cluster, the same list on
  // every node. Required on a node that has no cluster yet.
  std::vector<std::string> seeds;
  PeerSecurity security;
  // Failure domain of this node (a zone), shown in the cluster's status.
  std::string zone;
  // Options of the shards this node holds (sync_writes is ignored: the Raft
  // log is the write-ahead log).
  DatabaseOptions db;
  // The Raft clock: a tick, and an election timeout of election_tick to
  // 2 * election_tick ticks. Defaults: 100 ms, 10.
  std::chrono::milliseconds tick{100};
  int election_tick = 10;
  // How long a request retries a shard with no leader or no quorum before
  // it fails with Unavailable. Default: 10 s.
  std::chrono::milliseconds request_timeout{10000};
  // Raft log compaction (raft::NodeOptions): a group's log is cut
  // behind a snapshot after this many applied entries, keeping keep_entries
  // (more for a follower behind, up to max_keep_entries). Defaults: 20,000,
  // 5,000, 200,000.
  uint64_t log_compact_entries = 20000;
  // Idle groups go quiet: no heartbeats, one keepalive per node pair per
  // tick instead (raft::NodeOptions::quiesce). Default: on.
  bool quiesce = true;
  uint64_t log_keep_entries = 5000;
  uint64_t log_max_keep_entries = 200000;
  // Snapshot files a replica fetches per second, at most, per transfer
  // (0: no bound). Default: 128 MiB/s.
  uint64_t snapshot_rate_bytes = 128ull << 20;
  // A node the metadata leader has not heard from for this long is dead:
  // its replicas are re-created on other nodes. Default: 30 minutes.
  std::chrono::milliseconds dead_node_timeout{30 * 60 * 1000};
};

// What `cairn cluster status` shows: the metadata as this node knows it,
// with what every reachable node reports of the groups it hosts.
struct ClusterStatus {
  std::string cluster_id;
  uint64_t node_id = 0;
  std::string node_name;
  struct Node {
    uint64_t id = 0;
    std::string name;
    std::string address;
    std::string zone;
    // "joining" (not caught up with the metadata yet), "active",
    // "draining", "dead" or "removed".
    std::string state;
    bool reachable = false;  // it answered for this status
    uint64_t replicas = 0;   // shard replicas the map places on it
    uint64_t leaders = 0;    // shard groups it leads
    uint64_t bytes = 0;      // on disk, of the replicas it reported
    bool metadata_voter = false;
    // Draining (or dead), no replica, no vote: cairn cluster remove takes it.
    bool removable = false;
  };
  std::vector<Node> nodes;
  struct Replica {
    uint64_t replica = 0;
    uint64_t node = 0;
    bool leader = false;
    bool reported = false;  // its node answered: `applied` is known
    uint64_t applied = 0;
    uint64_t match = 0;  // from the leader: the last index replicated there
    uint64_t lag = 0;    // the leader's last index - match
  };
  struct Group {
    uint64_t group = 0;
    std::string collection;  // "" for the metadata group
    uint32_t shard = 0;
    uint64_t leader_node = 0;  // 0: none known
    uint64_t term = 0;
    uint64_t commit = 0;
    uint64_t leader_changes = 0;  // seen by the reporting leader's node
    std::vector<Replica> replicas;
  };
  std::vector<Group> groups;
  // The operations in progress (README: "Operations").
  struct Operation {
    uint64_t group = 0;
    std::string collection;
    uint32_t shard = 0;
    std::string kind;  // "move", "transfer_leader" or "split"
    uint64_t from_replica = 0, to_replica = 0, to_node = 0;
    std::string reason, step;
    uint64_t new_group = 0;  // a split's: the group taking half the ids
  };
  std::vector<Operation> operations;
};

class ShardReplica;

class Cluster final : public Database, private PeerHandler {
 public:
  // InvalidArgument for bad options; FailedPrecondition when the directory
  // is locked or belongs to another node; Unavailable when the peer port
  // cannot be bound. Waits (logging why) while the cluster cannot form yet.
  static absl::StatusOr<std::unique_ptr<Cluster>> Open(ClusterOptions options);
  ~Cluster() override;

  // Database.
  absl::StatusOr<std::shared_ptr<Collection>> CreateCollection(const std::string& name,
                                                               const CollectionConfig& config) override;
  absl::StatusOr<std::shared_ptr<Collection>> GetCollection(const std::string& name) const override;
  std::vector<std::string> ListCollections() const override;
  absl::StatusOr<CollectionInfo> DescribeCollection(const std::string& name) const override;
  absl::Status DropCollection(const std::string& name) override;
  absl::Status Snapshot(const std::string& name, const std::string& target_dir) override;
  absl::StatusOr<std::shared_ptr<Collection>> RestoreCollection(const std::string& snapshot_dir,
                                                                const std::string& name) override;
  const std::string& dir() const override { return options_.data_dir; }
  const DatabaseOptions& options() const override { return options_.db; }
  NodeMemory Memory() const override { return db::NodeMemoryOf(*budget_, *kv_memory_); }

  // Node `node` (a name or an id) starts draining: the controller moves its
  // replicas and leaderships to other nodes. NotFound for an unknown node;
  // FailedPrecondition when the other active nodes are too few for some
  // collection's replication factor.
  absl::Status DrainNode(const std::string& node);
  // Node `node` (draining or dead) is active again: replicas may be placed
  // on it.
  absl::Status ActivateNode(const std::string& node);
  // Node `node` leaves the cluster for good (its id is refused forever).
  // FailedPrecondition, with the reason, when it is active, holds a replica,
  // is the target of a move, or still votes in the metadata group.
  absl::Status RemoveNode(const std::string& node);
  // Hands every leadership this node holds to a caught-up voter of its
  // group and waits (at most `timeout`) until this node leads none: called
  // before a planned stop, so that clients wait for no election. The number
  // of groups it still leads.
  size_t HandOffLeadership(std::chrono::milliseconds timeout);

  // Splits every shard of collection `name` in two, online: each becomes
  // two groups on the same nodes, each holding half its ids (README:
  // "Splitting a shard"); the controller then balances them. NotFound for
  // an unknown collection; FailedPrecondition when a shard has an operation
  // in progress or cannot be split further. Returns once the splits are
  // started; `cairn cluster status` shows them until they are done.
  absl::Status SplitCollection(const std::string& name);

  // A collection's shards as routed: its groups in shard order, the class
  // of ids each holds as routed, and as its replicas record it (modulus 0:
  // never split; what reads and filtered writes expect them to hold).
  struct ShardMap {
    std::vector<uint64_t> groups;
    std::vector<db::HashClass> classes;
    std::vector<db::HashClass> recorded;
    db::HashRouter router = db::HashRouter::Even(1);
  };
  absl::StatusOr<ShardMap> ShardMapOf(const std::string& collection) const;
  // The metadata log index this node's state is as of (it changes with every
  // metadata change).
  uint64_t MetadataIndex() const { return meta_->State()->applied; }
  // The map once `ready` accepts it (a split this node learns of), waiting
  // for it up to the request timeout; Unavailable past it.
  absl::StatusOr<ShardMap> AwaitShardMap(const std::string& collection,
                                         const std::function<bool(const ShardMap&)>& ready) const;
  // The map once this node knows group `gid` no longer holds `was` (its
  // replicas' record: it was split).
  absl::StatusOr<ShardMap> ShardMapAfterSplit(const std::string& collection, uint64_t gid, db::HashClass was) const;

  // Collection `name`'s configuration as this node knows it now.
  absl::StatusOr<CollectionConfig> CurrentConfig(const std::string& name) const;
  ClusterStatus Status() const;
  // Prometheus text for the groups this node hosts (term, commit, applied,
  // leader, leader changes, each follower's lag when leading) and the peer
  // transport.
  void AppendPrometheus(std::string* out) const;
  // The data checksum of each replica this node holds, by group.
  absl::StatusOr<std::map<uint64_t, db::Shard::Checksum>> LocalChecksums() const;
  uint64_t node_id() const { return self_.id; }
  const std::string& cluster_id() const { return membership_.cluster_id; }

  // A request id for a ShardCommand, unique in the cluster: a retry of the
  // command reuses it, so the write applies once.
  std::string NewRequestId();
  // Group `gid` is a split's new group (its first state is not empty).
  bool MadeBySplit(uint64_t gid) const;
  // What a write asks of the memory budget of the node that proposes it.
  struct Admission {
    uint64_t bytes = 0;  // 0: nothing (deletes, payload changes)
    std::string what;    // the write, as a refusal names it
  };
  // For ReplicatedShard: a write to group `gid` (an encoded ShardCommand),
  // retried until the request timeout; the apply result. `what` names the
  // shard in errors. The node that proposes it (one holding a replica)
  // admits it under its memory limit first: RESOURCE_EXHAUSTED, with
  // nothing proposed, when it has no room.
  absl::StatusOr<uint64_t> ProposeToShard(uint64_t gid, const std::string& command, const std::string& what,
                                          const Admission& admit);
  // For ReplicatedShard: the local replica of `gid` once a linearizable read
  // of it is safe, or null when this node holds none.
  absl::StatusOr<std::shared_ptr<ShardReplica>> ReadableReplica(uint64_t gid, const std::string& what);
  // For ReplicatedShard: the local replica of `gid` when it heard from its
  // leader within `staleness` (a local read), null when this node holds
  // none; Unavailable when it has not.
  absl::StatusOr<std::shared_ptr<ShardReplica>> FreshReplica(uint64_t gid, std::chrono::milliseconds staleness,
                                                             const std::string& what);
  // For ReplicatedShard: a read run on a node holding a replica of `gid`;
  // with a staleness, a local read there.
  absl::StatusOr<std::string> RemoteRead(uint64_t gid, const ShardReadRequest& req, const std::string& what,
                                         std::optional<std::chrono::milliseconds> staleness = std::nullopt);

 private:
  class Executor;
  explicit Cluster(ClusterOptions options);
  absl::Status Start();
  absl::Status AwaitMembership();
  pb::HelloResponse SelfHello() const;
  absl::Status ProposeMetadata(const MetadataCommand& cmd, uint64_t* result);
  // Proposes through this node's replica of group 0, or through another
  // member when that one knows no leader (a node joining). Not retried.
  absl::Status ProposeMetadataAnywhere(const MetadataCommand& cmd);
  // Becomes a member of the existing `cluster`: in place of a lost node of
  // the same name, or as a new node. Writes the membership record.
  absl::Status Join(const Membership& cluster);
  absl::StatusOr<uint64_t> ProposeAndWait(uint64_t gid, const std::string& data,
                                          std::chrono::steady_clock::time_point deadline);
  absl::Status ReadIndexAndWait(uint64_t gid, std::chrono::steady_clock::time_point deadline);
  // A linearizable read point of the metadata group, retried until the
  // request timeout; then this node's state of it is current.
  absl::Status MetadataReadIndex();
  // Sends `req` to the next node (*next_node, counted up) holding a replica
  // of `gid`; its answer, or why there is none.
  absl::StatusOr<pb::ShardResponse> SendToReplica(uint64_t gid, const pb::ShardRequest& req, size_t* next_node);
  void Reconcile();
  void ReconcileLoop();
  // For every shard group this node leads: the next step of its operation
  // (README: "Operations"); for the metadata group: its members.
  void DriveOps();
  // A split's steps on its group's leader (README: "Splitting a shard"):
  // the fence entry, its index recorded, the switch once the new group
  // leads, the entry that hides the moved half, the end.
  void DriveSplit(const MetadataState& st, const raft::GroupStatus& gs, const GroupOp& op);
  // The metadata group's leader: every member node follows it, three
  // voters on active nodes.
  void DriveMetadataMembers(const MetadataState& st, const raft::GroupStatus& gs);
  // Proposes a membership change of `group`, logged with `what` when taken.
  void ChangeMembers(uint64_t group, raft::ConfChange::Type type, uint64_t replica, const std::string& what);
  // On the metadata group's leader, once a second: nodes marked dead or
  // active again, operations abandoned, and the placement controller's
  // new operations (placement.h).
  void Control();
  // Every node's Peer.NodeStatus but those in `skip` (this node's own
  // without asking), by node.
  std::map<uint64_t, pb::NodeStatusResponse> Reports(const MetadataState& st, const std::set<uint64_t>& skip = {}) const;
  // Makes group `gid`'s directory replica `replica`'s: files of another
  // replica of it (an earlier one on this node) go, with its log.
  absl::Status ClaimGroupDir(uint64_t gid, uint64_t replica);
  // Removes the files and log of group `gid` on this node.
  absl::Status ForgetGroup(uint64_t gid);
  // The first states split applies wrote here for new groups that no
  // replica here will open (the split's collection was dropped, or the
  // group's replica here moved off first).
  void RemoveStaleSplitCopies(const MetadataState& st);
  // Before a split's entry is applied, every replica of the group writes its
  // memory tables to files and saves its growing segment (HNSW), off the
  // apply path: the copy the apply takes is then hard links only, the
  // group's reads wait for no flush, and the new group's replicas load the
  // graph instead of building it.
  void FlushBeforeSplits(const MetadataState& st);
  // At start, once caught up with the metadata: the files of replicas the
  // map no longer places here (moved off while this node was down) go.
  void RemoveOrphanReplicas();
  // The local replica of `gid` when it may serve reads: it votes (a replica
  // a move added is a learner until caught up). Null otherwise.
  std::shared_ptr<ShardReplica> VotingReplica(uint64_t gid) const;
  // The member named `node` (a name or an id): its id.
  absl::StatusOr<uint64_t> ResolveNode(const MetadataState& st, const std::string& node) const;
  void MaintenanceLoop();
  // What the replicas here hold (for budget_).
  db::MemoryUsage MeasureMemory() const;
  // Frees the HNSW floats the replicas here keep in memory beside their
  // vector files (budget_'s reclaim, before it refuses a write).
  uint64_t ReleaseVectors() const;
  std::shared_ptr<ShardReplica> LocalReplica(uint64_t gid) const;
  std::vector<uint64_t> NodesOf(uint64_t gid) const;

  // PeerHandler.
  std::string ClusterId() const override;
  uint64_t NodeId() const override { return self_.id; }
  raft::Node* RaftNode() const override { return node_ptr_.load(); }
  pb::HelloResponse Hello(const pb::HelloRequest& req) override;
  pb::NodeStatusResponse NodeStatus() override;
  void Shard(const pb::ShardRequest& req, std::function<void(pb::ShardResponse)> done) override;
  void DeliverRaft(uint64_t from, std::vector<raft::Transport::GroupMessage> batch) override;
  absl::StatusOr<std::string> ReadSnapshotChunk(const std::string& id, const std::string& path, uint64_t offset,
                                                uint32_t length) override;
  void SnapshotDone(const std::string& id, bool ok, const std::string& error) override;
  void StartSnapshotTransfers();
  // A chunk of snapshot `id`'s file from the node serving it.
  absl::StatusOr<std::string> FetchSnapshotChunk(uint64_t node, const std::string& id, const std::string& path,
                                                 uint64_t offset, uint32_t length);
  // Tells the node serving snapshot `id` that this node is done with it.
  void TellSnapshotDone(uint64_t node, const std::string& id, bool ok, const std::string& error);
  // Writes a copy of group `gid`'s shard into `dir` holding every write
  // acknowledged before the call: from the replica here, or fetched from a
  // node that holds one.
  absl::Status CopyShard(uint64_t gid, const std::string& what, const std::string& dir);
  std::string GroupDir(uint64_t gid) const;
  std::string PeerAddress(uint64_t node) const;

  const ClusterOptions options_;
  // One block cache and memtable budget for every replica's store.
  const std::shared_ptr<storage::KvMemory> kv_memory_;
  // This node's memory limit: writes proposed here are admitted under it,
  // measured over the replicas here (MeasureMemory).
  const std::shared_ptr<db::MemoryBudget> budget_;
  std::unique_ptr<storage::FileLock> lock_;
  NodeIdentity self_;
  std::unique_ptr<raft::LogStore> store_;
  std::unique_ptr<PeerClients> clients_;
  class SnapshotRouter;
  std::unique_ptr<SnapshotRouter> transport_;  // the node loop's: clients_, with snapshots through sender_
  std::unique_ptr<SnapshotSender> sender_;
  std::unique_ptr<SnapshotReceiver> receiver_;
  std::unique_ptr<PeerServer> server_;
  std::unique_ptr<MetadataMachine> meta_;
  std::unique_ptr<raft::Node> node_;
  std::atomic<raft::Node*> node_ptr_{nullptr};
  std::unique_ptr<Executor> executor_;
  const uint64_t incarnation_;
  std::atomic<uint64_t> next_request_{1};

  mutable std::mutex mu_;
  Membership membership_;  // set once before the node starts
  std::atomic<bool> member_{false};
  std::atomic<bool> stopping_{false};  // HandOffLeadership was called
  std::map<uint64_t, std::shared_ptr<ShardReplica>> replicas_;  // guarded by mu_
  std::vector<std::pair<std::shared_ptr<ShardReplica>, std::string>> dropped_;  // guarded by mu_: dir to remove

  std::mutex loop_mu_;
  std::condition_variable loop_cv_;
  bool stop_ = false;   // guarded by loop_mu_
  bool dirty_ = false;  // guarded by loop_mu_: the metadata changed
  std::mutex reconcile_mu_;  // one Reconcile at a time
  // The replica -> node map each group's loop was given. Guarded by reconcile_mu_.
  std::map<uint64_t, std::map<uint64_t, uint64_t>> replica_nodes_;
  // Control()'s: when this node started leading the metadata group, when it
  // last ran, and when it first saw each operation (by op id); when the
  // reconciler last ran Reconcile. Reconciler thread only.
  std::optional<std::chrono::steady_clock::time_point> controlling_since_;
  std::chrono::steady_clock::time_point last_control_{};
  std::chrono::steady_clock::time_point last_reconcile_{};
  std::map<uint64_t, std::chrono::steady_clock::time_point> op_seen_;
  // DriveOps': when this node last proposed each split's entries (by op id
  // * 2, + 1 for its end), and when it first saw each split at step "open".
  std::map<uint64_t, std::chrono::steady_clock::time_point> split_proposed_;
  std::map<uint64_t, std::chrono::steady_clock::time_point> split_open_seen_;
  // When this node last made the new group's replica here campaign (or
  // first saw it without a leader).
  std::map<uint64_t, std::chrono::steady_clock::time_point> split_campaigned_;
  // The splits (op ids) whose group this node flushed. Guarded by reconcile_mu_.
  std::set<uint64_t> split_flushed_;
  std::thread reconciler_;
  std::thread maintenance_;
};

}  // namespace cairn::cluster

#endif  // CAIRN_CLUSTER_CLUSTER_H_
