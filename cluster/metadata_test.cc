// The metadata group's state machine and placement: replicas and preferred
// leaders spread evenly, never two replicas of a shard on one node, nodes that
// are down used last; commands checked against the state at their index.
#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"
#include "cluster/metadata.h"
#include "cluster/placement.h"
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
  EXPECT_NE(refused.status().message().find("4 active nodes"), std::string::npos) << refused.status();
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

// Node states and operations: drain, death and removal, and a move's
// durable steps, each checked at apply.
TEST(MetadataMachineTest, NodeStatesAndOperationsAreCheckedAtApply) {
  MetadataMachine m([] {});
  uint64_t index = 1;
  auto gid = ThreeNodesAndACollection(m, &index, /*shards=*/1, /*replication_factor=*/2);
  ASSERT_TRUE(gid.ok()) << gid.status();
  ASSERT_TRUE(ApplyAt(m, index++, AddNodeCommand({40, "n40", "h:4", "z"})).ok());
  const ShardGroup g = m.State()->groups.at(*gid);
  uint64_t leaving = 0, holder = 0, spare = 0;
  for (uint64_t n : {10, 20, 30}) {
    bool holds = false;
    for (const auto& [r, on] : g.replicas) {
      if (on == n) {
        holds = true;
        if (leaving == 0) {
          leaving = r;
          holder = n;
        }
      }
    }
    if (!holds) spare = n;
  }
  ASSERT_NE(spare, 0u);

  // An active node is not removed; nor a draining one that holds a replica.
  EXPECT_EQ(ApplyAt(m, index++, RemoveNodeCommand(holder)).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(ApplyAt(m, index++, SetNodeStateCommand(holder, NodeState::kDraining)).ok());
  EXPECT_TRUE(m.State()->Is(holder, NodeState::kDraining));
  // A draining node stays draining when it dies (it empties either way).
  ASSERT_TRUE(ApplyAt(m, index++, SetNodeStateCommand(holder, NodeState::kDead)).ok());
  EXPECT_TRUE(m.State()->Is(holder, NodeState::kDraining));
  auto refused = ApplyAt(m, index++, RemoveNodeCommand(holder));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("still holds 1 replica"), std::string::npos) << refused.status();

  // A move onto a draining node, of a replica the group lacks, or with no
  // end: refused.
  EXPECT_EQ(ApplyAt(m, index++, StartMoveCommand(*m.State(), *gid, leaving, holder, "t")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ApplyAt(m, index++, StartMoveCommand(*m.State(), *gid, 999, spare, "t")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ApplyAt(m, index++, StartMoveCommand(*m.State(), *gid, 0, 0, "t")).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The move: the new replica is in the map at once, the old one until it ends.
  const MetadataState before = *m.State();
  auto op = ApplyAt(m, index++, StartMoveCommand(before, *gid, leaving, spare, "drain"));
  ASSERT_TRUE(op.ok()) << op.status();
  const uint64_t fresh = before.next_replica;
  EXPECT_EQ(m.State()->groups.at(*gid).replicas.at(fresh), spare);
  EXPECT_TRUE(m.State()->groups.at(*gid).replicas.count(leaving));
  EXPECT_EQ(m.State()->ops.at(*gid).step, "add_learner");
  // One operation per group at a time; the target of one is not removed.
  EXPECT_EQ(ApplyAt(m, index++, StartTransferCommand(*gid, fresh, "t")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(ApplyAt(m, index++, SetNodeStateCommand(spare, NodeState::kDraining)).ok());
  EXPECT_EQ(ApplyAt(m, index++, RemoveNodeCommand(spare)).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(ApplyAt(m, index++, SetNodeStateCommand(spare, NodeState::kActive)).ok());
  // Steps and the end name the op: a stale id is refused.
  EXPECT_EQ(ApplyAt(m, index++, OpStepCommand(*gid, *op + 1, "promote")).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(ApplyAt(m, index++, OpStepCommand(*gid, *op, "promote")).ok());
  EXPECT_EQ(m.State()->ops.at(*gid).step, "promote");
  // The state with an op in progress survives a snapshot.
  auto decoded = DecodeMetadataState(EncodeMetadataState(*m.State()));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->ops, m.State()->ops);
  EXPECT_EQ(decoded->nodes, m.State()->nodes);
  ASSERT_TRUE(ApplyAt(m, index++, EndOpCommand(*gid, *op, /*abandoned=*/false)).ok());
  EXPECT_TRUE(m.State()->ops.empty());
  EXPECT_FALSE(m.State()->groups.at(*gid).replicas.count(leaving));
  // Drained: it is removed, for good.
  ASSERT_TRUE(ApplyAt(m, index++, RemoveNodeCommand(holder)).ok());
  EXPECT_TRUE(m.State()->removed_nodes.count(holder));
  EXPECT_EQ(ApplyAt(m, index++, SetNodeStateCommand(holder, NodeState::kActive)).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // An abandoned move takes its new replica out of the map again.
  op = ApplyAt(m, index++, StartMoveCommand(*m.State(), *gid, 0, 40, "replication_factor"));
  ASSERT_TRUE(op.ok()) << op.status();
  const uint64_t abandoned = m.State()->next_replica - 1;
  EXPECT_EQ(m.State()->groups.at(*gid).replicas.at(abandoned), 40u);
  ASSERT_TRUE(ApplyAt(m, index++, EndOpCommand(*gid, *op, /*abandoned=*/true)).ok());
  EXPECT_FALSE(m.State()->groups.at(*gid).replicas.count(abandoned));
  EXPECT_EQ(m.State()->groups.at(*gid).replicas.size(), 2u);
}

// The controller's plan carried out on a metadata machine until it has
// nothing left to do: each move ends at once, each transfer moves the
// simulated leader. The leader of a group is its lowest replica on a live
// node unless a transfer moved it.
class Controller {
 public:
  explicit Controller(MetadataMachine& m) : m_(m) {}
  uint64_t index = 1000;
  std::map<uint64_t, uint64_t> leader;  // group -> replica
  int moves = 0, transfers = 0;

  ControllerView View() const {
    ControllerView v;
    const MetadataState& st = *m_.State();
    for (const auto& [gid, g] : st.groups) {
      GroupView& gv = v[gid];
      gv.last_index = 100;
      gv.bytes = 1000 * gid;
      for (const auto& [r, n] : g.replicas) {
        gv.match[r] = 100;
        gv.voters.push_back(r);
        const bool live = st.Is(n, NodeState::kActive) || st.Is(n, NodeState::kDraining);
        if (gv.leader == 0 && live) gv.leader = r;
      }
      auto it = leader.find(gid);
      if (it != leader.end() && g.replicas.count(it->second)) gv.leader = it->second;
    }
    return v;
  }

  // Runs plans until one is empty (at most `rounds`); false if it never is.
  bool Settle(int rounds = 200) {
    for (int round = 0; round < rounds; ++round) {
      auto plan = PlanOperations(*m_.State(), View());
      if (plan.empty()) return true;
      std::set<uint64_t> groups;
      for (const PlannedOp& p : plan) {
        EXPECT_TRUE(groups.insert(p.group).second) << "two operations on group " << p.group;
        MetadataCommand start = p.kind == GroupOp::Kind::kMove
                                    ? StartMoveCommand(*m_.State(), p.group, p.from, p.to_node, p.reason)
                                    : StartTransferCommand(p.group, p.to, p.reason);
        auto op = ApplyAt(m_, index++, start);
        EXPECT_TRUE(op.ok()) << op.status() << " " << start.json;
        if (!op.ok()) return false;
      }
      for (const PlannedOp& p : plan) {
        const uint64_t id = m_.State()->ops.at(p.group).id;
        if (p.kind == GroupOp::Kind::kTransferLeader) {
          leader[p.group] = p.to;
          ++transfers;
        } else {
          ++moves;
        }
        EXPECT_TRUE(ApplyAt(m_, index++, EndOpCommand(p.group, id, false)).ok());
      }
    }
    return false;
  }

  // Replicas (and leaders) per active node, and whether every group has its
  // factor on distinct live nodes.
  std::map<uint64_t, int> Count(bool leaders) const {
    const MetadataState& st = *m_.State();
    const ControllerView v = View();
    std::map<uint64_t, int> out;
    for (const auto& [id, n] : st.nodes) {
      if (st.Is(id, NodeState::kActive)) out[id] = 0;
    }
    for (const auto& [gid, g] : st.groups) {
      for (const auto& [r, n] : g.replicas) {
        if (out.count(n) && (!leaders || v.at(gid).leader == r)) ++out[n];
      }
    }
    return out;
  }
  void ExpectFactorMet() const {
    const MetadataState& st = *m_.State();
    for (const auto& [gid, g] : st.groups) {
      std::set<uint64_t> nodes;
      for (const auto& [r, n] : g.replicas) {
        EXPECT_TRUE(st.Is(n, NodeState::kActive)) << "group " << gid << " on node " << n;
        nodes.insert(n);
      }
      EXPECT_EQ(nodes.size(), g.replicas.size()) << "two replicas of group " << gid << " on one node";
      EXPECT_EQ(g.replicas.size(), st.collections.at(g.collection).config.replication_factor) << "group " << gid;
    }
  }

 private:
  MetadataMachine& m_;
};

int Spread(const std::map<uint64_t, int>& counts) {
  int lo = 1 << 30, hi = 0;
  for (const auto& [n, c] : counts) {
    lo = std::min(lo, c);
    hi = std::max(hi, c);
  }
  return hi - lo;
}

// Scale up, drain, a dead node, and the replication factor changed: the
// controller's operations bring every shard to its factor on distinct
// active nodes, within one replica (and one leader) per node.
// A split: the new group and its replicas are allocated at start, beside the
// group's; at the end the group keeps half its class and the new one, routed
// to after the others, takes the other half.
TEST(MetadataMachineTest, ASplitAllocatesAChildBesideTheGroupAndSwitchesRoutingAtItsEnd) {
  MetadataMachine m([] {});
  uint64_t index = 1;
  auto gid = ThreeNodesAndACollection(m, &index, /*shards=*/2, /*replication_factor=*/2);
  ASSERT_TRUE(gid.ok()) << gid.status();
  const MetadataState before = *m.State();
  const ShardGroup parent = before.groups.at(*gid);
  EXPECT_EQ(before.ClassOf(parent), (db::HashClass{2, parent.shard}));
  // Ids that moved on are refused (another command took them).
  MetadataState stale = before;
  ++stale.next_group;
  EXPECT_EQ(ApplyAt(m, index++, StartSplitCommand(stale, *gid, "t")).status().code(), absl::StatusCode::kAborted);
  auto op = ApplyAt(m, index++, StartSplitCommand(before, *gid, "cairn collection split"));
  ASSERT_TRUE(op.ok()) << op.status();
  const GroupOp started = m.State()->ops.at(*gid);
  EXPECT_EQ(started.kind, GroupOp::Kind::kSplit);
  EXPECT_EQ(started.to, before.next_group);
  EXPECT_EQ(started.step, "split");
  ASSERT_EQ(started.child_replicas.size(), parent.replicas.size());
  std::multiset<uint64_t> parent_nodes, child_nodes;
  for (const auto& [r, n] : parent.replicas) parent_nodes.insert(n);
  for (const auto& [r, n] : started.child_replicas) {
    child_nodes.insert(n);
    EXPECT_GE(r, before.next_replica);
  }
  EXPECT_EQ(parent_nodes, child_nodes);
  // Not routed to yet; no other operation meanwhile; it survives a snapshot.
  EXPECT_EQ(m.State()->collections.at("docs").groups.size(), 2u);
  EXPECT_FALSE(m.State()->groups.count(started.to));
  EXPECT_EQ(ApplyAt(m, index++, StartSplitCommand(*m.State(), *gid, "t")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto decoded = DecodeMetadataState(EncodeMetadataState(*m.State()));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->ops, m.State()->ops);
  // It cannot end before it is switched; the fence's index is recorded,
  // then the switch routes to the new group.
  EXPECT_EQ(ApplyAt(m, index++, EndOpCommand(*gid, *op, false)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ApplyAt(m, index++, SwitchSplitCommand(*gid, *op)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(ApplyAt(m, index++, SplitFencedCommand(*gid, *op, 42)).ok());
  EXPECT_EQ(m.State()->ops.at(*gid).step, "open");
  EXPECT_EQ(m.State()->ops.at(*gid).split_index, 42u);
  EXPECT_EQ(m.State()->SplitChild(*gid, m.State()->ops.at(*gid)).split_index, 42u);
  EXPECT_FALSE(m.State()->groups.count(started.to)) << "opened, not routed to yet";
  ASSERT_TRUE(ApplyAt(m, index++, SwitchSplitCommand(*gid, *op)).ok());
  EXPECT_EQ(m.State()->ops.at(*gid).step, "hide");
  ASSERT_TRUE(ApplyAt(m, index++, EndOpCommand(*gid, *op, false)).ok());
  const MetadataState& st = *m.State();
  EXPECT_TRUE(st.ops.empty());
  const ShardGroup& kept = st.groups.at(*gid);
  const ShardGroup& child = st.groups.at(started.to);
  EXPECT_EQ(kept.cls, (db::HashClass{4, parent.shard}));
  EXPECT_EQ(child.cls, (db::HashClass{4, parent.shard + 2}));
  EXPECT_EQ(child.replicas, started.child_replicas);
  EXPECT_EQ(child.initial_voters.size(), child.replicas.size());
  EXPECT_EQ(child.split_from, *gid);
  EXPECT_EQ(child.split_index, 42u);
  EXPECT_EQ(child.shard, 2u);
  EXPECT_EQ(st.collections.at("docs").groups.back(), started.to);
  EXPECT_EQ(st.collections.at("docs").config.num_shards, 3u);
  EXPECT_EQ(st.collections.at("docs").initial_shards, 2u);
  EXPECT_EQ(st.ClassOf(st.groups.at(st.collections.at("docs").groups[1 - parent.shard])),
            (db::HashClass{2, 1 - parent.shard}));
  // The classes of the collection still partition the hash.
  std::vector<db::HashClass> classes;
  for (uint64_t g : st.collections.at("docs").groups) classes.push_back(st.ClassOf(st.groups.at(g)));
  EXPECT_TRUE(db::HashRouter::Build(classes).ok());
  decoded = DecodeMetadataState(EncodeMetadataState(st));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->groups, st.groups);
  // A drop takes the new group too.
  ASSERT_TRUE(ApplyAt(m, index++, DropCollectionCommand("docs")).ok());
  EXPECT_TRUE(m.State()->groups.empty());
}

TEST(PlacementTest, AShardPastItsCollectionsSplitPointsIsSplitFirstTheFurthest) {
  MetadataMachine m([] {});
  uint64_t index = 1;
  ASSERT_TRUE(ThreeNodesAndACollection(m, &index, /*shards=*/3, /*replication_factor=*/2).ok());
  const std::vector<uint64_t> groups = m.State()->collections.at("docs").groups;  // a copy: applies replace the state
  ControllerView view;
  for (size_t s = 0; s < groups.size(); ++s) view[groups[s]].points = 1500 + 1000 * s;
  EXPECT_EQ(SplitDue(*m.State(), view), 0u) << "split_points 0: never";
  CollectionConfig cfg = m.State()->collections.at("docs").config;
  cfg.split_points = 2000;
  ASSERT_TRUE(ApplyAt(m, index++, UpdateConfigCommand("docs", cfg)).ok());
  EXPECT_EQ(SplitDue(*m.State(), view), groups[2]) << "the furthest past it";
  view[groups[2]].points = 2000;
  EXPECT_EQ(SplitDue(*m.State(), view), groups[1]);
  view[groups[1]].points = 2000;
  EXPECT_EQ(SplitDue(*m.State(), view), 0u) << "at the limit is not past it";
  // cairn collection split queues every shard; they split one at a time,
  // before any past split_points.
  view[groups[0]].points = 9000;
  auto queued = ApplyAt(m, index++, QueueSplitsCommand("docs"));
  ASSERT_TRUE(queued.ok()) << queued.status();
  EXPECT_EQ(*queued, 3u);
  EXPECT_EQ(ApplyAt(m, index++, QueueSplitsCommand("docs")).status().code(), absl::StatusCode::kFailedPrecondition)
      << "queued already";
  EXPECT_EQ(ApplyAt(m, index++, QueueSplitsCommand("nope")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(SplitDue(*m.State(), view), groups[0]);
  auto op = ApplyAt(m, index++, StartSplitCommand(*m.State(), groups[0], "t"));
  ASSERT_TRUE(op.ok()) << op.status();
  EXPECT_EQ(m.State()->collections.at("docs").split_queue, (std::vector<uint64_t>{groups[1], groups[2]}));
  EXPECT_EQ(SplitDue(*m.State(), view), 0u) << "one split at a time";
  auto decoded = DecodeMetadataState(EncodeMetadataState(*m.State()));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->collections.at("docs").split_queue, m.State()->collections.at("docs").split_queue);
}

TEST(PlacementTest, TheControllerRebalancesDrainsAndRestoresTheFactor) {
  MetadataMachine m([] {});
  uint64_t index = 1;
  ASSERT_TRUE(ThreeNodesAndACollection(m, &index, /*shards=*/6, /*replication_factor=*/3).ok());
  Controller c(m);
  ASSERT_TRUE(c.Settle());
  EXPECT_EQ(c.moves, 0) << "a balanced cluster moves nothing";

  // Scale up to 5: the new nodes take their share (18 replicas: 3 or 4 each).
  ASSERT_TRUE(ApplyAt(m, c.index++, AddNodeCommand({40, "n40", "h:4", ""})).ok());
  ASSERT_TRUE(ApplyAt(m, c.index++, AddNodeCommand({50, "n50", "h:5", ""})).ok());
  ASSERT_TRUE(c.Settle());
  EXPECT_GT(c.moves, 0);
  EXPECT_LE(Spread(c.Count(false)), 1);
  EXPECT_LE(Spread(c.Count(true)), 1);
  EXPECT_GE(c.Count(false).at(40), 3);
  c.ExpectFactorMet();

  // Drain 10 (it leads some groups): its leaderships, then its replicas, go.
  ASSERT_TRUE(ApplyAt(m, c.index++, SetNodeStateCommand(10, NodeState::kDraining)).ok());
  c.transfers = 0;
  ASSERT_TRUE(c.Settle());
  EXPECT_TRUE(m.State()->GroupsOn(10).empty());
  EXPECT_LE(Spread(c.Count(false)), 1);
  c.ExpectFactorMet();
  ASSERT_TRUE(ApplyAt(m, c.index++, RemoveNodeCommand(10)).ok());

  // 50 dies: its replicas are re-created on the other three.
  ASSERT_TRUE(ApplyAt(m, c.index++, SetNodeStateCommand(50, NodeState::kDead)).ok());
  ASSERT_TRUE(c.Settle());
  EXPECT_TRUE(m.State()->GroupsOn(50).empty());
  c.ExpectFactorMet();
  EXPECT_LE(Spread(c.Count(false)), 1);

  // It comes back: it is used again.
  ASSERT_TRUE(ApplyAt(m, c.index++, SetNodeStateCommand(50, NodeState::kActive)).ok());
  ASSERT_TRUE(c.Settle());
  EXPECT_GE(c.Count(false).at(50), 4);  // 18 replicas over 4 nodes
  EXPECT_LE(Spread(c.Count(false)), 1);

  // The factor lowered to 2, then raised to 4.
  for (uint32_t rf : {2u, 4u}) {
    CollectionConfig cfg = m.State()->collections.at("docs").config;
    cfg.replication_factor = rf;
    ASSERT_TRUE(ApplyAt(m, c.index++, UpdateConfigCommand("docs", cfg)).ok());
    ASSERT_TRUE(c.Settle());
    c.ExpectFactorMet();
    EXPECT_LE(Spread(c.Count(false)), 1) << "rf " << rf;
  }
}

// Replicas are not balanced while splits are queued or run (the shards
// would be copied whole, and split after); the factor is kept meanwhile.
TEST(PlacementTest, BalanceWaitsForTheSplitsToEnd) {
  MetadataMachine m([] {});
  uint64_t index = 1;
  ASSERT_TRUE(ThreeNodesAndACollection(m, &index, /*shards=*/6, /*replication_factor=*/3).ok());
  Controller c(m);
  c.index = index;
  ASSERT_TRUE(ApplyAt(m, c.index++, QueueSplitsCommand("docs")).ok());
  ASSERT_TRUE(ApplyAt(m, c.index++, AddNodeCommand({40, "n40", "h:4", ""})).ok());
  for (const PlannedOp& p : PlanOperations(*m.State(), c.View())) {
    EXPECT_NE(p.reason, "balance") << "group " << p.group << " moved while splits are queued";
  }
  // A node lost meanwhile still has its replicas re-created.
  ASSERT_TRUE(ApplyAt(m, c.index++, SetNodeStateCommand(30, NodeState::kDead)).ok());
  auto plan = PlanOperations(*m.State(), c.View());
  EXPECT_FALSE(plan.empty());
  for (const PlannedOp& p : plan) EXPECT_NE(p.reason, "balance");
  ASSERT_TRUE(ApplyAt(m, c.index++, SetNodeStateCommand(30, NodeState::kActive)).ok());
  // The splits run, one at a time; while the last one runs, still none.
  const std::vector<uint64_t> queue = m.State()->collections.at("docs").split_queue;
  ASSERT_EQ(queue.size(), 6u);
  for (uint64_t gid : queue) {
    auto op = ApplyAt(m, c.index++, StartSplitCommand(*m.State(), gid, "cairn collection split"));
    ASSERT_TRUE(op.ok()) << op.status();
    for (const PlannedOp& p : PlanOperations(*m.State(), c.View())) EXPECT_NE(p.reason, "balance");
    ASSERT_TRUE(ApplyAt(m, c.index++, SplitFencedCommand(gid, *op, 50)).ok());
    ASSERT_TRUE(ApplyAt(m, c.index++, SwitchSplitCommand(gid, *op)).ok());
    ASSERT_TRUE(ApplyAt(m, c.index++, EndOpCommand(gid, *op, false)).ok());
  }
  EXPECT_TRUE(m.State()->collections.at("docs").split_queue.empty());
  // Then the new node takes its share of the 12 shards.
  ASSERT_TRUE(c.Settle());
  EXPECT_GT(c.moves, 0);
  EXPECT_LE(Spread(c.Count(false)), 1);
  EXPECT_GE(c.Count(false).at(40), 9);  // 36 replicas over 4 nodes
  c.ExpectFactorMet();
}

// Zones: a new replica goes to a zone the shard does not use yet; moves
// respect one snapshot into and one out of a node at a time.
TEST(PlacementTest, ZonesAreSpreadAndSnapshotsLimitedPerNode) {
  MetadataMachine m([] {});
  uint64_t index = 1;
  for (uint64_t id : {10, 20, 30, 40, 50, 60}) {
    const std::string zone = absl::StrCat("z", id <= 20 ? 1 : id <= 40 ? 2 : 3);
    ASSERT_TRUE(ApplyAt(m, index++, AddNodeCommand({id, absl::StrCat("n", id), "h:1", zone})).ok());
  }
  CollectionConfig cfg;
  cfg.dimension = 8;
  cfg.num_shards = 4;
  cfg.replication_factor = 3;
  // Every replica in zones 1 and 2 at first (as if 50 and 60 came later).
  MetadataState st = *m.State();
  std::vector<std::vector<uint64_t>> placement = {{10, 30, 20}, {20, 40, 10}, {30, 10, 40}, {40, 20, 30}};
  ASSERT_TRUE(ApplyAt(m, index++, CreateCollectionCommand(st, "docs", cfg, placement)).ok());
  Controller c(m);
  c.index = index;
  auto plan = PlanOperations(*m.State(), c.View());
  std::map<uint64_t, int> into, out_of;
  for (const PlannedOp& p : plan) {
    if (p.kind != GroupOp::Kind::kMove || p.to_node == 0) continue;
    EXPECT_EQ(++into[p.to_node], 1) << "two snapshots into node " << p.to_node;
    const ShardGroup& g = m.State()->groups.at(p.group);
    EXPECT_EQ(++out_of[g.replicas.at(c.View().at(p.group).leader)], 1) << "two snapshots out of one leader's node";
  }
  EXPECT_FALSE(plan.empty());
  ASSERT_TRUE(c.Settle());
  for (const auto& [gid, g] : m.State()->groups) {
    std::set<std::string> zones;
    for (const auto& [r, n] : g.replicas) zones.insert(m.State()->nodes.at(n).zone);
    EXPECT_EQ(zones.size(), 3u) << "group " << gid << " not spread over the three zones";
  }
  EXPECT_LE(Spread(c.Count(false)), 1);
}

// A node that is silent now (not dead yet) gets no new replica and no
// leadership.
TEST(PlacementTest, SilentNodesGetNoReplicaAndNoLeadership) {
  MetadataMachine m([] {});
  uint64_t index = 1;
  ASSERT_TRUE(ThreeNodesAndACollection(m, &index, /*shards=*/6, /*replication_factor=*/3).ok());
  ASSERT_TRUE(ApplyAt(m, index++, AddNodeCommand({40, "n40", "h:4", ""})).ok());
  Controller c(m);
  // Every group led from node 10: leadership balance would move some.
  for (const auto& [gid, g] : m.State()->groups) {
    for (const auto& [r, n] : g.replicas) {
      if (n == 10) c.leader[gid] = r;
    }
  }
  auto plan = PlanOperations(*m.State(), c.View(), /*unreachable=*/{20, 40});
  EXPECT_FALSE(plan.empty());
  for (const PlannedOp& p : plan) {
    EXPECT_NE(p.to_node, 40u) << "a replica placed on a silent node";
    if (p.kind == GroupOp::Kind::kTransferLeader) {
      EXPECT_EQ(m.State()->groups.at(p.group).replicas.at(p.to), 30u) << "a leadership for a silent node";
    }
  }
}

// An operation whose target node stopped being active (it died, drains, or
// was removed) is to be undone; one whose target is active is not.
TEST(PlacementTest, OperationsTowardsNodesNoLongerActiveAreAbandoned) {
  MetadataMachine m([] {});
  uint64_t index = 1;
  auto gid = ThreeNodesAndACollection(m, &index, /*shards=*/2, /*replication_factor=*/2);
  ASSERT_TRUE(gid.ok()) << gid.status();
  const ShardGroup first = m.State()->groups.at(*gid), second = m.State()->groups.at(*gid + 1);
  uint64_t free_node = 0;
  for (uint64_t n : {10, 20, 30}) {
    bool holds = false;
    for (const auto& [r, on] : first.replicas) holds = holds || on == n;
    if (!holds) free_node = n;
  }
  ASSERT_TRUE(ApplyAt(m, index++, StartMoveCommand(*m.State(), *gid, 0, free_node, "t")).ok());
  uint64_t lead = 0, lead_node = 0;
  for (const auto& [r, on] : second.replicas) {
    if (on != free_node) std::tie(lead, lead_node) = std::make_pair(r, on);
  }
  ASSERT_TRUE(ApplyAt(m, index++, StartTransferCommand(*gid + 1, lead, "t")).ok());
  EXPECT_TRUE(OpsToAbandon(*m.State()).empty());
  ASSERT_TRUE(ApplyAt(m, index++, SetNodeStateCommand(free_node, NodeState::kDead)).ok());
  EXPECT_EQ(OpsToAbandon(*m.State()), std::vector<uint64_t>{*gid});
  ASSERT_TRUE(ApplyAt(m, index++, SetNodeStateCommand(lead_node, NodeState::kDraining)).ok());
  EXPECT_EQ(OpsToAbandon(*m.State()).size(), 2u);
  // Marked for undoing, a move is not listed again.
  ASSERT_TRUE(ApplyAt(m, index++, OpStepCommand(*gid, m.State()->ops.at(*gid).id, "abandon")).ok());
  EXPECT_EQ(OpsToAbandon(*m.State()), std::vector<uint64_t>{*gid + 1});
}

}  // namespace
}  // namespace cairn::cluster
