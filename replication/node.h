// Node: the loop that drives every Raft group hosted by one process.
//
// One thread owns every group's core. Each turn it takes what arrived (peers'
// messages, proposals, read requests), ticks the groups whose tick is due,
// collects the Ready of every group that has one, writes all of them to the
// node's LogStore with one fsync, sends the messages batched per destination
// node, applies the committed entries (each group in order, groups in
// parallel on a small pool), and advances the groups. A snapshot a leader
// sent is installed on a thread of its own; its group takes no other Ready
// until it is done, and the other groups go on.
//
//   Node::Start(options)         the loop runs until the Node is destroyed
//   AddGroup({gid, replica, nodes, initial voters, state machine})
//   Propose(gid, data, deadline, done)   done(result of applying it here)
//   ReadIndex(gid, deadline, done)       done(OK) once a linearizable read
//                                        of this replica's state is safe
//   Deliver(from node, messages)         from the transport
//
// Replica ids are per group (a Raft member id), and each group maps them to
// the node ids messages are sent to. A proposal carries its node id, the
// node's incarnation and a sequence number in front of the data, so the node
// recognises its own entries when it applies them, whoever was leader: done
// runs with the state machine's result, or with Unavailable when another
// entry took the index the proposal had (lost in a leader change: retry), or
// DeadlineExceeded when neither happened in time (it may still be applied
// later: retry only what is idempotent).
//
// Thread-safety: every public method may be called from any thread. Callbacks
// run on the loop thread or the apply pool: they must not block.
#ifndef CAIRN_REPLICATION_NODE_H_
#define CAIRN_REPLICATION_NODE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "replication/raft.h"
#include "replication/raft_types.h"
#include "replication/rocksdb_log_storage.h"

namespace cairn::raft {

// What a group replicates into: the application's side of one replica.
class StateMachine {
 public:
  virtual ~StateMachine() = default;
  // Applies committed entries in index order: normal entries with the
  // application's data (empty for a leader's no-op) and membership changes
  // (data: an encoded ConfChange), which only move the applied index here.
  // Fills one result per entry: what the proposer's done() receives.
  // A non-OK return means this replica cannot go on (its disk failed, an
  // entry cannot be read): the group stops and logs why.
  virtual absl::Status Apply(const std::vector<Entry>& entries, std::vector<absl::StatusOr<uint64_t>>* results) = 0;
  // The last index applied and durable enough that the node need not hand
  // it out again after a restart (entries after it are applied again).
  virtual uint64_t AppliedIndex() const = 0;
  // Replaces the whole state with a snapshot the group's leader sent (its
  // data as that leader's Raft snapshot holds it); the state may then be
  // ahead of the snapshot's index, if Apply skips what it applied already.
  // A non-OK return stops the group. Also called when the group opens and
  // the log's snapshot (one a leader sent, with data) is ahead of
  // AppliedIndex(): a crash came between persisting it and installing it.
  virtual absl::Status Restore(const Snapshot& snapshot) = 0;

  // Where the group's log may be compacted to.
  struct Compaction {
    uint64_t index = 0;  // applied and durable through here
    std::string data;    // what a snapshot at `index` carries
  };
  // Makes everything applied durable and says through which index, with the
  // data a Raft snapshot there carries (a state machine whose state is files
  // returns no data, and its transport sends the files). The node compacts
  // at most to the index it has handed out. Unimplemented (the default): the
  // group's log is never compacted.
  virtual absl::StatusOr<Compaction> PrepareCompaction() {
    return absl::UnimplementedError("this state machine takes no snapshots");
  }
};

// Sends batches of messages to other nodes. Best effort: a message lost is
// Raft's business (it retries). Must not block the loop for long. An empty
// batch is a keepalive: it must reach the other node's Deliver too (the
// node loop tells from them which nodes are up, for quiet groups).
class Transport {
 public:
  virtual ~Transport() = default;
  struct GroupMessage {
    uint64_t group = 0;
    Message msg;
  };
  virtual void Send(uint64_t to_node, std::vector<GroupMessage> batch) = 0;
};

struct NodeOptions {
  // This node's id, nonzero. Required.
  uint64_t node_id = 0;
  // Where every group's log lives. Borrowed; required; outlives the Node.
  LogStore* store = nullptr;
  // Borrowed; required; outlives the Node.
  Transport* transport = nullptr;
  // The logical clock: one tick every `tick`. Default: 100 ms.
  std::chrono::milliseconds tick{100};
  // Election timeout in ticks (drawn from [election_tick, 2 * election_tick)).
  // Default: 10 (1 to 2 s with the default tick).
  int election_tick = 10;
  // Heartbeat interval in ticks. Default: 1.
  int heartbeat_tick = 1;
  // Threads applying committed entries, across groups. Default: 2.
  int apply_threads = 2;
  // Seed of election timeouts; 0 draws one from the clock. Default: 0.
  uint64_t seed = 0;
  // A group's log is compacted (Raft §7) once it holds this many applied
  // entries beyond those it keeps; 0 never compacts. Default: 20,000.
  uint64_t compact_after_entries = 20000;
  // Entries kept before the compaction point, so that a follower a little
  // behind catches up from the log rather than from a snapshot. A leader
  // keeps what its slowest follower still needs, up to max_keep_entries;
  // a follower further behind is sent a snapshot. Default: 5,000 and 200,000.
  uint64_t keep_entries = 5000;
  uint64_t max_keep_entries = 200000;
  // Idle groups go quiet (raft::Config::quiesce): no heartbeats and no
  // election timers until a proposal, a read or a message wakes them. The
  // loop sends every node it shares a group with a keepalive (an empty batch)
  // each tick, wakes a quiet follower when its leader's node has been silent
  // for an election timeout (it campaigns), and a quiet leader when a
  // member's node is heard again after a silence of 3 ticks or more (a
  // restart, a pause, a healed partition) or a voter's node has been silent
  // for an election timeout (awake, check-quorum steps it down if it lost
  // its quorum). Default: on.
  bool quiesce = true;
};

// A group to host: this node's replica of it.
struct GroupSpec {
  uint64_t group = 0;    // nonzero
  uint64_t replica = 0;  // this node's replica id in the group, nonzero
  // Replica id -> node id, for every member (this one included).
  std::map<uint64_t, uint64_t> nodes;
  // When the group has nothing in the log: its initial voters (replica ids),
  // written as the group's first state. Every initial replica is given the
  // same list. Empty: start from the log as it is (a restart, or a replica
  // that joins and waits for the leader to send it the state).
  std::vector<uint64_t> initial_voters;
  std::vector<uint64_t> initial_learners;  // with initial_voters: members that do not vote
  // Borrowed; outlives the group.
  StateMachine* state_machine = nullptr;
};

// One replica's view of its group, for status pages and metrics.
struct GroupStatus {
  uint64_t group = 0;
  uint64_t replica = 0;
  Role role = Role::kFollower;
  uint64_t leader = kNone;  // replica id
  uint64_t term = 0;
  uint64_t commit = 0;
  uint64_t applied = 0;
  uint64_t last_index = 0;
  uint64_t snapshot_index = 0;  // the log's snapshot: entries up to it may be gone
  uint64_t first_index = 0;     // the first entry the log still holds
  uint64_t compactions = 0;
  uint64_t snapshots_installed = 0;  // snapshots a leader sent that were applied here
  uint64_t leader_changes = 0;
  // Proposals made through this node that were applied here, and the
  // seconds from proposing to applying them, summed.
  uint64_t proposals_applied = 0;
  double proposal_seconds = 0;
  // When this replica last heard from its group's leader (now, when it is
  // the leader); the epoch when never.
  // A quiet follower counts its leader's node's keepalives: it holds what
  // the leader committed (a write would have woken it). A leader: when it
  // last heard a quorum of its voters' nodes.
  std::chrono::steady_clock::time_point leader_contact{};
  bool quiesced = false;     // idle: no heartbeats, no election timer
  bool stopped = false;      // the state machine failed
  std::string stop_reason;
  // The group's membership as this replica applied it (replica ids).
  std::vector<uint64_t> voters;
  std::vector<uint64_t> learners;
  struct Peer {
    uint64_t replica = 0;
    uint64_t node = 0;
    uint64_t match = 0;  // leader only: the last index known replicated there
    bool learner = false;
  };
  std::vector<Peer> peers;  // leader only
};

// What a replica is in its group, as it applied the membership.
enum class Membership : uint8_t {
  kNone,  // not hosted here, stopped, or taken out of the group
  kVoter,
  kLearner,
};

class Node {
 public:
  // InvalidArgument for missing options.
  static absl::StatusOr<std::unique_ptr<Node>> Start(NodeOptions options);
  // Stops the loop; pending proposals and reads end with Cancelled.
  ~Node();

  // Opens the group's log (bootstrapping it from spec.initial_voters when
  // empty) and starts driving it. AlreadyExists when hosted already;
  // InvalidArgument for a bad spec; DataLoss for a malformed log.
  absl::Status AddGroup(GroupSpec spec);
  // Stops driving the group; with `drop_log`, removes its log too. Pending
  // proposals and reads end with Cancelled. NotFound when not hosted.
  absl::Status RemoveGroup(uint64_t group, bool drop_log);
  // Updates where the group's replicas live (replica id -> node id).
  absl::Status SetReplicaNodes(uint64_t group, std::map<uint64_t, uint64_t> nodes);

  using ProposeDone = std::function<void(absl::StatusOr<uint64_t>)>;
  // Proposes `data` to the group (forwarded to its leader). done() runs once:
  // with the state machine's result once this replica applied the entry;
  // Unavailable when no leader is known, the entry was lost to a leader
  // change, the leader it was forwarded to changed before acknowledging it
  // (it may still be applied), or the group is not hosted here; ResourceExhausted when the
  // leader holds too much uncommitted data; DeadlineExceeded past
  // `deadline` (the entry may still be applied).
  void Propose(uint64_t group, std::string data, std::chrono::steady_clock::time_point deadline,
               ProposeDone done);
  // done(OK) once this replica has applied everything committed before the
  // call, as its group's leader confirmed (ReadIndex, Raft §6.4): a read of
  // the state machine then is linearizable. Reads waiting in one turn share
  // one round. Unavailable: no leader known, or not hosted here;
  // DeadlineExceeded past `deadline`.
  void ReadIndex(uint64_t group, std::chrono::steady_clock::time_point deadline,
                 std::function<void(absl::Status)> done);
  // Asks the group's replica here to campaign now (bootstrap, tests).
  void Campaign(uint64_t group);
  // Hands the group's leadership to `replica` (leader only, best effort).
  void TransferLeadership(uint64_t group, uint64_t replica);
  // This node is about to stop: from now on its replicas decline the
  // leaderships other replicas hand them (TimeoutNow), so that what it hands
  // off does not come back. Elections still run as usual.
  void DeclineLeadership() { decline_leadership_.store(true); }
  // The transport finished sending `replica` of `group` a snapshot (ok), or
  // gave up: the leader probes it again (and may send another snapshot).
  void ReportSnapshot(uint64_t group, uint64_t replica, bool ok);
  // Proposes a membership change of the group (forwarded to its leader).
  // OK means proposed, not applied: callers watch GroupStatus's voters and
  // learners. FailedPrecondition: another change is pending; Unavailable: no
  // leader known, or the group is not hosted here.
  absl::Status ProposeConfChange(uint64_t group, const ConfChange& cc);

  // Messages from node `from` (the transport calls this).
  void Deliver(uint64_t from, std::vector<Transport::GroupMessage> batch);
  // The transport could not reach `node`.
  void ReportUnreachable(uint64_t node);

  // As of the end of the loop's last turn.
  std::vector<GroupStatus> Status() const;
  // When each peer node last sent this one a batch (keepalives included; this
  // node's start at the earliest), as of the loop's last tick.
  std::map<uint64_t, std::chrono::steady_clock::time_point> LastHeard() const;
  absl::StatusOr<GroupStatus> GroupStatusOf(uint64_t group) const;
  // The replica's membership in `group` as last published (no copy of its
  // status: cheap enough for every read).
  Membership MembershipOf(uint64_t group) const;
  uint64_t node_id() const { return options_.node_id; }

 private:
  struct Group;
  struct Pending;
  struct Inbox;
  class ApplyPool;

  explicit Node(NodeOptions options);
  void Run();
  void Turn(std::unique_lock<std::mutex>& lk);
  absl::Status OpenGroup(GroupSpec spec);
  void CloseGroup(uint64_t group, bool drop_log);
  // Applies rd.committed (not its snapshot) to the state machine.
  void ApplyCommitted(Group& g, const Ready& rd);
  // After the group's Ready was applied: reads served, leader changes
  // handled, Advance, compaction.
  void AfterApply(Group& g);
  // Installs rd.snapshot on a thread of its own; FinishInstall (on the loop,
  // through the inbox) applies the rest of the Ready and advances.
  void StartInstall(Group& g);
  void FinishInstall(uint64_t group, uint64_t install_id, const absl::Status& s);
  // The state machine failed: the group stops, its callers hear why.
  void StopGroup(Group& g, const absl::Status& s);
  void MaybeCompact(Group& g);
  void FailAll(Group& g, const absl::Status& s);
  void ExpireDeadlines();
  // `heard_too` (on ticks): LastHeard's copy too.
  void PublishStatus(bool heard_too);
  // Tick time: wakes quiet groups whose members' nodes fell silent or came
  // back (NodeOptions::quiesce).
  void WakeQuietGroups(std::chrono::steady_clock::time_point now);
  // When `node` last sent this one a batch (this node's start at the earliest).
  std::chrono::steady_clock::time_point HeardFrom(uint64_t node) const;

  const NodeOptions options_;
  const uint64_t incarnation_;
  std::atomic<bool> decline_leadership_{false};
  std::unique_ptr<ApplyPool> pool_;

  // The inbox: what other threads hand the loop.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::unique_ptr<Inbox> inbox_;  // guarded by mu_

  // Loop-thread state (the destructor's once the loop has ended).
  std::map<uint64_t, std::unique_ptr<Group>> groups_;
  uint64_t next_seq_ = 1;
  std::chrono::steady_clock::time_point next_tick_{};
  bool stop_now_ = false;  // the loop has ended: what is left is cancelled
  const std::chrono::steady_clock::time_point started_;
  std::map<uint64_t, std::chrono::steady_clock::time_point> heard_;  // by node: its last batch
  std::set<uint64_t> revived_;  // nodes heard again after a silence, since the last tick

  mutable std::mutex status_mu_;
  std::map<uint64_t, GroupStatus> status_;  // guarded by status_mu_
  std::map<uint64_t, std::chrono::steady_clock::time_point> heard_published_;  // guarded by status_mu_

  std::thread loop_;
};

}  // namespace cairn::raft

#endif  // CAIRN_REPLICATION_NODE_H_
