// KvStore: one RocksDB instance (one shard replica's data) with Cairn's column
// families. The only code in Cairn that includes RocksDB.
//
// Column families:
//   kMeta          small metadata (next id, segment manifest, format version)
//   kVectors       internal id -> raw float vector; kept in blob files so that
//                  compaction does not rewrite the large values again and again
//   kPayloads      internal id -> payload JSON and text chunk
//   kIds           external id -> internal id
//   kRids          internal id -> external id (the set of live points)
//   kPayloadIndex  payload index keys (field, value, internal id)
//
// Thread-safety: all methods are thread-safe. After a failed write the store
// refuses further writes (FailedPrecondition) until it is reopened, since the
// state of a WAL after a failed fsync is unknown.
#ifndef CAIRN_STORAGE_KV_STORE_H_
#define CAIRN_STORAGE_KV_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace cairn::storage {

enum class Cf : int { kMeta = 0, kVectors, kPayloads, kIds, kRids, kPayloadIndex };
inline constexpr int kNumCf = 6;

// Memory several stores share (a node's shard replicas): one LRU block
// cache, and one write buffer manager that charges every store's memtables
// to that cache. The cache's capacity bounds blocks and memtables together;
// once the memtables pass `write_buffer_bytes` the largest is flushed.
// Thread-safe; stores keep it alive while open.
class KvMemory {
 public:
  // REQUIRES: write_buffer_bytes < capacity_bytes.
  static std::shared_ptr<KvMemory> Create(uint64_t capacity_bytes, uint64_t write_buffer_bytes);
  ~KvMemory();
  uint64_t capacity_bytes() const;
  uint64_t write_buffer_bytes() const;
  // Memtable bytes of every store, as charged to the cache.
  uint64_t MemtableBytes() const;
  // Cached blocks (data, index, filter) of every store: the cache's usage
  // less the memtables' charge.
  uint64_t BlockCacheBytes() const;

 private:
  friend class KvStore;
  struct Rep;
  explicit KvMemory(std::unique_ptr<Rep> rep);
  std::unique_ptr<Rep> rep_;
};

struct KvOptions {
  bool create_if_missing = true;
  // fsync the WAL before Write returns. Concurrent writers share a sync.
  bool sync = true;
  // Shared memory for caches and memtables; null: the store has a 64 MiB
  // block cache of its own and its memtables are bounded only per column
  // family.
  std::shared_ptr<KvMemory> memory;
};

// A set of puts and deletes applied atomically by KvStore::Write.
class WriteBatch {
 public:
  void Put(Cf cf, std::string_view key, std::string_view value);
  void Delete(Cf cf, std::string_view key);
  void Append(const WriteBatch& other);
  size_t size() const { return ops_.size(); }
  uint64_t bytes() const { return bytes_; }
  void Clear() { ops_.clear(); bytes_ = 0; }

 private:
  friend class KvStore;
  struct Op {
    Cf cf;
    bool is_delete;
    std::string key;
    std::string value;
  };
  std::vector<Op> ops_;
  uint64_t bytes_ = 0;
};

// Ordered iteration over one column family, at a consistent point in time.
class KvIterator {
 public:
  virtual ~KvIterator() = default;
  virtual void SeekToFirst() = 0;
  virtual void Seek(std::string_view target) = 0;
  virtual bool Valid() const = 0;
  virtual void Next() = 0;
  virtual std::string_view key() const = 0;
  virtual std::string_view value() const = 0;
  // Not OK when iteration stopped on an error (e.g. a checksum mismatch).
  virtual absl::Status status() const = 0;
};

// A sorted file of one column family's keys, built outside the database and
// added to it with KvStore::IngestFiles (the fast path of a bulk load: no
// write-ahead log, no memtable, no compaction of the data).
class SstWriter {
 public:
  virtual ~SstWriter() = default;
  // REQUIRES: each key greater than the one before.
  virtual absl::Status Put(std::string_view key, std::string_view value) = 0;
  virtual uint64_t entries() const = 0;
  virtual Cf cf() const = 0;
  virtual const std::string& path() const = 0;
  // Completes the file (nothing is written when no key was put).
  virtual absl::Status Finish() = 0;
};

class KvStore {
 public:
  // DataLoss when RocksDB reports corruption; FailedPrecondition when the
  // directory is locked by another process.
  static absl::StatusOr<std::unique_ptr<KvStore>> Open(const std::string& path,
                                                       const KvOptions& options);
  ~KvStore();

  absl::Status Write(const WriteBatch& batch);
  absl::StatusOr<std::optional<std::string>> Get(Cf cf, std::string_view key) const;

  // A point in time to read at: reads through it see every write made before
  // it and none after, across column families. Released when destroyed;
  // REQUIRES: destroyed before the store.
  class ReadView {
   public:
    ~ReadView();
    ReadView(const ReadView&) = delete;
    ReadView& operator=(const ReadView&) = delete;

   private:
    friend class KvStore;
    ReadView(const KvStore* store, const void* snapshot) : store_(store), snapshot_(snapshot) {}
    const KvStore* store_;
    const void* snapshot_;  // a rocksdb::Snapshot
  };
  std::unique_ptr<ReadView> NewReadView() const;
  // out[i] is the value of keys[i], or nullopt when absent; as of `at` when
  // given, else now.
  absl::Status MultiGet(Cf cf, absl::Span<const std::string> keys, std::vector<std::optional<std::string>>* out,
                        const ReadView* at = nullptr) const;
  std::unique_ptr<KvIterator> NewIterator(Cf cf) const;

  // A consistent copy (hard links where possible) in `dir`, which must not
  // exist. The copy opens with KvStore::Open.
  absl::Status CreateCheckpoint(const std::string& dir) const;
  // A writer of a sorted file at `path` for column family `cf`.
  absl::StatusOr<std::unique_ptr<SstWriter>> NewSstWriter(Cf cf, const std::string& path) const;
  // Adds finished files to their column families, all at once (atomically:
  // after a crash either every file is in or none is). The files are moved
  // (hard-linked) into the store. REQUIRES: their keys are not in the store.
  absl::Status IngestFiles(const std::vector<SstWriter*>& files);

  // Flushes memtables to SST files (shortens WAL replay on the next open).
  absl::Status Flush();
  // Makes every write made so far durable (fsyncs the write-ahead log): for
  // a store opened without synced writes.
  absl::Status SyncWal();
  // Memtables, table readers and block cache, in bytes (RocksDB's estimate);
  // without the block cache when it is shared (KvMemory reports that).
  uint64_t ApproximateMemoryBytes() const;

  const std::string& path() const { return path_; }

 private:
  struct Rep;
  KvStore(std::string path, std::unique_ptr<Rep> rep);
  std::string path_;
  std::unique_ptr<Rep> rep_;
  std::atomic<bool> write_failed_{false};
};

}  // namespace cairn::storage

#endif  // CAIRN_STORAGE_KV_STORE_H_
