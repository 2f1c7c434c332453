#include "cluster/placement.h"

#include <algorithm>
#include <functional>
#include <set>
#include <tuple>

namespace cairn::cluster {

uint64_t Successor(const MetadataState& st, uint64_t node) {
  for (size_t hops = 0; hops <= st.replaced_by.size() && st.removed_nodes.count(node); ++hops) {
    auto it = st.replaced_by.find(node);
    if (it == st.replaced_by.end()) return 0;
    node = it->second;
  }
  return st.removed_nodes.count(node) ? 0 : node;
}

std::vector<uint64_t> OpsToAbandon(const MetadataState& st) {
  std::vector<uint64_t> out;
  for (const auto& [gid, op] : st.ops) {
    if (op.to_node != 0 && op.step != "abandon" && !st.Is(op.to_node, NodeState::kActive)) {
      out.push_back(gid);
    }
  }
  return out;
}

uint64_t SplitDue(const MetadataState& st, const ControllerView& view) {
  if (st.SplitRunning()) return 0;
  for (const auto& [name, c] : st.collections) {
    for (uint64_t gid : c.split_queue) {
      if (!st.ops.count(gid) && st.groups.count(gid)) return gid;
    }
  }
  uint64_t best = 0;
  double best_ratio = 1.0;
  for (const auto& [gid, v] : view) {
    auto g = st.groups.find(gid);
    if (g == st.groups.end() || st.ops.count(gid)) continue;
    auto c = st.collections.find(g->second.collection);
    if (c == st.collections.end() || c->second.config.split_points == 0 || c->second.groups.size() >= 256) continue;
    const double ratio = static_cast<double>(v.points) / static_cast<double>(c->second.config.split_points);
    if (ratio > best_ratio) {
      best = gid;
      best_ratio = ratio;
    }
  }
  return best;
}

namespace {

class Planner {
 public:
  Planner(const MetadataState& st, const ControllerView& view, const std::set<uint64_t>& unreachable)
      : st_(st), view_(view), unreachable_(unreachable) {
    for (const auto& [id, n] : st_.nodes) {
      if (st_.Is(id, NodeState::kActive)) replicas_[id] = 0;
    }
    for (const auto& [gid, g] : st_.groups) {
      auto v = view_.find(gid);
      for (const auto& [r, n] : g.replicas) {
        if (replicas_.count(n)) ++replicas_[n];
        if (v != view_.end()) bytes_[n] += v->second.bytes;  // the leader's copy stands for each
      }
    }
    // Zones count when every active node names one and there are two or more.
    std::set<std::string> zones;
    for (const auto& [id, c] : replicas_) zones.insert(Zone(id));
    zones_ = zones.size() >= 2 && !zones.count("");
    for (const auto& [gid, op] : st_.ops) {
      busy_.insert(gid);
      if (op.kind == GroupOp::Kind::kMove && op.to != 0) Reserve(gid, op.to_node);
    }
  }

  std::vector<PlannedOp> Plan() {
    for (const auto& [gid, g] : st_.groups) ReplicationFactor(g);
    for (const auto& [gid, g] : st_.groups) Drain(g);
    for (const auto& [gid, g] : st_.groups) ZoneSpread(g);
    for (const auto& [gid, g] : st_.groups) AboveFactor(g);
    // Replicas are balanced once splits are over: a shard about to split
    // would be copied whole, and each split's new group needs placing after.
    if (!st_.SplitsUnderWay()) Balance();
    Leaders();
    return std::move(out_);
  }

 private:
  // A node that serves (active or draining).
  bool Live(uint64_t node) const {
    return st_.Is(node, NodeState::kActive) || st_.Is(node, NodeState::kDraining);
  }
  uint32_t Factor(const ShardGroup& g) const {
    auto c = st_.collections.find(g.collection);
    return c == st_.collections.end() ? 0 : c->second.config.replication_factor;
  }
  const GroupView* View(uint64_t gid) const {
    auto it = view_.find(gid);
    return it == view_.end() || it->second.leader == 0 ? nullptr : &it->second;
  }
  uint64_t LeaderNode(const ShardGroup& g) const {
    const GroupView* v = View(g.group);
    if (v == nullptr) return 0;
    auto it = g.replicas.find(v->leader);
    return it == g.replicas.end() ? 0 : it->second;
  }
  bool Holds(const ShardGroup& g, uint64_t node) const {
    for (const auto& [r, n] : g.replicas) {
      if (n == node) return true;
    }
    return false;
  }
  const std::string& Zone(uint64_t node) const {
    static const std::string kNone;
    auto it = st_.nodes.find(node);
    return it == st_.nodes.end() ? kNone : it->second.zone;
  }
  // Replicas of `g` other than `except` in `node`'s zone (0 when zones are
  // not given).
  int ZoneClash(const ShardGroup& g, uint64_t node, uint64_t except) const {
    if (!zones_) return 0;
    int n = 0;
    for (const auto& [r, on] : g.replicas) {
      if (r != except && on != node && Zone(on) == Zone(node)) ++n;
    }
    return n;
  }
  uint64_t Bytes(uint64_t node) const {
    auto it = bytes_.find(node);
    return it == bytes_.end() ? 0 : it->second;
  }
  // The best node for a new replica of `g` replacing `from` (0: none).
  uint64_t BestNode(const ShardGroup& g, uint64_t from) const {
    uint64_t best = 0;
    std::tuple<int, uint64_t, uint64_t, uint64_t> best_key;
    for (const auto& [node, count] : replicas_) {
      if (Holds(g, node) || in_.count(node) || unreachable_.count(node)) continue;
      auto key = std::make_tuple(ZoneClash(g, node, from), count, Bytes(node), node);
      if (best == 0 || key < best_key) {
        best = node;
        best_key = key;
      }
    }
    return best;
  }
  // The snapshot a move into `to_node` costs: its group's leader sends one.
  bool CanCopy(const ShardGroup& g, uint64_t to_node) const {
    const uint64_t leader = LeaderNode(g);
    return leader != 0 && !out_nodes_.count(leader) && !in_.count(to_node);
  }
  void Reserve(uint64_t gid, uint64_t to_node) {
    in_.insert(to_node);
    auto g = st_.groups.find(gid);
    if (g != st_.groups.end()) {
      if (uint64_t leader = LeaderNode(g->second); leader != 0) out_nodes_.insert(leader);
    }
  }
  void Move(const ShardGroup& g, uint64_t from, uint64_t to_node, const char* reason) {
    out_.push_back({g.group, GroupOp::Kind::kMove, from, to_node, 0, reason});
    busy_.insert(g.group);
    if (to_node != 0) {
      Reserve(g.group, to_node);
      ++replicas_[to_node];
    }
    if (from != 0) {
      auto it = replicas_.find(g.replicas.at(from));
      if (it != replicas_.end()) --it->second;
    }
  }
  void Transfer(const ShardGroup& g, uint64_t to, const char* reason) {
    out_.push_back({g.group, GroupOp::Kind::kTransferLeader, 0, 0, to, reason});
    busy_.insert(g.group);
  }
  // A voter of `g` other than the leader, on an active node, holding the
  // leader's whole log: one that may lead now.
  uint64_t CaughtUpVoter(const ShardGroup& g, uint64_t on_node = 0) const {
    const GroupView* v = View(g.group);
    if (v == nullptr) return 0;
    for (uint64_t r : v->voters) {
      auto node = g.replicas.find(r);
      auto m = v->match.find(r);
      if (r == v->leader || node == g.replicas.end() || m == v->match.end()) continue;
      if (!st_.Is(node->second, NodeState::kActive) || unreachable_.count(node->second) ||
          (on_node != 0 && node->second != on_node)) {
        continue;
      }
      if (m->second >= v->last_index) return r;
    }
    return 0;
  }

  void ReplicationFactor(const ShardGroup& g) {
    if (busy_.count(g.group)) return;
    size_t live = 0;
    uint64_t lost = 0;  // a replica on a dead or removed node
    for (const auto& [r, n] : g.replicas) {
      if (Live(n)) {
        ++live;
      } else if (lost == 0 || st_.removed_nodes.count(n)) {
        lost = r;
      }
    }
    if (live >= Factor(g)) return;
    uint64_t to = 0;
    const char* reason = "replication_factor";
    if (lost != 0) {
      const uint64_t was = g.replicas.at(lost);
      reason = st_.removed_nodes.count(was) ? "replace" : "dead";
      const uint64_t succ = Successor(st_, was);
      if (succ != 0 && succ != was && st_.Is(succ, NodeState::kActive) && !Holds(g, succ) && !in_.count(succ) &&
          !unreachable_.count(succ)) {
        to = succ;
      }
    }
    if (to == 0) to = BestNode(g, lost);
    if (to == 0 || !CanCopy(g, to)) return;
    Move(g, lost, to, reason);
  }

  void Drain(const ShardGroup& g) {
    if (busy_.count(g.group)) return;
    const uint64_t leader_node = LeaderNode(g);
    if (leader_node != 0 && st_.Is(leader_node, NodeState::kDraining)) {
      if (uint64_t to = CaughtUpVoter(g); to != 0) Transfer(g, to, "drain");
      return;  // its leadership goes first
    }
    for (const auto& [r, n] : g.replicas) {
      if (!st_.Is(n, NodeState::kDraining)) continue;
      const uint64_t to = BestNode(g, r);
      if (to != 0 && CanCopy(g, to)) Move(g, r, to, "drain");
      return;
    }
  }

  // Two replicas of `g` in one zone while an active node in a zone `g` does
  // not use could take one: the one not leading moves there.
  void ZoneSpread(const ShardGroup& g) {
    if (busy_.count(g.group)) return;
    const GroupView* v = View(g.group);
    for (const auto& [r, n] : g.replicas) {
      if (ZoneClash(g, n, r) == 0 || (v != nullptr && r == v->leader)) continue;
      const uint64_t to = BestNode(g, r);
      if (to != 0 && ZoneClash(g, to, r) == 0 && CanCopy(g, to)) {
        Move(g, r, to, "zone");
        return;
      }
    }
  }

  void AboveFactor(const ShardGroup& g) {
    if (busy_.count(g.group) || g.replicas.size() <= Factor(g) || Factor(g) == 0) return;
    const GroupView* v = View(g.group);
    if (v == nullptr) return;
    uint64_t victim = 0;
    std::tuple<int, uint64_t, uint64_t> victim_key;
    for (const auto& [r, n] : g.replicas) {
      if (r == v->leader) continue;
      const int rank = st_.removed_nodes.count(n) ? 0 : st_.Is(n, NodeState::kDead) ? 1 : st_.Is(n, NodeState::kDraining) ? 2 : 3;
      auto count = replicas_.find(n);
      // Lowest rank first, then the node holding most.
      auto key = std::make_tuple(rank, ~(count == replicas_.end() ? 0 : count->second), r);
      if (victim == 0 || key < victim_key) {
        victim = r;
        victim_key = key;
      }
    }
    if (victim != 0) Move(g, victim, 0, "replication_factor");
  }

  // Passes over pairs of nodes, the one counted most against the one counted
  // least, while their counts differ by two or more: `one(high, low)` acts on
  // a pair (and updates `counts`) or declines it; a pass ends at the first
  // pair acted on, and the passes end when one acts on none.
  void EvenOut(const std::map<uint64_t, uint64_t>& counts, const std::function<bool(uint64_t, uint64_t)>& one) {
    for (size_t pass = 0; pass < st_.groups.size(); ++pass) {
      std::vector<std::pair<uint64_t, uint64_t>> order;  // (count, node)
      for (const auto& [n, c] : counts) order.push_back({c, n});
      std::sort(order.begin(), order.end());
      bool acted = false;
      for (auto hi = order.rbegin(); hi != order.rend() && !acted; ++hi) {
        for (auto lo = order.begin(); lo != order.end() && !acted; ++lo) {
          if (hi->first < lo->first + 2) break;
          acted = one(hi->second, lo->second);
        }
      }
      if (!acted) return;
    }
  }

  // A replica moves out of the most loaded node into the least loaded.
  void Balance() {
    EvenOut(replicas_, [this](uint64_t high, uint64_t low) { return !unreachable_.count(low) && BalanceOne(high, low); });
  }
  bool BalanceOne(uint64_t from_node, uint64_t to_node) {
    const ShardGroup* best = nullptr;
    uint64_t best_replica = 0;
    std::tuple<bool, uint64_t, uint64_t> best_key;
    for (const auto& [gid, g] : st_.groups) {
      if (busy_.count(gid) || Holds(g, to_node) || !CanCopy(g, to_node)) continue;
      const GroupView* v = View(gid);
      for (const auto& [r, n] : g.replicas) {
        if (n != from_node) continue;
        if (ZoneClash(g, to_node, r) > ZoneClash(g, from_node, r)) continue;
        auto key = std::make_tuple(r == v->leader, v->bytes, gid);
        if (best == nullptr || key < best_key) {
          best = &g;
          best_replica = r;
          best_key = key;
        }
      }
    }
    if (best == nullptr) return false;
    Move(*best, best_replica, to_node, "balance");
    return true;
  }

  // A leadership moves from the node leading most to one leading fewest that
  // holds a caught-up replica of the group.
  void Leaders() {
    std::map<uint64_t, uint64_t> leads;  // active node -> groups led
    for (const auto& [n, c] : replicas_) leads[n] = 0;
    for (const auto& [gid, g] : st_.groups) {
      auto it = leads.find(LeaderNode(g));
      if (it != leads.end()) ++it->second;
    }
    EvenOut(leads, [&](uint64_t high, uint64_t low) {
      for (const auto& [gid, g] : st_.groups) {
        if (busy_.count(gid) || LeaderNode(g) != high) continue;
        if (uint64_t to = CaughtUpVoter(g, low); to != 0) {
          Transfer(g, to, "leader_balance");
          --leads[high];
          ++leads[low];
          return true;
        }
      }
      return false;
    });
  }

  const MetadataState& st_;
  const ControllerView& view_;
  const std::set<uint64_t>& unreachable_;
  std::map<uint64_t, uint64_t> replicas_;  // active node -> replicas in the map (planned ones counted)
  std::map<uint64_t, uint64_t> bytes_;     // node -> bytes of the replicas the map places on it
  bool zones_ = false;                     // zones are given
  std::set<uint64_t> busy_;                // groups with an operation
  std::set<uint64_t> in_;                  // nodes a move goes into
  std::set<uint64_t> out_nodes_;           // nodes sending a move's snapshot
  std::vector<PlannedOp> out_;
};

}  // namespace

std::vector<PlannedOp> PlanOperations(const MetadataState& state, const ControllerView& view,
                                      const std::set<uint64_t>& unreachable) {
  return Planner(state, view, unreachable).Plan();
}

}  // namespace cairn::cluster
