// LogStorage: the Raft log, hard state and latest snapshot as stable storage
// holds them. The core only reads through this interface; the driver writes
// (Append, SetHardState, ApplySnapshot) while handling a Ready, and compacts
// once the state machine has taken a snapshot.
//
// Indexes: entries run from FirstIndex() to LastIndex(). The entry just
// before FirstIndex() is covered by the snapshot; its term stays readable
// through Term(FirstIndex() - 1). An empty log has FirstIndex() ==
// LastIndex() + 1.
//
// MemoryStorage is for tests and the simulator; RocksLogStorage
// (rocksdb_log_storage.h) keeps the log in its own RocksDB instance. Neither is thread-safe: one driver owns each.
#ifndef CAIRN_REPLICATION_LOG_STORAGE_H_
#define CAIRN_REPLICATION_LOG_STORAGE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "replication/raft_types.h"

namespace cairn::raft {

class LogStorage {
 public:
  virtual ~LogStorage() = default;

  // What a restarting node starts from.
  virtual HardState InitialHardState() const = 0;
  virtual ConfState InitialConfState() const = 0;

  // Entries [lo, hi), at least one and then up to max_bytes of entry data.
  // REQUIRES: FirstIndex() <= lo <= hi <= LastIndex() + 1.
  virtual absl::StatusOr<std::vector<Entry>> Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes) const = 0;
  // The term of entry i, for FirstIndex() - 1 <= i <= LastIndex(); NotFound
  // (compacted) below, OutOfRange above.
  virtual absl::StatusOr<uint64_t> Term(uint64_t i) const = 0;
  virtual uint64_t FirstIndex() const = 0;
  virtual uint64_t LastIndex() const = 0;
  virtual Snapshot GetSnapshot() const = 0;
  // The same snapshot's index, term and membership, without copying its data.
  virtual SnapshotMeta GetSnapshotMeta() const = 0;

  // Driver side. Append replaces any entries at or after entries[0].index.
  virtual absl::Status Append(const std::vector<Entry>& entries) = 0;
  virtual absl::Status SetHardState(const HardState& hs) = 0;
  // Replaces the whole log with the snapshot (it covers everything before).
  virtual absl::Status ApplySnapshot(const Snapshot& snap) = 0;
  // Records a snapshot the state machine took at `index` (<= last applied)
  // and drops the entries it covers, keeping `keep` entries before it for
  // followers that are only a little behind.
  virtual absl::Status CreateSnapshot(uint64_t index, const ConfState& conf, std::string data, uint64_t keep) = 0;

  // Persists what a Ready asks for: its snapshot, entries and hard state.
  // Durable storage does it in one synced write; the default calls the
  // three methods above in that order.
  virtual absl::Status SaveReady(const Ready& rd);
};

// Makes an empty log the first state of a new group whose voters are
// `voters` (and learners `learners`): a snapshot at index 1, term 1, holding that membership (and an
// empty state machine). Nodes that join later start empty and receive it,
// or a newer snapshot, from the leader. FailedPrecondition if not empty.
absl::Status Bootstrap(LogStorage* storage, std::vector<uint64_t> voters, std::vector<uint64_t> learners = {});

// Everything in memory; "stable" means "in this object". The simulator keeps
// it across a simulated crash and drops the node's Raft object.
class MemoryStorage final : public LogStorage {
 public:
  MemoryStorage();

  HardState InitialHardState() const override { return hard_; }
  ConfState InitialConfState() const override { return snap_.meta.conf; }
  absl::StatusOr<std::vector<Entry>> Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes) const override;
  absl::StatusOr<uint64_t> Term(uint64_t i) const override;
  uint64_t FirstIndex() const override { return ents_[0].index + 1; }
  uint64_t LastIndex() const override { return ents_[0].index + ents_.size() - 1; }
  Snapshot GetSnapshot() const override { return snap_; }
  SnapshotMeta GetSnapshotMeta() const override { return snap_.meta; }

  absl::Status Append(const std::vector<Entry>& entries) override;
  absl::Status SetHardState(const HardState& hs) override;
  absl::Status ApplySnapshot(const Snapshot& snap) override;
  absl::Status CreateSnapshot(uint64_t index, const ConfState& conf, std::string data, uint64_t keep) override;

 private:
  HardState hard_;
  Snapshot snap_;
  // ents_[0] is a sentinel holding the snapshot's index and term.
  std::vector<Entry> ents_;
};

}  // namespace cairn::raft

#endif  // CAIRN_REPLICATION_LOG_STORAGE_H_
