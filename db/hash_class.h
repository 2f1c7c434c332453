// HashClass and HashRouter: which shard owns which point.
//
// A point's shard is decided by the stable hash of its external key (the
// FNV-1a 64 of key_codec.h, the same in every process and version). A shard
// owns a class of that hash: the keys whose hash modulo `modulus` is
// `residue`. A collection of n shards starts with shard s owning (n, s);
// splitting a shard of (m, r) gives (2m, r) and (2m, r + m), so the classes
// of a collection always partition the hash space and a key's shard is one
// table lookup (HashRouter).
#ifndef CAIRN_DB_HASH_CLASS_H_
#define CAIRN_DB_HASH_CLASS_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace cairn::db {

// The largest modulus a split may reach: it bounds a router's table.
inline constexpr uint32_t kMaxHashModulus = 1u << 16;

struct HashClass {
  uint32_t modulus = 0;  // 0: every key (a shard never split keeps what it is sent)
  uint32_t residue = 0;
  bool Contains(std::string_view ext_key) const;
  // The two halves a split makes of this class.
  HashClass KeepHalf() const { return {modulus * 2, residue}; }
  HashClass MovedHalf() const { return {modulus * 2, residue + modulus}; }
  // Every key of this class is in `outer`.
  bool Within(HashClass outer) const {
    return outer.modulus == 0 || (modulus != 0 && modulus % outer.modulus == 0 && residue % outer.modulus == outer.residue);
  }
  bool operator==(const HashClass&) const = default;
};

// Maps a key to the index of the class that holds it.
class HashRouter {
 public:
  // `classes[i]` is shard i's (modulus 0 is not allowed here). InvalidArgument
  // unless every hash is in exactly one class.
  static absl::StatusOr<HashRouter> Build(const std::vector<HashClass>& classes);
  // Shard s of n for every s: the classes of a collection never split.
  static HashRouter Even(uint32_t num_shards);
  size_t ShardOf(std::string_view ext_key) const;

 private:
  std::vector<uint32_t> table_;  // hash % table_.size() -> shard
};

}  // namespace cairn::db

#endif  // CAIRN_DB_HASH_CLASS_H_
