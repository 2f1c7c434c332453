// A real cairnd --cluster of three processes on loopback, with clients writing
// and reading through every node while faults strike: kill -9 of a shard's
// leader and of a random node, a node paused (SIGSTOP) and resumed, restarts.
// Then, with every node healed:
//   - the history of per-key writes and reads is linearizable (the Wing & Gong
//     checker of tests/simulation);
//   - every acknowledged write is there (the checker sees every read of it);
//   - the replicas of each shard hold identical data: every node is stopped
//     and each replica's files are opened and checksummed;
//   - partitions (each node in a network namespace of its own, as root): a
//     shard's leader isolated, one direction cut, a node alone;
//   - a node restarted on a wiped disk joins in place of its former self
//     (never forming a cluster of its own), and a node started on another
//     node's disk is refused.
//
// CAIRN_CLUSTER_ROUNDS sets the fault rounds (default 2: about a minute; the
// slow label runs 20), CAIRN_CLUSTER_NODES the nodes (default 3; the slow
// label runs 5), CAIRN_CLUSTER_SOAK_SECONDS a time to keep going for (the
// slow label soaks 600 s). CAIRN_TEST_SEED picks the faults; it is printed.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <sstream>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_interceptor.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cairn/v1/cluster.grpc.pb.h"
#include "cairn/v1/collections.grpc.pb.h"
#include "cairn/v1/points.grpc.pb.h"
#include "db/collection_impl.h"
#include "db/shard.h"
#include "cluster/test_ports.h"
#include "gtest/gtest.h"
#include "tests/simulation/linearizability.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::cairn::v1;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

using testing_ports::FreePort;

// The whole answer (status line, headers, body) to GET `path`; "" when
// nothing answers.
std::string HttpGet(const std::string& host, int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  (void)!::write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

int HttpStatus(const std::string& host, int port, const std::string& path) {
  const std::string r = HttpGet(host, port, path);
  return r.size() >= 12 ? std::atoi(r.c_str() + 9) : -1;
}

// The sum of the samples of /metrics whose line starts with `prefix`.
double MetricSum(const std::string& host, int port, const std::string& prefix) {
  std::istringstream in(HttpGet(host, port, "/metrics"));
  double sum = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) == 0) sum += std::atof(line.c_str() + line.rfind(' ') + 1);
  }
  return sum;
}

// Runs a command; its exit code.
int Run(const std::string& cmd) {
  const int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// Network namespaces for the nodes (root only): node i lives in a namespace
// of its own at 10.213.N.(10 + i), all joined by a bridge in the host's
// namespace (10.213.N.1), where the test's clients are. A partition is a
// blackhole route in the sending node's namespace: real packets, really lost.
class Netns {
 public:
  // Nullptr when namespaces cannot be made here (not root, no `ip`).
  static std::unique_ptr<Netns> Create(int nodes) {
    if (::geteuid() != 0) return nullptr;
    SweepStale();
    auto n = std::unique_ptr<Netns>(new Netns(nodes));
    if (!n->ok_) return nullptr;
    return n;
  }
  ~Netns() {
    for (int i = 0; i < nodes_; ++i) Run(absl::StrCat("ip netns del ", Name(i)));
    Run(absl::StrCat("ip link del ", bridge_));
  }
  std::string Name(int i) const { return absl::StrCat("cz", tag_, "-", i); }
  std::string Ip(int i) const { return absl::StrCat(prefix_, 10 + i); }
  std::string HostIp() const { return absl::StrCat(prefix_, 1); }
  // Packets from node a to node b are lost (until Heal).
  void Cut(int a, int b) { Run(absl::StrCat("ip netns exec ", Name(a), " ip route add blackhole ", Ip(b), "/32")); }
  // Node i's link, both ways, becomes slow and lossy (until Heal): 256 kbit/s,
  // packets queued up to 100 ms and dropped beyond (a token bucket; this
  // kernel may lack netem). False when the kernel has no tbf either.
  bool Degrade(int i) {
    const std::string tbf = " root tbf rate 256kbit burst 16kbit latency 100ms";
    return Run(absl::StrCat("tc qdisc add dev ", HostEnd(i), tbf)) == 0 &&
           Run(absl::StrCat("ip netns exec ", Name(i), " tc qdisc add dev ", NsEnd(i), tbf)) == 0;
  }
  void Heal() {
    for (int i = 0; i < nodes_; ++i) {
      for (int j = 0; j < nodes_; ++j) {
        if (i != j) Run(absl::StrCat("ip netns exec ", Name(i), " ip route del blackhole ", Ip(j), "/32"));
      }
      Run(absl::StrCat("tc qdisc del dev ", HostEnd(i), " root"));
      Run(absl::StrCat("ip netns exec ", Name(i), " tc qdisc del dev ", NsEnd(i), " root"));
    }
  }

 private:
  explicit Netns(int nodes) : nodes_(nodes) {
    tag_ = static_cast<int>(::getpid());  // in every name: SweepStale knows the owner
    prefix_ = absl::StrCat("10.213.", ::getpid() % 200 + 20, ".");
    bridge_ = absl::StrCat("czb", tag_);
    ok_ = Run(absl::StrCat("ip link add ", bridge_, " type bridge")) == 0 &&
          Run(absl::StrCat("ip addr add ", HostIp(), "/24 dev ", bridge_)) == 0 &&
          Run(absl::StrCat("ip link set ", bridge_, " up")) == 0;
    for (int i = 0; ok_ && i < nodes_; ++i) {
      const std::string host_end = HostEnd(i), ns_end = NsEnd(i);
      ok_ = Run(absl::StrCat("ip netns add ", Name(i))) == 0 &&
            Run(absl::StrCat("ip link add ", host_end, " type veth peer name ", ns_end)) == 0 &&
            Run(absl::StrCat("ip link set ", host_end, " master ", bridge_, " up")) == 0 &&
            Run(absl::StrCat("ip link set ", ns_end, " netns ", Name(i))) == 0 &&
            Run(absl::StrCat("ip netns exec ", Name(i), " ip addr add ", Ip(i), "/24 dev ", ns_end)) == 0 &&
            Run(absl::StrCat("ip netns exec ", Name(i), " ip link set ", ns_end, " up")) == 0 &&
            Run(absl::StrCat("ip netns exec ", Name(i), " ip link set lo up")) == 0;
    }
  }
  // What earlier runs left when killed before their destructor ran (kill -9,
  // a crash): namespaces and links named after a process that is gone.
  static void SweepStale() {
    auto stale = [](const std::string& name, const std::string& prefix) {
      if (name.rfind(prefix, 0) != 0 || name.size() == prefix.size() || !std::isdigit(name[prefix.size()])) return false;
      const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
      return pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
    };
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/var/run/netns", ec)) {
      const std::string name = e.path().filename().string();
      if (stale(name, "cz")) Run("ip netns del " + name);
    }
    for (const auto& e : fs::directory_iterator("/sys/class/net", ec)) {
      const std::string name = e.path().filename().string();
      if (stale(name, "czb") || stale(name, "czh")) Run("ip link del " + name);
    }
  }
  std::string HostEnd(int i) const { return absl::StrCat("czh", tag_, "-", i); }
  std::string NsEnd(int i) const { return absl::StrCat("czn", tag_, "-", i); }

  const int nodes_;
  int tag_ = 0;
  std::string prefix_, bridge_;
  bool ok_ = false;
};

// Adds `authorization: Bearer KEY` to every call of a channel.
class BearerInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerInterceptor(std::string key) : key_(std::move(key)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", "Bearer " + key_});
    }
    methods->Proceed();
  }

 private:
  const std::string key_;
};
class BearerFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerFactory(std::string key) : key_(std::move(key)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new BearerInterceptor(key_);
  }

 private:
  const std::string key_;
};

// The API key of nodes off loopback (they refuse to run without keys).
constexpr char kAdminKey[] = "test-admin-key-0123456789";

// One cairnd --cluster process: on loopback, or in network namespace `netns`
// at `host` (its peer port then needs the cluster secret in `secret_file`).
class Node {
 public:
  Node(int index, std::string dir, int grpc_port, int http_port, std::string peer, std::string seeds,
       std::string host = "127.0.0.1", std::string netns = "", std::string secret_file = "")
      : index_(index), dir_(std::move(dir)), grpc_(grpc_port), http_(http_port), peer_(std::move(peer)),
        seeds_(std::move(seeds)), host_(std::move(host)), netns_(std::move(netns)),
        secret_file_(std::move(secret_file)) {}
  // Flags added to the command line of the next Start.
  void set_extra_args(std::vector<std::string> args) { extra_args_ = std::move(args); }
  ~Node() { Kill(SIGKILL); }

  // Starts the process on data directory `data` (default its own) as `name`.
  void Start(const std::string& data = "", const std::string& name = "") {
    fs::create_directories(dir_);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      // The node dies with the test, also when the test crashes or is killed.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) std::_Exit(127);
      const std::string log = dir_ + "/log";
      FILE* f = std::freopen(log.c_str(), "a", stderr);
      (void)f;
      std::vector<std::string> args = {CAIRND_PATH,
                                       "--cluster",
                                       "--node-name",
                                       name.empty() ? absl::StrCat("cairn-", index_) : name,
                                       "--data-dir",
                                       data.empty() ? dir_ + "/data" : data,
                                       "--listen",
                                       absl::StrCat(host_, ":", grpc_),
                                       "--http-listen",
                                       absl::StrCat(host_, ":", http_),
                                       "--peer-listen",
                                       peer_,
                                       "--seeds",
                                       seeds_,
                                       "--raft-tick-ms",
                                       "20",
                                       // Logs compacted often: a node that was down or
                                       // paused catches up from snapshot files.
                                       "--raft-log-compact-entries",
                                       "20",
                                       "--grace-seconds",
                                       "5",
                                       "--insecure-no-auth",
                                       "--log-format",
                                       "logfmt"};
      if (!secret_file_.empty()) args.insert(args.end(), {"--cluster-secret-file", secret_file_});
      args.insert(args.end(), extra_args_.begin(), extra_args_.end());
      if (!netns_.empty()) {
        // Off loopback: API keys instead of --insecure-no-auth.
        args.erase(std::find(args.begin(), args.end(), "--insecure-no-auth"));
        ::setenv("CAIRN_API_KEYS", absl::StrCat("admin:", kAdminKey).c_str(), 1);
        args.insert(args.begin(), {"/usr/sbin/ip", "netns", "exec", netns_});
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      std::_Exit(127);
    }
    if (netns_.empty()) {
      channel_ = grpc::CreateChannel(absl::StrCat(host_, ":", grpc_), grpc::InsecureChannelCredentials());
    } else {
      std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
      interceptors.push_back(std::make_unique<BearerFactory>(kAdminKey));
      channel_ = grpc::experimental::CreateCustomChannelWithInterceptors(
          absl::StrCat(host_, ":", grpc_), grpc::InsecureChannelCredentials(), grpc::ChannelArguments(),
          std::move(interceptors));
    }
  }
  // Waits until /readyz answers 200; false when it exits or `limit` passes.
  bool WaitReady(std::chrono::seconds limit = 60s) {
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      if (HttpStatus(host_, http_, "/readyz") == 200) return true;
      if (!Running()) return false;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
  bool Running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      pid_ = -1;
      return false;
    }
    return true;
  }
  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  // Sends `sig` and waits for the exit; the exit code.
  int Kill(int sig) {
    if (pid_ <= 0) return exit_code_;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, sig);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return exit_code_;
  }
  // Waits up to `limit` for the process to exit by itself.
  std::optional<int> WaitExit(std::chrono::seconds limit) {
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      if (!Running()) return exit_code_;
      std::this_thread::sleep_for(50ms);
    }
    return std::nullopt;
  }
  std::string Log() const {
    std::ifstream f(dir_ + "/log");
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  const std::string& dir() const { return dir_; }
  int index() const { return index_; }
  int http_port() const { return http_; }
  const std::string& host() const { return host_; }

 private:
  const int index_;
  const std::string dir_;
  const int grpc_, http_;
  const std::string peer_, seeds_, host_, netns_, secret_file_;
  std::vector<std::string> extra_args_;
  pid_t pid_ = -1;
  int exit_code_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
};

constexpr int kKeys = 64;
constexpr char kCollection[] = "jepsen";

class ClusterFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* s = std::getenv("CAIRN_TEST_SEED");
    seed_ = s ? std::strtoull(s, nullptr, 10) : static_cast<uint64_t>(std::random_device{}());
    std::printf("[ seed     ] CAIRN_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed_));
    rng_.seed(seed_);
    const char* r = std::getenv("CAIRN_CLUSTER_ROUNDS");
    rounds_ = r ? std::atoi(r) : 2;
    const char* soak = std::getenv("CAIRN_CLUSTER_SOAK_SECONDS");
    soak_ = std::chrono::seconds(soak ? std::atoi(soak) : 0);
    const char* n = std::getenv("CAIRN_CLUSTER_NODES");
    size_ = std::clamp(n ? std::atoi(n) : 3, 3, 9);
    dir_ = (fs::path(::testing::TempDir()) / absl::StrCat("cairn-cluster-", ::getpid())).string();
    fs::remove_all(dir_);
    std::vector<std::string> peers;
    for (int i = 0; i < size_; ++i) peers.push_back(absl::StrCat("127.0.0.1:", FreePort()));
    std::string seeds = absl::StrJoin(peers, ",");
    for (int i = 0; i < size_; ++i) {
      nodes_.push_back(std::make_unique<Node>(i, absl::StrCat(dir_, "/cairn-", i), FreePort(), FreePort(), peers[i],
                                              seeds));
    }
  }
  void TearDown() override {
    if (HasFailure()) {
      for (auto& n : nodes_) std::printf("---- log of cairn-%d ----\n%s\n", n->index(), n->Log().c_str());
    }
    nodes_.clear();
    fs::remove_all(dir_);
  }

  v1::ClusterStatusResponse Status(Node& n) {
    auto cluster = v1::Cluster::NewStub(n.channel());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    v1::ClusterStatusResponse r;
    (void)cluster->Status(&ctx, {}, &r);
    return r;
  }

  // The node leading one of the collection's shards, as a live node sees it.
  int LeaderOfAShard() {
    for (int attempt = 0; attempt < 100; ++attempt) {
      for (auto& n : nodes_) {
        if (!n->Running()) continue;
        auto st = Status(*n);
        std::map<uint64_t, int> index_of;
        for (const auto& node : st.nodes()) index_of[node.id()] = std::atoi(node.name().c_str() + 6);
        for (const auto& g : st.groups()) {
          if (g.collection() == kCollection && g.leader_node_id() != 0) return index_of[g.leader_node_id()];
        }
      }
      std::this_thread::sleep_for(50ms);
    }
    return -1;
  }

  // Point `key` with payload {"v": value} through `node`.
  static grpc::Status Put(Node& node, const std::string& key, const std::string& value, float x = 0) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 3s);
    v1::UpsertRequest req;
    req.set_collection(kCollection);
    auto* p = req.add_points();
    p->mutable_id()->set_str(key);
    for (float f : {1.0f, 2.0f, 3.0f, x}) p->add_vector(f);
    (*p->mutable_payload()->mutable_fields())["v"].set_string_value(value);
    v1::UpsertResponse resp;
    return v1::Points::NewStub(node.channel())->Upsert(&ctx, req, &resp);
  }
  // The "v" of point `key` through `node` (sim::kAbsent when there is none).
  static grpc::Status Get(Node& node, const std::string& key, std::string* value) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 3s);
    v1::GetPointsRequest req;
    req.set_collection(kCollection);
    req.add_ids()->set_str(key);
    req.set_with_payload(true);
    v1::GetPointsResponse resp;
    grpc::Status s = v1::Points::NewStub(node.channel())->Get(&ctx, req, &resp);
    if (!s.ok()) return s;
    if (resp.results_size() != 1 || !resp.results(0).found()) {
      *value = std::string(sim::kAbsent);
    } else {
      const auto& fields = resp.results(0).record().payload().fields();
      auto v = fields.find("v");
      *value = v == fields.end() ? "<no v>" : v->second.string_value();
    }
    return s;
  }

  // Reads `key` through `node` into the history (a failed read says nothing).
  void Read(Node& node, uint64_t client, const std::string& key) {
    sim::HistoryOp op;
    op.client = client;
    op.op.key = key;
    op.op.kind = sim::KvOp::Kind::kGet;
    op.call = Now();
    grpc::Status s = Get(node, key, &op.output);
    op.ret = Now();
    if (!s.ok()) return;
    op.completed = true;
    reads_.fetch_add(1);
    std::lock_guard l(mu_);
    history_.push_back(std::move(op));
  }

  // Clients: put unique values and get keys through random live nodes,
  // recording each operation's call and return.
  void RunClients(std::atomic<bool>* stop, int clients) {
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([this, stop, c] {
        std::mt19937_64 rng(seed_ * 31 + static_cast<uint64_t>(c));
        uint64_t n = 0;
        while (!stop->load()) {
          const size_t pick = rng() % nodes_.size();
          if (!up_[pick].load()) continue;
          Node& node = *nodes_[pick];
          const std::string key = absl::StrCat("k", rng() % kKeys);
          const bool put = rng() % 2 == 0;
          sim::HistoryOp op;
          op.client = static_cast<uint64_t>(c);
          op.op.key = key;
          op.call = Now();
          if (put) {
            op.op.kind = sim::KvOp::Kind::kPut;
            op.op.value = absl::StrCat("c", c, "-", n++);
            grpc::Status s = Put(node, key, op.op.value, static_cast<float>(n % 100));
            op.ret = Now();
            // A failed write may still have been applied: it stays open.
            op.completed = s.ok();
            if (s.ok()) {
              op.output = "ok";
              acked_.fetch_add(1);
              std::lock_guard l(mu_);
              last_ack_ = Clock::now();
            }
          } else {
            Read(node, static_cast<uint64_t>(c), key);
            continue;
          }
          std::lock_guard l(mu_);
          history_.push_back(std::move(op));
        }
      });
    }
    for (auto& t : threads) t.join();
  }

  // Event times shared by every client: a counter under a lock gives a total
  // order consistent with real time.
  uint64_t Now() {
    std::lock_guard l(clock_mu_);
    return ++clock_;
  }

  std::mutex clock_mu_;
  uint64_t clock_ = 0;

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  int rounds_ = 2;
  // Once the clients stopped and every node is up and healed: the history
  // is linearizable per key, and every replica of every shard holds the
  // same data (every node is stopped, and each replica's files are opened
  // and checksummed). Prints a line that starts with `report`.
  void CheckHistoryAndReplicas(const std::string& report, bool expect_snapshots, std::vector<int> members = {}) {
    if (members.empty()) {
      for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) members.push_back(i);
    }
    // The history: linearizable per key.
    std::vector<sim::HistoryOp> history;
    {
      std::lock_guard l(mu_);
      history = history_;
    }
    auto lin = sim::CheckKvLinearizable(history);
    double snapshots = 0;
    for (auto& n : nodes_) snapshots += MetricSum(n->host(), n->http_port(), "cairn_raft_snapshots_installed_total{");
    std::printf("[ cluster  ] %s, operations %zu (%llu acknowledged writes, %llu reads), snapshots installed %.0f, "
                "linearizable %s (%llu states searched)\n",
                report.c_str(), history.size(), static_cast<unsigned long long>(acked_.load()),
                static_cast<unsigned long long>(reads_.load()), snapshots,
                lin.gave_up ? "undecided" : lin.ok ? "yes" : "NO", static_cast<unsigned long long>(lin.states_explored));
    if (expect_snapshots) {
      EXPECT_GT(snapshots, 0) << "no node caught up from a snapshot: the test no longer covers them";
    }
    EXPECT_TRUE(lin.ok) << "key " << lin.key << ":\n" << lin.explanation;
    EXPECT_FALSE(lin.gave_up);
    EXPECT_GT(acked_.load(), 50u);

    // Every replica of every shard: the same data. Wait until all applied the
    // same entries, then stop every node and read its files.
    bool settled = false;
    size_t shards = 0;
    for (int attempt = 0; attempt < 600 && !settled; ++attempt) {
      auto st = Status(*nodes_[members[0]]);
      settled = st.groups_size() > 0;
      shards = 0;
      for (const auto& g : st.groups()) {
        shards += g.collection() == kCollection;
        for (const auto& r : g.replicas()) settled = settled && r.reported() && r.applied() == g.commit();
      }
      if (!settled) std::this_thread::sleep_for(50ms);
    }
    ASSERT_TRUE(settled) << "the replicas did not reach their groups' commit index within 30 s";
    std::map<std::string, std::vector<std::pair<int, db::Shard::Checksum>>> sums;
    for (int i : members) EXPECT_EQ(nodes_[i]->Kill(SIGTERM), 0) << nodes_[i]->Log();
    CollectionConfig cfg;
    cfg.dimension = 4;
    const db::ShardOptions so = db::ShardOptionsFor(kCollection, cfg, DatabaseOptions{});
    for (int i : members) {
      auto& n = nodes_[i];
      for (const auto& entry : fs::directory_iterator(n->dir() + "/data/groups")) {
        // A staged snapshot, or the marker naming the replica.
        if (entry.path().filename().string().find('.') != std::string::npos) continue;
        auto shard = db::Shard::Open(entry.path().string(), so);
        ASSERT_TRUE(shard.ok()) << shard.status();
        auto c = (*shard)->DataChecksum();
        ASSERT_TRUE(c.ok()) << c.status();
        sums[entry.path().filename().string()].push_back({n->index(), *c});
      }
    }
    ASSERT_EQ(sums.size(), shards);
    for (const auto& [group, cs] : sums) {
      ASSERT_EQ(cs.size(), 3u) << "group " << group;  // the default replication factor
      // Applied indexes may differ by the leaders' no-op entries of elections
      // during the shutdown (no client writes then); the data may not.
      for (const auto& [node, c] : cs) {
        EXPECT_EQ(c.hash, cs[0].second.hash) << "group " << group << " node " << node;
        EXPECT_EQ(c.points, cs[0].second.points) << "group " << group << " node " << node;
      }
    }
  }

  // Starts every node and waits until each is ready.
  void StartAll() {
    for (auto& n : nodes_) n->Start();
    for (auto& n : nodes_) ASSERT_TRUE(n->WaitReady()) << n->Log();
  }
  // Creates the test's collection (4 dimensions, 2 shards) through `node`.
  void CreateCollection(Node& node) {
    auto collections = v1::Collections::NewStub(node.channel());
    grpc::ClientContext ctx;
    v1::CreateCollectionRequest req;
    req.set_name(kCollection);
    req.mutable_config()->set_dimension(4);
    req.mutable_config()->set_num_shards(2);
    v1::CollectionInfo info;
    grpc::Status s = collections->Create(&ctx, req, &info);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  // Replaces the nodes with as many in network namespaces of their own; false
  // when namespaces cannot be made here (not root).
  bool UseNetworkNamespaces() {
    netns_ = Netns::Create(size_);
    if (!netns_) return false;
    const std::string secret = dir_ + "/cluster-secret";
    fs::create_directories(dir_);
    std::ofstream(secret) << "a secret the nodes of this test share";
    std::vector<std::string> peers;
    for (int i = 0; i < size_; ++i) peers.push_back(absl::StrCat(netns_->Ip(i), ":7602"));
    nodes_.clear();
    for (int i = 0; i < size_; ++i) {
      nodes_.push_back(std::make_unique<Node>(i, absl::StrCat(dir_, "/cairn-", i), 7600, 7601, peers[i],
                                              absl::StrJoin(peers, ","), netns_->Ip(i), netns_->Name(i), secret));
    }
    return true;
  }

  // Whether round `round` runs: the rounds asked for, and then more until
  // the soak time has passed since `start`.
  bool MoreRounds(int round, Clock::time_point start) const {
    return round < rounds_ || Clock::now() - start < soak_;
  }

  int size_ = 3;  // nodes
  std::chrono::seconds soak_{0};
  std::unique_ptr<Netns> netns_;  // destroyed after the nodes
  std::string dir_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::mutex mu_;
  std::vector<sim::HistoryOp> history_;
  Clock::time_point last_ack_;
  std::atomic<uint64_t> acked_{0}, reads_{0};
  // The nodes clients use (all by default; the elastic test starts some later
  // and removes others).
  std::array<std::atomic<bool>, 9> up_{true, true, true, true, true, true, true, true, true};
};

TEST_F(ClusterFaultTest, FaultsLoseNoAcknowledgedWriteAndHistoriesStayLinearizable) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  ASSERT_NO_FATAL_FAILURE(CreateCollection(*nodes_[0]));

  std::atomic<bool> stop{false};
  std::thread clients([&] { RunClients(&stop, 4); });
  std::this_thread::sleep_for(2s);
  double worst_gap = 0;
  int faults = 0, rounds = 0;
  const auto start = Clock::now();
  for (int round = 0; MoreRounds(round, start); ++round, ++rounds) {
    // kill -9 of a shard's leader; how long until writes are acknowledged again.
    const int leader = LeaderOfAShard();
    ASSERT_GE(leader, 0);
    const uint64_t before = acked_.load();
    const auto killed_at = Clock::now();
    nodes_[leader]->Kill(SIGKILL);
    ++faults;
    while (acked_.load() < before + 20 && Clock::now() - killed_at < 30s) std::this_thread::sleep_for(10ms);
    {
      std::lock_guard l(mu_);
      worst_gap = std::max(worst_gap, std::chrono::duration<double>(last_ack_ - killed_at).count());
    }
    std::this_thread::sleep_for(1s);
    nodes_[leader]->Start();
    ASSERT_TRUE(nodes_[leader]->WaitReady()) << nodes_[leader]->Log();
    // A node paused, then resumed.
    const int paused = static_cast<int>(rng_() % nodes_.size());
    nodes_[paused]->Signal(SIGSTOP);
    ++faults;
    std::this_thread::sleep_for(2s);
    nodes_[paused]->Signal(SIGCONT);
    // At once, every key through the node that was paused: it missed the
    // writes of the pause, and must not answer before it has them.
    std::vector<std::thread> readers;
    for (int k = 0; k < kKeys; ++k) {
      readers.emplace_back([this, paused, k] { Read(*nodes_[paused], 100 + static_cast<uint64_t>(k), absl::StrCat("k", k)); });
    }
    for (auto& t : readers) t.join();
    std::this_thread::sleep_for(1s);
    // kill -9 of any node.
    const int victim = static_cast<int>(rng_() % nodes_.size());
    nodes_[victim]->Kill(SIGKILL);
    ++faults;
    std::this_thread::sleep_for(2s);
    nodes_[victim]->Start();
    ASSERT_TRUE(nodes_[victim]->WaitReady()) << nodes_[victim]->Log();
    std::this_thread::sleep_for(1s);
  }
  stop = true;
  clients.join();

  CheckHistoryAndReplicas(absl::StrFormat("%d nodes, rounds %d, faults %d, longest write gap after a leader kill "
                                          "%.2f s",
                                          size_, rounds, faults, worst_gap),
                          /*expect_snapshots=*/true);
}

// Partitions with real packets lost: each node in a network namespace of its
// own, a partition a blackhole route (root only; skipped otherwise). Each
// round isolates a shard's leader from the others, then cuts one direction
// between two nodes, then splits the nodes in two halves, then makes a
// leader's link slow and lossy, while clients write and read through every
// node.
TEST_F(ClusterFaultTest, PartitionsLoseNoAcknowledgedWriteAndHeal) {
  if (!UseNetworkNamespaces()) GTEST_SKIP() << "network namespaces need root (ip netns)";
  ASSERT_NO_FATAL_FAILURE(StartAll());
  ASSERT_NO_FATAL_FAILURE(CreateCollection(*nodes_[0]));
  std::atomic<bool> stop{false};
  std::thread clients([&] { RunClients(&stop, 4); });
  std::this_thread::sleep_for(2s);
  int partitions = 0, degraded = 0;
  uint64_t acked_while_cut = 0;
  auto cut_for = [&](std::chrono::seconds d) {
    ++partitions;
    const uint64_t before = acked_.load();
    std::this_thread::sleep_for(d);
    acked_while_cut += acked_.load() - before;
    netns_->Heal();
    std::this_thread::sleep_for(1s);
  };
  int rounds = 0;
  const auto start = Clock::now();
  for (int round = 0; MoreRounds(round, start); ++round, ++rounds) {
    // The leader of a shard, cut off from every other node: the majority
    // elects another and goes on; the old leader commits nothing alone.
    const int leader = LeaderOfAShard();
    ASSERT_GE(leader, 0);
    for (int other = 0; other < size_; ++other) {
      if (other == leader) continue;
      netns_->Cut(leader, other);
      netns_->Cut(other, leader);
    }
    cut_for(3s);
    // One direction only: a's packets to b are lost, b's to a arrive.
    const int a = static_cast<int>(rng_() % size_);
    const int b = (a + 1 + static_cast<int>(rng_() % (size_ - 1))) % size_;
    netns_->Cut(a, b);
    cut_for(3s);
    // Two halves (with three nodes, a node alone and the other two).
    std::vector<int> order(size_);
    for (int i = 0; i < size_; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng_);
    for (int i = 0; i < size_ / 2; ++i) {
      for (int j = size_ / 2; j < size_; ++j) {
        netns_->Cut(order[i], order[j]);
        netns_->Cut(order[j], order[i]);
      }
    }
    cut_for(3s);
    // A slow, lossy link to a shard's leader: delayed and dropped packets,
    // elections perhaps, and no lost or misordered write.
    const int slow = LeaderOfAShard();
    ASSERT_GE(slow, 0);
    if (netns_->Degrade(slow)) {
      ++degraded;
      cut_for(3s);
    } else {
      netns_->Heal();
    }
  }
  stop = true;
  clients.join();
  EXPECT_GT(acked_while_cut, 0u) << "no write was acknowledged during a partition: the majority must go on";
  CheckHistoryAndReplicas(absl::StrFormat("%d nodes, partition rounds %d, partitions %d (%d of them a slow, lossy "
                                          "link), writes acknowledged while cut %llu",
                                          size_, rounds, partitions, degraded,
                                          static_cast<unsigned long long>(acked_while_cut)),
                          /*expect_snapshots=*/false);
}

// An elastic cluster under load: three nodes grow to five (the node sending a
// move's snapshot killed mid-move), a node stays down past the dead-node
// timeout (its replicas re-created elsewhere) and comes back, the node
// leading most groups is drained and removed, then another, and the three
// left are restarted one by one (each hands its leaderships off first).
// Clients write and read through every live node all along; at the end the
// history is linearizable and every shard's three replicas hold the same data.
TEST_F(ClusterFaultTest, ScaleUpDeadNodeDrainRemoveAndRollingRestartUnderLoad) {
  if (size_ != 3) GTEST_SKIP() << "written for three seeds";
  ::setenv("CAIRN_DEAD_NODE_TIMEOUT", "4s", 1);
  struct Unset {
    ~Unset() { ::unsetenv("CAIRN_DEAD_NODE_TIMEOUT"); }
  } unset;
  // Five nodes whose seeds are the first three (a StatefulSet's first pods).
  std::vector<std::string> peers;
  for (int i = 0; i < 5; ++i) peers.push_back(absl::StrCat("127.0.0.1:", FreePort()));
  const std::string seeds = absl::StrJoin(peers.begin(), peers.begin() + 3, ",");
  nodes_.clear();
  for (int i = 0; i < 5; ++i) {
    nodes_.push_back(std::make_unique<Node>(i, absl::StrCat(dir_, "/cairn-", i), FreePort(), FreePort(), peers[i], seeds));
    up_[i] = i < 3;
  }
  for (int i = 0; i < 3; ++i) nodes_[i]->Start();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(nodes_[i]->WaitReady()) << nodes_[i]->Log();
  ASSERT_NO_FATAL_FAILURE(CreateCollection(*nodes_[0]));
  std::atomic<bool> stop{false};
  std::thread clients([&] { RunClients(&stop, 4); });
  std::this_thread::sleep_for(2s);

  auto index_of = [](const std::string& name) { return std::atoi(name.c_str() + 6); };
  auto status = [&] {
    for (int i = 0; i < 5; ++i) {
      if (up_[i]) {
        auto st = Status(*nodes_[i]);
        if (!st.cluster_id().empty()) return st;
      }
    }
    return v1::ClusterStatusResponse();
  };
  // Every shard at its three replicas, caught up, no operation left, and
  // `more` holds.
  auto await = [&](int seconds, const std::function<bool(const v1::ClusterStatusResponse&)>& more) {
    v1::ClusterStatusResponse st;
    for (int k = 0; k < seconds * 10; ++k) {
      st = status();
      bool ok = st.groups_size() == 3 && st.operations_size() == 0 && more(st);
      for (const auto& g : st.groups()) {
        if (g.collection().empty()) continue;
        ok = ok && g.replicas_size() == 3 && g.leader_node_id() != 0;
        for (const auto& r : g.replicas()) ok = ok && r.reported() && r.lag() == 0;
      }
      if (ok) return true;
      std::this_thread::sleep_for(100ms);
    }
    ADD_FAILURE() << "the cluster did not settle within " << seconds << " s:\n" << st.DebugString();
    return false;
  };
  auto node_state = [&](const v1::ClusterStatusResponse& st, int i) -> const v1::ClusterNode* {
    const v1::ClusterNode* out = nullptr;
    for (const auto& n : st.nodes()) {
      if (index_of(n.name()) == i && (out == nullptr || n.state() != "removed")) out = &n;
    }
    return out;
  };

  // Scale up to five. When the first move starts, the node leading its group
  // (the one sending the snapshot) is killed; the move ends all the same.
  nodes_[3]->Start();
  nodes_[4]->Start();
  ASSERT_TRUE(nodes_[3]->WaitReady()) << nodes_[3]->Log();
  ASSERT_TRUE(nodes_[4]->WaitReady()) << nodes_[4]->Log();
  up_[3] = up_[4] = true;
  int killed_mid_move = -1;
  for (int k = 0; k < 300 && killed_mid_move < 0; ++k) {
    auto st = status();
    for (const auto& o : st.operations()) {
      if (o.kind() != "move") continue;
      for (const auto& g : st.groups()) {
        if (g.group() != o.group() || g.leader_node_id() == 0) continue;
        for (const auto& n : st.nodes()) {
          if (n.id() == g.leader_node_id()) killed_mid_move = index_of(n.name());
        }
      }
    }
    if (killed_mid_move < 0) std::this_thread::sleep_for(20ms);
  }
  ASSERT_GE(killed_mid_move, 0) << "no move started after two nodes joined";
  up_[killed_mid_move] = false;
  nodes_[killed_mid_move]->Kill(SIGKILL);
  std::this_thread::sleep_for(1s);
  nodes_[killed_mid_move]->Start();
  ASSERT_TRUE(nodes_[killed_mid_move]->WaitReady()) << nodes_[killed_mid_move]->Log();
  up_[killed_mid_move] = true;
  ASSERT_TRUE(await(120, [&](const v1::ClusterStatusResponse& st) {
    for (int i = 0; i < 5; ++i) {
      auto* n = node_state(st, i);
      if (n == nullptr || n->state() != "active" || n->replicas() < 1 || n->replicas() > 2) return false;
    }
    return true;
  }));

  // A node down past the dead-node timeout: its replicas are re-created on the
  // other four; back, it is active again and takes its share.
  const int dead = 4;
  up_[dead] = false;
  nodes_[dead]->Kill(SIGKILL);
  ASSERT_TRUE(await(120, [&](const v1::ClusterStatusResponse& st) {
    auto* n = node_state(st, dead);
    return n != nullptr && n->state() == "dead" && n->replicas() == 0;
  }));
  nodes_[dead]->Start();
  ASSERT_TRUE(nodes_[dead]->WaitReady()) << nodes_[dead]->Log();
  up_[dead] = true;
  ASSERT_TRUE(await(120, [&](const v1::ClusterStatusResponse& st) {
    auto* n = node_state(st, dead);
    return n != nullptr && n->state() == "active" && n->replicas() >= 1;
  }));

  // Drain the node leading most groups, remove it, stop it; then another.
  std::vector<int> members = {0, 1, 2, 3, 4};
  for (int drains = 0; drains < 2; ++drains) {
    auto st = status();
    int busiest = -1;
    uint64_t most = 0;
    for (const auto& n : st.nodes()) {
      if (n.state() == "active" && (busiest < 0 || n.leaders() > most)) {
        busiest = index_of(n.name());
        most = n.leaders();
      }
    }
    ASSERT_GE(busiest, 0);
    auto cluster = v1::Cluster::NewStub(nodes_[members[0] == busiest ? members[1] : members[0]]->channel());
    v1::NodeRequest req;
    req.set_node(absl::StrCat("cairn-", busiest));
    {
      grpc::ClientContext ctx;
      v1::ClusterNode out;
      ASSERT_TRUE(cluster->RemoveNode(&ctx, req, &out).error_code() == grpc::StatusCode::FAILED_PRECONDITION)
          << "an active node was removed";
    }
    {
      grpc::ClientContext ctx;
      v1::ClusterNode out;
      grpc::Status s = cluster->DrainNode(&ctx, req, &out);
      ASSERT_TRUE(s.ok()) << s.error_message();
    }
    ASSERT_TRUE(await(120, [&](const v1::ClusterStatusResponse& st) {
      auto* n = node_state(st, busiest);
      return n != nullptr && n->removable() && n->leaders() == 0;
    }));
    {
      grpc::ClientContext ctx;
      v1::ClusterNode out;
      grpc::Status s = cluster->RemoveNode(&ctx, req, &out);
      ASSERT_TRUE(s.ok()) << s.error_message();
      EXPECT_EQ(out.state(), "removed");
    }
    up_[busiest] = false;
    EXPECT_EQ(nodes_[busiest]->Kill(SIGTERM), 0) << nodes_[busiest]->Log();
    members.erase(std::find(members.begin(), members.end(), busiest));
  }
  ASSERT_EQ(members.size(), 3u);
  ASSERT_TRUE(await(60, [](const v1::ClusterStatusResponse&) { return true; }));

  // A rolling restart: each node hands its leaderships off on SIGTERM, so
  // writes barely pause.
  double worst_gap = 0;
  for (int i : members) {
    const uint64_t before = acked_.load();
    const auto stopped_at = Clock::now();
    up_[i] = false;
    int code = -1;
    std::thread stopper([&] { code = nodes_[i]->Kill(SIGTERM); });
    while (acked_.load() < before + 20 && Clock::now() - stopped_at < 30s) std::this_thread::sleep_for(1ms);
    const double gap = std::chrono::duration<double>(Clock::now() - stopped_at).count();
    stopper.join();
    EXPECT_EQ(code, 0) << nodes_[i]->Log();
    EXPECT_NE(nodes_[i]->Log().find("leadership_handed_off"), std::string::npos);
    worst_gap = std::max(worst_gap, gap);
    std::printf("[ restart  ] cairn-%d: 20 writes acknowledged %.3f s after its SIGTERM\n", i, gap);
    nodes_[i]->Start();
    ASSERT_TRUE(nodes_[i]->WaitReady()) << nodes_[i]->Log();
    up_[i] = true;
    ASSERT_TRUE(await(60, [](const v1::ClusterStatusResponse&) { return true; }));
  }
  stop = true;
  clients.join();
  CheckHistoryAndReplicas(absl::StrFormat("scale 3 -> 5 (a move's sender killed mid-move), a node dead past the "
                                          "timeout and back, two drains and removals, a rolling restart (longest "
                                          "time to 20 acknowledged writes after a SIGTERM %.3f s)",
                                          worst_gap),
                          /*expect_snapshots=*/false, members);
}

// Both shards split under load while the node leading one of them is killed
// (-9) at a random moment of the split and restarted: the splits end, every
// shard has its three replicas alike, the history is linearizable.
TEST_F(ClusterFaultTest, ShardsSplitUnderLoadWhileTheSplitLeaderIsKilled) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  ASSERT_NO_FATAL_FAILURE(CreateCollection(*nodes_[0]));
  std::atomic<bool> stop{false};
  std::thread clients([&] { RunClients(&stop, 4); });
  std::this_thread::sleep_for(1500ms);
  const int leader = LeaderOfAShard();
  ASSERT_GE(leader, 0);
  {
    auto cluster = v1::Cluster::NewStub(nodes_[(leader + 1) % size_]->channel());
    grpc::ClientContext ctx;
    v1::SplitShardsRequest req;
    req.set_collection(kCollection);
    v1::SplitShardsResponse resp;
    grpc::Status s = cluster->SplitShards(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.splitting(), 2u);
  }
  const auto kill_after = std::chrono::milliseconds(rng_() % 500);
  std::this_thread::sleep_for(kill_after);
  up_[leader] = false;
  nodes_[leader]->Kill(SIGKILL);
  std::this_thread::sleep_for(1s);
  nodes_[leader]->Start();
  ASSERT_TRUE(nodes_[leader]->WaitReady()) << nodes_[leader]->Log();
  up_[leader] = true;
  bool split = false;
  v1::ClusterStatusResponse st;
  for (int k = 0; k < 1200 && !split; ++k) {
    st = Status(*nodes_[(leader + 1) % size_]);
    size_t shards = 0;
    split = st.operations_size() == 0;
    for (const auto& g : st.groups()) {
      if (g.collection() != kCollection) continue;
      ++shards;
      split = split && g.replicas_size() == 3 && g.leader_node_id() != 0;
      for (const auto& r : g.replicas()) split = split && r.reported() && r.lag() == 0;
    }
    split = split && shards == 4;
    if (!split) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(split) << "the splits did not end within 120 s:\n" << st.DebugString();
  std::this_thread::sleep_for(1s);  // clients go on over the new shard map
  stop = true;
  clients.join();
  CheckHistoryAndReplicas(absl::StrFormat("both shards split under load, the leader of one (cairn-%d) killed (-9) "
                                          "%lld ms after the split started and restarted",
                                          leader, static_cast<long long>(kill_after.count())),
                          /*expect_snapshots=*/false);
}

// Writes that wait (here for a quorum that is paused) run in a lane of their
// own: a read that needs no quorum is answered meanwhile, even with a single
// request thread per lane.
TEST_F(ClusterFaultTest, WritesWaitingForAQuorumDoNotHoldUpReads) {
  for (auto& n : nodes_) n->set_extra_args({"--workers", "1"});
  ASSERT_NO_FATAL_FAILURE(StartAll());
  ASSERT_NO_FATAL_FAILURE(CreateCollection(*nodes_[0]));
  grpc::Status put;
  for (int i = 0; i < 100 && !(put = Put(*nodes_[0], "k", "1")).ok(); ++i) std::this_thread::sleep_for(100ms);
  ASSERT_TRUE(put.ok()) << put.error_message();
  nodes_[1]->Signal(SIGSTOP);
  nodes_[2]->Signal(SIGSTOP);
  std::atomic<int> writes_done{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < 3; ++w) {
    writers.emplace_back([&, w] {
      (void)Put(*nodes_[0], absl::StrCat("w", w), "2");  // no quorum: fails after its deadline
      ++writes_done;
    });
  }
  std::this_thread::sleep_for(500ms);
  ASSERT_EQ(writes_done.load(), 0) << "a write was answered without a quorum";
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 2s);
  v1::GetPointsRequest req;
  req.set_collection(kCollection);
  req.add_ids()->set_str("k");
  req.set_with_payload(true);
  req.set_consistency(v1::READ_CONSISTENCY_LOCAL);
  req.set_max_staleness_ms(60000);
  v1::GetPointsResponse resp;
  grpc::Status s = v1::Points::NewStub(nodes_[0]->channel())->Get(&ctx, req, &resp);
  const int done_at_read = writes_done.load();
  nodes_[1]->Signal(SIGCONT);
  nodes_[2]->Signal(SIGCONT);
  for (auto& t : writers) t.join();
  ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  ASSERT_EQ(resp.results_size(), 1);
  EXPECT_TRUE(resp.results(0).found());
  EXPECT_EQ(resp.results(0).record().payload().fields().at("v").string_value(), "1");
  EXPECT_EQ(done_at_read, 0) << "the read was answered only after the waiting writes";
}

// SIGTERM turns /readyz to 503 at once, before the leaderships move: load
// balancers (a Kubernetes Service) stop sending calls while the node still
// serves them. The other nodes are paused and the Raft clock is slow (200 ms
// ticks: a leader cut off steps down after 2 s at the earliest), so that the
// hand-off cannot end within the second in which /readyz must turn.
TEST_F(ClusterFaultTest, SigtermTurnsReadyzOffBeforeTheLeadershipsMove) {
  for (auto& n : nodes_) n->set_extra_args({"--raft-tick-ms", "200"});
  ASSERT_NO_FATAL_FAILURE(StartAll());
  ASSERT_NO_FATAL_FAILURE(CreateCollection(*nodes_[0]));
  const int leader = LeaderOfAShard();
  ASSERT_GE(leader, 0);
  Node& n = *nodes_[leader];
  ASSERT_EQ(HttpStatus(n.host(), n.http_port(), "/readyz"), 200);
  for (auto& other : nodes_) {
    if (other.get() != &n) other->Signal(SIGSTOP);
  }
  n.Signal(SIGTERM);
  int status = 200;
  const auto deadline = Clock::now() + 1s;
  while (Clock::now() < deadline && (status = HttpStatus(n.host(), n.http_port(), "/readyz")) == 200) {
    std::this_thread::sleep_for(10ms);
  }
  const bool still_running = n.Running();
  for (auto& other : nodes_) other->Signal(SIGCONT);
  EXPECT_EQ(status, 503) << "/readyz still answers 200 a second after SIGTERM";
  EXPECT_TRUE(still_running) << "the node stopped instead of handing off its leaderships first";
  EXPECT_EQ(n.WaitExit(60s), std::optional<int>(0));
  EXPECT_NE(n.Log().find("leadership_handed_off"), std::string::npos);
}

TEST_F(ClusterFaultTest, AWipedNodeJoinsInPlaceOfItsFormerSelfAndAnotherNodesDiskIsRefused) {
  if (size_ != 3) GTEST_SKIP() << "written for three nodes, each holding a replica of every shard";
  ASSERT_NO_FATAL_FAILURE(StartAll());
  const std::string cluster_id = Status(*nodes_[0]).cluster_id();
  ASSERT_FALSE(cluster_id.empty());

  // cairn-1 on cairn-2's disk: refused, exit 1, nothing changed.
  nodes_[2]->Kill(SIGTERM);
  nodes_[1]->Kill(SIGTERM);
  nodes_[1]->Start(nodes_[2]->dir() + "/data", "cairn-1");
  auto code = nodes_[1]->WaitExit(30s);
  ASSERT_TRUE(code.has_value()) << "cairnd did not refuse another node's disk";
  EXPECT_EQ(*code, 1);
  EXPECT_NE(nodes_[1]->Log().find("belongs to node \"cairn-2\""), std::string::npos) << nodes_[1]->Log();
  nodes_[1]->Start();
  ASSERT_TRUE(nodes_[1]->WaitReady()) << nodes_[1]->Log();

  // A collection whose shards have a replica on every node.
  ASSERT_NO_FATAL_FAILURE(CreateCollection(*nodes_[1]));
  for (int k = 0; k < kKeys; ++k) {
    grpc::Status s = Put(*nodes_[0], absl::StrCat("k", k), absl::StrCat("v", k));
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  uint64_t old_id = 0;
  const auto before = Status(*nodes_[0]);
  for (const auto& n : before.nodes()) {
    if (n.name() == "cairn-2") old_id = n.id();
  }
  ASSERT_NE(old_id, 0u);

  // cairn-2's disk is wiped while it is down: it must not bootstrap a second
  // cluster, but join this one with a new id in place of its former self.
  nodes_[2]->Kill(SIGKILL);
  fs::remove_all(nodes_[2]->dir() + "/data");
  const size_t log_before = nodes_[2]->Log().size();
  nodes_[2]->Start();
  ASSERT_TRUE(nodes_[2]->WaitReady()) << nodes_[2]->Log();
  const std::string log = nodes_[2]->Log().substr(log_before);
  EXPECT_NE(log.find(absl::StrCat("joined cluster ", cluster_id, " in place of node ", old_id)), std::string::npos)
      << log;
  EXPECT_EQ(log.find("formed"), std::string::npos) << log;
  // Every group ends on the three live nodes, the old id removed.
  bool moved = false;
  for (int i = 0; i < 600 && !moved; ++i) {
    auto st = Status(*nodes_[0]);
    EXPECT_EQ(st.cluster_id(), cluster_id);
    uint64_t new_id = 0;
    for (const auto& n : st.nodes()) {
      if (n.name() == "cairn-2" && n.state() == "active") new_id = n.id();
      if (n.id() == old_id) moved = n.state() == "removed";
    }
    moved = moved && new_id != 0 && new_id != old_id && st.groups_size() == 3;
    for (const auto& g : st.groups()) {
      bool on_new = false;
      for (const auto& r : g.replicas()) {
        moved = moved && r.node_id() != old_id;
        on_new = on_new || r.node_id() == new_id;
      }
      moved = moved && on_new;
    }
    if (!moved) std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(moved) << "the groups did not move off the wiped node's old id within 30 s";
  // Its data came back: every key reads the same through it.
  for (int k = 0; k < kKeys; ++k) {
    std::string v;
    grpc::Status s = Get(*nodes_[2], absl::StrCat("k", k), &v);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(v, absl::StrCat("v", k));
  }
  // And its replicas count: with cairn-0 down, writes need cairn-2's votes.
  nodes_[0]->Kill(SIGKILL);
  grpc::Status put = grpc::Status::CANCELLED;
  for (int attempt = 0; attempt < 10 && !put.ok(); ++attempt) put = Put(*nodes_[1], "k0", "after");
  ASSERT_TRUE(put.ok()) << put.error_message();
  std::string v;
  ASSERT_TRUE(Get(*nodes_[2], "k0", &v).ok());
  EXPECT_EQ(v, "after");
}

}  // namespace
}  // namespace cairn
