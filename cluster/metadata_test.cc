// The metadata group's state machine and placement: replicas and preferred
// leaders spread evenly, never two replicas of a shard on one node, nodes that
// are down used last; commands checked against the state at their index.
#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"
#include "cluster/metadata.h"
#include "gtest/gtest.h"

namespace cairn::cluster {
namespace {

MetadataState StateWithNodes(int n) {
  MetadataState st;
  for (int i = 1; i <= n; ++i) st.nodes[static_cast<uint64_t>(i) * 10] = NodeInfo{static_cast<uint64_t>(i) * 10, absl::StrCat("n", i), "a:1", ""};
  return st;
}

TEST(PlaceShardsTest, ReplicasAndLeadersSpreadEvenly) {
  struct Case {
    int nodes;
    uint32_t shards, rf;
  };
  for (const Case& c : {Case{5, 5, 3}, Case{3, 6, 1}, Case{3, 3, 3}, Case{5, 7, 3}, Case{4, 6, 2}, Case{6, 12, 3},
                        Case{7, 9, 5}}) {
    SCOPED_TRACE(absl::StrCat(c.nodes, " nodes, ", c.shards, " shards x ", c.rf));
    MetadataState st = StateWithNodes(c.nodes);
    auto p = PlaceShards(st, c.shards, c.rf);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_EQ(p->size(), c.shards);
    std::map<uint64_t, int> replicas, leaders;
    for (const auto& shard : *p) {
      ASSERT_EQ(shard.size(), c.rf);
      EXPECT_EQ(std::set<uint64_t>(shard.begin(), shard.end()).size(), c.rf) << "two replicas on one node";
      for (uint64_t n : shard) ++replicas[n];
      ++leaders[shard[0]];
    }
    auto spread = [&](std::map<uint64_t, int>& m) {
      int lo = 1 << 30, hi = 0;
      for (const auto& [id, n] : st.nodes) {
        lo = std::min(lo, m[id]);
        hi = std::max(hi, m[id]);
      }
      return hi - lo;
    };
    EXPECT_LE(spread(replicas), 1);
    EXPECT_LE(spread(leaders), 1);
  }
}

TEST(PlaceShardsTest, NodesDownAreUsedLastAndTooFewNodesAreRefused) {
  MetadataState st = StateWithNodes(4);
  auto p = PlaceShards(st, 4, 3, /*avoid=*/{40});
  ASSERT_TRUE(p.ok());
  for (const auto& shard : *p) {
    for (uint64_t n : shard) EXPECT_NE(n, 40u);
  }
  p = PlaceShards(st, 2, 4, /*avoid=*/{40});  // needs every node
  ASSERT_TRUE(p.ok());
  for (const auto& shard : *p) EXPECT_NE(shard[0], 40u) << "a node that is down as preferred leader";
  auto refused = PlaceShards(st, 1, 5);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("4 nodes"), std::string::npos) << refused.status();
}

// Applies one command at `index`; its result.
absl::StatusOr<uint64_t> ApplyAt(MetadataMachine& m, uint64_t index, const MetadataCommand& c) {
  std::vector<absl::StatusOr<uint64_t>> results;
  EXPECT_TRUE(m.Apply({raft::Entry{.term = 1, .index = index, .type = raft::EntryType::kNormal, .data = c.json}},
                      &results)
                  .ok());
  return results.at(0);
}

TEST(MetadataMachineTest, CommandsAreCheckedAgainstTheStateAtTheirIndex) {
  int changes = 0;
  MetadataMachine m([&] { ++changes; });
  for (uint64_t id : {10, 20, 30}) {
    ASSERT_TRUE(ApplyAt(m, id / 10 + 1, AddNodeCommand({id, absl::StrCat("n", id), "h:1", "z"})).ok());
  }
  CollectionConfig cfg;
  cfg.dimension = 8;
  cfg.num_shards = 2;
  cfg.replication_factor = 3;
  const MetadataState before = *m.State();
  auto placement = PlaceShards(before, 2, 3);
  ASSERT_TRUE(placement.ok());
  const MetadataCommand create = CreateCollectionCommand(before, "docs", cfg, *placement);
  auto first = ApplyAt(m, 5, create);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, before.next_group);
  // The same command again: the name is taken.
  EXPECT_EQ(ApplyAt(m, 6, create).status().code(), absl::StatusCode::kAlreadyExists);
  // Placed on a stale view (the ids it allocated are gone): retry.
  const MetadataCommand stale = CreateCollectionCommand(before, "other", cfg, *placement);
  EXPECT_EQ(ApplyAt(m, 7, stale).status().code(), absl::StatusCode::kAborted);
  const MetadataState st = *m.State();
  ASSERT_EQ(st.collections.count("docs"), 1u);
  EXPECT_EQ(st.collections.at("docs").groups.size(), 2u);
  EXPECT_EQ(st.groups.size(), 2u);
  for (const auto& [gid, g] : st.groups) {
    EXPECT_EQ(g.collection, "docs");
    EXPECT_EQ(g.replicas.size(), 3u);
    EXPECT_EQ(g.initial_voters.size(), 3u);
  }
  EXPECT_EQ(st.GroupsOn(10).size(), 2u);
  // Drop: the groups go with it.
  ASSERT_TRUE(ApplyAt(m, 8, DropCollectionCommand("docs")).ok());
  EXPECT_TRUE(m.State()->groups.empty());
  EXPECT_EQ(ApplyAt(m, 9, DropCollectionCommand("docs")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ApplyAt(m, 10, MetadataCommand{"not json"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.State()->applied, 10u);
  EXPECT_GE(changes, 5);
}

// Nodes 10, 20, 30 (zone "z"), then collection "docs" of dimension 8, from
// log index *index on; the collection's first group.
absl::StatusOr<uint64_t> ThreeNodesAndACollection(MetadataMachine& m, uint64_t* index, uint32_t shards,
                                                  uint32_t replication_factor) {
  for (uint64_t id : {10, 20, 30}) {
    CAIRN_RETURN_IF_ERROR(ApplyAt(m, (*index)++, AddNodeCommand({id, absl::StrCat("n", id), "h:1", "z"})).status());
  }
  CollectionConfig cfg;
  cfg.dimension = 8;
  cfg.num_shards = shards;
  cfg.replication_factor = replication_factor;
  CAIRN_ASSIGN_OR_RETURN(auto placement, PlaceShards(*m.State(), shards, replication_factor));
  return ApplyAt(m, (*index)++, CreateCollectionCommand(*m.State(), "docs", cfg, placement));
}

// A wiped node comes back under its name with a new id: it takes the old
// one's place, the old id is refused forever, and replicas move by adding
// one on the new node and removing the old one.
TEST(MetadataMachineTest, ANodeIsReplacedUnderItsNameAndItsReplicasMove) {
  MetadataMachine m([] {});
  uint64_t index = 1;
  auto gid = ThreeNodesAndACollection(m, &index, /*shards=*/1, /*replication_factor=*/3);
  ASSERT_TRUE(gid.ok()) << gid.status();

  // Another name, a known id, or a node that is not a member: refused.
  EXPECT_EQ(ApplyAt(m, index++, ReplaceNodeCommand(30, {99, "other", "h:2", ""})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyAt(m, index++, ReplaceNodeCommand(30, {20, "n30", "h:2", ""})).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ApplyAt(m, index++, ReplaceNodeCommand(77, {99, "n30", "h:2", ""})).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(ApplyAt(m, index++, ReplaceNodeCommand(30, {99, "n30", "h:2", ""})).ok());
  MetadataState st = *m.State();
  EXPECT_TRUE(st.removed_nodes.count(30));
  EXPECT_EQ(st.replaced_by.at(30), 99u);
  EXPECT_EQ(st.nodes.at(99).peer_address, "h:2");
  // The old id never comes back, not even through add_node; it cannot be
  // replaced twice.
  EXPECT_EQ(ApplyAt(m, index++, AddNodeCommand({30, "n30", "h:1", ""})).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ApplyAt(m, index++, ReplaceNodeCommand(30, {98, "n30", "h:2", ""})).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Placement never picks a removed node.
  auto again = PlaceShards(st, 3, 3);
  ASSERT_TRUE(again.ok());
  for (const auto& shard : *again) EXPECT_EQ(std::count(shard.begin(), shard.end(), 30u), 0);

  // The replica on 30 moves to 99: added (with the next replica id), then
  // the old one removed.
  auto added = ApplyAt(m, index++, AddReplicaCommand(st, *gid, 99));
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_EQ(*added, st.next_replica);
  EXPECT_EQ(ApplyAt(m, index++, AddReplicaCommand(st, *gid, 99)).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(ApplyAt(m, index++, AddReplicaCommand(*m.State(), *gid, 99)).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ApplyAt(m, index++, AddReplicaCommand(*m.State(), *gid, 30)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  uint64_t old_replica = 0;
  for (const auto& [r, n] : m.State()->groups.at(*gid).replicas) {
    if (n == 30) old_replica = r;
  }
  ASSERT_NE(old_replica, 0u);
  ASSERT_TRUE(ApplyAt(m, index++, RemoveReplicaCommand(*gid, old_replica)).ok());
  ASSERT_TRUE(ApplyAt(m, index++, RemoveReplicaCommand(*gid, old_replica)).ok());  // idempotent
  st = *m.State();
  EXPECT_EQ(st.groups.at(*gid).replicas.size(), 3u);
  EXPECT_TRUE(st.GroupsOn(30).empty());
  EXPECT_EQ(st.GroupsOn(99).size(), 1u);
}

// The metadata group's snapshot is its whole state: a machine restored from
// it holds what the one that took it held.
TEST(MetadataMachineTest, ASnapshotRestoresTheWholeState) {
  MetadataMachine m([] {});
  uint64_t index = 1;
  ASSERT_TRUE(ThreeNodesAndACollection(m, &index, /*shards=*/2, /*replication_factor=*/2).ok());
  ASSERT_TRUE(ApplyAt(m, index++, ReplaceNodeCommand(30, {99, "n30", "h:2", ""})).ok());
  auto compaction = m.PrepareCompaction();
  ASSERT_TRUE(compaction.ok()) << compaction.status();
  EXPECT_EQ(compaction->index, index - 1);

  int changes = 0;
  MetadataMachine restored([&] { ++changes; });
  raft::Snapshot snap;
  snap.meta.index = compaction->index;
  snap.data = compaction->data;
  ASSERT_TRUE(restored.Restore(snap).ok());
  EXPECT_EQ(changes, 1);
  const MetadataState& st = *restored.State();
  EXPECT_EQ(EncodeMetadataState(st), EncodeMetadataState(*m.State()));
  EXPECT_EQ(st.collections.at("docs").config.dimension, 8u);
  EXPECT_EQ(st.groups.size(), 2u);
  EXPECT_EQ(st.replaced_by.at(30), 99u);
  EXPECT_TRUE(st.removed_nodes.count(30));
  EXPECT_EQ(st.nodes.at(10).zone, "z");
  EXPECT_EQ(st.next_replica, m.State()->next_replica);
  // It goes on from there as the original does.
  ASSERT_TRUE(ApplyAt(restored, index, DropCollectionCommand("docs")).ok());
  EXPECT_TRUE(restored.State()->groups.empty());
  snap.data = "{\"format\": 7}";
  EXPECT_EQ(restored.Restore(snap).code(), absl::StatusCode::kDataLoss);
  snap.data = "not json";
  EXPECT_EQ(restored.Restore(snap).code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace cairn::cluster
