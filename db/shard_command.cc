#include "db/shard_command.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "db/key_codec.h"
#include "storage/byte_codec.h"

namespace cairn::db {
namespace {

using storage::ByteReader;
using storage::PutBytes;
using storage::PutU64;

constexpr char kFormat = 1;

absl::Status Malformed(std::string_view what) {
  return absl::DataLossError(absl::StrCat("shard command: malformed ", std::string(what)));
}

void PutStrings(std::string* out, const std::vector<std::string>& v) {
  PutU64(out, v.size());
  for (const auto& s : v) PutBytes(out, s);
}

bool ReadStrings(ByteReader* r, std::vector<std::string>* v) {
  const uint64_t n = r->U64();
  // Each string takes at least its 8-byte length: a count past that is a lie.
  if (!r->ok || n > r->in.size() / 8) return false;
  v->reserve(n);
  for (uint64_t i = 0; i < n && r->ok; ++i) v->push_back(r->Bytes());
  return r->ok;
}

}  // namespace

std::string ShardCommand::Encode() const {
  std::string out;
  out.push_back(kFormat);
  out.push_back(static_cast<char>(kind));
  PutBytes(&out, request_id);
  switch (kind) {
    case Kind::kUpsert:
      PutU64(&out, points.size());
      for (const auto& p : points) {
        PutBytes(&out, p.ext_key);
        PutBytes(&out, std::string_view(reinterpret_cast<const char*>(p.vector.data()),
                                        p.vector.size() * sizeof(float)));
        PutBytes(&out, p.payload_json);
        PutBytes(&out, p.text);
      }
      break;
    case Kind::kDelete:
      PutStrings(&out, ext_keys);
      break;
    case Kind::kDeleteByFilter:
      PutBytes(&out, filter_json);
      if (expect.modulus != 0) {
        PutU64(&out, expect.modulus);
        PutU64(&out, expect.residue);
      }
      break;
    case Kind::kSetPayload:
      PutStrings(&out, ext_keys);
      PutBytes(&out, payload.dump());
      out.push_back(overwrite ? 1 : 0);
      break;
    case Kind::kSplitDone:
    case Kind::kSplit:
      PutU64(&out, keep.modulus);
      PutU64(&out, keep.residue);
      PutU64(&out, child.modulus);
      PutU64(&out, child.residue);
      PutU64(&out, child_group);
      break;
  }
  return out;
}

absl::StatusOr<ShardCommand> ShardCommand::Decode(std::string_view data) {
  if (data.size() < 2 || data[0] != kFormat) return Malformed("header");
  const auto kind = static_cast<uint8_t>(data[1]);
  if (kind < 1 || kind > 6) return Malformed(absl::StrCat("kind ", kind));
  ShardCommand c;
  c.kind = static_cast<Kind>(kind);
  ByteReader r{data.substr(2)};
  c.request_id = r.Bytes();
  if (!r.ok || c.request_id.size() > 64) return Malformed("request id");
  switch (c.kind) {
    case Kind::kUpsert: {
      const uint64_t n = r.U64();
      if (!r.ok || n > r.in.size() / 32) return Malformed("point count");
      c.points.reserve(n);
      for (uint64_t i = 0; i < n; ++i) {
        PreparedPoint p;
        p.ext_key = r.Bytes();
        const std::string vec = r.Bytes();
        p.payload_json = r.Bytes();
        p.text = r.Bytes();
        if (!r.ok) return Malformed(absl::StrCat("point ", i));
        auto id = DecodeExternalKey(p.ext_key);
        if (!id.ok()) return Malformed(absl::StrCat("point ", i, " id"));
        p.id = *std::move(id);
        if (vec.size() % sizeof(float) != 0) return Malformed(absl::StrCat("point ", i, " vector"));
        p.vector.resize(vec.size() / sizeof(float));
        std::memcpy(p.vector.data(), vec.data(), vec.size());
        p.payload = Json::parse(p.payload_json, nullptr, false);
        if (p.payload.is_discarded() || !p.payload.is_object()) return Malformed(absl::StrCat("point ", i, " payload"));
        c.points.push_back(std::move(p));
      }
      break;
    }
    case Kind::kDelete:
      if (!ReadStrings(&r, &c.ext_keys)) return Malformed("ids");
      break;
    case Kind::kDeleteByFilter:
      c.filter_json = r.Bytes();
      if (!r.ok) return Malformed("filter");
      if (r.in.size() == 16) {
        const uint64_t modulus = r.U64(), residue = r.U64();
        if (modulus == 0 || modulus > kMaxHashModulus || residue >= modulus) return Malformed("filter's class");
        c.expect = HashClass{static_cast<uint32_t>(modulus), static_cast<uint32_t>(residue)};
      }
      break;
    case Kind::kSetPayload: {
      if (!ReadStrings(&r, &c.ext_keys)) return Malformed("ids");
      const std::string pj = r.Bytes();
      if (!r.ok || r.in.empty()) return Malformed("payload");
      c.payload = Json::parse(pj, nullptr, false);
      if (c.payload.is_discarded() || !c.payload.is_object()) return Malformed("payload");
      c.overwrite = r.in[0] != 0;
      r.in.remove_prefix(1);
      break;
    }
    case Kind::kSplitDone:
    case Kind::kSplit: {
      const uint64_t km = r.U64(), kr = r.U64(), cm = r.U64(), cr = r.U64();
      c.child_group = r.U64();
      if (!r.ok || km == 0 || km > kMaxHashModulus || cm != km || kr >= km || cr >= km || kr == cr ||
          c.child_group == 0) {
        return Malformed("split");
      }
      c.keep = HashClass{static_cast<uint32_t>(km), static_cast<uint32_t>(kr)};
      c.child = HashClass{static_cast<uint32_t>(cm), static_cast<uint32_t>(cr)};
      break;
    }
  }
  if (!r.ok || !r.in.empty()) return Malformed("command (trailing bytes)");
  return c;
}

}  // namespace cairn::db
