// The node loop with real RocksDB logs: three nodes hosting two groups over
// an in-process network. Every proposal that was acknowledged is applied, once
// and in the same order, on every replica; a leader's crash and restart, an
// isolated leader and a lagging follower do not change that; a linearizable
// read on a follower sees every write acknowledged before it began.
#include <stdlib.h>

#include <algorithm>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "replication/local_transport.h"
#include "replication/node.h"
#include "replication/rocksdb_log_storage.h"
#include "replication/test_state_machine.h"

namespace cairn::raft {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr auto kWait = RecordingMachine::kWait;

// The result of an asynchronous call, waited for.
template <typename T>
class Waiter {
 public:
  std::function<void(T)> Callback() {
    return [this](T v) {
      std::lock_guard l(mu_);
      value_ = std::move(v);
      cv_.notify_all();
    };
  }
  T Get() {
    std::unique_lock l(mu_);
    EXPECT_TRUE(cv_.wait_for(l, kWait + 10s, [&] { return value_.has_value(); })) << "callback never ran";
    return value_.has_value() ? *value_ : T(absl::InternalError("no callback"));
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<T> value_;
};

constexpr uint64_t kGroupA = 10;
constexpr uint64_t kGroupB = 20;

class NodeTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kNodes[] = {1, 2, 3};

  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "cairn-node-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    for (uint64_t n : kNodes) StartNode(n, /*first=*/true);
  }
  void TearDown() override {
    for (uint64_t n : kNodes) StopNode(n);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Replica ids differ from node ids: group A's replica on node n is 100 + n.
  static uint64_t ReplicaOf(uint64_t group, uint64_t node) { return group * 10 + node; }
  static std::map<uint64_t, uint64_t> Members(uint64_t group) {
    std::map<uint64_t, uint64_t> m;
    for (uint64_t n : kNodes) m[ReplicaOf(group, n)] = n;
    return m;
  }

  // Node n's loop on its log store, attached to the network, hosting nothing.
  void StartLoop(uint64_t n) {
    auto store = LogStore::Open(absl::StrCat(dir_, "/node-", n));
    ASSERT_TRUE(store.ok()) << store.status();
    stores_[n] = std::move(*store);
    NodeOptions o;
    o.node_id = n;
    o.store = stores_[n].get();
    o.transport = hub_.TransportFor(n);
    o.tick = 10ms;
    o.election_tick = 10;
    o.seed = n;
    o.compact_after_entries = compact_after_;
    o.keep_entries = keep_;
    o.max_keep_entries = max_keep_;
    auto node = Node::Start(o);
    ASSERT_TRUE(node.ok()) << node.status();
    nodes_[n] = std::move(*node);
    hub_.Attach(n, nodes_[n].get());
  }

  void StartNode(uint64_t n, bool first) {
    ASSERT_NO_FATAL_FAILURE(StartLoop(n));
    for (uint64_t g : {kGroupA, kGroupB}) {
      auto& sm = machines_[{g, n}];
      if (!sm) sm = std::make_unique<RecordingMachine>();
      GroupSpec spec;
      spec.group = g;
      spec.replica = ReplicaOf(g, n);
      spec.nodes = Members(g);
      if (first) {
        for (const auto& [r, node_id] : spec.nodes) spec.initial_voters.push_back(r);
      }
      spec.state_machine = sm.get();
      ASSERT_TRUE(nodes_[n]->AddGroup(spec).ok());
    }
  }

  // What a crash leaves: the log store and the state machine, nothing else.
  void StopNode(uint64_t n) {
    hub_.Attach(n, nullptr);
    nodes_.erase(n);
    stores_.erase(n);
  }

  // Restarts every node with logs compacted every 20 entries, keeping 5
  // (10 for a follower behind).
  void RestartCompactingEarly() {
    compact_after_ = 20;
    keep_ = 5;
    max_keep_ = 10;
    for (uint64_t n : kNodes) StopNode(n);
    for (uint64_t n : kNodes) StartNode(n, /*first=*/false);
  }

  // Stops a node following group A's leader: {A's leader, the node down,
  // the other one}.
  std::tuple<uint64_t, uint64_t, uint64_t> StopAFollowerOfA() {
    const uint64_t leader = WaitForLeader(kGroupA);
    const uint64_t down = leader == 3 ? 2 : 3;
    StopNode(down);
    return {leader, down, 6 - leader - down};
  }

  RecordingMachine& Machine(uint64_t group, uint64_t node) { return *machines_.at({group, node}); }

  // The node whose replica leads `group`, once the live nodes agree on one.
  uint64_t WaitForLeader(uint64_t group) {
    const auto deadline = Clock::now() + kWait;
    while (Clock::now() < deadline) {
      for (auto& [n, node] : nodes_) {
        auto s = node->GroupStatusOf(group);
        if (s.ok() && s->role == Role::kLeader) return n;
      }
      std::this_thread::sleep_for(5ms);
    }
    ADD_FAILURE() << "no leader for group " << group;
    return 0;
  }

  absl::StatusOr<uint64_t> Propose(uint64_t node, uint64_t group, std::string data,
                                   std::chrono::milliseconds timeout = kWait) {
    Waiter<absl::StatusOr<uint64_t>> w;
    nodes_.at(node)->Propose(group, std::move(data), Clock::now() + timeout, w.Callback());
    return w.Get();
  }

  // Proposes until acknowledged (a leader change in between is retried, as a
  // client would within its deadline).
  void ProposeUntilAcked(uint64_t node, uint64_t group, const std::string& data) {
    // An attempt that timed out may still commit (a slow machine, a sanitizer
    // build): before retrying, wait a little for it to show up on a replica,
    // so that a retried entry is applied once.
    auto applied = [&] {
      size_t most = 0;
      for (uint64_t n : kNodes) {
        auto m = machines_.find({group, n});
        if (m == machines_.end()) continue;
        const auto log = m->second->log();
        most = std::max<size_t>(most, static_cast<size_t>(std::count(log.begin(), log.end(), data)));
      }
      return most;
    };
    const size_t before = applied();
    const auto deadline = Clock::now() + kWait;
    while (Clock::now() < deadline) {
      auto r = Propose(node, group, data, 500ms);
      if (r.ok()) return;
      ASSERT_TRUE(absl::IsUnavailable(r.status()) || absl::IsDeadlineExceeded(r.status())) << r.status();
      for (int i = 0; i < 30; ++i) {
        if (applied() > before) return;
        std::this_thread::sleep_for(10ms);
      }
    }
    FAIL() << "never acknowledged: " << data;
  }

  absl::Status Read(uint64_t node, uint64_t group) {
    Waiter<absl::Status> w;
    nodes_.at(node)->ReadIndex(group, Clock::now() + kWait, w.Callback());
    return w.Get();
  }

  // Every replica of `group` applied the same entries; returns them.
  std::vector<std::string> Converged(uint64_t group) {
    size_t most = 0;
    for (uint64_t n : kNodes) most = std::max(most, Machine(group, n).log().size());
    for (uint64_t n : kNodes) EXPECT_TRUE(Machine(group, n).WaitFor(most)) << "node " << n;
    const auto want = Machine(group, 1).log();
    for (uint64_t n : kNodes) EXPECT_EQ(Machine(group, n).log(), want) << "node " << n << " group " << group;
    return want;
  }

  uint64_t compact_after_ = 20000, keep_ = 5000, max_keep_ = 200000;
  std::string dir_;
  LocalHub hub_;
  std::map<uint64_t, std::unique_ptr<LogStore>> stores_;
  std::map<uint64_t, std::unique_ptr<Node>> nodes_;
  std::map<std::pair<uint64_t, uint64_t>, std::unique_ptr<RecordingMachine>> machines_;
};

TEST_F(NodeTest, ProposalsFromEveryNodeApplyOnceInOneOrderEverywhere) {
  WaitForLeader(kGroupA);
  WaitForLeader(kGroupB);
  // Concurrent proposals from every node to both groups: followers forward.
  // An attempt that fails (a leader changed: slow sanitizer builds see
  // elections) is retried, as a client would; the attempt may still have
  // been applied, so only data acknowledged at the first attempt must appear
  // exactly once.
  std::vector<std::thread> threads;
  std::mutex mu;
  std::set<std::string> acked, retried;
  for (uint64_t n : kNodes) {
    threads.emplace_back([&, n] {
      for (int i = 0; i < 40; ++i) {
        const uint64_t g = i % 2 == 0 ? kGroupA : kGroupB;
        const std::string data = absl::StrCat("n", n, "-", i);
        bool first = true;
        while (true) {
          auto r = Propose(n, g, data);
          std::lock_guard l(mu);
          if (r.ok()) {
            acked.insert(data);
            break;
          }
          EXPECT_TRUE(absl::IsUnavailable(r.status()) || absl::IsDeadlineExceeded(r.status())) << r.status();
          if (first) retried.insert(data);
          first = false;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(acked.size(), 120u);
  auto a = Converged(kGroupA);
  auto b = Converged(kGroupB);
  std::multiset<std::string> all(a.begin(), a.end());
  all.insert(b.begin(), b.end());
  for (const auto& d : acked) {
    if (retried.count(d)) {
      EXPECT_GE(all.count(d), 1u) << d;
    } else {
      EXPECT_EQ(all.count(d), 1u) << d;
    }
  }
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()).size(), 120u);
  // The state machine's result comes back to the proposer, refusals too.
  auto r = Propose(2, kGroupA, "refuse");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  auto ok = Propose(3, kGroupA, "after");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, a.size() + 1);
  // The status pages agree with what was applied.
  auto st = nodes_.at(WaitForLeader(kGroupA))->GroupStatusOf(kGroupA);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->peers.size(), 3u);
  EXPECT_GE(st->commit, a.size() + 2);
  EXPECT_EQ(Propose(1, 99, "x").status().code(), absl::StatusCode::kUnavailable);  // not hosted
}

TEST_F(NodeTest, ALeaderCrashLosesNothingAcknowledgedAndItCatchesUpAfterRestart) {
  std::vector<std::string> acked;
  for (int round = 0; round < 2; ++round) {
    const uint64_t leader = WaitForLeader(kGroupA);
    for (int i = 0; i < 10; ++i) {
      const std::string d = absl::StrCat("r", round, "-", i);
      ProposeUntilAcked(leader, kGroupA, d);
      acked.push_back(d);
    }
    StopNode(leader);  // kill -9: whatever it had in flight is its log's business
    uint64_t other = 0;
    for (uint64_t n : kNodes) {
      if (n != leader) other = n;
    }
    // The two left elect a leader and take writes, through any node.
    for (int i = 0; i < 10; ++i) {
      const std::string d = absl::StrCat("r", round, "-after-", i);
      ProposeUntilAcked(other, kGroupA, d);
      acked.push_back(d);
    }
    StartNode(leader, /*first=*/false);
  }
  auto log = Converged(kGroupA);
  for (const auto& d : acked) EXPECT_EQ(std::count(log.begin(), log.end(), d), 1) << d;
}

TEST_F(NodeTest, AnIsolatedLeaderCommitsNothingAndTheMajorityGoesOn) {
  const uint64_t old = WaitForLeader(kGroupA);
  ProposeUntilAcked(old, kGroupA, "before");
  hub_.Isolate(old, {1, 2, 3});
  auto lost = Propose(old, kGroupA, "lost", 500ms);
  EXPECT_FALSE(lost.ok());
  uint64_t other = old == 1 ? 2 : 1;
  ProposeUntilAcked(other, kGroupA, "majority");
  hub_.Heal();
  ProposeUntilAcked(old, kGroupA, "healed");
  auto log = Converged(kGroupA);
  EXPECT_EQ(log, (std::vector<std::string>{"before", "majority", "healed"}));
}

// A node about to stop declines the leaderships handed to it (so that what
// it handed off does not come back); a transfer to another node still works.
TEST_F(NodeTest, ANodeThatDeclinesLeadershipIsHandedNone) {
  const uint64_t leader = WaitForLeader(kGroupA);
  ProposeUntilAcked(leader, kGroupA, "w");
  const uint64_t declining = leader == 1 ? 2 : 1, other = 6 - leader - declining;
  nodes_.at(declining)->DeclineLeadership();
  auto leads = [&](uint64_t n) {
    auto s = nodes_.at(n)->GroupStatusOf(kGroupA);
    return s.ok() && s->role == Role::kLeader;
  };
  for (int attempt = 0; attempt < 5; ++attempt) {
    nodes_.at(leader)->TransferLeadership(kGroupA, ReplicaOf(kGroupA, declining));
    std::this_thread::sleep_for(100ms);  // ten ticks: a transfer takes one round trip
    EXPECT_FALSE(leads(declining)) << "a node that declines leadership took it";
  }
  EXPECT_TRUE(leads(leader));
  bool moved = false;
  for (int attempt = 0; attempt < 50 && !moved; ++attempt) {
    nodes_.at(leader)->TransferLeadership(kGroupA, ReplicaOf(kGroupA, other));
    std::this_thread::sleep_for(20ms);
    moved = leads(other);
  }
  EXPECT_TRUE(moved) << "the transfer to a node that does not decline did not happen";
}

TEST_F(NodeTest, AReadOnALaggingFollowerWaitsForWhatWasAcknowledged) {
  const uint64_t leader = WaitForLeader(kGroupA);
  const uint64_t follower = leader == 3 ? 2 : 3;
  hub_.Isolate(follower, {1, 2, 3});
  for (int i = 0; i < 20; ++i) ProposeUntilAcked(leader, kGroupA, absl::StrCat("w", i));
  EXPECT_FALSE(Machine(kGroupA, follower).Contains("w19"));
  // Cut off, the follower cannot learn a read index: it must not answer.
  Waiter<absl::Status> blocked;
  nodes_.at(follower)->ReadIndex(kGroupA, Clock::now() + 300ms, blocked.Callback());
  EXPECT_FALSE(blocked.Get().ok());
  hub_.Heal();
  absl::Status r = Read(follower, kGroupA);
  // Unavailable until a heartbeat tells the follower who leads.
  for (int i = 0; i < 1000 && absl::IsUnavailable(r); ++i) {
    std::this_thread::sleep_for(5ms);
    r = Read(follower, kGroupA);
  }
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_TRUE(Machine(kGroupA, follower).Contains("w19"));
}

// Raft §7: logs are compacted behind a snapshot; a follower that was down
// while its peers compacted past what it has is sent the snapshot, and then
// the entries after it. Restarts after compaction start from the snapshot.
TEST_F(NodeTest, AFollowerBehindTheCompactedLogCatchesUpFromASnapshot) {
  RestartCompactingEarly();
  const auto [leader, down, up] = StopAFollowerOfA();
  std::vector<std::string> acked;
  for (int i = 0; i < 200; ++i) {
    const std::string d = absl::StrCat("w", i);
    ProposeUntilAcked(i % 2 == 0 ? leader : up, kGroupA, d);
    acked.push_back(d);
  }
  auto st = nodes_.at(WaitForLeader(kGroupA))->GroupStatusOf(kGroupA);
  ASSERT_TRUE(st.ok());
  EXPECT_GT(st->compactions, 0u);
  EXPECT_GT(st->first_index, 150u) << "the log kept what the follower needs past max_keep_entries";
  EXPECT_EQ(Machine(kGroupA, down).restores(), 0);
  StartNode(down, /*first=*/false);
  ProposeUntilAcked(down, kGroupA, "after");
  acked.push_back("after");
  auto log = Converged(kGroupA);
  EXPECT_EQ(log, acked);
  EXPECT_EQ(Machine(kGroupA, down).restores(), 1);
  // The node loop counts the install after the installer thread restored
  // the machine: wait (bounded) for the count.
  uint64_t installed = 0;
  for (const auto deadline = Clock::now() + kWait; Clock::now() < deadline;) {
    auto down_st = nodes_.at(down)->GroupStatusOf(kGroupA);
    ASSERT_TRUE(down_st.ok());
    installed = down_st->snapshots_installed;
    if (installed > 0) break;
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(installed, 1u);
  // Every node restarts from its compacted log (with the state machine's
  // own state) and goes on.
  for (uint64_t n : kNodes) StopNode(n);
  for (uint64_t n : kNodes) StartNode(n, /*first=*/false);
  ProposeUntilAcked(down, kGroupA, "restarted");
  acked.push_back("restarted");
  EXPECT_EQ(Converged(kGroupA), acked);
}

// Installing a snapshot runs off the node loop: while one group's replica
// opens a large snapshot, the node's other groups go on committing and
// answering through it.
TEST_F(NodeTest, AGroupInstallingASnapshotStallsNoOtherGroup) {
  RestartCompactingEarly();
  const auto [leader, down, up] = StopAFollowerOfA();
  for (int i = 0; i < 100; ++i) ProposeUntilAcked(i % 2 == 0 ? leader : up, kGroupA, absl::StrCat("w", i));
  Machine(kGroupA, down).HoldRestores();
  StartNode(down, /*first=*/false);
  ASSERT_TRUE(Machine(kGroupA, down).WaitForHeldRestore());
  // Group B through the node that is installing A's snapshot: it hears its
  // leader, writes commit and apply there, and its linearizable reads are
  // answered.
  auto b_leader_known = [&] {
    auto st = nodes_.at(down)->GroupStatusOf(kGroupB);
    return st.ok() && st->leader != kNone;
  };
  for (int i = 0; i < 500 && !b_leader_known(); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(b_leader_known());
  for (int i = 0; i < 5; ++i) {
    auto r = Propose(down, kGroupB, absl::StrCat("b", i), 5s);
    EXPECT_TRUE(r.ok()) << r.status();
  }
  EXPECT_TRUE(Read(down, kGroupB).ok());
  EXPECT_EQ(Machine(kGroupA, down).restores(), 0);
  Machine(kGroupA, down).ReleaseRestores();
  ProposeUntilAcked(down, kGroupA, "after");
  EXPECT_EQ(Machine(kGroupA, down).restores(), 1);
  EXPECT_EQ(Converged(kGroupA).back(), "after");
  EXPECT_EQ(Converged(kGroupB).size(), 5u);
}

// A snapshot persisted in the log but not installed (a crash in between) is
// installed when the group opens.
TEST_F(NodeTest, ASnapshotPersistedButNotInstalledIsInstalledAtOpen) {
  RestartCompactingEarly();
  const uint64_t leader = WaitForLeader(kGroupA);
  const uint64_t down = leader == 3 ? 2 : 3;
  StopNode(down);
  for (int i = 0; i < 100; ++i) ProposeUntilAcked(leader, kGroupA, absl::StrCat("w", i));
  StartNode(down, /*first=*/false);
  ASSERT_TRUE(Machine(kGroupA, down).WaitFor(100));
  StopNode(down);
  // The state machine loses what it installed, as if the crash came first.
  machines_[{kGroupA, down}] = std::make_unique<RecordingMachine>();
  StartNode(down, /*first=*/false);
  ProposeUntilAcked(leader, kGroupA, "after");
  auto log = Converged(kGroupA);
  ASSERT_EQ(log.size(), 101u);
  EXPECT_GE(Machine(kGroupA, down).restores(), 1);
}

// Replacing a lost member one change at a time (dissertation §4.1): node 4
// joins group A as a learner, catches up from a snapshot (the log was
// compacted), becomes a voter, and the lost replica is removed; the group
// then commits with the new member and without the old one.
TEST_F(NodeTest, ALostMemberIsReplacedByALearnerThatCatchesUpAndIsPromoted) {
  RestartCompactingEarly();
  const uint64_t leader = WaitForLeader(kGroupA);
  const uint64_t lost = leader == 3 ? 2 : 3;
  const uint64_t kept = 6 - leader - lost;
  StopNode(lost);  // its disk is gone for good
  for (int i = 0; i < 60; ++i) ProposeUntilAcked(leader, kGroupA, absl::StrCat("w", i));

  const uint64_t kNew = 4, new_replica = ReplicaOf(kGroupA, kNew);
  auto members = Members(kGroupA);
  members[new_replica] = kNew;
  {
    ASSERT_NO_FATAL_FAILURE(StartLoop(kNew));
    machines_[{kGroupA, kNew}] = std::make_unique<RecordingMachine>();
    GroupSpec spec;  // no initial voters: it waits for the leader
    spec.group = kGroupA;
    spec.replica = new_replica;
    spec.nodes = members;
    spec.state_machine = machines_[{kGroupA, kNew}].get();
    ASSERT_TRUE(nodes_[kNew]->AddGroup(spec).ok());
  }
  for (uint64_t n : {leader, kept}) ASSERT_TRUE(nodes_.at(n)->SetReplicaNodes(kGroupA, members).ok());
  auto conf_has = [&](uint64_t node, bool voter, uint64_t replica) {
    auto st = nodes_.at(node)->GroupStatusOf(kGroupA);
    if (!st.ok()) return false;
    const auto& v = voter ? st->voters : st->learners;
    return std::find(v.begin(), v.end(), replica) != v.end();
  };
  auto change = [&](ConfChange::Type type, uint64_t replica, bool voter, bool present) {
    const auto deadline = Clock::now() + kWait;
    while (Clock::now() < deadline) {
      const uint64_t l = WaitForLeader(kGroupA);
      if (conf_has(l, voter, replica) == present) return true;
      (void)nodes_.at(l)->ProposeConfChange(kGroupA, ConfChange{type, replica});
      std::this_thread::sleep_for(20ms);
    }
    return false;
  };
  ASSERT_TRUE(change(ConfChange::Type::kAddLearner, new_replica, /*voter=*/false, true));
  ASSERT_TRUE(Machine(kGroupA, kNew).WaitFor(60));  // by snapshot: the log was compacted
  EXPECT_EQ(Machine(kGroupA, kNew).restores(), 1);
  ASSERT_TRUE(change(ConfChange::Type::kAddVoter, new_replica, /*voter=*/true, true));
  ASSERT_TRUE(change(ConfChange::Type::kRemove, ReplicaOf(kGroupA, lost), /*voter=*/true, false));
  // With the other old member cut off, the group commits only if node 4's
  // replica votes in place of the lost one.
  hub_.Isolate(kept, {1, 2, 3, 4});
  ProposeUntilAcked(leader == kept ? kNew : leader, kGroupA, "with node 4");
  hub_.Heal();
  ProposeUntilAcked(kept, kGroupA, "after");
  ASSERT_TRUE(Machine(kGroupA, kNew).WaitFor(Machine(kGroupA, leader).log().size()));
  EXPECT_EQ(Machine(kGroupA, kNew).log(), Machine(kGroupA, leader).log());
  EXPECT_EQ(Machine(kGroupA, kNew).log(), Machine(kGroupA, kept).log());
  auto st = nodes_.at(kNew)->GroupStatusOf(kGroupA);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->voters.size(), 3u);
  EXPECT_TRUE(st->learners.empty());
}

// Idle groups go quiet: the nodes then exchange keepalives only. A proposal
// wakes its group; a quiet group whose leader's node dies elects another
// leader; a restarted node is heard again and its groups carry on.
TEST_F(NodeTest, IdleGroupsGoQuietAndWakeForWritesAndForALostLeader) {
  ProposeUntilAcked(1, kGroupA, "a");
  ProposeUntilAcked(2, kGroupB, "b");
  auto all_quiet = [&] {
    for (auto& [n, node] : nodes_) {
      for (const auto& st : node->Status()) {
        if (!st.quiesced) return false;
      }
    }
    return true;
  };
  // Whether every group was seen quiet at once within kWait (a second look
  // after the loop could meet a group a late keepalive just woke).
  auto wait_quiet = [&] {
    for (const auto deadline = Clock::now() + kWait; Clock::now() < deadline;) {
      if (all_quiet()) return true;
      std::this_thread::sleep_for(5ms);
    }
    return false;
  };
  // Silent for a whole window of 30 ticks (3 election timeouts). On a
  // starved machine a keepalive can come late and wake a group; it must go
  // quiet again, and one of a few windows must then be silent.
  bool silent = false;
  for (int window = 0; window < 5 && !silent; ++window) {
    ASSERT_TRUE(wait_quiet());
    const uint64_t delivered = hub_.delivered();
    std::this_thread::sleep_for(300ms);
    silent = hub_.delivered() == delivered && all_quiet();
  }
  EXPECT_TRUE(silent) << "quiet groups sent Raft messages in every window";
  // A quiet follower is as current as its leader's node's last keepalive.
  for (auto& [n, node] : nodes_) {
    for (const auto& st : node->Status()) {
      EXPECT_LT(Clock::now() - st.leader_contact, 200ms) << "node " << n << " group " << st.group;
    }
  }
  // A write wakes the group, and it applies everywhere.
  auto r = Propose(3, kGroupA, "c");
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<std::string> ac = Converged(kGroupA);
  ac.erase(std::unique(ac.begin(), ac.end()), ac.end());  // "a" was retried until acknowledged
  EXPECT_EQ(ac, (std::vector<std::string>{"a", "c"}));
  ASSERT_TRUE(wait_quiet());

  // The leader's node dies while the group is quiet: the followers hear no
  // keepalive for an election timeout, wake and elect another leader.
  // With no request to wake it, the group still gets a leader.
  const uint64_t leader = WaitForLeader(kGroupA);
  StopNode(leader);
  EXPECT_NE(WaitForLeader(kGroupA), 0u);
  const uint64_t other = leader == 1 ? 2 : 1;
  ProposeUntilAcked(other, kGroupA, "d");
  // It comes back: heard again, it catches up.
  StartNode(leader, /*first=*/false);
  ProposeUntilAcked(leader, kGroupA, "e");
  // A proposal that timed out may have committed before its retry did: the
  // retried entries are there at least once, in order.
  auto once = [](std::vector<std::string> v) {
    v.erase(std::unique(v.begin(), v.end()), v.end());
    return v;
  };
  EXPECT_EQ(once(Converged(kGroupA)), (std::vector<std::string>{"a", "c", "d", "e"}));
  EXPECT_TRUE(wait_quiet());
}

// A quiet follower cut off from its leader wakes and campaigns; what it holds
// is as current as the leader's last keepalive it heard, and its leader
// contact (what local reads trust) says so, not when the group went quiet.
TEST_F(NodeTest, AQuietFollowerCutOffKeepsItsLastContactWithTheLeader) {
  ProposeUntilAcked(1, kGroupA, "a");
  const uint64_t leader = WaitForLeader(kGroupA);
  const uint64_t follower = leader == 1 ? 2 : 1;
  auto quiet = [&](uint64_t n) {
    auto st = nodes_.at(n)->GroupStatusOf(kGroupA);
    return st.ok() && st->quiesced;
  };
  for (int i = 0; i < 500 && !(quiet(1) && quiet(2) && quiet(3)); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(quiet(follower));
  std::this_thread::sleep_for(1s);  // quiet: keepalives only
  const auto cut = Clock::now();
  hub_.Isolate(follower, {1, 2, 3});
  for (int i = 0; i < 500 && quiet(follower); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_FALSE(quiet(follower)) << "the follower did not wake";
  auto st = nodes_.at(follower)->GroupStatusOf(kGroupA);
  ASSERT_TRUE(st.ok());
  EXPECT_NE(st->role, Role::kLeader);
  EXPECT_GT(st->leader_contact, cut - 300ms) << "its contact is older than the last keepalive before the cut";
  EXPECT_LE(st->leader_contact, cut);
  hub_.Heal();
}

// A quiet leader cut off from its group does not stay leader: with its
// voters' nodes silent it wakes, and check-quorum steps it down; meanwhile
// its leader contact (what local reads trust) is when it last heard a quorum.
TEST_F(NodeTest, AnIsolatedQuietLeaderStepsDown) {
  ProposeUntilAcked(1, kGroupA, "a");
  const uint64_t leader = WaitForLeader(kGroupA);
  auto quiet = [&](uint64_t n) {
    auto st = nodes_.at(n)->GroupStatusOf(kGroupA);
    return st.ok() && st->quiesced;
  };
  for (int i = 0; i < 500 && !(quiet(1) && quiet(2) && quiet(3)); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(quiet(leader));
  const auto cut = Clock::now();
  hub_.Isolate(leader, {1, 2, 3});
  std::this_thread::sleep_for(150ms);  // more than an election timeout (100 ms)
  auto st = nodes_.at(leader)->GroupStatusOf(kGroupA);
  ASSERT_TRUE(st.ok());
  EXPECT_GE(Clock::now() - st->leader_contact, 100ms) << "an isolated leader looks current";
  auto stepped_down = [&] {
    auto s = nodes_.at(leader)->GroupStatusOf(kGroupA);
    return s.ok() && s->role != Role::kLeader;
  };
  for (int i = 0; i < 500 && !stepped_down(); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(stepped_down());
  // Stepped down, it is still as current as when it last heard a quorum.
  st = nodes_.at(leader)->GroupStatusOf(kGroupA);
  ASSERT_TRUE(st.ok());
  EXPECT_GT(st->leader_contact, cut - 300ms) << "a deposed leader looks as if it never led";
  EXPECT_LE(st->leader_contact, cut + 50ms);
  hub_.Heal();
  ProposeUntilAcked(leader, kGroupA, "b");
  EXPECT_EQ(Converged(kGroupA), (std::vector<std::string>{"a", "b"}));
}

TEST_F(NodeTest, BadGroupsAreRefused) {
  GroupSpec spec;
  spec.group = kGroupA;
  spec.replica = ReplicaOf(kGroupA, 1);
  spec.nodes = Members(kGroupA);
  RecordingMachine sm;
  spec.state_machine = &sm;
  EXPECT_EQ(nodes_.at(1)->AddGroup(spec).code(), absl::StatusCode::kAlreadyExists);
  spec.group = 77;
  spec.replica = ReplicaOf(kGroupA, 2);  // another node's replica
  EXPECT_EQ(nodes_.at(1)->AddGroup(spec).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(nodes_.at(1)->RemoveGroup(77, true).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(nodes_.at(1)->RemoveGroup(kGroupB, /*drop_log=*/true).ok());
  EXPECT_EQ(Propose(1, kGroupB, "x").status().code(), absl::StatusCode::kUnavailable);
  auto groups = stores_.at(1)->ListGroups();
  ASSERT_TRUE(groups.ok());
  EXPECT_EQ(*groups, (std::vector<uint64_t>{kGroupA}));
}

}  // namespace
}  // namespace cairn::raft
