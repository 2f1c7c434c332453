#include "replication/node.h"

#include <algorithm>
#include <cstdio>
#include <future>
#include <random>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"
#include "storage/byte_codec.h"

namespace cairn::raft {
namespace {

using Clock = std::chrono::steady_clock;
using storage::ByteReader;
using storage::PutU64;

// In front of every proposal's data: who proposed it, so the node that did
// recognises it when it applies it.
constexpr char kEntryFormat = 1;
constexpr size_t kHeaderBytes = 1 + 3 * 8;

struct Origin {
  uint64_t node = 0;
  uint64_t incarnation = 0;
  uint64_t seq = 0;
};

std::string Wrap(const Origin& o, std::string_view data) {
  std::string out;
  out.reserve(kHeaderBytes + data.size());
  out.push_back(kEntryFormat);
  PutU64(&out, o.node);
  PutU64(&out, o.incarnation);
  PutU64(&out, o.seq);
  out.append(data);
  return out;
}

// Splits a normal entry's data into its origin and the application's data.
bool Unwrap(std::string_view data, Origin* o, std::string_view* app) {
  if (data.size() < kHeaderBytes || data[0] != kEntryFormat) return false;
  ByteReader r{data.substr(1)};
  o->node = r.U64();
  o->incarnation = r.U64();
  o->seq = r.U64();
  *app = r.in;
  return r.ok;
}

}  // namespace

// Runs a turn's apply work, one task per group, on a few threads.
class Node::ApplyPool {
 public:
  explicit ApplyPool(int threads) {
    for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { Work(); });
  }
  ~ApplyPool() {
    {
      std::lock_guard l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Runs every task and returns when all are done.
  void RunAll(std::vector<std::function<void()>> tasks) {
    if (tasks.size() == 1) {
      tasks[0]();
      return;
    }
    std::unique_lock l(mu_);
    for (auto& t : tasks) queue_.push_back(std::move(t));
    left_ += tasks.size();
    cv_.notify_all();
    done_cv_.wait(l, [this] { return left_ == 0; });
  }

 private:
  void Work() {
    std::unique_lock l(mu_);
    while (true) {
      cv_.wait(l, [this] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      auto task = std::move(queue_.back());
      queue_.pop_back();
      l.unlock();
      task();
      l.lock();
      if (--left_ == 0) done_cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::function<void()>> queue_;
  size_t left_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

struct Node::Inbox {
  std::vector<std::function<void()>> tasks;
};

struct Node::Pending {
  ProposeDone done;
  Clock::time_point deadline;
  Clock::time_point start;
  uint64_t index = 0;  // where the leader appended it, when proposed on the leader
};

struct Node::Group {
  GroupSpec spec;
  std::unique_ptr<RocksLogStorage> log;
  std::unique_ptr<Raft> raft;
  uint64_t applied = 0;
  uint64_t leader = kNone;
  uint64_t leader_changes = 0;
  uint64_t proposals_applied = 0;
  double proposal_seconds = 0;
  uint64_t compactions = 0;
  uint64_t snapshots_installed = 0;
  bool compactable = true;  // false once the state machine said it takes no snapshots
  uint64_t compact_not_before = 0;  // after a failed compaction: the applied index to try again at
  Clock::time_point leader_contact{};  // the last message from the current leader
  bool stopped = false;
  std::string stop_reason;
  // A snapshot is being installed off the loop: the group's Ready (`rd`,
  // persisted and sent) waits for it, and no other Ready is taken meanwhile.
  bool installing = false;
  uint64_t install_id = 0;
  std::thread installer;
  std::map<uint64_t, Pending> proposals;  // by sequence number

  struct Reader {
    Clock::time_point deadline;
    std::function<void(absl::Status)> done;
  };
  std::vector<Reader> reads_unsent;                         // for the next round
  std::map<std::string, std::vector<Reader>> reads_asked;   // by the round's context
  std::multimap<uint64_t, Reader> reads_waiting;            // by the index to apply

  Ready rd;
};

Node::Node(NodeOptions options)
    : options_(std::move(options)),
      incarnation_(std::random_device{}() ^ (static_cast<uint64_t>(Clock::now().time_since_epoch().count()) << 1)),
      pool_(std::make_unique<ApplyPool>(options_.apply_threads)),
      inbox_(std::make_unique<Inbox>()),
      started_(Clock::now()) {}

absl::StatusOr<std::unique_ptr<Node>> Node::Start(NodeOptions options) {
  if (options.node_id == kNone) return absl::InvalidArgumentError("node: node_id must be nonzero");
  if (options.store == nullptr || options.transport == nullptr) {
    return absl::InvalidArgumentError("node: a log store and a transport are required");
  }
  if (options.tick.count() <= 0 || options.election_tick <= options.heartbeat_tick || options.heartbeat_tick < 1) {
    return absl::InvalidArgumentError("node: tick > 0 and election_tick > heartbeat_tick >= 1 are required");
  }
  std::unique_ptr<Node> node(new Node(std::move(options)));
  node->loop_ = std::thread([n = node.get()] { n->Run(); });
  return node;
}

Node::~Node() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (loop_.joinable()) loop_.join();
  for (auto& [id, g] : groups_) {
    if (g->installer.joinable()) g->installer.join();
  }
  // Tasks never run end their callers' waits with Cancelled (they hold
  // promises and callbacks); the groups' pending work ends here too.
  for (auto& t : inbox_->tasks) t();
  for (auto& [id, g] : groups_) FailAll(*g, absl::CancelledError("the node is stopping"));
}

// ---- calls from other threads ----------------------------------------------

absl::Status Node::AddGroup(GroupSpec spec) {
  auto promise = std::make_shared<std::promise<absl::Status>>();
  auto result = promise->get_future();
  {
    std::lock_guard l(mu_);
    if (stop_) return absl::CancelledError("the node is stopping");
    inbox_->tasks.push_back([this, promise, spec = std::move(spec)]() mutable {
      if (stop_now_) {
        promise->set_value(absl::CancelledError("the node is stopping"));
        return;
      }
      promise->set_value(OpenGroup(std::move(spec)));
    });
  }
  cv_.notify_all();
  return result.get();
}

absl::Status Node::RemoveGroup(uint64_t group, bool drop_log) {
  auto promise = std::make_shared<std::promise<absl::Status>>();
  auto result = promise->get_future();
  {
    std::lock_guard l(mu_);
    if (stop_) return absl::CancelledError("the node is stopping");
    inbox_->tasks.push_back([this, promise, group, drop_log] {
      if (!groups_.count(group)) {
        promise->set_value(absl::NotFoundError(absl::StrCat("group ", group, " is not hosted here")));
        return;
      }
      CloseGroup(group, drop_log);
      promise->set_value(absl::OkStatus());
    });
  }
  cv_.notify_all();
  return result.get();
}

absl::Status Node::SetReplicaNodes(uint64_t group, std::map<uint64_t, uint64_t> nodes) {
  auto promise = std::make_shared<std::promise<absl::Status>>();
  auto result = promise->get_future();
  {
    std::lock_guard l(mu_);
    if (stop_) return absl::CancelledError("the node is stopping");
    inbox_->tasks.push_back([this, promise, group, nodes = std::move(nodes)]() mutable {
      auto it = groups_.find(group);
      if (it == groups_.end()) {
        promise->set_value(absl::NotFoundError(absl::StrCat("group ", group, " is not hosted here")));
        return;
      }
      it->second->spec.nodes = std::move(nodes);
      promise->set_value(absl::OkStatus());
    });
  }
  cv_.notify_all();
  return result.get();
}

void Node::Propose(uint64_t group, std::string data, Clock::time_point deadline, ProposeDone done) {
  {
    std::lock_guard l(mu_);
    if (!stop_) {
      inbox_->tasks.push_back([this, group, data = std::move(data), deadline, done]() mutable {
        if (stop_now_) return done(absl::CancelledError("the node is stopping"));
        auto it = groups_.find(group);
        if (it == groups_.end() || it->second->stopped) {
          return done(absl::UnavailableError(absl::StrCat("group ", group, " is not served by node ", options_.node_id)));
        }
        Group& g = *it->second;
        const uint64_t seq = next_seq_++;
        absl::Status s = g.raft->Propose(Wrap(Origin{options_.node_id, incarnation_, seq}, data));
        if (!s.ok()) return done(s);
        Pending p{std::move(done), deadline, Clock::now(), 0};
        if (g.raft->role() == Role::kLeader) p.index = g.raft->log().LastIndex();
        g.proposals.emplace(seq, std::move(p));
      });
      cv_.notify_all();
      return;
    }
  }
  done(absl::CancelledError("the node is stopping"));
}

void Node::ReadIndex(uint64_t group, Clock::time_point deadline, std::function<void(absl::Status)> done) {
  {
    std::lock_guard l(mu_);
    if (!stop_) {
      inbox_->tasks.push_back([this, group, deadline, done]() mutable {
        if (stop_now_) return done(absl::CancelledError("the node is stopping"));
        auto it = groups_.find(group);
        if (it == groups_.end() || it->second->stopped) {
          return done(absl::UnavailableError(absl::StrCat("group ", group, " is not served by node ", options_.node_id)));
        }
        it->second->reads_unsent.push_back({deadline, std::move(done)});
      });
      cv_.notify_all();
      return;
    }
  }
  done(absl::CancelledError("the node is stopping"));
}

void Node::Campaign(uint64_t group) {
  std::lock_guard l(mu_);
  inbox_->tasks.push_back([this, group] {
    auto it = groups_.find(group);
    if (it != groups_.end() && !it->second->stopped) it->second->raft->Campaign();
  });
  cv_.notify_all();
}

void Node::TransferLeadership(uint64_t group, uint64_t replica) {
  std::lock_guard l(mu_);
  inbox_->tasks.push_back([this, group, replica] {
    auto it = groups_.find(group);
    if (it != groups_.end() && !it->second->stopped) (void)it->second->raft->TransferLeadership(replica);
  });
  cv_.notify_all();
}

void Node::ReportSnapshot(uint64_t group, uint64_t replica, bool ok) {
  std::lock_guard l(mu_);
  inbox_->tasks.push_back([this, group, replica, ok] {
    auto it = groups_.find(group);
    if (it != groups_.end() && !it->second->stopped) it->second->raft->ReportSnapshot(replica, ok);
  });
  cv_.notify_all();
}

absl::Status Node::ProposeConfChange(uint64_t group, const ConfChange& cc) {
  auto promise = std::make_shared<std::promise<absl::Status>>();
  auto result = promise->get_future();
  {
    std::lock_guard l(mu_);
    if (stop_) return absl::CancelledError("the node is stopping");
    inbox_->tasks.push_back([this, promise, group, cc] {
      auto it = groups_.find(group);
      if (stop_now_ || it == groups_.end() || it->second->stopped) {
        promise->set_value(
            absl::UnavailableError(absl::StrCat("group ", group, " is not served by node ", options_.node_id)));
        return;
      }
      promise->set_value(it->second->raft->ProposeConfChange(cc));
    });
  }
  cv_.notify_all();
  return result.get();
}

void Node::Deliver(uint64_t from, std::vector<Transport::GroupMessage> batch) {
  std::lock_guard l(mu_);
  if (stop_) return;
  inbox_->tasks.push_back([this, from, batch = std::move(batch)] {
    const auto now = Clock::now();
    auto& heard = heard_[from];
    if (now - std::max(heard, started_) >= 3 * options_.tick) revived_.insert(from);
    heard = now;
    for (const auto& gm : batch) {
      auto it = groups_.find(gm.group);
      // A group not (yet) hosted here: dropped, and Raft sends again.
      if (it == groups_.end() || it->second->stopped) continue;
      Group& g = *it->second;
      // Only a member's node speaks for it.
      auto sender = g.spec.nodes.find(gm.msg.from);
      if (sender == g.spec.nodes.end() || sender->second != from) continue;
      if (gm.msg.type == MessageType::kTimeoutNow && decline_leadership_.load()) continue;
      (void)g.raft->Step(gm.msg);
      if (gm.msg.from == g.raft->leader()) g.leader_contact = Clock::now();
    }
  });
  cv_.notify_all();
}

void Node::ReportUnreachable(uint64_t node) {
  std::lock_guard l(mu_);
  inbox_->tasks.push_back([this, node] {
    for (auto& [id, g] : groups_) {
      if (g->stopped) continue;
      for (const auto& [replica, n] : g->spec.nodes) {
        if (n == node && replica != g->spec.replica) g->raft->ReportUnreachable(replica);
      }
    }
  });
  cv_.notify_all();
}

std::vector<GroupStatus> Node::Status() const {
  std::lock_guard l(status_mu_);
  std::vector<GroupStatus> out;
  for (const auto& [id, s] : status_) out.push_back(s);
  return out;
}

std::map<uint64_t, Clock::time_point> Node::LastHeard() const {
  std::lock_guard l(status_mu_);
  return heard_published_;
}

absl::StatusOr<GroupStatus> Node::GroupStatusOf(uint64_t group) const {
  std::lock_guard l(status_mu_);
  auto it = status_.find(group);
  if (it == status_.end()) return absl::NotFoundError(absl::StrCat("group ", group, " is not hosted here"));
  return it->second;
}

Membership Node::MembershipOf(uint64_t group) const {
  std::lock_guard l(status_mu_);
  auto it = status_.find(group);
  if (it == status_.end() || it->second.stopped) return Membership::kNone;
  const GroupStatus& s = it->second;
  if (std::find(s.voters.begin(), s.voters.end(), s.replica) != s.voters.end()) return Membership::kVoter;
  if (std::find(s.learners.begin(), s.learners.end(), s.replica) != s.learners.end()) return Membership::kLearner;
  return Membership::kNone;
}

// ---- the loop ----------------------------------------------------------------

absl::Status Node::OpenGroup(GroupSpec spec) {
  if (spec.group == 0 || spec.replica == kNone || spec.state_machine == nullptr) {
    return absl::InvalidArgumentError("node: a group needs an id, a replica id and a state machine");
  }
  if (groups_.count(spec.group)) return absl::AlreadyExistsError(absl::StrCat("group ", spec.group, " is hosted already"));
  auto it = spec.nodes.find(spec.replica);
  if (it == spec.nodes.end() || it->second != options_.node_id) {
    return absl::InvalidArgumentError(absl::StrCat("group ", spec.group, ": replica ", spec.replica,
                                                   " is not mapped to this node (", options_.node_id, ")"));
  }
  auto g = std::make_unique<Group>();
  CAIRN_ASSIGN_OR_RETURN(g->log, options_.store->OpenGroup(spec.group));
  const bool empty = g->log->LastIndex() == 0 && g->log->GetSnapshotMeta().index == 0;
  if (empty && !spec.initial_voters.empty()) {
    for (const auto* ids : {&spec.initial_voters, &spec.initial_learners}) {
      for (uint64_t v : *ids) {
        if (!spec.nodes.count(v)) {
          return absl::InvalidArgumentError(absl::StrCat("group ", spec.group, ": member ", v, " has no node"));
        }
      }
    }
    CAIRN_RETURN_IF_ERROR(Bootstrap(g->log.get(), spec.initial_voters, spec.initial_learners));
  }
  Config c;
  c.id = spec.replica;
  c.storage = g->log.get();
  const uint64_t snap_index = g->log->GetSnapshotMeta().index;
  uint64_t sm_applied = spec.state_machine->AppliedIndex();
  if (sm_applied < snap_index) {
    // A snapshot from a leader that was persisted and not installed (a crash
    // in between): install it now. Other snapshots (the group's first state,
    // or one this replica made itself) hold nothing the state machine lacks.
    Snapshot snap = g->log->GetSnapshot();
    if (!snap.data.empty()) {
      CAIRN_RETURN_IF_ERROR(spec.state_machine->Restore(snap));
      sm_applied = spec.state_machine->AppliedIndex();
    }
  }
  const uint64_t commit = std::max(g->log->InitialHardState().commit, snap_index);
  // A state machine ahead of a log that never took a snapshot lost its log.
  // (After a leader's snapshot it may be ahead: the leader's files were newer
  // than the snapshot's index, and Apply skips what they hold.)
  if (sm_applied > std::max(g->log->LastIndex(), commit) && snap_index <= 1) {
    return absl::DataLossError(absl::StrCat("group ", spec.group, ": the state machine has applied ", sm_applied,
                                            " but the log ends at ", g->log->LastIndex()));
  }
  c.applied = std::min(std::max(sm_applied, snap_index), commit);
  c.election_tick = options_.election_tick;
  c.heartbeat_tick = options_.heartbeat_tick;
  c.quiesce = options_.quiesce;
  std::mt19937_64 rng(options_.seed != 0 ? options_.seed ^ spec.group
                                         : static_cast<uint64_t>(Clock::now().time_since_epoch().count()) ^ spec.group);
  c.rand = [rng](uint64_t n) mutable { return rng() % n; };
  g->applied = c.applied;
  CAIRN_ASSIGN_OR_RETURN(g->raft, Raft::Create(std::move(c)));
  g->spec = std::move(spec);
  groups_.emplace(g->spec.group, std::move(g));
  return absl::OkStatus();
}

void Node::CloseGroup(uint64_t group, bool drop_log) {
  auto it = groups_.find(group);
  // An install under way finishes first: it holds the state machine.
  if (it->second->installer.joinable()) it->second->installer.join();
  FailAll(*it->second, absl::CancelledError(absl::StrCat("group ", group, " was removed from this node")));
  groups_.erase(it);
  if (drop_log) {
    if (absl::Status s = options_.store->DropGroup(group); !s.ok()) {
      std::fprintf(stderr, "cairn: node %llu: cannot drop the log of group %llu: %s\n",
                   static_cast<unsigned long long>(options_.node_id), static_cast<unsigned long long>(group),
                   s.ToString().c_str());
    }
  }
  std::lock_guard l(status_mu_);
  status_.erase(group);
}

void Node::FailAll(Group& g, const absl::Status& s) {
  auto proposals = std::move(g.proposals);
  g.proposals.clear();
  for (auto& [seq, p] : proposals) p.done(s);
  std::vector<Group::Reader> readers = std::move(g.reads_unsent);
  g.reads_unsent.clear();
  for (auto& [ctx, rs] : g.reads_asked) {
    for (auto& r : rs) readers.push_back(std::move(r));
  }
  g.reads_asked.clear();
  for (auto& [index, r] : g.reads_waiting) readers.push_back(std::move(r));
  g.reads_waiting.clear();
  for (auto& r : readers) r.done(s);
}

void Node::Run() {
  std::unique_lock lk(mu_);
  while (!stop_) Turn(lk);
  stop_now_ = true;
}

void Node::Turn(std::unique_lock<std::mutex>& lk) {
  // Wait for work or the next tick.
  auto has_ready = [this] {
    for (const auto& [id, g] : groups_) {
      if (!g->stopped && !g->installing && g->raft->HasReady()) return true;
    }
    return false;
  };
  if (inbox_->tasks.empty() && !has_ready()) {
    cv_.wait_until(lk, next_tick_, [this] { return stop_ || !inbox_->tasks.empty(); });
  }
  if (stop_) return;
  std::vector<std::function<void()>> tasks;
  tasks.swap(inbox_->tasks);
  lk.unlock();

  for (auto& t : tasks) t();
  const auto now = Clock::now();
  const bool tick = now >= next_tick_;
  if (tick) {
    if (options_.quiesce) WakeQuietGroups(now);
    for (auto& [id, g] : groups_) {
      if (!g->stopped) g->raft->Tick();
    }
    // One tick per turn: a loop that fell behind does not fire a burst of
    // ticks (which would look like a long silence and start elections).
    next_tick_ = std::max(next_tick_ + options_.tick, now);
  }
  // One ReadIndex round per group for every read that arrived.
  for (auto& [id, g] : groups_) {
    if (g->stopped || g->reads_unsent.empty()) continue;
    const std::string ctx = absl::StrCat(next_seq_++);
    if (absl::Status s = g->raft->ReadIndex(ctx); !s.ok()) {
      for (auto& r : g->reads_unsent) r.done(s);
    } else {
      g->reads_asked[ctx] = std::move(g->reads_unsent);
    }
    g->reads_unsent.clear();
  }

  // Persist every Ready with one synced write.
  std::vector<Group*> ready;
  std::vector<std::pair<RocksLogStorage*, const Ready*>> work;
  for (auto& [id, g] : groups_) {
    if (g->stopped || g->installing || !g->raft->HasReady()) continue;
    g->rd = g->raft->GetReady();
    ready.push_back(g.get());
    work.push_back({g->log.get(), &g->rd});
  }
  if (!work.empty()) {
    if (absl::Status s = options_.store->SaveReadies(work); !s.ok()) {
      // The log's state after a failed sync is unknown: stop, as a disk that
      // lies must not vote or acknowledge.
      std::fprintf(stderr, "cairn: FATAL: node %llu cannot write its Raft log: %s\n",
                   static_cast<unsigned long long>(options_.node_id), s.ToString().c_str());
      std::abort();
    }
  }
  // Send, batched per destination node.
  std::map<uint64_t, std::vector<Transport::GroupMessage>> out;
  for (Group* g : ready) {
    for (auto& m : g->rd.messages) {
      auto node = g->spec.nodes.find(m.to);
      if (node == g->spec.nodes.end()) continue;  // no address (yet): Raft sends again
      out[node->second].push_back({g->spec.group, std::move(m)});
    }
    g->rd.messages.clear();
  }
  if (tick && options_.quiesce) {
    // Keepalives: every node this one shares a group with hears from it each
    // tick, so that quiet groups can tell a silent node from an idle one.
    for (const auto& [id, g] : groups_) {
      for (const auto& [replica, node] : g->spec.nodes) {
        if (node != options_.node_id) out[node];
      }
    }
  }
  for (auto& [node, batch] : out) options_.transport->Send(node, std::move(batch));
  // Apply, groups in parallel; a snapshot is installed off the loop, so
  // that opening a large one stalls no other group.
  std::vector<std::function<void()>> apply;
  for (Group* g : ready) {
    if (g->rd.snapshot) {
      StartInstall(*g);
    } else if (!g->rd.committed.empty()) {
      apply.push_back([this, g] { ApplyCommitted(*g, g->rd); });
    }
  }
  if (!apply.empty()) pool_->RunAll(std::move(apply));
  for (Group* g : ready) {
    if (!g->installing) AfterApply(*g);
  }
  ExpireDeadlines();
  PublishStatus(/*heard_too=*/tick);
  lk.lock();
}

void Node::AfterApply(Group& g) {
  for (auto& rs : g.rd.reads) {
    auto asked = g.reads_asked.find(rs.context);
    if (asked == g.reads_asked.end()) continue;
    for (auto& r : asked->second) g.reads_waiting.emplace(rs.index, std::move(r));
    g.reads_asked.erase(asked);
  }
  while (!g.reads_waiting.empty() && g.reads_waiting.begin()->first <= g.applied) {
    g.reads_waiting.begin()->second.done(absl::OkStatus());
    g.reads_waiting.erase(g.reads_waiting.begin());
  }
  if (g.rd.leader != g.leader) {
    g.leader = g.rd.leader;
    ++g.leader_changes;
    // Proposals forwarded to a leader that is gone would wait out their
    // deadline: their callers hear now and retry (they may still commit,
    // so only what is idempotent may be retried).
    for (auto it = g.proposals.begin(); it != g.proposals.end();) {
      if (it->second.index == 0) {
        it->second.done(absl::UnavailableError("the group's leader changed before the proposal was acknowledged; retry"));
        it = g.proposals.erase(it);
      } else {
        ++it;
      }
    }
    // Reads asked of a leader that is gone may never be answered.
    if (!g.reads_asked.empty()) {
      for (auto& [ctx, rs] : g.reads_asked) {
        for (auto& r : rs) r.done(absl::UnavailableError("the group's leader changed; retry"));
      }
      g.reads_asked.clear();
    }
  }
  if (!g.stopped) g.raft->Advance(g.rd);
  g.rd = Ready();
  if (!g.stopped) MaybeCompact(g);
}

void Node::StartInstall(Group& g) {
  g.installing = true;
  g.install_id = next_seq_++;
  if (g.installer.joinable()) g.installer.join();
  g.installer = std::thread([this, gid = g.spec.group, id = g.install_id, sm = g.spec.state_machine,
                             snap = *g.rd.snapshot] {
    absl::Status s = sm->Restore(snap);
    std::lock_guard l(mu_);
    if (stop_) return;
    inbox_->tasks.push_back([this, gid, id, s] { FinishInstall(gid, id, s); });
    cv_.notify_all();
  });
}

void Node::FinishInstall(uint64_t group, uint64_t install_id, const absl::Status& s) {
  auto it = groups_.find(group);
  if (it == groups_.end() || !it->second->installing || it->second->install_id != install_id) return;
  Group& g = *it->second;
  g.installer.join();
  g.installing = false;
  if (!s.ok()) {
    StopGroup(g, s);
  } else {
    g.applied = g.rd.snapshot->meta.index;
    if (!g.rd.snapshot->data.empty()) ++g.snapshots_installed;
    if (!g.rd.committed.empty()) ApplyCommitted(g, g.rd);
  }
  AfterApply(g);
}

void Node::StopGroup(Group& g, const absl::Status& s) {
  g.stopped = true;
  g.stop_reason = s.ToString();
  std::fprintf(stderr, "cairn: node %llu: group %llu stopped: %s\n", static_cast<unsigned long long>(options_.node_id),
               static_cast<unsigned long long>(g.spec.group), g.stop_reason.c_str());
  FailAll(g, absl::UnavailableError(absl::StrCat("group ", g.spec.group, " stopped on node ", options_.node_id, ": ",
                                                 g.stop_reason)));
}

void Node::ApplyCommitted(Group& g, const Ready& rd) {
  auto stop = [&](const absl::Status& s) { StopGroup(g, s); };
  if (rd.committed.empty()) return;
  std::vector<Entry> entries;
  std::vector<Origin> origins(rd.committed.size());
  entries.reserve(rd.committed.size());
  for (size_t i = 0; i < rd.committed.size(); ++i) {
    const Entry& e = rd.committed[i];
    Entry out{.term = e.term, .index = e.index, .type = e.type, .data = {}};
    if (e.type == EntryType::kNormal && !e.data.empty()) {
      std::string_view app;
      if (!Unwrap(e.data, &origins[i], &app)) {
        return stop(absl::DataLossError(absl::StrCat("entry ", e.index, " has no origin header")));
      }
      out.data = std::string(app);
    } else if (e.type == EntryType::kConfChange) {
      out.data = e.data;
    }
    entries.push_back(std::move(out));
  }
  std::vector<absl::StatusOr<uint64_t>> results;
  if (absl::Status s = g.spec.state_machine->Apply(entries, &results); !s.ok()) return stop(s);
  if (results.size() != entries.size()) {
    return stop(absl::InternalError("the state machine returned a result count unlike the entry count"));
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    const Origin& o = origins[i];
    const bool ours = o.node == options_.node_id && o.incarnation == incarnation_;
    if (ours) {
      auto p = g.proposals.find(o.seq);
      if (p != g.proposals.end()) {
        ++g.proposals_applied;
        g.proposal_seconds += std::chrono::duration<double>(Clock::now() - p->second.start).count();
        p->second.done(std::move(results[i]));
        g.proposals.erase(p);
      }
    }
  }
  // Proposals appended at an index that now holds another entry are lost.
  const uint64_t last = entries.back().index;
  for (auto it = g.proposals.begin(); it != g.proposals.end();) {
    if (it->second.index != 0 && it->second.index <= last) {
      it->second.done(absl::UnavailableError("the proposal was lost in a leader change; retry"));
      it = g.proposals.erase(it);
    } else {
      ++it;
    }
  }
  g.applied = last;
}

void Node::MaybeCompact(Group& g) {
  if (options_.compact_after_entries == 0 || !g.compactable || g.applied < g.compact_not_before) return;
  const uint64_t held = g.applied + 1 - std::min(g.applied + 1, g.log->FirstIndex());  // applied entries in the log
  uint64_t keep = options_.keep_entries;
  if (g.raft->role() == Role::kLeader) {
    // What the slowest follower still needs, within bounds.
    for (const auto& [replica, node] : g.spec.nodes) {
      const Progress* p = g.raft->progress(replica);
      if (p == nullptr || replica == g.spec.replica || p->match() >= g.applied) continue;
      keep = std::max(keep, std::min(g.applied - p->match(), options_.max_keep_entries));
    }
  }
  if (held <= keep + options_.compact_after_entries) return;
  auto c = g.spec.state_machine->PrepareCompaction();
  if (absl::IsUnimplemented(c.status())) {
    g.compactable = false;
    return;
  }
  absl::Status s = c.status();
  if (s.ok()) {
    const uint64_t index = std::min(c->index, g.applied);
    if (index <= g.log->GetSnapshotMeta().index) return;
    s = g.log->CreateSnapshot(index, g.raft->conf(), std::move(c->data), keep);
    if (s.ok()) ++g.compactions;
  }
  if (!s.ok()) {
    // The log only grows longer: report, and try again after as many entries.
    g.compact_not_before = g.applied + options_.compact_after_entries;
    std::fprintf(stderr, "cairn: node %llu: cannot compact the log of group %llu: %s\n",
                 static_cast<unsigned long long>(options_.node_id), static_cast<unsigned long long>(g.spec.group),
                 s.ToString().c_str());
  }
}

void Node::ExpireDeadlines() {
  const auto now = Clock::now();
  for (auto& [id, g] : groups_) {
    for (auto it = g->proposals.begin(); it != g->proposals.end();) {
      if (it->second.deadline <= now) {
        it->second.done(absl::DeadlineExceededError(
            absl::StrCat("group ", id, ": the proposal was not applied in time (it may still be)")));
        it = g->proposals.erase(it);
      } else {
        ++it;
      }
    }
    auto expire = [&](std::vector<Group::Reader>& rs) {
      for (auto it = rs.begin(); it != rs.end();) {
        if (it->deadline <= now) {
          it->done(absl::DeadlineExceededError(absl::StrCat("group ", id, ": no read index in time")));
          it = rs.erase(it);
        } else {
          ++it;
        }
      }
    };
    for (auto it = g->reads_asked.begin(); it != g->reads_asked.end();) {
      expire(it->second);
      it = it->second.empty() ? g->reads_asked.erase(it) : std::next(it);
    }
    for (auto it = g->reads_waiting.begin(); it != g->reads_waiting.end();) {
      if (it->second.deadline <= now) {
        it->second.done(absl::DeadlineExceededError(absl::StrCat("group ", id, ": not caught up in time")));
        it = g->reads_waiting.erase(it);
      } else {
        ++it;
      }
    }
  }
}

Clock::time_point Node::HeardFrom(uint64_t node) const {
  auto it = heard_.find(node);
  return it == heard_.end() ? started_ : std::max(it->second, started_);
}

void Node::WakeQuietGroups(Clock::time_point now) {
  const auto silence = options_.tick * options_.election_tick;
  for (auto& [id, g] : groups_) {
    if (g->stopped || !g->raft->quiesced()) continue;
    if (g->raft->role() == Role::kLeader) {
      // A member back from a restart, a pause or a partition may have missed
      // the quiet heartbeat, or be campaigning; a voter gone silent may have
      // cost this leader its quorum, which only an awake leader checks (and
      // then steps down): heartbeats again.
      const auto& voters = g->raft->conf().voters;
      for (const auto& [replica, node] : g->spec.nodes) {
        if (node == options_.node_id) continue;
        const bool voter = std::find(voters.begin(), voters.end(), replica) != voters.end();
        if (revived_.count(node) || (voter && now - HeardFrom(node) >= silence)) {
          g->raft->Unquiesce(/*leader_lost=*/false);
          break;
        }
      }
      continue;
    }
    auto leader = g->spec.nodes.find(g->raft->leader());
    if (leader == g->spec.nodes.end() || now - HeardFrom(leader->second) >= silence) {
      // Quiet, it was as current as the leader's node's last keepalive; it
      // stays so (for local reads) until another leader is heard.
      if (leader != g->spec.nodes.end()) g->leader_contact = std::max(g->leader_contact, HeardFrom(leader->second));
      g->raft->Unquiesce(/*leader_lost=*/true);
    }
  }
  revived_.clear();
}

void Node::PublishStatus(bool heard_too) {
  std::map<uint64_t, GroupStatus> st;
  for (const auto& [id, g] : groups_) {
    GroupStatus s;
    s.group = id;
    s.replica = g->spec.replica;
    s.role = g->raft->role();
    s.leader = g->raft->leader();
    s.term = g->raft->term();
    s.commit = g->raft->log().committed();
    s.applied = g->applied;
    s.last_index = g->raft->log().LastIndex();
    s.snapshot_index = g->log->GetSnapshotMeta().index;
    s.first_index = g->log->FirstIndex();
    s.compactions = g->compactions;
    s.snapshots_installed = g->snapshots_installed;
    s.leader_changes = g->leader_changes;
    s.proposals_applied = g->proposals_applied;
    s.proposal_seconds = g->proposal_seconds;
    s.quiesced = g->raft->quiesced();
    s.leader_contact = s.role == Role::kLeader ? Clock::now() : g->leader_contact;
    if (s.quiesced && s.role != Role::kLeader) {
      auto leader = g->spec.nodes.find(s.leader);
      if (leader != g->spec.nodes.end()) s.leader_contact = std::max(s.leader_contact, HeardFrom(leader->second));
    } else if (s.role == Role::kLeader) {
      // A leader is current as of when it last heard a quorum of its voters'
      // nodes (itself included): it cannot have been replaced before. (Quiet,
      // it hears their keepalives; awake, their answers too.)
      const auto& voters = g->raft->conf().voters;
      std::vector<Clock::time_point> heard;
      for (uint64_t v : voters) {
        auto node = g->spec.nodes.find(v);
        if (node == g->spec.nodes.end()) continue;
        heard.push_back(node->second == options_.node_id ? Clock::now() : HeardFrom(node->second));
      }
      std::sort(heard.begin(), heard.end(), std::greater<>());
      const size_t quorum = voters.size() / 2 + 1;
      s.leader_contact = heard.size() >= quorum ? heard[quorum - 1] : Clock::time_point{};
      // Kept: once it steps down (no quorum heard), it is as current as this.
      g->leader_contact = std::max(g->leader_contact, s.leader_contact);
    }
    s.stopped = g->stopped;
    s.stop_reason = g->stop_reason;
    s.voters = g->raft->conf().voters;
    s.learners = g->raft->conf().learners;
    if (s.role == Role::kLeader) {
      for (const auto& [replica, node] : g->spec.nodes) {
        const Progress* p = g->raft->progress(replica);
        if (p == nullptr) continue;
        s.peers.push_back({replica, node, p->match(), p->learner()});
      }
    }
    st.emplace(id, std::move(s));
  }
  std::map<uint64_t, Clock::time_point> heard;
  if (heard_too) {
    for (const auto& [node, at] : heard_) heard[node] = std::max(at, started_);
  }
  std::lock_guard l(status_mu_);
  status_ = std::move(st);
  if (heard_too) heard_published_ = std::move(heard);
}

}  // namespace cairn::raft
