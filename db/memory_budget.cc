#include "db/memory_budget.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "cairn/options.h"

namespace cairn::db {
namespace {

constexpr auto kMeasureEvery = std::chrono::seconds(1);

// The first line of `path` as a number of bytes; 0 when absent, "max" or
// not a number.
uint64_t ReadLimit(const char* path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return 0;
  uint64_t v = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &v)) return 0;
  return v;
}

std::string Mib(uint64_t bytes) { return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1 << 20)); }

}  // namespace

uint64_t DefaultMemoryLimit() {
  const uint64_t physical =
      static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGE_SIZE));
  uint64_t limit = ReadLimit("/sys/fs/cgroup/memory.max");
  if (limit == 0) limit = ReadLimit("/sys/fs/cgroup/memory/memory.limit_in_bytes");
  // cgroup v1 says "no limit" with a huge number.
  if (limit == 0 || (physical > 0 && limit > physical)) limit = physical;
  return limit / 100 * 85;
}

uint64_t MemoryLimitFor(uint64_t configured) {
  if (configured == kNoMemoryLimit) return 0;
  return configured != 0 ? configured : DefaultMemoryLimit();
}

uint64_t StorageMemoryFor(uint64_t configured, uint64_t limit) {
  if (configured != 0) return configured;
  if (limit == 0) return uint64_t{1} << 30;
  return std::min(limit / 4, std::clamp<uint64_t>(limit / 8, uint64_t{256} << 20, uint64_t{8} << 30));
}

MemoryBudget::MemoryBudget(uint64_t limit, std::function<MemoryUsage()> measure,
                           std::function<uint64_t()> reclaim)
    : limit_(limit), measure_(std::move(measure)), reclaim_(std::move(reclaim)) {}

void MemoryBudget::MeasureLocked(std::unique_lock<std::mutex>& lock) {
  if (measuring_) {  // another caller measures: its result is as fresh
    measured_cv_.wait(lock, [this] { return !measuring_; });
    return;
  }
  measuring_ = true;
  const uint64_t admitted_before = admitted_;
  lock.unlock();
  MemoryUsage now;
  {
    std::shared_lock alive(measure_mu_);
    if (!detached_) now = measure_();
  }
  lock.lock();
  measured_ = std::move(now);
  // What was admitted while measuring may not be in the measure yet.
  admitted_ -= std::min(admitted_, admitted_before);
  measured_at_ = std::chrono::steady_clock::now();
  measuring_ = false;
  measured_cv_.notify_all();
}

uint64_t BytesPerPoint(const CollectionConfig& config) {
  const uint64_t d = config.dimension;
  uint64_t bytes = 8 * d + 24;  // floats in memory and in a memtable, ids
  const IndexType t = config.index.type;
  if (t == IndexType::kHnsw || t == IndexType::kHnswSq) bytes += 8 * static_cast<uint64_t>(config.index.hnsw_m);
  return bytes;
}

void ReleaseFreeMemory() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

NodeMemory NodeMemoryOf(MemoryBudget& budget, const storage::KvMemory& kv) {
  const MemoryUsage u = budget.Usage();
  NodeMemory m;
  m.limit_bytes = budget.limit();
  m.index_bytes = u.index_bytes;
  m.storage_bytes = u.storage_bytes;
  m.storage_cache_bytes = kv.BlockCacheBytes();
  m.storage_cache_capacity_bytes = kv.capacity_bytes();
  return m;
}

absl::Status MemoryBudget::Admit(uint64_t bytes, std::string_view what) {
  if (limit_ == 0) return absl::OkStatus();
  std::unique_lock lock(mu_);
  // Measured once a second, and after each sixteenth of the limit admitted:
  // what a write really takes may differ from its estimate.
  if (std::chrono::steady_clock::now() - measured_at_ >= kMeasureEvery || admitted_ >= limit_ / 16) {
    MeasureLocked(lock);
  }
  if (measured_.total() + admitted_ + bytes > limit_) {
    MeasureLocked(lock);  // a refusal is decided on a fresh measure
    if (measured_.total() + admitted_ + bytes > limit_ && reclaim_ != nullptr) {
      // What Reserve granted goes first.
      lock.unlock();
      uint64_t freed = 0;
      {
        std::shared_lock alive(measure_mu_);
        if (!detached_) freed = reclaim_();
      }
      lock.lock();
      if (freed > 0) MeasureLocked(lock);
    }
    if (measured_.total() + admitted_ + bytes > limit_) {
      std::string most;
      if (!measured_.largest.empty()) {
        most = absl::StrCat("; the most: collection ", measured_.largest, ", ", Mib(measured_.largest_bytes));
      }
      return absl::ResourceExhaustedError(absl::StrCat(
          std::string(what), " is refused: this node's memory limit is ", Mib(limit_), " and it holds ",
          Mib(measured_.total() + admitted_), " (indexes ", Mib(measured_.index_bytes), ", storage ",
          Mib(measured_.storage_bytes), most, "); the write needs about ", Mib(bytes),
          " more. Spread the collection over more shards and nodes, use a compact index type (ivf_pq, "
          "ivf_sq8 or hnsw_sq keep codes in memory, not floats), delete points and compact, or raise the "
          "limit (cairnd --memory-limit-mb, DatabaseOptions::memory_limit_bytes). Nothing was written."));
    }
  }
  admitted_ += bytes;
  return absl::OkStatus();
}

bool MemoryBudget::Reserve(uint64_t bytes, double share) {
  {
    std::shared_lock alive(measure_mu_);
    if (detached_) return false;  // its owner is going away
  }
  if (limit_ == 0) return true;
  const auto within = static_cast<uint64_t>(static_cast<double>(limit_) * std::clamp(share, 0.0, 1.0));
  std::unique_lock lock(mu_);
  if (std::chrono::steady_clock::now() - measured_at_ >= kMeasureEvery || admitted_ >= limit_ / 16) {
    MeasureLocked(lock);
  }
  if (measured_.total() + admitted_ + bytes > within) return false;
  admitted_ += bytes;
  return true;
}

void MemoryBudget::Detach() {
  std::unique_lock alive(measure_mu_);
  detached_ = true;
}

MemoryUsage MemoryBudget::Usage() {
  std::unique_lock lock(mu_);
  if (std::chrono::steady_clock::now() - measured_at_ >= kMeasureEvery) MeasureLocked(lock);
  MemoryUsage u = measured_;
  u.index_bytes += admitted_;
  return u;
}

}  // namespace cairn::db
