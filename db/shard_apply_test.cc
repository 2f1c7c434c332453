// Replicated apply (Shard::Apply, ShardCommand): the same committed entries
// give every replica the same data, however they are batched, whatever each
// replica sealed, and across a crash; an entry is never applied twice; an
// entry every replica refuses alike changes nothing; a command that cannot be
// read is refused before anything of it is applied.
#include <stdlib.h>

#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "db/key_codec.h"
#include "db/shard.h"
#include "db/shard_command.h"
#include "absl/strings/str_cat.h"
#include "db/test_util.h"
#include "gtest/gtest.h"

namespace cairn::db {
namespace {

namespace fs = std::filesystem;
using testing_util::ParseFilter;
using testing_util::TestSeed;

constexpr uint32_t kDim = 4;

PreparedPoint Point(uint64_t id, float x, Json payload, std::string text = "") {
  PreparedPoint p;
  p.id = PointId(id);
  p.ext_key = ExternalKey(p.id);
  p.vector = {x, x + 1, x * 2, -x};
  p.payload = std::move(payload);
  p.payload_json = p.payload.dump();
  p.text = std::move(text);
  return p;
}

ShardCommand UpsertCmd(std::vector<PreparedPoint> points) {
  ShardCommand c;
  c.kind = ShardCommand::Kind::kUpsert;
  c.points = std::move(points);
  return c;
}

ShardCommand DeleteCmd(std::vector<uint64_t> ids) {
  ShardCommand c;
  c.kind = ShardCommand::Kind::kDelete;
  for (uint64_t id : ids) c.ext_keys.push_back(ExternalKey(PointId(id)));
  return c;
}

ShardCommand DeleteByFilterCmd(std::string filter_json) {
  ShardCommand c;
  c.kind = ShardCommand::Kind::kDeleteByFilter;
  c.filter_json = std::move(filter_json);
  return c;
}

ShardCommand SetPayloadCmd(std::vector<uint64_t> ids, Json payload, bool overwrite) {
  ShardCommand c;
  c.kind = ShardCommand::Kind::kSetPayload;
  for (uint64_t id : ids) c.ext_keys.push_back(ExternalKey(PointId(id)));
  c.payload = std::move(payload);
  c.overwrite = overwrite;
  return c;
}

class ShardApplyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "cairn-apply-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  static ShardOptions Options() {
    ShardOptions o;
    o.dimension = kDim;
    o.index.type = IndexType::kHnsw;
    o.index.hnsw_m = 8;
    o.index.ef_construction = 40;
    o.payload_indexes = {{"color", PayloadType::kKeyword}};
    o.seal_threshold = 1u << 30;
    o.index_threads = 1;
    o.sync_writes = false;  // the replicated log is the WAL
    return o;
  }

  std::unique_ptr<Shard> Open(const std::string& name) {
    auto s = Shard::Open((fs::path(dir_) / name).string(), Options());
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  // Applies commands [from, to) of `cmds` (entry i has index i + 1) in one call.
  static std::vector<Shard::ApplyResult> ApplyRange(Shard& shard, const std::vector<ShardCommand>& cmds,
                                                    size_t from, size_t to) {
    std::vector<Shard::LogEntry> entries;
    for (size_t i = from; i < to; ++i) entries.push_back({i + 1, &cmds[i]});
    std::vector<Shard::ApplyResult> results;
    absl::Status s = shard.Apply(entries, &results);
    EXPECT_TRUE(s.ok()) << s;
    return results;
  }

  static Shard::Checksum ChecksumOf(const Shard& shard) {
    auto c = shard.DataChecksum();
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : Shard::Checksum{};
  }

  static std::optional<Record> GetOne(const Shard& shard, uint64_t id) {
    std::vector<std::optional<Record>> out;
    EXPECT_TRUE(shard.Get({ExternalKey(PointId(id))}, true, true, &out).ok());
    return out.at(0);
  }

  std::string dir_;
};

TEST(ShardCommandTest, EveryKindRoundTrips) {
  std::vector<ShardCommand> cmds = {
      UpsertCmd({Point(1, 0.5f, Json{{"a", 1}}, "chunk"), Point(2, 1.5f, Json::object())}),
      DeleteCmd({1, 7}),
      DeleteByFilterCmd(R"({"must":[{"key":"a","match":{"value":1}}]})"),
      SetPayloadCmd({2}, Json{{"b", "x"}}, true),
  };
  {
    ShardCommand s;
    s.kind = ShardCommand::Kind::kUpsert;
    PreparedPoint p = Point(0, 0, Json::object());
    p.id = PointId(std::string("doc-7"));
    p.ext_key = ExternalKey(p.id);
    s.points.push_back(p);
    cmds.push_back(s);
  }
  for (const auto& c : cmds) {
    auto d = ShardCommand::Decode(c.Encode());
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->kind, c.kind);
    EXPECT_EQ(d->ext_keys, c.ext_keys);
    EXPECT_EQ(d->filter_json, c.filter_json);
    EXPECT_EQ(d->overwrite, c.overwrite);
    if (c.kind == ShardCommand::Kind::kSetPayload) {
      EXPECT_EQ(d->payload, c.payload);
    }
    ASSERT_EQ(d->points.size(), c.points.size());
    for (size_t i = 0; i < c.points.size(); ++i) {
      EXPECT_EQ(d->points[i].id, c.points[i].id);
      EXPECT_EQ(d->points[i].ext_key, c.points[i].ext_key);
      EXPECT_EQ(d->points[i].vector, c.points[i].vector);
      EXPECT_EQ(d->points[i].payload, c.points[i].payload);
      EXPECT_EQ(d->points[i].payload_json, c.points[i].payload_json);
      EXPECT_EQ(d->points[i].text, c.points[i].text);
    }
    // Every proper prefix, and any trailing byte, is refused.
    const std::string enc = c.Encode();
    for (size_t n = 0; n < enc.size(); ++n) {
      EXPECT_EQ(ShardCommand::Decode(enc.substr(0, n)).status().code(), absl::StatusCode::kDataLoss) << n;
    }
    EXPECT_EQ(ShardCommand::Decode(enc + "x").status().code(), absl::StatusCode::kDataLoss);
  }
  EXPECT_EQ(ShardCommand::Decode(std::string("\x01\x09", 2)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ShardCommand::Decode(std::string("\x02\x01", 2)).status().code(), absl::StatusCode::kDataLoss);
  // A count far larger than the bytes that follow is refused, not allocated.
  std::string huge("\x01\x02", 2);
  huge.append(8, '\xff');
  EXPECT_EQ(ShardCommand::Decode(huge).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(ShardApplyTest, AppliesEachKindAndRecordsTheIndex) {
  auto shard = Open("a");
  ASSERT_NE(shard, nullptr);
  EXPECT_EQ(shard->applied_index(), 0u);
  std::vector<ShardCommand> cmds = {
      UpsertCmd({Point(1, 1, Json{{"color", "red"}}), Point(2, 2, Json{{"color", "blue"}}),
                 Point(3, 3, Json{{"color", "red"}})}),
      SetPayloadCmd({2}, Json{{"size", 9}}, false),
      DeleteCmd({3, 99}),
      // Sees point 4, upserted by an earlier entry of the same call.
      UpsertCmd({Point(4, 4, Json{{"color", "green"}})}),
      DeleteByFilterCmd(R"({"must":[{"key":"color","match":{"any":["red","green"]}}]})"),
  };
  auto results = ApplyRange(*shard, cmds, 0, cmds.size());
  ASSERT_EQ(results.size(), 5u);
  for (const auto& r : results) EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(results[0].count, 3u);
  EXPECT_EQ(results[2].count, 1u);  // 99 does not exist
  EXPECT_EQ(results[4].count, 2u);  // 1 and 4
  EXPECT_EQ(shard->applied_index(), 5u);
  EXPECT_FALSE(GetOne(*shard, 1));
  EXPECT_FALSE(GetOne(*shard, 3));
  EXPECT_FALSE(GetOne(*shard, 4));
  auto two = GetOne(*shard, 2);
  ASSERT_TRUE(two);
  EXPECT_EQ(two->payload, R"({"color":"blue","size":9})");
  auto count = shard->Count(nullptr);
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(*count, 1u);
}

TEST_F(ShardApplyTest, AnEntryRefusedAlikeChangesNothingAndTheRestApply) {
  auto shard = Open("a");
  ASSERT_NE(shard, nullptr);
  std::vector<ShardCommand> cmds = {
      UpsertCmd({Point(1, 1, Json{{"color", "red"}})}),
      SetPayloadCmd({1, 2}, Json{{"note", "x"}}, false),  // 2 is missing: NotFound
      SetPayloadCmd({1}, Json{{"color", 5}}, false),       // wrong type for the keyword index
      DeleteByFilterCmd(R"({"must":[{"key":"color","nonsense":1}]})"),
      UpsertCmd({Point(5, 5, Json::object())}),
  };
  auto results = ApplyRange(*shard, cmds, 0, cmds.size());
  EXPECT_TRUE(results[0].status.ok());
  EXPECT_EQ(results[1].status.code(), absl::StatusCode::kNotFound) << results[1].status;
  EXPECT_EQ(results[2].status.code(), absl::StatusCode::kInvalidArgument) << results[2].status;
  EXPECT_EQ(results[3].status.code(), absl::StatusCode::kInvalidArgument) << results[3].status;
  EXPECT_TRUE(results[4].status.ok());
  EXPECT_EQ(shard->applied_index(), 5u);
  auto one = GetOne(*shard, 1);
  ASSERT_TRUE(one);
  EXPECT_EQ(one->payload, R"({"color":"red"})");  // neither refused change is there
  EXPECT_TRUE(GetOne(*shard, 5));
  Filter red = ParseFilter(R"({"must":[{"key":"color","match":{"value":"red"}}]})");
  auto n = shard->Count(&red);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1u);
}

TEST_F(ShardApplyTest, EntriesAtOrBelowTheAppliedIndexAreSkippedAcrossAReopen) {
  std::vector<ShardCommand> cmds = {
      UpsertCmd({Point(1, 1, Json::object())}),
      DeleteCmd({1}),
      UpsertCmd({Point(1, 7, Json{{"v", 2}})}),
  };
  Shard::Checksum before;
  {
    auto shard = Open("a");
    ASSERT_NE(shard, nullptr);
    ApplyRange(*shard, cmds, 0, 3);
    before = ChecksumOf(*shard);
    EXPECT_EQ(before.applied_index, 3u);
    EXPECT_EQ(before.points, 1u);
  }  // dropped without a close: what a crash leaves
  auto shard = Open("a");
  ASSERT_NE(shard, nullptr);
  EXPECT_EQ(shard->applied_index(), 3u);
  // The log hands out everything after the last index it knows is applied;
  // applying it again must not resurrect the deleted version.
  auto results = ApplyRange(*shard, cmds, 0, 3);
  for (const auto& r : results) EXPECT_TRUE(r.skipped);
  EXPECT_EQ(ChecksumOf(*shard).hash, before.hash);
  auto one = GetOne(*shard, 1);
  ASSERT_TRUE(one);
  EXPECT_EQ(one->vector, (std::vector<float>{7, 8, 14, -7}));
}

// A retry of a write whose answer was lost comes back with the same request
// id, possibly after other writes to the same point: applying it again would
// bring back an overwritten version.
TEST_F(ShardApplyTest, ACommandRetriedWithItsRequestIdAppliesOnce) {
  ShardOptions o = Options();
  o.request_id_window = 4;
  const std::string dir = (fs::path(dir_) / "a").string();
  ShardCommand first = UpsertCmd({Point(1, 1, Json{{"v", 1}}), Point(2, 2, Json::object())});
  first.request_id = "req-1";
  ShardCommand second = UpsertCmd({Point(1, 5, Json{{"v", 2}})});
  second.request_id = "req-2";
  auto payload_of_1 = [](Shard& s) {
    std::vector<std::optional<Record>> out;
    EXPECT_TRUE(s.Get({ExternalKey(PointId(1))}, true, false, &out).ok());
    return out[0] ? out[0]->payload : "";
  };
  {
    auto s = Shard::Open(dir, o);
    ASSERT_TRUE(s.ok()) << s.status();
    std::vector<Shard::ApplyResult> r;
    ASSERT_TRUE((*s)->Apply({{1, &first}, {2, &second}, {3, &first}}, &r).ok());
    EXPECT_EQ(r[2].count, 2u);  // the first application's result
    EXPECT_EQ(payload_of_1(**s), R"({"v":2})");
  }
  auto s = Shard::Open(dir, o);  // the ids are on disk with the data
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<Shard::ApplyResult> r;
  ASSERT_TRUE((*s)->Apply({{4, &first}}, &r).ok());
  EXPECT_EQ(payload_of_1(**s), R"({"v":2})");
  // Past the window (4 entries after it), the id is forgotten: applied again.
  ASSERT_TRUE((*s)->Apply({{5, nullptr}, {6, nullptr}, {7, nullptr}, {8, &first}}, &r).ok());
  EXPECT_EQ(payload_of_1(**s), R"({"v":1})");
  // An id survives a decode.
  auto d = ShardCommand::Decode(first.Encode());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->request_id, "req-1");
}

TEST_F(ShardApplyTest, EntriesWithoutACommandMoveTheAppliedIndex) {
  auto shard = Open("a");
  ASSERT_NE(shard, nullptr);
  ShardCommand up = UpsertCmd({Point(1, 1, Json::object())});
  std::vector<Shard::ApplyResult> results;
  ASSERT_TRUE(shard->Apply({{1, nullptr}, {2, &up}, {3, nullptr}}, &results).ok());
  EXPECT_EQ(shard->applied_index(), 3u);
  ASSERT_TRUE(shard->Apply({{4, nullptr}}, &results).ok());
  EXPECT_EQ(shard->applied_index(), 4u);
  // Out of order is a driver bug, refused before anything is written.
  EXPECT_EQ(shard->Apply({{6, &up}, {5, &up}}, &results).code(), absl::StatusCode::kInternal);
}

// Replicas that apply the same entries, batched differently, one of them
// sealing and compacting in between, hold the same data and answer searches
// alike; a replica that crashed half-way and applies everything again agrees.
TEST_F(ShardApplyTest, ReplicasAgreeHoweverTheyBatchSealOrCrash) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  std::vector<ShardCommand> cmds;
  const char* colors[] = {"red", "blue", "green"};
  for (int i = 0; i < 400; ++i) {
    const int op = static_cast<int>(rng() % 10);
    const uint64_t id = rng() % 60;
    if (op < 6) {
      std::vector<PreparedPoint> pts;
      for (int j = 0; j < 1 + static_cast<int>(rng() % 4); ++j) {
        const uint64_t pid = (id + static_cast<uint64_t>(j) * 17) % 60;
        bool dup = false;
        for (const auto& p : pts) dup = dup || p.id == PointId(pid);
        if (dup) continue;
        pts.push_back(Point(pid, static_cast<float>(rng() % 1000) / 10.0f,
                            Json{{"color", colors[rng() % 3]}, {"n", static_cast<int>(rng() % 100)}}));
      }
      cmds.push_back(UpsertCmd(std::move(pts)));
    } else if (op < 8) {
      cmds.push_back(DeleteCmd({id, (id + 1) % 60}));
    } else if (op < 9) {
      cmds.push_back(SetPayloadCmd({id}, Json{{"n", static_cast<int>(rng() % 100)}}, rng() % 2 == 0));
    } else {
      cmds.push_back(DeleteByFilterCmd(absl::StrCat(R"({"must":[{"key":"n","range":{"lt":)", rng() % 8, "}}]})")));
    }
  }
  auto a = Open("a");  // everything in one call
  auto b = Open("b");  // one entry per call, sealing and compacting as it goes
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ApplyRange(*a, cmds, 0, cmds.size());
  for (size_t i = 0; i < cmds.size(); ++i) {
    ApplyRange(*b, cmds, i, i + 1);
    if (i % 97 == 50) {
      ASSERT_TRUE(b->Seal(true).ok());
      ASSERT_TRUE(b->Compact(true).ok());
    }
  }
  {
    auto c = Open("c");  // half, a crash, then everything again
    ASSERT_NE(c, nullptr);
    ApplyRange(*c, cmds, 0, cmds.size() / 2);
  }
  auto c = Open("c");
  ASSERT_NE(c, nullptr);
  ApplyRange(*c, cmds, 0, cmds.size());

  const Shard::Checksum ca = ChecksumOf(*a);
  EXPECT_EQ(ca.applied_index, cmds.size());
  EXPECT_GT(ca.points, 0u) << "seed " << seed;
  for (const Shard* s : {b.get(), c.get()}) {
    const Shard::Checksum cs = ChecksumOf(*s);
    EXPECT_EQ(cs.applied_index, ca.applied_index) << "seed " << seed;
    EXPECT_EQ(cs.points, ca.points) << "seed " << seed;
    EXPECT_EQ(cs.hash, ca.hash) << "seed " << seed;
  }
  // The checksum sees a difference in one vector.
  ShardCommand extra = UpsertCmd({Point(1, 123, Json{{"color", "red"}})});
  std::vector<Shard::ApplyResult> r;
  ASSERT_TRUE(b->Apply({{cmds.size() + 1, &extra}}, &r).ok());
  EXPECT_NE(ChecksumOf(*b).hash, ca.hash);

  // Exact searches agree between a (never sealed) and c.
  SearchParams params;
  params.k = 10;
  params.exact = true;
  params.with_payload = false;
  for (float q : {0.0f, 25.0f, 80.0f}) {
    const std::vector<float> query = {q, q + 1, q * 2, -q};
    std::vector<std::vector<ScoredPoint>> ra, rc;
    ASSERT_TRUE(a->Search(query.data(), 1, params, &ra).ok());
    ASSERT_TRUE(c->Search(query.data(), 1, params, &rc).ok());
    ASSERT_EQ(ra[0].size(), rc[0].size());
    for (size_t i = 0; i < ra[0].size(); ++i) {
      EXPECT_EQ(ra[0][i].id, rc[0][i].id);
      EXPECT_FLOAT_EQ(ra[0][i].score, rc[0][i].score);
    }
  }
}

namespace split {

ShardCommand SplitCmd(HashClass keep, HashClass child, uint64_t child_group) {
  ShardCommand c;
  c.kind = ShardCommand::Kind::kSplit;
  c.keep = keep;
  c.child = child;
  c.child_group = child_group;
  return c;
}

}  // namespace split

TEST(HashRouterTest, EvenRoutingIsTheHashModuloTheShardCountAndSplitsRefineIt) {
  const HashRouter even = HashRouter::Even(3);
  std::vector<std::string> keys;
  for (uint64_t id = 0; id < 500; ++id) keys.push_back(ExternalKey(PointId(id)));
  for (const auto& k : keys) EXPECT_EQ(even.ShardOf(k), StableHash(k) % 3);
  // Shard 0 of 3 split, then its child (6, 3) split again.
  const std::vector<HashClass> classes = {{6, 0}, {3, 1}, {3, 2}, {12, 3}, {12, 9}};
  auto router = HashRouter::Build(classes);
  ASSERT_TRUE(router.ok()) << router.status();
  std::vector<int> per_shard(classes.size());
  for (const auto& k : keys) {
    const size_t s = router->ShardOf(k);
    ASSERT_LT(s, classes.size());
    EXPECT_TRUE(classes[s].Contains(k));
    // A key that stayed in an unsplit shard goes where it always went.
    if (s == 1 || s == 2) {
      EXPECT_EQ(s, even.ShardOf(k));
    }
    ++per_shard[s];
  }
  for (int n : per_shard) EXPECT_GT(n, 0);
  EXPECT_FALSE(HashRouter::Build({{4, 0}, {2, 1}}).ok());          // residue 2 of 4 is nobody's
  EXPECT_FALSE(HashRouter::Build({{2, 0}, {2, 1}, {4, 1}}).ok());  // overlap
  EXPECT_FALSE(HashRouter::Build({{3, 0}, {2, 1}}).ok());          // 2 does not divide 3
  EXPECT_FALSE(HashRouter::Build({}).ok());
}

TEST(ShardCommandTest, ASplitRoundTripsAndAMalformedOneIsRefused) {
  auto c = split::SplitCmd({4, 1}, {4, 3}, 17);
  auto back = ShardCommand::Decode(c.Encode());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->kind, ShardCommand::Kind::kSplit);
  EXPECT_EQ(back->keep, (HashClass{4, 1}));
  EXPECT_EQ(back->child, (HashClass{4, 3}));
  EXPECT_EQ(back->child_group, 17u);
  auto done = split::SplitCmd({4, 1}, {4, 3}, 17);
  done.kind = ShardCommand::Kind::kSplitDone;
  back = ShardCommand::Decode(done.Encode());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->kind, ShardCommand::Kind::kSplitDone);
  EXPECT_EQ(back->keep, (HashClass{4, 1}));
  for (const auto& bad : {split::SplitCmd({4, 1}, {4, 1}, 17), split::SplitCmd({4, 1}, {8, 3}, 17),
                          split::SplitCmd({4, 5}, {4, 3}, 17), split::SplitCmd({4, 1}, {4, 3}, 0)}) {
    EXPECT_EQ(ShardCommand::Decode(bad.Encode()).status().code(), absl::StatusCode::kDataLoss);
  }
}

TEST_F(ShardApplyTest, ASplitLeavesEachHalfOnOneSideAndRefusesWritesOfTheOther) {
  auto parent = Open("parent");
  ASSERT_NE(parent, nullptr);
  std::vector<PreparedPoint> points;
  for (uint64_t id = 1; id <= 300; ++id) points.push_back(Point(id, static_cast<float>(id), Json{{"color", "red"}}));
  std::vector<ShardCommand> cmds = {UpsertCmd(points)};
  cmds[0].request_id = "load";
  ASSERT_TRUE(ApplyRange(*parent, cmds, 0, 1)[0].status.ok());
  // The child's first state: a copy as of the entry before the split.
  const std::string child_dir = (fs::path(dir_) / "child").string();
  ASSERT_TRUE(Shard::SnapshotAll({parent.get()}, {child_dir}).ok());
  const HashClass keep{2, 1}, moved{2, 0};
  // The fence: writes of the moved half are refused from now on, reads
  // still see the whole shard (that half no longer changes here).
  uint64_t mine = 0, theirs = 0;
  for (uint64_t id = 500; mine == 0 || theirs == 0; ++id) {
    (keep.Contains(ExternalKey(PointId(id))) ? mine : theirs) = id;
  }
  cmds.push_back(split::SplitCmd(keep, moved, 9));
  cmds.push_back(UpsertCmd({Point(theirs, 2, Json::object())}));
  cmds.push_back(DeleteByFilterCmd(R"({"must":[{"key":"color","match":{"value":"red"}}]})"));  // the old map's
  cmds.push_back(split::SplitCmd({4, 0}, {4, 2}, 10));  // another split meanwhile
  auto results = ApplyRange(*parent, cmds, 1, 5);
  ASSERT_TRUE(results[0].status.ok()) << results[0].status;
  EXPECT_EQ(results[0].count, 2u);  // the index it was applied at
  EXPECT_TRUE(IsMovedBySplit(results[1].status)) << results[1].status;
  EXPECT_TRUE(IsMovedBySplit(results[2].status)) << results[2].status;
  EXPECT_EQ(results[3].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(parent->split_record().fenced());
  EXPECT_EQ(parent->split_record().writes, keep);
  EXPECT_EQ(parent->split_record().cls, HashClass{});
  EXPECT_EQ(*parent->Count(nullptr), 300u);
  // A delete by filter of the new map's takes the kept half only.
  ShardCommand kept_delete = DeleteByFilterCmd(R"({"must":[{"key":"color","match":{"value":"blue"}}]})");
  kept_delete.expect = keep;
  cmds.push_back(kept_delete);
  results = ApplyRange(*parent, cmds, 5, 6);
  EXPECT_TRUE(results[0].status.ok()) << results[0].status;
  // The end: the shard holds its half only.
  ShardCommand done = split::SplitCmd(keep, moved, 9);
  done.kind = ShardCommand::Kind::kSplitDone;
  cmds.push_back(done);
  results = ApplyRange(*parent, cmds, 6, 7);
  ASSERT_TRUE(results[0].status.ok()) << results[0].status;
  EXPECT_FALSE(parent->split_record().fenced());
  EXPECT_EQ(parent->split_record().cls, keep);
  EXPECT_EQ(parent->split_record().child_group, 9u);
  EXPECT_EQ(parent->split_record().index, 2u);
  EXPECT_EQ(parent->applied_index(), 7u);
  {
    auto child = Shard::Open(child_dir, Options());
    ASSERT_TRUE(child.ok()) << child.status();
    ASSERT_TRUE((*child)->KeepHashClass(moved, 1).ok());
    EXPECT_EQ((*child)->applied_index(), 1u);
    EXPECT_EQ((*child)->split_record().cls, moved);
    uint64_t in_parent = 0, in_child = 0;
    for (uint64_t id = 1; id <= 300; ++id) {
      const std::string key = ExternalKey(PointId(id));
      const bool p = GetOne(*parent, id).has_value(), c = GetOne(**child, id).has_value();
      EXPECT_NE(p, c) << "point " << id << " is on one side exactly";
      EXPECT_EQ(p, keep.Contains(key)) << id;
      in_parent += p;
      in_child += c;
    }
    EXPECT_EQ(in_parent + in_child, 300u);
    EXPECT_EQ(*parent->Count(nullptr), in_parent);
    EXPECT_EQ(*(*child)->Count(nullptr), in_child);
    // The child forgot the parent's request ids: its log starts over, and
    // the same id there is another request.
    std::vector<ShardCommand> child_cmds = {UpsertCmd({Point(1000, 1, Json::object())})};
    child_cmds[0].request_id = "load";
    for (uint64_t id = 1000;; ++id) {
      if (moved.Contains(ExternalKey(PointId(id)))) {
        child_cmds[0].points[0] = Point(id, 1, Json::object());
        break;
      }
    }
    std::vector<Shard::LogEntry> entries = {{2, &child_cmds[0]}};  // the child's log
    std::vector<Shard::ApplyResult> r;
    ASSERT_TRUE((*child)->Apply(entries, &r).ok());
    EXPECT_TRUE(r[0].status.ok()) << r[0].status;
    EXPECT_EQ(r[0].count, 1u);
    EXPECT_EQ(*(*child)->Count(nullptr), in_child + 1);
  }
  // A write naming an id of the other half changes nothing, on every replica alike.
  const uint64_t before = *parent->Count(nullptr);
  cmds.push_back(UpsertCmd({Point(mine, 1, Json::object()), Point(theirs, 2, Json::object())}));
  cmds.push_back(DeleteCmd({theirs}));
  cmds.push_back(UpsertCmd({Point(mine, 1, Json::object())}));
  cmds.push_back(split::SplitCmd(keep, moved, 9));  // both proposed again: nothing more
  cmds.push_back(done);
  results = ApplyRange(*parent, cmds, 7, 12);
  EXPECT_TRUE(IsMovedBySplit(results[0].status)) << results[0].status;
  EXPECT_TRUE(IsMovedBySplit(results[1].status)) << results[1].status;
  EXPECT_TRUE(results[2].status.ok()) << results[2].status;
  EXPECT_TRUE(results[3].status.ok()) << results[3].status;
  EXPECT_EQ(results[3].count, 2u);
  EXPECT_TRUE(results[4].status.ok()) << results[4].status;
  EXPECT_EQ(*parent->Count(nullptr), before + 1);
  EXPECT_EQ(parent->applied_index(), 12u);
  EXPECT_EQ(parent->split_record().cls, keep);
  // The record survives a reopen, and what the split left outside stays
  // unseen: by Get, Scroll, Count, search.
  const Shard::Checksum sum = ChecksumOf(*parent);
  parent.reset();
  parent = Open("parent");
  ASSERT_NE(parent, nullptr);
  EXPECT_EQ(parent->split_record().cls, keep);
  EXPECT_FALSE(parent->split_record().fenced());
  EXPECT_EQ(parent->split_record().index, 2u);
  EXPECT_EQ(*parent->Count(nullptr), before + 1);
  EXPECT_EQ(ChecksumOf(*parent).hash, sum.hash);
  auto visible = [&](Shard& s) {
    std::vector<Record> page;
    std::string last;
    bool more = false;
    EXPECT_TRUE(s.Scroll("", 1000, nullptr, false, false, &page, &last, &more).ok());
    std::set<uint64_t> ids;
    for (const auto& r : page) ids.insert(r.id.number());
    SearchParams p;
    p.k = 400;
    p.exact = true;
    std::vector<std::vector<ScoredPoint>> hits;
    const std::vector<float> q = {1, 2, 2, -1};
    EXPECT_TRUE(s.Search(q.data(), 1, p, &hits).ok());
    for (const auto& h : hits[0]) EXPECT_TRUE(ids.count(h.id.number())) << "search found " << h.id.ToString();
    return ids;
  };
  for (uint64_t id : visible(*parent)) EXPECT_TRUE(keep.Contains(ExternalKey(PointId(id)))) << id;
  uint64_t moved_id = 1;
  while (keep.Contains(ExternalKey(PointId(moved_id)))) ++moved_id;
  EXPECT_FALSE(GetOne(*parent, moved_id)) << "point " << moved_id << " is the other shard's";
  // Storage lets them go in batches; the data (checksum) is the same before
  // and after, as on a replica that has not got to it yet.
  int batches = 0;
  while (true) {
    auto more = parent->DropForeign(32);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    ++batches;
  }
  EXPECT_GE(batches, 4);  // about 150 points outside, 32 at a time
  EXPECT_EQ(ChecksumOf(*parent).hash, sum.hash);
  EXPECT_EQ(*parent->Count(nullptr), before + 1);
  parent.reset();
  parent = Open("parent");
  ASSERT_NE(parent, nullptr);
  EXPECT_EQ(parent->DropForeign(32).value_or(true), false) << "nothing is left to drop";
  EXPECT_EQ(ChecksumOf(*parent).hash, sum.hash);
}

// A split's copy opened for its new group loads only the class it keeps, and
// takes the vectors of its growing segment from the parent's memory (or from
// storage where the parent has none): the same shard either way, whatever
// the metric (a vector prepared once, never twice).
TEST_F(ShardApplyTest, ASplitsCopyLoadsItsHalfOnlyWithVectorsFromTheParentsMemory) {
  for (Metric metric : {Metric::kL2, Metric::kCosine}) {
    SCOPED_TRACE(static_cast<int>(metric));
    ShardOptions o = Options();
    o.metric = metric;
    const std::string parent_dir = (fs::path(dir_) / absl::StrCat("parent-", static_cast<int>(metric))).string();
    auto parent = Shard::Open(parent_dir, o);
    ASSERT_TRUE(parent.ok()) << parent.status();
    std::vector<ShardCommand> cmds;
    for (uint64_t from : {1, 151}) {
      std::vector<PreparedPoint> points;
      for (uint64_t id = from; id < from + 150; ++id) {
        points.push_back(Point(id, static_cast<float>(id % 37) - 11.5f, Json{{"color", id % 2 ? "red" : "blue"}}));
      }
      cmds.push_back(UpsertCmd(points));
      cmds.back().request_id = absl::StrCat("load-", from);
    }
    ASSERT_TRUE(ApplyRange(**parent, cmds, 0, 1)[0].status.ok());
    ASSERT_TRUE((*parent)->Seal(/*force=*/true).ok());  // ids 1..150 in a sealed segment, the rest growing
    ASSERT_TRUE(ApplyRange(**parent, cmds, 1, 2)[0].status.ok());
    auto empty = Shard::Open((fs::path(parent_dir) / "empty").string(), o);
    ASSERT_TRUE(empty.ok()) << empty.status();
    const HashClass moved{2, 1};
    std::vector<std::unique_ptr<Shard>> copies;
    for (const Shard* source : {static_cast<const Shard*>(nullptr), static_cast<const Shard*>(parent->get()),
                                static_cast<const Shard*>(empty->get())}) {
      const std::string dir = absl::StrCat(parent_dir, "-copy-", copies.size());
      ASSERT_TRUE(Shard::SnapshotAll({parent->get()}, {dir}).ok());
      ShardOptions co = o;
      co.load_class = moved;
      auto copy = Shard::Open(dir, co, source);
      ASSERT_TRUE(copy.ok()) << copy.status();
      copies.push_back(std::move(*copy));
    }
    size_t in_class = 0;
    for (uint64_t id = 1; id <= 300; ++id) in_class += moved.Contains(ExternalKey(PointId(id)));
    ASSERT_GT(in_class, 100u);
    ASSERT_LT(in_class, 200u);
    for (auto& c : copies) {
      EXPECT_EQ(*c->Count(nullptr), in_class);
      for (uint64_t id = 1; id <= 300; ++id) {
        auto r = GetOne(*c, id);
        ASSERT_EQ(r.has_value(), moved.Contains(ExternalKey(PointId(id)))) << id;
        if (r) {
          EXPECT_EQ(r->vector, Point(id, static_cast<float>(id % 37) - 11.5f, Json::object()).vector) << id;
        }
      }
    }
    // Searches over the graph and exact ones find the same points at the
    // same scores in each copy, and only points of the class.
    for (bool exact : {false, true}) {
      for (float x : {-3.0f, 0.5f, 7.0f}) {
        SearchParams p;
        p.k = 20;
        p.ef = 400;
        p.exact = exact;
        const std::vector<float> q = {x, 1 - x, 2 * x + 1, -x};
        std::vector<std::vector<std::vector<ScoredPoint>>> hits(copies.size());
        for (size_t i = 0; i < copies.size(); ++i) ASSERT_TRUE(copies[i]->Search(q.data(), 1, p, &hits[i]).ok());
        ASSERT_EQ(hits[0][0].size(), 20u);
        for (size_t i = 1; i < copies.size(); ++i) {
          ASSERT_EQ(hits[i][0].size(), hits[0][0].size()) << "copy " << i;
          for (size_t j = 0; j < hits[0][0].size(); ++j) {
            EXPECT_EQ(hits[i][0][j].id, hits[0][0][j].id) << "copy " << i << " hit " << j;
            EXPECT_EQ(hits[i][0][j].score, hits[0][0][j].score) << "copy " << i << " hit " << j;
          }
        }
        for (const auto& h : hits[0][0]) EXPECT_TRUE(moved.Contains(ExternalKey(h.id))) << h.id.ToString();
      }
    }
    // The class kept (as for the new group): nothing else changes, and each
    // copy holds the same data.
    for (auto& c : copies) {
      ASSERT_TRUE(c->KeepHashClass(moved, 1).ok());
      EXPECT_EQ(c->split_record().cls, moved);
      EXPECT_EQ(*c->Count(nullptr), in_class);
    }
    EXPECT_EQ(ChecksumOf(*copies[1]).hash, ChecksumOf(*copies[0]).hash);
    EXPECT_EQ(ChecksumOf(*copies[2]).hash, ChecksumOf(*copies[0]).hash);
  }
}

}  // namespace
}  // namespace cairn::db
