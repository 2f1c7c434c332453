// The peer port over real gRPC on loopback: three node loops replicate a group
// through it; a node of another cluster, a batch for another node, a caller
// without the secret are refused; a peer port off loopback needs a secret.
#include <stdlib.h>

#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cluster/peer.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "replication/rocksdb_log_storage.h"
#include "replication/test_state_machine.h"

namespace cairn::cluster {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class FixedHandler final : public PeerHandler {
 public:
  FixedHandler(std::string cluster_id, uint64_t node) : cluster_id_(std::move(cluster_id)), node_id_(node) {}
  std::string ClusterId() const override { return cluster_id_; }
  uint64_t NodeId() const override { return node_id_; }
  raft::Node* RaftNode() const override { return node_; }
  pb::HelloResponse Hello(const pb::HelloRequest& req) override {
    pb::HelloResponse r;
    r.set_node_id(node_id_);
    r.set_cluster_id(cluster_id_);
    return r;
  }
  void Shard(const pb::ShardRequest&, std::function<void(pb::ShardResponse)> done) override {
    pb::ShardResponse r;
    r.set_code(12);
    done(r);
  }
  pb::NodeStatusResponse NodeStatus() override { return {}; }
  raft::Node* node_ = nullptr;

 private:
  std::string cluster_id_;
  uint64_t node_id_;
};

struct PeerNode {
  std::unique_ptr<FixedHandler> handler;
  std::unique_ptr<PeerServer> server;
  std::unique_ptr<PeerClients> clients;
  std::unique_ptr<raft::LogStore> store;
  std::unique_ptr<raft::Node> node;
  raft::RecordingMachine machine;
};

class PeerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "cairn-peer-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    // Receiving stops first, then the loop (which sends through the
    // clients), then the clients.
    for (auto& [id, n] : nodes_) {
      n->server.reset();
      n->handler->node_ = nullptr;
      n->clients->SetNode(nullptr);
      n->node.reset();
      n->clients.reset();
    }
    nodes_.clear();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Starts node `id` of cluster `cluster` with secret `secret`.
  void StartNode(uint64_t id, const std::string& cluster, const std::string& secret) {
    auto n = std::make_unique<PeerNode>();
    n->handler = std::make_unique<FixedHandler>(cluster, id);
    PeerSecurity sec;
    sec.secret = secret;
    auto server = PeerServer::Start("127.0.0.1:0", sec, n->handler.get());
    ASSERT_TRUE(server.ok()) << server.status();
    n->server = std::move(*server);
    n->clients = std::make_unique<PeerClients>(id, sec);
    n->clients->SetClusterId(cluster);
    auto store = raft::LogStore::Open(absl::StrCat(dir_, "/", id));
    ASSERT_TRUE(store.ok()) << store.status();
    n->store = std::move(*store);
    raft::NodeOptions o;
    o.node_id = id;
    o.store = n->store.get();
    o.transport = n->clients.get();
    o.tick = 10ms;
    auto node = raft::Node::Start(o);
    ASSERT_TRUE(node.ok()) << node.status();
    n->node = std::move(*node);
    n->handler->node_ = n->node.get();
    n->clients->SetNode(n->node.get());
    nodes_[id] = std::move(n);
  }

  void Connect() {
    for (auto& [id, n] : nodes_) {
      for (auto& [other, o] : nodes_) {
        if (other != id) n->clients->SetAddress(other, absl::StrCat("127.0.0.1:", o->server->port()));
      }
    }
  }

  void AddGroup(uint64_t group) {
    for (auto& [id, n] : nodes_) {
      raft::GroupSpec spec;
      spec.group = group;
      spec.replica = id;
      for (auto& [other, o] : nodes_) {
        spec.nodes[other] = other;
        spec.initial_voters.push_back(other);
      }
      spec.state_machine = &n->machine;
      ASSERT_TRUE(n->node->AddGroup(spec).ok());
    }
  }

  // Proposes through node `via` until acknowledged or `timeout` passes.
  absl::Status ProposeUntilAcked(uint64_t via, uint64_t group, const std::string& data,
                                 std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    absl::Status last = absl::DeadlineExceededError("not tried");
    while (Clock::now() < deadline) {
      std::promise<absl::StatusOr<uint64_t>> p;
      auto f = p.get_future();
      nodes_.at(via)->node->Propose(group, data, Clock::now() + 1s,
                                    [&p](absl::StatusOr<uint64_t> r) { p.set_value(std::move(r)); });
      auto r = f.get();
      if (r.ok()) return absl::OkStatus();
      last = r.status();
      std::this_thread::sleep_for(20ms);
    }
    return last;
  }

  std::string dir_;
  std::map<uint64_t, std::unique_ptr<PeerNode>> nodes_;
};

TEST_F(PeerTest, AGroupReplicatesOverThePeerPort) {
  for (uint64_t id : {1, 2, 3}) StartNode(id, "cluster-a", "s3cret");
  Connect();
  AddGroup(5);
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(ProposeUntilAcked(1 + i % 3, 5, absl::StrCat("e", i), 20s).ok()) << i;
  }
  for (auto& [id, n] : nodes_) ASSERT_TRUE(n->machine.WaitFor(30)) << id;
  for (auto& [id, n] : nodes_) EXPECT_EQ(n->machine.log(), nodes_.at(1)->machine.log()) << id;
  EXPECT_GT(nodes_.at(1)->clients->sent(), 0u);
}

// Nodes 1 and 2 are one cluster; node 3 has the same secret but another
// cluster id: its messages are refused, so 1 and 2 never count it, and it
// never learns their entries.
TEST_F(PeerTest, ANodeOfAnotherClusterIsRefused) {
  StartNode(1, "cluster-a", "s3cret");
  StartNode(2, "cluster-a", "s3cret");
  StartNode(3, "cluster-b", "s3cret");
  Connect();
  AddGroup(5);
  ASSERT_TRUE(ProposeUntilAcked(1, 5, "only-a", 20s).ok());  // 1 and 2 are a majority of 3
  ASSERT_TRUE(nodes_.at(2)->machine.WaitFor(1));
  std::this_thread::sleep_for(300ms);
  EXPECT_TRUE(nodes_.at(3)->machine.log().empty());

  // Straight at the port: the wrong cluster, the wrong node, no secret.
  PeerSecurity sec;
  sec.secret = "s3cret";
  PeerClients client(9, sec);
  const std::string addr = absl::StrCat("127.0.0.1:", nodes_.at(1)->server->port());
  auto stub = client.StubFor(addr);
  auto send = [&](const std::string& cluster, uint64_t to, bool with_secret) {
    grpc::ClientContext ctx;
    if (with_secret) ctx.AddMetadata("x-cairn-cluster-secret", "s3cret");
    pb::RaftAck ack;
    auto w = stub->Raft(&ctx, &ack);
    pb::RaftBatch b;
    b.set_cluster_id(cluster);
    b.set_from_node(9);
    b.set_to_node(to);
    w->Write(b);
    w->WritesDone();
    return w->Finish().error_code();
  };
  EXPECT_EQ(send("cluster-b", 1, true), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(send("cluster-a", 2, true), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(send("cluster-a", 1, false), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(send("cluster-a", 1, true), grpc::StatusCode::OK);
  grpc::ClientContext ctx;
  pb::HelloRequest hreq;
  pb::HelloResponse hresp;
  EXPECT_EQ(stub->Hello(&ctx, hreq, &hresp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  auto ctx2 = client.NewContext(5s);
  ASSERT_TRUE(stub->Hello(ctx2.get(), hreq, &hresp).ok());
  EXPECT_EQ(hresp.cluster_id(), "cluster-a");
}

TEST(PeerServerTest, AnOpenPortNeedsASecretOrTls) {
  FixedHandler h("c", 1);
  auto s = PeerServer::Start("0.0.0.0:0", PeerSecurity{}, &h);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("--cluster-secret-file"), std::string::npos) << s.status();
  PeerSecurity sec;
  sec.secret = "x";
  auto ok = PeerServer::Start("0.0.0.0:0", sec, &h);
  EXPECT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:7602"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:1"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:7602"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.1:7602"));
  EXPECT_FALSE(IsLoopbackAddress("cairn-0.cairn-headless:7602"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:7602"));
}

TEST(PeerCodecTest, EveryFieldRoundTrips) {
  raft::Message m;
  m.type = raft::MessageType::kSnap;
  m.from = 3;
  m.to = 4;
  m.term = 7;
  m.log_term = 6;
  m.index = 99;
  m.commit = 98;
  m.entries = {raft::Entry{.term = 6, .index = 100, .type = raft::EntryType::kConfChange, .data = "cc"}};
  raft::Snapshot s;
  s.meta = raft::SnapshotMeta{.index = 90, .term = 5, .conf = {{1, 2}, {3}}};
  s.data = std::string("\0snap", 5);
  m.snapshot = s;
  m.reject = true;
  m.reject_hint = 42;
  m.context = "ctx";
  m.quiesce = true;
  pb::RaftMessage wire;
  EncodeRaftMessage(11, m, &wire);
  auto back = DecodeRaftMessage(wire);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->group, 11u);
  const raft::Message& b = back->msg;
  EXPECT_EQ(b.type, m.type);
  EXPECT_EQ(b.from, 3u);
  EXPECT_EQ(b.to, 4u);
  EXPECT_EQ(b.term, 7u);
  EXPECT_EQ(b.log_term, 6u);
  EXPECT_EQ(b.index, 99u);
  EXPECT_EQ(b.commit, 98u);
  EXPECT_EQ(b.entries, m.entries);
  ASSERT_TRUE(b.snapshot.has_value());
  EXPECT_EQ(b.snapshot->meta, s.meta);
  EXPECT_EQ(b.snapshot->data, s.data);
  EXPECT_TRUE(b.reject);
  EXPECT_EQ(b.reject_hint, 42u);
  EXPECT_EQ(b.context, "ctx");
  EXPECT_TRUE(b.quiesce);
  wire.set_type(200);
  EXPECT_FALSE(DecodeRaftMessage(wire).ok());
}

}  // namespace
}  // namespace cairn::cluster
