// Tests for Database (catalog, data directory checks, reopen) and for the
// point operations of a Collection, including that bad input changes nothing.
#include "cairn/database.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "db/test_util.h"
#include "index/gpu/gpu.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/file_util.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing_util::Clustered;
using testing_util::Config;
using testing_util::Contents;
using testing_util::CountOf;
using testing_util::ParseFilter;
using testing_util::Pt;
using testing_util::DbTest;
using testing_util::Row;
using testing_util::TestOptions;
using testing_util::TestSeed;

std::vector<float> Vec(uint32_t dim, float v) { return std::vector<float>(dim, v); }

// ---- catalog ----------------------------------------------------------------

class DatabaseTest : public DbTest {};

TEST_F(DatabaseTest, CreateListDescribeGetDrop) {
  OpenDb();
  EXPECT_EQ(db_->dir(), dir_);
  EXPECT_TRUE(db_->ListCollections().empty());
  auto b = Create("beta", Config(4));
  auto a = Create("alpha", Config(8, Metric::kCosine, IndexType::kFlat, 2));
  ASSERT_TRUE(a && b);
  EXPECT_EQ(db_->ListCollections(), (std::vector<std::string>{"alpha", "beta"}));
  EXPECT_EQ(a->name(), "alpha");
  EXPECT_EQ(a->config().dimension, 8u);

  auto info = db_->DescribeCollection("alpha");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->name, "alpha");
  EXPECT_EQ(info->config.dimension, 8u);
  EXPECT_EQ(info->config.metric, Metric::kCosine);
  EXPECT_EQ(info->config.index.type, IndexType::kFlat);
  EXPECT_EQ(info->config.num_shards, 2u);
  EXPECT_EQ(info->points, 0u);
  EXPECT_EQ(info->sealed_segments, 0u);

  ASSERT_TRUE(a->Upsert({Pt(1, Vec(8, 1)), Pt(2, Vec(8, 2))}).ok());
  info = db_->DescribeCollection("alpha");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->points, 2u);

  auto again = db_->GetCollection("alpha");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->get(), a.get());

  ASSERT_TRUE(db_->DropCollection("alpha").ok());
  EXPECT_EQ(db_->ListCollections(), (std::vector<std::string>{"beta"}));
  EXPECT_EQ(db_->GetCollection("alpha").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(db_->DescribeCollection("alpha").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(db_->DropCollection("alpha").code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(fs::path(dir_) / "collections" / "alpha"));
  // A handle to a dropped collection refuses calls.
  EXPECT_EQ(a->Count().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a->Upsert({Pt(3, Vec(8, 3))}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a->Info().status().code(), absl::StatusCode::kFailedPrecondition);

  // The name can be used again, and starts empty.
  auto fresh = Create("alpha", Config(8));
  ASSERT_NE(fresh, nullptr);
  EXPECT_EQ(CountOf(*fresh), 0u);
}

TEST_F(DatabaseTest, CreateExistingNameIsAlreadyExistsAndChangesNothing) {
  OpenDb();
  auto c = Create("docs", Config(4));
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Upsert({Pt(1, Vec(4, 1))}).ok());
  auto dup = db_->CreateCollection("docs", Config(16));
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists);
  auto info = db_->DescribeCollection("docs");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->config.dimension, 4u);
  EXPECT_EQ(info->points, 1u);
}

TEST_F(DatabaseTest, BadNamesAreInvalidArgument) {
  OpenDb();
  for (const std::string& name :
       {std::string(""), std::string("-a"), std::string("_a"), std::string("a b"),
        std::string("a/b"), std::string(".."), std::string(".hidden"), std::string("a.b"),
        std::string(65, 'x'), std::string("caf\xc3\xa9"), std::string("a\0b", 3)}) {
    auto c = db_->CreateCollection(name, Config(4));
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << "name '" << name << "'";
  }
  EXPECT_TRUE(db_->ListCollections().empty());
  EXPECT_TRUE(fs::is_empty(fs::path(dir_) / "collections"));
  for (const std::string& name : {std::string(64, 'x'), std::string("a-b_C9"), std::string("9lives")}) {
    EXPECT_TRUE(db_->CreateCollection(name, Config(4)).ok()) << name;
  }
}

TEST_F(DatabaseTest, BadConfigsAreInvalidArgumentNamingTheField) {
  OpenDb();
  struct Case {
    std::string field;
    std::function<void(CollectionConfig&)> mutate;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<Case> cases = {
      {"dimension", [](auto& c) { c.dimension = 0; }},
      {"dimension", [](auto& c) { c.dimension = 65537; }},
      {"metric", [](auto& c) { c.metric = static_cast<Metric>(7); }},
      {"num_shards", [](auto& c) { c.num_shards = 0; }},
      {"num_shards", [](auto& c) { c.num_shards = 257; }},
      {"replication_factor", [](auto& c) { c.replication_factor = 8; }},
      // One copy here: replicas need a cluster.
      {"replication_factor", [](auto& c) { c.replication_factor = 3; }},
      {"seal_threshold", [](auto& c) { c.seal_threshold = 999; }},
      {"split_points", [](auto& c) { c.split_points = 999; }},
      // The shard count is set at creation here: splits need a cluster.
      {"split_points", [](auto& c) { c.split_points = 5000; }},
      {"compaction_deleted_ratio", [](auto& c) { c.compaction_deleted_ratio = 0; }},
      {"compaction_deleted_ratio", [](auto& c) { c.compaction_deleted_ratio = 1.5; }},
      {"compaction_deleted_ratio", [nan](auto& c) { c.compaction_deleted_ratio = nan; }},
      {"index.type", [](auto& c) { c.index.type = static_cast<IndexType>(6); }},
      {"index.type", [](auto& c) { c.index.type = static_cast<IndexType>(-1); }},
      {"index.hnsw_m", [](auto& c) { c.index.hnsw_m = 3; }},
      {"index.hnsw_m", [](auto& c) { c.index.hnsw_m = 129; }},
      {"index.ef_construction", [](auto& c) { c.index.ef_construction = 7; }},
      {"index.ef_construction", [](auto& c) { c.index.ef_construction = 4097; }},
      {"index.ef_search", [](auto& c) { c.index.ef_search = 0; }},
      {"index.nlist", [](auto& c) { c.index.nlist = 0; }},
      {"index.nprobe", [](auto& c) { c.index.nprobe = 0; }},
      {"index.pq_m", [](auto& c) { c.index.pq_m = -1; }},
      {"index.pq_m", [](auto& c) { c.index.pq_m = 5; }},  // does not divide 32
      {"index.pq_nbits", [](auto& c) { c.index.pq_nbits = 3; }},
      {"index.pq_nbits", [](auto& c) { c.index.pq_nbits = 13; }},
      {"index.rerank_factor", [](auto& c) { c.index.rerank_factor = -1; }},
      {"index.rerank_factor", [](auto& c) { c.index.rerank_factor = 101; }},
      {"payload_indexes[0]", [](auto& c) { c.payload_indexes = {{"", PayloadType::kKeyword}}; }},
      {"payload_indexes[0]", [](auto& c) { c.payload_indexes = {{".a", PayloadType::kKeyword}}; }},
      {"payload_indexes[0]", [](auto& c) { c.payload_indexes = {{"a.", PayloadType::kKeyword}}; }},
      {"payload_indexes[0]", [](auto& c) { c.payload_indexes = {{"a..b", PayloadType::kKeyword}}; }},
      {"payload_indexes[0]",
       [](auto& c) { c.payload_indexes = {{std::string(256, 'f'), PayloadType::kKeyword}}; }},
      {"payload_indexes[1]",
       [](auto& c) { c.payload_indexes = {{"a", PayloadType::kKeyword}, {"a", PayloadType::kInteger}}; }},
      {"payload_indexes[0]",
       [](auto& c) { c.payload_indexes = {{"a", static_cast<PayloadType>(9)}}; }},
  };
  for (const auto& tc : cases) {
    CollectionConfig config = Config(32);
    tc.mutate(config);
    auto c = db_->CreateCollection("c", config);
    ASSERT_FALSE(c.ok()) << tc.field;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << tc.field << ": " << c.status();
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("config." + tc.field)) << c.status();
  }
  EXPECT_TRUE(db_->ListCollections().empty());
  EXPECT_TRUE(fs::is_empty(fs::path(dir_) / "collections"));
  // The edges of each range are accepted.
  CollectionConfig edge = Config(65536);
  edge.num_shards = 1;
  edge.seal_threshold = 1000;
  edge.compaction_deleted_ratio = 1.0;
  edge.index.hnsw_m = 4;
  edge.index.ef_construction = 4096;
  edge.index.pq_m = 64;
  edge.index.pq_nbits = 12;
  edge.index.rerank_factor = 100;
  edge.payload_indexes = {{std::string(255, 'f'), PayloadType::kBool}, {"a.b.c", PayloadType::kFloat}};
  EXPECT_TRUE(db_->CreateCollection("edge", edge).ok());
}

TEST_F(DatabaseTest, SecondOpenOfSameDirIsFailedPrecondition) {
  OpenDb();
  auto second = Database::Open(dir_, TestOptions());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  // The first keeps working, and once it is closed the directory opens again.
  EXPECT_TRUE(db_->CreateCollection("c", Config(4)).ok());
  CloseDb();
  auto third = Database::Open(dir_, TestOptions());
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ((*third)->ListCollections(), (std::vector<std::string>{"c"}));
}

TEST_F(DatabaseTest, BadOptionsAreInvalidArgumentAndCreateNothing) {
  auto with = [](auto mutate) {
    DatabaseOptions o = TestOptions();
    mutate(o);
    return o;
  };
  const std::vector<std::pair<std::string, DatabaseOptions>> cases = {
      {"index_threads", with([](DatabaseOptions& o) { o.index_threads = -1; })},
      {"max_batch_points", with([](DatabaseOptions& o) { o.max_batch_points = 0; })},
      {"max_batch_bytes", with([](DatabaseOptions& o) { o.max_batch_bytes = 10; })},
      {"max_k", with([](DatabaseOptions& o) { o.max_k = 0; })},
      {"max_queries", with([](DatabaseOptions& o) { o.max_queries = 0; })},
      {"max_payload_bytes", with([](DatabaseOptions& o) { o.max_payload_bytes = 0; })},
  };
  for (const auto& [field, options] : cases) {
    auto db = Database::Open(dir_, options);
    ASSERT_FALSE(db.ok()) << field;
    EXPECT_EQ(db.status().code(), absl::StatusCode::kInvalidArgument) << db.status();
    EXPECT_THAT(std::string(db.status().message()), ::testing::HasSubstr("options." + field));
    EXPECT_FALSE(fs::exists(dir_)) << "a refused Open created " << dir_;
  }
}

TEST_F(DatabaseTest, UpdateConfigChangesTunablesPersistsAndRefusesFixedFields) {
  OpenDb();
  auto c = Create("c", Config(4));
  ASSERT_TRUE(c);
  CollectionConfig next = c->config();
  next.index.ef_search = 200;
  next.index.nprobe = 7;
  next.seal_threshold = 5000;
  next.compaction_deleted_ratio = 0.5;
  ASSERT_TRUE(c->UpdateConfig(next).ok());
  EXPECT_EQ(c->config().index.ef_search, 200);
  EXPECT_EQ(c->config().seal_threshold, 5000u);

  for (auto [field, mutate] : std::vector<std::pair<std::string, std::function<void(CollectionConfig&)>>>{
           {"dimension", [](CollectionConfig& x) { x.dimension = 8; }},
           {"metric", [](CollectionConfig& x) { x.metric = Metric::kCosine; }},
           {"index.type", [](CollectionConfig& x) { x.index.type = IndexType::kFlat; }},
           {"index.hnsw_m", [](CollectionConfig& x) { x.index.hnsw_m = 16; }},
           {"index.hnsw_int8", [](CollectionConfig& x) { x.index.hnsw_int8 = !x.index.hnsw_int8; }},
           {"index.device", [](CollectionConfig& x) { x.index.device = Device::kCpu; }},
           {"index.pq_tables", [](CollectionConfig& x) { x.index.pq_tables = PqTables::kOn; }},
           {"num_shards", [](CollectionConfig& x) { x.num_shards = 2; }},
           {"replication_factor", [](CollectionConfig& x) { x.replication_factor = 3; }},  // a cluster's
           {"payload_indexes", [](CollectionConfig& x) { x.payload_indexes.push_back({"a", PayloadType::kBool}); }}}) {
    CollectionConfig bad = c->config();
    mutate(bad);
    auto st = c->UpdateConfig(bad);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr("config." + field)) << st;
  }
  CollectionConfig invalid = c->config();
  invalid.index.ef_search = 0;
  EXPECT_EQ(c->UpdateConfig(invalid).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->config().index.ef_search, 200);

  CloseDb();
  OpenDb();
  auto again = Get("c");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->config().index.ef_search, 200);
  EXPECT_EQ(again->config().index.nprobe, 7);
  EXPECT_EQ(again->config().seal_threshold, 5000u);
  EXPECT_DOUBLE_EQ(again->config().compaction_deleted_ratio, 0.5);
}

TEST_F(DatabaseTest, OtherFormatVersionIsFailedPrecondition) {
  fs::create_directories(dir_);
  ASSERT_TRUE(storage::WriteFileAtomic(dir_ + "/CAIRN", R"({"format_version": 999})").ok());
  auto db = Database::Open(dir_, TestOptions());
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.status().code(), absl::StatusCode::kFailedPrecondition) << db.status();
  EXPECT_THAT(std::string(db.status().message()), HasSubstr("999"));
  // Nothing was written over it.
  auto text = storage::ReadFile(dir_ + "/CAIRN");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, R"({"format_version": 999})");
  EXPECT_FALSE(fs::exists(dir_ + "/collections"));
}

// A process killed while creating a data directory leaves the format file's
// temporary copy behind (found by the crash test); the next Open finishes
// creating it instead of calling the directory someone else's.
TEST_F(DatabaseTest, InterruptedCreationIsCompletedByTheNextOpen) {
  fs::create_directories(dir_);
  std::ofstream(dir_ + "/CAIRN.tmp") << "{\"format_ver";
  auto db = Database::Open(dir_, TestOptions());
  ASSERT_TRUE(db.ok()) << db.status();
  EXPECT_FALSE(fs::exists(dir_ + "/CAIRN.tmp"));
  EXPECT_TRUE(fs::exists(dir_ + "/CAIRN"));
  // Anything else still marks another program's directory.
  db->reset();
  const std::string other = dir_ + "-other";
  fs::create_directories(other);
  std::ofstream(other + "/notes.txt") << "x";
  EXPECT_EQ(Database::Open(other, TestOptions()).status().code(), absl::StatusCode::kFailedPrecondition);
  fs::remove_all(other);
}

TEST_F(DatabaseTest, MalformedFormatFileIsDataLoss) {
  fs::create_directories(dir_);
  ASSERT_TRUE(storage::WriteFileAtomic(dir_ + "/CAIRN", "{not json").ok());
  EXPECT_EQ(Database::Open(dir_, TestOptions()).status().code(), absl::StatusCode::kDataLoss);
}

// hnsw_int8 defaults on, persists either way, and a collection.json from
// before the option (no key) reads as off: such collections keep walking on
// floats as they did.
TEST_F(DatabaseTest, HnswInt8PersistsAndOlderConfigsReadAsOff) {
  OpenDb();
  CollectionConfig on = Config(4);
  EXPECT_TRUE(on.index.hnsw_int8);
  CollectionConfig off = Config(4);
  off.index.hnsw_int8 = false;
  ASSERT_NE(Create("on", on), nullptr);
  ASSERT_NE(Create("off", off), nullptr);
  ASSERT_NE(Create("old", on), nullptr);
  CloseDb();
  const std::string path = dir_ + "/collections/old/collection.json";
  auto text = storage::ReadFile(path);
  ASSERT_TRUE(text.ok());
  auto j = nlohmann::json::parse(*text);
  ASSERT_TRUE(j["index"].contains("hnsw_int8"));
  j["index"].erase("hnsw_int8");
  ASSERT_TRUE(storage::WriteFileAtomic(path, j.dump()).ok());
  OpenDb();
  EXPECT_TRUE(Get("on")->config().index.hnsw_int8);
  EXPECT_FALSE(Get("off")->config().index.hnsw_int8);
  EXPECT_FALSE(Get("old")->config().index.hnsw_int8);
}

// pq_tables persists, a collection.json without it reads as auto, and an
// unknown value is refused at open.
TEST_F(DatabaseTest, PqTablesPersistAndOlderConfigsReadAsAuto) {
  OpenDb();
  CollectionConfig on = Config(8, Metric::kL2, IndexType::kIvfPq);
  EXPECT_EQ(on.index.pq_tables, PqTables::kAuto);
  on.index.pq_tables = PqTables::kOn;
  CollectionConfig off = on;
  off.index.pq_tables = PqTables::kOff;
  ASSERT_NE(Create("on", on), nullptr);
  ASSERT_NE(Create("off", off), nullptr);
  ASSERT_NE(Create("old", on), nullptr);
  CloseDb();
  const std::string path = dir_ + "/collections/old/collection.json";
  auto text = storage::ReadFile(path);
  ASSERT_TRUE(text.ok());
  auto j = nlohmann::json::parse(*text);
  ASSERT_EQ(j["index"]["pq_tables"], "on");
  j["index"].erase("pq_tables");
  ASSERT_TRUE(storage::WriteFileAtomic(path, j.dump()).ok());
  OpenDb();
  EXPECT_EQ(Get("on")->config().index.pq_tables, PqTables::kOn);
  EXPECT_EQ(Get("off")->config().index.pq_tables, PqTables::kOff);
  EXPECT_EQ(Get("old")->config().index.pq_tables, PqTables::kAuto);
  CloseDb();
  j["index"]["pq_tables"] = "sometimes";
  ASSERT_TRUE(storage::WriteFileAtomic(path, j.dump()).ok());
  auto bad = Database::Open(dir_, TestOptions());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("pq_tables")) << bad.status();
}

// The device choice persists (a collection.json without it reads as auto);
// "gpu" is refused at creation and at open on a node without a usable GPU;
// and a collection created on a GPU node (its collection.json says gpu) opens
// on a node without one and serves the same results from the CPU.
TEST_F(DatabaseTest, DeviceChoicePersistsAndGpuCollectionsFallBackToTheCpu) {
  const bool has_gpu = index::gpu::ProcessDevice().ok();
  OpenDb();
  const uint32_t dim = 8;
  const std::vector<float> x = testing_util::Clustered(5000, dim, 77);
  CollectionConfig cfg = Config(dim, Metric::kL2, IndexType::kIvfFlat);
  cfg.index.nlist = 16;
  cfg.index.nprobe = 16;  // every list: exact results whichever device runs it
  cfg.index.device = Device::kCpu;
  auto c = Create("moved", cfg);
  ASSERT_NE(c, nullptr);
  testing_util::UpsertRows(*c, x, dim);
  ASSERT_TRUE(c->Seal().ok());
  const std::vector<float> query = testing_util::Row(x, 42, dim);
  auto before = c->Search(query, {.k = 5});
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(before->size(), 5u);
  EXPECT_EQ(before->front().id, PointId(uint64_t{42}));

  CollectionConfig gpu = cfg;
  gpu.index.device = Device::kGpu;
  auto made = db_->CreateCollection("gpu", gpu);
  if (!has_gpu) {
    EXPECT_EQ(made.status().code(), absl::StatusCode::kFailedPrecondition) << made.status();
    EXPECT_THAT(std::string(made.status().message()), HasSubstr("no usable GPU"));
    EXPECT_FALSE(db_->GetCollection("gpu").ok());
  } else {
    EXPECT_TRUE(made.ok()) << made.status();
  }
  CloseDb();

  const std::string path = dir_ + "/collections/moved/collection.json";
  auto text = storage::ReadFile(path);
  ASSERT_TRUE(text.ok());
  auto j = nlohmann::json::parse(*text);
  EXPECT_EQ(j["index"]["device"], "cpu");
  j["index"]["device"] = "gpu";
  ASSERT_TRUE(storage::WriteFileAtomic(path, j.dump()).ok());
  OpenDb();
  auto moved = Get("moved");
  ASSERT_NE(moved, nullptr);
  EXPECT_EQ(moved->config().index.device, Device::kGpu);
  auto after = moved->Search(query, {.k = 5});
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->size(), before->size());
  for (size_t i = 0; i < after->size(); ++i) {
    EXPECT_EQ((*after)[i].id, (*before)[i].id) << i;
    EXPECT_NEAR((*after)[i].score, (*before)[i].score, 1e-4) << i;
  }
  // After a search, its sealed segment has a GPU copy where there is a GPU.
  auto info = db_->DescribeCollection("moved");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_GT(info->sealed_segments, 0u);
  EXPECT_EQ(info->gpu_segments, has_gpu ? info->sealed_segments : 0u);
  EXPECT_EQ(info->gpu_memory_bytes > 0, has_gpu);
  CloseDb();

  j["index"].erase("device");
  ASSERT_TRUE(storage::WriteFileAtomic(path, j.dump()).ok());
  OpenDb();
  EXPECT_EQ(Get("moved")->config().index.device, Device::kAuto);
  CloseDb();

  DatabaseOptions want_gpu = TestOptions();
  want_gpu.device = Device::kGpu;
  auto db = Database::Open(dir_, want_gpu);
  if (!has_gpu) {
    EXPECT_EQ(db.status().code(), absl::StatusCode::kFailedPrecondition) << db.status();
  } else {
    EXPECT_TRUE(db.ok()) << db.status();
  }
}

TEST_F(DatabaseTest, CorruptCollectionConfigIsDataLoss) {
  OpenDb();
  ASSERT_NE(Create("c", Config(4, Metric::kL2, IndexType::kFlat, 2)), nullptr);
  CloseDb();
  const std::string path = dir_ + "/collections/c/collection.json";
  auto good = storage::ReadFile(path);
  ASSERT_TRUE(good.ok());
  auto j = nlohmann::json::parse(*good);
  struct Case {
    std::string what;
    std::string text;
  };
  std::vector<Case> cases = {{"not JSON", "{oops"}, {"no dimension", "{}"}};
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, nlohmann::json>>{{"num_shards", 0},
                                                           {"dimension", 0},
                                                           {"metric", "?"},
                                                           {"seal_threshold", 5}}) {
    auto bad = j;
    bad[key] = value;
    cases.push_back({key + "=" + value.dump(), bad.dump()});
  }
  for (const auto& tc : cases) {
    ASSERT_TRUE(storage::WriteFileAtomic(path, tc.text).ok());
    auto db = Database::Open(dir_, TestOptions());
    ASSERT_FALSE(db.ok()) << tc.what;
    EXPECT_EQ(db.status().code(), absl::StatusCode::kDataLoss) << tc.what << ": " << db.status();
  }
  ASSERT_TRUE(storage::WriteFileAtomic(path, *good).ok());
  OpenDb();
  EXPECT_EQ(db_->ListCollections(), (std::vector<std::string>{"c"}));
}

TEST_F(DatabaseTest, NonCairnDirectoryIsRefused) {
  fs::create_directories(dir_);
  ASSERT_TRUE(storage::WriteFileAtomic(dir_ + "/notes.txt", "mine").ok());
  auto db = Database::Open(dir_, TestOptions());
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.status().code(), absl::StatusCode::kFailedPrecondition) << db.status();
  // Refused means untouched: no format file, no catalog, no lock file.
  EXPECT_FALSE(fs::exists(dir_ + "/CAIRN"));
  EXPECT_FALSE(fs::exists(dir_ + "/collections"));
  EXPECT_FALSE(fs::exists(dir_ + "/LOCK"));
  auto text = storage::ReadFile(dir_ + "/notes.txt");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "mine");

  // A path that is a file is refused too.
  ASSERT_TRUE(storage::WriteFileAtomic(root_ + "/file", "x").ok());
  EXPECT_EQ(Database::Open(root_ + "/file", TestOptions()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // And a missing directory without create_if_missing is NotFound.
  DatabaseOptions no_create = TestOptions();
  no_create.create_if_missing = false;
  EXPECT_EQ(Database::Open(root_ + "/absent", no_create).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(root_ + "/absent"));
}

TEST_F(DatabaseTest, EmptyDirectoryBecomesADataDirectory) {
  fs::create_directories(dir_);
  OpenDb();
  EXPECT_TRUE(fs::exists(dir_ + "/CAIRN"));
  CloseDb();
  DatabaseOptions no_create = TestOptions();
  no_create.create_if_missing = false;
  OpenDb(no_create);
}

// A clean close seals growing segments of seal_on_close_points or more that
// already are the collection's index (a file write), so the next Open loads
// them instead of rebuilding; smaller HNSW ones stay growing, saved to a file
// (growing_checkpoint_points) that the next Open loads; an IVF one still
// under its training size is flat, neither sealed (a build) nor saved (a
// copy of storage). Everything is there after reopening either way.
TEST_F(DatabaseTest, CloseSealsLargeGrowingSegmentsThatAreAlreadyTheIndex) {
  const uint32_t dim = 8;
  const auto x = Clustered(3000, dim, TestSeed());
  DatabaseOptions o = TestOptions();
  o.seal_on_close_points = 2000;
  std::map<std::string, std::vector<std::string>> before;
  const std::vector<std::pair<std::string, IndexType>> kinds = {
      {"hnsw", IndexType::kHnsw}, {"flat", IndexType::kFlat}, {"ivf", IndexType::kIvfFlat}, {"small", IndexType::kHnsw}};
  {
    OpenDb(o);
    for (const auto& [name, type] : kinds) {
      CollectionConfig c = Config(dim, Metric::kL2, type);
      c.index.nlist = 16;
      auto coll = Create(name, c);
      ASSERT_TRUE(coll);
      const size_t n = name == "small" ? 1999 : 3000;
      testing_util::UpsertRows(
          *coll, x, dim, 0, n, [](size_t i) { return PointId(uint64_t{i}); }, [](size_t) { return std::string(); },
          1000);
      ASSERT_TRUE(coll->Delete({PointId(5)}).ok());
      before[name] = Contents(*coll);
      ASSERT_EQ(coll->Info()->sealed_segments, 0u) << name;
    }
    CloseDb();
  }
  OpenDb(o);
  for (const auto& [name, type] : kinds) {
    auto coll = Get(name);
    ASSERT_TRUE(coll);
    const bool sealed = name == "hnsw" || name == "flat";
    EXPECT_EQ(coll->Info()->sealed_segments, sealed ? 1u : 0u) << name;
    size_t saved_copies = 0;
    for (const auto& f : fs::recursive_directory_iterator(dir_ + "/collections/" + name)) {
      saved_copies += f.path().filename().string().rfind("grow-", 0) == 0;
    }
    EXPECT_EQ(saved_copies, name == "small" ? 1u : 0u) << name;
    EXPECT_EQ(Contents(*coll), before[name]) << name;
    auto hits = coll->Search(Row(x, 42, dim), {.k = 1, .exact = true});
    ASSERT_TRUE(hits.ok()) << hits.status();
    ASSERT_EQ(hits->size(), 1u);
    EXPECT_EQ((*hits)[0].id, PointId(42)) << name;
    // Writes go on into a new growing segment, and survive another reopen.
    ASSERT_TRUE(coll->Upsert({Pt(uint64_t{100000}, Row(x, 7, dim))}).ok());
  }
  CloseDb();
  OpenDb(o);
  for (const auto& [name, type] : kinds) {
    auto coll = Get(name);
    ASSERT_TRUE(coll);
    EXPECT_EQ(CountOf(*coll), (name == "small" ? 1999u : 3000u)) << name;  // 1 deleted, 1 added
  }
}

TEST_F(DatabaseTest, ReopenKeepsCollectionsAndPoints) {
  const uint32_t dim = 16;
  const auto x = Clustered(1500, dim, TestSeed());
  CollectionConfig cos = Config(dim, Metric::kCosine, IndexType::kHnsw, 2);
  cos.payload_indexes = {{"lang", PayloadType::kKeyword}, {"n", PayloadType::kInteger}};
  std::vector<std::string> before_a, before_b;
  std::vector<std::vector<ScoredPoint>> hits_before;
  Filter filter = ParseFilter(R"({"must": [{"key": "lang", "match": {"value": "en"}}]})");
  const std::vector<float> query = Row(x, 3, dim);
  {
    OpenDb();
    auto a = Create("a", cos);
    auto b = Create("b", Config(dim, Metric::kL2, IndexType::kFlat));
    ASSERT_TRUE(a && b);
    testing_util::UpsertRows(
        *a, x, dim, 0, 1500, [](size_t i) { return PointId(uint64_t{i}); },
        [](size_t i) {
          return "{\"lang\": \"" + std::string(i % 3 ? "de" : "en") + "\", \"n\": " +
                 std::to_string(i) + "}";
        },
        500);
    std::vector<Point> named;
    for (size_t i = 0; i < 20; ++i) {
      named.push_back(Pt("doc-" + std::to_string(i), Row(x, i, dim), "{\"k\": 1}", "chunk " + std::to_string(i)));
    }
    ASSERT_TRUE(b->Upsert(named).ok());
    ASSERT_EQ(*a->Delete({PointId(7), PointId(8)}), 2u);
    before_a = Contents(*a);
    before_b = Contents(*b);
    for (bool exact : {true, false}) {
      auto r = a->Search(query, {.k = 10, .exact = exact, .filter = &filter});
      ASSERT_TRUE(r.ok()) << r.status();
      hits_before.push_back(*r);
    }
    CloseDb();
  }
  OpenDb();
  EXPECT_EQ(db_->ListCollections(), (std::vector<std::string>{"a", "b"}));
  auto a = Get("a");
  auto b = Get("b");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->config().metric, Metric::kCosine);
  EXPECT_EQ(a->config().num_shards, 2u);
  ASSERT_EQ(a->config().payload_indexes.size(), 2u);
  EXPECT_EQ(a->config().payload_indexes[1].field, "n");
  EXPECT_EQ(a->config().payload_indexes[1].type, PayloadType::kInteger);
  EXPECT_EQ(b->config().index.type, IndexType::kFlat);
  EXPECT_EQ(CountOf(*a), 1498u);
  EXPECT_EQ(Contents(*a), before_a);
  EXPECT_EQ(Contents(*b), before_b);
  EXPECT_EQ(CountOf(*a, &filter), 500u);
  auto got = b->Get({PointId("doc-3"), PointId("doc-99")}, true, true);
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE((*got)[0].has_value());
  EXPECT_EQ((*got)[0]->text, "chunk 3");
  EXPECT_EQ((*got)[0]->vector, Row(x, 3, dim));
  EXPECT_FALSE((*got)[1].has_value());
  // Exact search gives the same answer; the rebuilt growing graph finds the
  // same top hit and nearly the same set.
  auto exact = a->Search(query, {.k = 10, .exact = true, .filter = &filter});
  ASSERT_TRUE(exact.ok());
  ASSERT_EQ(exact->size(), hits_before[0].size());
  for (size_t i = 0; i < exact->size(); ++i) {
    EXPECT_EQ((*exact)[i].id, hits_before[0][i].id);
    EXPECT_NEAR((*exact)[i].score, hits_before[0][i].score, 1e-5);
    EXPECT_EQ((*exact)[i].payload, hits_before[0][i].payload);
  }
  auto approx = a->Search(query, {.k = 10, .filter = &filter});
  ASSERT_TRUE(approx.ok());
  ASSERT_FALSE(approx->empty());
  EXPECT_EQ((*approx)[0].id, hits_before[1][0].id);
  // Writes keep going after the reopen, with fresh ids.
  ASSERT_TRUE(a->Upsert({Pt(7, Row(x, 7, dim))}).ok());
  EXPECT_EQ(CountOf(*a), 1499u);
}

// ---- bad input changes nothing ----------------------------------------------

class BadInputTest : public DbTest, public ::testing::WithParamInterface<uint32_t> {
 protected:
  static constexpr uint32_t kDim = 8;
  void SetUp() override {
    DbTest::SetUp();
    DatabaseOptions o = TestOptions();
    o.max_batch_points = 10;
    o.max_k = 50;
    o.max_payload_bytes = 1000;
    OpenDb(o);
    CollectionConfig config = Config(kDim, Metric::kL2, IndexType::kHnsw, GetParam());
    config.payload_indexes = {{"lang", PayloadType::kKeyword}, {"year", PayloadType::kInteger}};
    c_ = Create("c", config);
    ASSERT_NE(c_, nullptr);
    std::vector<Point> points;
    for (int i = 0; i < 6; ++i) {
      points.push_back(Pt(i, Vec(kDim, static_cast<float>(i)),
                             "{\"lang\": \"en\", \"year\": " + std::to_string(2000 + i) + "}",
                             "text " + std::to_string(i)));
    }
    points.push_back(Pt("s", Vec(kDim, 9), "{\"lang\": \"de\"}", ""));
    ASSERT_TRUE(c_->Upsert(points).ok());
    before_ = Contents(*c_);
    ASSERT_EQ(before_.size(), 7u);
  }
  void ExpectUnchanged(const std::string& what) {
    EXPECT_EQ(CountOf(*c_), 7u) << what;
    EXPECT_EQ(Contents(*c_), before_) << what;
    // The payload index is unchanged too.
    Filter en = ParseFilter(R"({"must": [{"key": "lang", "match": {"value": "en"}}]})");
    EXPECT_EQ(CountOf(*c_, &en), 6u) << what;
    Filter year = ParseFilter(R"({"must": [{"key": "year", "range": {"gte": 2003}}]})");
    EXPECT_EQ(CountOf(*c_, &year), 3u) << what;
  }
  void ExpectUpsertFails(std::vector<Point> points, absl::StatusCode code, const std::string& what) {
    absl::Status s = c_->Upsert(points);
    EXPECT_EQ(s.code(), code) << what << ": " << s;
    ExpectUnchanged(what);
  }
  // A batch of good points (new ids and an overwrite) around one bad one.
  std::vector<Point> Around(Point bad) {
    std::vector<Point> v = {Pt(100, Vec(kDim, 0.5f)), Pt(1, Vec(kDim, 7.5f), "{}")};
    v.push_back(std::move(bad));
    v.push_back(Pt("new", Vec(kDim, 0.25f)));
    return v;
  }
  std::shared_ptr<Collection> c_;
  std::vector<std::string> before_;
};

TEST_P(BadInputTest, UpsertWithWrongDimension) {
  ExpectUpsertFails(Around(Pt(50, Vec(kDim - 1, 1))), absl::StatusCode::kInvalidArgument, "short");
  ExpectUpsertFails(Around(Pt(50, Vec(kDim + 1, 1))), absl::StatusCode::kInvalidArgument, "long");
  ExpectUpsertFails(Around(Pt(50, {})), absl::StatusCode::kInvalidArgument, "empty vector");
}

TEST_P(BadInputTest, UpsertWithNonFiniteValues) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<float> v = Vec(kDim, 1);
    v[kDim - 1] = bad;
    ExpectUpsertFails(Around(Pt(50, v)), absl::StatusCode::kInvalidArgument, std::to_string(bad));
  }
}

// Values whose distances would overflow float32 (inf scores, or cosine
// normalizing to zero) are refused; large but scoreable ones are taken.
TEST_P(BadInputTest, UpsertWithHugeValues) {
  for (float big : {3e38f, -1e30f, 1e19f}) {
    std::vector<float> v = Vec(kDim, 1);
    v[0] = big;
    ExpectUpsertFails(Around(Pt(50, v)), absl::StatusCode::kInvalidArgument, std::to_string(big));
  }
  std::vector<float> spread(kDim, 4e18f);  // each value fine, the norm too large
  ExpectUpsertFails(Around(Pt(50, spread)), absl::StatusCode::kInvalidArgument, "large norm");
  // Either side of the largest norm, where float's rounding of a sum of
  // squares cannot tell: the exact check decides.
  const double max_norm = std::sqrt(static_cast<double>(std::numeric_limits<float>::max()) / 4);
  std::vector<float> over = Vec(kDim, 0);
  over[0] = static_cast<float>(max_norm * 1.0001);
  ExpectUpsertFails(Around(Pt(50, over)), absl::StatusCode::kInvalidArgument, "just over the largest norm");
  std::vector<float> under = Vec(kDim, 0);
  under[0] = static_cast<float>(max_norm * 0.9999);
  ASSERT_TRUE(c_->Upsert({Pt(PointId(uint64_t{301}), under)}).ok());
  ASSERT_EQ(*c_->Delete({PointId(uint64_t{301})}), 1u);
  std::vector<float> ok = Vec(kDim, 1);
  ok[0] = 1e18f;
  ASSERT_TRUE(c_->Upsert({Pt(PointId(uint64_t{300}), ok)}).ok());
  std::vector<float> q = Vec(kDim, 1);
  q[0] = -1e18f;
  auto hits = c_->Search(q, {.k = 1, .exact = true});
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_FALSE(hits->empty());
  EXPECT_TRUE(std::isfinite((*hits)[0].score)) << (*hits)[0].score;
}

// Cosine divides by the norm: a zero (or all but zero) vector has no
// direction and would score 0 against everything.
TEST_F(DatabaseTest, CosineRefusesVectorsWithNoDirection) {
  OpenDb();
  auto c = Create("cos", Config(4, Metric::kCosine, IndexType::kHnsw));
  ASSERT_NE(c, nullptr);
  for (float tiny : {0.0f, 1e-20f}) {
    absl::Status st = c->Upsert({Pt(1, {tiny, 0, 0, 0})});
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << tiny;
    EXPECT_NE(st.message().find("cosine"), std::string::npos) << st;
    EXPECT_EQ(c->Search({tiny, 0, 0, 0}, {}).status().code(), absl::StatusCode::kInvalidArgument) << tiny;
  }
  EXPECT_EQ(CountOf(*c), 0u);
  ASSERT_TRUE(c->Upsert({Pt(1, {1e-10f, 0, 0, 0})}).ok());  // small, but it has a direction
  auto hits = c->Search({1, 0, 0, 0}, {.k = 1});
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_EQ(hits->size(), 1u);
  EXPECT_NEAR((*hits)[0].score, 1.0f, 1e-5);
  // L2 and inner product take the zero vector.
  auto l2 = Create("l2", Config(4, Metric::kL2, IndexType::kHnsw));
  ASSERT_NE(l2, nullptr);
  EXPECT_TRUE(l2->Upsert({Pt(1, {0, 0, 0, 0})}).ok());
}

TEST_P(BadInputTest, EmptyAndOversizedBatches) {
  ExpectUpsertFails({}, absl::StatusCode::kInvalidArgument, "empty batch");
  std::vector<Point> big;
  for (int i = 0; i < 11; ++i) big.emplace_back(Pt(PointId(200 + i), Vec(kDim, 1)));
  ExpectUpsertFails(big, absl::StatusCode::kResourceExhausted, "11 points over a limit of 10");
  big.pop_back();
  EXPECT_TRUE(c_->Upsert(big).ok()) << "10 points is within the limit";
}

TEST_P(BadInputTest, DuplicateIdsWithinOneBatch) {
  ExpectUpsertFails({Pt(50, Vec(kDim, 1)), Pt(51, Vec(kDim, 2)), Pt(50, Vec(kDim, 3))},
                    absl::StatusCode::kInvalidArgument, "numeric duplicate");
  ExpectUpsertFails({Pt("x", Vec(kDim, 1)), Pt("x", Vec(kDim, 2))},
                    absl::StatusCode::kInvalidArgument, "string duplicate");
  ExpectUpsertFails({Pt(1, Vec(kDim, 1)), Pt(1, Vec(kDim, 1))}, absl::StatusCode::kInvalidArgument,
                    "duplicate of an existing id");
  // 7 and "7" are different ids.
  EXPECT_TRUE(c_->Upsert({Pt(70, Vec(kDim, 1)), Pt("70", Vec(kDim, 1))}).ok());
}

TEST_P(BadInputTest, PayloadNotAnObject) {
  for (const char* bad : {"[1, 2]", "5", "\"text\"", "null", "{not json", "{\"a\": 1} trailing"}) {
    ExpectUpsertFails(Around(Pt(50, Vec(kDim, 1), bad)), absl::StatusCode::kInvalidArgument, bad);
  }
}

TEST_P(BadInputTest, WrongPayloadTypeForIndexedField) {
  for (const char* bad : {R"({"lang": 5})", R"({"lang": ["en", 1]})", R"({"year": "2020"})",
                          R"({"year": 2020.5})", R"({"year": true})", R"({"lang": {"x": "y"}})"}) {
    ExpectUpsertFails(Around(Pt(50, Vec(kDim, 1), bad)), absl::StatusCode::kInvalidArgument, bad);
  }
}

TEST_P(BadInputTest, BadIdsAndOversizedPayloads) {
  ExpectUpsertFails(Around(Pt("", Vec(kDim, 1))), absl::StatusCode::kInvalidArgument, "empty id");
  ExpectUpsertFails(Around(Pt(std::string(257, 'i'), Vec(kDim, 1))),
                    absl::StatusCode::kInvalidArgument, "long id");
  ExpectUpsertFails(Around(Pt(50, Vec(kDim, 1), "{\"a\": \"" + std::string(1000, 'p') + "\"}")),
                    absl::StatusCode::kResourceExhausted, "payload over max_payload_bytes");
  ExpectUpsertFails(Around(Pt(50, Vec(kDim, 1), "", std::string(1001, 't'))),
                    absl::StatusCode::kResourceExhausted, "text over max_payload_bytes");
}

TEST_P(BadInputTest, BadSearches) {
  const std::vector<float> q = Vec(kDim, 1);
  for (int k : {0, -1, 51}) {
    EXPECT_EQ(c_->Search(q, {.k = k}).status().code(), absl::StatusCode::kInvalidArgument) << k;
  }
  EXPECT_TRUE(c_->Search(q, {.k = 50}).ok());
  EXPECT_EQ(c_->Search(Vec(kDim - 1, 1), {}).status().code(), absl::StatusCode::kInvalidArgument);
  // Twice the dimension is two queries' worth, not one query.
  EXPECT_EQ(c_->Search(Vec(2 * kDim, 1), {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c_->Search({}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> nan = q;
  nan[0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(c_->Search(nan, {}).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> huge = q;
  huge[1] = 1e30f;
  std::vector<float> batch = q;  // a good query, then a bad one
  batch.insert(batch.end(), huge.begin(), huge.end());
  EXPECT_EQ(c_->Search(huge, {}).status().code(), absl::StatusCode::kInvalidArgument);
  auto st = c_->SearchBatch(batch, {}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("query 1"), std::string::npos) << st;
  EXPECT_EQ(c_->Search(q, {.ef = -1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c_->Search(q, {.nprobe = -1}).status().code(), absl::StatusCode::kInvalidArgument);
  ExpectUnchanged("bad searches");
}

// Filters built in C++ can break the rules the JSON parser enforces; every
// entry point must refuse them rather than crash or match everything.
std::vector<std::pair<std::string, Filter>> MalformedFilters() {
  std::vector<std::pair<std::string, Filter>> out;
  Filter f;
  f.must.push_back(Condition::Range("year", std::nullopt, std::nullopt));
  out.emplace_back("range without bounds", f);
  f = Filter();
  Condition nested;
  nested.kind = Condition::Kind::kNested;  // and no nested filter
  f.must_not.push_back(nested);
  out.emplace_back("nested without a filter", f);
  f = Filter();
  f.should.push_back(Condition::Match("", std::string("en")));
  out.emplace_back("empty field", f);
  f = Filter();
  f.must.push_back(Condition::Range("year", std::numeric_limits<double>::quiet_NaN(), std::nullopt));
  out.emplace_back("NaN bound", f);
  f = Filter();
  Filter inner;
  inner.must.push_back(Condition::Range("lang", std::nullopt, std::nullopt));
  f.must.push_back(Condition::Nested(inner));
  out.emplace_back("bad condition inside a nested filter", f);
  f = Filter();
  f.must.push_back(Condition::Match("year", std::numeric_limits<double>::quiet_NaN()));
  out.emplace_back("NaN match value", f);
  f = Filter();
  f.must.push_back(Condition::MatchAny("lang", {std::string("en"), std::numeric_limits<double>::infinity()}));
  out.emplace_back("infinite match-any value", f);
  return out;
}

TEST_P(BadInputTest, MalformedFilters) {
  const std::vector<float> q = Vec(kDim, 1);
  for (const auto& [what, f] : MalformedFilters()) {
    SCOPED_TRACE(what);
    auto del = c_->DeleteByFilter(f);
    EXPECT_EQ(del.status().code(), absl::StatusCode::kInvalidArgument);
    // The message names the offending condition, as Filter::FromJson's do.
    EXPECT_THAT(std::string(del.status().message()), ::testing::StartsWith("filter."));
    EXPECT_EQ(c_->Count(&f).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(c_->Search(q, {.filter = &f}).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(c_->Search(q, {.exact = true, .filter = &f}).status().code(),
              absl::StatusCode::kInvalidArgument);
    ScrollRequest req;
    req.filter = &f;
    EXPECT_EQ(c_->Scroll(req).status().code(), absl::StatusCode::kInvalidArgument);
    ExpectUnchanged(what);
  }
  // An empty filter deletes nothing (it would match every point).
  EXPECT_EQ(c_->DeleteByFilter(Filter()).status().code(), absl::StatusCode::kInvalidArgument);
  ExpectUnchanged("empty filter");
  // Malformed JSON never becomes a filter.
  EXPECT_EQ(Filter::FromJson(R"({"must": [{"key": "year", "range": {}}]})").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(BadInputTest, BadPayloadUpdates) {
  for (const char* bad : {"[1]", "5", "nope"}) {
    EXPECT_EQ(c_->SetPayload({PointId(1)}, bad).code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(c_->OverwritePayload({PointId(1)}, bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(c_->SetPayload({PointId(1)}, R"({"year": "x"})").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c_->OverwritePayload({PointId(1)}, R"({"lang": 1})").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c_->SetPayload({}, R"({"a": 1})").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c_->SetPayload({PointId(1)}, "{\"a\": \"" + std::string(1000, 'p') + "\"}").code(),
            absl::StatusCode::kResourceExhausted);
  // A missing id among present ones: NotFound, and no point changes.
  EXPECT_EQ(c_->SetPayload({PointId(0), PointId(1), PointId(2), PointId(3), PointId(999)},
                           R"({"lang": "xx"})").code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(c_->OverwritePayload({PointId("s"), PointId("missing"), PointId(4)}, R"({"lang": "xx"})").code(),
            absl::StatusCode::kNotFound);
  ExpectUnchanged("bad payload updates");
}

TEST_P(BadInputTest, OversizedRequestsAndBadScrolls) {
  std::vector<PointId> many;
  for (int i = 0; i < 11; ++i) many.push_back(i);
  EXPECT_EQ(c_->Get(many).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(c_->Delete(many).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(c_->SetPayload(many, "{}").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(c_->Delete({PointId("")}).status().code(), absl::StatusCode::kInvalidArgument);
  ScrollRequest req;
  req.limit = 0;
  EXPECT_EQ(c_->Scroll(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.limit = 11;
  EXPECT_EQ(c_->Scroll(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.limit = 5;
  for (const char* cursor : {"zz", "0", "00", "ffff00", "0001XY"}) {
    req.cursor = cursor;
    auto page = c_->Scroll(req);
    EXPECT_EQ(page.status().code(), absl::StatusCode::kInvalidArgument) << cursor;
  }
  ExpectUnchanged("oversized requests");
}

INSTANTIATE_TEST_SUITE_P(Shards, BadInputTest, ::testing::Values(1u, 3u),
                         [](const auto& info) { return std::to_string(info.param) + "shards"; });

// ---- point operations ---------------------------------------------------------

class PointsTest : public DbTest, public ::testing::WithParamInterface<uint32_t> {
 protected:
  static constexpr uint32_t kDim = 8;
  void SetUp() override {
    DbTest::SetUp();
    OpenDb();
    CollectionConfig config = Config(kDim, Metric::kL2, IndexType::kHnsw, GetParam());
    config.payload_indexes = {{"lang", PayloadType::kKeyword}, {"n", PayloadType::kInteger}};
    c_ = Create("c", config);
    ASSERT_NE(c_, nullptr);
  }
  std::shared_ptr<Collection> c_;
};

TEST_P(PointsTest, UpsertAndGetNumericAndStringIds) {
  const std::string text = "line one\nline two \xe2\x9c\x93 and a NUL: " + std::string(1, '\0') + ".";
  ASSERT_TRUE(c_->Upsert({Pt(1, Vec(kDim, 1), R"({"lang": "en", "n": 1})", "one"),
                          Pt("doc-1", Vec(kDim, 2), "", text),
                          Pt(~uint64_t{0}, Vec(kDim, 3), R"({"nested": {"a": [1, 2]}})")})
                  .ok());
  EXPECT_EQ(CountOf(*c_), 3u);
  auto got = c_->Get({PointId("doc-1"), PointId(2), PointId(1), PointId("1"), PointId(~uint64_t{0})},
                     /*with_payload=*/true, /*with_vector=*/true);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 5u);
  ASSERT_TRUE((*got)[0].has_value());
  EXPECT_EQ((*got)[0]->id, PointId("doc-1"));
  EXPECT_EQ((*got)[0]->payload, "{}");  // none was set
  EXPECT_EQ((*got)[0]->text, text);
  EXPECT_EQ((*got)[0]->vector, Vec(kDim, 2));
  EXPECT_FALSE((*got)[1].has_value());
  ASSERT_TRUE((*got)[2].has_value());
  EXPECT_EQ((*got)[2]->id, PointId(1));
  EXPECT_EQ(nlohmann::json::parse((*got)[2]->payload), nlohmann::json::parse(R"({"lang": "en", "n": 1})"));
  EXPECT_EQ((*got)[2]->text, "one");
  EXPECT_FALSE((*got)[3].has_value()) << "the string \"1\" is not the number 1";
  ASSERT_TRUE((*got)[4].has_value());
  EXPECT_EQ(nlohmann::json::parse((*got)[4]->payload)["nested"]["a"][1], 2);

  // Without payload or vector.
  got = c_->Get({PointId(1)}, false, false);
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE((*got)[0].has_value());
  EXPECT_EQ((*got)[0]->payload, "");
  EXPECT_EQ((*got)[0]->text, "");
  EXPECT_TRUE((*got)[0]->vector.empty());
  got = c_->Get({PointId(1)}, true, false);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE((*got)[0]->payload.empty());
  EXPECT_TRUE((*got)[0]->vector.empty());
  got = c_->Get({}, true, true);
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->empty());

  // Search returns payload and text when asked.
  auto hits = c_->Search(Vec(kDim, 2), {.k = 1, .with_vector = true});
  ASSERT_TRUE(hits.ok());
  ASSERT_EQ(hits->size(), 1u);
  EXPECT_EQ((*hits)[0].id, PointId("doc-1"));
  EXPECT_EQ((*hits)[0].text, text);
  EXPECT_EQ((*hits)[0].payload, "{}");
  EXPECT_EQ((*hits)[0].vector, Vec(kDim, 2));
  EXPECT_FLOAT_EQ((*hits)[0].score, 0.0f);
  hits = c_->Search(Vec(kDim, 2), {.k = 1, .with_payload = false});
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ((*hits)[0].text, "");
  EXPECT_EQ((*hits)[0].payload, "");
  EXPECT_TRUE((*hits)[0].vector.empty());
}

TEST_P(PointsTest, OverwriteReplacesVectorPayloadAndText) {
  std::vector<Point> points;
  for (int i = 0; i < 50; ++i) {
    points.push_back(Pt(i, Vec(kDim, static_cast<float>(i)), R"({"lang": "en", "n": 1})", "old"));
  }
  ASSERT_TRUE(c_->Upsert(points).ok());
  ASSERT_TRUE(c_->Upsert({Pt(10, Vec(kDim, 100.0f), R"({"lang": "de"})", "new")}).ok());
  EXPECT_EQ(CountOf(*c_), 50u);
  for (bool exact : {false, true}) {
    SCOPED_TRACE(exact ? "exact" : "index");
    // The new vector is found under the id...
    auto hits = c_->Search(Vec(kDim, 100.0f), {.k = 1, .exact = exact});
    ASSERT_TRUE(hits.ok());
    ASSERT_EQ(hits->size(), 1u);
    EXPECT_EQ((*hits)[0].id, PointId(10));
    EXPECT_FLOAT_EQ((*hits)[0].score, 0.0f);
    EXPECT_EQ((*hits)[0].text, "new");
    // ...and the old one is gone: nothing sits at (10, ..., 10) any more.
    hits = c_->Search(Vec(kDim, 10.0f), {.k = 3, .exact = exact});
    ASSERT_TRUE(hits.ok());
    for (const auto& h : hits.value()) {
      EXPECT_NE(h.id, PointId(10));
      EXPECT_GT(h.score, 0.5f);
    }
  }
  Filter en = ParseFilter(R"({"must": [{"key": "lang", "match": {"value": "en"}}]})");
  Filter de = ParseFilter(R"({"must": [{"key": "lang", "match": {"value": "de"}}]})");
  Filter n1 = ParseFilter(R"({"must": [{"key": "n", "match": {"value": 1}}]})");
  EXPECT_EQ(CountOf(*c_, &en), 49u);
  EXPECT_EQ(CountOf(*c_, &de), 1u);
  EXPECT_EQ(CountOf(*c_, &n1), 49u);
  auto got = c_->Get({PointId(10)}, true, true);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)[0]->vector, Vec(kDim, 100.0f));
  EXPECT_EQ((*got)[0]->text, "new");
}

TEST_P(PointsTest, DeleteReturnsHowManyExisted) {
  std::vector<Point> points;
  for (int i = 0; i < 20; ++i) points.push_back(Pt(i, Vec(kDim, static_cast<float>(i))));
  points.push_back(Pt("s", Vec(kDim, 50)));
  ASSERT_TRUE(c_->Upsert(points).ok());
  auto n = c_->Delete({PointId(3), PointId(4), PointId(999), PointId(3), PointId("s"), PointId("t")});
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 3u);
  EXPECT_EQ(CountOf(*c_), 18u);
  auto got = c_->Get({PointId(3), PointId(4), PointId("s"), PointId(5)});
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE((*got)[0] || (*got)[1] || (*got)[2]);
  EXPECT_TRUE((*got)[3].has_value());
  n = c_->Delete({PointId(3)});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  n = c_->Delete({});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  for (bool exact : {false, true}) {
    auto hits = c_->Search(Vec(kDim, 3.0f), {.k = 18, .exact = exact});
    ASSERT_TRUE(hits.ok());
    EXPECT_EQ(hits->size(), 18u);
    for (const auto& h : *hits) EXPECT_TRUE(h.id != PointId(3) && h.id != PointId(4) && h.id != PointId("s"));
  }
  // A deleted id can be inserted again.
  ASSERT_TRUE(c_->Upsert({Pt(3, Vec(kDim, 3.0f))}).ok());
  auto hits = c_->Search(Vec(kDim, 3.0f), {.k = 1});
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ((*hits)[0].id, PointId(3));
}

TEST_P(PointsTest, DeleteByFilter) {
  std::vector<Point> points;
  for (int i = 0; i < 60; ++i) {
    points.push_back(Pt(i, Vec(kDim, static_cast<float>(i)),
                           "{\"lang\": \"" + std::string(i % 3 == 0 ? "en" : "de") + "\", \"n\": " +
                               std::to_string(i) + ", \"free\": " + std::to_string(i % 2) + "}"));
  }
  ASSERT_TRUE(c_->Upsert(points).ok());
  Filter en = ParseFilter(R"({"must": [{"key": "lang", "match": {"value": "en"}}]})");
  auto n = c_->DeleteByFilter(en);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 20u);
  EXPECT_EQ(CountOf(*c_), 40u);
  EXPECT_EQ(CountOf(*c_, &en), 0u);
  // An unindexed field (the payload-scan path) combined with an indexed range.
  Filter odd_low = ParseFilter(
      R"({"must": [{"key": "free", "match": {"value": 1}}, {"key": "n", "range": {"lt": 30}}]})");
  n = c_->DeleteByFilter(odd_low);
  ASSERT_TRUE(n.ok());
  // Odd i < 30 and not a multiple of 3: 15 odd, of which 5 are multiples of 3.
  EXPECT_EQ(*n, 10u);
  EXPECT_EQ(CountOf(*c_), 30u);
  n = c_->DeleteByFilter(odd_low);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  auto hits = c_->Search(Vec(kDim, 0), {.k = 60, .exact = true});
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ(hits->size(), 30u);
  for (const auto& h : *hits) {
    uint64_t i = h.id.number();
    EXPECT_NE(i % 3, 0u);
    EXPECT_FALSE(i % 2 == 1 && i < 30);
  }
}

TEST_P(PointsTest, SetPayloadMergesAndOverwritePayloadReplaces) {
  ASSERT_TRUE(c_->Upsert({Pt(1, Vec(kDim, 1), R"({"lang": "en", "n": 5, "keep": "me"})", "t1"),
                          Pt(2, Vec(kDim, 2), R"({"lang": "en"})", "t2"),
                          Pt(3, Vec(kDim, 3), R"({"lang": "fr"})")})
                  .ok());
  ASSERT_TRUE(c_->SetPayload({PointId(1), PointId(2)}, R"({"lang": "de", "extra": [1, 2]})").ok());
  auto got = c_->Get({PointId(1), PointId(2), PointId(3)}, true, true);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(nlohmann::json::parse((*got)[0]->payload),
            nlohmann::json::parse(R"({"lang": "de", "n": 5, "keep": "me", "extra": [1, 2]})"));
  EXPECT_EQ((*got)[0]->text, "t1");
  EXPECT_EQ((*got)[0]->vector, Vec(kDim, 1));
  EXPECT_EQ(nlohmann::json::parse((*got)[1]->payload),
            nlohmann::json::parse(R"({"lang": "de", "extra": [1, 2]})"));
  EXPECT_EQ(nlohmann::json::parse((*got)[2]->payload), nlohmann::json::parse(R"({"lang": "fr"})"));
  Filter en = ParseFilter(R"({"must": [{"key": "lang", "match": {"value": "en"}}]})");
  Filter de = ParseFilter(R"({"must": [{"key": "lang", "match": {"value": "de"}}]})");
  Filter n5 = ParseFilter(R"({"must": [{"key": "n", "range": {"gte": 5}}]})");
  EXPECT_EQ(CountOf(*c_, &en), 0u);
  EXPECT_EQ(CountOf(*c_, &de), 2u);
  EXPECT_EQ(CountOf(*c_, &n5), 1u);

  ASSERT_TRUE(c_->OverwritePayload({PointId(1)}, R"({"other": true})").ok());
  got = c_->Get({PointId(1)}, true, true);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(nlohmann::json::parse((*got)[0]->payload), nlohmann::json::parse(R"({"other": true})"));
  EXPECT_EQ((*got)[0]->text, "t1");
  EXPECT_EQ((*got)[0]->vector, Vec(kDim, 1));
  EXPECT_EQ(CountOf(*c_, &de), 1u);
  EXPECT_EQ(CountOf(*c_, &n5), 0u);
  Filter no_lang = ParseFilter(R"({"must": [{"is_null": {"key": "lang"}}]})");
  EXPECT_EQ(CountOf(*c_, &no_lang), 1u);
  // Filtered search sees the new payloads.
  auto hits = c_->Search(Vec(kDim, 1), {.k = 3, .filter = &de});
  ASSERT_TRUE(hits.ok());
  ASSERT_EQ(hits->size(), 1u);
  EXPECT_EQ((*hits)[0].id, PointId(2));
  // An empty object clears it.
  ASSERT_TRUE(c_->OverwritePayload({PointId(2)}, "{}").ok());
  EXPECT_EQ(CountOf(*c_, &de), 0u);
  EXPECT_EQ(CountOf(*c_, &no_lang), 2u);
}

TEST_P(PointsTest, SetPayloadOnMissingIdIsNotFoundAndChangesNothing) {
  std::vector<Point> points;
  for (int i = 0; i < 10; ++i) points.push_back(Pt(i, Vec(kDim, static_cast<float>(i)), R"({"lang": "en"})"));
  ASSERT_TRUE(c_->Upsert(points).ok());
  const auto before = Contents(*c_);
  std::vector<PointId> ids;
  for (int i = 0; i < 10; ++i) ids.push_back(i);
  ids.push_back(42);
  EXPECT_EQ(c_->SetPayload(ids, R"({"lang": "de"})").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c_->OverwritePayload(ids, R"({"x": 1})").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c_->SetPayload({PointId("nope")}, R"({"lang": "de"})").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Contents(*c_), before);
  Filter de = ParseFilter(R"({"must": [{"key": "lang", "match": {"value": "de"}}]})");
  EXPECT_EQ(CountOf(*c_, &de), 0u);
}

TEST_P(PointsTest, CountWithFilters) {
  std::vector<Point> points;
  for (int i = 0; i < 100; ++i) {
    points.push_back(Pt(i, Vec(kDim, static_cast<float>(i)),
                           "{\"lang\": \"" + std::string(i % 4 == 0 ? "en" : "de") + "\", \"n\": " +
                               std::to_string(i) + ", \"meta\": {\"even\": " + (i % 2 ? "false" : "true") + "}}"));
  }
  ASSERT_TRUE(c_->Upsert(points).ok());
  struct Case {
    const char* json;
    uint64_t want;
  };
  const Case cases[] = {
      {R"({"must": [{"key": "lang", "match": {"value": "en"}}]})", 25},
      {R"({"must_not": [{"key": "lang", "match": {"value": "en"}}]})", 75},
      {R"({"must": [{"key": "n", "range": {"gte": 10, "lt": 20}}]})", 10},
      {R"({"must": [{"key": "meta.even", "match": {"value": true}}]})", 50},
      {R"({"must": [{"key": "meta.even", "match": {"value": true}}, {"key": "lang", "match": {"value": "de"}}]})", 25},
      {R"({"should": [{"key": "n", "range": {"lt": 5}}, {"key": "n", "range": {"gte": 95}}]})", 10},
      {R"({"must": [{"has_id": [1, 2, 3, 500, "x"]}]})", 3},
      {R"({"must": [{"is_null": {"key": "missing"}}]})", 100},
      {R"({"must": [{"should": [{"key": "lang", "match": {"any": ["en", "fr"]}}],
                     "must_not": [{"key": "n", "range": {"gte": 50}}]}]})", 13},
      {"{}", 100},
  };
  for (const auto& tc : cases) {
    Filter f = ParseFilter(tc.json);
    EXPECT_EQ(CountOf(*c_, &f), tc.want) << tc.json;
  }
  EXPECT_EQ(CountOf(*c_), 100u);
}

// Scrolls through everything, checking each point comes exactly once.
std::vector<PointId> ScrollAll(const Collection& c, uint32_t limit, const Filter* filter) {
  std::vector<PointId> out;
  ScrollRequest req;
  req.limit = limit;
  req.filter = filter;
  req.with_payload = false;
  for (int pages = 0;; ++pages) {
    EXPECT_LT(pages, 10000) << "scroll does not end";
    if (pages >= 10000) break;
    auto page = c.Scroll(req);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) break;
    EXPECT_LE(page->points.size(), limit);
    for (const auto& r : page->points) {
      out.push_back(r.id);
      EXPECT_EQ(r.payload, "");
      EXPECT_TRUE(r.vector.empty());
    }
    if (page->next_cursor.empty()) break;
    req.cursor = page->next_cursor;
  }
  return out;
}

TEST_P(PointsTest, ScrollPagesThroughEverythingExactlyOnce) {
  std::vector<Point> points;
  std::set<std::string> all, even;
  for (int i = 0; i < 157; ++i) {
    PointId id = i % 5 == 0 ? PointId("str-" + std::to_string(i)) : PointId(i * 1000);
    points.push_back(Pt(id, Vec(kDim, static_cast<float>(i)), "{\"n\": " + std::to_string(i) + "}"));
    all.insert(id.ToString());
    if (i % 2 == 0) even.insert(id.ToString());
  }
  ASSERT_TRUE(c_->Upsert(std::vector<Point>(points.begin(), points.begin() + 80)).ok());
  ASSERT_TRUE(c_->Upsert(std::vector<Point>(points.begin() + 80, points.end())).ok());
  Filter f;
  f.must.push_back(Condition::MatchAny("n", [] {
    std::vector<FieldValue> v;
    for (int i = 0; i < 157; i += 2) v.emplace_back(std::in_place_type<int64_t>, i);
    return v;
  }()));
  for (uint32_t limit : {1u, 7u, 100u, 157u, 1000u}) {
    for (const Filter* filter : {static_cast<const Filter*>(nullptr), static_cast<const Filter*>(&f)}) {
      SCOPED_TRACE("limit " + std::to_string(limit) + (filter ? " filtered" : ""));
      auto ids = ScrollAll(*c_, limit, filter);
      std::multiset<std::string> seen;
      for (const auto& id : ids) seen.insert(id.ToString());
      const auto& want = filter ? even : all;
      EXPECT_EQ(seen.size(), want.size());
      EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()), want);
      // Within each shard, numeric ids come in numeric order.
      if (GetParam() == 1) {
        uint64_t last = 0;
        for (const auto& id : ids) {
          if (!id.is_number()) continue;
          EXPECT_GE(id.number(), last);
          last = id.number();
        }
      }
    }
  }
  // The same scroll gives the same pages.
  EXPECT_EQ(ScrollAll(*c_, 10, nullptr), ScrollAll(*c_, 10, nullptr));
}

TEST_P(PointsTest, ScrollOfAnEmptyCollection) {
  ScrollRequest req;
  auto page = c_->Scroll(req);
  ASSERT_TRUE(page.ok());
  EXPECT_TRUE(page->points.empty());
  EXPECT_TRUE(page->next_cursor.empty());
}

TEST_P(PointsTest, TextChunksRoundTrip) {
  std::vector<Point> points;
  std::map<std::string, std::string> texts;
  std::mt19937_64 rng(TestSeed());
  for (int i = 0; i < 30; ++i) {
    std::string t;
    size_t len = rng() % 300;
    for (size_t j = 0; j < len; ++j) t.push_back(static_cast<char>(rng() % 256));
    PointId id = "chunk-" + std::to_string(i);
    texts[id.ToString()] = t;
    points.push_back(Pt(id, Vec(kDim, static_cast<float>(i)), R"({"lang": "en"})", t));
  }
  ASSERT_TRUE(c_->Upsert(points).ok());
  ScrollRequest req;
  req.limit = 1000;
  auto page = c_->Scroll(req);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->points.size(), 30u);
  for (const auto& r : page->points) EXPECT_EQ(r.text, texts[r.id.ToString()]);
  auto hits = c_->Search(Vec(kDim, 7), {.k = 1});
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ((*hits)[0].text, texts["\"chunk-7\""]);
  // Payload updates keep the text.
  ASSERT_TRUE(c_->SetPayload({PointId("chunk-7")}, R"({"lang": "de"})").ok());
  auto got = c_->Get({PointId("chunk-7")});
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)[0]->text, texts["\"chunk-7\""]);
}

INSTANTIATE_TEST_SUITE_P(Shards, PointsTest, ::testing::Values(1u, 3u),
                         [](const auto& info) { return std::to_string(info.param) + "shards"; });

}  // namespace
}  // namespace cairn
