// MemoryBudget: one node's memory limit, and the admission of writes under
// it. What the node holds is measured (the index and storage memory every
// collection reports, CollectionInfo) once a second, after each sixteenth
// of the limit admitted, and before any refusal; the estimates of writes
// admitted since the last measure are added to it. A write
// that would take the total past the limit is refused with
// RESOURCE_EXHAUSTED before anything is written; searches, reads and
// deletes are never refused.
//
// Thread-safety: all methods are thread-safe. The measure function is
// called with no lock of the budget held.
#ifndef CAIRN_DB_MEMORY_BUDGET_H_
#define CAIRN_DB_MEMORY_BUDGET_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "cairn/database.h"
#include "cairn/options.h"
#include "storage/kv_store.h"

namespace cairn::db {

// What a node holds, as collections report it.
struct MemoryUsage {
  uint64_t index_bytes = 0;    // segments, tails, payload indexes, id maps
  uint64_t storage_bytes = 0;  // RocksDB memtables, table readers, block caches
  std::string largest;         // the collection holding the most
  uint64_t largest_bytes = 0;
  uint64_t total() const { return index_bytes + storage_bytes; }
};

// 85% of the memory this process may use: the cgroup's limit (v2
// memory.max, else v1 memory.limit_in_bytes) when there is one, else the
// machine's physical memory.
uint64_t DefaultMemoryLimit();
// The limit DatabaseOptions::memory_limit_bytes asks for, in bytes (0: none):
// `configured` itself, DefaultMemoryLimit() for 0, none for kNoMemoryLimit.
uint64_t MemoryLimitFor(uint64_t configured);
// The shared block cache and memtable budget that DatabaseOptions::
// storage_cache_bytes asks for: `configured` itself, else an eighth of
// `limit` (MemoryLimitFor's; 0: none) between 256 MiB and 8 GiB but at most
// a quarter of it, 1 GiB without a limit.
uint64_t StorageMemoryFor(uint64_t configured, uint64_t limit);

// About how much memory a point of a collection takes when written: its
// vector in a growing segment or tail and in a storage memtable, its id, an
// HNSW graph's links.
uint64_t BytesPerPoint(const CollectionConfig& config);

// Gives the allocator's free memory back to the system (glibc's
// malloc_trim). Called after what frees much memory at once: a shard's open
// (the buffers of reading its segments), a seal, a compaction, the end of a
// bulk load. Without it those pages stay in the process's RSS, free but
// counted, until the allocator reuses them.
void ReleaseFreeMemory();

// Calls ReleaseFreeMemory when destroyed, once armed: declared before what a
// scope frees, it runs after that is freed.
class ReleaseFreeMemoryAtExit {
 public:
  ReleaseFreeMemoryAtExit() = default;
  ReleaseFreeMemoryAtExit(const ReleaseFreeMemoryAtExit&) = delete;
  ReleaseFreeMemoryAtExit& operator=(const ReleaseFreeMemoryAtExit&) = delete;
  ~ReleaseFreeMemoryAtExit() {
    if (armed_) ReleaseFreeMemory();
  }
  void Arm() { armed_ = true; }

 private:
  bool armed_ = false;
};

class MemoryBudget;
// Database::Memory of a node with this budget and shared storage memory.
NodeMemory NodeMemoryOf(MemoryBudget& budget, const storage::KvMemory& kv);

class MemoryBudget {
 public:
  // `limit` in bytes; 0: none (everything is admitted). `reclaim`, when
  // given, frees memory granted by Reserve and returns the bytes freed; it
  // is called (with no lock of the budget held) before a write is refused,
  // and the write is then decided on a new measure.
  MemoryBudget(uint64_t limit, std::function<MemoryUsage()> measure,
               std::function<uint64_t()> reclaim = nullptr);

  uint64_t limit() const { return limit_; }
  // Admits a write that will hold about `bytes` more (`what` names it in the
  // error: "an upsert of 1000 points to collection docs").
  absl::Status Admit(uint64_t bytes, std::string_view what);
  // Grants `bytes` of memory that can be given back on demand (HNSW floats
  // kept beside their vector files) while what the node holds, with them,
  // stays within `share` of the limit; always without a limit. What is
  // granted counts as admitted until the next measure. False once detached.
  bool Reserve(uint64_t bytes, double share);
  // The last measure, with what was admitted since.
  MemoryUsage Usage();
  // Stops calling the measure function (its owner is going away); waits
  // for a call in flight.
  void Detach();

 private:
  void MeasureLocked(std::unique_lock<std::mutex>& lock);

  const uint64_t limit_;
  const std::function<MemoryUsage()> measure_;
  const std::function<uint64_t()> reclaim_;
  std::shared_mutex measure_mu_;  // shared while measure_ or reclaim_ runs
  bool detached_ = false;         // guarded by measure_mu_
  std::mutex mu_;
  MemoryUsage measured_;                                 // guarded by mu_
  uint64_t admitted_ = 0;                                // guarded by mu_: since measured_
  std::chrono::steady_clock::time_point measured_at_{};  // guarded by mu_
  bool measuring_ = false;                               // guarded by mu_
  std::condition_variable measured_cv_;
};

}  // namespace cairn::db

#endif  // CAIRN_DB_MEMORY_BUDGET_H_
