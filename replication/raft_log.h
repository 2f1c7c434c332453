// RaftLog: the core's view of the log. Stable entries are read from
// LogStorage; entries and a snapshot the driver has not yet persisted are
// held here ("unstable") until Advance says they are on disk. Tracks the
// commit and applied indexes. Single owner, no locks.
#ifndef CAIRN_REPLICATION_RAFT_LOG_H_
#define CAIRN_REPLICATION_RAFT_LOG_H_

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "replication/log_storage.h"
#include "replication/raft_types.h"

namespace cairn::raft {

class RaftLog {
 public:
  // REQUIRES: applied <= committed <= storage->LastIndex().
  RaftLog(const LogStorage* storage, uint64_t committed, uint64_t applied);

  uint64_t FirstIndex() const;
  uint64_t LastIndex() const;
  uint64_t LastTerm() const { return TermOrZero(LastIndex()); }
  // NotFound: compacted; OutOfRange: past the last entry.
  absl::StatusOr<uint64_t> Term(uint64_t i) const;
  uint64_t TermOrZero(uint64_t i) const;
  bool MatchTerm(uint64_t i, uint64_t term) const;

  uint64_t committed() const { return committed_; }
  uint64_t applied() const { return applied_; }

  // §5.4.1: a candidate's log is at least as up-to-date as ours.
  bool IsUpToDate(uint64_t last_index, uint64_t last_term) const;

  // Follower side of AppendEntries (§5.3): if our entry at `index` has term
  // `log_term`, appends `entries` (dropping a conflicting suffix), commits up
  // to min(commit, last new index) and returns the last new index.
  std::optional<uint64_t> MaybeAppend(uint64_t index, uint64_t log_term, uint64_t commit,
                                      const std::vector<Entry>& entries);
  // Appends after the last entry or replaces a suffix. Returns the last index.
  // REQUIRES: entries[0].index > committed().
  uint64_t Append(std::vector<Entry> entries);

  // The largest index <= `index` whose term is <= `term`, and that term: where a
  // leader at `term` should probe next (etcd's findConflictByTerm).
  std::pair<uint64_t, uint64_t> FindConflictByTerm(uint64_t index, uint64_t term) const;

  // Entries [lo, hi) up to max_bytes of data (at least one if any).
  // NotFound when lo is compacted.
  absl::StatusOr<std::vector<Entry>> Slice(uint64_t lo, uint64_t hi, uint64_t max_bytes) const;

  void CommitTo(uint64_t index);
  // Commits `index` if its term is `term` (§5.4.2: only current-term entries by counting).
  bool MaybeCommit(uint64_t index, uint64_t term);
  void AppliedTo(uint64_t index);

  // Committed entries not yet handed out, up to max_bytes.
  std::vector<Entry> NextCommitted(uint64_t max_bytes) const;
  bool HasNextCommitted() const;

  // Replaces the log with a snapshot received from the leader.
  void Restore(const Snapshot& snap);

  const std::vector<Entry>& UnstableEntries() const { return unstable_; }
  const std::optional<Snapshot>& UnstableSnapshot() const { return unstable_snap_; }
  bool HasPendingSnapshot() const { return unstable_snap_.has_value(); }
  // The driver persisted entries up to (index, term) / the snapshot at index.
  void StableTo(uint64_t index, uint64_t term);
  void StableSnapTo(uint64_t index);

  // The snapshot to send a follower: the unstable one or storage's.
  Snapshot CurrentSnapshot() const;

 private:
  const LogStorage* storage_;
  std::optional<Snapshot> unstable_snap_;
  std::vector<Entry> unstable_;
  uint64_t offset_;  // index of unstable_[0]
  uint64_t committed_;
  uint64_t applied_;
};

}  // namespace cairn::raft

#endif  // CAIRN_REPLICATION_RAFT_LOG_H_
