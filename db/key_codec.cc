#include "db/key_codec.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace cairn::db {

std::string InternalKey(uint64_t id) {
  std::string k(8, '\0');
  for (int i = 7; i >= 0; --i) {
    k[i] = static_cast<char>(id & 0xff);
    id >>= 8;
  }
  return k;
}

uint64_t DecodeInternalKey(std::string_view key) {
  uint64_t id = 0;
  for (int i = 0; i < 8; ++i) id = (id << 8) | static_cast<uint8_t>(key[i]);
  return id;
}

std::string ExternalKey(const PointId& id) {
  if (id.is_number()) return "n" + InternalKey(id.number());
  return "s" + id.str();
}

absl::StatusOr<PointId> DecodeExternalKey(std::string_view key) {
  if (key.size() == 9 && key[0] == 'n') return PointId(DecodeInternalKey(key.substr(1)));
  if (key.size() >= 2 && key[0] == 's') return PointId(std::string(key.substr(1)));
  return absl::DataLossError(absl::StrCat("malformed external id key of ", key.size(), " bytes"));
}

std::string EncodePayloadValue(std::string_view payload_json, std::string_view text) {
  std::string v;
  uint32_t n = static_cast<uint32_t>(payload_json.size());
  v.reserve(4 + payload_json.size() + text.size());
  v.append(reinterpret_cast<const char*>(&n), 4);
  v.append(payload_json);
  v.append(text);
  return v;
}

bool DecodePayloadValue(std::string_view value, std::string_view* payload,
                        std::string_view* text) {
  if (value.size() < 4) return false;
  uint32_t n;
  std::memcpy(&n, value.data(), 4);
  if (n > value.size() - 4) return false;
  *payload = value.substr(4, n);
  *text = value.substr(4 + n);
  return true;
}

std::string EncodeVector(absl::Span<const float> v) { return std::string(VectorBytes(v)); }

uint64_t StableHash(std::string_view bytes) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace cairn::db

namespace cairn {
std::string PointId::ToString() const {
  if (is_number()) return std::to_string(number());
  return absl::StrCat("\"", str(), "\"");
}
}  // namespace cairn
