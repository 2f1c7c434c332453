// RocksLogStorage: the Raft log, hard state and latest snapshot in a RocksDB
// instance of their own (a directory beside the shard's data, so that log
// truncation never fights the data's compaction). Every write is synced
// before it returns, and SaveReady makes a whole Ready one atomic, synced
// write: after a crash either all of it is there or none of it.
//
// Layout (storage::KvStore, meta column family):
//   raft/hard           term, vote, commit
//   raft/snap           the latest snapshot: index, term, membership, data
//   raft/prefix         index and term of the entry just before the first
//   raft/e/<index BE>   term, type, data of each entry
//
// Terms of the entries held are cached in memory (8 bytes an entry), so
// Term() never reads the disk. Not thread-safe: one driver owns it.
#ifndef CAIRN_REPLICATION_ROCKSDB_LOG_STORAGE_H_
#define CAIRN_REPLICATION_ROCKSDB_LOG_STORAGE_H_

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "replication/log_storage.h"

namespace cairn::storage {
class KvStore;
class WriteBatch;
}  // namespace cairn::storage

namespace cairn::raft {

class RocksLogStorage final : public LogStorage {
 public:
  // Opens the log in `dir`, creating it when missing. DataLoss when a record
  // is malformed or the entries are not contiguous; FailedPrecondition when
  // another process holds the directory.
  static absl::StatusOr<std::unique_ptr<RocksLogStorage>> Open(const std::string& dir);
  ~RocksLogStorage() override;

  HardState InitialHardState() const override { return hard_; }
  ConfState InitialConfState() const override { return snap_.meta.conf; }
  absl::StatusOr<std::vector<Entry>> Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes) const override;
  absl::StatusOr<uint64_t> Term(uint64_t i) const override;
  uint64_t FirstIndex() const override { return prefix_index_ + 1; }
  uint64_t LastIndex() const override { return prefix_index_ + terms_.size(); }
  Snapshot GetSnapshot() const override { return snap_; }
  SnapshotMeta GetSnapshotMeta() const override { return snap_.meta; }

  absl::Status Append(const std::vector<Entry>& entries) override;
  absl::Status SetHardState(const HardState& hs) override;
  absl::Status ApplySnapshot(const Snapshot& snap) override;
  absl::Status CreateSnapshot(uint64_t index, const ConfState& conf, std::string data, uint64_t keep) override;
  absl::Status SaveReady(const Ready& rd) override;

 private:
  explicit RocksLogStorage(std::unique_ptr<storage::KvStore> kv);
  absl::Status Load();

  // A write in preparation: the batch, and the in-memory changes to make
  // once it is on disk.
  struct Plan {
    uint64_t prefix_index;
    uint64_t prefix_term;
    uint64_t last;
    std::optional<Snapshot> snap;           // installed: every term dropped
    std::optional<uint64_t> keep_terms;     // entries kept before `appended`
    std::vector<uint64_t> appended;         // terms of the new entries
    std::optional<HardState> hard;
  };
  Plan NewPlan() const { return Plan{prefix_index_, prefix_term_, LastIndex(), {}, {}, {}, {}}; }
  absl::Status StageSnapshot(const Snapshot& snap, Plan* plan, storage::WriteBatch* batch) const;
  absl::Status StageAppend(const std::vector<Entry>& entries, Plan* plan, storage::WriteBatch* batch) const;
  absl::Status Commit(Plan plan, const storage::WriteBatch& batch);

  std::unique_ptr<storage::KvStore> kv_;
  HardState hard_;
  Snapshot snap_;
  uint64_t prefix_index_ = 0;
  uint64_t prefix_term_ = 0;
  std::deque<uint64_t> terms_;  // terms of [FirstIndex(), LastIndex()]
};

}  // namespace cairn::raft

#endif  // CAIRN_REPLICATION_ROCKSDB_LOG_STORAGE_H_
