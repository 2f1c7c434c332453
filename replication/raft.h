// Raft: the consensus core of one replica of one Raft group, in the style of
// etcd's raft library. It is a pure state machine: no threads, clocks, I/O or
// hidden randomness. The driver (the node loop, or the simulator) feeds it
// Tick(), Step() with peers' messages and the client calls below, then takes
// the resulting work as a Ready and reports it done with Advance().
//
//   auto raft = Raft::Create(config);       // state from config.storage
//   loop:
//     raft->Tick() every tick; raft->Step(msg) for each message received;
//     if (raft->HasReady()) {
//       Ready rd = raft->GetReady();
//       persist rd.snapshot, rd.entries, rd.hard_state (synced);
//       send rd.messages; apply rd.snapshot, then rd.committed;
//       serve rd.reads once applied >= their index;
//       raft->Advance(rd);                  // nothing else in between
//     }
//
// Features: leader election with randomized timeouts (§5.2), pre-vote and
// check-quorum (dissertation §9.6), log replication with batching,
// pipelining and per-follower flow control, commitment of current-term
// entries by counting (§5.4.2), ReadIndex reads (§6.4) and optional lease
// reads, leadership transfer (dissertation §3.10), learners, one-server-at-a-
// time membership change (dissertation §4.1), log compaction and
// InstallSnapshot (§7), proposal forwarding from followers, quiescence of
// idle groups.
//
// Membership changes take effect when the entry is applied (on Advance), as
// in etcd. Thread-safety: none; one owner.
#ifndef CAIRN_REPLICATION_RAFT_H_
#define CAIRN_REPLICATION_RAFT_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "replication/log_storage.h"
#include "replication/progress.h"
#include "replication/raft_log.h"
#include "replication/raft_types.h"

namespace cairn::raft {

struct Config {
  // This replica's id, nonzero. Required.
  uint64_t id = kNone;
  // The log, read here and written by the driver. Borrowed; required.
  const LogStorage* storage = nullptr;
  // The state machine's applied index at start (entries after it are handed
  // out again as committed). Default: 0, which means the snapshot's index.
  uint64_t applied = 0;
  // Ticks without hearing from a leader before a follower campaigns; the
  // actual timeout is drawn from [election_tick, 2 * election_tick).
  // Default: 10. Must exceed heartbeat_tick.
  int election_tick = 10;
  // Ticks between a leader's heartbeats. Default: 1.
  int heartbeat_tick = 1;
  // Bytes of entry data per AppendEntries message (at least one entry is
  // always sent). Default: 1 MiB.
  uint64_t max_size_per_msg = 1 << 20;
  // Bytes of committed entries per Ready. Default: 16 MiB.
  uint64_t max_committed_size_per_ready = 16 << 20;
  // Unacknowledged AppendEntries per follower while replicating. Default: 256.
  size_t max_inflight_msgs = 256;
  // Bytes of proposed, uncommitted entry data the leader accepts before
  // refusing proposals with ResourceExhausted (0: no limit). Default: 64 MiB.
  uint64_t max_uncommitted_bytes = 64 << 20;
  // Pre-vote (dissertation §9.6): a partitioned node rejoining does not
  // disrupt the leader by bumping the term. Default: on.
  bool pre_vote = true;
  // A leader that has not heard from a quorum within an election timeout
  // steps down; followers that hear from a leader ignore votes meanwhile.
  // Default: on.
  bool check_quorum = true;
  // Lease reads answer ReadIndex without a heartbeat round while a quorum
  // has acknowledged a heartbeat sent less than election_tick - 1 ticks ago:
  // those followers vote for no one until an election timeout after hearing
  // it, and a restarted node votes for no one for its first election
  // timeout. Safe only while the nodes' tick rates differ by less than one
  // tick per election timeout (bounded clock drift). Never used in a term in
  // which this leader began a leadership transfer. Requires check_quorum.
  // Default: off (a heartbeat round per read batch).
  bool lease_reads = false;
  // An idle group goes quiet: once every member holds the leader's whole log,
  // committed and applied on the leader, with no read, transfer or change
  // pending, and every member answered within the election timeout, the
  // leader's next heartbeat is marked quiesce and is its last; a follower
  // holding that log stops its election timer too and says so. A leader
  // that does not hear every member go quiet within half an election
  // timeout wakes and tries again later. Ticks then do nothing
  // until a proposal, a read, or any message other than that heartbeat (and
  // its answer) wakes the replica, or the driver calls Unquiesce. The driver
  // must watch the members' nodes: wake a follower whose leader's node fell
  // silent, and a leader when a member's node comes back (raft::Node does).
  // Default: off.
  bool quiesce = false;
  // Followers reject proposals instead of forwarding them to the leader.
  // Default: off (forward).
  bool disable_proposal_forwarding = false;
  // Uniform random integers in [0, n), used only for election timeouts.
  // Default: a generator seeded with `id` (deterministic).
  std::function<uint64_t(uint64_t n)> rand;

  absl::Status Validate() const;
};

class Raft {
 public:
  // InvalidArgument for a bad config or storage state.
  static absl::StatusOr<std::unique_ptr<Raft>> Create(Config config);

  // One tick of the logical clock.
  void Tick();
  // A message from a peer. Messages for other nodes are ignored; stale ones
  // are answered or dropped as Raft says. InvalidArgument if malformed.
  absl::Status Step(const Message& m);

  // Starts an election now (used to bootstrap and in tests).
  void Campaign();
  // Appends a command to the log (leader) or forwards it to the leader
  // (follower). Unavailable: no leader known, forwarding disabled, or a
  // leadership transfer under way; retry elsewhere or later.
  // ResourceExhausted: too much uncommitted data. OK does not mean committed:
  // the entry can still be lost with the leader; the application learns of
  // commitment when the entry comes back in Ready::committed.
  absl::Status Propose(std::string data);
  // As Propose, for a membership change. FailedPrecondition: a change is
  // still pending (one at a time), or it would remove the last voter.
  absl::Status ProposeConfChange(const ConfChange& cc);
  // Asks for a linearizable read point; the answer arrives as a ReadState
  // with `context` in a later Ready. Unavailable: no leader known.
  absl::Status ReadIndex(std::string context);
  // Leader only: hands leadership to `to` once its log is caught up, within
  // one election timeout. FailedPrecondition: not the leader; InvalidArgument:
  // `to` is not a voter.
  absl::Status TransferLeadership(uint64_t to);
  // The transport could not reach `id`: replication to it restarts probing.
  void ReportUnreachable(uint64_t id);
  // The transport finished (or failed) sending `id` a snapshot.
  void ReportSnapshot(uint64_t id, bool ok);

  // Wakes a quiet replica (see Config::quiesce). `leader_lost`: the leader's
  // node fell silent, so a follower counts an election timeout as passed and
  // campaigns within its random part. A leader starts a fresh check-quorum
  // period in which every member must answer again.
  void Unquiesce(bool leader_lost);
  bool quiesced() const { return quiesced_; }

  bool HasReady() const;
  Ready GetReady();
  // REQUIRES: `rd` is the Ready just returned, fully handled.
  void Advance(const Ready& rd);

  uint64_t id() const { return id_; }
  uint64_t term() const { return term_; }
  uint64_t vote() const { return vote_; }
  uint64_t leader() const { return leader_; }
  Role role() const { return role_; }
  uint64_t lead_transferee() const { return lead_transferee_; }
  const RaftLog& log() const { return log_; }
  const ConfState& conf() const { return conf_; }
  // The leader's view of a peer; nullptr when not the leader or not a member.
  const Progress* progress(uint64_t peer) const;

 private:
  explicit Raft(Config config);

  bool IsVoter(uint64_t id) const;
  bool Promotable() const;
  size_t Quorum() const { return conf_.voters.size() / 2 + 1; }

  void Reset(uint64_t term);
  void BecomeFollower(uint64_t term, uint64_t leader);
  void BecomePreCandidate();
  void BecomeCandidate();
  void BecomeLeader();
  void StartElection(bool pre_vote, bool transfer);
  void Hup(bool transfer);
  // Records a vote; returns granted and rejected counts among voters.
  std::pair<size_t, size_t> Poll(uint64_t from, bool granted);

  void Send(Message m);
  bool SendAppend(uint64_t to, bool send_if_empty);
  void SendHeartbeat(uint64_t to, const std::string& context);
  void BroadcastAppend();
  void BroadcastHeartbeat(const std::string& context);
  bool MaybeCommit();
  bool CommittedInCurrentTerm() const;
  // The leader may go quiet now (Config::quiesce).
  bool CanQuiesce() const;
  absl::Status AppendProposal(std::vector<Entry> entries);
  void AbortTransfer() { lead_transferee_ = kNone; }

  absl::Status StepLeader(const Message& m);
  absl::Status StepCandidate(const Message& m);
  absl::Status StepFollower(const Message& m);
  void HandleAppend(const Message& m);
  void HandleHeartbeat(const Message& m);
  void HandleSnapshot(const Message& m);
  bool Restore(const Snapshot& snap);

  // ReadIndex on the leader, for itself (from == id_) or a follower.
  void LeaderReadIndex(uint64_t from, std::string context);
  void ReleaseReads(uint64_t seq);
  // Lease reads: a quorum acknowledged a heartbeat recent enough.
  bool LeaseValid() const;
  // A read is safe at `index`: a ReadState here, or the answer to a follower.
  void AnswerRead(uint64_t to, uint64_t index, std::string context);
  void ApplyConfChange(const ConfChange& cc);
  void RebuildProgress();

  Config cfg_;
  const uint64_t id_;
  uint64_t term_ = 0;
  uint64_t vote_ = kNone;
  uint64_t leader_ = kNone;
  Role role_ = Role::kFollower;
  RaftLog log_;
  ConfState conf_;
  uint64_t conf_applied_index_ = 0;  // conf changes through here are in conf_
  std::map<uint64_t, Progress> prs_;  // leader only: voters and learners
  std::map<uint64_t, bool> votes_;
  std::vector<Message> msgs_;
  std::vector<ReadState> reads_;
  HardState prev_hard_;

  int election_elapsed_ = 0;
  int heartbeat_elapsed_ = 0;
  int randomized_election_timeout_ = 0;
  uint64_t lead_transferee_ = kNone;
  uint64_t transfer_deadline_ = 0;
  uint64_t ticks_ = 0;  // ticks since this object was created
  bool startup_guard_ = false;
  bool transferred_in_term_ = false;  // a transfer began: no lease reads this term
  uint64_t pending_conf_index_ = 0;
  uint64_t uncommitted_bytes_ = 0;
  bool quiesced_ = false;
  uint64_t quiesced_at_ = 0;            // leader: the tick it went quiet
  std::set<uint64_t> quiesce_acks_;     // leader: members that went quiet with it

  // ReadIndex requests awaiting a quorum's heartbeat acks (§6.4), in order.
  struct PendingRead {
    uint64_t index;
    uint64_t from;
    std::string context;
    std::set<uint64_t> acks;
  };
  std::map<uint64_t, PendingRead> pending_reads_;  // by our sequence number
  uint64_t read_seq_ = 0;                          // never reset: never reused
  // Reads that arrived before the leader committed an entry of its term.
  std::vector<std::pair<uint64_t, std::string>> reads_before_commit_;
};

}  // namespace cairn::raft

#endif  // CAIRN_REPLICATION_RAFT_H_
