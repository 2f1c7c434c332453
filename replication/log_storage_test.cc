// The LogStorage contract, checked for MemoryStorage and RocksLogStorage
// alike; then what only durable storage does: survive a reopen, and refuse
// a malformed log.
#include <stdlib.h>

#include <filesystem>
#include <functional>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "replication/log_storage.h"
#include "replication/rocksdb_log_storage.h"
#include "replication/test_network.h"
#include "storage/kv_store.h"

namespace cairn::raft {
namespace {

std::string NewTempDir() {
  std::string tmpl = (std::filesystem::path(::testing::TempDir()) / "cairn-raft-XXXXXX").string();
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

class LogStorageTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "memory") {
      s_ = std::make_unique<MemoryStorage>();
    } else {
      dir_ = NewTempDir();
      auto r = RocksLogStorage::Open(dir_ + "/log");
      ASSERT_TRUE(r.ok()) << r.status();
      s_ = std::move(*r);
    }
  }
  void TearDown() override {
    s_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<LogStorage> s_;
  std::string dir_;
};

TEST_P(LogStorageTest, AppendTruncatesConflictsAndCompacts) {
  LogStorage& s = *s_;
  EXPECT_EQ(s.FirstIndex(), 1u);
  EXPECT_EQ(s.LastIndex(), 0u);
  EXPECT_EQ(*s.Term(0), 0u);
  ASSERT_TRUE(s.Append(TestEntries({{1, 1}, {2, 1}, {3, 2}})).ok());
  EXPECT_EQ(s.LastIndex(), 3u);
  ASSERT_TRUE(s.Append(TestEntries({{3, 3}, {4, 3}})).ok());  // replaces 3
  EXPECT_EQ(*s.Term(3), 3u);
  EXPECT_EQ(s.LastIndex(), 4u);
  auto all = s.Entries(1, 5, UINT64_MAX);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[2], (Entry{.term = 3, .index = 3, .data = "d3"}));
  EXPECT_EQ(s.Append(TestEntries({{7, 3}})).code(), absl::StatusCode::kInternal);  // a gap
  ASSERT_TRUE(s.CreateSnapshot(3, ConfState{.voters = {1}, .learners = {2}}, "snap", 1).ok());
  EXPECT_EQ(s.GetSnapshot().meta.index, 3u);
  EXPECT_EQ(s.GetSnapshot().meta.term, 3u);
  EXPECT_EQ(s.GetSnapshot().data, "snap");
  EXPECT_EQ(s.FirstIndex(), 3u);  // one entry kept before the snapshot point
  EXPECT_EQ(*s.Term(2), 1u);
  EXPECT_EQ(s.Term(1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.Term(9).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(s.Entries(1, 3, UINT64_MAX).status().code(), absl::StatusCode::kNotFound);
  auto one = s.Entries(3, 5, 0);  // a zero byte budget still returns one entry
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->size(), 1u);
  EXPECT_EQ(s.InitialConfState().learners, (std::vector<uint64_t>{2}));
}

TEST_P(LogStorageTest, ApplySnapshotReplacesTheLog) {
  LogStorage& s = *s_;
  ASSERT_TRUE(s.Append(TestEntries({{1, 1}, {2, 1}})).ok());
  Snapshot snap;
  snap.meta = SnapshotMeta{.index = 10, .term = 4, .conf = ConfState{.voters = {1, 2}, .learners = {}}};
  snap.data = "state";
  ASSERT_TRUE(s.ApplySnapshot(snap).ok());
  EXPECT_EQ(s.FirstIndex(), 11u);
  EXPECT_EQ(s.LastIndex(), 10u);
  EXPECT_EQ(*s.Term(10), 4u);
  ASSERT_TRUE(s.Append(TestEntries({{11, 4}})).ok());
  EXPECT_EQ(s.LastIndex(), 11u);
  // An older snapshot changes nothing.
  snap.meta.index = 5;
  ASSERT_TRUE(s.ApplySnapshot(snap).ok());
  EXPECT_EQ(s.LastIndex(), 11u);
}

TEST_P(LogStorageTest, SaveReadyWritesSnapshotEntriesAndHardState) {
  Ready rd;
  rd.snapshot = Snapshot{.meta = SnapshotMeta{.index = 5, .term = 2, .conf = ConfState{.voters = {1}, .learners = {}}},
                         .data = "s"};
  rd.entries = TestEntries({{6, 2}, {7, 3}});
  rd.hard_state = HardState{.term = 3, .vote = 1, .commit = 6};
  ASSERT_TRUE(s_->SaveReady(rd).ok());
  EXPECT_EQ(s_->FirstIndex(), 6u);
  EXPECT_EQ(s_->LastIndex(), 7u);
  EXPECT_EQ(s_->InitialHardState(), (HardState{3, 1, 6}));
  EXPECT_EQ(s_->GetSnapshot().data, "s");
}

INSTANTIATE_TEST_SUITE_P(Impls, LogStorageTest, ::testing::Values("memory", "rocksdb"));

TEST(RocksLogStorageTest, ReopensWithEverythingWritten) {
  const std::string dir = NewTempDir();
  {
    auto s = RocksLogStorage::Open(dir + "/log");
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_TRUE(Bootstrap(s->get(), {1, 2, 3}).ok());
    ASSERT_TRUE((*s)->Append(TestEntries({{2, 2}, {3, 2}, {4, 3}})).ok());
    ASSERT_TRUE((*s)->SetHardState(HardState{.term = 3, .vote = 2, .commit = 3}).ok());
    ASSERT_TRUE((*s)->CreateSnapshot(3, ConfState{.voters = {1, 2, 3}, .learners = {}}, "sm@3", 0).ok());
    EXPECT_EQ(Bootstrap(s->get(), {1}).code(), absl::StatusCode::kFailedPrecondition);
  }
  auto s = RocksLogStorage::Open(dir + "/log");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->InitialHardState(), (HardState{3, 2, 3}));
  EXPECT_EQ((*s)->InitialConfState().voters, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ((*s)->FirstIndex(), 4u);
  EXPECT_EQ((*s)->LastIndex(), 4u);
  EXPECT_EQ(*(*s)->Term(3), 2u);
  EXPECT_EQ((*s)->GetSnapshot().data, "sm@3");
  auto e = (*s)->Entries(4, 5, UINT64_MAX);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ((*e)[0].data, "d4");
  s->reset();
  std::filesystem::remove_all(dir);
}

TEST(RocksLogStorageTest, MalformedRecordsAreDataLoss) {
  const std::string dir = NewTempDir();
  {
    auto kv = storage::KvStore::Open(dir + "/log", storage::KvOptions{});
    ASSERT_TRUE(kv.ok());
    storage::WriteBatch b;
    // Group 1's hard state ('g', the group id big-endian, 'h'), cut short.
    b.Put(storage::Cf::kMeta, std::string("g\0\0\0\0\0\0\0\1h", 10), "short");
    ASSERT_TRUE((*kv)->Write(b).ok());
  }
  EXPECT_EQ(RocksLogStorage::Open(dir + "/log").status().code(), absl::StatusCode::kDataLoss);
  std::filesystem::remove_all(dir);
}

// A three-node group on RocksDB logs: elect, commit, close everything, reopen
// from disk, and carry on where it stopped.
TEST(RocksLogStorageTest, AGroupSurvivesARestartFromDisk) {
  const std::string dir = NewTempDir();
  auto factory = [dir](uint64_t id) -> std::unique_ptr<LogStorage> {
    auto s = RocksLogStorage::Open(absl::StrCat(dir, "/node-", id));
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  };
  {
    TestNetwork net({1, 2, 3}, nullptr, factory);
    net.Elect(1);
    ASSERT_TRUE(net.raft(1).Propose("a").ok());
    ASSERT_TRUE(net.raft(1).Propose("b").ok());
    net.Settle();
    EXPECT_EQ(net.applied(3), (std::vector<std::string>{"a", "b"}));
  }
  TestNetwork net({1, 2, 3}, nullptr, factory, /*bootstrap=*/false);
  EXPECT_EQ(net.raft(1).term(), 2u);
  net.Settle();  // committed entries come back to be applied again
  EXPECT_EQ(net.applied(2), (std::vector<std::string>{"a", "b"}));
  net.Elect(2);
  ASSERT_TRUE(net.raft(2).Propose("c").ok());
  net.Settle();
  EXPECT_EQ(net.applied(1), (std::vector<std::string>{"a", "b", "c"}));
  std::filesystem::remove_all(dir);
}

// Many groups in one store: each keeps its own log, one SaveReadies writes
// them all, a dropped group leaves the others as they were, and the node's
// own records sit beside them.
TEST(LogStoreTest, GroupsShareOneStoreAndOneWrite) {
  const std::string dir = NewTempDir();
  {
    auto store = LogStore::Open(dir + "/log");
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ((*store)->OpenGroup(0).status().code(), absl::StatusCode::kInvalidArgument);
    std::vector<std::unique_ptr<RocksLogStorage>> logs;
    for (uint64_t gid : {7u, 3u, 256u}) {
      auto g = (*store)->OpenGroup(gid);
      ASSERT_TRUE(g.ok()) << g.status();
      ASSERT_TRUE(Bootstrap(g->get(), {1, 2, 3}).ok());
      logs.push_back(std::move(*g));
    }
    // One write for three groups' Readies, each with its own entries.
    std::vector<Ready> readies(3);
    std::vector<std::pair<RocksLogStorage*, const Ready*>> work;
    for (size_t i = 0; i < 3; ++i) {
      readies[i].entries = TestEntries({{2, 2}, {3, 2}});
      readies[i].entries[1].data = absl::StrCat("group-", logs[i]->group());
      readies[i].hard_state = HardState{.term = 2, .vote = i + 1, .commit = 3};
      work.push_back({logs[i].get(), &readies[i]});
    }
    ASSERT_TRUE((*store)->SaveReadies(work).ok());
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(logs[i]->LastIndex(), 3u);
    ASSERT_TRUE((*store)->PutMeta("cluster_id", "c-1").ok());
    auto groups = (*store)->ListGroups();
    ASSERT_TRUE(groups.ok());
    EXPECT_EQ(*groups, (std::vector<uint64_t>{3, 7, 256}));
    // Dropping group 7 leaves 3 and 256 whole.
    logs.erase(logs.begin());
    ASSERT_TRUE((*store)->DropGroup(7).ok());
  }
  auto store = LogStore::Open(dir + "/log");
  ASSERT_TRUE(store.ok()) << store.status();
  auto groups = (*store)->ListGroups();
  ASSERT_TRUE(groups.ok());
  EXPECT_EQ(*groups, (std::vector<uint64_t>{3, 256}));
  for (uint64_t gid : {3u, 256u}) {
    auto g = (*store)->OpenGroup(gid);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ((*g)->LastIndex(), 3u);
    EXPECT_EQ((*g)->InitialConfState().voters, (std::vector<uint64_t>{1, 2, 3}));
    auto e = (*g)->Entries(3, 4, UINT64_MAX);
    ASSERT_TRUE(e.ok());
    EXPECT_EQ((*e)[0].data, absl::StrCat("group-", gid));
  }
  auto seven = (*store)->OpenGroup(7);
  ASSERT_TRUE(seven.ok());
  EXPECT_EQ((*seven)->LastIndex(), 0u);  // gone: an empty log
  auto id = (*store)->GetMeta("cluster_id");
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->value_or(""), "c-1");
  auto none = (*store)->GetMeta("other");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  store->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace cairn::raft
