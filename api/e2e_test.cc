// End-to-end: a real cairnd process on a loopback port, driven through the
// generated C++ client.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cairn/v1/collections.grpc.pb.h"
#include "cairn/v1/points.grpc.pb.h"
#include "cairn/v1/search.grpc.pb.h"
#include "cairn/v1/server.grpc.pb.h"
#include "cairn/v1/snapshots.grpc.pb.h"
#include "gtest/gtest.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace cairn::v1 {
namespace {

namespace fs = std::filesystem;

// A cairnd child process. Start() returns once it logs that it is serving.
class Cairnd {
 public:
  explicit Cairnd(std::string data_dir, std::vector<std::string> args = {"--insecure-no-auth"},
                  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials())
      : data_dir_(std::move(data_dir)), args_(std::move(args)), creds_(std::move(creds)) {}
  ~Cairnd() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (reader_.joinable()) reader_.join();
  }

  void Start() {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t parent = getpid();
    pid_ = fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      // The server dies with the test, also when the test crashes or is killed.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      dup2(fds[1], STDERR_FILENO);
      close(fds[0]);
      close(fds[1]);
      std::vector<std::string> all = {CAIRND_PATH, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                                      "--data-dir", data_dir_, "--grace-seconds", "10"};
      all.insert(all.end(), args_.begin(), args_.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(CAIRND_PATH, argv.data());
      std::_Exit(127);
    }
    close(fds[1]);
    // Read the log until "serving" (or the end: it failed to start).
    FILE* log = fdopen(fds[0], "r");
    char line[4096];
    while (fgets(line, sizeof(line), log)) {
      std::string l = line;
      log_ += l;
      if (l.find("\"event\":\"listening\"") != std::string::npos) {
        port_ = std::stoi(l.substr(l.find("\"port\":") + 7));
        http_port_ = std::stoi(l.substr(l.find("\"http_port\":") + 12));
      }
      if (l.find("\"event\":\"serving\"") != std::string::npos) break;
    }
    ASSERT_GT(port_, 0) << "cairnd did not start:\n" << log_;
    // Keep draining the log so the child never blocks on a full pipe.
    reader_ = std::thread([this, log] {
      char buf[4096];
      while (fgets(buf, sizeof(buf), log)) {
        std::lock_guard l(mu_);
        log_ += buf;
      }
      fclose(log);
    });
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), creds_);
  }

  // SIGTERM, then the exit status.
  int Stop() {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    if (reader_.joinable()) reader_.join();
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  std::shared_ptr<grpc::Channel> channel() { return channel_; }
  const std::string& data_dir() const { return data_dir_; }
  int port() const { return port_; }
  int http_port() const { return http_port_; }
  std::string log() {
    std::lock_guard l(mu_);
    return log_;
  }

 private:
  std::string data_dir_;
  std::vector<std::string> args_;
  std::shared_ptr<grpc::ChannelCredentials> creds_;
  pid_t pid_ = -1;
  int port_ = 0;
  int http_port_ = 0;
  std::mutex mu_;
  std::string log_;
  std::thread reader_;
  std::shared_ptr<grpc::Channel> channel_;
};

// GET http://127.0.0.1:port/path: (status, body).
std::pair<int, std::string> HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return {-1, ""};
  }
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  if (resp.size() < 12) return {-1, resp};
  size_t body = resp.find("\r\n\r\n");
  return {std::stoi(resp.substr(9, 3)), body == std::string::npos ? "" : resp.substr(body + 4)};
}

// Runs cairnd with `args` to completion (it must refuse to start).
std::pair<int, std::string> RunCairnd(const std::string& args) {
  // A cairnd that starts after all is stopped (exit 124) instead of hanging the test.
  std::string cmd = "timeout -k 5 30 " + std::string(CAIRND_PATH) + " --http-listen 127.0.0.1:0 " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[1024];
  while (p && fgets(buf, sizeof(buf), p)) out += buf;
  int status = p ? pclose(p) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

class E2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("cairnd-e2e-" + std::to_string(getpid()) + "-" +
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    StartServer();
  }
  void TearDown() override {
    server_.reset();
    fs::remove_all(dir_);
  }
  void StartServer() {
    server_ = std::make_unique<Cairnd>((dir_ / "data").string());
    server_->Start();
    collections_ = Collections::NewStub(server_->channel());
    points_ = Points::NewStub(server_->channel());
    search_ = Search::NewStub(server_->channel());
    info_ = Server::NewStub(server_->channel());
  }

  grpc::Status CreateCollection(const std::string& name, uint32_t dim) {
    grpc::ClientContext ctx;
    CreateCollectionRequest req;
    req.set_name(name);
    req.mutable_config()->set_dimension(dim);
    auto* pi = req.mutable_config()->add_payload_indexes();
    pi->set_field("lang");
    pi->set_type(PAYLOAD_TYPE_KEYWORD);
    CollectionInfo info;
    return collections_->Create(&ctx, req, &info);
  }

  // Points 0..n-1 with vector (i, i, i, i) and payload {"lang": en|de, "i": i}.
  grpc::Status UpsertPoints(const std::string& coll, int from, int to) {
    grpc::ClientContext ctx;
    UpsertRequest req;
    req.set_collection(coll);
    for (int i = from; i < to; ++i) {
      auto* p = req.add_points();
      p->mutable_id()->set_num(i);
      for (int j = 0; j < 4; ++j) p->add_vector(static_cast<float>(i));
      (*p->mutable_payload()->mutable_fields())["lang"].set_string_value(i % 2 ? "de" : "en");
      (*p->mutable_payload()->mutable_fields())["i"].set_number_value(i);
      p->set_text("chunk " + std::to_string(i));
    }
    UpsertResponse resp;
    return points_->Upsert(&ctx, req, &resp);
  }

  uint64_t Count(const std::string& coll) {
    grpc::ClientContext ctx;
    CountRequest req;
    req.set_collection(coll);
    CountResponse resp;
    auto s = points_->Count(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.count();
  }

  fs::path dir_;
  std::unique_ptr<Cairnd> server_;
  std::unique_ptr<Collections::Stub> collections_;
  std::unique_ptr<Points::Stub> points_;
  std::unique_ptr<Search::Stub> search_;
  std::unique_ptr<Server::Stub> info_;
};

TEST_F(E2ETest, HealthIsServingAndInfoAnswers) {
  auto health = grpc::health::v1::Health::NewStub(server_->channel());
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  for (const char* name : {"cairn.v1.Points", "cairn.v1.Search", "cairn.v1.Snapshots"}) {
    grpc::ClientContext sctx;
    req.set_service(name);
    grpc::Status st = health->Check(&sctx, req, &resp);
    ASSERT_TRUE(st.ok()) << name << ": " << st.error_message();
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING) << name;
  }

  grpc::ClientContext ctx2;
  ServerInfo info;
  ASSERT_TRUE(info_->Info(&ctx2, ServerInfoRequest(), &info).ok());
  EXPECT_EQ(info.version(), "0.1.0");
  EXPECT_EQ(info.format_version(), 1u);
  EXPECT_FALSE(info.simd().empty());
  // The server's device is auto (the default): the GPU it uses, or why none.
  EXPECT_TRUE(info.device().rfind("gpu: ", 0) == 0 || info.device().rfind("cpu: no usable GPU (", 0) == 0)
      << info.device();
}

TEST_F(E2ETest, CollectionsLifecycleAndErrors) {
  ASSERT_TRUE(CreateCollection("docs", 4).ok());
  auto again = CreateCollection("docs", 4);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::ALREADY_EXISTS) << again.error_message();
  auto bad_name = CreateCollection("no spaces", 4);
  EXPECT_EQ(bad_name.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  auto bad_dim = CreateCollection("zero", 0);
  EXPECT_EQ(bad_dim.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad_dim.error_message().find("dimension"), std::string::npos) << bad_dim.error_message();

  grpc::ClientContext ctx;
  GetCollectionRequest get;
  get.set_name("docs");
  CollectionInfo info;
  ASSERT_TRUE(collections_->Get(&ctx, get, &info).ok());
  EXPECT_EQ(info.config().dimension(), 4u);
  EXPECT_EQ(info.config().index().type(), INDEX_TYPE_HNSW);
  EXPECT_EQ(info.config().index().hnsw_m(), 32u);
  EXPECT_TRUE(info.config().index().has_hnsw_int8());
  EXPECT_TRUE(info.config().index().hnsw_int8());  // unset means the default, on
  EXPECT_EQ(info.config().index().device(), DEVICE_AUTO);
  EXPECT_EQ(info.config().index().pq_tables(), PQ_TABLES_AUTO);
  {
    grpc::ClientContext pctx;
    CreateCollectionRequest req;
    req.set_name("pq-tables");
    req.mutable_config()->set_dimension(8);
    req.mutable_config()->mutable_index()->set_type(INDEX_TYPE_IVF_PQ);
    req.mutable_config()->mutable_index()->set_pq_tables(PQ_TABLES_ON);
    CollectionInfo made;
    ASSERT_TRUE(collections_->Create(&pctx, req, &made).ok());
    EXPECT_EQ(made.config().index().pq_tables(), PQ_TABLES_ON);
    grpc::ClientContext dctx;
    DeleteCollectionRequest del;
    del.set_name("pq-tables");
    DeleteCollectionResponse dr;
    ASSERT_TRUE(collections_->Delete(&dctx, del, &dr).ok());
  }
  {
    // device gpu: refused by a server without a usable GPU, kept by one with.
    grpc::ClientContext gctx;
    CreateCollectionRequest req;
    req.set_name("on-gpu");
    req.mutable_config()->set_dimension(4);
    req.mutable_config()->mutable_index()->set_type(INDEX_TYPE_IVF_FLAT);
    req.mutable_config()->mutable_index()->set_device(DEVICE_GPU);
    CollectionInfo made;
    grpc::Status st = collections_->Create(&gctx, req, &made);
    if (st.ok()) {
      EXPECT_EQ(made.config().index().device(), DEVICE_GPU);
      grpc::ClientContext dctx;
      DeleteCollectionRequest del;
      del.set_name("on-gpu");
      DeleteCollectionResponse dr;
      ASSERT_TRUE(collections_->Delete(&dctx, del, &dr).ok());
    } else {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
      EXPECT_NE(st.error_message().find("no usable GPU"), std::string::npos) << st.error_message();
    }
  }
  {
    grpc::ClientContext fctx;
    CreateCollectionRequest req;
    req.set_name("floats");
    req.mutable_config()->set_dimension(4);
    req.mutable_config()->mutable_index()->set_hnsw_int8(false);
    CollectionInfo made;
    ASSERT_TRUE(collections_->Create(&fctx, req, &made).ok());
    EXPECT_FALSE(made.config().index().hnsw_int8());
    grpc::ClientContext dctx;
    DeleteCollectionRequest del;
    del.set_name("floats");
    DeleteCollectionResponse dr;
    ASSERT_TRUE(collections_->Delete(&dctx, del, &dr).ok());
  }

  {
    grpc::ClientContext uctx;
    UpdateCollectionRequest up;
    up.set_name("docs");
    up.set_ef_search(256);
    CollectionInfo updated;
    auto s = collections_->Update(&uctx, up, &updated);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(updated.config().index().ef_search(), 256u);
    EXPECT_EQ(updated.config().index().hnsw_m(), 32u);
    grpc::ClientContext bctx;
    up.set_ef_search(0);
    EXPECT_EQ(collections_->Update(&bctx, up, &updated).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }

  grpc::ClientContext ctx2;
  ListCollectionsResponse list;
  ASSERT_TRUE(collections_->List(&ctx2, ListCollectionsRequest(), &list).ok());
  ASSERT_EQ(list.names_size(), 1);
  EXPECT_EQ(list.names(0), "docs");

  grpc::ClientContext ctx3;
  DeleteCollectionRequest del;
  del.set_name("docs");
  DeleteCollectionResponse dr;
  ASSERT_TRUE(collections_->Delete(&ctx3, del, &dr).ok());
  grpc::ClientContext ctx4;
  auto gone = collections_->Get(&ctx4, get, &info);
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext ctx5;
  EXPECT_EQ(collections_->Delete(&ctx5, del, &dr).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(E2ETest, UpsertSearchFilterPayloadDeleteScroll) {
  ASSERT_TRUE(CreateCollection("docs", 4).ok());
  ASSERT_TRUE(UpsertPoints("docs", 0, 100).ok());
  EXPECT_EQ(Count("docs"), 100u);

  // Filtered search: nearest English point to (10.2,...) is 10.
  grpc::ClientContext ctx;
  SearchRequest sreq;
  sreq.set_collection("docs");
  for (int j = 0; j < 4; ++j) sreq.add_vector(11.2f);
  sreq.mutable_params()->set_k(3);
  sreq.mutable_params()->set_with_payload(true);
  auto* cond = sreq.mutable_params()->mutable_filter()->add_must();
  cond->set_key("lang");
  cond->mutable_match()->mutable_value()->set_string_value("en");
  SearchResponse sresp;
  auto s = search_->Search(&ctx, sreq, &sresp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(sresp.hits_size(), 3);
  EXPECT_EQ(sresp.hits(0).id().num(), 12u);
  EXPECT_EQ(sresp.hits(1).id().num(), 10u);
  EXPECT_EQ(sresp.hits(0).text(), "chunk 12");
  EXPECT_EQ(sresp.hits(0).payload().fields().at("lang").string_value(), "en");
  EXPECT_EQ(sresp.hits(0).payload().fields().at("i").number_value(), 12);

  // Merge a payload key, then get it back.
  grpc::ClientContext ctx2;
  SetPayloadRequest sp;
  sp.set_collection("docs");
  sp.add_ids()->set_num(12);
  (*sp.mutable_payload()->mutable_fields())["reviewed"].set_bool_value(true);
  SetPayloadResponse spr;
  ASSERT_TRUE(points_->SetPayload(&ctx2, sp, &spr).ok());
  grpc::ClientContext ctx3;
  GetPointsRequest gr;
  gr.set_collection("docs");
  gr.add_ids()->set_num(12);
  gr.add_ids()->set_str("absent");
  gr.set_with_payload(true);
  gr.set_with_vector(true);
  GetPointsResponse gresp;
  ASSERT_TRUE(points_->Get(&ctx3, gr, &gresp).ok());
  ASSERT_EQ(gresp.results_size(), 2);
  ASSERT_TRUE(gresp.results(0).found());
  EXPECT_FALSE(gresp.results(1).found());
  EXPECT_TRUE(gresp.results(0).record().payload().fields().at("reviewed").bool_value());
  EXPECT_EQ(gresp.results(0).record().payload().fields().at("lang").string_value(), "en");
  EXPECT_EQ(gresp.results(0).record().vector_size(), 4);

  // Delete by filter: every German point.
  grpc::ClientContext ctx4;
  DeletePointsRequest dr;
  dr.set_collection("docs");
  auto* dc = dr.mutable_filter()->add_must();
  dc->set_key("lang");
  dc->mutable_match()->mutable_value()->set_string_value("de");
  DeletePointsResponse dresp;
  ASSERT_TRUE(points_->Delete(&ctx4, dr, &dresp).ok());
  EXPECT_EQ(dresp.deleted(), 50u);
  EXPECT_EQ(Count("docs"), 50u);

  // Scroll pages through the 50 left exactly once.
  std::set<uint64_t> seen;
  std::string cursor;
  int pages = 0;
  do {
    grpc::ClientContext c;
    ScrollRequest sr;
    sr.set_collection("docs");
    sr.set_limit(7);
    sr.set_cursor(cursor);
    ScrollResponse page;
    ASSERT_TRUE(points_->Scroll(&c, sr, &page).ok());
    for (const auto& r : page.points()) EXPECT_TRUE(seen.insert(r.id().num()).second);
    cursor = page.next_cursor();
    ++pages;
  } while (!cursor.empty() && pages < 100);
  EXPECT_EQ(seen.size(), 50u);
  EXPECT_EQ(pages, 8);
}

TEST_F(E2ETest, SearchBatchDeleteByIdsOverwritePayloadWithVector) {
  ASSERT_TRUE(CreateCollection("docs", 4).ok());
  ASSERT_TRUE(UpsertPoints("docs", 0, 50).ok());
  {  // three queries at once, each answered in order, exactly
    grpc::ClientContext ctx;
    SearchBatchRequest req;
    req.set_collection("docs");
    for (float q : {3.0f, 20.0f, 41.0f}) {
      for (int j = 0; j < 4; ++j) req.add_vectors(q);
    }
    req.mutable_params()->set_k(1);
    req.mutable_params()->set_exact(true);
    req.mutable_params()->set_with_vector(true);
    SearchBatchResponse resp;
    auto s = search_->SearchBatch(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(resp.results_size(), 3);
    EXPECT_EQ(resp.results(0).hits(0).id().num(), 3u);
    EXPECT_EQ(resp.results(1).hits(0).id().num(), 20u);
    EXPECT_EQ(resp.results(2).hits(0).id().num(), 41u);
    EXPECT_EQ(resp.results(2).hits(0).score(), 0.0f);
    ASSERT_EQ(resp.results(2).hits(0).vector_size(), 4);
    EXPECT_EQ(resp.results(2).hits(0).vector(0), 41.0f);
  }
  {  // a batch whose length is not a multiple of the dimension
    grpc::ClientContext ctx;
    SearchBatchRequest req;
    req.set_collection("docs");
    for (int j = 0; j < 6; ++j) req.add_vectors(1);
    SearchBatchResponse resp;
    EXPECT_EQ(search_->SearchBatch(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {  // delete by ids: counts only those that existed
    grpc::ClientContext ctx;
    DeletePointsRequest req;
    req.set_collection("docs");
    req.add_ids()->set_num(1);
    req.add_ids()->set_num(2);
    req.add_ids()->set_num(999);
    DeletePointsResponse resp;
    ASSERT_TRUE(points_->Delete(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.deleted(), 2u);
  }
  EXPECT_EQ(Count("docs"), 48u);
  {  // overwrite replaces the payload; the keyword index follows
    grpc::ClientContext ctx;
    SetPayloadRequest req;
    req.set_collection("docs");
    req.add_ids()->set_num(10);
    (*req.mutable_payload()->mutable_fields())["lang"].set_string_value("fr");
    req.set_overwrite(true);
    SetPayloadResponse resp;
    ASSERT_TRUE(points_->SetPayload(&ctx, req, &resp).ok());
    grpc::ClientContext gctx;
    GetPointsRequest g;
    g.set_collection("docs");
    g.add_ids()->set_num(10);
    g.set_with_payload(true);
    GetPointsResponse gr;
    ASSERT_TRUE(points_->Get(&gctx, g, &gr).ok());
    const auto& fields = gr.results(0).record().payload().fields();
    EXPECT_EQ(fields.size(), 1u);
    EXPECT_EQ(fields.at("lang").string_value(), "fr");
    grpc::ClientContext cctx;
    CountRequest c;
    c.set_collection("docs");
    auto* cond = c.mutable_filter()->add_must();
    cond->set_key("lang");
    cond->mutable_match()->mutable_value()->set_string_value("fr");
    CountResponse cr;
    ASSERT_TRUE(points_->Count(&cctx, c, &cr).ok());
    EXPECT_EQ(cr.count(), 1u);
    // A single node is always current: a local read answers the same; a
    // consistency this server does not know is refused.
    c.set_consistency(READ_CONSISTENCY_LOCAL);
    grpc::ClientContext lctx;
    ASSERT_TRUE(points_->Count(&lctx, c, &cr).ok());
    EXPECT_EQ(cr.count(), 1u);
    c.set_consistency(static_cast<ReadConsistency>(7));
    grpc::ClientContext bctx;
    auto bad = points_->Count(&bctx, c, &cr);
    EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(bad.error_message().find("unknown consistency 7"), std::string::npos) << bad.error_message();
    g.set_consistency(static_cast<ReadConsistency>(7));
    grpc::ClientContext bgctx;
    EXPECT_EQ(points_->Get(&bgctx, g, &gr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    ScrollRequest sr;
    sr.set_collection("docs");
    sr.set_consistency(static_cast<ReadConsistency>(7));
    ScrollResponse page;
    grpc::ClientContext bsctx;
    EXPECT_EQ(points_->Scroll(&bsctx, sr, &page).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {  // set payload on a missing id: NOT_FOUND, nothing changes
    grpc::ClientContext ctx;
    SetPayloadRequest req;
    req.set_collection("docs");
    req.add_ids()->set_num(10);
    req.add_ids()->set_num(1);  // deleted above
    (*req.mutable_payload()->mutable_fields())["lang"].set_string_value("xx");
    SetPayloadResponse resp;
    EXPECT_EQ(points_->SetPayload(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST_F(E2ETest, BadRequestsGetClearCodesAndChangeNothing) {
  ASSERT_TRUE(CreateCollection("docs", 4).ok());
  ASSERT_TRUE(UpsertPoints("docs", 0, 10).ok());

  {  // wrong dimension
    grpc::ClientContext ctx;
    UpsertRequest req;
    req.set_collection("docs");
    auto* p = req.add_points();
    p->mutable_id()->set_num(100);
    p->add_vector(1.0f);
    UpsertResponse resp;
    auto s = points_->Upsert(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("dimension"), std::string::npos) << s.error_message();
  }
  {  // NaN, in the second point: the first must not land either
    grpc::ClientContext ctx;
    UpsertRequest req;
    req.set_collection("docs");
    for (int i = 0; i < 2; ++i) {
      auto* p = req.add_points();
      p->mutable_id()->set_num(200 + i);
      for (int j = 0; j < 4; ++j) p->add_vector(i == 1 && j == 2 ? NAN : 1.0f);
    }
    UpsertResponse resp;
    EXPECT_EQ(points_->Upsert(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {  // unknown collection
    grpc::ClientContext ctx;
    SearchRequest req;
    req.set_collection("nope");
    for (int j = 0; j < 4; ++j) req.add_vector(1);
    SearchResponse resp;
    EXPECT_EQ(search_->Search(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {  // malformed filter: a range with no bounds, named in the message
    grpc::ClientContext ctx;
    CountRequest req;
    req.set_collection("docs");
    auto* c = req.mutable_filter()->add_must();
    c->set_key("i");
    c->mutable_range();
    CountResponse resp;
    auto s = points_->Count(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("filter.must[0]"), std::string::npos) << s.error_message();
  }
  {  // k out of range
    grpc::ClientContext ctx;
    SearchRequest req;
    req.set_collection("docs");
    for (int j = 0; j < 4; ++j) req.add_vector(1);
    req.mutable_params()->set_k(100000000);
    SearchResponse resp;
    auto s = search_->Search(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("got 100000000"), std::string::npos) << s.error_message();
  }
  {  // k and nprobe beyond int: the messages name what was asked
    grpc::ClientContext ctx;
    SearchRequest req;
    req.set_collection("docs");
    for (int j = 0; j < 4; ++j) req.add_vector(1);
    req.mutable_params()->set_k(4294967295u);
    SearchResponse resp;
    auto s = search_->Search(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("got 4294967295"), std::string::npos) << s.error_message();
    grpc::ClientContext ctx2;
    req.mutable_params()->set_k(10);
    req.mutable_params()->set_nprobe(4294967295u);
    s = search_->Search(&ctx2, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("nprobe must be 0..1048576"), std::string::npos) << s.error_message();
  }
  {  // an id that is not set
    grpc::ClientContext ctx;
    GetPointsRequest req;
    req.set_collection("docs");
    req.add_ids();
    GetPointsResponse resp;
    auto s = points_->Get(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("ids[0]"), std::string::npos) << s.error_message();
  }
  {  // a deadline that has already passed
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() - std::chrono::seconds(1));
    SearchRequest req;
    req.set_collection("docs");
    for (int j = 0; j < 4; ++j) req.add_vector(1);
    SearchResponse resp;
    EXPECT_EQ(search_->Search(&ctx, req, &resp).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  EXPECT_EQ(Count("docs"), 10u);
}

TEST_F(E2ETest, StreamingUpsertAndRestartKeepsData) {
  ASSERT_TRUE(CreateCollection("docs", 4).ok());
  {
    grpc::ClientContext ctx;
    UpsertResponse resp;
    auto writer = points_->UpsertStream(&ctx, &resp);
    for (int b = 0; b < 20; ++b) {
      UpsertRequest req;
      req.set_collection("docs");
      for (int i = 0; i < 50; ++i) {
        auto* p = req.add_points();
        p->mutable_id()->set_str("doc-" + std::to_string(b) + "-" + std::to_string(i));
        for (int j = 0; j < 4; ++j) p->add_vector(static_cast<float>(b * 50 + i));
      }
      ASSERT_TRUE(writer->Write(req));
    }
    writer->WritesDone();
    auto s = writer->Finish();
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.points(), 1000u);
  }
  EXPECT_EQ(Count("docs"), 1000u);
  {  // a bad batch ends the stream with its error; earlier batches stay
    grpc::ClientContext ctx;
    UpsertResponse resp;
    auto writer = points_->UpsertStream(&ctx, &resp);
    UpsertRequest good, bad;
    good.set_collection("docs");
    auto* p = good.add_points();
    p->mutable_id()->set_str("extra");
    for (int j = 0; j < 4; ++j) p->add_vector(0.5f);
    bad.set_collection("docs");
    bad.add_points()->mutable_id()->set_str("short-vector");
    writer->Write(good);
    writer->Write(bad);
    writer->WritesDone();
    auto s = writer->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("message 1 (counting from 0; applied before it: 1 message, 1 point): "),
              std::string::npos)
        << s.error_message();
  }
  EXPECT_EQ(Count("docs"), 1001u);

  EXPECT_EQ(server_->Stop(), 0) << server_->log();
  EXPECT_NE(server_->log().find("\"event\":\"stopped\""), std::string::npos);
  StartServer();
  EXPECT_EQ(Count("docs"), 1001u);
  grpc::ClientContext ctx;
  SearchRequest req;
  req.set_collection("docs");
  for (int j = 0; j < 4; ++j) req.add_vector(777.0f);
  req.mutable_params()->set_k(1);
  SearchResponse resp;
  ASSERT_TRUE(search_->Search(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.hits_size(), 1);
  EXPECT_EQ(resp.hits(0).id().str(), "doc-15-27");
}

// SIGTERM while a streaming upsert is in flight: the server stops taking new
// calls but lets this one finish within the grace period, then exits 0, and
// everything the stream sent is there after a restart.
TEST_F(E2ETest, SigtermDrainsCallsInFlight) {
  ASSERT_TRUE(CreateCollection("docs", 4).ok());
  grpc::ClientContext ctx;
  UpsertResponse resp;
  auto writer = points_->UpsertStream(&ctx, &resp);
  auto batch = [](int b) {
    UpsertRequest req;
    req.set_collection("docs");
    for (int i = 0; i < 100; ++i) {
      auto* p = req.add_points();
      p->mutable_id()->set_num(b * 100 + i);
      for (int j = 0; j < 4; ++j) p->add_vector(static_cast<float>(b + i));
    }
    return req;
  };
  ASSERT_TRUE(writer->Write(batch(0)));
  // The call must be in flight on the server before SIGTERM (a call that
  // arrives after it is refused, as it should be): wait until the first
  // batch is applied, as /metrics reports.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (HttpGet(server_->http_port(), "/metrics").second.find("cairn_points_upserted_total 100\n") ==
         std::string::npos) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the first batch never arrived";
  }
  std::thread stopper([&] { EXPECT_EQ(server_->Stop(), 0) << server_->log(); });
  // Keep writing while the server drains.
  for (int b = 1; b < 20; ++b) ASSERT_TRUE(writer->Write(batch(b))) << "batch " << b;
  writer->WritesDone();
  auto s = writer->Finish();
  stopper.join();
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << server_->log();
  EXPECT_EQ(resp.points(), 2000u);
  EXPECT_NE(server_->log().find("\"event\":\"draining\""), std::string::npos);
  StartServer();
  EXPECT_EQ(Count("docs"), 2000u);
}

TEST_F(E2ETest, MetricsHealthAndReadinessOverHttp) {
  ASSERT_TRUE(CreateCollection("docs", 4).ok());
  ASSERT_TRUE(UpsertPoints("docs", 0, 10).ok());
  ASSERT_EQ(UpsertPoints("docs", 0, 1).error_code(), grpc::StatusCode::OK);
  grpc::ClientContext ctx;
  GetCollectionRequest get;
  get.set_name("absent");
  CollectionInfo info;
  ASSERT_EQ(collections_->Get(&ctx, get, &info).error_code(), grpc::StatusCode::NOT_FOUND);

  auto [code, body] = HttpGet(server_->http_port(), "/metrics");
  ASSERT_EQ(code, 200) << body;
  EXPECT_NE(body.find("cairn_requests_total{method=\"Points/Upsert\",code=\"OK\"} 2"), std::string::npos) << body;
  EXPECT_NE(body.find("cairn_requests_total{method=\"Collections/Get\",code=\"NOT_FOUND\"} 1"), std::string::npos)
      << body;
  EXPECT_NE(body.find("cairn_request_duration_seconds_count{method=\"Points/Upsert\"} 2"), std::string::npos);
  EXPECT_NE(body.find("cairn_collection_points{collection=\"docs\"} 10"), std::string::npos) << body;
  EXPECT_NE(body.find("cairn_points_upserted_total 11"), std::string::npos) << body;
  EXPECT_NE(body.find("cairn_build_info{"), std::string::npos);
  EXPECT_NE(body.find("cairn_collection_storage_memory_bytes{collection=\"docs\"} "), std::string::npos);
  EXPECT_EQ(body.find("cairn_collection_storage_memory_bytes{collection=\"docs\"} 0\n"), std::string::npos);
  EXPECT_NE(body.find("cairn_ready 1"), std::string::npos);
  // No GPU here (or one that these small collections never reach: segments
  // under 4096 points stay on the CPU).
  EXPECT_TRUE(body.find("\ncairn_gpu_available 0\n") != std::string::npos ||
              body.find("\ncairn_gpu_available 1\n") != std::string::npos)
      << body;
  EXPECT_NE(body.find("\ncairn_gpu_memory_bytes 0\n"), std::string::npos) << body;
  EXPECT_NE(body.find("\ncairn_gpu_segment_searches_total 0\n"), std::string::npos) << body;
  EXPECT_NE(body.find("\ncairn_gpu_search_fallbacks_total 0\n"), std::string::npos) << body;
  EXPECT_NE(body.find("\ncairn_collection_gpu_segments{collection=\"docs\"} 0\n"), std::string::npos) << body;
  EXPECT_EQ(HttpGet(server_->http_port(), "/healthz").first, 200);
  EXPECT_EQ(HttpGet(server_->http_port(), "/readyz").first, 200);
  EXPECT_EQ(HttpGet(server_->http_port(), "/nope").first, 404);
}

TEST_F(E2ETest, SnapshotCreateListDownloadRestore) {
  ASSERT_TRUE(CreateCollection("docs", 4).ok());
  ASSERT_TRUE(UpsertPoints("docs", 0, 300).ok());
  auto snaps = Snapshots::NewStub(server_->channel());
  SnapshotInfo created;
  {
    grpc::ClientContext ctx;
    CreateSnapshotRequest req;
    req.set_collection("docs");
    auto s = snaps->Create(&ctx, req, &created);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(created.collection(), "docs");
    EXPECT_GT(created.size_bytes(), 0u);
  }
  ASSERT_TRUE(UpsertPoints("docs", 300, 310).ok());  // after the snapshot
  {
    grpc::ClientContext ctx;
    ListSnapshotsResponse list;
    ASSERT_TRUE(snaps->List(&ctx, ListSnapshotsRequest(), &list).ok());
    ASSERT_EQ(list.snapshots_size(), 1);
    EXPECT_EQ(list.snapshots(0).name(), created.name());
  }
  // Download: a tar archive that is itself a data directory.
  const fs::path tar_path = dir_ / "snap.tar";
  {
    grpc::ClientContext ctx;
    DownloadSnapshotRequest req;
    req.set_name(created.name());
    auto reader = snaps->Download(&ctx, req);
    SnapshotChunk chunk;
    std::ofstream out(tar_path, std::ios::binary);
    uint64_t offset = 0;
    while (reader->Read(&chunk)) {
      ASSERT_EQ(chunk.offset(), offset);
      out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
      offset += chunk.data().size();
    }
    auto s = reader->Finish();
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(offset % 512, 0u);
  }
  const fs::path extracted = dir_ / "extracted";
  fs::create_directories(extracted);
  ASSERT_EQ(std::system(("tar -xf " + tar_path.string() + " -C " + extracted.string()).c_str()), 0);
  EXPECT_TRUE(fs::exists(extracted / "CAIRN"));
  EXPECT_TRUE(fs::exists(extracted / "collections" / "docs" / "collection.json"));
  {
    Cairnd other(extracted.string());
    other.Start();
    grpc::ClientContext ctx;
    CountRequest req;
    req.set_collection("docs");
    CountResponse resp;
    ASSERT_TRUE(Points::NewStub(other.channel())->Count(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.count(), 300u);
  }
  // Restore under a new name; path-like names are refused.
  {
    grpc::ClientContext ctx;
    RestoreSnapshotRequest req;
    req.set_name(created.name());
    req.set_collection("docs_restored");
    RestoreSnapshotResponse resp;
    auto s = snaps->Restore(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(Count("docs_restored"), 300u);
  EXPECT_EQ(Count("docs"), 310u);
  for (const std::string bad : {"../data", "/etc", "a/b", ".."}) {
    grpc::ClientContext ctx;
    RestoreSnapshotRequest req;
    req.set_name(bad);
    req.set_collection("x");
    RestoreSnapshotResponse resp;
    EXPECT_EQ(snaps->Restore(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
  }
  grpc::ClientContext ctx;
  RestoreSnapshotRequest req;
  req.set_name("docs-19700101T000000Z-9");
  req.set_collection("x");
  RestoreSnapshotResponse resp;
  EXPECT_EQ(snaps->Restore(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);

  // Delete frees the snapshot's files; the collection restored from it stays.
  auto remove = [&](const std::string& name) {
    grpc::ClientContext dctx;
    DeleteSnapshotRequest dreq;
    dreq.set_name(name);
    DeleteSnapshotResponse dresp;
    return snaps->Delete(&dctx, dreq, &dresp).error_code();
  };
  for (const std::string bad : {"../data", "/etc", "a/b", "..", ""}) {
    EXPECT_EQ(remove(bad), grpc::StatusCode::INVALID_ARGUMENT) << bad;
  }
  EXPECT_EQ(remove("docs-19700101T000000Z-9"), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(remove(created.name()), grpc::StatusCode::OK);
  EXPECT_EQ(remove(created.name()), grpc::StatusCode::NOT_FOUND);
  {
    grpc::ClientContext lctx;
    ListSnapshotsResponse list;
    ASSERT_TRUE(snaps->List(&lctx, ListSnapshotsRequest(), &list).ok());
    EXPECT_EQ(list.snapshots_size(), 0);
  }
  size_t left = 0;
  for (const auto& e : std::filesystem::directory_iterator(server_->data_dir() + "/snapshots")) {
    ++left;
    ADD_FAILURE() << "left in the snapshot directory: " << e.path();
  }
  EXPECT_EQ(left, 0u);
  EXPECT_EQ(Count("docs_restored"), 300u);
}

// Ids from 2^53 in has_id: a JSON number (a double in google.protobuf.Value)
// is refused, not rounded to some other id; {"num": "N"} names them exactly.
TEST_F(E2ETest, HasIdFromTwoTo53NeedsTheIdObject) {
  ASSERT_TRUE(CreateCollection("big_ids", 4).ok());
  const uint64_t big = (uint64_t{1} << 53) + 1;
  {
    grpc::ClientContext ctx;
    UpsertRequest req;
    req.set_collection("big_ids");
    for (uint64_t id : {big - 2, big, ~uint64_t{0}}) {
      auto* p = req.add_points();
      p->mutable_id()->set_num(id);
      for (int j = 0; j < 4; ++j) p->add_vector(1.0f);
    }
    UpsertResponse resp;
    ASSERT_TRUE(points_->Upsert(&ctx, req, &resp).ok());
  }
  auto count = [&](const std::function<void(google::protobuf::ListValue*)>& ids, uint64_t* n) {
    grpc::ClientContext ctx;
    CountRequest req;
    req.set_collection("big_ids");
    ids(req.mutable_filter()->add_must()->mutable_has_id());
    CountResponse resp;
    auto s = points_->Count(&ctx, req, &resp);
    *n = resp.count();
    return s;
  };
  uint64_t n = 0;
  auto s = count([&](google::protobuf::ListValue* l) { l->add_values()->set_number_value(static_cast<double>(big)); },
                 &n);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("filter.must[0].has_id[0]"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("{\"num\": \"N\"}"), std::string::npos) << s.error_message();
  for (uint64_t id : {big, ~uint64_t{0}}) {
    s = count(
        [&](google::protobuf::ListValue* l) {
          (*l->add_values()->mutable_struct_value()->mutable_fields())["num"].set_string_value(std::to_string(id));
        },
        &n);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(n, 1u) << "id " << id;
  }
  // {"num": N} with N a JSON number is the same double: refused from 2^53.
  s = count(
      [&](google::protobuf::ListValue* l) {
        (*l->add_values()->mutable_struct_value()->mutable_fields())["num"].set_number_value(static_cast<double>(big));
      },
      &n);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "{\"num\": 2^53 + 1} as a number";
  // Below 2^53 a number is exact, round ones too (1e15 prints as "1e+15").
  for (uint64_t id : {big - 2, uint64_t{1000000000000000}}) {
    if (id != big - 2) {
      grpc::ClientContext ctx;
      UpsertRequest req;
      req.set_collection("big_ids");
      auto* p = req.add_points();
      p->mutable_id()->set_num(id);
      for (int j = 0; j < 4; ++j) p->add_vector(1.0f);
      UpsertResponse resp;
      ASSERT_TRUE(points_->Upsert(&ctx, req, &resp).ok());
    }
    s = count([&](google::protobuf::ListValue* l) { l->add_values()->set_number_value(static_cast<double>(id)); }, &n);
    ASSERT_TRUE(s.ok()) << id << ": " << s.error_message();
    EXPECT_EQ(n, 1u) << id;
    s = count(
        [&](google::protobuf::ListValue* l) {
          (*l->add_values()->mutable_struct_value()->mutable_fields())["num"].set_number_value(static_cast<double>(id));
        },
        &n);
    ASSERT_TRUE(s.ok()) << id << ": " << s.error_message();
    EXPECT_EQ(n, 1u) << id;
  }
}

TEST_F(E2ETest, SecondServerOnTheSameDataDirRefusesToStart) {
  auto [code, out] = RunCairnd("--insecure-no-auth --listen 127.0.0.1:0 --data-dir " + (dir_ / "data").string());
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("in use by another process"), std::string::npos) << out;
  EXPECT_EQ(out.find("\"listening\""), std::string::npos) << "it took its ports first: " << out;
}

TEST_F(E2ETest, SecondServerOnTheSamePortRefusesToStart) {
  const std::string listen = "127.0.0.1:" + std::to_string(server_->port());
  auto [code, out] = RunCairnd("--insecure-no-auth --listen " + listen + " --data-dir " + (dir_ / "other").string());
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("cannot listen on " + listen), std::string::npos) << out;
}

TEST_F(E2ETest, RefusesToStartWithoutKeysOrWithoutAuthOffLoopback) {
  auto data = (dir_ / "other").string();
  auto [code, out] = RunCairnd("--listen 127.0.0.1:0 --data-dir " + data);
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("no API keys configured"), std::string::npos) << out;
  std::tie(code, out) = RunCairnd("--insecure-no-auth --listen 0.0.0.0:0 --data-dir " + data);
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("only for loopback"), std::string::npos) << out;
  std::tie(code, out) = RunCairnd("--workers -3 --insecure-no-auth");
  EXPECT_EQ(code, 2) << out;
  // A port past 65535 was taken modulo 65536 (176010 listened on 44938).
  std::tie(code, out) = RunCairnd("--insecure-no-auth --listen 127.0.0.1:176010 --data-dir " + data);
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("port of 0..65535"), std::string::npos) << out;
  std::tie(code, out) = RunCairnd("--insecure-no-auth --seeds a:1 --data-dir " + data);
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("need --cluster"), std::string::npos) << out;
  // A cluster node whose peer port is reachable from elsewhere needs a secret.
  std::tie(code, out) = RunCairnd("--insecure-no-auth --cluster --node-name n0 --peer-listen 0.0.0.0:0 "
                                  "--seeds 127.0.0.1:1 --data-dir " + data);
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("--cluster-secret-file"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(data)) << "a refused start created the data directory";
}

// Writes `text` to `path`.
void WriteFile(const fs::path& path, const std::string& text) {
  FILE* f = fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs(text.c_str(), f);
  fclose(f);
}

TEST_F(E2ETest, ConfigFileIsReadAndFlagsWin) {
  WriteFile(dir_ / "cairnd.json", R"({"insecure_no_auth": true, "workers": 2, "data_dir": "/nonexistent/x"})");
  // --data-dir (a flag) wins over the file's data_dir; the file turns auth off.
  Cairnd configured((dir_ / "cfg-data").string(), {"--config", (dir_ / "cairnd.json").string()});
  configured.Start();
  EXPECT_NE(configured.log().find("AUTHENTICATION IS OFF"), std::string::npos) << configured.log();
  EXPECT_TRUE(fs::exists(dir_ / "cfg-data" / "CAIRN"));
  WriteFile(dir_ / "typo.json", R"({"insecure_no_auht": true})");
  auto [code, out] = RunCairnd("--config " + (dir_ / "typo.json").string());
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("unknown key \"insecure_no_auht\""), std::string::npos) << out;
}

class AuthTest : public E2ETest {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("cairnd-auth-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    WriteFile(dir_ / "keys", "# role key\nread   read-key-0123456789\nwrite  write-key-0123456789\n"
                             "admin  admin-key-0123456789\n");
    server_ = std::make_unique<Cairnd>((dir_ / "data").string(),
                                       std::vector<std::string>{"--api-keys-file", (dir_ / "keys").string()});
    server_->Start();
    collections_ = Collections::NewStub(server_->channel());
    points_ = Points::NewStub(server_->channel());
    search_ = Search::NewStub(server_->channel());
  }
  grpc::Status CreateAs(const std::string& key) {
    grpc::ClientContext ctx;
    if (!key.empty()) ctx.AddMetadata("authorization", "Bearer " + key);
    CreateCollectionRequest req;
    req.set_name("c");
    req.mutable_config()->set_dimension(2);
    CollectionInfo info;
    return collections_->Create(&ctx, req, &info);
  }
  grpc::Status UpsertAs(const std::string& key) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + key);
    UpsertRequest req;
    req.set_collection("c");
    auto* p = req.add_points();
    p->mutable_id()->set_num(1);
    p->add_vector(1);
    p->add_vector(2);
    UpsertResponse resp;
    return points_->Upsert(&ctx, req, &resp);
  }
  grpc::Status SearchAs(const std::string& key, bool x_api_key = false) {
    grpc::ClientContext ctx;
    if (x_api_key) ctx.AddMetadata("x-api-key", key);
    else ctx.AddMetadata("authorization", "Bearer " + key);
    SearchRequest req;
    req.set_collection("c");
    req.add_vector(1);
    req.add_vector(2);
    SearchResponse resp;
    return search_->Search(&ctx, req, &resp);
  }
};

TEST_F(AuthTest, RolesGateEachCall) {
  EXPECT_EQ(CreateAs("").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(CreateAs("not-a-key-at-all-000").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  auto denied = CreateAs("write-key-0123456789");
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(denied.error_message().find("admin"), std::string::npos) << denied.error_message();
  EXPECT_EQ(CreateAs("read-key-0123456789").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(CreateAs("admin-key-0123456789").ok());

  EXPECT_EQ(UpsertAs("read-key-0123456789").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(UpsertAs("write-key-0123456789").ok());
  EXPECT_TRUE(UpsertAs("admin-key-0123456789").ok());
  EXPECT_TRUE(SearchAs("read-key-0123456789").ok());
  EXPECT_TRUE(SearchAs("read-key-0123456789", /*x_api_key=*/true).ok());
  EXPECT_EQ(SearchAs("read-key-012345678").error_code(), grpc::StatusCode::UNAUTHENTICATED);

  // The streaming upsert checks the key too.
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer read-key-0123456789");
  UpsertResponse resp;
  auto writer = points_->UpsertStream(&ctx, &resp);
  writer->WritesDone();
  EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Snapshots are admin-only.
  grpc::ClientContext sctx;
  sctx.AddMetadata("authorization", "Bearer write-key-0123456789");
  ListSnapshotsResponse list;
  EXPECT_EQ(Snapshots::NewStub(server_->channel())->List(&sctx, ListSnapshotsRequest(), &list).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // Keys never reach the log.
  EXPECT_EQ(server_->log().find("key-0123456789"), std::string::npos) << server_->log();
}

// TLS and mTLS with certificates made for the test by openssl.
class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("cairnd-tls-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const std::string d = dir_.string();
    const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    std::string script =
        "set -e; cd " + d + ";"
        "openssl req -x509 " + key + " -keyout ca.key -out ca.crt -days 2 -subj /CN=cairn-test-ca;"
        "openssl req " + key + " -keyout server.key -out server.csr -subj /CN=localhost;"
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > san.cnf;"
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt"
        " -days 2 -extfile san.cnf;"
        "openssl req " + key + " -keyout client.key -out client.csr -subj /CN=cairn-test-client;"
        "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2;"
        "openssl req -x509 " + key + " -keyout rogue.key -out rogue.crt -days 2 -subj /CN=rogue";
    ASSERT_EQ(std::system(("(" + script + ") >/dev/null 2>&1").c_str()), 0) << "openssl failed";
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Read(const std::string& name) {
    std::ifstream f(dir_ / name);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  bool InfoOk(std::shared_ptr<grpc::Channel> ch) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    ServerInfo info;
    return Server::NewStub(ch)->Info(&ctx, ServerInfoRequest(), &info).ok();
  }
  fs::path dir_;
};

TEST_F(TlsTest, TlsServesTrustingClientsOnly) {
  grpc::SslCredentialsOptions trust;
  trust.pem_root_certs = Read("ca.crt");
  Cairnd server((dir_ / "data").string(),
                {"--insecure-no-auth", "--tls-cert", (dir_ / "server.crt").string(), "--tls-key",
                 (dir_ / "server.key").string()},
                grpc::SslCredentials(trust));
  server.Start();
  EXPECT_TRUE(InfoOk(server.channel()));
  auto plain = grpc::CreateChannel("127.0.0.1:" + std::to_string(server.port()), grpc::InsecureChannelCredentials());
  EXPECT_FALSE(InfoOk(plain)) << "a plaintext client got through a TLS port";
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  grpc::SslCredentialsOptions with_cert;
  with_cert.pem_root_certs = Read("ca.crt");
  with_cert.pem_private_key = Read("client.key");
  with_cert.pem_cert_chain = Read("client.crt");
  Cairnd server((dir_ / "data").string(),
                {"--insecure-no-auth", "--tls-cert", (dir_ / "server.crt").string(), "--tls-key",
                 (dir_ / "server.key").string(), "--tls-client-ca", (dir_ / "ca.crt").string()},
                grpc::SslCredentials(with_cert));
  server.Start();
  EXPECT_TRUE(InfoOk(server.channel()));
  const std::string target = "127.0.0.1:" + std::to_string(server.port());
  grpc::SslCredentialsOptions no_cert;
  no_cert.pem_root_certs = Read("ca.crt");
  EXPECT_FALSE(InfoOk(grpc::CreateChannel(target, grpc::SslCredentials(no_cert))));
  grpc::SslCredentialsOptions rogue;
  rogue.pem_root_certs = Read("ca.crt");
  rogue.pem_private_key = Read("rogue.key");
  rogue.pem_cert_chain = Read("rogue.crt");
  EXPECT_FALSE(InfoOk(grpc::CreateChannel(target, grpc::SslCredentials(rogue))));
}

}  // namespace
}  // namespace cairn::v1
