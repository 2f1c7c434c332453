#include "db/hash_class.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "db/key_codec.h"

namespace cairn::db {

bool HashClass::Contains(std::string_view ext_key) const {
  return modulus == 0 || StableHash(ext_key) % modulus == residue;
}

absl::StatusOr<HashRouter> HashRouter::Build(const std::vector<HashClass>& classes) {
  if (classes.empty()) return absl::InvalidArgumentError("a collection has at least one shard");
  uint32_t size = 0;
  for (const HashClass& c : classes) {
    if (c.modulus == 0 || c.modulus > kMaxHashModulus || c.residue >= c.modulus) {
      return absl::InvalidArgumentError(absl::StrCat("hash class (", c.modulus, ", ", c.residue, ") is malformed"));
    }
    size = std::max(size, c.modulus);
  }
  constexpr uint32_t kUnset = ~0u;
  HashRouter r;
  r.table_.assign(size, kUnset);
  for (uint32_t s = 0; s < classes.size(); ++s) {
    const HashClass& c = classes[s];
    if (size % c.modulus != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("hash class modulus ", c.modulus, " does not divide the largest, ", size));
    }
    for (uint32_t i = c.residue; i < size; i += c.modulus) {
      if (r.table_[i] != kUnset) {
        return absl::InvalidArgumentError(absl::StrCat("shards ", r.table_[i], " and ", s, " overlap"));
      }
      r.table_[i] = s;
    }
  }
  if (auto gap = std::find(r.table_.begin(), r.table_.end(), kUnset); gap != r.table_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no shard holds the hashes of residue ", gap - r.table_.begin(), " modulo ", size));
  }
  return r;
}

HashRouter HashRouter::Even(uint32_t num_shards) {
  HashRouter r;
  r.table_.resize(std::max<uint32_t>(num_shards, 1));
  for (uint32_t s = 0; s < r.table_.size(); ++s) r.table_[s] = s;
  return r;
}

size_t HashRouter::ShardOf(std::string_view ext_key) const {
  return table_.size() == 1 ? 0 : table_[StableHash(ext_key) % table_.size()];
}

}  // namespace cairn::db
