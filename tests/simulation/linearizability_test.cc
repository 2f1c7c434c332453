#include "tests/simulation/linearizability.h"

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace cairn::sim {
namespace {

HistoryOp Put(uint64_t client, std::string key, std::string value, uint64_t call, uint64_t ret) {
  return HistoryOp{client, KvOp{KvOp::Kind::kPut, std::move(key), std::move(value), ""}, "ok", true, call, ret};
}
HistoryOp Get(uint64_t client, std::string key, std::string out, uint64_t call, uint64_t ret) {
  return HistoryOp{client, KvOp{KvOp::Kind::kGet, std::move(key), "", ""}, std::move(out), true, call, ret};
}
HistoryOp Cas(uint64_t client, std::string key, std::string expected, std::string value, std::string out,
              uint64_t call, uint64_t ret) {
  return HistoryOp{client, KvOp{KvOp::Kind::kCas, std::move(key), std::move(value), std::move(expected)},
                   std::move(out), true, call, ret};
}
HistoryOp Unfinished(HistoryOp op) {
  op.completed = false;
  op.output.clear();
  return op;
}

TEST(LinearizabilityTest, SequentialHistoryPasses) {
  std::vector<HistoryOp> h = {Put(1, "x", "a", 1, 2), Get(2, "x", "a", 3, 4), Cas(1, "x", "a", "b", "ok", 5, 6),
                              Get(2, "x", "b", 7, 8), Cas(2, "x", "a", "c", "fail", 9, 10),
                              Get(1, "y", std::string(kAbsent), 11, 12)};
  EXPECT_TRUE(CheckKvLinearizable(h).ok);
}

TEST(LinearizabilityTest, ConcurrentOperationsMayTakeEitherOrder) {
  // The put and the get overlap: the get may see the old or the new value.
  for (const std::string& seen : {std::string(kAbsent), std::string("a")}) {
    std::vector<HistoryOp> h = {Put(1, "x", "a", 1, 4), Get(2, "x", seen, 2, 3)};
    EXPECT_TRUE(CheckKvLinearizable(h).ok) << seen;
  }
}

TEST(LinearizabilityTest, StaleReadIsRejected) {
  // The put finished before the get began; the get still saw the old value.
  std::vector<HistoryOp> h = {Put(1, "x", "a", 1, 2), Put(1, "x", "b", 3, 4), Get(2, "x", "a", 5, 6)};
  auto r = CheckKvLinearizable(h);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.key, "x");
  EXPECT_NE(r.explanation.find("get(x)"), std::string::npos);
}

TEST(LinearizabilityTest, LostWriteIsRejected) {
  // Two cas from the same value both succeed: one of them was lost.
  std::vector<HistoryOp> h = {Put(1, "x", "a", 1, 2), Cas(1, "x", "a", "b", "ok", 3, 6),
                              Cas(2, "x", "a", "c", "ok", 4, 5), Get(3, "x", "c", 7, 8)};
  EXPECT_FALSE(CheckKvLinearizable(h).ok);
}

TEST(LinearizabilityTest, ReadsMustAgreeOnOneOrder) {
  // Two readers see two concurrent puts in opposite orders.
  std::vector<HistoryOp> h = {Put(1, "x", "a", 1, 10), Put(2, "x", "b", 1, 10), Get(3, "x", "a", 2, 3),
                              Get(3, "x", "b", 4, 5), Get(4, "x", "b", 2, 3), Get(4, "x", "a", 6, 7)};
  EXPECT_FALSE(CheckKvLinearizable(h).ok);
}

TEST(LinearizabilityTest, UnfinishedWriteMayOrMayNotHaveHappened) {
  // A put that never returned: later reads may see it, or not, but not both.
  std::vector<HistoryOp> seen = {Unfinished(Put(1, "x", "a", 1, 0)), Get(2, "x", "a", 5, 6)};
  EXPECT_TRUE(CheckKvLinearizable(seen).ok);
  std::vector<HistoryOp> not_seen = {Unfinished(Put(1, "x", "a", 1, 0)), Get(2, "x", std::string(kAbsent), 5, 6)};
  EXPECT_TRUE(CheckKvLinearizable(not_seen).ok);
  std::vector<HistoryOp> flicker = {Unfinished(Put(1, "x", "a", 1, 0)), Get(2, "x", "a", 5, 6),
                                    Get(2, "x", std::string(kAbsent), 7, 8)};
  EXPECT_FALSE(CheckKvLinearizable(flicker).ok);
  // It cannot have happened before it was called.
  std::vector<HistoryOp> early = {Get(2, "x", "a", 1, 2), Unfinished(Put(1, "x", "a", 3, 0))};
  EXPECT_FALSE(CheckKvLinearizable(early).ok);
}

TEST(LinearizabilityTest, KeysAreIndependent) {
  std::vector<HistoryOp> h = {Put(1, "x", "a", 1, 2), Put(1, "y", "b", 3, 4), Get(2, "x", "a", 5, 6),
                              Get(2, "y", "b", 7, 8)};
  EXPECT_TRUE(CheckKvLinearizable(h).ok);
  h.push_back(Get(3, "y", std::string(kAbsent), 9, 10));
  auto r = CheckKvLinearizable(h);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.key, "y");
}

TEST(LinearizabilityTest, ManyConcurrentOperationsFinish) {
  // 3 clients x 200 overlapping puts and gets on one key: the memoized search
  // stays small.
  std::vector<HistoryOp> h;
  uint64_t t = 0;
  std::string last = std::string(kAbsent);
  for (int i = 0; i < 200; ++i) {
    const uint64_t c1 = ++t, c2 = ++t, c3 = ++t;
    const std::string v = absl::StrCat("v", i);
    h.push_back(Put(1, "x", v, c1, c1 + 4));
    h.push_back(Get(2, "x", last, c2, c2 + 2));  // overlaps the put: old value is fine
    h.push_back(Get(3, "x", v, c3 + 2, c3 + 3));  // after the put returned
    t += 4;
    last = v;
  }
  auto r = CheckKvLinearizable(h);
  EXPECT_TRUE(r.ok);
  EXPECT_FALSE(r.gave_up);
}

TEST(KvModelTest, CommandsRoundTripAndSessionsDedupe) {
  Command c{7, 3, KvOp{KvOp::Kind::kCas, "k", "new", "old"}};
  auto back = DecodeCommand(EncodeCommand(c));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->client, 7u);
  EXPECT_EQ(back->op.expected, "old");
  EXPECT_FALSE(DecodeCommand("").has_value());
  EXPECT_FALSE(DecodeCommand(EncodeCommand(c) + "x").has_value());

  KvStateMachine sm;
  EXPECT_EQ(sm.Apply(Command{1, 1, KvOp{KvOp::Kind::kPut, "k", "a", ""}}), "ok");
  EXPECT_EQ(sm.Apply(Command{2, 1, KvOp{KvOp::Kind::kCas, "k", "b", "a"}}), "ok");
  EXPECT_EQ(sm.Apply(Command{1, 1, KvOp{KvOp::Kind::kPut, "k", "a", ""}}), "ok");  // retried: not applied again
  EXPECT_EQ(sm.Read("k"), "b");
  EXPECT_EQ(sm.Apply(Command{2, 1, KvOp{KvOp::Kind::kCas, "k", "b", "a"}}), "ok");  // first result again
  EXPECT_EQ(KvStateMachine::Restore(sm.Serialize()), sm);
}

}  // namespace
}  // namespace cairn::sim
