// The peer port: how cairnd nodes of one cluster talk (cairn.internal.v1.Peer).
//
// PeerClients is the sending side and the raft::Transport the node loop sends
// with: one stream per destination node, fed by a thread of its own from a
// bounded queue (a message dropped when the queue is full is Raft's business:
// it sends again), reconnecting with backoff and reporting the peer
// unreachable to the node loop. It also makes the unary calls (Hello, Shard).
//
// PeerServer is the receiving side: a gRPC server on the peer port whose Raft
// stream steps batches into the node loop, and whose Hello and Shard calls go
// to a PeerHandler (the cluster). Every call must carry the cluster secret
// (metadata x-cairn-cluster-secret, compared in constant time) or is refused
// with UNAUTHENTICATED; a Raft batch for another cluster id or another node
// id is refused with FAILED_PRECONDITION and logged, since it comes from a
// node of another cluster or a data directory moved between nodes.
//
// Thread-safety: all public methods are thread-safe.
#ifndef CAIRN_CLUSTER_PEER_H_
#define CAIRN_CLUSTER_PEER_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cairn/internal/v1/peer.grpc.pb.h"
#include "replication/node.h"

namespace cairn::cluster {

namespace pb = ::cairn::internal::v1;

// How nodes prove to each other that they belong to the cluster.
struct PeerSecurity {
  // Shared secret every peer call carries. Empty: none (loopback only; the
  // server refuses to listen elsewhere without it or TLS).
  std::string secret;
  // mTLS: PEM certificate chain and key of this node, and the CA that every
  // peer's certificate must chain to. All three or none.
  std::string tls_cert_pem;
  std::string tls_key_pem;
  std::string tls_ca_pem;
  // The name each peer's certificate is checked against; empty: the host of
  // the address called. One name that every node's certificate carries
  // serves nodes that come and go without a wildcard certificate.
  std::string tls_server_name;

  bool tls() const { return !tls_cert_pem.empty(); }
};

// Raft messages to and from their wire form.
void EncodeRaftMessage(uint64_t group, const raft::Message& m, pb::RaftMessage* out);
absl::StatusOr<raft::Transport::GroupMessage> DecodeRaftMessage(const pb::RaftMessage& in);

class PeerClients final : public raft::Transport {
 public:
  PeerClients(uint64_t self, PeerSecurity security);
  ~PeerClients() override;

  // The cluster id outgoing batches carry (set once the node has one).
  void SetClusterId(const std::string& id);
  // Where node `node`'s peer port is. A new address replaces the old stream.
  void SetAddress(uint64_t node, const std::string& address);
  // Stops sending to `node` (removed from the cluster): batches for it are
  // dropped from now on.
  void Forget(uint64_t node);
  // Who hears of unreachable peers (nullptr: nobody).
  void SetNode(raft::Node* node);

  void Send(uint64_t to_node, std::vector<GroupMessage> batch) override;

  // The gRPC client for unary calls to `address` (over one channel per address, kept:
  // a forwarded request does not open a connection), and a context carrying
  // the secret and a deadline.
  std::unique_ptr<pb::Peer::Stub> StubFor(const std::string& address);
  std::unique_ptr<grpc::ClientContext> NewContext(std::chrono::milliseconds timeout) const;

  // Batches sent and dropped (queue full or no address), for metrics.
  uint64_t sent() const { return sent_.load(); }
  uint64_t dropped() const { return dropped_.load(); }

 private:
  class Link;
  std::shared_ptr<grpc::Channel> ChannelFor(const std::string& address);

  const uint64_t self_;
  const PeerSecurity security_;
  mutable std::mutex mu_;
  std::string cluster_id_;                        // guarded by mu_
  raft::Node* node_ = nullptr;                    // guarded by mu_
  std::map<uint64_t, std::unique_ptr<Link>> links_;  // guarded by mu_
  std::mutex channels_mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;  // guarded by channels_mu_
  std::atomic<uint64_t> sent_{0}, dropped_{0};
};

// What the peer server asks of the cluster.
class PeerHandler {
 public:
  virtual ~PeerHandler() = default;
  // "" while this node has no cluster.
  virtual std::string ClusterId() const = 0;
  virtual uint64_t NodeId() const = 0;
  // The node loop, once running (nullptr before).
  virtual raft::Node* RaftNode() const = 0;
  virtual pb::HelloResponse Hello(const pb::HelloRequest& req) = 0;
  // Answers through `done`, from any thread, exactly once.
  virtual void Shard(const pb::ShardRequest& req, std::function<void(pb::ShardResponse)> done) = 0;
  virtual pb::NodeStatusResponse NodeStatus() = 0;
  // Raft messages from node `from`. Default: to RaftNode(), when running.
  virtual void DeliverRaft(uint64_t from, std::vector<raft::Transport::GroupMessage> batch) {
    if (raft::Node* node = RaftNode()) node->Deliver(from, std::move(batch));
  }
  // Snapshot files this node serves (SnapshotSender::ReadChunk and Done).
  virtual absl::StatusOr<std::string> ReadSnapshotChunk(const std::string& id, const std::string& path,
                                                        uint64_t offset, uint32_t length) {
    return absl::UnimplementedError("this node serves no snapshots");
  }
  virtual void SnapshotDone(const std::string& id, bool ok, const std::string& error) {}
};

class PeerServer {
 public:
  // Listens on `listen` (host:port; port 0 picks one). InvalidArgument when
  // the address is not loopback and `security` has neither a secret nor TLS;
  // Unavailable when it cannot bind.
  static absl::StatusOr<std::unique_ptr<PeerServer>> Start(const std::string& listen, PeerSecurity security,
                                                           PeerHandler* handler);
  ~PeerServer();
  int port() const { return port_; }
  // Stops accepting calls; calls in flight end within `grace`.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  class Service;
  PeerServer() = default;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// Whether `host:port` names a loopback address (127.0.0.0/8, ::1, localhost).
bool IsLoopbackAddress(const std::string& address);

}  // namespace cairn::cluster

#endif  // CAIRN_CLUSTER_PEER_H_
