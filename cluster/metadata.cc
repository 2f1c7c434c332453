#include "cluster/metadata.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"
#include "db/config_codec.h"
#include "nlohmann/json.hpp"

namespace cairn::cluster {
namespace {

using Json = nlohmann::json;

NodeState NodeStateFromName(const std::string& name) {
  if (name == "draining") return NodeState::kDraining;
  if (name == "dead") return NodeState::kDead;
  if (name.empty() || name == "active") return NodeState::kActive;
  throw std::invalid_argument("unknown node state \"" + name + "\"");
}

Json NodeToJson(const NodeInfo& n) {
  Json j{{"id", n.id}, {"name", n.name}, {"peer_address", n.peer_address}, {"zone", n.zone}};
  if (n.state != NodeState::kActive) j["state"] = NodeStateName(n.state);
  return j;
}

NodeInfo NodeFromJson(const Json& j) {
  NodeInfo n;
  n.id = j.at("id").get<uint64_t>();
  n.name = j.at("name").get<std::string>();
  n.peer_address = j.at("peer_address").get<std::string>();
  n.zone = j.value("zone", std::string());
  n.state = NodeStateFromName(j.value("state", std::string()));
  return n;
}

Json PairsToJson(const std::map<uint64_t, uint64_t>& m) {
  Json out = Json::array();
  for (const auto& [a, b] : m) out.push_back(Json::array({a, b}));
  return out;
}

std::map<uint64_t, uint64_t> PairsFromJson(const Json& j) {
  std::map<uint64_t, uint64_t> out;
  for (const auto& p : j) out[p.at(0).get<uint64_t>()] = p.at(1).get<uint64_t>();
  return out;
}

Json OpToJson(uint64_t group, const GroupOp& op) {
  Json j{{"group", group}, {"id", op.id},         {"kind", OpKindName(op.kind)}, {"from", op.from},
         {"to", op.to},    {"to_node", op.to_node}, {"reason", op.reason},         {"step", op.step}};
  if (!op.child_replicas.empty()) j["child_replicas"] = PairsToJson(op.child_replicas);
  if (op.split_index != 0) j["split_index"] = op.split_index;
  return j;
}

GroupOp OpFromJson(const Json& j) {
  GroupOp op;
  op.id = j.at("id").get<uint64_t>();
  const std::string kind = j.at("kind").get<std::string>();
  if (kind == "move") {
    op.kind = GroupOp::Kind::kMove;
  } else if (kind == "transfer_leader") {
    op.kind = GroupOp::Kind::kTransferLeader;
  } else if (kind == "split") {
    op.kind = GroupOp::Kind::kSplit;
  } else {
    throw std::invalid_argument("unknown op kind \"" + kind + "\"");
  }
  op.from = j.value("from", uint64_t{0});
  op.to = j.value("to", uint64_t{0});
  op.to_node = j.value("to_node", uint64_t{0});
  op.reason = j.value("reason", std::string());
  op.step = j.value("step", std::string());
  if (j.contains("child_replicas")) op.child_replicas = PairsFromJson(j.at("child_replicas"));
  op.split_index = j.value("split_index", uint64_t{0});
  return op;
}

}  // namespace

const char* NodeStateName(NodeState s) {
  switch (s) {
    case NodeState::kActive:
      return "active";
    case NodeState::kDraining:
      return "draining";
    case NodeState::kDead:
      return "dead";
  }
  return "active";
}

const char* OpKindName(GroupOp::Kind k) {
  switch (k) {
    case GroupOp::Kind::kMove:
      return "move";
    case GroupOp::Kind::kTransferLeader:
      return "transfer_leader";
    case GroupOp::Kind::kSplit:
      return "split";
  }
  return "move";
}

ShardGroup MetadataState::SplitChild(uint64_t gid, const GroupOp& op) const {
  ShardGroup child;
  auto g = groups.find(gid);
  if (g == groups.end()) return child;
  auto coll = collections.find(g->second.collection);
  child.group = op.to;
  child.collection = g->second.collection;
  child.shard = coll == collections.end() ? 0 : static_cast<uint32_t>(coll->second.groups.size());
  child.replicas = op.child_replicas;
  for (const auto& [r, n] : child.replicas) child.initial_voters.push_back(r);
  child.cls = ClassOf(g->second).MovedHalf();
  child.split_from = gid;
  child.split_index = op.split_index;
  return child;
}

bool MetadataState::SplitRunning() const {
  for (const auto& [gid, op] : ops) {
    if (op.kind == GroupOp::Kind::kSplit) return true;
  }
  return false;
}

bool MetadataState::SplitsUnderWay() const {
  if (SplitRunning()) return true;
  for (const auto& [name, c] : collections) {
    if (!c.split_queue.empty()) return true;
  }
  return false;
}

db::HashClass MetadataState::ClassOf(const ShardGroup& g) const {
  if (g.cls.modulus != 0) return g.cls;
  auto c = collections.find(g.collection);
  const uint32_t n = c == collections.end()                ? 1
                     : c->second.initial_shards != 0          ? c->second.initial_shards
                                                              : std::max<uint32_t>(c->second.config.num_shards, 1);
  return db::HashClass{n, g.shard};
}

bool MetadataState::Is(uint64_t node, NodeState s) const {
  auto it = nodes.find(node);
  return it != nodes.end() && !removed_nodes.count(node) && it->second.state == s;
}

std::vector<const ShardGroup*> MetadataState::GroupsOn(uint64_t node) const {
  std::vector<const ShardGroup*> out;
  for (const auto& [id, g] : groups) {
    for (const auto& [replica, n] : g.replicas) {
      if (n == node) out.push_back(&g);
    }
  }
  return out;
}

MetadataCommand AddNodeCommand(const NodeInfo& node) {
  return {Json{{"op", "add_node"}, {"node", NodeToJson(node)}}.dump()};
}

MetadataCommand CreateCollectionCommand(const MetadataState& state, const std::string& name,
                                        const CollectionConfig& config,
                                        const std::vector<std::vector<uint64_t>>& placement) {
  Json groups = Json::array();
  uint64_t replica = state.next_replica;
  for (size_t s = 0; s < placement.size(); ++s) {
    Json replicas = Json::array();
    for (uint64_t node : placement[s]) replicas.push_back(Json{{"replica", replica++}, {"node", node}});
    groups.push_back(Json{{"group", state.next_group + s}, {"replicas", replicas}});
  }
  return {Json{{"op", "create_collection"},
               {"name", name},
               {"config", Json::parse(db::ConfigToJson(config))},
               {"first_group", state.next_group},
               {"first_replica", state.next_replica},
               {"groups", groups}}
              .dump()};
}

MetadataCommand DropCollectionCommand(const std::string& name) {
  return {Json{{"op", "drop_collection"}, {"name", name}}.dump()};
}

MetadataCommand ReplaceNodeCommand(uint64_t old_id, const NodeInfo& new_node) {
  return {Json{{"op", "replace_node"}, {"old", old_id}, {"node", NodeToJson(new_node)}}.dump()};
}

MetadataCommand AddReplicaCommand(const MetadataState& state, uint64_t group, uint64_t node) {
  return {Json{{"op", "add_replica"}, {"group", group}, {"replica", state.next_replica}, {"node", node}}.dump()};
}

MetadataCommand RemoveReplicaCommand(uint64_t group, uint64_t replica) {
  return {Json{{"op", "remove_replica"}, {"group", group}, {"replica", replica}}.dump()};
}

MetadataCommand UpdateConfigCommand(const std::string& name, const CollectionConfig& config) {
  return {Json{{"op", "update_config"}, {"name", name}, {"config", Json::parse(db::ConfigToJson(config))}}.dump()};
}

MetadataCommand SetNodeStateCommand(uint64_t node, NodeState state) {
  return {Json{{"op", "set_node_state"}, {"node", node}, {"state", NodeStateName(state)}}.dump()};
}

MetadataCommand RemoveNodeCommand(uint64_t node) { return {Json{{"op", "remove_node"}, {"node", node}}.dump()}; }

MetadataCommand StartMoveCommand(const MetadataState& state, uint64_t group, uint64_t from, uint64_t to_node,
                                 const std::string& reason) {
  return {Json{{"op", "start_op"},
               {"kind", "move"},
               {"group", group},
               {"from", from},
               {"to", to_node == 0 ? 0 : state.next_replica},
               {"to_node", to_node},
               {"reason", reason}}
              .dump()};
}

MetadataCommand StartTransferCommand(uint64_t group, uint64_t to, const std::string& reason) {
  return {Json{{"op", "start_op"}, {"kind", "transfer_leader"}, {"group", group}, {"to", to}, {"reason", reason}}
              .dump()};
}

MetadataCommand StartSplitCommand(const MetadataState& state, uint64_t group, const std::string& reason) {
  return {Json{{"op", "start_op"},
               {"kind", "split"},
               {"group", group},
               {"to", state.next_group},
               {"first_replica", state.next_replica},
               {"reason", reason}}
              .dump()};
}

MetadataCommand SplitFencedCommand(uint64_t group, uint64_t op, uint64_t split_index) {
  return {Json{{"op", "split_fenced"}, {"group", group}, {"id", op}, {"split_index", split_index}}.dump()};
}

MetadataCommand QueueSplitsCommand(const std::string& name) {
  return {Json{{"op", "queue_splits"}, {"name", name}}.dump()};
}

MetadataCommand SwitchSplitCommand(uint64_t group, uint64_t op) {
  return {Json{{"op", "split_switch"}, {"group", group}, {"id", op}}.dump()};
}

MetadataCommand OpStepCommand(uint64_t group, uint64_t op, const std::string& step) {
  return {Json{{"op", "op_step"}, {"group", group}, {"id", op}, {"step", step}}.dump()};
}

MetadataCommand EndOpCommand(uint64_t group, uint64_t op, bool abandoned) {
  return {Json{{"op", "end_op"}, {"group", group}, {"id", op}, {"abandoned", abandoned}}.dump()};
}

absl::StatusOr<std::vector<std::vector<uint64_t>>> PlaceShards(const MetadataState& state, uint32_t num_shards,
                                                               uint32_t replication_factor,
                                                               const std::set<uint64_t>& avoid) {
  std::vector<uint64_t> nodes;
  for (const auto& [id, n] : state.nodes) {
    if (state.Is(id, NodeState::kActive)) nodes.push_back(id);
  }
  if (replication_factor < 1 || replication_factor > nodes.size()) {
    return absl::InvalidArgumentError(absl::StrCat("config.replication_factor is ", replication_factor,
                                                   ", but the cluster has ", nodes.size(),
                                                   " active nodes: each replica of a shard needs a node of its own"));
  }
  std::map<uint64_t, uint64_t> replicas, leaders;
  for (uint64_t n : nodes) replicas[n] = leaders[n] = 0;
  for (const auto& [id, g] : state.groups) {
    bool first = true;
    for (uint64_t v : g.initial_voters) {
      auto it = g.replicas.find(v);
      if (it == g.replicas.end() || !replicas.count(it->second)) continue;
      ++replicas[it->second];
      if (first) ++leaders[it->second];
      first = false;
    }
  }
  // Each shard on the nodes holding fewest replicas (reachable ones first),
  // its preferred leader the one of them leading fewest.
  std::vector<std::vector<uint64_t>> out(num_shards);
  for (uint32_t s = 0; s < num_shards; ++s) {
    std::vector<uint64_t> order = nodes;
    std::sort(order.begin(), order.end(), [&](uint64_t a, uint64_t b) {
      return std::make_tuple(avoid.count(a), replicas[a], leaders[a], a) <
             std::make_tuple(avoid.count(b), replicas[b], leaders[b], b);
    });
    std::vector<uint64_t> chosen(order.begin(), order.begin() + replication_factor);
    auto leader = std::min_element(chosen.begin(), chosen.end(), [&](uint64_t a, uint64_t b) {
      return std::make_tuple(avoid.count(a), leaders[a], replicas[a], a) <
             std::make_tuple(avoid.count(b), leaders[b], replicas[b], b);
    });
    std::iter_swap(chosen.begin(), leader);
    for (uint64_t n : chosen) ++replicas[n];
    ++leaders[chosen[0]];
    out[s] = std::move(chosen);
  }
  // Even out the preferred leaders: while a node leads two more than another
  // that a chain of these shards connects it to (a leads a shard holding b,
  // b one holding c, ...), pass the lead along the chain.
  // Each pass moves one lead; a node leads at most every shard, so this ends.
  for (size_t pass = 0; pass <= static_cast<size_t>(num_shards) * nodes.size(); ++pass) {
    std::vector<uint64_t> by_leads = nodes;
    std::sort(by_leads.begin(), by_leads.end(), [&](uint64_t a, uint64_t b) { return leaders[a] > leaders[b]; });
    uint64_t from = 0, to = 0;
    std::map<uint64_t, std::pair<uint64_t, size_t>> came;  // node -> (previous node, shard)
    for (uint64_t start : by_leads) {
      if (avoid.count(start) || to != 0) break;
      // Breadth-first over "x leads shard s, which y also holds": s moves to y.
      came.clear();
      came[start] = {0, 0};
      std::vector<uint64_t> queue = {start};
      for (size_t q = 0; q < queue.size() && to == 0; ++q) {
        const uint64_t x = queue[q];
        for (size_t sh = 0; sh < out.size() && to == 0; ++sh) {
          if (out[sh][0] != x) continue;
          for (size_t k = 1; k < out[sh].size(); ++k) {
            const uint64_t y = out[sh][k];
            if (came.count(y) || avoid.count(y)) continue;
            came[y] = {x, sh};
            if (leaders[y] + 2 <= leaders[start]) {
              to = y;
              break;
            }
            queue.push_back(y);
          }
        }
      }
      if (to != 0) from = start;
    }
    if (to == 0) break;
    ++leaders[to];
    --leaders[from];
    for (uint64_t y = to; y != from;) {
      const auto [x, sh] = came[y];
      auto it = std::find(out[sh].begin(), out[sh].end(), y);
      std::iter_swap(out[sh].begin(), it);
      y = x;
    }
  }
  return out;
}

std::string EncodeMetadataState(const MetadataState& st) {
  Json nodes = Json::array(), collections = Json::array(), groups = Json::array(), replaced = Json::array(),
       ops = Json::array();
  for (const auto& [g, op] : st.ops) ops.push_back(OpToJson(g, op));
  for (const auto& [id, n] : st.nodes) nodes.push_back(NodeToJson(n));
  for (const auto& [old, now] : st.replaced_by) replaced.push_back(Json::array({old, now}));
  for (const auto& [name, c] : st.collections) {
    Json jc{{"name", name}, {"config", Json::parse(db::ConfigToJson(c.config))}, {"groups", c.groups}};
    if (c.initial_shards != 0) jc["initial_shards"] = c.initial_shards;
    if (!c.split_queue.empty()) jc["split_queue"] = c.split_queue;
    collections.push_back(std::move(jc));
  }
  for (const auto& [id, g] : st.groups) {
    Json replicas = Json::array();
    for (const auto& [r, n] : g.replicas) replicas.push_back(Json::array({r, n}));
    Json jg{{"group", g.group},
            {"collection", g.collection},
            {"shard", g.shard},
            {"replicas", replicas},
            {"initial_voters", g.initial_voters}};
    if (g.cls.modulus != 0) jg["class"] = Json::array({g.cls.modulus, g.cls.residue});
    if (g.split_from != 0) {
      jg["split_from"] = g.split_from;
      jg["split_index"] = g.split_index;
    }
    groups.push_back(std::move(jg));
  }
  return Json{{"format", 1},
              {"applied", st.applied},
              {"next_group", st.next_group},
              {"next_replica", st.next_replica},
              {"nodes", nodes},
              {"removed_nodes", st.removed_nodes},
              {"replaced_by", replaced},
              {"collections", collections},
              {"groups", groups},
              {"ops", ops}}
      .dump();
}

absl::StatusOr<MetadataState> DecodeMetadataState(std::string_view data) {
  Json j = Json::parse(data, nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.value("format", 0) != 1) {
    return absl::DataLossError("metadata snapshot: not a metadata state of a known format");
  }
  try {
    MetadataState st;
    st.applied = j.at("applied").get<uint64_t>();
    st.next_group = j.at("next_group").get<uint64_t>();
    st.next_replica = j.at("next_replica").get<uint64_t>();
    for (const auto& n : j.at("nodes")) {
      NodeInfo info = NodeFromJson(n);
      st.nodes[info.id] = info;
    }
    st.removed_nodes = j.at("removed_nodes").get<std::set<uint64_t>>();
    for (const auto& r : j.at("replaced_by")) st.replaced_by[r.at(0).get<uint64_t>()] = r.at(1).get<uint64_t>();
    for (const auto& c : j.at("collections")) {
      CollectionEntry e;
      e.name = c.at("name").get<std::string>();
      auto config = db::ConfigFromJson(c.at("config").dump());
      if (!config.ok()) return absl::DataLossError(absl::StrCat("metadata snapshot: ", config.status().message()));
      e.config = *config;
      e.groups = c.at("groups").get<std::vector<uint64_t>>();
      e.initial_shards = c.value("initial_shards", uint32_t{0});
      e.split_queue = c.value("split_queue", std::vector<uint64_t>());
      st.collections[e.name] = std::move(e);
    }
    for (const auto& g : j.at("groups")) {
      ShardGroup sg;
      sg.group = g.at("group").get<uint64_t>();
      sg.collection = g.at("collection").get<std::string>();
      sg.shard = g.at("shard").get<uint32_t>();
      for (const auto& r : g.at("replicas")) sg.replicas[r.at(0).get<uint64_t>()] = r.at(1).get<uint64_t>();
      sg.initial_voters = g.at("initial_voters").get<std::vector<uint64_t>>();
      if (g.contains("class")) {
        sg.cls = db::HashClass{g.at("class").at(0).get<uint32_t>(), g.at("class").at(1).get<uint32_t>()};
      }
      sg.split_from = g.value("split_from", uint64_t{0});
      sg.split_index = g.value("split_index", uint64_t{0});
      st.groups[sg.group] = std::move(sg);
    }
    for (const auto& o : j.value("ops", Json::array())) st.ops[o.at("group").get<uint64_t>()] = OpFromJson(o);
    return st;
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("metadata snapshot: malformed: ", e.what()));
  }
}

MetadataMachine::MetadataMachine(std::function<void()> on_change)
    : state_(std::make_shared<const MetadataState>()), on_change_(std::move(on_change)) {}

std::shared_ptr<const MetadataState> MetadataMachine::State() const {
  std::lock_guard l(mu_);
  return state_;
}

absl::Status MetadataMachine::Restore(const raft::Snapshot& snapshot) {
  std::shared_ptr<MetadataState> next;
  if (snapshot.data.empty()) {
    // The group's first state (empty).
    next = std::make_shared<MetadataState>(*State());
  } else {
    CAIRN_ASSIGN_OR_RETURN(auto decoded, DecodeMetadataState(snapshot.data));
    next = std::make_shared<MetadataState>(std::move(decoded));
  }
  next->applied = snapshot.meta.index;
  {
    std::lock_guard l(mu_);
    state_ = std::move(next);
  }
  if (on_change_) on_change_();
  return absl::OkStatus();
}

absl::StatusOr<raft::StateMachine::Compaction> MetadataMachine::PrepareCompaction() {
  const auto st = State();
  return Compaction{st->applied, EncodeMetadataState(*st)};
}

absl::Status MetadataMachine::Apply(const std::vector<raft::Entry>& entries,
                                    std::vector<absl::StatusOr<uint64_t>>* results) {
  // Applies run one at a time (the node loop's apply of this group): the
  // copy made here is the only writer.
  bool changed = false;
  auto next = std::make_shared<MetadataState>(*State());
  for (const auto& e : entries) {
    next->applied = e.index;
    if (e.type != raft::EntryType::kNormal || e.data.empty()) {
      results->push_back(uint64_t{0});
      continue;
    }
    auto r = ApplyOne(*next, e.data);
    changed = changed || r.ok();
    results->push_back(std::move(r));
  }
  {
    std::lock_guard l(mu_);
    state_ = std::move(next);
  }
  if (changed && on_change_) on_change_();
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> MetadataMachine::ApplyOne(MetadataState& state, const std::string& data) {
  Json j = Json::parse(data, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("op")) {
    return absl::InvalidArgumentError("metadata: a command that is not a JSON object with an op");
  }
  const std::string op = j.value("op", std::string());
  try {
    if (op == "add_node") {
      NodeInfo n = NodeFromJson(j.at("node"));
      if (n.id == 0) return absl::InvalidArgumentError("metadata: node id 0");
      if (state.removed_nodes.count(n.id)) {
        return absl::FailedPreconditionError(absl::StrCat("node id ", n.id, " was removed from this cluster and may not return; "
                                                          "start the node on an empty data directory to join as a new node"));
      }
      // A node says who and where it is at every start; what the cluster does
      // with it (draining, dead) stays.
      if (auto known = state.nodes.find(n.id); known != state.nodes.end()) n.state = known->second.state;
      state.nodes[n.id] = n;
      return uint64_t{0};
    }
    if (op == "replace_node") {
      const uint64_t old_id = j.at("old").get<uint64_t>();
      NodeInfo n = NodeFromJson(j.at("node"));
      auto old = state.nodes.find(old_id);
      if (old == state.nodes.end() || state.removed_nodes.count(old_id)) {
        return absl::FailedPreconditionError(absl::StrCat("node ", old_id, " is not a member to replace"));
      }
      if (n.id == 0 || state.nodes.count(n.id) || state.removed_nodes.count(n.id)) {
        return absl::FailedPreconditionError(absl::StrCat("node id ", n.id, " is known already: not a new node"));
      }
      if (n.name != old->second.name) {
        return absl::InvalidArgumentError(absl::StrCat("node \"", n.name, "\" cannot take the place of node \"",
                                                       old->second.name, "\": the names differ"));
      }
      state.nodes[n.id] = n;
      state.removed_nodes.insert(old_id);
      state.replaced_by[old_id] = n.id;
      return uint64_t{0};
    }
    if (op == "add_replica") {
      const uint64_t gid = j.at("group").get<uint64_t>(), r = j.at("replica").get<uint64_t>(),
                     node = j.at("node").get<uint64_t>();
      auto g = state.groups.find(gid);
      if (g == state.groups.end()) return absl::NotFoundError(absl::StrCat("group ", gid, " does not exist"));
      if (r != state.next_replica) return absl::AbortedError("metadata: replica ids moved on; retry");
      if (!state.nodes.count(node) || state.removed_nodes.count(node)) {
        return absl::FailedPreconditionError(absl::StrCat("node ", node, " is not a member"));
      }
      for (const auto& [other, on] : g->second.replicas) {
        if (on == node) {
          return absl::AlreadyExistsError(absl::StrCat("group ", gid, " has a replica on node ", node, " already"));
        }
      }
      g->second.replicas[r] = node;
      ++state.next_replica;
      return r;
    }
    if (op == "remove_replica") {
      const uint64_t gid = j.at("group").get<uint64_t>(), r = j.at("replica").get<uint64_t>();
      auto g = state.groups.find(gid);
      if (g != state.groups.end()) g->second.replicas.erase(r);
      return uint64_t{0};
    }
    if (op == "create_collection") {
      const std::string name = j.at("name").get<std::string>();
      if (state.collections.count(name)) {
        return absl::AlreadyExistsError(absl::StrCat("collection \"", name, "\" already exists"));
      }
      if (j.at("first_group").get<uint64_t>() != state.next_group ||
          j.at("first_replica").get<uint64_t>() != state.next_replica) {
        return absl::AbortedError("metadata: the cluster changed while the collection was being placed; retry");
      }
      auto config = db::ConfigFromJson(j.at("config").dump());
      if (!config.ok()) return config.status();
      CollectionEntry c;
      c.name = name;
      c.config = *config;
      std::vector<ShardGroup> groups;
      uint64_t group = state.next_group, replica = state.next_replica;
      uint32_t shard = 0;
      for (const auto& gj : j.at("groups")) {
        ShardGroup g;
        g.group = gj.at("group").get<uint64_t>();
        g.collection = name;
        g.shard = shard++;
        if (g.group != group++) return absl::InvalidArgumentError("metadata: group ids out of order");
        for (const auto& rj : gj.at("replicas")) {
          const uint64_t r = rj.at("replica").get<uint64_t>(), n = rj.at("node").get<uint64_t>();
          if (r != replica++) return absl::InvalidArgumentError("metadata: replica ids out of order");
          if (!state.nodes.count(n) || state.removed_nodes.count(n)) {
            return absl::AbortedError(absl::StrCat("metadata: node ", n, " is not a member any more; retry"));
          }
          for (const auto& [other, on] : g.replicas) {
            if (on == n) return absl::InvalidArgumentError("metadata: two replicas of a shard on one node");
          }
          g.replicas[r] = n;
          g.initial_voters.push_back(r);
        }
        groups.push_back(std::move(g));
      }
      if (groups.size() != c.config.num_shards) return absl::InvalidArgumentError("metadata: a group per shard is needed");
      for (auto& g : groups) {
        c.groups.push_back(g.group);
        state.groups[g.group] = std::move(g);
      }
      const uint64_t first = state.next_group;
      state.next_group = group;
      state.next_replica = replica;
      state.collections[name] = std::move(c);
      return first;
    }
    if (op == "drop_collection") {
      const std::string name = j.at("name").get<std::string>();
      auto it = state.collections.find(name);
      if (it == state.collections.end()) {
        return absl::NotFoundError(absl::StrCat("collection \"", name, "\" does not exist"));
      }
      for (uint64_t g : it->second.groups) {
        state.groups.erase(g);
        state.ops.erase(g);
      }
      state.collections.erase(it);
      return uint64_t{0};
    }
    if (op == "update_config") {
      const std::string name = j.at("name").get<std::string>();
      auto it = state.collections.find(name);
      if (it == state.collections.end()) {
        return absl::NotFoundError(absl::StrCat("collection \"", name, "\" does not exist"));
      }
      auto config = db::ConfigFromJson(j.at("config").dump());
      if (!config.ok()) return config.status();
      it->second.config = *config;
      return uint64_t{0};
    }
    if (op == "set_node_state") {
      const uint64_t id = j.at("node").get<uint64_t>();
      const NodeState to = NodeStateFromName(j.at("state").get<std::string>());
      auto n = state.nodes.find(id);
      if (n == state.nodes.end() || state.removed_nodes.count(id)) {
        return absl::FailedPreconditionError(absl::StrCat("node ", id, " is not a member of this cluster"));
      }
      if (to == NodeState::kDead && n->second.state == NodeState::kDraining) return uint64_t{0};  // it drains anyway
      n->second.state = to;
      return uint64_t{0};
    }
    if (op == "remove_node") {
      const uint64_t id = j.at("node").get<uint64_t>();
      auto n = state.nodes.find(id);
      if (n == state.nodes.end()) return absl::NotFoundError(absl::StrCat("node ", id, " is not a member of this cluster"));
      if (state.removed_nodes.count(id)) return uint64_t{0};
      if (n->second.state == NodeState::kActive) {
        return absl::FailedPreconditionError(absl::StrCat("node \"", n->second.name, "\" is active: drain it first (cairn cluster drain ",
                                                          n->second.name, ") and remove it once it holds no replica"));
      }
      if (auto held = state.GroupsOn(id); !held.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "node \"", n->second.name, "\" still holds ", held.size(), " replica(s) (group ", held[0]->group, ", ",
            held[0]->collection, " shard ", held[0]->shard, "...): removing it now would leave those shards below "
            "their replication factor; wait until the drain has moved them (cairn cluster nodes)"));
      }
      for (const auto& [g, o] : state.ops) {
        if (o.to_node == id) {
          return absl::FailedPreconditionError(absl::StrCat("node \"", n->second.name, "\" is the target of an operation on group ", g));
        }
      }
      state.removed_nodes.insert(id);
      return uint64_t{0};
    }
    if (op == "start_op") {
      const uint64_t gid = j.at("group").get<uint64_t>();
      auto g = state.groups.find(gid);
      if (g == state.groups.end()) return absl::NotFoundError(absl::StrCat("group ", gid, " does not exist"));
      if (state.ops.count(gid)) {
        return absl::FailedPreconditionError(absl::StrCat("group ", gid, " has an operation in progress"));
      }
      GroupOp o;
      o.id = state.applied;
      o.reason = j.value("reason", std::string());
      o.to = j.value("to", uint64_t{0});
      if (j.at("kind").get<std::string>() == "split") {
        o.kind = GroupOp::Kind::kSplit;
        const db::HashClass cls = state.ClassOf(g->second);
        if (cls.modulus * 2 > db::kMaxHashModulus) {
          return absl::FailedPreconditionError(absl::StrCat("group ", gid, " owns 1/", cls.modulus,
                                                            " of the id hash: it cannot be split further"));
        }
        auto coll = state.collections.find(g->second.collection);
        if (coll != state.collections.end() && coll->second.groups.size() >= 256) {
          return absl::FailedPreconditionError(absl::StrCat("collection \"", g->second.collection,
                                                            "\" has 256 shards, the most a collection has"));
        }
        if (o.to != state.next_group || j.at("first_replica").get<uint64_t>() != state.next_replica) {
          return absl::AbortedError("metadata: group or replica ids moved on; retry");
        }
        for (const auto& [r, n] : g->second.replicas) o.child_replicas[state.next_replica++] = n;
        ++state.next_group;
        o.step = "split";
        if (coll != state.collections.end()) std::erase(coll->second.split_queue, gid);
      } else if (j.at("kind").get<std::string>() == "transfer_leader") {
        o.kind = GroupOp::Kind::kTransferLeader;
        if (!g->second.replicas.count(o.to)) {
          return absl::FailedPreconditionError(absl::StrCat("group ", gid, " has no replica ", o.to));
        }
        o.to_node = g->second.replicas.at(o.to);
        o.step = "transfer";
      } else {
        o.kind = GroupOp::Kind::kMove;
        o.from = j.value("from", uint64_t{0});
        o.to_node = j.value("to_node", uint64_t{0});
        if (o.from == 0 && o.to_node == 0) return absl::InvalidArgumentError("metadata: a move with neither end");
        if (o.from != 0 && !g->second.replicas.count(o.from)) {
          return absl::FailedPreconditionError(absl::StrCat("group ", gid, " has no replica ", o.from));
        }
        if (o.to_node != 0) {
          if (!state.Is(o.to_node, NodeState::kActive)) {
            return absl::FailedPreconditionError(absl::StrCat("node ", o.to_node, " is not an active member"));
          }
          for (const auto& [r, on] : g->second.replicas) {
            if (on == o.to_node) {
              return absl::AlreadyExistsError(absl::StrCat("group ", gid, " has a replica on node ", o.to_node, " already"));
            }
          }
          if (o.to != state.next_replica) return absl::AbortedError("metadata: replica ids moved on; retry");
          g->second.replicas[o.to] = o.to_node;
          ++state.next_replica;
        } else {
          o.to = 0;
        }
        o.step = o.to != 0 ? "add_learner" : "remove_old";
      }
      state.ops[gid] = o;
      return o.id;
    }
    if (op == "queue_splits") {
      const std::string name = j.at("name").get<std::string>();
      auto c = state.collections.find(name);
      if (c == state.collections.end()) return absl::NotFoundError(absl::StrCat("collection \"", name, "\" does not exist"));
      CollectionEntry& e = c->second;
      bool splitting = !e.split_queue.empty();
      for (uint64_t gid : e.groups) {
        auto o = state.ops.find(gid);
        splitting = splitting || (o != state.ops.end() && o->second.kind == GroupOp::Kind::kSplit);
      }
      if (splitting) {
        return absl::FailedPreconditionError(absl::StrCat("collection \"", name, "\" is being split already (cairn "
                                                          "cluster status); split again once that is done"));
      }
      if (e.groups.size() * 2 > 256) {
        return absl::FailedPreconditionError(absl::StrCat("collection \"", name, "\" has ", e.groups.size(),
                                                          " shards: splitting each would pass 256, the most a "
                                                          "collection has"));
      }
      for (uint64_t gid : e.groups) {
        auto g = state.groups.find(gid);
        if (g != state.groups.end() && state.ClassOf(g->second).modulus * 2 > db::kMaxHashModulus) {
          return absl::FailedPreconditionError(absl::StrCat("shard ", g->second.shard, " of collection \"", name,
                                                            "\" cannot be split further"));
        }
      }
      e.split_queue = e.groups;
      return static_cast<uint64_t>(e.groups.size());
    }
    if (op == "split_fenced" || op == "split_switch") {
      const uint64_t gid = j.at("group").get<uint64_t>(), id = j.at("id").get<uint64_t>();
      auto o = state.ops.find(gid);
      auto g = state.groups.find(gid);
      if (o == state.ops.end() || o->second.id != id || o->second.kind != GroupOp::Kind::kSplit ||
          g == state.groups.end()) {
        return absl::NotFoundError(absl::StrCat("group ", gid, " has no split ", id));
      }
      GroupOp& sp = o->second;
      if (op == "split_fenced") {
        if (sp.step != "split") return uint64_t{0};  // recorded already
        const uint64_t index = j.at("split_index").get<uint64_t>();
        if (index == 0) return absl::InvalidArgumentError("metadata: a split's fence needs its index");
        sp.split_index = index;
        sp.step = "open";
        return uint64_t{0};
      }
      if (sp.step == "hide") return uint64_t{0};  // switched already
      if (sp.step != "open") {
        return absl::FailedPreconditionError(absl::StrCat("the split of group ", gid, " is not fenced yet"));
      }
      // The group keeps one half of its class, the new one takes the other.
      auto coll = state.collections.find(g->second.collection);
      if (coll == state.collections.end()) return absl::NotFoundError("metadata: the split's collection is gone");
      ShardGroup child = state.SplitChild(gid, sp);
      g->second.cls = state.ClassOf(g->second).KeepHalf();
      if (coll->second.initial_shards == 0) coll->second.initial_shards = coll->second.config.num_shards;
      coll->second.groups.push_back(child.group);
      coll->second.config.num_shards = static_cast<uint32_t>(coll->second.groups.size());
      state.groups[child.group] = std::move(child);
      sp.step = "hide";
      return uint64_t{0};
    }
    if (op == "op_step" || op == "end_op") {
      const uint64_t gid = j.at("group").get<uint64_t>(), id = j.at("id").get<uint64_t>();
      auto o = state.ops.find(gid);
      if (o == state.ops.end() || o->second.id != id) {
        return absl::NotFoundError(absl::StrCat("group ", gid, " has no operation ", id));
      }
      if (op == "op_step") {
        o->second.step = j.at("step").get<std::string>();
        return uint64_t{0};
      }
      auto g = state.groups.find(gid);
      if (g != state.groups.end() && o->second.kind == GroupOp::Kind::kMove) {
        g->second.replicas.erase(j.value("abandoned", false) ? o->second.to : o->second.from);
      }
      if (o->second.kind == GroupOp::Kind::kSplit && o->second.step != "hide") {
        return absl::FailedPreconditionError(absl::StrCat("the split of group ", gid, " is not switched yet: it "
                                                          "cannot be undone, only finished"));
      }
      state.ops.erase(o);
      return uint64_t{0};
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("metadata: malformed ", op, " command: ", e.what()));
  }
  return absl::InvalidArgumentError(absl::StrCat("metadata: unknown op \"", op, "\""));
}

}  // namespace cairn::cluster
