// The Raft core's own cost: proposals committed per second by a three-node
// group in memory (MemoryStorage, messages handed over directly, no network
// or disk), one proposal per round trip or many. It shows the core is never
// what limits a replicated write; the disk's fsync and the network are.
//
//   build/bin/raft_bench [--benchmark_filter=...]
#include <deque>
#include <map>
#include <memory>
#include <string>

#include "benchmark/benchmark.h"
#include "replication/log_storage.h"
#include "replication/raft.h"

namespace {

using cairn::raft::Bootstrap;
using cairn::raft::Config;
using cairn::raft::MemoryStorage;
using cairn::raft::Message;
using cairn::raft::Raft;
using cairn::raft::Ready;

class Group {
 public:
  explicit Group(int n) {
    std::vector<uint64_t> ids;
    for (int i = 1; i <= n; ++i) ids.push_back(static_cast<uint64_t>(i));
    for (uint64_t id : ids) {
      auto& node = nodes_[id];
      node.storage = std::make_unique<MemoryStorage>();
      if (!Bootstrap(node.storage.get(), ids).ok()) std::abort();
      Config c;
      c.id = id;
      c.storage = node.storage.get();
      c.max_inflight_msgs = 4096;
      c.max_uncommitted_bytes = 0;
      node.raft = std::move(*Raft::Create(c));
    }
    nodes_.at(1).raft->Campaign();
    Settle();
  }

  Raft& leader() { return *nodes_.at(1).raft; }

  // Handles every Ready and delivers every message until nothing is left.
  void Settle() {
    for (bool any = true; any;) {
      any = false;
      for (auto& [id, n] : nodes_) {
        while (n.raft->HasReady()) {
          any = true;
          Ready rd = n.raft->GetReady();
          if (!n.storage->SaveReady(rd).ok()) std::abort();
          for (Message& m : rd.messages) queue_.push_back(std::move(m));
          n.applied += rd.committed.size();
          n.raft->Advance(rd);
          // Keep memory flat: compact what every node has applied long ago.
          const uint64_t applied = n.raft->log().applied();
          if (applied > n.storage->FirstIndex() + 20000) {
            if (!n.storage->CreateSnapshot(applied, n.raft->conf(), "", 1000).ok()) std::abort();
          }
        }
      }
      while (!queue_.empty()) {
        any = true;
        Message m = std::move(queue_.front());
        queue_.pop_front();
        if (!nodes_.at(m.to).raft->Step(m).ok()) std::abort();
      }
    }
  }

 private:
  struct Node {
    std::unique_ptr<MemoryStorage> storage;
    std::unique_ptr<Raft> raft;
    uint64_t applied = 0;
  };
  std::map<uint64_t, Node> nodes_;
  std::deque<Message> queue_;
};

// Arg 0: proposals per round (1: no batching); arg 1: bytes per proposal.
void BM_RaftCommit3Nodes(benchmark::State& state) {
  Group g(3);
  const int batch = static_cast<int>(state.range(0));
  const std::string payload(static_cast<size_t>(state.range(1)), 'x');
  for (auto _ : state) {
    for (int i = 0; i < batch; ++i) {
      if (!g.leader().Propose(payload).ok()) std::abort();
    }
    g.Settle();
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.SetBytesProcessed(state.iterations() * batch * state.range(1));
}
BENCHMARK(BM_RaftCommit3Nodes)->ArgsProduct({{1, 16, 256}, {128, 4096}})->ArgNames({"batch", "bytes"});

}  // namespace

BENCHMARK_MAIN();
