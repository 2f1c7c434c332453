// TestNetwork: a few Raft nodes over MemoryStorage with a synchronous,
// lossless (unless cut) network, for the core's unit tests. Settle()
// handles every Ready and delivers every message until nothing is left.
#ifndef CAIRN_REPLICATION_TEST_NETWORK_H_
#define CAIRN_REPLICATION_TEST_NETWORK_H_

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "replication/log_storage.h"
#include "replication/raft.h"

namespace cairn::raft {

// Entries with the given (index, term) pairs and data "d<index>".
inline std::vector<Entry> TestEntries(std::initializer_list<std::pair<uint64_t, uint64_t>> index_term) {
  std::vector<Entry> out;
  for (auto [i, t] : index_term) out.push_back(Entry{.term = t, .index = i, .data = absl::StrCat("d", i)});
  return out;
}

class TestNetwork {
 public:
  using Tweak = std::function<void(Config&)>;
  // Each node's log storage (default: a MemoryStorage).
  using StorageFactory = std::function<std::unique_ptr<LogStorage>(uint64_t id)>;

  // Nodes `voters`, bootstrapped as one group (or, with bootstrap false,
  // started from what their storage already holds).
  explicit TestNetwork(std::vector<uint64_t> voters, Tweak tweak = nullptr, StorageFactory factory = nullptr,
                       bool bootstrap = true)
      : tweak_(std::move(tweak)), factory_(std::move(factory)) {
    if (!factory_) factory_ = [](uint64_t) { return std::make_unique<MemoryStorage>(); };
    for (uint64_t id : voters) {
      auto& n = nodes_[id];
      n.storage = factory_(id);
      if (bootstrap) {
        EXPECT_TRUE(Bootstrap(n.storage.get(), voters).ok());
      }
      Start(id);
    }
  }

  // A node with an empty log, to be added by a membership change.
  void AddEmptyNode(uint64_t id) {
    nodes_[id].storage = factory_(id);
    Start(id);
  }

  Raft& raft(uint64_t id) { return *nodes_.at(id).raft; }
  LogStorage& storage(uint64_t id) { return *nodes_.at(id).storage; }
  // Data of the normal, non-empty entries node `id` applied, in order.
  const std::vector<std::string>& applied(uint64_t id) { return nodes_.at(id).applied; }
  std::vector<ReadState>& reads(uint64_t id) { return nodes_.at(id).reads; }

  // Messages between a and b are dropped (both ways) until Heal().
  void Cut(uint64_t a, uint64_t b) {
    cut_.insert({a, b});
    cut_.insert({b, a});
  }
  void Isolate(uint64_t id) {
    for (auto& [other, n] : nodes_) {
      if (other != id) Cut(id, other);
    }
  }
  void Heal() { cut_.clear(); }
  // Drops every message of this type until Allow().
  void Block(MessageType t) { blocked_.insert(t); }
  void Allow(MessageType t) {
    blocked_.erase(t);
    pass_before_block_.erase(t);
  }
  // Lets the next n messages of this type through, then drops the rest
  // until Allow().
  void PassThenBlock(MessageType t, int n) { pass_before_block_[t] = n; }

  // Restarts a node from what it persisted.
  void Restart(uint64_t id) {
    nodes_.at(id).applied.clear();
    Start(id);
  }

  void Settle() {
    for (int rounds = 0; rounds < 100000; ++rounds) {
      bool any = false;
      for (auto& [id, n] : nodes_) any |= Process(id);
      if (!queue_.empty()) {
        Message m = std::move(queue_.front());
        queue_.pop_front();
        if (auto p = pass_before_block_.find(m.type); p != pass_before_block_.end() && p->second-- <= 0) continue;
        if (cut_.count({m.from, m.to}) || blocked_.count(m.type) || !nodes_.count(m.to)) continue;
        EXPECT_TRUE(nodes_.at(m.to).raft->Step(m).ok());
        any = true;
      }
      if (!any) return;
    }
    ADD_FAILURE() << "the network did not settle";
  }

  // Ticks every node n times, settling after each tick.
  void TickAll(int n) {
    for (int i = 0; i < n; ++i) {
      for (auto& [id, node] : nodes_) node.raft->Tick();
      Settle();
    }
  }
  void Tick(uint64_t id, int n) {
    for (int i = 0; i < n; ++i) {
      nodes_.at(id).raft->Tick();
      Settle();
    }
  }

  // Elects `id`: it campaigns and the network settles.
  void Elect(uint64_t id) {
    raft(id).Campaign();
    Settle();
  }

  // Messages the nodes have sent so far.
  uint64_t sent() const { return sent_; }

  uint64_t Leader() {
    for (auto& [id, n] : nodes_) {
      if (n.raft->role() == Role::kLeader) return id;
    }
    return kNone;
  }

 private:
  struct Node {
    std::unique_ptr<LogStorage> storage;
    std::unique_ptr<Raft> raft;
    std::vector<std::string> applied;
    std::vector<ReadState> reads;
  };

  void Start(uint64_t id) {
    Config c;
    c.id = id;
    c.storage = nodes_.at(id).storage.get();
    if (tweak_) tweak_(c);
    auto r = Raft::Create(c);
    ASSERT_TRUE(r.ok()) << r.status();
    nodes_.at(id).raft = std::move(*r);
  }

  bool Process(uint64_t id) {
    Node& n = nodes_.at(id);
    if (!n.raft->HasReady()) return false;
    Ready rd = n.raft->GetReady();
    EXPECT_TRUE(n.storage->SaveReady(rd).ok());
    sent_ += rd.messages.size();
    for (Message& m : rd.messages) queue_.push_back(std::move(m));
    for (const Entry& e : rd.committed) {
      if (e.type == EntryType::kNormal && !e.data.empty()) n.applied.push_back(e.data);
    }
    n.reads.insert(n.reads.end(), rd.reads.begin(), rd.reads.end());
    n.raft->Advance(rd);
    return true;
  }

  Tweak tweak_;
  StorageFactory factory_;
  std::map<uint64_t, Node> nodes_;
  std::deque<Message> queue_;
  std::set<std::pair<uint64_t, uint64_t>> cut_;
  std::set<MessageType> blocked_;
  std::map<MessageType, int> pass_before_block_;
  uint64_t sent_ = 0;
};

}  // namespace cairn::raft

#endif  // CAIRN_REPLICATION_TEST_NETWORK_H_
