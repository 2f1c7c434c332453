#include "tests/simulation/kv_model.h"


#include "absl/strings/str_cat.h"
#include "storage/byte_codec.h"

namespace cairn::sim {
using storage::ByteReader;
using storage::PutBytes;
using storage::PutU64;
std::string DescribeOp(const KvOp& op) {
  switch (op.kind) {
    case KvOp::Kind::kPut:
      return absl::StrCat("put(", op.key, ", ", op.value, ")");
    case KvOp::Kind::kGet:
      return absl::StrCat("get(", op.key, ")");
    case KvOp::Kind::kCas:
      return absl::StrCat("cas(", op.key, ", ", op.expected, " -> ", op.value, ")");
  }
  return "?";
}

std::string EncodeCommand(const Command& c) {
  std::string out = "kv1";
  PutU64(&out, c.client);
  PutU64(&out, c.seq);
  out.push_back(static_cast<char>(c.op.kind));
  PutBytes(&out, c.op.key);
  PutBytes(&out, c.op.value);
  PutBytes(&out, c.op.expected);
  return out;
}

std::optional<Command> DecodeCommand(std::string_view data) {
  if (data.substr(0, 3) != "kv1") return std::nullopt;
  ByteReader r{data.substr(3)};
  Command c;
  c.client = r.U64();
  c.seq = r.U64();
  if (r.in.empty()) return std::nullopt;
  c.op.kind = static_cast<KvOp::Kind>(r.in[0]);
  r.in.remove_prefix(1);
  c.op.key = r.Bytes();
  c.op.value = r.Bytes();
  c.op.expected = r.Bytes();
  if (!r.ok || !r.in.empty()) return std::nullopt;
  return c;
}

std::string KvStateMachine::Apply(const Command& c) {
  auto& session = sessions_[c.client];
  if (c.seq <= session.first) return c.seq == session.first ? session.second : std::string("stale");
  std::string result;
  switch (c.op.kind) {
    case KvOp::Kind::kPut:
      data_[c.op.key] = c.op.value;
      result = "ok";
      break;
    case KvOp::Kind::kGet:
      result = Read(c.op.key);
      break;
    case KvOp::Kind::kCas: {
      auto it = data_.find(c.op.key);
      const std::string current = it == data_.end() ? std::string(kAbsent) : it->second;
      if (current == c.op.expected) {
        data_[c.op.key] = c.op.value;
        result = "ok";
      } else {
        result = "fail";
      }
      break;
    }
  }
  session = {c.seq, result};
  return result;
}

std::string KvStateMachine::Read(const std::string& key) const {
  auto it = data_.find(key);
  return it == data_.end() ? std::string(kAbsent) : it->second;
}

std::string KvStateMachine::Serialize() const {
  std::string out;
  PutU64(&out, data_.size());
  for (const auto& [k, v] : data_) {
    PutBytes(&out, k);
    PutBytes(&out, v);
  }
  PutU64(&out, sessions_.size());
  for (const auto& [client, s] : sessions_) {
    PutU64(&out, client);
    PutU64(&out, s.first);
    PutBytes(&out, s.second);
  }
  return out;
}

KvStateMachine KvStateMachine::Restore(std::string_view data) {
  KvStateMachine sm;
  if (data.empty()) return sm;
  ByteReader r{data};
  for (uint64_t n = r.U64(); r.ok && n > 0; --n) {
    std::string k = r.Bytes();
    sm.data_[k] = r.Bytes();
  }
  for (uint64_t n = r.U64(); r.ok && n > 0; --n) {
    uint64_t client = r.U64();
    uint64_t seq = r.U64();
    sm.sessions_[client] = {seq, r.Bytes()};
  }
  return sm;
}

}  // namespace cairn::sim
