#include "tests/simulation/simulator.h"

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "replication/log_storage.h"
#include "replication/raft.h"

namespace cairn::sim {
namespace {

using raft::ConfChange;
using raft::Entry;
using raft::EntryType;
using raft::Message;
using raft::MessageType;
using raft::Raft;
using raft::Ready;
using raft::Role;

constexpr uint64_t kUnitsPerTick = 10;
constexpr int kElectionTick = 10;

struct Violation {
  std::string what;
};

struct InFlight {
  uint64_t due;
  uint64_t seq;
  Message msg;
  uint64_t sender_incarnation;
  bool operator>(const InFlight& o) const { return due != o.due ? due > o.due : seq > o.seq; }
};

struct PendingRead {
  uint64_t client;
  uint64_t seq;
  std::string key;
};

struct Node {
  uint64_t id = 0;
  std::unique_ptr<raft::MemoryStorage> storage;  // survives crashes
  std::unique_ptr<Raft> raft;                    // null while down
  uint64_t incarnation = 0;
  KvStateMachine sm;
  uint64_t applied = 0;
  uint64_t last_commit = 0;  // the highest commit index it ever persisted
  Role role = Role::kFollower;
  uint64_t term = 0;
  std::vector<raft::ReadState> reads;              // waiting for applied >= index
  std::map<std::string, PendingRead> read_owners;  // context -> who asked
  std::set<std::pair<uint64_t, uint64_t>> writes;  // (client, seq) proposed here
  uint64_t down_until = 0;
  // The driver's keepalive bookkeeping (Simulation::Keepalives): when each
  // other node was last heard, from this incarnation's start at the earliest.
  uint64_t started = 0;
  std::map<uint64_t, uint64_t> heard;
  std::set<uint64_t> revived;  // heard again after a silence, since the last tick
  bool quiet = false;           // as of the last tick, for the stats
  // Removed from the group: shut down for good, as an operator would (a
  // removed id never rejoins; a new member gets a new id).
  bool decommissioned = false;
};

struct Client {
  uint64_t id = 0;
  uint64_t seq = 0;
  bool busy = false;
  size_t op = 0;  // index into history
  KvOp kvop;
  uint64_t target = 0;
  uint64_t deadline = 0;
  uint64_t next_try = 0;
  int attempt = 0;
};

class Simulation {
 public:
  explicit Simulation(const SimOptions& o) : o_(o), rng_(o.seed * 0x9E3779B97F4A7C15ull + 7) {}

  SimResult Run() {
    SimResult result;
    try {
      Setup();
      const uint64_t fault_end = static_cast<uint64_t>(o_.fault_ticks) * kUnitsPerTick;
      fault_end_ = fault_end;
      const uint64_t end = fault_end + static_cast<uint64_t>(o_.quiet_ticks) * kUnitsPerTick;
      ops_end_ = fault_end + static_cast<uint64_t>(o_.quiet_ticks) * kUnitsPerTick / 2;
      for (now_ = 0; now_ < end; ++now_) {
        if (now_ == fault_end) Heal();
        if (now_ < fault_end) Faults();
        Deliver();
        if (now_ % kUnitsPerTick == 0) TickAll();
        Clients();
        if (now_ % (100 * kUnitsPerTick) == 0) CheckLogMatching();
      }
      Finish();
      auto lin = CheckKvLinearizable(history_);
      if (!lin.ok) {
        throw Violation{absl::StrCat("history not linearizable on key ", lin.key, ":\n", lin.explanation)};
      }
    } catch (const Violation& v) {
      result.ok = false;
      result.violation = absl::StrCat("seed ", o_.seed, " at time ", now_, ": ", v.what);
    }
    for (const auto& line : trace_) absl::StrAppend(&result.trace, line, "\n");
    stats_.committed = global_.empty() ? 0 : global_.rbegin()->first;
    result.stats = stats_;
    result.history = std::move(history_);
    return result;
  }

 private:
  uint64_t Rand(uint64_t n) { return n == 0 ? 0 : rng_() % n; }
  bool Chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  template <typename... Args>
  void Trace(const Args&... args) {
    if (o_.trace_lines <= 0) return;
    trace_.push_back(absl::StrCat("t=", now_, " ", args...));
    if (trace_.size() > static_cast<size_t>(o_.trace_lines)) trace_.pop_front();
  }

  void Fail(const std::string& what) { throw Violation{what}; }

  // ---- setup --------------------------------------------------------------------

  void Setup() {
    const int n = o_.nodes > 0 ? o_.nodes : (Rand(2) == 0 ? 3 : 5);
    membership_ = o_.membership && n >= 4;
    const int voters = membership_ ? 3 : n;
    drop_ = o_.message_faults ? 0.01 * static_cast<double>(Rand(11)) : 0;  // 0-10%
    dup_ = o_.message_faults ? 0.01 * static_cast<double>(Rand(6)) : 0;
    max_delay_ = o_.message_faults ? 1 + Rand(30) : 1;
    snapshot_every_ = o_.snapshots ? 10 + Rand(60) : 0;
    snapshot_keep_ = Rand(8);
    pre_vote_ = Rand(4) != 0;
    check_quorum_ = Rand(4) != 0;
    lease_reads_ = check_quorum_ && Rand(2) == 0;
    std::vector<uint64_t> initial;
    for (int i = 1; i <= voters; ++i) initial.push_back(static_cast<uint64_t>(i));
    for (int i = 1; i <= n; ++i) {
      Node node;
      node.id = static_cast<uint64_t>(i);
      node.storage = std::make_unique<raft::MemoryStorage>();
      if (i <= voters) {
        if (auto st = raft::Bootstrap(node.storage.get(), initial); !st.ok()) Fail(st.ToString());
      }
      nodes_.emplace(node.id, std::move(node));
    }
    for (auto& [id, node] : nodes_) Start(node);
    for (int c = 1; c <= o_.clients; ++c) {
      Client cl;
      cl.id = static_cast<uint64_t>(c);
      cl.target = 1 + Rand(static_cast<uint64_t>(n));
      clients_.push_back(cl);
    }
    Trace("nodes=", n, " voters=", voters, " drop=", drop_, " dup=", dup_, " max_delay=", max_delay_,
          " snapshot_every=", snapshot_every_, " pre_vote=", pre_vote_, " check_quorum=", check_quorum_,
          " lease_reads=", lease_reads_);
  }

  void Start(Node& node) {
    raft::Config cfg;
    cfg.id = node.id;
    cfg.storage = node.storage.get();
    cfg.election_tick = kElectionTick;
    cfg.heartbeat_tick = 1;
    cfg.pre_vote = pre_vote_;
    cfg.check_quorum = check_quorum_;
    cfg.lease_reads = lease_reads_;
    cfg.quiesce = o_.quiesce;
    cfg.max_size_per_msg = 1 + Rand(2) * 400;  // one entry per message, or a few
    cfg.max_inflight_msgs = 1 + Rand(8);
    auto node_rng = std::make_shared<std::mt19937_64>(rng_());
    cfg.rand = [node_rng](uint64_t n) { return (*node_rng)() % n; };
    auto r = Raft::Create(cfg);
    if (!r.ok()) Fail(absl::StrCat("node ", node.id, " does not start: ", r.status().ToString()));
    node.raft = std::move(*r);
    node.incarnation++;
    node.started = now_;
    node.heard.clear();
    node.revived.clear();
    // The state machine restarts from the snapshot; the entries after it are
    // handed out again (compaction may keep entries before it: not those).
    const raft::Snapshot snap = node.storage->GetSnapshot();
    node.sm = KvStateMachine::Restore(snap.data);
    node.applied = snap.empty() ? node.storage->FirstIndex() - 1 : snap.meta.index;
    node.role = Role::kFollower;
    node.term = node.raft->term();
    const uint64_t commit = node.storage->InitialHardState().commit;
    if (commit < node.last_commit) {
      Fail(absl::StrCat("node ", node.id, " restarted with commit ", commit, " after persisting ", node.last_commit));
    }
    Trace("node ", node.id, " starts (term ", node.term, ", commit ", commit, ", applied ", node.applied, ")");
  }

  // ---- faults -----------------------------------------------------------------------

  void Faults() {
    if (o_.partitions && now_ % kUnitsPerTick == 0) {
      if (partition_.empty() && Chance(0.01)) {
        // Cut a random set off, often just the leader.
        std::vector<uint64_t> ids;
        for (auto& [id, n] : nodes_) ids.push_back(id);
        const uint64_t leader = CurrentLeader();
        if (leader != 0 && Chance(0.5)) {
          partition_.insert(leader);
        } else {
          std::shuffle(ids.begin(), ids.end(), rng_);
          const size_t k = 1 + Rand(ids.size() - 1);
          partition_.insert(ids.begin(), ids.begin() + static_cast<ptrdiff_t>(k));
        }
        // Some failures are one-way: the cut-off side still hears the rest.
        one_way_ = Chance(0.3);
        heal_at_ = now_ + (5 + Rand(60)) * kUnitsPerTick;
        stats_.partitions++;
        Trace(one_way_ ? "one-way " : "", "partition {", absl::StrJoin(partition_, ","), "}");
      } else if (!partition_.empty() && now_ >= heal_at_) {
        partition_.clear();
        Trace("partition healed");
      }
    }
    if (o_.crashes && now_ % kUnitsPerTick == 0) {
      for (auto& [id, node] : nodes_) {
        if (node.raft && Chance(0.002)) {
          Crash(node);
          node.down_until = now_ + (1 + Rand(40)) * kUnitsPerTick;
        } else if (!node.raft && !node.decommissioned && now_ >= node.down_until) {
          Start(node);
        }
      }
    }
    if (membership_ && now_ % kUnitsPerTick == 0 && Chance(0.04)) {
      ChangeMembership();
      if (Chance(0.3)) ChangeMembership();  // the second must wait for the first
    }
  }

  void Crash(Node& node) {
    Trace("node ", node.id, " crashes");
    stats_.crashes++;
    node.raft.reset();
    node.sm = KvStateMachine();
    node.applied = 0;
    node.reads.clear();
    node.read_owners.clear();
    node.writes.clear();
  }

  void Heal() {
    partition_.clear();
    for (auto& [id, node] : nodes_) {
      if (!node.raft && !node.decommissioned) Start(node);
    }
    Trace("healed; every node up");
  }

  uint64_t CurrentLeader() const {
    uint64_t best = 0, term = 0;
    for (const auto& [id, node] : nodes_) {
      if (node.raft && node.raft->role() == Role::kLeader && node.raft->term() >= term) {
        best = id;
        term = node.raft->term();
      }
    }
    return best;
  }

  void ChangeMembership() {
    const uint64_t leader = CurrentLeader();
    if (leader == 0) return;
    Node& l = nodes_.at(leader);
    const raft::ConfState& conf = l.raft->conf();
    std::vector<uint64_t> outside, learners = conf.learners, voters = conf.voters;
    for (auto& [id, n] : nodes_) {
      if (!n.decommissioned && !removed_.count(id) && !std::binary_search(voters.begin(), voters.end(), id) &&
          !std::binary_search(learners.begin(), learners.end(), id)) {
        outside.push_back(id);
      }
    }
    ConfChange cc;
    const uint64_t pick = Rand(3);
    if (pick == 0 && !outside.empty()) {
      cc = {ConfChange::Type::kAddLearner, outside[Rand(outside.size())]};
    } else if (pick == 1 && !learners.empty()) {
      cc = {ConfChange::Type::kAddVoter, learners[Rand(learners.size())]};
    } else if (pick == 2 && voters.size() > 3) {
      cc = {ConfChange::Type::kRemove, voters[Rand(voters.size())]};
    } else {
      return;
    }
    if (l.raft->ProposeConfChange(cc).ok()) {
      stats_.conf_changes++;
      Trace("node ", leader, " proposes ", static_cast<int>(cc.type), " of node ", cc.node);
      Process(l);
    }
  }

  // Can a message from `a` reach `b`?
  bool Connected(uint64_t a, uint64_t b) const {
    if (partition_.count(a) == partition_.count(b)) return true;
    return one_way_ && !partition_.count(a);
  }

  // ---- network ------------------------------------------------------------------------

  void Send(const Node& from, Message m) {
    stats_.messages++;
    if (m.type == MessageType::kSnap) stats_.snapshots_sent++;
    if (Chance(dup_)) {
      stats_.duplicated++;
      net_.push(InFlight{now_ + 1 + Rand(max_delay_), seq_++, m, from.incarnation});
    }
    net_.push(InFlight{now_ + 1 + Rand(max_delay_), seq_++, std::move(m), from.incarnation});
  }

  void Deliver() {
    while (!net_.empty() && net_.top().due <= now_) {
      InFlight f = net_.top();
      net_.pop();
      const Message& m = f.msg;
      auto to = nodes_.find(m.to);
      const bool lost = to == nodes_.end() || !to->second.raft || !Connected(m.from, m.to) || Chance(drop_);
      if (m.type == MessageType::kSnap) {
        // The transport knows whether a snapshot stream finished.
        Node& from = nodes_.at(m.from);
        if (from.raft && from.incarnation == f.sender_incarnation) {
          from.raft->ReportSnapshot(m.to, !lost);
          Process(from);
        }
      }
      if (lost) {
        stats_.dropped++;
        continue;
      }
      stats_.steps++;
      Node& node = to->second;
      if (auto st = node.raft->Step(m); !st.ok()) {
        Fail(absl::StrCat("node ", node.id, " rejects ", std::string(raft::MessageTypeName(m.type)), ": ", st.ToString()));
      }
      Process(node);
    }
  }

  void TickAll() {
    for (uint64_t id : removed_) {
      Node& node = nodes_.at(id);
      if (node.decommissioned) continue;
      Trace("node ", id, " is removed: shut down");
      node.decommissioned = true;
      node.raft.reset();
    }
    if (o_.quiesce) Keepalives();
    for (auto& [id, node] : nodes_) {
      if (!node.raft) continue;
      stats_.steps++;
      node.raft->Tick();
      Process(node);
      if (node.raft && node.raft->quiesced() && !node.quiet) stats_.quiesced++;
      node.quiet = node.raft && node.raft->quiesced();
    }
  }

  // What raft::Node does for quiet groups: keepalives between nodes, and the
  // wake-ups they decide.
  void Keepalives() {
    for (auto& [to, b] : nodes_) {
      if (!b.raft) continue;
      for (auto& [from, a] : nodes_) {
        if (from == to || !a.raft || !Connected(from, to) || Chance(drop_)) continue;
        const uint64_t last = std::max(b.heard[from], b.started);
        if (now_ - last >= 3 * kUnitsPerTick) b.revived.insert(from);
        b.heard[from] = now_;
      }
    }
    const uint64_t silence = static_cast<uint64_t>(kElectionTick) * kUnitsPerTick;
    for (auto& [id, node] : nodes_) {
      if (!node.raft || !node.raft->quiesced()) continue;
      if (node.raft->role() == Role::kLeader) {
        bool silent_voter = false;
        for (uint64_t v : node.raft->conf().voters) {
          if (v != id && now_ - std::max(node.heard[v], node.started) >= silence) silent_voter = true;
        }
        if (!node.revived.empty() || silent_voter) {
          Trace("node ", id, silent_voter ? ": a voter is silent" : ": a member is back", ", wake the quiet leader");
          stats_.woken++;
          node.raft->Unquiesce(/*leader_lost=*/false);
        }
      } else {
        const uint64_t leader = node.raft->leader();
        const uint64_t last = leader == 0 ? node.started : std::max(node.heard[leader], node.started);
        if (now_ - last >= silence) {
          Trace("node ", id, ": leader ", leader, " silent, wake the quiet follower");
          stats_.woken++;
          node.raft->Unquiesce(/*leader_lost=*/true);
        }
      }
      Process(node);
    }
    for (auto& [id, node] : nodes_) node.revived.clear();
  }

  // ---- the driver: Ready handling -------------------------------------------------------

  void Process(Node& node) {
    while (node.raft && node.raft->HasReady()) {
      Ready rd = node.raft->GetReady();
      CheckRole(node, rd);
      // 1. Persist.
      if (rd.snapshot) {
        if (auto st = node.storage->ApplySnapshot(*rd.snapshot); !st.ok()) Fail(st.ToString());
      }
      if (auto st = node.storage->Append(rd.entries); !st.ok()) Fail(st.ToString());
      if (rd.hard_state) {
        if (rd.hard_state->commit < node.last_commit) {
          Fail(absl::StrCat("node ", node.id, " commit went back from ", node.last_commit, " to ",
                            rd.hard_state->commit));
        }
        node.last_commit = rd.hard_state->commit;
        raft::HardState hs = *rd.hard_state;
        if (o_.unsafe_skip_persistence) {
          hs.term = node.storage->InitialHardState().term;
          hs.vote = node.storage->InitialHardState().vote;
        }
        if (auto st = node.storage->SetHardState(hs); !st.ok()) Fail(st.ToString());
      }
      if (CrashMidReady(node, "after persisting a Ready, before sending it")) return;
      // 2. Send.
      for (Message& m : rd.messages) Send(node, std::move(m));
      if (CrashMidReady(node, "after sending a Ready, before applying it")) return;
      // 3. Apply.
      if (rd.snapshot) {
        node.sm = KvStateMachine::Restore(rd.snapshot->data);
        node.applied = rd.snapshot->meta.index;
        Trace("node ", node.id, " installs snapshot at ", node.applied);
      }
      for (const Entry& e : rd.committed) Apply(node, e);
      node.reads.insert(node.reads.end(), rd.reads.begin(), rd.reads.end());
      ServeReads(node);
      node.raft->Advance(rd);
      MaybeSnapshot(node);
    }
  }

  // Crashes in the middle of handling a Ready: what was persisted stays,
  // what was not done is lost, and Advance never happens.
  bool CrashMidReady(Node& node, const char* where) {
    if (!o_.crashes || now_ >= fault_end_ || !Chance(0.0005)) return false;
    Trace("node ", node.id, " crashes ", where);
    Crash(node);
    node.down_until = now_ + (1 + Rand(40)) * kUnitsPerTick;
    return true;
  }

  void CheckRole(Node& node, const Ready& rd) {
    stats_.max_term = std::max(stats_.max_term, rd.term);
    if (rd.role == Role::kLeader && (node.role != Role::kLeader || node.term != rd.term)) {
      // §5.2 election safety, §5.4 leader completeness.
      auto [it, fresh] = leaders_.emplace(rd.term, node.id);
      if (!fresh && it->second != node.id) {
        Fail(absl::StrCat("two leaders in term ", rd.term, ": nodes ", it->second, " and ", node.id));
      }
      stats_.leaders++;
      Trace("node ", node.id, " leads term ", rd.term);
      const auto& log = node.raft->log();
      for (auto g = global_.lower_bound(log.FirstIndex()); g != global_.end(); ++g) {
        if (log.TermOrZero(g->first) != g->second.term) {
          Fail(absl::StrCat("leader ", node.id, " of term ", rd.term, " lacks committed entry ", g->first,
                            " (term ", g->second.term, "; it has term ", log.TermOrZero(g->first), ")"));
        }
      }
    }
    node.role = rd.role;
    node.term = rd.term;
  }

  void Apply(Node& node, const Entry& e) {
    if (e.index != node.applied + 1) {
      Fail(absl::StrCat("node ", node.id, " applies ", e.index, " after ", node.applied));
    }
    node.applied = e.index;
    auto [g, fresh] = global_.emplace(e.index, e);
    if (!fresh && (g->second.term != e.term || g->second.data != e.data || g->second.type != e.type)) {
      Fail(absl::StrCat("state machine safety: node ", node.id, " applies (term ", e.term, ") at ", e.index,
                        " where another applied (term ", g->second.term, ")"));
    }
    if (e.type == EntryType::kConfChange) {
      auto cc = ConfChange::Decode(e.data);
      if (!cc.ok()) Fail(cc.status().ToString());
      if (cc->type == ConfChange::Type::kRemove) removed_.insert(cc->node);
      return;
    }
    auto cmd = DecodeCommand(e.data);
    if (!cmd) return;  // the no-op
    const std::string result = node.sm.Apply(*cmd);
    if (node.writes.erase({cmd->client, cmd->seq})) Respond(cmd->client, cmd->seq, result);
  }

  void ServeReads(Node& node) {
    for (auto it = node.reads.begin(); it != node.reads.end();) {
      if (it->index > node.applied) {
        ++it;
        continue;
      }
      auto owner = node.read_owners.find(it->context);
      if (owner != node.read_owners.end()) {
        stats_.reads_via_read_index++;
        Respond(owner->second.client, owner->second.seq, node.sm.Read(owner->second.key));
        node.read_owners.erase(owner);
      }
      it = node.reads.erase(it);
    }
  }

  void MaybeSnapshot(Node& node) {
    if (snapshot_every_ == 0 || node.applied < node.storage->FirstIndex() + snapshot_every_) return;
    if (auto st = node.storage->CreateSnapshot(node.applied, node.raft->conf(), node.sm.Serialize(), snapshot_keep_);
        !st.ok()) {
      Fail(st.ToString());
    }
    stats_.snapshots_taken++;
  }

  // ---- invariants over whole logs ---------------------------------------------------------

  // §5.3 log matching: two logs with an entry of the same index and term
  // hold the same entries up to it.
  void CheckLogMatching() {
    std::vector<Node*> up;
    for (auto& [id, n] : nodes_) {
      if (n.raft) up.push_back(&n);
    }
    for (size_t a = 0; a < up.size(); ++a) {
      for (size_t b = a + 1; b < up.size(); ++b) {
        const auto& la = up[a]->raft->log();
        const auto& lb = up[b]->raft->log();
        const uint64_t lo = std::max(la.FirstIndex(), lb.FirstIndex());
        uint64_t hi = std::min(la.LastIndex(), lb.LastIndex());
        while (hi >= lo && la.TermOrZero(hi) != lb.TermOrZero(hi)) --hi;
        if (hi < lo) continue;
        auto ea = la.Slice(lo, hi + 1, UINT64_MAX);
        auto eb = lb.Slice(lo, hi + 1, UINT64_MAX);
        if (!ea.ok() || !eb.ok()) Fail("log matching: unreadable log");
        for (size_t i = 0; i < ea->size(); ++i) {
          if (!((*ea)[i] == (*eb)[i])) {
            Fail(absl::StrCat("log matching: nodes ", up[a]->id, " and ", up[b]->id, " agree at ", hi,
                              " but differ at ", (*ea)[i].index));
          }
        }
      }
    }
  }

  // ---- clients ------------------------------------------------------------------------------

  void Clients() {
    for (Client& c : clients_) {
      if (!c.busy) {
        if (now_ >= ops_end_ || now_ < c.next_try) continue;
        StartOp(c);
      } else if (now_ >= c.deadline) {
        // No answer: try another node, with the same seq (sessions dedupe).
        c.attempt++;
        c.target = 1 + Rand(nodes_.size());
        Submit(c);
      } else if (now_ >= c.next_try && c.next_try != 0) {
        Submit(c);
      }
    }
  }

  void StartOp(Client& c) {
    c.busy = true;
    c.seq++;
    c.attempt = 0;
    KvOp op;
    op.key = absl::StrCat("k", Rand(static_cast<uint64_t>(o_.keys)));
    const uint64_t kind = Rand(10);
    if (kind < 4) {
      op.kind = KvOp::Kind::kPut;
      op.value = absl::StrCat("c", c.id, "-", c.seq);
    } else if (kind < 8) {
      op.kind = KvOp::Kind::kGet;
    } else {
      op.kind = KvOp::Kind::kCas;
      op.value = absl::StrCat("c", c.id, "-", c.seq);
      auto& seen = values_[op.key];
      op.expected = seen.empty() || Rand(4) == 0 ? std::string(kAbsent) : seen[Rand(seen.size())];
    }
    if (op.kind != KvOp::Kind::kGet) values_[op.key].push_back(op.value);
    c.kvop = op;
    c.op = history_.size();
    HistoryOp h;
    h.client = c.id;
    h.op = op;
    h.call = ++event_clock_;
    history_.push_back(std::move(h));
    Submit(c);
  }

  void Submit(Client& c) {
    stats_.steps++;
    c.deadline = now_ + (10 + Rand(20)) * kUnitsPerTick;
    c.next_try = 0;
    Node& node = nodes_.at(c.target);
    if (!node.raft) {
      c.next_try = now_ + kUnitsPerTick;
      c.target = 1 + Rand(nodes_.size());
      return;
    }
    absl::Status st;
    // Gets go through ReadIndex (3 in 4) or through the log.
    if (c.kvop.kind == KvOp::Kind::kGet && (c.seq + c.attempt) % 4 != 0) {
      const std::string ctx = absl::StrCat("r", c.id, "-", c.seq, "-", c.attempt);
      st = node.raft->ReadIndex(ctx);
      if (st.ok()) node.read_owners[ctx] = PendingRead{c.id, c.seq, c.kvop.key};
    } else {
      st = node.raft->Propose(EncodeCommand(Command{c.id, c.seq, c.kvop}));
      if (st.ok()) node.writes.insert({c.id, c.seq});
    }
    if (!st.ok()) {
      // Not now: ask whom the node names as leader, shortly.
      c.next_try = now_ + kUnitsPerTick;
      c.target = node.raft->leader() != 0 ? node.raft->leader() : 1 + Rand(nodes_.size());
    }
    Process(node);
  }

  void Respond(uint64_t client, uint64_t seq, const std::string& result) {
    Client& c = clients_.at(client - 1);
    if (!c.busy || c.seq != seq) return;  // an answer to an earlier attempt, already taken
    HistoryOp& h = history_[c.op];
    h.completed = true;
    h.output = result;
    h.ret = ++event_clock_;
    c.busy = false;
    c.next_try = now_ + Rand((o_.quiesce ? 40 : 3) * kUnitsPerTick);
    stats_.ops_completed++;
  }

  // ---- the end ----------------------------------------------------------------------------

  // Each node's view, for a person reading a liveness failure.
  std::string Nodes() const {
    std::string out;
    for (const auto& [id, n] : nodes_) {
      if (!n.raft) {
        absl::StrAppend(&out, "\n  node ", id, n.decommissioned ? ": removed, shut down" : ": down");
        continue;
      }
      const auto& r = *n.raft;
      absl::StrAppend(&out, "\n  node ", id, ": ", std::string(raft::RoleName(r.role())), " term ", r.term(),
                      " leader ", r.leader(), " voters ", absl::StrJoin(r.conf().voters, ","), " learners ",
                      absl::StrJoin(r.conf().learners, ","), " commit ", r.log().committed(), " applied ",
                      r.log().applied(), " last ", r.log().LastIndex(), " (term ", r.log().LastTerm(), ") first ", r.log().FirstIndex(), " vote ", r.vote(),
                      r.quiesced() ? " quiet" : "");
    }
    return out;
  }

  void Finish() {
    for (const Client& c : clients_) {
      if (c.busy) {
        Fail(absl::StrCat("liveness: client ", c.id, "'s ", DescribeOp(c.kvop), " (seq ", c.seq,
                          ") did not finish in ", o_.quiet_ticks, " healed ticks", Nodes()));
      }
    }
    // Every member converges on the same state once healed.
    const uint64_t leader = CurrentLeader();
    if (leader == 0) Fail(absl::StrCat("liveness: no leader after ", o_.quiet_ticks, " healed ticks", Nodes()));
    const raft::ConfState conf = nodes_.at(leader).raft->conf();
    const Node* ref = nullptr;
    uint64_t top = 0;
    for (const auto& [id, n] : nodes_) top = std::max(top, n.applied);
    for (const auto& [id, n] : nodes_) {
      const bool member = std::binary_search(conf.voters.begin(), conf.voters.end(), id) ||
                          std::binary_search(conf.learners.begin(), conf.learners.end(), id);
      if (!member) continue;  // removed nodes stop hearing from the group
      if (n.applied != top) {
        Fail(absl::StrCat("convergence: node ", id, " applied ", n.applied, " while another applied ", top));
      }
      if (ref && !(ref->sm == n.sm)) Fail(absl::StrCat("convergence: node ", id, "'s state differs"));
      ref = &n;
    }
  }

  const SimOptions o_;
  std::mt19937_64 rng_;
  std::map<uint64_t, Node> nodes_;
  std::vector<Client> clients_;
  std::priority_queue<InFlight, std::vector<InFlight>, std::greater<>> net_;
  std::set<uint64_t> partition_;
  bool one_way_ = false;
  uint64_t heal_at_ = 0;
  std::map<uint64_t, uint64_t> leaders_;  // term -> leader
  std::map<uint64_t, Entry> global_;      // index -> the entry applied there
  std::set<uint64_t> removed_;            // removals some node applied
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<HistoryOp> history_;
  std::deque<std::string> trace_;
  SimStats stats_;
  uint64_t now_ = 0;
  uint64_t seq_ = 0;
  uint64_t event_clock_ = 0;
  uint64_t ops_end_ = 0;
  uint64_t fault_end_ = 0;
  bool membership_ = false;
  double drop_ = 0, dup_ = 0;
  uint64_t max_delay_ = 1;
  uint64_t snapshot_every_ = 0;
  uint64_t snapshot_keep_ = 0;
  bool pre_vote_ = true, check_quorum_ = true, lease_reads_ = false;
};

}  // namespace

void SimStats::Add(const SimStats& o) {
  steps += o.steps;
  messages += o.messages;
  dropped += o.dropped;
  duplicated += o.duplicated;
  partitions += o.partitions;
  crashes += o.crashes;
  leaders += o.leaders;
  conf_changes += o.conf_changes;
  snapshots_sent += o.snapshots_sent;
  snapshots_taken += o.snapshots_taken;
  ops_completed += o.ops_completed;
  ops_unfinished += o.ops_unfinished;
  reads_via_read_index += o.reads_via_read_index;
  quiesced += o.quiesced;
  woken += o.woken;
  max_term = std::max(max_term, o.max_term);
  committed += o.committed;
}

std::string SimStats::ToString() const {
  return absl::StrCat("steps ", steps, ", messages ", messages, " (dropped ", dropped, ", duplicated ", duplicated,
                      "), partitions ", partitions, ", crashes ", crashes, ", elections won ", leaders,
                      ", membership changes ", conf_changes, ", snapshots taken ", snapshots_taken, " / sent ",
                      snapshots_sent, ", client ops ", ops_completed, " (ReadIndex reads ", reads_via_read_index,
                      "), entries committed ", committed, ", highest term ", max_term,
                      quiesced > 0 ? absl::StrCat(", went quiet ", quiesced, " times, woken by the driver ", woken)
                                   : std::string());
}

SimResult RunSimulation(const SimOptions& options) { return Simulation(options).Run(); }

}  // namespace cairn::sim
