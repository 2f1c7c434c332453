// LocalHub: an in-process network between Nodes, for tests. Each node gets a
// Transport from the hub; a batch sent is delivered at once to the node it
// names, unless the link is cut (one way or both) or the node is not
// attached. Thread-safe.
#ifndef CAIRN_REPLICATION_LOCAL_TRANSPORT_H_
#define CAIRN_REPLICATION_LOCAL_TRANSPORT_H_

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "replication/node.h"

namespace cairn::raft {

class LocalHub {
 public:
  class Endpoint final : public Transport {
   public:
    Endpoint(LocalHub* hub, uint64_t node) : hub_(hub), node_(node) {}
    void Send(uint64_t to_node, std::vector<GroupMessage> batch) override {
      hub_->Route(node_, to_node, std::move(batch));
    }

   private:
    LocalHub* hub_;
    uint64_t node_;
  };

  // The transport node `id` sends with. Owned by the hub.
  Transport* TransportFor(uint64_t id) {
    std::lock_guard l(mu_);
    auto& e = endpoints_[id];
    if (!e) e = std::make_unique<Endpoint>(this, id);
    return e.get();
  }
  // Messages to `id` go to `node` (nullptr: nowhere, e.g. while it is down).
  // Detach before destroying a node.
  void Attach(uint64_t id, Node* node) {
    std::lock_guard l(mu_);
    if (node) {
      nodes_[id] = node;
    } else {
      nodes_.erase(id);
    }
  }
  // Drops messages from `from` to `to` until healed.
  void CutOneWay(uint64_t from, uint64_t to) {
    std::lock_guard l(mu_);
    cut_.insert({from, to});
  }
  void Isolate(uint64_t id, const std::vector<uint64_t>& others) {
    for (uint64_t o : others) {
      if (o == id) continue;
      CutOneWay(id, o);
      CutOneWay(o, id);
    }
  }
  void Heal() {
    std::lock_guard l(mu_);
    cut_.clear();
  }
  uint64_t delivered() const {
    std::lock_guard l(mu_);
    return delivered_;
  }

 private:
  void Route(uint64_t from, uint64_t to, std::vector<Transport::GroupMessage> batch) {
    std::lock_guard l(mu_);
    if (cut_.count({from, to})) return;
    auto it = nodes_.find(to);
    if (it == nodes_.end()) return;
    delivered_ += batch.size();
    it->second->Deliver(from, std::move(batch));
  }

  mutable std::mutex mu_;
  std::map<uint64_t, std::unique_ptr<Endpoint>> endpoints_;
  std::map<uint64_t, Node*> nodes_;
  std::set<std::pair<uint64_t, uint64_t>> cut_;
  uint64_t delivered_ = 0;
};

}  // namespace cairn::raft

#endif  // CAIRN_REPLICATION_LOCAL_TRANSPORT_H_
