// Payload: field access, condition matching over JSON, and the payload index
// (roaring bitmaps for keywords and bools, ordered maps for numbers).
//
// PayloadIndex is the in-memory form of a shard's payload index column family:
// every key that KeysFor() produces is written in the same WriteBatch as the
// point, and AddKey()/RemoveKey() mirror those writes in memory. On open, the
// column family is scanned back in with AddKey().
//
// Thread-safety: PayloadIndex is not synchronized; the shard guards it.
#ifndef CAIRN_DB_PAYLOAD_INDEX_H_
#define CAIRN_DB_PAYLOAD_INDEX_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <roaring/roaring64map.hh>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "cairn/filter.h"
#include "cairn/options.h"

namespace cairn::db {

using Bitmap = Roaring64Map;
using Json = nlohmann::json;

// Scalars at `path` ("a.b.c"): the value itself, or the elements of an array.
// Empty when the field is absent or null. A key holding dots is found too:
// "a.b" reaches {"a": {"b": 1}} and {"a.b": 1} (both, when both are there).
std::vector<const Json*> FieldValues(const Json& payload, const std::string& path);

// Whether a point (its payload, already parsed) matches one condition.
// REQUIRES: c.kind is not kHasId or kNested (the evaluator handles those).
bool MatchesCondition(const Condition& c, const Json& payload);

// InvalidArgument when an indexed field holds a value of another type.
absl::Status ValidatePayloadTypes(const std::vector<PayloadIndexSpec>& specs,
                                  const Json& payload);

class PayloadIndex {
 public:
  explicit PayloadIndex(const std::vector<PayloadIndexSpec>& specs);

  // Keys to persist for `payload` of point `id`. REQUIRES: types validated.
  std::vector<std::string> KeysFor(const Json& payload, uint64_t id) const;
  // Mirrors a persisted key in memory. False for a malformed key or an
  // undeclared field (ignored).
  bool AddKey(std::string_view key);
  void RemoveKey(std::string_view key);

  bool Indexed(const std::string& field) const { return fields_.contains(field); }
  // Points matching `c` by the index, within `live`; nullopt when the
  // condition's field is not indexed.
  std::optional<Bitmap> Evaluate(const Condition& c, const Bitmap& live) const;
  uint64_t MemoryBytes() const;

 private:
  struct Field {
    PayloadType type;
    absl::flat_hash_map<std::string, Bitmap> keywords;
    std::map<int64_t, Bitmap> ints;
    std::map<double, Bitmap> floats;
    Bitmap is_true, is_false;
    Bitmap present;
  };
  void Apply(std::string_view key, bool add);
  std::optional<Bitmap> MatchValue(const Field& f, const FieldValue& v) const;
  absl::flat_hash_map<std::string, Field> fields_;
};

}  // namespace cairn::db

#endif  // CAIRN_DB_PAYLOAD_INDEX_H_
