#include "index/id_column.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace cairn::index {
namespace {

// Every position and every lookup agrees with a plain sorted vector.
void ExpectSame(const IdColumn& c, const std::vector<uint64_t>& want) {
  ASSERT_EQ(c.size(), want.size());
  ASSERT_EQ(c.ToVector(), want);
  for (size_t p = 0; p < want.size(); ++p) ASSERT_EQ(c[p], want[p]) << p;
  if (want.empty()) return;
  std::vector<uint64_t> probes = {0, want.front(), want.back(), want.back() + 1, want.back() + (1ull << 33)};
  for (size_t p = 0; p < want.size(); p += 7) {
    probes.push_back(want[p]);
    probes.push_back(want[p] + 1);
    if (want[p] > 0) probes.push_back(want[p] - 1);
  }
  for (uint64_t id : probes) {
    const size_t expect = static_cast<size_t>(std::lower_bound(want.begin(), want.end(), id) - want.begin());
    ASSERT_EQ(c.LowerBound(id), expect) << "id " << id;
  }
}

TEST(IdColumnTest, ARunTakesNoMemory) {
  std::vector<uint64_t> ids(100000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = 5000 + i;
  IdColumn c;
  c.Assign(ids.data(), ids.size());
  EXPECT_EQ(c.MemoryBytes(), 0u);
  ExpectSame(c, ids);
}

TEST(IdColumnTest, GapsCostFourBytesAnId) {
  std::mt19937_64 rng(7);
  std::vector<uint64_t> ids;
  uint64_t id = 1;
  for (size_t i = 0; i < 100000; ++i) ids.push_back(id += 1 + rng() % 5);
  IdColumn c;
  c.Assign(ids.data(), ids.size());
  EXPECT_LE(c.MemoryBytes(), ids.size() * 4 + (ids.size() / IdColumn::kBlock + 1) * 8);
  ExpectSame(c, ids);
}

TEST(IdColumnTest, AppendsInPiecesEndARunAndKeepOrder) {
  // A run, then gaps (the run is rewritten as blocks), appended in pieces
  // that cross block boundaries.
  std::vector<uint64_t> ids;
  for (uint64_t i = 0; i < 1000; ++i) ids.push_back(10 + i);
  for (uint64_t i = 0; i < 1000; ++i) ids.push_back(2000 + 3 * i);
  IdColumn c;
  for (size_t at = 0; at < ids.size();) {
    const size_t n = std::min<size_t>(ids.size() - at, 1 + at % 333);
    c.Append(ids.data() + at, n);
    at += n;
    ExpectSame(c, std::vector<uint64_t>(ids.begin(), ids.begin() + static_cast<ptrdiff_t>(at)));
  }
}

TEST(IdColumnTest, IdsFarApartStayExact) {
  // Offsets within a block past 32 bits: the column keeps the full ids.
  std::vector<uint64_t> ids = {1, 2, 3, (1ull << 32) + 10, (1ull << 40), (1ull << 40) + 1, ~0ull - 5};
  IdColumn c;
  c.Assign(ids.data(), ids.size());
  ExpectSame(c, ids);
  IdColumn d;
  for (uint64_t id : ids) d.Append(&id, 1);
  ExpectSame(d, ids);
}

TEST(IdColumnTest, EmptyAndSingle) {
  IdColumn c;
  EXPECT_TRUE(c.empty());
  EXPECT_EQ(c.LowerBound(42), 0u);
  const uint64_t one = 42;
  c.Append(&one, 1);
  ExpectSame(c, {42});
}

}  // namespace
}  // namespace cairn::index
