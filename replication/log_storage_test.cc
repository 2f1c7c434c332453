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
    b.Put(storage::Cf::kMeta, "raft/hard", "short");
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

}  // namespace
}  // namespace cairn::raft
