// Shard: one partition of a collection. Owns a KvStore (the durable truth), a
// growing segment that takes new writes, frozen segments being sealed, sealed
// segments loaded from files named by the manifest, the live-point bitmap and
// the payload index.
//
// Write path: writers queue up; the first becomes the leader, prepares every
// queued operation against the store (through an overlay, so later operations
// see earlier ones), writes them as one WriteBatch with one WAL sync, applies
// them to memory, and wakes the others. Each operation is atomic.
//
// The tail: when the growing segment is an index (HNSW, not flat) and
// options.tail_floats is not 0, a write's vectors go to the tail, flat
// chunks scanned exactly by searches, and the shard's indexer thread moves
// them into the growing segment in the background, oldest first. A write is
// searchable when it is acknowledged either way. Writers wait (before the
// WAL write) while the tail holds tail_floats floats or more, so a search
// scans at most that many floats (plus one commit group's) exactly.
//
// IVF collections: the growing segment starts flat, takes writes directly
// (while the tail is empty) and is scanned exactly; once it holds
// Segment::GrowingTrainPoints live points, the indexer trains an index of the
// collection's type on them (writes go on meanwhile), catches up with the
// writes made during the training and swaps it in. From then on the tail
// feeds it, and sealing it is a file write.
//
// Invariants:
//   - internal ids are allocated ascending and never reused (meta "next_id");
//   - a point is live iff its internal id has a kRids key; its vector key is
//     deleted in the same batch as its kRids key;
//   - every id <= manifest.sealed_through that is live is in a sealed
//     segment; live ids above it are in the growing or frozen segments and are
//     replayed from kVectors on open;
//   - the manifest is switched (one synced write) only after the segment files
//     it names are synced; files it does not name are deleted on open;
//   - the manifest may also name a saved copy of the growing segment (its
//     first points, up to some id above sealed_through): open loads it and
//     replays only the writes after it. It is a cache of what storage holds:
//     when it cannot be read, open rebuilds the growing segment instead.
//
// Replicated mode: a Raft group's replicas call Apply with the committed log
// entries instead of Upsert, Delete and SetPayload. The shard's applied index
// is written in the same WriteBatch as the data it produced, so Apply is
// idempotent (entries at or below it are skipped) and a crash between the two
// cannot happen; applying the same entries in the same order gives every
// replica the same data (DataChecksum), whatever each one sealed or compacted.
//
// Thread-safety: all public methods are thread-safe.
#ifndef CAIRN_DB_SHARD_H_
#define CAIRN_DB_SHARD_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "cairn/collection.h"
#include "db/hash_class.h"
#include "db/id_cache.h"
#include "db/payload_index.h"
#include "index/segment.h"
#include "storage/kv_store.h"

namespace cairn::db {

struct ShardOptions {
  uint32_t dimension = 0;
  Metric metric = Metric::kL2;
  IndexSpec index;
  std::vector<PayloadIndexSpec> payload_indexes;
  uint64_t seal_threshold = 500000;
  double compaction_deleted_ratio = 0.2;
  bool sync_writes = true;
  int index_threads = 0;
  // DatabaseOptions::growing_checkpoint_points.
  uint64_t checkpoint_points = 50000;
  // Apply: how many log entries a request id is remembered for (a retry
  // later than that would apply again). Default: 200,000.
  uint64_t request_id_window = 200000;
  // Most floats (points x dimension) the tail holds before writers wait for
  // the indexer; 0: writes are indexed before they are acknowledged.
  // Default: 4 Mi (16 MiB; 32,768 points at 128 dimensions).
  uint64_t tail_floats = uint64_t{4} << 20;
  // Whether a thread indexes the tail as it fills. When false, the tail is
  // indexed only by IndexTail, Seal, CheckpointGrowing and by a writer that
  // finds it full (tests and tools that want no background work).
  bool index_in_background = true;
  // Open only: the points outside this class are not loaded (a split's copy
  // opened for its new group, which then keeps the class: KeepHashClass).
  // Default: every point.
  HashClass load_class;
  // The node's shared block cache and memtable budget; null: the shard's
  // store has a cache of its own.
  std::shared_ptr<storage::KvMemory> kv_memory;
};

// A point ready for a shard: validated, payload parsed and re-serialized.
struct PreparedPoint {
  PointId id;
  std::string ext_key;
  std::vector<float> vector;  // as given
  Json payload;               // an object
  std::string payload_json;   // payload.dump()
  std::string text;
};

// Settings that may change while the shard is open.
struct ShardTunables {
  int ef_search;
  int nprobe;
  int rerank_factor;
  uint64_t seal_threshold;
  double compaction_deleted_ratio;
};

struct ShardStats {
  uint64_t points = 0;
  uint64_t segments = 0;
  uint64_t sealed_segments = 0;
  uint64_t deleted_in_segments = 0;
  uint64_t index_memory_bytes = 0;
  uint64_t storage_memory_bytes = 0;
  uint64_t growing_points = 0;   // not sealed: in the growing segment or the tail
  uint64_t tail_points = 0;      // of them, in the tail (scanned exactly)
  // In no index yet (scanned exactly): the tail, and an IVF collection's
  // growing segment while it is flat (untrained).
  uint64_t unindexed_points = 0;
  uint64_t growing_saved_points = 0;  // of them, in the growing segment's saved copy
  uint64_t gpu_segments = 0;      // sealed segments searched on a GPU copy
  uint64_t gpu_memory_bytes = 0;  // device memory of those copies
};

struct ShardCommand;

// The error a split shard's replicas give a write or read of ids it no
// longer holds (Aborted, the same on every replica): the caller routes the
// request again with the collection's new shard map.
absl::Status MovedBySplitError(const std::string& what);
bool IsMovedBySplit(const absl::Status& s);

// Threads for index builds: `configured`, or every core when 0.
int IndexThreads(int configured);

// What a collection asks of one of its shards: the data path. Implemented by
// the Shard itself (embedded), and by a shard whose replicas are reached
// through its Raft group (cluster mode). Thread-safe.
class ShardAccess {
 public:
  virtual ~ShardAccess() = default;
  virtual absl::Status Upsert(std::vector<PreparedPoint> points) = 0;
  virtual absl::StatusOr<uint64_t> Delete(const std::vector<std::string>& ext_keys) = 0;
  virtual absl::StatusOr<uint64_t> DeleteByFilter(const Filter& filter) = 0;
  // Merge (or overwrite) `payload` into each point. NotFound if any is absent.
  virtual absl::Status SetPayload(const std::vector<std::string>& ext_keys, const Json& payload,
                                  bool overwrite) = 0;
  // `read` chooses how a replicated shard serves a read; a Shard is always
  // current and ignores it.
  virtual absl::Status Get(const std::vector<std::string>& ext_keys, bool with_payload, bool with_vector,
                           const ReadOptions& read, std::vector<std::optional<Record>>* out) const = 0;
  virtual absl::StatusOr<uint64_t> Count(const Filter* filter, const ReadOptions& read) const = 0;
  // Up to `limit` points with external key > `after` (all when empty), in
  // external key order. `*last_key` is the last key returned; `*more` tells
  // whether any point follows it.
  virtual absl::Status Scroll(const std::string& after, uint32_t limit, const Filter* filter, bool with_payload,
                              bool with_vector, const ReadOptions& read, std::vector<Record>* out,
                              std::string* last_key, bool* more) const = 0;
  // `queries` are prepared for the metric (normalized for cosine).
  virtual absl::Status Search(const float* queries, size_t nq, const SearchParams& params,
                              std::vector<std::vector<ScoredPoint>>* out) const = 0;
  virtual absl::StatusOr<ShardStats> ReadStats() const = 0;
};

class Shard final : public ShardAccess {
 public:
  class Loader;
  // `vectors_from`, when given, is a shard whose internal ids name the same
  // points as this one's (this one is a copy of it, as a split takes): the
  // vectors open rebuilds its growing segment from are copied from that
  // shard's segments in memory where they are there, instead of read from
  // storage. It is only read, and only during Open.
  static absl::StatusOr<std::unique_ptr<Shard>> Open(const std::string& dir, const ShardOptions& options,
                                                     const Shard* vectors_from = nullptr);
  ~Shard();

  absl::Status Upsert(std::vector<PreparedPoint> points) override;
  absl::StatusOr<uint64_t> Delete(const std::vector<std::string>& ext_keys) override;
  absl::StatusOr<uint64_t> DeleteByFilter(const Filter& filter) override;
  absl::Status SetPayload(const std::vector<std::string>& ext_keys, const Json& payload,
                          bool overwrite) override;

  // A committed log entry for Apply: its index and its command, or null for
  // an entry with nothing for the shard (a leader's no-op, a membership
  // change), which only moves the applied index.
  struct LogEntry {
    uint64_t index = 0;
    const ShardCommand* command = nullptr;
  };
  // What applying one entry did: the points written or deleted, or the
  // error every replica reports for it alike (NotFound, InvalidArgument),
  // in which case the entry changed nothing.
  struct ApplyResult {
    absl::Status status;
    uint64_t count = 0;
    bool skipped = false;  // at or below the applied index: applied before
  };
  // Applies `entries` (ascending indexes) as few WriteBatches as it can (a
  // delete by filter starts a new one, so it sees every entry before it),
  // each holding the applied index. Fills `results`, one per entry.
  // A command whose request id was applied within the last
  // options.request_id_window entries is not applied again: its result is the first
  // one (a retry of a write whose answer was lost changes nothing twice,
  // which keeps histories linearizable). The ids are kept in the same
  // batches as the data.
  // A non-OK return is a failure of this replica (its disk, or a command it
  // cannot read), not of the entries: the entries from the first one not
  // applied must be applied again after a reopen.
  absl::Status Apply(const std::vector<LogEntry>& entries, std::vector<ApplyResult>* results);
  // The last log index Apply wrote (0 when none).
  uint64_t applied_index() const { return applied_index_.load(std::memory_order_acquire); }

  // Splits (cluster mode), in two entries. The split (ShardCommand::kSplit)
  // applied at index i fences the half that moves: from then on Apply
  // refuses writes of its ids (MovedBySplitError), while reads still see
  // the whole class (the moved half no longer changes here). The child's
  // replica starts from a copy of the shard as of i - 1 on which
  // KeepHashClass keeps the other half. Once the child serves, kSplitDone
  // makes the shard hold its half only: the other points leave memory at
  // once (no read, search or count sees them again, after a reopen too)
  // and storage later, in batches (DropForeign, from background
  // maintenance).
  struct SplitRecord {
    HashClass cls;             // what the shard holds (modulus 0: all it was sent)
    HashClass writes;          // what writes may name: cls, or its kept half while a split is fenced
    uint64_t child_group = 0;  // the last split: the group that takes the other half
    uint64_t index = 0;        // and the log index of its fence
    bool fenced() const { return writes != cls; }
  };
  SplitRecord split_record() const;
  // Keeps only the points of `cls` and sets the applied index to `applied`
  // (back, for a child whose group's log starts over); forgets the request
  // ids it remembered (they name another group's log indexes).
  absl::Status KeepHashClass(HashClass cls, uint64_t applied);
  // Deletes from storage up to `max_points` of the points a split left
  // outside the shard's class; whether some were left to delete.
  absl::StatusOr<bool> DropForeign(size_t max_points);
  // Makes what Apply wrote durable (a shard opened without synced writes
  // loses its last writes in a power loss) and returns the applied index
  // that is now durable: the Raft log may be compacted up to it.
  absl::StatusOr<uint64_t> SyncApplied();
  // Writes the store's memory tables to files: a copy taken next
  // (SnapshotAll) then only links files. Writes go on meanwhile.
  absl::Status FlushStorage();
  // A hash of the shard's points (ids, vectors, payloads, payload index) and
  // its id counter, with the applied index it was taken at: replicas that
  // applied the same entries have the same checksum. Reads every record.
  struct Checksum {
    uint64_t applied_index = 0;
    uint64_t points = 0;
    uint64_t hash = 0;
  };
  absl::StatusOr<Checksum> DataChecksum() const;

  absl::Status Get(const std::vector<std::string>& ext_keys, bool with_payload, bool with_vector,
                   std::vector<std::optional<Record>>* out) const;
  absl::StatusOr<uint64_t> Count(const Filter* filter) const;
  absl::Status Scroll(const std::string& after, uint32_t limit, const Filter* filter,
                      bool with_payload, bool with_vector, std::vector<Record>* out,
                      std::string* last_key, bool* more) const;
  // ShardAccess: a Shard is always current, whatever `read` asks.
  absl::Status Get(const std::vector<std::string>& ext_keys, bool with_payload, bool with_vector,
                   const ReadOptions&, std::vector<std::optional<Record>>* out) const override {
    return Get(ext_keys, with_payload, with_vector, out);
  }
  absl::StatusOr<uint64_t> Count(const Filter* filter, const ReadOptions&) const override { return Count(filter); }
  absl::Status Scroll(const std::string& after, uint32_t limit, const Filter* filter, bool with_payload,
                      bool with_vector, const ReadOptions&, std::vector<Record>* out, std::string* last_key,
                      bool* more) const override {
    return Scroll(after, limit, filter, with_payload, with_vector, out, last_key, more);
  }
  absl::Status Search(const float* queries, size_t nq, const SearchParams& params,
                      std::vector<std::vector<ScoredPoint>>* out) const override;
  absl::StatusOr<ShardStats> ReadStats() const override { return Stats(); }

  // Seals the growing segment when it and the tail hold >= seal_threshold
  // points (any number > 0 with `force`), indexing the tail first.
  absl::Status Seal(bool force);
  // Moves every point of the tail into the growing segment now (what the
  // indexer does in the background).
  absl::Status IndexTail();
  // At close: seals the growing segment if it holds >= min_points and sealing
  // it is only a file write (it already is the target index).
  absl::Status SealIfOnlyAWrite(uint64_t min_points);
  // Saves the growing segment (when it is an HNSW graph, costly to rebuild)
  // so that the next open loads it instead of rebuilding it from storage: in
  // the background when it holds checkpoint_points more points than its last
  // copy, and at least half again as many (so the copies written add up to a
  // few times the segment); at close when its copy lacks checkpoint_points or
  // kMinPointsToSaveAtClose points, whichever is fewer.
  // Writes wait while the segment is written to the file (not while it is
  // synced). Does nothing when checkpoint_points is 0, or while a segment
  // is frozen (a copy would make open skip the frozen ids).
  absl::Status CheckpointGrowing(bool at_close);
  static constexpr uint64_t kMinPointsToSaveAtClose = 1000;  // fewer rebuild in well under a second
  bool NeedsCheckpoint() const;
  // HNSW segments whose floats are in their vector files (hnsw_int8) bring
  // them back into memory, each while `reserve` grants its bytes (the node's
  // memory budget, DatabaseOptions::hnsw_vectors_memory_share): searches
  // then re-rank without reads. A failed read is logged and leaves the
  // segment on its file. Returns the bytes brought in.
  uint64_t KeepVectorsInMemory(const std::function<bool(uint64_t bytes)>& reserve);
  // Frees the floats KeepVectorsInMemory brought in (their files stay, and
  // searches read them again): the bytes freed.
  uint64_t ReleaseVectors();
  // Rewrites the sealed segments whose deleted fraction passes the tunable
  // ratio (every one with deletes when `force`), then writes the vector files
  // lossy segments lack.
  absl::Status Compact(bool force);
  bool NeedsSeal() const;

  // Copies each shard's data (RocksDB checkpoint and segment files) into the
  // matching target directory, all at one moment: writes to every listed
  // shard wait while the checkpoints are taken.
  static absl::Status SnapshotAll(const std::vector<Shard*>& shards,
                                  const std::vector<std::string>& target_dirs);

  ShardStats Stats() const;
  void SetTunables(const ShardTunables& t);

  // Starts a bulk load into this shard, which must hold no points
  // (FailedPrecondition otherwise). Writes fail with Unavailable until the
  // loader finishes or is destroyed. Sealed segments of `segment_size`
  // points are built as points arrive.
  absl::StatusOr<std::unique_ptr<Loader>> BeginBulkLoad(uint64_t segment_size);

 private:
  struct Plan;
  struct Txn;
  struct Writer;
  struct SealedRef {
    std::shared_ptr<index::Segment> segment;
    std::string file;
    std::string vectors;  // its vector file, if it has one
  };

  Shard(std::string dir, ShardOptions options, std::unique_ptr<storage::KvStore> kv);
  absl::Status Load(const Shard* vectors_from);
  // Whether writes go through the tail (a growing segment that is an index).
  bool UsesTail() const { return tail_limit_ > 0; }
  // Points in the tail and not (yet) in the growing segment. REQUIRES:
  // state_mu_ held.
  uint64_t TailPointsLocked() const;
  // Waits, holding no lock, until the tail has room or the indexer stops
  // (without an indexer: indexes chunks until there is room).
  void WaitForTailRoom();
  // Moves the tail's oldest chunk into the growing segment; false when the
  // tail is empty. REQUIRES: index_mu_ held, commit_mu_ not held.
  bool IndexOneChunkLocked();
  // Indexes the chunks in the tail now. REQUIRES: index_mu_ held.
  void IndexPresentTailLocked();
  void IndexerLoop();
  void StopIndexer();
  // Trains the flat growing segment of an IVF collection into a growing
  // index of its type (see above). REQUIRES: index_mu_ held.
  void TrainGrowingLocked();
  // After points were added to a flat growing segment: flags it for
  // training when it holds enough. REQUIRES: commit_mu_ and state_mu_ held.
  void NoteGrowingSizeLocked();
  // Appends points to the tail, in chunks. REQUIRES: commit_mu_ held.
  void AppendToTail(const std::vector<uint64_t>& ids, const std::vector<float>& vecs);
  absl::Status SealLocked(bool force, bool index_tail);
  // Load's last step with a source of vectors: rebuilds the growing segment
  // from the live points from internal id `from` on.
  absl::Status ReplayFrom(const Shard& source, uint64_t from);
  // The vectors (prepared) of the ids not `found` yet, read from storage into
  // vecs[i * dim]; sets found[i] for those it has.
  absl::Status FillFromStorage(const std::vector<uint64_t>& ids, std::vector<float>* vecs,
                               std::vector<bool>* found) const;
  // Keeps the ids (and their vectors) that were found, in order.
  static void KeepFound(const std::vector<bool>& found, size_t dim, std::vector<uint64_t>* ids,
                        std::vector<float>* vecs);
  // The vectors (prepared) of `sorted_ids` that this shard's segments hold
  // in memory, deleted or not, copied as Segment::CopyVectors does.
  void CopyVectorsInMemory(absl::Span<const uint64_t> sorted_ids, float* out, std::vector<bool>* found) const;
  absl::Status Commit(std::function<absl::Status(Txn&)> prepare);
  // Writes `txn` (with the id counter and, when nonzero, `applied` as the
  // applied index) and applies its plans to memory; on failure restores the
  // id counter to `first_id`. REQUIRES: commit_mu_ held.
  absl::Status WriteTxnLocked(Txn& txn, uint64_t first_id, uint64_t applied);
  // The operations, each as one step of a commit group.
  absl::Status PrepareUpsert(Txn& txn, const std::vector<PreparedPoint>& points);
  absl::Status PrepareDelete(Txn& txn, const std::vector<std::string>& ext_keys,
                             const std::vector<uint64_t>& expected, uint64_t* deleted);
  absl::Status PrepareSetPayload(Txn& txn, const std::vector<std::string>& ext_keys, const Json& payload,
                                 bool overwrite);
  // The live points matching `filter`: external keys and internal ids.
  absl::Status MatchFilter(const Filter& filter, std::vector<std::string>* keys, std::vector<uint64_t>* ids) const;
  // Deletes ext_keys[i] when its internal id is expected[i] (any, if empty).
  absl::StatusOr<uint64_t> DeleteIf(const std::vector<std::string>& ext_keys,
                                    const std::vector<uint64_t>& expected);
  void ApplyPlan(const Plan& plan);
  std::vector<std::shared_ptr<index::Segment>> AllSegmentsLocked() const;
  absl::StatusOr<Bitmap> EvalFilterLocked(const Filter& filter) const;
  // The points matching `filter`, from a small cache of recent filters
  // (valid while epoch_ is unchanged). REQUIRES: state_mu_ held.
  struct FilterResult {
    Bitmap ids;
    std::vector<uint64_t> list;  // ids, ascending
    // The matches as positions in each segment, made on first use. Segments
    // do not change positions within an epoch (writes, seals and compactions
    // bump it), so these stay valid as long as the result does.
    std::shared_ptr<const index::PositionSet> PositionsIn(const index::Segment& seg) const;
    mutable std::mutex positions_mu;
    mutable absl::flat_hash_map<const index::Segment*, std::shared_ptr<const index::PositionSet>> positions;
  };
  absl::StatusOr<std::shared_ptr<const FilterResult>> CachedFilterLocked(const Filter& filter) const;
  absl::StatusOr<Bitmap> EvalConditionLocked(const Condition& c,
                                              std::optional<std::vector<std::pair<uint64_t, Json>>>* scan) const;
  absl::Status ExactScan(const float* query, const std::vector<uint64_t>& ids, int k,
                         std::vector<std::pair<float, uint64_t>>* best) const;
  // Live ids of `segment` and their vectors (prepared for the metric), from
  // the segment's memory where it keeps them exactly, else from storage. A
  // point deleted meanwhile may be among them: callers mark deleted what the
  // live set lacks once they hold the state lock.
  absl::Status LiveVectorsOf(const index::Segment& segment, std::vector<uint64_t>* ids,
                             std::vector<float>* vecs) const;
  absl::Status RawVectors(const std::vector<uint64_t>& ids, std::vector<float>* out,
                          std::vector<bool>* found) const;
  // The vectors (prepared) of `ids` (any order), each sized and set as
  // RawVectors does: from `segment`'s vector file where it has one, the
  // rest (and damaged rows) from storage.
  absl::Status VectorsOf(const index::Segment& segment, const std::vector<uint64_t>& ids,
                         std::vector<float>* out, std::vector<bool>* found) const;
  // For a sealed segment that keeps its vectors lossily: writes its vector
  // file (beside `segment_file`, from `vecs` in position order, or from
  // storage when null), fsynced, attaches it and returns its name. An HNSW
  // segment that walks on int8 codes moves its floats there
  // (Segment::MoveVectorsToFile). "" for the other types.
  absl::StatusOr<std::string> SaveVectorFile(index::Segment& segment, const std::string& segment_file,
                                             const float* vecs) const;
  absl::Status Resolve(const std::vector<std::pair<float, uint64_t>>& hits,
                       const SearchParams& params, std::vector<ScoredPoint>* out) const;
  absl::Status WriteManifestLocked();
  // Whether CheckpointGrowing(at_close) has a copy to write. REQUIRES:
  // state_mu_ held.
  // `with_tail`: counting the tail's points as if they were indexed.
  bool CheckpointDueLocked(bool at_close, bool with_tail) const;
  // Writes the vector file of each sealed lossy segment that has none (one
  // sealed before vector files existed, or whose file was lost), from
  // storage; logs a failure. REQUIRES: maintenance_mu_ held.
  void WriteMissingVectorFilesLocked();
  // The sealed segments now (a copy of the list).
  std::vector<std::shared_ptr<index::Segment>> SealedSegments() const;
  // Seals `frozen` (in frozen_) into a segment file and switches the
  // manifest. REQUIRES: maintenance_mu_ held.
  absl::Status SealFrozen(const std::shared_ptr<index::Segment>& frozen);
  std::string SegmentPath(const std::string& file) const;
  // A new segment file's name (seg-NNNNNNNN.cseg). Takes commit_mu_.
  std::string NewSegmentFile();
  // The name of a segment file's vector file (.vec beside it).
  static std::string VectorFileName(const std::string& segment_file);

  ShardTunables Tunables() const;

  const std::string dir_;
  const ShardOptions options_;  // the tunables in it are initial values only
  mutable std::mutex tunables_mu_;
  ShardTunables tunables_;  // guarded by tunables_mu_
  std::unique_ptr<storage::KvStore> kv_;

  // Writer queue (group commit).
  std::mutex queue_mu_;
  std::deque<Writer*> writers_;
  // Held by the commit leader, and by seal/compaction/snapshot while they
  // switch segments. Order: maintenance_mu_ -> index_mu_ -> commit_mu_ ->
  // state_mu_. index_mu_ is held while points move from the tail into the
  // growing segment, and by whatever replaces the growing segment.
  mutable std::mutex commit_mu_;
  std::mutex maintenance_mu_;
  std::mutex index_mu_;
  // The indexer: wakes on indexer_cv_ when the tail has points; writers
  // waiting for room wait on room_cv_. Both with indexer_mu_.
  const uint64_t tail_limit_;  // points; 0: no tail
  std::mutex indexer_mu_;
  std::condition_variable indexer_cv_;
  std::condition_variable room_cv_;
  bool indexer_stop_ = false;  // guarded by indexer_mu_
  std::thread indexer_;
  std::atomic<uint64_t> tail_points_{0};
  // IVF collections: live points a flat growing segment is trained at (0:
  // never), whether the indexer should train it now, and (after a training
  // that failed) how many it waits for before the next try.
  const uint64_t train_points_;
  std::atomic<bool> train_due_{false};
  uint64_t train_after_ = 0;  // guarded by commit_mu_
  uint64_t next_id_ = 1;        // guarded by commit_mu_
  uint64_t sealed_through_ = 0; // guarded by commit_mu_
  uint64_t next_file_ = 1;      // guarded by commit_mu_
  // The growing segment's saved copy named by the manifest ("" when none):
  // its first growing_saved_ points, up to internal id growing_saved_max_id_.
  std::string growing_file_;           // guarded by commit_mu_
  uint64_t growing_saved_max_id_ = 0;  // guarded by commit_mu_
  std::atomic<uint64_t> growing_saved_{0};
  bool bulk_loading_ = false;   // guarded by commit_mu_
  std::atomic<uint64_t> applied_index_{0};  // written with commit_mu_ held
  uint64_t requests_pruned_through_ = 0;    // guarded by commit_mu_: request ids forgotten below
  mutable std::mutex split_mu_;
  SplitRecord split_;  // guarded by split_mu_ (written with commit_mu_ held too)
  // REQUIRES: commit_mu_ held. Writes the record and `applied`, and hides the
  // points outside the record's class (HideLocked).
  absl::Status KeepHashClassLocked(const SplitRecord& record, uint64_t applied, bool forget_requests);
  // Writes `record` and `applied` with `txn`. REQUIRES: commit_mu_ held.
  absl::Status WriteSplitRecordLocked(Txn& txn, const SplitRecord& record, uint64_t applied);
  // Points `ids` leave the live set and the segments (tombstones), not
  // storage. REQUIRES: commit_mu_ held.
  void HideLocked(const std::vector<uint64_t>& ids);
  // Points outside the class may still be in storage (DropForeign's work).
  std::atomic<bool> foreign_left_{false};
  std::mutex drop_mu_;
  std::string drop_after_;  // guarded by drop_mu_: where DropForeign goes on
  // The write's ids are all in the class (REQUIRES: commit_mu_ held).
  absl::Status CheckOwned(const ShardCommand& c) const;

  mutable std::shared_mutex state_mu_;
  std::shared_ptr<index::Segment> growing_;                // guarded by state_mu_
  // The tail's chunks (flat), oldest first: ids ascending, above growing_'s
  // (a chunk being indexed is in both for a moment: searches drop the
  // duplicates). Changed with commit_mu_ held too.
  std::deque<std::shared_ptr<index::Segment>> tail_;       // guarded by state_mu_
  std::vector<std::shared_ptr<index::Segment>> frozen_;    // guarded by state_mu_
  std::vector<SealedRef> sealed_;                          // guarded by state_mu_
  Bitmap live_;                                            // guarded by state_mu_
  PayloadIndex payload_index_;                             // guarded by state_mu_
  // Bumped by every change to the points, the payload index or the segment
  // set: cached filter results name the epoch they were computed at.
  uint64_t epoch_ = 0;                                     // guarded by state_mu_
  struct CachedFilter {
    std::string key;  // Filter::ToJson()
    uint64_t epoch;
    std::shared_ptr<const FilterResult> result;
  };
  mutable ExternalIdCache id_cache_;
  mutable std::mutex filter_cache_mu_;
  mutable std::deque<CachedFilter> filter_cache_;          // most recent first
};

}  // namespace cairn::db

#endif  // CAIRN_DB_SHARD_H_
