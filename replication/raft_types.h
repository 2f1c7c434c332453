// The values the Raft core takes in and hands out: log entries, messages,
// hard state, snapshots, configurations and the Ready batch. Plain structs,
// no behaviour; the transport and the log storage encode them.
#ifndef CAIRN_REPLICATION_RAFT_TYPES_H_
#define CAIRN_REPLICATION_RAFT_TYPES_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace cairn::raft {

// Node ids are nonzero; 0 means "none" (no vote, no leader known).
inline constexpr uint64_t kNone = 0;

enum class EntryType : uint8_t {
  kNormal = 0,      // an application command (empty: the leader's no-op, §5.4.2)
  kConfChange = 1,  // data is an encoded ConfChange
};

struct Entry {
  uint64_t term = 0;
  uint64_t index = 0;
  EntryType type = EntryType::kNormal;
  std::string data;

  bool operator==(const Entry&) const = default;
};

// Membership as of some log index: who votes and who only follows.
struct ConfState {
  std::vector<uint64_t> voters;    // sorted
  std::vector<uint64_t> learners;  // sorted, disjoint from voters

  bool operator==(const ConfState&) const = default;
};

// One server at a time (Raft dissertation §4.1). The leader appends a change
// only once every earlier change has been applied and it has committed an
// entry of its own term, which is the fix for the single-server change bug
// (D. Ongaro, raft-dev, 2015).
struct ConfChange {
  enum class Type : uint8_t {
    kAddVoter = 0,    // adds a voter, or promotes a learner
    kAddLearner = 1,  // adds a learner, or demotes a voter
    kRemove = 2,      // removes a voter or learner
  };
  Type type = Type::kAddVoter;
  uint64_t node = kNone;

  std::string Encode() const;
  static absl::StatusOr<ConfChange> Decode(std::string_view data);
};

struct SnapshotMeta {
  uint64_t index = 0;  // the last entry the snapshot covers
  uint64_t term = 0;   // that entry's term
  ConfState conf;      // membership as of `index`

  bool operator==(const SnapshotMeta&) const = default;
};

struct Snapshot {
  SnapshotMeta meta;
  std::string data;  // the application's state machine, opaque here

  bool empty() const { return meta.index == 0; }
};

// What must be on stable storage before messages are sent (§5.1, Figure 2).
struct HardState {
  uint64_t term = 0;
  uint64_t vote = kNone;
  uint64_t commit = 0;

  bool operator==(const HardState&) const = default;
};

enum class MessageType : uint8_t {
  kApp,            // AppendEntries (§5.3)
  kAppResp,
  kVote,           // RequestVote (§5.2)
  kVoteResp,
  kPreVote,        // a vote that changes no term (dissertation §9.6)
  kPreVoteResp,
  kHeartbeat,      // carries the commit index and a ReadIndex context
  kHeartbeatResp,
  kSnap,           // InstallSnapshot (§7)
  kTimeoutNow,     // leadership transfer: campaign now (dissertation §3.10)
  kProp,           // a proposal forwarded by a follower to the leader
  kReadIndex,      // a read request forwarded by a follower to the leader
  kReadIndexResp,
};

std::string_view MessageTypeName(MessageType t);

struct Message {
  MessageType type = MessageType::kApp;
  uint64_t from = kNone;
  uint64_t to = kNone;
  uint64_t term = 0;      // the sender's term (PreVote: the term it would campaign in)
  uint64_t log_term = 0;  // App: term of `index`; Vote: term of the candidate's last entry
  uint64_t index = 0;     // App: index before `entries`; Vote: the candidate's last index
  uint64_t commit = 0;
  std::vector<Entry> entries;
  std::optional<Snapshot> snapshot;
  bool reject = false;
  uint64_t reject_hint = 0;  // AppResp: where the follower suggests the leader look
  std::string context;       // ReadIndex / heartbeat: the read's context; Vote: "transfer"
  bool quiesce = false;      // Heartbeat: the group goes quiet (Config::quiesce); HeartbeatResp: its answer
};

// A read that is safe once the application has applied `index` (§6.4).
struct ReadState {
  uint64_t index = 0;
  std::string context;
};

enum class Role : uint8_t { kFollower, kPreCandidate, kCandidate, kLeader };
std::string_view RoleName(Role r);

// The work the core hands to its driver. The driver does it in this order,
// then calls Advance(): persist `snapshot`, `entries` and `hard_state`
// (synced); send `messages`; apply `snapshot` and then `committed` to the
// state machine; serve `reads` once applied has reached their index.
struct Ready {
  std::optional<HardState> hard_state;  // set when it changed
  std::vector<Entry> entries;           // append to the log, replacing any conflicting suffix
  std::optional<Snapshot> snapshot;     // install, replacing the log it covers
  std::vector<Message> messages;
  std::vector<Entry> committed;  // committed and not yet handed out, in index order
  std::vector<ReadState> reads;
  // The role and leader, every time (cheap to copy).
  Role role = Role::kFollower;
  uint64_t leader = kNone;
  uint64_t term = 0;

  bool empty() const {
    return !hard_state && entries.empty() && !snapshot && messages.empty() && committed.empty() && reads.empty();
  }
};

}  // namespace cairn::raft

#endif  // CAIRN_REPLICATION_RAFT_TYPES_H_
