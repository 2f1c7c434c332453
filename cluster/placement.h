// The placement controller's decisions (README: "The controller"): given the
// metadata and what the nodes report of their groups, which operations to
// start now. Pure: the Cluster on the metadata leader gathers the view,
// calls PlanOperations every second, and proposes what it returns.
#ifndef CAIRN_CLUSTER_PLACEMENT_H_
#define CAIRN_CLUSTER_PLACEMENT_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cluster/metadata.h"

namespace cairn::cluster {

// What the leaders of the shard groups report (Peer.NodeStatus).
struct GroupView {
  uint64_t leader = 0;      // the leading replica; 0 when unknown
  uint64_t last_index = 0;  // the leader's last log index
  std::map<uint64_t, uint64_t> match;  // replica -> last index known there
  std::vector<uint64_t> voters;        // as the leader applied them
  uint64_t bytes = 0;                  // the leader's copy on disk
  uint64_t points = 0;                 // and the points it holds
};
using ControllerView = std::map<uint64_t, GroupView>;  // by group

// An operation to start (StartMoveCommand / StartTransferCommand).
struct PlannedOp {
  uint64_t group = 0;
  GroupOp::Kind kind = GroupOp::Kind::kMove;
  uint64_t from = 0;     // move: the replica that leaves, or 0
  uint64_t to_node = 0;  // move: the node of the new replica, or 0
  uint64_t to = 0;       // transfer: the replica to lead
  std::string reason;
  bool operator==(const PlannedOp&) const = default;
};

// The operations to start, at most one per group and none on a group with
// one in progress, in the README's order: replication factor met (replicas
// on dead or removed nodes re-created), draining nodes emptied (leaderships
// first), replicas above the factor removed, replicas balanced over the
// active nodes, leaders balanced. A move that adds a replica needs its
// group's leader known (it sends the snapshot) and is started only when no
// other move goes into its target node or out of its leader's node.
// Nodes in `unreachable` (silent now, not dead yet) get no new replica and
// no leadership.
std::vector<PlannedOp> PlanOperations(const MetadataState& state, const ControllerView& view,
                                      const std::set<uint64_t>& unreachable = {});

// The operations in progress to undo: those whose target node (of a move's
// new replica, of a transfer's new leader) is no longer active: it died,
// drains or was removed before the operation ended.
std::vector<uint64_t> OpsToAbandon(const MetadataState& state);

// The shard group to split now, or 0: none while a split is under way (one
// at a time in the cluster: each copies and opens a shard's files on its
// nodes); else the first queued by `cairn collection split` that has no
// operation; else one whose leader reports more points than its
// collection's split_points (the one furthest past it). Never one whose
// collection has 256 shards.
uint64_t SplitDue(const MetadataState& state, const ControllerView& view);

// The node that holds what `node` held: itself, or the node that took its
// place (after a chain of replacements), or 0 when it was removed for good.
uint64_t Successor(const MetadataState& state, uint64_t node);

}  // namespace cairn::cluster

#endif  // CAIRN_CLUSTER_PLACEMENT_H_
