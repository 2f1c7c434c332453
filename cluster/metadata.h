// The metadata group's state machine: what every node of a cluster agrees on
// about the cluster itself (nodes, collections, where each shard's replicas
// are). It is the Raft group kMetadataGroup; its first voters are the first
// three seed nodes, and every other node follows it as a learner, so every
// node reads the shard map locally.
//
// Commands are small JSON documents (MetadataCommand); applying one is
// deterministic: the proposer chooses everything that takes judgement (the
// placement of a new collection's replicas, the group and replica ids it
// allocates) and apply only checks it against the state at that index, and
// refuses it (Aborted: retry with a fresh view) when the state moved on.
//
// The state lives in memory and is rebuilt at start from the log: its
// snapshot (the whole state, when the log was compacted) and the entries
// after it.
//
// Thread-safety: all methods are thread-safe; Apply runs on the node loop's
// apply pool, readers take a copy of the state.
#ifndef CAIRN_CLUSTER_METADATA_H_
#define CAIRN_CLUSTER_METADATA_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cairn/options.h"
#include "db/hash_class.h"
#include "replication/node.h"

namespace cairn::cluster {

// Group ids: 1 is the metadata group; shard groups count up from 2.
inline constexpr uint64_t kMetadataGroup = 1;

// What the cluster does with a node (a removed node is in removed_nodes).
enum class NodeState {
  kActive,    // serves and holds replicas
  kDraining,  // its replicas and leaderships move off (cairn cluster drain)
  kDead,      // not heard from for the dead-node timeout: its replicas are re-created elsewhere
};
const char* NodeStateName(NodeState s);

struct NodeInfo {
  uint64_t id = 0;
  std::string name;
  std::string peer_address;  // host:port of its peer port
  std::string zone;
  NodeState state = NodeState::kActive;
  bool operator==(const NodeInfo&) const = default;
};

// A change to one shard group, carried out step by step by the group's
// leader; at most one per group. Its id is the metadata index that started it.
struct GroupOp {
  enum class Kind { kMove, kTransferLeader, kSplit };
  uint64_t id = 0;
  Kind kind = Kind::kMove;
  // A move: the replica that leaves (0: none, a replica is added) and the
  // replica that comes (0: none, one is removed), on to_node.
  // A leadership transfer: `to` is the replica to lead.
  // A split: `to` is the new group, with a replica beside each of the
  // group's (child_replicas: replica id -> node); never abandoned (once its
  // Raft entry is committed it cannot be undone).
  uint64_t from = 0;
  uint64_t to = 0;
  uint64_t to_node = 0;
  std::string reason;  // why the controller started it, for status
  std::string step;    // the last step reached; "abandon" when it is being undone
  std::map<uint64_t, uint64_t> child_replicas;  // a split's
  uint64_t split_index = 0;  // a split's fence entry, once applied (step "open" on)
  bool operator==(const GroupOp&) const = default;
};
const char* OpKindName(GroupOp::Kind k);

// One shard of one collection: a Raft group and where its replicas are.
struct ShardGroup {
  uint64_t group = 0;
  std::string collection;
  uint32_t shard = 0;
  // Replica id -> node id. Replica ids are never reused.
  std::map<uint64_t, uint64_t> replicas;
  // The replica ids that started the group (every one writes the same
  // initial state).
  std::vector<uint64_t> initial_voters;
  // The ids it owns (db/hash_class.h); modulus 0: as created, shard s of the
  // collection's num_shards.
  db::HashClass cls;
  // A group a split made: its parent, and the parent's log index of the
  // split (its initial voters start from a copy of the parent's replica
  // there).
  uint64_t split_from = 0;
  uint64_t split_index = 0;
  bool operator==(const ShardGroup&) const = default;
};

struct CollectionEntry {
  std::string name;
  CollectionConfig config;  // replication_factor holds the value in force
  std::vector<uint64_t> groups;  // by shard index
  // The shard count it was created with, once splits changed
  // config.num_shards (0: config.num_shards): the classes of groups never
  // split are (initial_shards, shard).
  uint32_t initial_shards = 0;
  // Shard groups `cairn collection split` asked to split, not started yet:
  // the cluster splits one shard at a time (SplitDue).
  std::vector<uint64_t> split_queue;
};

struct MetadataState {
  std::map<uint64_t, NodeInfo> nodes;
  std::set<uint64_t> removed_nodes;  // refused forever
  // A removed node -> the node that took its place (the same name on a
  // wiped disk): its replicas move there (Cluster's replacement loop).
  std::map<uint64_t, uint64_t> replaced_by;
  std::map<std::string, CollectionEntry> collections;
  std::map<uint64_t, ShardGroup> groups;
  std::map<uint64_t, GroupOp> ops;  // by group
  uint64_t next_group = kMetadataGroup + 1;
  uint64_t next_replica = 1;
  uint64_t applied = 0;  // the metadata log index this state is as of

  // The groups with a replica on `node`.
  std::vector<const ShardGroup*> GroupsOn(uint64_t node) const;
  // A member (not removed) in `state`.
  bool Is(uint64_t node, NodeState state) const;
  // A split operation runs.
  bool SplitRunning() const;
  // A split runs, or one is queued (CollectionEntry::split_queue).
  bool SplitsUnderWay() const;
  // The hash class group `g` owns.
  db::HashClass ClassOf(const ShardGroup& g) const;
  // The group split `op` of group `gid` makes (its replicas open it from
  // step "open" on; it is routed to from step "hide" on).
  ShardGroup SplitChild(uint64_t gid, const GroupOp& op) const;
};

// The whole state as bytes (a snapshot of the metadata group), and back.
// DataLoss when malformed.
std::string EncodeMetadataState(const MetadataState& state);
absl::StatusOr<MetadataState> DecodeMetadataState(std::string_view data);

// A command for the metadata group. Build with the functions below.
struct MetadataCommand {
  std::string json;
};
MetadataCommand AddNodeCommand(const NodeInfo& node);
// `placement[s]` lists the nodes of shard s's replicas, the preferred leader
// first. Allocates group and replica ids from `state`.
MetadataCommand CreateCollectionCommand(const MetadataState& state, const std::string& name,
                                        const CollectionConfig& config,
                                        const std::vector<std::vector<uint64_t>>& placement);
MetadataCommand DropCollectionCommand(const std::string& name);
// Node `new_node` (a fresh id) takes the place of node `old_id` of the same
// name, which is removed and refused forever.
MetadataCommand ReplaceNodeCommand(uint64_t old_id, const NodeInfo& new_node);
// Logs written before operations existed moved replicas with these two
// commands; they are still applied (and built by tests of that path), while
// moves now go through StartMoveCommand/EndOpCommand.
// A replica of `group` on `node`, with the next replica id of `state`.
MetadataCommand AddReplicaCommand(const MetadataState& state, uint64_t group, uint64_t node);
// Replica `replica` leaves `group`'s map (once Raft removed it).
MetadataCommand RemoveReplicaCommand(uint64_t group, uint64_t replica);
MetadataCommand UpdateConfigCommand(const std::string& name, const CollectionConfig& config);
// Node `node` goes to `state`: draining from active or dead, active from
// draining or dead, dead from active.
MetadataCommand SetNodeStateCommand(uint64_t node, NodeState state);
// Node `node` leaves the cluster for good: refused unless it is draining or
// dead and holds no replica and no operation targets it.
MetadataCommand RemoveNodeCommand(uint64_t node);
// Starts a move of `group`'s replica `from` (0: none) to a new replica on
// `to_node` (0: none), with the next replica id of `state`. The result is
// the op's id.
MetadataCommand StartMoveCommand(const MetadataState& state, uint64_t group, uint64_t from, uint64_t to_node,
                                 const std::string& reason);
// Starts a transfer of `group`'s leadership to its replica `to`.
MetadataCommand StartTransferCommand(uint64_t group, uint64_t to, const std::string& reason);
// Starts splitting `group` in two (GroupOp::kSplit, step "split"), with the
// next group and replica ids of `state`. Its steps (cluster/README.md,
// "Splitting a shard"): the group's leader fences the moved half with a
// Raft entry; SplitFencedCommand records the entry's index (step "open":
// the new group's replicas open); SwitchSplitCommand routes the moved half
// to the new group once it has a leader (step "hide"); the group's leader
// then hides that half from the group with a second entry, and
// EndOpCommand ends the split.
MetadataCommand StartSplitCommand(const MetadataState& state, uint64_t group, const std::string& reason);
MetadataCommand SplitFencedCommand(uint64_t group, uint64_t op, uint64_t split_index);
MetadataCommand SwitchSplitCommand(uint64_t group, uint64_t op);
// Queues every shard of collection `name` for a split (cairn collection
// split): FailedPrecondition when one is queued or being split already, or
// when the collection would pass 256 shards.
MetadataCommand QueueSplitsCommand(const std::string& name);
// Op `op` of `group` reached `step` ("abandon": it is to be undone).
MetadataCommand OpStepCommand(uint64_t group, uint64_t op, const std::string& step);
// Op `op` of `group` is over: a move's leaving replica leaves the map, or,
// when `abandoned`, its new replica does.
MetadataCommand EndOpCommand(uint64_t group, uint64_t op, bool abandoned);

// Chooses active nodes for `num_shards` shards of `replication_factor`
// replicas: never two replicas of a shard on one node; nodes in `avoid` (unreachable
// now) only when the others are too few; then each replica (and then each
// preferred leader, the first of a list) on the node holding fewest so far,
// counting the groups that exist already, ties to the lower node id.
// InvalidArgument when there are fewer nodes than replicas.
absl::StatusOr<std::vector<std::vector<uint64_t>>> PlaceShards(const MetadataState& state, uint32_t num_shards,
                                                               uint32_t replication_factor,
                                                               const std::set<uint64_t>& avoid = {});

class MetadataMachine final : public raft::StateMachine {
 public:
  // `on_change` runs after each apply that changed the state (on the apply
  // pool: it must not block).
  explicit MetadataMachine(std::function<void()> on_change);

  absl::Status Apply(const std::vector<raft::Entry>& entries,
                     std::vector<absl::StatusOr<uint64_t>>* results) override;
  // The state is rebuilt at each start, from the log's snapshot (its data is
  // the whole state) and the entries after it.
  uint64_t AppliedIndex() const override { return 0; }
  absl::Status Restore(const raft::Snapshot& snapshot) override;
  // The whole state as of the last apply, as a snapshot's data.
  absl::StatusOr<Compaction> PrepareCompaction() override;

  // The state as of the last apply: an immutable snapshot, cheap to take
  // (requests read it on every call; applies, which are rare, copy it).
  std::shared_ptr<const MetadataState> State() const;

 private:
  absl::StatusOr<uint64_t> ApplyOne(MetadataState& state, const std::string& data);

  mutable std::mutex mu_;
  std::shared_ptr<const MetadataState> state_;  // guarded by mu_ (the pointer)
  std::function<void()> on_change_;
};

}  // namespace cairn::cluster

#endif  // CAIRN_CLUSTER_METADATA_H_
