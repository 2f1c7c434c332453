// Little-endian fields for the records Cairn encodes itself (the Raft log,
// replicated shard commands): a writer that appends, and a reader that takes
// fields off the front and remembers whether any was cut short.
#ifndef CAIRN_STORAGE_BYTE_CODEC_H_
#define CAIRN_STORAGE_BYTE_CODEC_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cairn::storage {

inline void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A length, then the bytes.
inline void PutBytes(std::string* out, std::string_view s) {
  PutU64(out, s.size());
  out->append(s);
}

struct ByteReader {
  std::string_view in;
  bool ok = true;  // false once a field was cut short

  uint64_t U64() {
    if (in.size() < 8) {
      ok = false;
      return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(in[i])) << (8 * i);
    in.remove_prefix(8);
    return v;
  }
  std::string Bytes() {
    const uint64_t n = U64();
    if (!ok || in.size() < n) {
      ok = false;
      return {};
    }
    std::string s(in.substr(0, n));
    in.remove_prefix(n);
    return s;
  }
  // A count, then that many ids.
  std::vector<uint64_t> Ids() {
    const uint64_t n = U64();
    std::vector<uint64_t> out;
    if (!ok || n > in.size() / 8) {
      ok = false;
      return out;
    }
    for (uint64_t i = 0; i < n; ++i) out.push_back(U64());
    return out;
  }
};

}  // namespace cairn::storage

#endif  // CAIRN_STORAGE_BYTE_CODEC_H_
