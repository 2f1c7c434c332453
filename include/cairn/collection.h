// A collection: points of one dimension and metric, with an index and payload
// indexes, split into shards.
//
// Thread-safety: every method may be called from any number of threads at
// once. Writes to one shard are serialized and share WAL syncs; searches run
// concurrently with each other and with writes. A write is visible to every
// search that starts after it returns (read-your-writes).
//
// Lifetime: obtained from Database; stays usable until the collection is
// dropped or the Database is destroyed, after which calls return
// FailedPrecondition.
#ifndef CAIRN_COLLECTION_H_
#define CAIRN_COLLECTION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cairn/filter.h"
#include "cairn/options.h"
#include "cairn/point.h"

namespace cairn {

// What a read of a replicated collection (cairnd --cluster) may return.
enum class ReadConsistency {
  // Every write acknowledged before the read began is seen, whichever node
  // serves it: the replica asks its shard's leader for the commit index
  // (Raft's ReadIndex, one round shared by the reads waiting at that moment)
  // and waits until it has applied that far. The default.
  kLinearizable = 0,
  // What the replica serving the read has applied, without asking the
  // leader: cheaper, and it can miss the latest writes. A replica that has
  // not heard from its shard's leader within max_staleness_ms refuses it
  // (Unavailable) rather than answer from older data.
  kLocal = 1,
};

// How a read (Get, Count) is served by a replicated collection. The embedded
// engine and a single-node server are always current and ignore it.
struct ReadOptions {
  // Default: kLinearizable.
  ReadConsistency consistency = ReadConsistency::kLinearizable;
  // kLocal: how long since the replica last heard from its shard's leader
  // it may still answer. 0: 5,000 ms.
  uint32_t max_staleness_ms = 0;
};

struct SearchParams {
  // Number of results. Required: 1..DatabaseOptions::max_k.
  int k = 10;
  // HNSW candidate list size; 0 uses the collection's ef_search.
  int ef = 0;
  // IVF lists to probe; 0 uses the collection's nprobe.
  int nprobe = 0;
  // Exact (brute-force) search over the raw vectors, ignoring the index.
  bool exact = false;
  // Only points matching this filter. Null for none.
  const Filter* filter = nullptr;
  // Return payload and text of each result. Default: true.
  bool with_payload = true;
  // Return each result's vector. Default: false.
  bool with_vector = false;
  // Replicated collections only (the embedded engine is always current).
  // Default: kLinearizable.
  ReadConsistency consistency = ReadConsistency::kLinearizable;
  // kLocal: how long since the replica last heard from its shard's leader
  // it may still answer. 0: 5,000 ms.
  uint32_t max_staleness_ms = 0;
};

struct ScrollRequest {
  // Where to start: "" for the beginning, else ScrollPage::next_cursor.
  std::string cursor;
  // Points per page. Required: 1..DatabaseOptions::max_batch_points.
  uint32_t limit = 100;
  const Filter* filter = nullptr;
  bool with_payload = true;
  bool with_vector = false;
  // Replicated collections only; each page is read with it (see ReadOptions).
  ReadConsistency consistency = ReadConsistency::kLinearizable;
  uint32_t max_staleness_ms = 0;
};

struct ScrollPage {
  std::vector<Record> points;
  // Cursor of the next page; empty when this page is the last.
  std::string next_cursor;
};

struct CollectionInfo {
  std::string name;
  CollectionConfig config;
  uint64_t points = 0;            // live points
  uint64_t segments = 0;          // growing + sealed, over all shards
  uint64_t sealed_segments = 0;
  uint64_t deleted_in_segments = 0;  // tombstones not yet compacted away
  uint64_t index_memory_bytes = 0;   // resident index memory (estimate)
  uint64_t storage_memory_bytes = 0; // RocksDB memtables and table readers (the block cache is shared: DatabaseOptions::storage_cache_bytes)
  uint64_t gpu_segments = 0;         // sealed segments searched on a GPU copy (see IndexSpec::device)
  uint64_t gpu_memory_bytes = 0;     // device memory those copies hold
  // Points written and not yet in an index, searched exactly: those the
  // shards' background indexers have not taken yet, and an IVF collection's
  // points while its growing segment is too small to train (under 128 x
  // nlist points). 0 once everything is indexed.
  uint64_t unindexed_points = 0;
};

// Loads points in bulk into an empty collection: see Collection::BeginBulkLoad.
class BulkLoader {
 public:
  // Without a successful Finish, abandons the load: the collection stays empty.
  virtual ~BulkLoader() = default;
  // Adds points, checked as by Upsert (all of them before any is taken), except
  // that an id may repeat, within a call and across calls: the last point with
  // an id wins. Nothing is visible until Finish.
  virtual absl::Status Add(absl::Span<const Point> points) = 0;
  // Writes what was added and makes it visible; returns the number of
  // distinct points. Durable when it returns.
  virtual absl::StatusOr<uint64_t> Finish() = 0;
};

struct BulkLoadOptions {
  // Points per sealed segment; 0: the collection's seal_threshold.
  uint64_t segment_size = 0;
};

class Collection {
 public:
  virtual ~Collection() = default;

  virtual const std::string& name() const = 0;
  // The current configuration (a copy: UpdateConfig may change it).
  virtual CollectionConfig config() const = 0;
  // Changes the settings that need no rebuild: index.ef_search, index.nprobe,
  // index.rerank_factor, seal_threshold and compaction_deleted_ratio. Every
  // other field must equal the current value (InvalidArgument names the one
  // that differs: changing it means a new collection and a re-ingest).
  // Persisted before it returns; searches that start afterwards use it.
  virtual absl::Status UpdateConfig(const CollectionConfig& config) = 0;
  virtual absl::StatusOr<CollectionInfo> Info() const = 0;

  // Inserts or replaces points (vector, payload and text together). Atomic per
  // shard: after a crash each shard has all of the batch's points or none.
  // Durable when it returns OK (with DatabaseOptions::sync_writes).
  // Errors, and nothing is changed: InvalidArgument for an empty batch, a wrong
  // dimension, NaN/Inf, a payload that is not a JSON object, a payload value of
  // the wrong type for an indexed field, or an id repeated within the batch
  // (ambiguous: we refuse it rather than pick one); ResourceExhausted for a
  // batch over max_batch_points / max_batch_bytes, or one that would take
  // the collections past DatabaseOptions::memory_limit_bytes.
  virtual absl::Status Upsert(absl::Span<const Point> points) = 0;

  // Points by id, in the order asked; nullopt where an id is absent.
  virtual absl::StatusOr<std::vector<std::optional<Record>>> Get(
      absl::Span<const PointId> ids, bool with_payload = true,
      bool with_vector = false, const ReadOptions& read = {}) const = 0;

  // Deletes points; ids that are absent are ignored. Returns how many existed.
  virtual absl::StatusOr<uint64_t> Delete(absl::Span<const PointId> ids) = 0;
  // Deletes every point matching `filter` (which must not be empty).
  virtual absl::StatusOr<uint64_t> DeleteByFilter(const Filter& filter) = 0;

  // Merges the top-level keys of `payload_json` (an object) into each point's
  // payload: a key given replaces that key's whole value, an object included.
  // NotFound when an id is absent (then nothing is changed).
  virtual absl::Status SetPayload(absl::Span<const PointId> ids,
                                  std::string_view payload_json) = 0;
  // Replaces each point's payload with `payload_json`.
  virtual absl::Status OverwritePayload(absl::Span<const PointId> ids,
                                        std::string_view payload_json) = 0;

  // Live points, or those matching `filter` when not null.
  virtual absl::StatusOr<uint64_t> Count(const Filter* filter = nullptr,
                                         const ReadOptions& read = {}) const = 0;

  // Pages through points in a stable order (by shard, then by id).
  virtual absl::StatusOr<ScrollPage> Scroll(const ScrollRequest& request) const = 0;

  // Nearest points to `query` (dimension floats), best first.
  virtual absl::StatusOr<std::vector<ScoredPoint>> Search(
      absl::Span<const float> query, const SearchParams& params) const = 0;
  // Nearest points to each of n queries (n * dimension floats, row-major).
  virtual absl::StatusOr<std::vector<std::vector<ScoredPoint>>> SearchBatch(
      absl::Span<const float> queries, const SearchParams& params) const = 0;

  // Starts a bulk load, the fastest way to fill an empty collection (a first
  // load of millions of points): storage is written as sorted files ingested
  // at once, and sealed index segments are built directly (trained on a
  // sample), one in the background while the next fills, instead of going
  // through the write-ahead log and the growing segment. FailedPrecondition
  // when the collection holds points or another load runs. Until the loader
  // finishes or is destroyed, writes to the collection fail with Unavailable.
  // After a crash the collection holds all of the finished load or none.
  // REQUIRES: the loader is destroyed before the collection is dropped or the
  // database closed.
  virtual absl::StatusOr<std::unique_ptr<BulkLoader>> BeginBulkLoad(const BulkLoadOptions& options = {}) = 0;

  // Seals every shard's growing segment now (blocking), whatever its size.
  virtual absl::Status Seal() = 0;
  // Rewrites sealed segments whose deleted fraction is over the configured
  // ratio (or every segment with deletes when `force`), dropping tombstones.
  virtual absl::Status Compact(bool force = false) = 0;
};

}  // namespace cairn

#endif  // CAIRN_COLLECTION_H_
