#include "replication/raft_log.h"

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "replication/log_storage.h"

namespace cairn::raft {
namespace {

std::vector<Entry> Ents(std::initializer_list<std::pair<uint64_t, uint64_t>> index_term) {
  std::vector<Entry> out;
  for (auto [i, t] : index_term) out.push_back(Entry{.term = t, .index = i, .data = absl::StrCat("d", i)});
  return out;
}

TEST(MemoryStorageTest, AppendTruncatesConflictsAndCompacts) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(Ents({{1, 1}, {2, 1}, {3, 2}})).ok());
  EXPECT_EQ(s.FirstIndex(), 1u);
  EXPECT_EQ(s.LastIndex(), 3u);
  ASSERT_TRUE(s.Append(Ents({{3, 3}, {4, 3}})).ok());  // replaces 3
  EXPECT_EQ(*s.Term(3), 3u);
  EXPECT_EQ(s.LastIndex(), 4u);
  EXPECT_EQ(s.Append(Ents({{7, 3}})).code(), absl::StatusCode::kInternal);  // a gap
  ASSERT_TRUE(s.CreateSnapshot(3, ConfState{.voters = {1}, .learners = {}}, "snap", 1).ok());
  EXPECT_EQ(s.GetSnapshot().meta.index, 3u);
  EXPECT_EQ(s.GetSnapshot().meta.term, 3u);
  EXPECT_EQ(s.FirstIndex(), 3u);  // one entry kept before the snapshot point
  EXPECT_EQ(*s.Term(2), 1u);
  EXPECT_EQ(s.Term(1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.Term(9).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(s.Entries(1, 3, UINT64_MAX).status().code(), absl::StatusCode::kNotFound);
  auto e = s.Entries(3, 5, 0);  // a zero byte budget still returns one entry
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->size(), 1u);
  EXPECT_EQ(s.InitialConfState().voters, (std::vector<uint64_t>{1}));
}

TEST(MemoryStorageTest, ApplySnapshotReplacesTheLog) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(Ents({{1, 1}, {2, 1}})).ok());
  Snapshot snap;
  snap.meta = SnapshotMeta{.index = 10, .term = 4, .conf = ConfState{.voters = {1, 2}, .learners = {}}};
  ASSERT_TRUE(s.ApplySnapshot(snap).ok());
  EXPECT_EQ(s.FirstIndex(), 11u);
  EXPECT_EQ(s.LastIndex(), 10u);
  EXPECT_EQ(*s.Term(10), 4u);
  // An older snapshot changes nothing.
  snap.meta.index = 5;
  ASSERT_TRUE(s.ApplySnapshot(snap).ok());
  EXPECT_EQ(s.LastIndex(), 10u);
}

TEST(RaftLogTest, UnstableEntriesShadowStorageUntilStable) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(Ents({{1, 1}, {2, 1}, {3, 1}})).ok());
  RaftLog log(&s, 1, 0);
  EXPECT_EQ(log.LastIndex(), 3u);
  // Replace index 3 onward (not committed).
  EXPECT_EQ(log.Append(Ents({{3, 2}, {4, 2}})), 4u);
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
  ASSERT_TRUE(s.Append(Ents({{1, 1}, {2, 1}, {3, 2}, {4, 2}})).ok());
  RaftLog log(&s, 1, 0);
  // A mismatching previous entry: refused.
  EXPECT_FALSE(log.MaybeAppend(2, 5, 0, {}).has_value());
  // A delayed duplicate of entries we hold must not truncate the suffix.
  auto last = log.MaybeAppend(1, 1, 2, Ents({{2, 1}}));
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(*last, 2u);
  EXPECT_EQ(log.LastIndex(), 4u);
  EXPECT_EQ(log.committed(), 2u);
  // A conflict at 3: replaced from there.
  last = log.MaybeAppend(2, 1, 10, Ents({{3, 3}}));
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(log.LastIndex(), 3u);
  EXPECT_EQ(log.committed(), 3u);  // min(leader commit, last new)
}

TEST(RaftLogTest, FindConflictByTermSkipsWholeTerms) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(Ents({{1, 1}, {2, 1}, {3, 3}, {4, 3}, {5, 3}, {6, 4}})).ok());
  RaftLog log(&s, 0, 0);
  EXPECT_EQ(log.FindConflictByTerm(6, 2), (std::pair<uint64_t, uint64_t>{2, 1}));
  EXPECT_EQ(log.FindConflictByTerm(6, 3), (std::pair<uint64_t, uint64_t>{5, 3}));
  EXPECT_EQ(log.FindConflictByTerm(6, 9), (std::pair<uint64_t, uint64_t>{6, 4}));
}

TEST(RaftLogTest, CommitOnlyCurrentTermByCounting) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(Ents({{1, 1}, {2, 2}})).ok());
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
  ASSERT_TRUE(s.Append(Ents({{1, 1}, {2, 1}})).ok());
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
  log.Append(Ents({{21, 5}}));
  EXPECT_EQ(log.LastIndex(), 21u);
}

}  // namespace
}  // namespace cairn::raft
