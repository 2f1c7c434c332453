// Three cluster nodes in one process, on loopback peer ports: they form one
// cluster, every node serves every request, replicas hold identical data, a
// node's crash and restart lose nothing acknowledged, and the mistakes a
// production cluster must refuse are refused.
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cluster/cluster.h"
#include "db/snapshot_dir.h"
#include "db/key_codec.h"
#include "cluster/test_ports.h"
#include "gtest/gtest.h"

namespace cairn::cluster {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

using testing_ports::FreePort;

std::vector<float> Vec(uint64_t i) {
  return {static_cast<float>(i % 97), static_cast<float>((i * 7) % 13), static_cast<float>(i % 5), 1.0f};
}

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "cairn-cluster-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    for (int i = 0; i < 5; ++i) seeds_.push_back(absl::StrCat("127.0.0.1:", FreePort()));
  }
  void TearDown() override {
    nodes_.clear();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Node i of a cluster of `size` seeds.
  ClusterOptions Options(int i, int size = 3) const {
    ClusterOptions o;
    o.data_dir = absl::StrCat(dir_, "/node-", i);
    o.node_name = absl::StrCat("cairn-", i);
    o.peer_listen = seeds_[i];
    o.advertise = seeds_[i];
    o.seeds.assign(seeds_.begin(), seeds_.begin() + size);
    o.tick = 10ms;
    o.election_tick = 10;
    o.request_timeout = 10s;
    o.db.background_maintenance = true;
    o.log_compact_entries = compact_after_;
    o.log_keep_entries = 5;
    o.log_max_keep_entries = 10;
    o.dead_node_timeout = dead_after_;
    o.db.memory_limit_bytes = memory_limit_;
    return o;
  }

  // Opens the given nodes at once (each waits for the others to form).
  void OpenNodes(const std::vector<int>& which, int size = 3) {
    std::vector<std::future<absl::StatusOr<std::unique_ptr<Cluster>>>> fs;
    for (int i : which) {
      fs.push_back(std::async(std::launch::async, [this, i, size] { return Cluster::Open(Options(i, size)); }));
    }
    for (size_t k = 0; k < which.size(); ++k) {
      auto c = fs[k].get();
      ASSERT_TRUE(c.ok()) << c.status();
      nodes_[which[k]] = std::move(*c);
    }
  }

  Cluster& Node(int i) { return *nodes_.at(i); }

  // Every replica of every shard group holds the same data, once they have
  // applied the same entries.
  // `per_group`: the replicas of each group (0: one on every node).
  void ExpectReplicasAlike(size_t per_group = 0) {
    for (int attempt = 0; attempt < 200; ++attempt) {
      std::map<uint64_t, std::vector<db::Shard::Checksum>> by_group;
      bool settled = true;
      for (auto& [i, n] : nodes_) {
        auto sums = n->LocalChecksums();
        // A replica still installing a snapshot is not there yet.
        if (absl::IsUnavailable(sums.status())) {
          settled = false;
          break;
        }
        ASSERT_TRUE(sums.ok()) << sums.status();
        for (auto& [g, c] : *sums) by_group[g].push_back(c);
      }
      for (auto& [g, cs] : by_group) {
        for (auto& c : cs) settled = settled && c.applied_index == cs[0].applied_index;
      }
      if (!settled) {
        std::this_thread::sleep_for(20ms);
        continue;
      }
      for (auto& [g, cs] : by_group) {
        EXPECT_EQ(cs.size(), per_group == 0 ? nodes_.size() : per_group) << "group " << g;
        for (auto& c : cs) {
          EXPECT_EQ(c.hash, cs[0].hash) << "group " << g;
          EXPECT_EQ(c.points, cs[0].points) << "group " << g;
        }
      }
      return;
    }
    ADD_FAILURE() << "the replicas never reached the same applied index";
  }

  // Opens nodes 0-2 and creates "docs" (dimension 4; `shards` shards, 0 for
  // the default) through node 0; null (with a failure) when it cannot.
  std::shared_ptr<Collection> OpenWithDocs(uint32_t shards = 0, uint64_t seal_threshold = 0) {
    OpenNodes({0, 1, 2});
    if (nodes_.size() != 3) return nullptr;
    CollectionConfig cfg;
    cfg.dimension = 4;
    if (shards > 0) cfg.num_shards = shards;
    if (seal_threshold > 0) cfg.seal_threshold = seal_threshold;
    auto c = Node(0).CreateCollection("docs", cfg);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }
  // As OpenWithDocs, with logs compacted every 20 entries.
  std::shared_ptr<Collection> OpenCompactingWithDocs(uint32_t shards, uint64_t seal_threshold = 0) {
    compact_after_ = 20;
    return OpenWithDocs(shards, seal_threshold);
  }
  // Points [from, to), `per` to a request, payload {"b": request number}.
  static void UpsertRange(Collection& c, uint64_t from, uint64_t to, uint64_t per) {
    for (uint64_t first = from; first < to; first += per) {
      std::vector<Point> batch;
      for (uint64_t i = first; i < std::min(to, first + per); ++i) {
        batch.push_back(Point{PointId(i), Vec(i), absl::StrCat("{\"b\":", (first - from) / per, "}"), ""});
      }
      ASSERT_TRUE(c.Upsert(batch).ok());
    }
  }
  // The points of "docs", counted (linearizably) through node i.
  uint64_t DocsThrough(int i) {
    auto c = Node(i).GetCollection("docs");
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return 0;
    auto n = (*c)->Count(nullptr);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : 0;
  }

  // Waits (at most `seconds`) until `done` holds for node i's status; the
  // last status.
  ClusterStatus AwaitStatus(int i, int seconds, const std::function<bool(const ClusterStatus&)>& done) {
    ClusterStatus st;
    for (int k = 0; k < seconds * 10; ++k) {
      st = Node(i).Status();
      if (done(st)) return st;
      std::this_thread::sleep_for(100ms);
    }
    std::string what;
    for (const auto& n : st.nodes) {
      absl::StrAppend(&what, "\n node ", n.name, " ", n.state, " replicas ", n.replicas, " leaders ", n.leaders,
                      n.metadata_voter ? " voter" : "");
    }
    for (const auto& o : st.operations) {
      absl::StrAppend(&what, "\n op group ", o.group, " ", o.kind, " ", o.reason, " step ", o.step, " ",
                      o.from_replica, "->", o.to_replica, "@", o.to_node);
    }
    ADD_FAILURE() << "the cluster did not settle within " << seconds << " s:" << what;
    return st;
  }

  uint64_t compact_after_ = 20000;
  uint64_t memory_limit_ = 0;  // DatabaseOptions' default
  std::chrono::milliseconds dead_after_ = 30min;
  std::string dir_;
  std::vector<std::string> seeds_;
  std::map<int, std::unique_ptr<Cluster>> nodes_;
};

// The value of a Prometheus sample whose line starts with `prefix`, summed.
double Metric(Cluster& c, const std::string& prefix) {
  std::string text;
  c.AppendPrometheus(&text);
  double sum = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) == 0) sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

TEST_F(ClusterTest, ThreeNodesFormOneClusterAndServeEveryRequestAnywhere) {
  OpenNodes({0, 1, 2});
  const std::string id = Node(0).cluster_id();
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(Node(1).cluster_id(), id);
  EXPECT_EQ(Node(2).cluster_id(), id);

  CollectionConfig cfg;
  cfg.dimension = 4;
  cfg.num_shards = 3;
  auto created = Node(0).CreateCollection("docs", cfg);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ((*created)->config().replication_factor, 3u);  // the default, with 3 nodes

  // Writes through node 1, reads through node 2, and the other way.
  auto c1 = Node(1).GetCollection("docs");
  ASSERT_TRUE(c1.ok()) << c1.status();
  std::vector<Point> pts;
  for (uint64_t i = 0; i < 60; ++i) pts.push_back(Point{PointId(i), Vec(i), absl::StrCat(R"({"n":)", i, "}"), ""});
  ASSERT_TRUE((*c1)->Upsert(pts).ok());
  auto c2 = Node(2).GetCollection("docs");
  ASSERT_TRUE(c2.ok()) << c2.status();
  auto count = (*c2)->Count(nullptr);
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, 60u);
  SearchParams sp;
  sp.k = 3;
  sp.exact = true;
  auto hits = (*c2)->Search(Vec(17), sp);
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_FALSE(hits->empty());
  EXPECT_EQ((*hits)[0].id, PointId(17));
  EXPECT_EQ((*hits)[0].payload, R"({"n":17})");
  auto del = (*c2)->Delete({PointId(17)});
  ASSERT_TRUE(del.ok());
  EXPECT_EQ(*del, 1u);
  auto c0 = Node(0).GetCollection("docs");
  ASSERT_TRUE(c0.ok());
  auto got = (*c0)->Get({PointId(17), PointId(18)}, true, false);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE((*got)[0].has_value());
  ASSERT_TRUE((*got)[1].has_value());
  EXPECT_EQ(Node(1).ListCollections(), (std::vector<std::string>{"docs"}));
  ExpectReplicasAlike();
  // The metrics of node 1, which took the upsert: its proposals were applied.
  std::string metrics;
  Node(1).AppendPrometheus(&metrics);
  EXPECT_NE(metrics.find("cairn_raft_is_leader{group=\"2\",collection=\"docs\",shard=\"0\"}"), std::string::npos)
      << metrics;
  uint64_t proposals = 0;
  for (size_t at = 0; (at = metrics.find("cairn_raft_proposal_seconds_count{", at)) != std::string::npos; ++at) {
    proposals += std::stoull(metrics.substr(metrics.find("} ", at) + 2));
  }
  EXPECT_GE(proposals, 3u) << metrics;  // one upsert per shard, at least

  // Every node's status names the three nodes and the groups.
  ClusterStatus st = Node(2).Status();
  EXPECT_EQ(st.nodes.size(), 3u);
  for (const auto& n : st.nodes) EXPECT_TRUE(n.reachable) << n.name;
  EXPECT_EQ(st.groups.size(), 4u);  // metadata + 3 shards
  for (const auto& g : st.groups) {
    EXPECT_EQ(g.replicas.size(), 3u);
    EXPECT_NE(g.leader_node, 0u) << "group " << g.group;
    int leaders = 0;
    for (const auto& r : g.replicas) {
      EXPECT_TRUE(r.reported);
      leaders += r.leader;
    }
    EXPECT_EQ(leaders, 1) << "group " << g.group;
  }

  // Bad requests are refused with what to do.
  cfg.replication_factor = 4;
  auto too_many = Node(1).CreateCollection("big", cfg);
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_many.status().message().find("3 active nodes"), std::string::npos) << too_many.status();
  cfg.replication_factor = 0;
  EXPECT_EQ(Node(2).CreateCollection("docs", cfg).status().code(), absl::StatusCode::kAlreadyExists);
}

// With one replica per shard on three nodes, most shards live on another node
// than the one asked: writes and reads are passed along the peer port.
TEST_F(ClusterTest, RequestsReachShardsThisNodeDoesNotHold) {
  OpenNodes({0, 1, 2});
  CollectionConfig cfg;
  cfg.dimension = 4;
  cfg.num_shards = 6;
  cfg.replication_factor = 1;
  auto c = Node(0).CreateCollection("one", cfg);
  ASSERT_TRUE(c.ok()) << c.status();
  ClusterStatus st = Node(0).Status();
  std::map<uint64_t, int> per_node;
  for (const auto& g : st.groups) {
    if (g.collection.empty()) continue;
    ASSERT_EQ(g.replicas.size(), 1u);
    ++per_node[g.replicas[0].node];
  }
  EXPECT_EQ(per_node.size(), 3u);  // 6 shards spread over 3 nodes: 2 each
  for (const auto& [n, k] : per_node) EXPECT_EQ(k, 2) << n;
  std::vector<Point> pts;
  for (uint64_t i = 0; i < 100; ++i) pts.push_back(Point{PointId(absl::StrCat("doc-", i)), Vec(i), "", "text"});
  ASSERT_TRUE((*c)->Upsert(pts).ok());
  auto other = Node(1).GetCollection("one");
  ASSERT_TRUE(other.ok());
  auto n = (*other)->Count(nullptr);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 100u);
  ScrollRequest sr;
  sr.limit = 1000;
  auto page = (*other)->Scroll(sr);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->points.size(), 100u);
  // Local reads of shards held elsewhere are served by the node holding them.
  const ReadOptions local{ReadConsistency::kLocal, 60000};
  n = (*other)->Count(nullptr, local);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 100u);
  sr.consistency = ReadConsistency::kLocal;
  page = (*other)->Scroll(sr);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->points.size(), 100u);
  auto got = (*other)->Get({PointId("doc-7"), PointId("doc-1000")}, true, true, local);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE((*got)[0].has_value());
  EXPECT_EQ((*got)[0]->vector, Vec(7));
  EXPECT_FALSE((*got)[1].has_value());
  SearchParams sp;
  sp.k = 1;
  sp.exact = true;
  sp.with_vector = true;
  auto hits = (*other)->Search(Vec(42), sp);
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_EQ(hits->size(), 1u);
  EXPECT_EQ((*hits)[0].vector, Vec(42));
  auto info = (*other)->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->points, 100u);
  Filter f;
  f.must.push_back(Condition::HasId({PointId("doc-1"), PointId("doc-2")}));
  auto deleted = (*other)->DeleteByFilter(f);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 2u);
  EXPECT_EQ((*other)->SetPayload({PointId("doc-1")}, R"({"a":1})").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(Node(2).DropCollection("one").ok());
  EXPECT_EQ(Node(0).GetCollection("one").status().code(), absl::StatusCode::kNotFound);
}

// A cluster node keeps its replicas' sealed HNSW floats in memory beside
// their vector files while its memory budget holds them: its maintenance
// loop brings them in after the seal.
TEST_F(ClusterTest, AReplicasSealedHnswFloatsComeIntoMemory) {
  constexpr uint32_t kD = 256;
  constexpr uint64_t kN = 3000;
  memory_limit_ = 512ull << 20;
  OpenNodes({0, 1, 2});
  CollectionConfig cfg;
  cfg.dimension = kD;
  cfg.num_shards = 1;
  cfg.replication_factor = 1;
  cfg.seal_threshold = 1000;
  auto created = Node(0).CreateCollection("docs", cfg);
  ASSERT_TRUE(created.ok()) << created.status();
  auto vec = [](uint64_t i) {
    std::vector<float> v(kD);
    for (size_t j = 0; j < v.size(); ++j) v[j] = static_cast<float>((i * 31 + j * 7) % 97) / 97.0f;
    v[i % kD] += 10.0f;
    return v;
  };
  std::vector<Point> batch;
  for (uint64_t i = 0; i < kN; ++i) batch.push_back(Point{PointId(i), vec(i), "", ""});
  ASSERT_TRUE((*created)->Upsert(batch).ok());  // one batch: one seal takes it all
  // Sealed: graph, codes (kD bytes a point) and ids, about 600 bytes a point
  // here; with the floats 4 x kD more.
  CollectionInfo info;
  for (int i = 0; i < 300; ++i) {
    auto got = (*created)->Info();
    ASSERT_TRUE(got.ok()) << got.status();
    info = *got;
    if (info.sealed_segments == 1 && info.unindexed_points == 0 && info.index_memory_bytes >= kN * 5 * kD) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(info.sealed_segments, 1u);
  EXPECT_EQ(info.points, kN);
  EXPECT_GE(info.index_memory_bytes, kN * 5 * kD) << "the sealed segment's floats are in memory";
  SearchParams sp;
  sp.k = 1;
  auto hits = (*created)->Search(vec(7), sp);
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_EQ(hits->size(), 1u);
  EXPECT_EQ((*hits)[0].id, PointId(uint64_t{7}));
}

// A node's memory limit holds in a cluster too: the node holding the one
// replica admits each upsert, proposed there directly or sent by a node that
// routes it, and refuses it with RESOURCE_EXHAUSTED and nothing written once
// its replica would take it past the limit. Reads, searches and deletes go on.
TEST_F(ClusterTest, UpsertsPastTheMemoryLimitOfTheReplicasNodeAreRefused) {
  memory_limit_ = 48ull << 20;
  OpenNodes({0, 1, 2});
  CollectionConfig cfg;
  cfg.dimension = 256;
  cfg.num_shards = 1;
  cfg.replication_factor = 1;
  auto created = Node(0).CreateCollection("docs", cfg);
  ASSERT_TRUE(created.ok()) << created.status();
  std::vector<std::shared_ptr<Collection>> through;  // the collection as each node routes it
  for (int i = 0; i < 3; ++i) {
    auto c = Node(i).GetCollection("docs");
    ASSERT_TRUE(c.ok()) << c.status();
    through.push_back(*c);
  }
  auto vec = [](uint64_t i) {
    std::vector<float> v(256);
    for (size_t j = 0; j < v.size(); ++j) v[j] = static_cast<float>((i * 31 + j * 7) % 97) / 97.0f;
    v[i % 256] += 10.0f;
    // The pattern above repeats every 24,832 points (97 x 256); this keeps
    // each vector its own (point 7's nearest is 7, not a copy of it).
    v[0] += static_cast<float>(i) * 1e-4f;
    return v;
  };
  absl::Status refused;
  uint64_t written = 0;
  std::set<int> routers;  // the nodes whose upserts were taken
  for (int b = 0; b < 400 && refused.ok(); ++b) {  // 100 MiB of vectors at most
    std::vector<Point> batch;
    for (uint64_t i = written; i < written + 256; ++i) batch.push_back(Point{PointId(i), vec(i), "", ""});
    refused = through[b % 3]->Upsert(batch);
    if (refused.ok()) {
      written += 256;
      routers.insert(b % 3);
    }
  }
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "memory limit is 48.0 MiB")) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "collection \"docs\"")) << refused;
  EXPECT_EQ(routers.size(), 3u);  // proposed where the replica is, and sent there
  EXPECT_GT(written, 4096u);      // most of the limit was usable
  // Every router is refused too (at once, or after some batches when a
  // memtable flush freed memory meanwhile: the points' index memory, which
  // stays, reaches the limit again within 64), and nothing of a refused
  // batch was written.
  for (auto& c : through) {
    absl::Status st;
    for (int b = 0; b < 64 && st.ok(); ++b) {
      std::vector<Point> batch;
      for (uint64_t i = written; i < written + 256; ++i) batch.push_back(Point{PointId(i), vec(i), "", ""});
      st = c->Upsert(batch);
      if (st.ok()) written += 256;
    }
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  }
  EXPECT_EQ(DocsThrough(1), written);
  SearchParams sp;
  sp.k = 1;
  auto hits = through[2]->Search(vec(7), sp);
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_EQ(hits->size(), 1u);
  EXPECT_EQ((*hits)[0].id, PointId(uint64_t{7}));
  auto deleted = through[1]->Delete({PointId(uint64_t{7})});
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 1u);
}

// Over the peer port: idle groups go quiet; when the node leading a quiet
// shard dies, the others hear no keepalive from it, wake and elect another
// leader, and writes go on.
TEST_F(ClusterTest, AQuietShardWhoseLeaderDiesElectsAnother) {
  auto c = OpenWithDocs();
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Upsert({Point{PointId(1), Vec(1), "", ""}}).ok());
  auto quiet = [&] {
    double n = 0;
    for (auto& [i, node] : nodes_) n += Metric(*node, "cairn_raft_quiesced");
    return n;
  };
  for (int i = 0; i < 500 && quiet() < 6; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(quiet(), 6);  // 2 groups x 3 replicas
  int leader = -1;
  for (const auto& g : Node(0).Status().groups) {
    if (g.collection != "docs") continue;
    for (auto& [i, node] : nodes_) {
      if (node->node_id() == g.leader_node) leader = i;
    }
  }
  ASSERT_GE(leader, 0);
  const uint64_t dead = nodes_.at(leader)->node_id();
  nodes_.erase(leader);
  const int other = leader == 0 ? 1 : 0;
  // With no request to wake it, the shard gets a leader on a live node.
  auto live_leader = [&] {
    for (const auto& g : Node(other).Status().groups) {
      if (g.collection == "docs") return g.leader_node != 0 && g.leader_node != dead;
    }
    return false;
  };
  for (int i = 0; i < 1000 && !live_leader(); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(live_leader());
  auto through = Node(other).GetCollection("docs");
  ASSERT_TRUE(through.ok()) << through.status();
  ASSERT_TRUE((*through)->Upsert({Point{PointId(2), Vec(2), "", ""}}).ok());
  auto n = (*through)->Count();
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 2u);
}

TEST_F(ClusterTest, ANodeRestartsFromItsDiskAndCatchesUp) {
  OpenNodes({0, 1, 2});
  CollectionConfig cfg;
  cfg.dimension = 4;
  cfg.num_shards = 2;
  auto c = Node(0).CreateCollection("docs", cfg);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<Point> first;
  for (uint64_t i = 0; i < 50; ++i) first.push_back(Point{PointId(i), Vec(i), "", ""});
  ASSERT_TRUE((*c)->Upsert(first).ok());
  nodes_.erase(2);  // down
  std::vector<Point> second;
  for (uint64_t i = 50; i < 120; ++i) second.push_back(Point{PointId(i), Vec(i), "", ""});
  auto c1 = Node(1).GetCollection("docs");
  ASSERT_TRUE(c1.ok());
  ASSERT_TRUE((*c1)->Upsert(second).ok());  // two of three replicas: a quorum
  OpenNodes({2});  // the same directory: a member, whatever --seeds says
  auto c2 = Node(2).GetCollection("docs");
  ASSERT_TRUE(c2.ok());
  auto n = (*c2)->Count(nullptr);  // linearizable: it waits to catch up
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 120u);
  ExpectReplicasAlike();
}

// Raft §7 with files: a replica that was down while its group compacted its
// log past what the replica has catches up from a snapshot of the leader's
// files (checkpoint and sealed segments), and then from the log.
TEST_F(ClusterTest, AReplicaBehindTheCompactedLogCatchesUpFromSnapshotFiles) {
  auto c = OpenCompactingWithDocs(/*shards=*/1, /*seal_threshold=*/1000);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Upsert({Point{PointId(uint64_t{0}), Vec(0), "", ""}}).ok());
  nodes_.erase(2);  // down
  auto c1 = Node(1).GetCollection("docs");
  ASSERT_TRUE(c1.ok());
  ASSERT_NO_FATAL_FAILURE(UpsertRange(**c1, 1, 1501, 25));
  ASSERT_TRUE((*c1)->Delete({PointId(uint64_t{5}), PointId(uint64_t{6})}).ok());
  // Sealed segments exist on the nodes that stayed (they travel as files).
  for (int i = 0; i < 200; ++i) {
    auto info = (*c1)->Info();
    ASSERT_TRUE(info.ok()) << info.status();
    if (info->sealed_segments > 0) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_GT(Metric(Node(0), "cairn_raft_log_compactions_total{group=\"") +
                Metric(Node(1), "cairn_raft_log_compactions_total{group=\""),
            0);
  OpenNodes({2});
  EXPECT_EQ(DocsThrough(2), 1499u);  // linearizable: it waits to catch up
  ExpectReplicasAlike();
  EXPECT_GE(Metric(Node(2), "cairn_raft_snapshots_installed_total{"), 1);
  EXPECT_GE(Metric(Node(2), "cairn_snapshot_transfers_total{direction=\"received\",result=\"ok\"}"), 1);
  EXPECT_GT(Metric(Node(2), "cairn_snapshot_bytes_total{kind=\"fetched\"}"), 0);
  // The installed replica serves searches, and writes go on everywhere.
  auto c2 = Node(2).GetCollection("docs");
  ASSERT_TRUE(c2.ok());
  SearchParams p;
  p.k = 1;
  auto hits = (*c2)->Search(Vec(77), p);
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_EQ(hits->size(), 1u);
  EXPECT_EQ((*hits)[0].score, 0.0f);
  ASSERT_TRUE((*c2)->Upsert({Point{PointId(uint64_t{5000}), Vec(5000), "", ""}}).ok());
  ExpectReplicasAlike();
  // And it restarts from the installed files.
  nodes_.erase(2);
  OpenNodes({2});
  EXPECT_EQ(DocsThrough(2), 1500u);
  ExpectReplicasAlike();
}

// A node whose disk was wiped comes back under its name with a new id: it
// joins in place of its former self (never forming a cluster of its own),
// every replica the old id held is re-created on it from the leaders'
// snapshots, the old id leaves every group, and the new replicas count in
// the quorums.
TEST_F(ClusterTest, AWipedNodeJoinsInPlaceOfItsFormerSelf) {
  auto c = OpenCompactingWithDocs(/*shards=*/2);
  ASSERT_NE(c, nullptr);
  ASSERT_NO_FATAL_FAILURE(UpsertRange(*c, 0, 300, 10));
  const uint64_t old_id = Node(2).node_id();
  nodes_.erase(2);
  fs::remove_all(Options(2).data_dir);
  ASSERT_TRUE(c->Upsert({Point{PointId(uint64_t{300}), Vec(300), "", ""}}).ok());
  OpenNodes({2});
  const uint64_t new_id = Node(2).node_id();
  EXPECT_NE(new_id, old_id);
  EXPECT_EQ(Node(2).cluster_id(), Node(0).cluster_id());
  // Every group, the metadata's too, ends on the three live nodes.
  const std::set<uint64_t> live = {Node(0).node_id(), Node(1).node_id(), new_id};
  bool moved = false;
  ClusterStatus st;
  for (int i = 0; i < 600 && !moved; ++i) {
    st = Node(0).Status();
    moved = st.groups.size() == 3;
    for (const auto& g : st.groups) {
      std::set<uint64_t> on;
      for (const auto& r : g.replicas) on.insert(r.node);
      moved = moved && on == live;
    }
    if (!moved) std::this_thread::sleep_for(50ms);
  }
  if (!moved) {
    for (const auto& g : st.groups) {
      std::string reps;
      for (const auto& r : g.replicas) absl::StrAppend(&reps, " ", r.replica, "@", r.node);
      ADD_FAILURE() << "group " << g.group << " leader " << g.leader_node << ":" << reps;
    }
  }
  ASSERT_TRUE(moved) << "the replicas of the wiped node did not move to its new id within 30 s";
  for (const auto& n : st.nodes) {
    if (n.id == old_id) {
      EXPECT_EQ(n.state, "removed");
    }
    if (n.id == new_id) {
      EXPECT_EQ(n.state, "active");
    }
  }
  EXPECT_EQ(DocsThrough(2), 301u);
  ExpectReplicasAlike();
  // With node 0 down, writes need node 2's new replicas to vote.
  nodes_.erase(0);
  auto c1 = Node(1).GetCollection("docs");
  ASSERT_TRUE(c1.ok());
  ASSERT_TRUE((*c1)->Upsert({Point{PointId(uint64_t{301}), Vec(301), "", ""}}).ok());
  EXPECT_EQ(DocsThrough(2), 302u);
  // The new node restarts as a member like any other.
  nodes_.erase(2);
  OpenNodes({2});
  EXPECT_EQ(Node(2).node_id(), new_id);
  EXPECT_EQ(DocsThrough(2), 302u);
}

// Scale up, drain, remove: a fourth node joins and the controller moves
// replicas onto it until each node holds three or two; draining a node moves
// its replicas and leaderships off; removing it is refused until then, and
// refused for an active node. Nothing written is lost along the way, and
// replicas of each shard end identical.
TEST_F(ClusterTest, ANewNodeTakesItsShareAndADrainedNodeIsRemoved) {
  auto c = OpenWithDocs(/*shards=*/3);
  ASSERT_NE(c, nullptr);
  ASSERT_NO_FATAL_FAILURE(UpsertRange(*c, 0, 300, 20));
  OpenNodes({3});
  const uint64_t fourth = Node(3).node_id();
  auto balanced = [](const ClusterStatus& st) {
    if (!st.operations.empty() || st.nodes.size() != 4) return false;
    for (const auto& n : st.nodes) {
      if (n.state != "active" || n.replicas < 2 || n.replicas > 3) return false;
    }
    for (const auto& g : st.groups) {
      if (g.collection.empty()) continue;
      if (g.replicas.size() != 3) return false;
      for (const auto& r : g.replicas) {
        if (!r.reported || r.lag > 0) return false;
      }
    }
    return true;
  };
  ClusterStatus st = AwaitStatus(3, 90, balanced);
  ASSERT_TRUE(balanced(st));
  // Writes and reads go on through the new node, which now holds replicas.
  auto c3 = Node(3).GetCollection("docs");
  ASSERT_TRUE(c3.ok()) << c3.status();
  ASSERT_NO_FATAL_FAILURE(UpsertRange(**c3, 300, 400, 20));
  EXPECT_EQ(DocsThrough(3), 400u);
  ExpectReplicasAlike(/*per_group=*/3);

  // An active node is not removed; an unknown one is not found.
  auto refused = Node(1).RemoveNode("cairn-0");
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("drain it first"), std::string::npos) << refused;
  EXPECT_EQ(Node(1).RemoveNode("cairn-9").code(), absl::StatusCode::kNotFound);
  // Drain node 0: its replicas go to the three others (every group on the
  // one node that lacks it), its leaderships too.
  // Reads through the node being drained go on all along: as each of its
  // replicas leaves its group, another node's answers (none waits for a
  // replica that no longer applies anything).
  std::atomic<bool> stop_reads{false};
  std::atomic<int> reads{0};
  std::vector<std::string> read_errors;
  std::thread reader([&] {
    auto c0 = Node(0).GetCollection("docs");
    if (!c0.ok()) {
      read_errors.push_back(c0.status().ToString());
      return;
    }
    while (!stop_reads.load()) {
      const auto t0 = std::chrono::steady_clock::now();
      auto n = (*c0)->Count(nullptr);
      const auto took = std::chrono::steady_clock::now() - t0;
      if (!n.ok()) {
        read_errors.push_back(n.status().ToString());
      } else if (took > 5s) {
        read_errors.push_back(absl::StrCat("a count took ", std::chrono::duration<double>(took).count(), " s"));
      }
      ++reads;
      std::this_thread::sleep_for(5ms);
    }
  });
  ASSERT_TRUE(Node(1).DrainNode("cairn-0").ok());
  EXPECT_TRUE(Node(2).DrainNode(absl::StrCat(Node(0).node_id())).ok()) << "draining twice is no error";
  ASSERT_NO_FATAL_FAILURE(UpsertRange(*c, 400, 450, 10));  // writes during the drain
  auto drained = [&](const ClusterStatus& st) {
    for (const auto& n : st.nodes) {
      if (n.name == "cairn-0" && !n.removable) return false;
    }
    return st.operations.empty();
  };
  st = AwaitStatus(1, 90, drained);
  stop_reads = true;
  reader.join();
  ASSERT_TRUE(drained(st));
  EXPECT_GT(reads.load(), 10);
  EXPECT_TRUE(read_errors.empty()) << read_errors.size() << " reads through the drained node failed or waited, first: "
                                   << read_errors.front();
  for (const auto& n : st.nodes) {
    if (n.name == "cairn-0") {
      EXPECT_EQ(n.state, "draining");
      EXPECT_EQ(n.leaders, 0u);
    } else {
      EXPECT_EQ(n.replicas, 3u) << n.name;
    }
  }
  ASSERT_TRUE(Node(1).RemoveNode("cairn-0").ok());
  EXPECT_EQ(Node(1).RemoveNode("cairn-0").code(), absl::StatusCode::kNotFound);
  const uint64_t removed = Node(0).node_id();
  nodes_.erase(0);
  // The three left hold everything, the new node included.
  EXPECT_EQ(DocsThrough(3), 450u);
  ASSERT_NO_FATAL_FAILURE(UpsertRange(**c3, 450, 500, 10));
  EXPECT_EQ(DocsThrough(1), 500u);
  ExpectReplicasAlike();
  st = Node(3).Status();
  for (const auto& n : st.nodes) {
    if (n.id == removed) {
      EXPECT_EQ(n.state, "removed");
    }
  }
  EXPECT_NE(std::find_if(st.nodes.begin(), st.nodes.end(), [&](const auto& n) { return n.id == fourth && n.metadata_voter; }),
            st.nodes.end())
      << "the new node took the removed node's metadata vote";
  // The removed node's files of its replicas were dropped as they left.
  EXPECT_FALSE(fs::exists(absl::StrCat(Options(0).data_dir, "/groups/2")));
}

// A node silent past the dead-node timeout is marked dead and its replicas
// are re-created on the other nodes; when it comes back it is active again,
// its stale copies go, and it takes its share again. Writes never stop.
TEST_F(ClusterTest, ADeadNodesReplicasAreRecreatedAndItIsUsedAgainWhenBack) {
  dead_after_ = 2s;
  auto c = OpenWithDocs(/*shards=*/2);
  ASSERT_NE(c, nullptr);
  OpenNodes({3});
  auto settled = [](const ClusterStatus& st) {
    if (!st.operations.empty()) return false;
    for (const auto& g : st.groups) {
      if (!g.collection.empty() && g.replicas.size() != 3) return false;
    }
    for (const auto& n : st.nodes) {
      if (n.state != "active" || n.replicas < 1) return false;
    }
    return true;
  };
  ASSERT_TRUE(settled(AwaitStatus(0, 90, settled)));
  ASSERT_NO_FATAL_FAILURE(UpsertRange(*c, 0, 200, 20));
  // Node 2 stops (a pod gone for good, or for long).
  const uint64_t gone = Node(2).node_id();
  nodes_.erase(2);
  ASSERT_NO_FATAL_FAILURE(UpsertRange(*c, 200, 300, 20));
  auto replaced = [&](const ClusterStatus& st) {
    bool dead = false;
    for (const auto& n : st.nodes) dead = dead || (n.id == gone && n.state == "dead" && n.replicas == 0);
    if (!dead || !st.operations.empty()) return false;
    for (const auto& g : st.groups) {
      if (!g.collection.empty() && g.replicas.size() != 3) return false;
    }
    return true;
  };
  ASSERT_TRUE(replaced(AwaitStatus(0, 90, replaced)));
  EXPECT_EQ(DocsThrough(3), 300u);
  ExpectReplicasAlike(/*per_group=*/3);
  // Back: active again, and used again (6 replicas over 4 nodes).
  OpenNodes({2});
  ASSERT_TRUE(settled(AwaitStatus(0, 90, settled)));
  ASSERT_NO_FATAL_FAILURE(UpsertRange(*c, 300, 320, 20));
  EXPECT_EQ(DocsThrough(2), 320u);
  ExpectReplicasAlike(/*per_group=*/3);
}

// The replication factor changes online: lowered, each shard loses a
// replica; raised, it gets one back, copied from the leader.
TEST_F(ClusterTest, TheReplicationFactorChangesOnline) {
  auto c = OpenWithDocs(/*shards=*/2);
  ASSERT_NE(c, nullptr);
  ASSERT_NO_FATAL_FAILURE(UpsertRange(*c, 0, 100, 20));
  auto with = [&](size_t rf) {
    return [rf](const ClusterStatus& st) {
      if (!st.operations.empty()) return false;
      for (const auto& g : st.groups) {
        if (g.collection.empty()) continue;
        if (g.replicas.size() != rf) return false;
        for (const auto& r : g.replicas) {
          if (!r.reported || r.lag > 0) return false;
        }
      }
      return true;
    };
  };
  CollectionConfig cfg = c->config();
  cfg.replication_factor = 4;
  auto refused = c->UpdateConfig(cfg);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find("3 active nodes"), std::string::npos) << refused;
  cfg.replication_factor = 2;
  ASSERT_TRUE(c->UpdateConfig(cfg).ok());
  ASSERT_TRUE(with(2)(AwaitStatus(1, 60, with(2))));
  ASSERT_NO_FATAL_FAILURE(UpsertRange(*c, 100, 150, 10));
  EXPECT_EQ(DocsThrough(2), 150u);
  auto now = Node(2).CurrentConfig("docs");
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(now->replication_factor, 2u);
  cfg.replication_factor = 3;
  ASSERT_TRUE(c->UpdateConfig(cfg).ok());
  ASSERT_TRUE(with(3)(AwaitStatus(1, 60, with(3))));
  EXPECT_EQ(DocsThrough(0), 150u);
  ExpectReplicasAlike();
}

// A split under writes and searches: every shard becomes two, each point is
// in exactly the shard its id's hash names, nothing acknowledged is lost or
// doubled, every replica of each new shard holds the same data, and a
// delete by filter afterwards reaches every shard.
TEST_F(ClusterTest, ShardsSplitOnlineUnderWritesAndSearches) {
  auto c = OpenWithDocs(/*shards=*/2);
  ASSERT_NE(c, nullptr);
  ASSERT_NO_FATAL_FAILURE(UpsertRange(*c, 0, 400, 50));
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> acked{0}, write_errors{0}, searches{0}, search_errors{0};
  std::string first_error;
  std::mutex error_mu;
  std::thread writer([&] {
    auto through = Node(2).GetCollection("docs");
    if (!through.ok()) return;
    for (uint64_t next = 1000; !stop.load(); next += 10) {
      std::vector<Point> batch;
      for (uint64_t i = next; i < next + 10; ++i) batch.push_back(Point{PointId(i), Vec(i), "{\"b\":1}", ""});
      absl::Status s = (*through)->Upsert(batch);
      if (s.ok()) {
        acked.store(next + 10);
      } else {
        ++write_errors;
        std::lock_guard l(error_mu);
        if (first_error.empty()) first_error = s.ToString();
        break;
      }
    }
  });
  std::thread reader([&] {
    auto through = Node(1).GetCollection("docs");
    if (!through.ok()) return;
    while (!stop.load()) {
      SearchParams p;
      p.k = 5;
      auto r = (*through)->Search(Vec(7), p);
      ++searches;
      if (!r.ok()) {
        ++search_errors;
        std::lock_guard l(error_mu);
        if (first_error.empty()) first_error = r.status().ToString();
      } else if (r->empty() || r->front().id != PointId(7)) {
        ++search_errors;
      }
    }
  });
  std::this_thread::sleep_for(200ms);
  ASSERT_TRUE(Node(1).SplitCollection("docs").ok());
  EXPECT_EQ(Node(0).SplitCollection("docs").code(), absl::StatusCode::kFailedPrecondition)
      << "a second split while the first is under way";
  auto split = [](const ClusterStatus& st) {
    size_t shards = 0;
    for (const auto& g : st.groups) {
      if (g.collection.empty()) continue;
      ++shards;
      if (g.leader_node == 0 || g.replicas.size() != 3) return false;
      for (const auto& r : g.replicas) {
        if (!r.reported) return false;
      }
    }
    return shards == 4 && st.operations.empty();
  };
  const bool done = split(AwaitStatus(0, 60, split));
  std::this_thread::sleep_for(300ms);  // writes and searches go on over the new map
  stop = true;
  writer.join();
  reader.join();
  ASSERT_TRUE(done);
  EXPECT_EQ(write_errors.load(), 0u) << first_error;
  EXPECT_EQ(search_errors.load(), 0u) << first_error;
  EXPECT_GT(searches.load(), 0u);
  const uint64_t written = acked.load();
  ASSERT_GT(written, 1000u);
  auto now = Node(0).CurrentConfig("docs");
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(now->num_shards, 4u);
  // Every acknowledged point, through every node; none twice.
  const uint64_t expected = 400 + (written - 1000);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(DocsThrough(i), expected) << "through node " << i;
  std::vector<PointId> ids;
  for (uint64_t id = 0; id < 400; ++id) ids.push_back(PointId(id));
  for (uint64_t id = 1000; id < written; ++id) ids.push_back(PointId(id));
  auto got = (*Node(0).GetCollection("docs"))->Get(ids, false, false, ReadOptions{});
  ASSERT_TRUE(got.ok()) << got.status();
  for (size_t k = 0; k < ids.size(); ++k) EXPECT_TRUE((*got)[k].has_value()) << ids[k].ToString();
  // Each point in the one shard its hash names, on every replica alike.
  auto map = Node(0).ShardMapOf("docs");
  ASSERT_TRUE(map.ok()) << map.status();
  ASSERT_EQ(map->groups.size(), 4u);
  ExpectReplicasAlike();
  auto sums = Node(0).LocalChecksums();
  ASSERT_TRUE(sums.ok());
  uint64_t in_groups = 0;
  for (uint64_t gid : map->groups) in_groups += sums->at(gid).points;
  EXPECT_EQ(in_groups, expected);
  // A delete by filter reaches every shard; the collection as a whole is
  // not snapshotted (not supported for split collections yet).
  auto deleted = c->DeleteByFilter(*Filter::FromJson(R"({"must":[{"key":"b","match":{"value":1}}]})"));
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(DocsThrough(1), expected - *deleted);
  EXPECT_EQ(Node(0).Snapshot("docs", dir_ + "/snap").code(), absl::StatusCode::kFailedPrecondition);
}

// A collection that sets split_points has its shards split by the cluster
// as they pass it, until none does.
TEST_F(ClusterTest, AShardPastItsSplitPointsIsSplitByTheCluster) {
  auto c = OpenWithDocs(/*shards=*/1);
  ASSERT_NE(c, nullptr);
  ASSERT_NO_FATAL_FAILURE(UpsertRange(*c, 0, 2500, 250));
  CollectionConfig cfg = c->config();
  cfg.split_points = 1000;
  ASSERT_TRUE(c->UpdateConfig(cfg).ok());
  auto settled = [&](const ClusterStatus& st) {
    if (!st.operations.empty()) return false;
    auto map = Node(0).ShardMapOf("docs");
    auto sums = Node(0).LocalChecksums();
    if (!map.ok() || !sums.ok() || map->groups.size() < 3) return false;
    uint64_t total = 0;
    for (uint64_t gid : map->groups) {
      if (!sums->count(gid) || sums->at(gid).points > 1000) return false;
      total += sums->at(gid).points;
    }
    return total == 2500;
  };
  ASSERT_TRUE(settled(AwaitStatus(0, 90, settled)));
  EXPECT_EQ(DocsThrough(2), 2500u);
  ExpectReplicasAlike();
}

// The copies splits leave: one for a group this node's metadata does not
// know yet (its replica of the parent applied the split first) stays; one
// for a group whose replica here is open already goes.
TEST_F(ClusterTest, ASplitsCopyStaysUntilItsGroupIsKnownAndOpenedHere) {
  auto c = OpenWithDocs(/*shards=*/1);
  ASSERT_NE(c, nullptr);
  const std::string groups = Options(0).data_dir + "/groups";
  const std::string future = groups + "/1000000.split.tmp", opened = groups + "/2.split";
  fs::create_directories(future);
  fs::create_directories(opened);
  ASSERT_TRUE(fs::exists(groups + "/2")) << "group 2 is the collection's shard";
  for (int i = 0; i < 50 && fs::exists(opened); ++i) std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(fs::exists(opened));
  EXPECT_TRUE(fs::exists(future));
}

// A node about to stop hands its leaderships to caught-up replicas: then it
// leads nothing, and the others lead every group.
TEST_F(ClusterTest, AStoppingNodeHandsOffItsLeaderships) {
  auto c = OpenWithDocs(/*shards=*/3);
  ASSERT_NE(c, nullptr);
  ASSERT_NO_FATAL_FAILURE(UpsertRange(*c, 0, 60, 20));
  auto leads = [&](int i) {
    size_t n = 0;
    for (const auto& g : Node(i).Status().groups) {
      if (g.leader_node == Node(i).node_id()) ++n;
    }
    return n;
  };
  int busiest = 0;
  for (int i = 1; i < 3; ++i) {
    if (leads(i) > leads(busiest)) busiest = i;
  }
  ASSERT_GT(leads(busiest), 0u);
  EXPECT_EQ(Node(busiest).HandOffLeadership(10s), 0u);
  EXPECT_EQ(leads(busiest), 0u);
  nodes_.erase(busiest);
  // Every group still has a leader among the two left: writes go on at once.
  const int other = busiest == 0 ? 1 : 0;
  auto c2 = Node(other).GetCollection("docs");
  ASSERT_TRUE(c2.ok());
  ASSERT_NO_FATAL_FAILURE(UpsertRange(**c2, 60, 90, 10));
  EXPECT_EQ(DocsThrough(other), 90u);
}

// The metadata group's log is compacted too: nodes restart from its
// snapshot (the whole state) and the entries after it, and a node that joins
// later receives the snapshot.
TEST_F(ClusterTest, TheMetadataLogIsCompactedAndItsSnapshotServesRestartsAndJoins) {
  compact_after_ = 20;
  OpenNodes({0, 1, 2});
  CollectionConfig cfg;
  cfg.dimension = 4;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(Node(i % 3).CreateCollection(absl::StrCat("c", i), cfg).ok());
    if (i % 2 == 1) {
      ASSERT_TRUE(Node(0).DropCollection(absl::StrCat("c", i - 1)).ok());
    }
  }
  double compactions = 0;
  for (int i = 0; i < 3; ++i) compactions += Metric(Node(i), "cairn_raft_log_compactions_total{group=\"1\"");
  EXPECT_GT(compactions, 0);
  const auto want = Node(0).ListCollections();
  ASSERT_EQ(want.size(), 10u);
  nodes_.erase(1);
  OpenNodes({1});
  EXPECT_EQ(Node(1).ListCollections(), want);
  // A wiped node learns the metadata from the leader's snapshot.
  nodes_.erase(2);
  fs::remove_all(Options(2).data_dir);
  OpenNodes({2});
  EXPECT_EQ(Node(2).ListCollections(), want);
  auto c = Node(2).GetCollection("c19");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE((*c)->Upsert({Point{PointId(uint64_t{1}), Vec(1), "", ""}}).ok());
}

// Five seeds: the metadata group's voters are the first three, the other two
// follow it as learners; either serves requests like any node.
TEST_F(ClusterTest, FiveNodesWithMetadataLearnersServeAlike) {
  OpenNodes({0, 1, 2, 3, 4}, 5);
  CollectionConfig cfg;
  cfg.dimension = 4;
  cfg.num_shards = 5;
  auto c = Node(4).CreateCollection("docs", cfg);  // through a learner of the metadata group
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->config().replication_factor, 3u);
  std::vector<Point> pts;
  for (uint64_t i = 0; i < 100; ++i) pts.push_back(Point{PointId(i), Vec(i), "", ""});
  ASSERT_TRUE((*c)->Upsert(pts).ok());
  auto c3 = Node(3).GetCollection("docs");
  ASSERT_TRUE(c3.ok()) << c3.status();
  auto n = (*c3)->Count(nullptr);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 100u);
  // 5 shards x 3 replicas over 5 nodes: 3 each, and one preferred leader each.
  std::map<uint64_t, int> per_node;
  for (const auto& g : Node(0).Status().groups) {
    if (g.collection.empty()) continue;
    for (const auto& r : g.replicas) ++per_node[r.node];
  }
  EXPECT_EQ(per_node.size(), 5u);
  for (const auto& [node, k] : per_node) EXPECT_EQ(k, 3) << node;
}

// A local read answers from the replica's own data without asking the
// leader, as long as the replica heard from a leader within the bound.
TEST_F(ClusterTest, LocalReadsAnswerWithoutTheLeaderWithinTheirStaleness) {
  auto c = OpenWithDocs();
  ASSERT_NE(c, nullptr);
  std::vector<Point> pts;
  for (uint64_t i = 0; i < 10; ++i) pts.push_back(Point{PointId(i), Vec(i), "", ""});
  ASSERT_TRUE(c->Upsert(pts).ok());
  auto c2 = Node(2).GetCollection("docs");
  ASSERT_TRUE(c2.ok());
  ASSERT_TRUE((*c2)->Count(nullptr).ok());  // node 2 has applied the upsert
  SearchParams sp;
  sp.k = 1;
  sp.exact = true;
  sp.consistency = ReadConsistency::kLocal;
  auto hit = (*c2)->Search(Vec(3), sp);
  ASSERT_TRUE(hit.ok()) << hit.status();
  EXPECT_EQ((*hit)[0].id, PointId(3));
  // Idle, the groups go quiet: no heartbeats, yet a replica stays as current
  // as its leader's node's last keepalive, and local reads with a tight
  // bound are answered.
  for (int i = 0; i < 500 && Metric(Node(2), "cairn_raft_quiesced") < 2; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(Metric(Node(2), "cairn_raft_quiesced"), 2);  // the metadata group and the shard
  std::this_thread::sleep_for(300ms);
  sp.max_staleness_ms = 200;
  hit = (*c2)->Search(Vec(3), sp);
  ASSERT_TRUE(hit.ok()) << hit.status();
  EXPECT_EQ((*hit)[0].id, PointId(3));
  // Alone, node 2 answers local reads while its last news of a leader is
  // recent enough for the read, and refuses them after.
  nodes_.erase(0);
  nodes_.erase(1);
  sp.max_staleness_ms = 60000;
  hit = (*c2)->Search(Vec(3), sp);
  ASSERT_TRUE(hit.ok()) << hit.status();
  EXPECT_EQ((*hit)[0].id, PointId(3));
  // Get, Count and Scroll take the same choice.
  ReadOptions read{ReadConsistency::kLocal, 60000};
  auto got = (*c2)->Get({PointId(3)}, false, true, read);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE((*got)[0].has_value());
  EXPECT_EQ((*got)[0]->vector, Vec(3));
  auto n = (*c2)->Count(nullptr, read);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 10u);
  ScrollRequest sr;
  sr.consistency = ReadConsistency::kLocal;
  sr.max_staleness_ms = 60000;
  auto page = (*c2)->Scroll(sr);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->points.size(), 10u);

  std::this_thread::sleep_for(300ms);
  sp.max_staleness_ms = 100;
  hit = (*c2)->Search(Vec(3), sp);
  EXPECT_EQ(hit.status().code(), absl::StatusCode::kUnavailable) << hit.status();
  EXPECT_NE(hit.status().message().find("has not heard from its leader"), std::string::npos) << hit.status();
  read.max_staleness_ms = 100;
  sr.max_staleness_ms = 100;
  EXPECT_EQ((*c2)->Get({PointId(3)}, false, false, read).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*c2)->Count(nullptr, read).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*c2)->Scroll(sr).status().code(), absl::StatusCode::kUnavailable);
}

// A snapshot through any node holds every shard, copied from a replica here
// or fetched from the node holding one; it is a single-node data directory,
// and restores into the cluster under a new name.
TEST_F(ClusterTest, SnapshotsCopyEveryShardAndRestoreIntoTheCluster) {
  OpenNodes({0, 1, 2});
  CollectionConfig cfg;
  cfg.dimension = 4;
  cfg.num_shards = 3;
  cfg.replication_factor = 1;  // node 0 holds one shard; the others are fetched
  auto c = Node(0).CreateCollection("docs", cfg);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<Point> pts;
  for (uint64_t i = 0; i < 300; ++i) {
    pts.push_back(Point{PointId(i), Vec(i), absl::StrCat("{\"n\":", i, "}"), absl::StrCat("text ", i)});
  }
  ASSERT_TRUE((*c)->Upsert(pts).ok());
  const std::string snap = dir_ + "/snap-docs";
  ASSERT_TRUE(Node(0).Snapshot("docs", snap).ok());
  // Nodes 1 and 2 each served their shard's files.
  for (int i : {1, 2}) {
    EXPECT_EQ(Metric(Node(i), "cairn_snapshot_transfers_total{direction=\"sent\",result=\"ok\"}"), 1) << i;
  }
  EXPECT_EQ(Node(0).Snapshot("docs", snap).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Node(0).Snapshot("nope", dir_ + "/snap-nope").code(), absl::StatusCode::kNotFound);
  // Writes after the snapshot are not in it.
  ASSERT_TRUE((*c)->Upsert({Point{PointId(1000), Vec(1000), "", ""}}).ok());
  ASSERT_TRUE((*c)->Delete({PointId(0)}).ok());

  // The snapshot is a single-node data directory (opened from a copy: it
  // stays as it was for the restore below).
  const std::string copy = dir_ + "/snap-copy";
  ASSERT_TRUE(db::CopyTree(snap, copy).ok());
  {
    auto single = Database::Open(copy, {});
    ASSERT_TRUE(single.ok()) << single.status();
    auto sc = (*single)->GetCollection("docs");
    ASSERT_TRUE(sc.ok()) << sc.status();
    auto n = (*sc)->Count();
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, 300u);
    auto got = (*sc)->Get({PointId(0), PointId(299), PointId(1000)}, true, true);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE((*got)[0].has_value());
    EXPECT_EQ((*got)[0]->vector, Vec(0));
    ASSERT_TRUE((*got)[1].has_value());
    EXPECT_EQ((*got)[1]->payload, R"({"n":299})");
    EXPECT_EQ((*got)[1]->text, "text 299");
    EXPECT_FALSE((*got)[2].has_value());
  }

  // Restored through another node, as a new collection of the cluster.
  auto restored = Node(1).RestoreCollection(snap, "docs-restored");
  ASSERT_TRUE(restored.ok()) << restored.status();
  auto through2 = Node(2).GetCollection("docs-restored");
  ASSERT_TRUE(through2.ok()) << through2.status();
  auto n = (*through2)->Count();
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 300u);
  auto got = (*through2)->Get({PointId(0), PointId(42)}, true, true);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE((*got)[0].has_value());
  ASSERT_TRUE((*got)[1].has_value());
  EXPECT_EQ((*got)[1]->vector, Vec(42));
  EXPECT_EQ((*got)[1]->payload, R"({"n":42})");
  EXPECT_EQ((*got)[1]->text, "text 42");
  EXPECT_EQ((*through2)->config().num_shards, 3u);
  EXPECT_EQ(Node(1).RestoreCollection(snap, "docs").status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Node(1).RestoreCollection(dir_ + "/node-1", "other").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Node(0).GetCollection("other").status().code(), absl::StatusCode::kNotFound);
  // Nothing is left of the copies: the exported checkpoints are gone once
  // fetched, and so is the restore's working copy.
  for (int i = 0; i < 3; ++i) {
    std::error_code ec;
    const fs::path out = fs::path(dir_) / absl::StrCat("node-", i) / "snapshots-out";
    EXPECT_TRUE(!fs::exists(out, ec) || fs::is_empty(out, ec)) << out;
    const fs::path restores = fs::path(dir_) / absl::StrCat("node-", i) / "restores";
    EXPECT_TRUE(!fs::exists(restores, ec) || fs::is_empty(restores, ec)) << restores;
  }
}

// A single-node database is not a cluster node's disk, nor the other way round.
TEST(ClusterDirTest, SingleNodeAndClusterDirectoriesAreNotMixedUp) {
  std::string tmpl = (fs::path(::testing::TempDir()) / "cairn-mixed-XXXXXX").string();
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  const std::string single = tmpl + "/single", node = tmpl + "/node";
  {
    auto db = Database::Open(single, {});
    ASSERT_TRUE(db.ok()) << db.status();
  }
  ClusterOptions o;
  o.data_dir = single;
  o.node_name = "n0";
  o.seeds = {"127.0.0.1:1"};
  auto c = Cluster::Open(o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(c.status().message().find("single-node database"), std::string::npos) << c.status();
  EXPECT_FALSE(fs::exists(single + "/node.json"));
  ASSERT_TRUE(LoadOrCreateIdentity(node, "n0").ok());
  auto db = Database::Open(node, {});
  EXPECT_EQ(db.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(db.status().message().find("cairnd --cluster"), std::string::npos) << db.status();
  fs::remove_all(tmpl);
}

TEST_F(ClusterTest, ADirectoryOfAnotherNodeIsRefused) {
  OpenNodes({0, 1, 2});
  nodes_.erase(1);
  ClusterOptions o = Options(1);
  o.data_dir = Options(2).data_dir;  // cairn-1 on cairn-2's disk (cairn-2 still holds it, so stop it first)
  nodes_.erase(2);
  auto c = Cluster::Open(o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(c.status().message().find("belongs to node \"cairn-2\""), std::string::npos) << c.status();
}

}  // namespace
}  // namespace cairn::cluster
