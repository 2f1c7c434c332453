// LogStore and RocksLogStorage: the Raft logs of every group on a node in one
// RocksDB instance (a directory apart from the shards' data, so that log
// truncation never fights the data's compaction), written with one fsync for
// all the groups that have work at once.
//
// LogStore is the instance; RocksLogStorage is one group's log in it (the
// LogStorage the core reads). Every write is synced before it returns, and
// LogStore::SaveReadies makes the Readies of many groups one atomic, synced
// write: after a crash either all of it is there or none of it.
//
// Layout (storage::KvStore, meta column family), <gid> 8 bytes big-endian:
//   g<gid>h              term, vote, commit
//   g<gid>s              the latest snapshot: index, term, membership, data
//   g<gid>p              index and term of the entry just before the first
//   g<gid>e<index BE>    term, type, data of each entry
//   n/<name>             the node's own records (LogStore::GetMeta/PutMeta)
//
// Terms of the entries held are cached in memory (8 bytes an entry), so
// Term() never reads the disk. Not thread-safe: one driver owns the store and
// its groups.
#ifndef CAIRN_REPLICATION_ROCKSDB_LOG_STORAGE_H_
#define CAIRN_REPLICATION_ROCKSDB_LOG_STORAGE_H_

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "replication/log_storage.h"

namespace cairn::storage {
class KvStore;
class WriteBatch;
}  // namespace cairn::storage

namespace cairn::raft {

class RocksLogStorage;

class LogStore {
 public:
  // Opens the store in `dir`, creating it when missing. FailedPrecondition
  // when another process holds the directory; DataLoss when RocksDB reports
  // corruption.
  static absl::StatusOr<std::unique_ptr<LogStore>> Open(const std::string& dir);
  ~LogStore();

  // The log of group `gid` (nonzero), read from disk (empty when the group
  // has nothing there). DataLoss when a record is malformed or the entries
  // are not contiguous. The store must outlive it; at most one per group.
  absl::StatusOr<std::unique_ptr<RocksLogStorage>> OpenGroup(uint64_t gid);
  // The groups with anything on disk, ascending.
  absl::StatusOr<std::vector<uint64_t>> ListGroups() const;
  // Removes everything of group `gid`. REQUIRES: its RocksLogStorage is gone.
  absl::Status DropGroup(uint64_t gid);

  // Persists each group's Ready (its snapshot, entries and hard state) in one
  // synced write. REQUIRES: every log was opened from this store.
  absl::Status SaveReadies(const std::vector<std::pair<RocksLogStorage*, const Ready*>>& work);

  // The node's own small records, beside the logs (synced).
  absl::StatusOr<std::optional<std::string>> GetMeta(const std::string& name) const;
  absl::Status PutMeta(const std::string& name, const std::string& value);

 private:
  friend class RocksLogStorage;
  explicit LogStore(std::unique_ptr<storage::KvStore> kv);
  std::unique_ptr<storage::KvStore> kv_;
};

class RocksLogStorage final : public LogStorage {
 public:
  // A store of its own in `dir` holding one group: for a process or a test
  // that runs a single group.
  static absl::StatusOr<std::unique_ptr<RocksLogStorage>> Open(const std::string& dir);
  ~RocksLogStorage() override;

  uint64_t group() const { return gid_; }

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
  friend class LogStore;
  RocksLogStorage(storage::KvStore* kv, uint64_t gid);
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
  absl::Status StageReady(const Ready& rd, Plan* plan, storage::WriteBatch* batch) const;
  // Makes the plan's changes in memory. REQUIRES: its batch is on disk.
  void Install(Plan plan);
  absl::Status Commit(Plan plan, const storage::WriteBatch& batch);
  std::string Key(char kind) const;
  std::string EntryKey(uint64_t index) const;

  std::unique_ptr<LogStore> owned_store_;  // only when made by Open(dir)
  storage::KvStore* kv_;
  const uint64_t gid_;
  HardState hard_;
  Snapshot snap_;
  uint64_t prefix_index_ = 0;
  uint64_t prefix_term_ = 0;
  std::deque<uint64_t> terms_;  // terms of [FirstIndex(), LastIndex()]
};

}  // namespace cairn::raft

#endif  // CAIRN_REPLICATION_ROCKSDB_LOG_STORAGE_H_
