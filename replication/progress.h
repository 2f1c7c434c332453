// Progress: what a leader knows of one follower's log, and how it paces
// AppendEntries to it (etcd's flow control, dissertation §10.2.1):
//   probe      one message at a time until the follower's match is found;
//   replicate  optimistic pipelining, at most max_inflight messages unacked;
//   snapshot   a snapshot is on its way; nothing else is sent.
#ifndef CAIRN_REPLICATION_PROGRESS_H_
#define CAIRN_REPLICATION_PROGRESS_H_

#include <cstdint>
#include <algorithm>
#include <deque>
#include <string_view>

namespace cairn::raft {

class Progress {
 public:
  enum class State : uint8_t { kProbe, kReplicate, kSnapshot };

  Progress(uint64_t next, size_t max_inflight, bool learner)
      : next_(next), max_inflight_(max_inflight), learner_(learner) {}

  uint64_t match() const { return match_; }
  uint64_t next() const { return next_; }
  State state() const { return state_; }
  uint64_t pending_snapshot() const { return pending_snapshot_; }
  bool learner() const { return learner_; }
  void set_learner(bool v) { learner_ = v; }
  bool recent_active() const { return recent_active_; }
  void set_recent_active(bool v) { recent_active_ = v; }
  size_t inflight() const { return inflight_.size(); }
  // The leader's tick at which the newest heartbeat this follower answered
  // was sent (lease reads).
  uint64_t heartbeat_acked_at() const { return heartbeat_acked_at_; }
  void AckedHeartbeatSentAt(uint64_t tick) { heartbeat_acked_at_ = std::max(heartbeat_acked_at_, tick); }

  // Nothing more may be sent until the follower answers.
  bool IsPaused() const;

  void BecomeProbe();
  void BecomeReplicate();
  void BecomeSnapshot(uint64_t index);

  // An AppendEntries reply accepted entries through n. Returns whether match moved.
  bool MaybeUpdate(uint64_t n);
  // A reply rejected the append after `rejected`; the follower suggests
  // `hint`. Returns false for a stale rejection.
  bool MaybeDecrTo(uint64_t rejected, uint64_t hint);
  // Entries through `last` were sent (replicate: pipelined; probe: pauses).
  void SentEntries(uint64_t last, bool non_empty);
  // A heartbeat reply: the follower is alive; a probe may go again, and a
  // full pipeline frees one slot so replication cannot stall on lost acks.
  void OnHeartbeatResponse();
  // The transport delivered the snapshot (ok) or gave up on it: probe again,
  // past it or from match; after a failure, only once a heartbeat answers.
  void SnapshotDone(bool ok);
  // The leader's own entries: match and next follow its last index.
  void SetSelf(uint64_t last) { match_ = last; next_ = last + 1; }

 private:
  uint64_t match_ = 0;
  uint64_t next_;
  State state_ = State::kProbe;
  bool probe_sent_ = false;
  uint64_t pending_snapshot_ = 0;
  bool recent_active_ = false;
  uint64_t heartbeat_acked_at_ = 0;
  size_t max_inflight_;
  bool learner_;
  std::deque<uint64_t> inflight_;  // last index of each unacked message
};

std::string_view ProgressStateName(Progress::State s);

}  // namespace cairn::raft

#endif  // CAIRN_REPLICATION_PROGRESS_H_
