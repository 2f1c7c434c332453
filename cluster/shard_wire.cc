#include "cluster/shard_wire.h"

#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"
#include "db/key_codec.h"
#include "storage/byte_codec.h"

namespace cairn::cluster {
namespace {

using storage::ByteReader;
using storage::PutBytes;
using storage::PutU64;

absl::Status Malformed(const char* what) {
  return absl::InvalidArgumentError(absl::StrCat("shard read: malformed ", what));
}

void PutFloats(std::string* out, const std::vector<float>& v) {
  PutBytes(out, std::string_view(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)));
}

bool ReadFloats(ByteReader* r, std::vector<float>* v) {
  const std::string b = r->Bytes();
  if (!r->ok || b.size() % sizeof(float) != 0) return false;
  v->resize(b.size() / sizeof(float));
  if (!b.empty()) std::memcpy(v->data(), b.data(), b.size());
  return true;
}

void PutFlags(std::string* out, bool a, bool b) { out->push_back(static_cast<char>((a ? 1 : 0) | (b ? 2 : 0))); }

bool ReadByte(ByteReader* r, uint8_t* v) {
  if (r->in.empty()) return r->ok = false;
  *v = static_cast<uint8_t>(r->in[0]);
  r->in.remove_prefix(1);
  return true;
}

void PutId(std::string* out, const PointId& id) { PutBytes(out, db::ExternalKey(id)); }

bool ReadId(ByteReader* r, PointId* id) {
  auto decoded = db::DecodeExternalKey(r->Bytes());
  if (!r->ok || !decoded.ok()) return r->ok = false;
  *id = *std::move(decoded);
  return true;
}

void PutRecord(std::string* out, const Record& rec) {
  PutId(out, rec.id);
  PutFloats(out, rec.vector);
  PutBytes(out, rec.payload);
  PutBytes(out, rec.text);
}

bool ReadRecord(ByteReader* r, Record* rec) {
  return ReadId(r, &rec->id) && ReadFloats(r, &rec->vector) && ((rec->payload = r->Bytes()), r->ok) &&
         ((rec->text = r->Bytes()), r->ok);
}

// A count that cannot be larger than the bytes left (each item takes at least
// `min_bytes`): refused rather than allocated.
bool ReadCount(ByteReader* r, size_t min_bytes, uint64_t* n) {
  *n = r->U64();
  return r->ok && *n <= r->in.size() / min_bytes;
}

absl::StatusOr<std::unique_ptr<Filter>> FilterOf(const std::string& json) {
  if (json.empty()) return std::unique_ptr<Filter>();
  CAIRN_ASSIGN_OR_RETURN(Filter f, Filter::FromJson(json));
  return std::make_unique<Filter>(std::move(f));
}

}  // namespace

std::string ShardReadRequest::Encode() const {
  std::string out;
  out.push_back(static_cast<char>(op));
  switch (op) {
    case Op::kSearch:
      PutU64(&out, nq);
      PutFloats(&out, queries);
      PutU64(&out, static_cast<uint64_t>(k));
      PutU64(&out, static_cast<uint64_t>(ef));
      PutU64(&out, static_cast<uint64_t>(nprobe));
      out.push_back(exact ? 1 : 0);
      PutFlags(&out, with_payload, with_vector);
      PutBytes(&out, filter_json);
      break;
    case Op::kGet:
      PutU64(&out, keys.size());
      for (const auto& k : keys) PutBytes(&out, k);
      PutFlags(&out, with_payload, with_vector);
      break;
    case Op::kCount:
      PutBytes(&out, filter_json);
      break;
    case Op::kScroll:
      PutBytes(&out, after);
      PutU64(&out, limit);
      PutBytes(&out, filter_json);
      PutFlags(&out, with_payload, with_vector);
      break;
    case Op::kStats:
    case Op::kExport:
      break;
  }
  if (expect.modulus != 0) {
    PutU64(&out, expect.modulus);
    PutU64(&out, expect.residue);
  }
  return out;
}

absl::StatusOr<ShardReadRequest> ShardReadRequest::Decode(std::string_view data) {
  if (data.empty() || data[0] < 1 || data[0] > 6) return Malformed("op");
  ShardReadRequest q;
  q.op = static_cast<Op>(data[0]);
  ByteReader r{data.substr(1)};
  uint8_t flags = 0;
  switch (q.op) {
    case Op::kSearch: {
      const uint64_t nq = r.U64();
      if (!r.ok || nq == 0 || nq > (1u << 20)) return Malformed("query count");
      q.nq = static_cast<uint32_t>(nq);
      if (!ReadFloats(&r, &q.queries) || q.queries.size() % q.nq != 0) return Malformed("queries");
      q.k = static_cast<int>(r.U64());
      q.ef = static_cast<int>(r.U64());
      q.nprobe = static_cast<int>(r.U64());
      uint8_t exact = 0;
      if (!ReadByte(&r, &exact) || !ReadByte(&r, &flags)) return Malformed("search flags");
      q.exact = exact != 0;
      q.filter_json = r.Bytes();
      break;
    }
    case Op::kGet: {
      uint64_t n = 0;
      if (!ReadCount(&r, 8, &n)) return Malformed("key count");
      for (uint64_t i = 0; i < n && r.ok; ++i) q.keys.push_back(r.Bytes());
      if (!ReadByte(&r, &flags)) return Malformed("get flags");
      break;
    }
    case Op::kCount:
      q.filter_json = r.Bytes();
      break;
    case Op::kScroll:
      q.after = r.Bytes();
      q.limit = static_cast<uint32_t>(r.U64());
      q.filter_json = r.Bytes();
      if (!ReadByte(&r, &flags)) return Malformed("scroll flags");
      break;
    case Op::kStats:
    case Op::kExport:
      break;
  }
  if (r.ok && r.in.size() == 16) {
    const uint64_t modulus = r.U64(), residue = r.U64();
    if (modulus == 0 || modulus > db::kMaxHashModulus || residue >= modulus) return Malformed("hash class");
    q.expect = db::HashClass{static_cast<uint32_t>(modulus), static_cast<uint32_t>(residue)};
  }
  if (!r.ok || !r.in.empty()) return Malformed("request");
  q.with_payload = (flags & 1) != 0;
  q.with_vector = (flags & 2) != 0;
  return q;
}

absl::Status CheckHashClass(const db::Shard& shard, db::HashClass expect) {
  const db::HashClass has = shard.split_record().cls;
  if (has == expect) return absl::OkStatus();
  if (has.modulus > expect.modulus) {
    return db::MovedBySplitError(absl::StrCat("the shard holds 1/", has.modulus, " of the id hash now"));
  }
  return absl::UnavailableError("this replica has not applied its shard's split yet; another replica answers");
}

absl::StatusOr<std::string> ExecuteRead(const db::Shard& shard, const ShardReadRequest& req) {
  if (req.op != ShardReadRequest::Op::kExport) CAIRN_RETURN_IF_ERROR(CheckHashClass(shard, req.expect));
  std::string out;
  CAIRN_ASSIGN_OR_RETURN(std::unique_ptr<Filter> filter, FilterOf(req.filter_json));
  switch (req.op) {
    case ShardReadRequest::Op::kSearch: {
      SearchParams p;
      p.k = req.k;
      p.ef = req.ef;
      p.nprobe = req.nprobe;
      p.exact = req.exact;
      p.with_payload = req.with_payload;
      p.with_vector = req.with_vector;
      p.filter = filter.get();
      std::vector<std::vector<ScoredPoint>> res;
      CAIRN_RETURN_IF_ERROR(shard.Search(req.queries.data(), req.nq, p, &res));
      PutU64(&out, res.size());
      for (const auto& list : res) {
        PutU64(&out, list.size());
        for (const auto& sp : list) {
          PutId(&out, sp.id);
          uint32_t bits;
          std::memcpy(&bits, &sp.score, 4);
          PutU64(&out, bits);
          PutBytes(&out, sp.payload);
          PutBytes(&out, sp.text);
          PutFloats(&out, sp.vector);
        }
      }
      return out;
    }
    case ShardReadRequest::Op::kGet: {
      std::vector<std::optional<Record>> recs;
      CAIRN_RETURN_IF_ERROR(shard.Get(req.keys, req.with_payload, req.with_vector, &recs));
      PutU64(&out, recs.size());
      for (const auto& rec : recs) {
        out.push_back(rec ? 1 : 0);
        if (rec) PutRecord(&out, *rec);
      }
      return out;
    }
    case ShardReadRequest::Op::kCount: {
      CAIRN_ASSIGN_OR_RETURN(uint64_t n, shard.Count(filter.get()));
      PutU64(&out, n);
      return out;
    }
    case ShardReadRequest::Op::kScroll: {
      std::vector<Record> recs;
      std::string last;
      bool more = false;
      CAIRN_RETURN_IF_ERROR(
          shard.Scroll(req.after, req.limit, filter.get(), req.with_payload, req.with_vector, &recs, &last, &more));
      PutU64(&out, recs.size());
      for (const auto& rec : recs) PutRecord(&out, rec);
      PutBytes(&out, last);
      out.push_back(more ? 1 : 0);
      return out;
    }
    case ShardReadRequest::Op::kStats: {
      const db::ShardStats s = shard.Stats();
      for (uint64_t v : {s.points, s.segments, s.sealed_segments, s.deleted_in_segments, s.index_memory_bytes,
                         s.storage_memory_bytes, s.growing_points, s.growing_saved_points, s.gpu_segments,
                         s.gpu_memory_bytes, s.tail_points, s.unindexed_points}) {
        PutU64(&out, v);
      }
      return out;
    }
    case ShardReadRequest::Op::kExport:
      return absl::InvalidArgumentError("an export is not a read of the shard's data");
  }
  return Malformed("op");
}

absl::StatusOr<std::vector<std::vector<ScoredPoint>>> DecodeSearchAnswer(std::string_view data) {
  ByteReader r{data};
  uint64_t nq = 0;
  if (!ReadCount(&r, 8, &nq)) return Malformed("search answer");
  std::vector<std::vector<ScoredPoint>> out(nq);
  for (auto& list : out) {
    uint64_t n = 0;
    if (!ReadCount(&r, 40, &n)) return Malformed("search answer");
    list.resize(n);
    for (auto& sp : list) {
      if (!ReadId(&r, &sp.id)) return Malformed("search answer id");
      const uint32_t bits = static_cast<uint32_t>(r.U64());
      std::memcpy(&sp.score, &bits, 4);
      sp.payload = r.Bytes();
      sp.text = r.Bytes();
      if (!ReadFloats(&r, &sp.vector)) return Malformed("search answer vector");
    }
  }
  if (!r.ok || !r.in.empty()) return Malformed("search answer");
  return out;
}

absl::StatusOr<std::vector<std::optional<Record>>> DecodeGetAnswer(std::string_view data) {
  ByteReader r{data};
  uint64_t n = 0;
  if (!ReadCount(&r, 1, &n)) return Malformed("get answer");
  std::vector<std::optional<Record>> out(n);
  for (auto& rec : out) {
    uint8_t present = 0;
    if (!ReadByte(&r, &present)) return Malformed("get answer");
    if (!present) continue;
    rec.emplace();
    if (!ReadRecord(&r, &*rec)) return Malformed("get answer record");
  }
  if (!r.ok || !r.in.empty()) return Malformed("get answer");
  return out;
}

absl::StatusOr<uint64_t> DecodeCountAnswer(std::string_view data) {
  ByteReader r{data};
  const uint64_t n = r.U64();
  if (!r.ok || !r.in.empty()) return Malformed("count answer");
  return n;
}

absl::StatusOr<ScrollAnswer> DecodeScrollAnswer(std::string_view data) {
  ByteReader r{data};
  uint64_t n = 0;
  if (!ReadCount(&r, 32, &n)) return Malformed("scroll answer");
  ScrollAnswer a;
  a.records.resize(n);
  for (auto& rec : a.records) {
    if (!ReadRecord(&r, &rec)) return Malformed("scroll answer record");
  }
  a.last_key = r.Bytes();
  uint8_t more = 0;
  if (!ReadByte(&r, &more) || !r.ok || !r.in.empty()) return Malformed("scroll answer");
  a.more = more != 0;
  return a;
}

absl::StatusOr<db::ShardStats> DecodeStatsAnswer(std::string_view data) {
  ByteReader r{data};
  db::ShardStats s;
  for (uint64_t* v : {&s.points, &s.segments, &s.sealed_segments, &s.deleted_in_segments, &s.index_memory_bytes,
                      &s.storage_memory_bytes, &s.growing_points, &s.growing_saved_points, &s.gpu_segments,
                      &s.gpu_memory_bytes}) {
    *v = r.U64();
  }
  // Added later: absent in the answer of a node of an earlier version.
  if (!r.in.empty()) {
    s.tail_points = r.U64();
    s.unindexed_points = r.U64();
  }
  if (!r.ok || !r.in.empty()) return Malformed("stats answer");
  return s;
}

}  // namespace cairn::cluster
