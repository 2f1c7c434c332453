// Internal id -> external id, remembered as searches resolve their hits.
//
// A shard never reuses an internal id for another point (ids only grow, and a
// committed id keeps its external id until the point is deleted), so an entry
// is never wrong: at worst it names a point deleted after a search saw it live,
// which that search may return. Without this, every search result costs a
// RocksDB lookup in the rids column family; with it, hot results cost a hash
// probe.
//
// Bounded: each of kStripes stripes holds at most max_entries / kStripes
// entries and starts over when full. Thread-safe.
#ifndef CAIRN_DB_ID_CACHE_H_
#define CAIRN_DB_ID_CACHE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <shared_mutex>

#include "absl/container/flat_hash_map.h"
#include "cairn/point.h"

namespace cairn::db {

class ExternalIdCache {
 public:
  static constexpr size_t kStripes = 16;

  explicit ExternalIdCache(size_t max_entries = 1 << 20)
      : per_stripe_(max_entries / kStripes > 0 ? max_entries / kStripes : 1) {}

  std::optional<PointId> Find(uint64_t internal) const {
    const Stripe& s = stripes_[internal % kStripes];
    std::shared_lock lock(s.mu);
    auto it = s.map.find(internal);
    if (it == s.map.end()) return std::nullopt;
    return it->second;
  }

  void Insert(uint64_t internal, const PointId& external) {
    Stripe& s = stripes_[internal % kStripes];
    std::unique_lock lock(s.mu);
    if (s.map.size() >= per_stripe_) s.map.clear();
    s.map.insert_or_assign(internal, external);
  }

  // Forgets `internal` (its point was deleted or replaced).
  void Erase(uint64_t internal) {
    Stripe& s = stripes_[internal % kStripes];
    std::unique_lock lock(s.mu);
    s.map.erase(internal);
  }

  size_t size() const {
    size_t n = 0;
    for (const Stripe& s : stripes_) {
      std::shared_lock lock(s.mu);
      n += s.map.size();
    }
    return n;
  }

 private:
  struct Stripe {
    mutable std::shared_mutex mu;
    absl::flat_hash_map<uint64_t, PointId> map;
  };
  const size_t per_stripe_;
  std::array<Stripe, kStripes> stripes_;
};

}  // namespace cairn::db

#endif  // CAIRN_DB_ID_CACHE_H_
