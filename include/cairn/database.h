// Database: the embedded Cairn engine, opened on a data directory in-process.
//
//   CAIRN_ASSIGN_OR_RETURN(auto db, cairn::Database::Open("./data", {}));
//   cairn::CollectionConfig config;
//   config.dimension = 384;
//   config.metric = cairn::Metric::kCosine;
//   CAIRN_ASSIGN_OR_RETURN(auto docs, db->CreateCollection("docs", config));
//   CAIRN_RETURN_IF_ERROR(docs->Upsert(points));
//   CAIRN_ASSIGN_OR_RETURN(auto hits, docs->Search(query, {.k = 5}));
//
// One process at a time holds a data directory (an advisory lock on
// DIR/LOCK); a second Open fails with FailedPrecondition.
//
// Thread-safety: all methods are thread-safe. Collections returned remain
// valid (shared ownership) until dropped or until the Database is destroyed.
#ifndef CAIRN_DATABASE_H_
#define CAIRN_DATABASE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cairn/collection.h"
#include "cairn/options.h"

namespace cairn {

// Version of the on-disk format this build reads and writes.
inline constexpr int kFormatVersion = 1;

// What a database (a cluster node: its replicas) holds in memory, as its
// memory limit counts it. index + storage is what the limit is held to.
struct NodeMemory {
  uint64_t limit_bytes = 0;  // DatabaseOptions::memory_limit_bytes resolved; 0: none
  uint64_t index_bytes = 0;  // segments, tails, id maps, payload indexes
  // RocksDB: the shared block cache's blocks, memtables, table readers.
  uint64_t storage_bytes = 0;
  // Of storage_bytes: blocks in the shared cache, and its capacity
  // (DatabaseOptions::storage_cache_bytes resolved), which also bounds the
  // memtables.
  uint64_t storage_cache_bytes = 0;
  uint64_t storage_cache_capacity_bytes = 0;
};

class Database {
 public:
  virtual ~Database() = default;

  // Opens (creating when allowed) the database in `dir`: loads every
  // collection's sealed segments and replays the writes after them.
  // FailedPrecondition: locked by another process, or written by an
  // incompatible format version. DataLoss: a corrupt file.
  static absl::StatusOr<std::unique_ptr<Database>> Open(
      const std::string& dir, const DatabaseOptions& options = {});

  // Names: 1..64 characters of [A-Za-z0-9_-], starting with a letter or digit.
  // AlreadyExists when the name is taken; InvalidArgument for a bad config.
  virtual absl::StatusOr<std::shared_ptr<Collection>> CreateCollection(
      const std::string& name, const CollectionConfig& config) = 0;
  virtual absl::StatusOr<std::shared_ptr<Collection>> GetCollection(
      const std::string& name) const = 0;
  // Sorted by name.
  virtual std::vector<std::string> ListCollections() const = 0;
  virtual absl::StatusOr<CollectionInfo> DescribeCollection(
      const std::string& name) const = 0;
  // Removes the collection and its files. NotFound when absent.
  virtual absl::Status DropCollection(const std::string& name) = 0;

  // Writes a consistent point-in-time copy of collection `name` into
  // `target_dir` (which must not exist). The copy is itself a data directory
  // holding that one collection: Database::Open(target_dir) serves it.
  virtual absl::Status Snapshot(const std::string& name,
                                const std::string& target_dir) = 0;

  // Adds the collection held by `snapshot_dir` (a directory Snapshot wrote)
  // to this database as collection `name`. Immutable files are hard-linked
  // when on the same file system, so the snapshot stays as it was.
  // AlreadyExists when `name` is taken; InvalidArgument when `snapshot_dir`
  // is not a snapshot of exactly one collection; DataLoss for a corrupt one.
  virtual absl::StatusOr<std::shared_ptr<Collection>> RestoreCollection(
      const std::string& snapshot_dir, const std::string& name) = 0;

  virtual const std::string& dir() const = 0;
  // The options it was opened with.
  virtual const DatabaseOptions& options() const = 0;
  // What it holds in memory now (measured at most a second ago).
  virtual NodeMemory Memory() const = 0;
};

}  // namespace cairn

#endif  // CAIRN_DATABASE_H_
