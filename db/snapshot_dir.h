// The snapshot of a collection: a data directory that holds only it.
//
//   SNAP/CAIRN                           {"format_version": N}
//   SNAP/collections/NAME/collection.json
//   SNAP/collections/NAME/shard-NNNN/    one shard's files (Shard::SnapshotAll)
//
// Database::Snapshot writes one from its shards; a cluster node writes one a
// shard at a time, each from a replica of it. Database::Open serves one, and
// RestoreCollection reads one. Functions here are thread-compatible.
#ifndef CAIRN_DB_SNAPSHOT_DIR_H_
#define CAIRN_DB_SNAPSHOT_DIR_H_

#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "cairn/options.h"

namespace cairn::db {

// The name of shard `i`'s directory in a collection's directory.
std::string ShardDirName(size_t i);

// Writes DIR/CAIRN for this build's format.
absl::Status WriteFormatFile(const std::string& dir);

// Writes a snapshot of collection `name` into `target` (which must not
// exist: AlreadyExists): the format file and the configuration, then
// `fill(collection_dir)` writes the shards. Built in `target`.tmp and renamed
// into place, so `target` is whole or absent; on error nothing is left.
absl::Status WriteSnapshotDir(const std::string& target, const std::string& name, const CollectionConfig& config,
                              const std::function<absl::Status(const std::string& collection_dir)>& fill);

// What a snapshot directory holds. InvalidArgument when `dir` is not a
// snapshot of exactly one collection; DataLoss when its configuration is
// malformed.
struct SnapshotContents {
  std::filesystem::path collection_dir;
  CollectionConfig config;
};
absl::StatusOr<SnapshotContents> ReadSnapshotDir(const std::string& dir);

// Copies a directory tree: files RocksDB and Cairn never change after writing
// them (SST, blob, segment files) are hard-linked where the file system
// allows, the rest copied. Synced.
absl::Status CopyTree(const std::filesystem::path& from, const std::filesystem::path& to);

}  // namespace cairn::db

#endif  // CAIRN_DB_SNAPSHOT_DIR_H_
