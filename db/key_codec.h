// Encodings of keys and values in a shard's KvStore.
//
//   internal id   8 bytes big-endian (so RocksDB orders keys by id)
//   external id   'n' + 8 bytes big-endian for numbers, 's' + bytes for strings
//   payload value u32 payload length, payload JSON, text chunk
//   vector        dimension little-endian floats, as given (not normalized)
//   payload index u8 field length, field, u8 tag, value, internal id
#ifndef CAIRN_DB_KEY_CODEC_H_
#define CAIRN_DB_KEY_CODEC_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cairn/point.h"

namespace cairn::db {

std::string InternalKey(uint64_t id);
uint64_t DecodeInternalKey(std::string_view key);  // REQUIRES: 8 bytes

std::string ExternalKey(const PointId& id);
absl::StatusOr<PointId> DecodeExternalKey(std::string_view key);

std::string EncodePayloadValue(std::string_view payload_json, std::string_view text);
// False when the value is malformed.
bool DecodePayloadValue(std::string_view value, std::string_view* payload,
                        std::string_view* text);

std::string EncodeVector(absl::Span<const float> v);
// The same bytes, without a copy (valid while v is).
inline std::string_view VectorBytes(absl::Span<const float> v) {
  return {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)};
}

// Stable across processes and versions (routing depends on it): FNV-1a 64.
uint64_t StableHash(std::string_view bytes);

// Meta keys.
inline constexpr std::string_view kMetaNextId = "next_id";
inline constexpr std::string_view kMetaManifest = "manifest";
// The index of the last replicated log entry applied (cluster mode only).
inline constexpr std::string_view kMetaApplied = "applied";
// Request ids applied (cluster mode): "r/" + id -> index and count, and
// "ri/" + index (8 bytes big-endian) -> id, to forget them in index order.
inline constexpr std::string_view kMetaRequestPrefix = "r/";
inline constexpr std::string_view kMetaRequestIndexPrefix = "ri/";
// The shard's hash class and last split (Shard::SplitRecord), once split.
inline constexpr std::string_view kMetaSplit = "split";

}  // namespace cairn::db

#endif  // CAIRN_DB_KEY_CODEC_H_
