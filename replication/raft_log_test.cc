#include "replication/raft_log.h"

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "replication/log_storage.h"
#include "replication/test_network.h"

namespace cairn::raft {
namespace {

TEST(RaftLogTest, UnstableEntriesShadowStorageUntilStable) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(TestEntries({{1, 1}, {2, 1}, {3, 1}})).ok());
  RaftLog log(&s, 1, 0);
  EXPECT_EQ(log.LastIndex(), 3u);
  // Replace index 3 onward (not committed).
  EXPECT_EQ(log.Append(TestEntries({{3, 2}, {4, 2}})), 4u);
  EXPECT_EQ(*log.Term(3), 2u);
  EXPECT_EQ(log.UnstableEntries().size(), 2u);
  auto sl = log.Slice(2, 5, UINT64_MAX);
  ASSERT_TRUE(sl.ok());
  ASSERT_EQ(sl->size(), 3u);
  EXPECT_EQ((*sl)[0].term, 1u);
  EXPECT_EQ((*sl)[1].term, 2u);
  // The driver persists them; a stale StableTo (wrong term) is ignored.
  ASSERT_TRUE(s.Append(log.UnstableEntries()).ok());
  log.StableTo(4, 1);
  EXPECT_EQ(log.UnstableEntries().size(), 2u);
  log.StableTo(4, 2);
  EXPECT_TRUE(log.UnstableEntries().empty());
  EXPECT_EQ(*log.Term(4), 2u);
}

TEST(RaftLogTest, MaybeAppendKeepsMatchingEntriesAndTruncatesConflicts) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(TestEntries({{1, 1}, {2, 1}, {3, 2}, {4, 2}})).ok());
  RaftLog log(&s, 1, 0);
  // A mismatching previous entry: refused.
  EXPECT_FALSE(log.MaybeAppend(2, 5, 0, {}).has_value());
  // A delayed duplicate of entries we hold must not truncate the suffix.
  auto last = log.MaybeAppend(1, 1, 2, TestEntries({{2, 1}}));
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(*last, 2u);
  EXPECT_EQ(log.LastIndex(), 4u);
  EXPECT_EQ(log.committed(), 2u);
  // A conflict at 3: replaced from there.
  last = log.MaybeAppend(2, 1, 10, TestEntries({{3, 3}}));
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(log.LastIndex(), 3u);
  EXPECT_EQ(log.committed(), 3u);  // min(leader commit, last new)
}

// §5.3 and Figure 2: the follower commits min(leader commit, last new
// entry), never an entry past what this message proved it shares.
TEST(RaftLogTest, CommitStopsAtTheLastEntryTheMessageMatched) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(TestEntries({{1, 1}, {2, 1}, {3, 2}, {4, 2}})).ok());  // 3, 4: a deposed leader's
  RaftLog log(&s, 1, 0);
  auto last = log.MaybeAppend(1, 1, /*commit=*/4, TestEntries({{2, 1}}));
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(*last, 2u);
  EXPECT_EQ(log.committed(), 2u);
  EXPECT_EQ(log.LastIndex(), 4u);
}

TEST(RaftLogTest, FindConflictByTermSkipsWholeTerms) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(TestEntries({{1, 1}, {2, 1}, {3, 3}, {4, 3}, {5, 3}, {6, 4}})).ok());
  RaftLog log(&s, 0, 0);
  EXPECT_EQ(log.FindConflictByTerm(6, 2), (std::pair<uint64_t, uint64_t>{2, 1}));
  EXPECT_EQ(log.FindConflictByTerm(6, 3), (std::pair<uint64_t, uint64_t>{5, 3}));
  EXPECT_EQ(log.FindConflictByTerm(6, 9), (std::pair<uint64_t, uint64_t>{6, 4}));
}

TEST(RaftLogTest, CommitOnlyCurrentTermByCounting) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(TestEntries({{1, 1}, {2, 2}})).ok());
  RaftLog log(&s, 0, 0);
  EXPECT_FALSE(log.MaybeCommit(2, 3));
  EXPECT_TRUE(log.MaybeCommit(2, 2));
  EXPECT_EQ(log.committed(), 2u);
  EXPECT_EQ(log.NextCommitted(UINT64_MAX).size(), 2u);
  log.AppliedTo(2);
  EXPECT_FALSE(log.HasNextCommitted());
}

TEST(RaftLogTest, RestoreFromASnapshot) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(TestEntries({{1, 1}, {2, 1}})).ok());
  RaftLog log(&s, 1, 1);
  Snapshot snap;
  snap.meta = SnapshotMeta{.index = 20, .term = 5, .conf = {}};
  log.Restore(snap);
  EXPECT_EQ(log.FirstIndex(), 21u);
  EXPECT_EQ(log.LastIndex(), 20u);
  EXPECT_EQ(log.committed(), 20u);
  EXPECT_EQ(*log.Term(20), 5u);
  EXPECT_EQ(log.Term(2).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(log.HasNextCommitted());  // the snapshot is applied, not entries
  log.Append(TestEntries({{21, 5}}));
  EXPECT_EQ(log.LastIndex(), 21u);
}

}  // namespace
}  // namespace cairn::raft
