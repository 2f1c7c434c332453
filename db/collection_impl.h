// CollectionImpl: validates requests, routes points to shards by a stable
// hash of their id, and merges per-shard results.
#ifndef CAIRN_DB_COLLECTION_IMPL_H_
#define CAIRN_DB_COLLECTION_IMPL_H_

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "cairn/collection.h"
#include "db/hash_class.h"
#include "db/memory_budget.h"
#include "db/shard.h"

namespace cairn::db {

// The options of collection `name`'s shards (says once when it asks for a
// GPU this node lacks).
ShardOptions ShardOptionsFor(const std::string& name, const CollectionConfig& config, const DatabaseOptions& options,
                             std::shared_ptr<storage::KvMemory> kv_memory = nullptr);

// The block cache and memtable budget that the shard stores of a node share
// (DatabaseOptions::storage_cache_bytes), half of it for memtables.
std::shared_ptr<storage::KvMemory> NewKvMemory(const DatabaseOptions& options);

class CollectionImpl final : public Collection {
 public:
  // Opens (creating when absent) the shards under `dir`, their stores
  // sharing `kv_memory` when given.
  static absl::StatusOr<std::shared_ptr<CollectionImpl>> Open(
      const std::string& name, const std::string& dir, const CollectionConfig& config,
      const DatabaseOptions& options, std::function<void()> wake_maintenance,
      std::shared_ptr<storage::KvMemory> kv_memory = nullptr);
  // A collection whose shards live elsewhere (replicated, in cluster mode):
  // it checks requests, routes them and merges results as for local shards.
  // What needs the shards themselves (UpdateConfig, Seal, Compact, bulk
  // loads, snapshots) is the owner's to do, and fails here with
  // FailedPrecondition. `router` maps ids to `shards` (the hash classes of a
  // collection whose shards were split); by default shard s of n holds the
  // ids whose hash is s modulo n.
  static std::shared_ptr<CollectionImpl> OverShards(const std::string& name, const CollectionConfig& config,
                                                    const DatabaseOptions& options,
                                                    std::vector<std::shared_ptr<ShardAccess>> shards,
                                                    std::optional<HashRouter> router = std::nullopt);
  ~CollectionImpl() override;

  const std::string& name() const override { return name_; }
  CollectionConfig config() const override;
  absl::Status UpdateConfig(const CollectionConfig& config) override;
  absl::StatusOr<CollectionInfo> Info() const override;
  absl::Status Upsert(absl::Span<const Point> points) override;
  absl::StatusOr<std::vector<std::optional<Record>>> Get(absl::Span<const PointId> ids,
                                                         bool with_payload,
                                                         bool with_vector,
                                                         const ReadOptions& read) const override;
  absl::StatusOr<uint64_t> Delete(absl::Span<const PointId> ids) override;
  absl::StatusOr<uint64_t> DeleteByFilter(const Filter& filter) override;
  absl::Status SetPayload(absl::Span<const PointId> ids, std::string_view payload_json) override;
  absl::Status OverwritePayload(absl::Span<const PointId> ids,
                                std::string_view payload_json) override;
  absl::StatusOr<uint64_t> Count(const Filter* filter, const ReadOptions& read) const override;
  absl::StatusOr<ScrollPage> Scroll(const ScrollRequest& request) const override;
  absl::StatusOr<std::vector<ScoredPoint>> Search(absl::Span<const float> query,
                                                  const SearchParams& params) const override;
  absl::StatusOr<std::vector<std::vector<ScoredPoint>>> SearchBatch(
      absl::Span<const float> queries, const SearchParams& params) const override;
  absl::Status Seal() override;
  absl::Status Compact(bool force) override;
  absl::StatusOr<std::unique_ptr<BulkLoader>> BeginBulkLoad(const BulkLoadOptions& options) override;

  // Background work: seal shards over the threshold, compact where due.
  void RunMaintenance();
  // Closes the shards; later calls return FailedPrecondition.
  void Close();
  // Before Close, on a clean shutdown: seals or saves growing segments
  // (DatabaseOptions::seal_on_close_points, growing_checkpoint_points).
  void SealOnClose(uint64_t min_points);
  // Consistent copy of every shard into `dir`/shard-NNNN.
  absl::Status SnapshotShards(const std::string& dir);
  // Brings HNSW floats from their vector files into memory while the
  // memory budget grants them (DatabaseOptions::hnsw_vectors_memory_share);
  // Seal, Compact and RunMaintenance do it too.
  void KeepVectorsInMemory();
  // Frees those floats again (the budget's reclaim): the bytes freed.
  uint64_t ReleaseVectors();
  // Upserts are admitted by `budget` (the node's memory limit) from now on.
  void SetMemoryBudget(std::shared_ptr<MemoryBudget> budget) { budget_ = std::move(budget); }

 private:
  class Loader;  // the BulkLoader
  CollectionImpl(std::string name, std::string dir, CollectionConfig config,
                 DatabaseOptions options, std::function<void()> wake);
  absl::Status CheckOpen() const;
  void KeepVectorsInMemoryLocked();  // REQUIRES: close_mu_ held, not closed
  size_t ShardOf(const std::string& ext_key) const;
  // Checks point i of a batch and prepares it for its shard.
  absl::StatusOr<PreparedPoint> PreparePoint(const Point& p, size_t i) const;
  absl::Status ValidateIds(absl::Span<const PointId> ids) const;
  absl::Status SetPayloadImpl(absl::Span<const PointId> ids, std::string_view payload_json,
                              bool overwrite);

  const std::string name_;
  const std::string dir_;
  // Immutable fields may be read without config_mu_; the tunables change
  // under it (see UpdateConfig).
  mutable std::mutex config_mu_;
  CollectionConfig config_;
  const DatabaseOptions options_;
  std::function<void()> wake_maintenance_;
  // Shared by every call, exclusive for Close.
  mutable std::shared_mutex close_mu_;
  bool closed_ = false;  // guarded by close_mu_
  std::vector<std::unique_ptr<Shard>> shards_;  // local shards (empty over remote ones)
  std::vector<std::shared_ptr<ShardAccess>> remote_;  // OverShards: the shards
  std::vector<ShardAccess*> access_;  // the data path: shards_ or remote_
  HashRouter router_ = HashRouter::Even(1);  // id -> index in access_
  absl::Status CheckLocal(const char* what) const;
  std::shared_ptr<MemoryBudget> budget_;  // set before the collection is shared
};

}  // namespace cairn::db

#endif  // CAIRN_DB_COLLECTION_IMPL_H_
