// What the shard tests share: seeded vectors by id and version, and a
// fixture that opens a shard in a temporary directory (dropping the previous
// one without a close step: what a crash leaves) and upserts id ranges.
#ifndef CAIRN_DB_SHARD_TEST_UTIL_H_
#define CAIRN_DB_SHARD_TEST_UTIL_H_

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "db/key_codec.h"
#include "db/shard.h"
#include "gtest/gtest.h"

namespace cairn::db {

// The vector of point `id` at `version` (dim floats in 0..100).
inline std::vector<float> SeededVector(uint64_t id, int version, uint32_t dim) {
  std::vector<float> v(dim);
  uint64_t x = id * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(version) * 0xff51afd7ed558ccdull + 1;
  for (auto& f : v) {
    x ^= x >> 29;
    x *= 0xbf58476d1ce4e5b9ull;
    f = static_cast<float>(x % 10007) / 100.0f;
  }
  return v;
}

class ShardDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::path(::testing::TempDir()) / "cairn-shard-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    shard_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void Open(const ShardOptions& o) {
    shard_.reset();  // a shard dropped without a close step: what a crash leaves
    auto s = Shard::Open(dir_, o);
    ASSERT_TRUE(s.ok()) << s.status();
    shard_ = std::move(*s);
  }

  // Points [from, to) at `version`, with payload {"even": id is even}, as
  // one upsert.
  void Upsert(uint64_t from, uint64_t to, int version, uint32_t dim) {
    std::vector<PreparedPoint> batch;
    for (uint64_t i = from; i < to; ++i) {
      PreparedPoint p;
      p.id = PointId(i);
      p.ext_key = ExternalKey(p.id);
      p.vector = SeededVector(i, version, dim);
      p.payload = Json{{"even", i % 2 == 0}};
      p.payload_json = p.payload.dump();
      batch.push_back(std::move(p));
    }
    ASSERT_TRUE(shard_->Upsert(std::move(batch)).ok());
  }

  std::string dir_;
  std::unique_ptr<Shard> shard_;
};

}  // namespace cairn::db

#endif  // CAIRN_DB_SHARD_TEST_UTIL_H_
