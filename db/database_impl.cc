// DatabaseImpl: the data directory, its lock and format file, the collection
// catalog (one directory per collection), and the maintenance thread.
//
// Layout:
//   DIR/LOCK                       advisory lock of the process that has it open
//   DIR/CAIRN                      {"format_version": N}
//   DIR/collections/NAME/collection.json
//   DIR/collections/NAME/shard-NNNN/kv/          RocksDB
//   DIR/collections/NAME/shard-NNNN/segments/    sealed segment files
// A collection is created in collections/.tmp-NAME and renamed into place, and
// dropped by renaming it to collections/.dropped-NAME-N before deleting it, so
// a crash never leaves half a collection under its name.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cairn/database.h"
#include "cairn/status.h"
#include "db/collection_impl.h"
#include "db/config_codec.h"
#include "db/snapshot_dir.h"
#include "index/gpu/gpu.h"
#include "storage/file_util.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using db::CollectionImpl;
using db::MemoryBudget;
using db::MemoryUsage;

class DatabaseImpl final : public Database {
 public:
  DatabaseImpl(std::string dir, DatabaseOptions options, std::unique_ptr<storage::FileLock> lock)
      : dir_(std::move(dir)),
        options_(options),
        lock_(std::move(lock)),
        budget_(std::make_shared<MemoryBudget>(
            db::MemoryLimitFor(options_.memory_limit_bytes), [this] { return MeasureMemory(); },
            [this] { return ReleaseVectors(); })),
        kv_memory_(db::NewKvMemory(options_)) {}

  ~DatabaseImpl() override {
    budget_->Detach();
    {
      std::lock_guard l(maint_mu_);
      stop_ = true;
    }
    maint_cv_.notify_all();
    if (maint_thread_.joinable()) maint_thread_.join();
    std::lock_guard l(mu_);
    for (auto& [name, c] : collections_) {
      c->SealOnClose(options_.seal_on_close_points);
      c->Close();
    }
  }

  absl::Status Load() {
    fs::path cdir = fs::path(dir_) / "collections";
    std::error_code ec;
    fs::create_directories(cdir, ec);
    if (ec) return absl::InternalError(absl::StrCat("create ", cdir.string(), ": ", ec.message()));
    for (const auto& entry : fs::directory_iterator(cdir, ec)) {
      std::string name = entry.path().filename().string();
      if (absl::StartsWith(name, ".")) {  // interrupted create or drop
        fs::remove_all(entry.path(), ec);
        continue;
      }
      CAIRN_ASSIGN_OR_RETURN(std::string text,
                             storage::ReadFile((entry.path() / "collection.json").string()));
      auto config = db::ConfigFromJson(text);
      // A config that parses but is invalid (zero shards, say) is as corrupt
      // as one that does not parse.
      absl::Status valid = config.ok() ? db::ValidateConfig(*config) : config.status();
      if (!valid.ok()) {
        return absl::DataLossError(absl::StrCat("collection ", name, ": ", valid.message()));
      }
      CAIRN_ASSIGN_OR_RETURN(auto c, CollectionImpl::Open(name, entry.path().string(), *config,
                                                          options_, Waker(), kv_memory_));
      c->SetMemoryBudget(budget_);
      collections_[name] = std::move(c);
    }
    if (ec) return absl::InternalError(absl::StrCat("list ", cdir.string(), ": ", ec.message()));
    // The HNSW floats the memory budget grants come into memory: in the
    // background when there is a maintenance thread (searches read the
    // vector files meanwhile), else before Open returns.
    auto keep_vectors = [this] {
      const std::vector<std::shared_ptr<CollectionImpl>> cs = Collections();
      for (auto& c : cs) c->KeepVectorsInMemory();
    };
    if (options_.background_maintenance) {
      maint_thread_ = std::thread([this, keep_vectors] {
        keep_vectors();
        MaintenanceLoop();
      });
    } else {
      keep_vectors();
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::shared_ptr<Collection>> CreateCollection(
      const std::string& name, const CollectionConfig& config) override {
    CAIRN_RETURN_IF_ERROR(db::ValidateCollectionName(name));
    CAIRN_RETURN_IF_ERROR(db::ValidateConfig(config));
    if (config.split_points != 0) {
      return absl::InvalidArgumentError(
          "config.split_points is set, but this database does not split shards (its shard count is set at "
          "creation); shards split in a cluster (cairnd --cluster)");
    }
    if (config.replication_factor > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.replication_factor is ", config.replication_factor,
          ", but this database keeps one copy of each shard; replicas need a cluster (cairnd --cluster)"));
    }
    if (std::string why; config.index.device == Device::kGpu && !index::gpu::UseGpu(Device::kGpu, &why)) {
      return absl::FailedPreconditionError(
          absl::StrCat("config.index.device is gpu, but this node has no usable GPU: ", why,
                       "; use auto (GPU when present) or cpu"));
    }
    std::lock_guard l(mu_);
    if (collections_.contains(name)) {
      return absl::AlreadyExistsError(absl::StrCat("collection \"", name, "\" already exists"));
    }
    fs::path cdir = fs::path(dir_) / "collections";
    fs::path tmp = cdir / (".tmp-" + name);
    fs::path final_dir = cdir / name;
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp, ec);
    if (ec) return absl::InternalError(absl::StrCat("create ", tmp.string(), ": ", ec.message()));
    CAIRN_RETURN_IF_ERROR(storage::WriteFileSynced((tmp / "collection.json").string(),
                                                   db::ConfigToJson(config)));
    fs::rename(tmp, final_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("rename to ", final_dir.string(), ": ", ec.message()));
    CAIRN_RETURN_IF_ERROR(storage::SyncDir(cdir.string()));
    auto c = CollectionImpl::Open(name, final_dir.string(), config, options_, Waker(), kv_memory_);
    if (!c.ok()) {
      fs::remove_all(final_dir, ec);
      return c.status();
    }
    (*c)->SetMemoryBudget(budget_);
    collections_[name] = *c;
    return std::shared_ptr<Collection>(*c);
  }

  absl::StatusOr<std::shared_ptr<Collection>> GetCollection(const std::string& name) const override {
    std::lock_guard l(mu_);
    auto it = collections_.find(name);
    if (it == collections_.end()) {
      return absl::NotFoundError(absl::StrCat("collection \"", name, "\" does not exist"));
    }
    return std::shared_ptr<Collection>(it->second);
  }

  std::vector<std::string> ListCollections() const override {
    std::lock_guard l(mu_);
    std::vector<std::string> names;
    for (const auto& [name, c] : collections_) names.push_back(name);
    return names;
  }

  absl::StatusOr<CollectionInfo> DescribeCollection(const std::string& name) const override {
    CAIRN_ASSIGN_OR_RETURN(auto c, GetCollection(name));
    return c->Info();
  }

  absl::Status DropCollection(const std::string& name) override {
    std::shared_ptr<CollectionImpl> c;
    fs::path cdir = fs::path(dir_) / "collections";
    fs::path doomed = cdir / absl::StrCat(".dropped-", name, "-", drop_counter_++);
    {
      std::lock_guard l(mu_);
      auto it = collections_.find(name);
      if (it == collections_.end()) {
        return absl::NotFoundError(absl::StrCat("collection \"", name, "\" does not exist"));
      }
      c = it->second;
      std::error_code ec;
      fs::rename(cdir / name, doomed, ec);
      if (ec) return absl::InternalError(absl::StrCat("drop ", name, ": ", ec.message()));
      CAIRN_RETURN_IF_ERROR(storage::SyncDir(cdir.string()));
      collections_.erase(it);
    }
    c->Close();  // waits for calls in flight
    std::error_code ec;
    fs::remove_all(doomed, ec);
    return absl::OkStatus();
  }

  absl::Status Snapshot(const std::string& name, const std::string& target) override {
    CAIRN_ASSIGN_OR_RETURN(auto base, GetCollection(name));
    auto* c = static_cast<CollectionImpl*>(base.get());
    return db::WriteSnapshotDir(target, name, c->config(),
                                [c](const std::string& cdir) { return c->SnapshotShards(cdir); });
  }

  absl::StatusOr<std::shared_ptr<Collection>> RestoreCollection(const std::string& snapshot_dir,
                                                                const std::string& name) override {
    CAIRN_RETURN_IF_ERROR(db::ValidateCollectionName(name));
    CAIRN_ASSIGN_OR_RETURN(db::SnapshotContents snap, db::ReadSnapshotDir(snapshot_dir));
    std::lock_guard l(mu_);
    if (collections_.contains(name)) {
      return absl::AlreadyExistsError(absl::StrCat("collection \"", name, "\" already exists"));
    }
    std::error_code ec;
    fs::path cdir = fs::path(dir_) / "collections";
    fs::path tmp = cdir / (".tmp-" + name);
    fs::remove_all(tmp, ec);
    CAIRN_RETURN_IF_ERROR(db::CopyTree(snap.collection_dir, tmp));
    fs::rename(tmp, cdir / name, ec);
    if (ec) return absl::InternalError(absl::StrCat("rename to ", (cdir / name).string(), ": ", ec.message()));
    CAIRN_RETURN_IF_ERROR(storage::SyncDir(cdir.string()));
    auto c = CollectionImpl::Open(name, (cdir / name).string(), snap.config, options_, Waker(), kv_memory_);
    if (!c.ok()) {
      fs::remove_all(cdir / name, ec);
      return c.status();
    }
    (*c)->SetMemoryBudget(budget_);
    collections_[name] = *c;
    return std::shared_ptr<Collection>(*c);
  }

  const std::string& dir() const override { return dir_; }
  const DatabaseOptions& options() const override { return options_; }
  NodeMemory Memory() const override { return db::NodeMemoryOf(*budget_, *kv_memory_); }

 private:
  std::function<void()> Waker() {
    return [this] {
      {
        std::lock_guard l(maint_mu_);
        maint_pending_ = true;
      }
      maint_cv_.notify_one();
    };
  }

  // The open collections now (a copy of the list, taken under mu_).
  std::vector<std::shared_ptr<CollectionImpl>> Collections() const {
    std::lock_guard g(mu_);
    std::vector<std::shared_ptr<CollectionImpl>> cs;
    for (const auto& [n, c] : collections_) cs.push_back(c);
    return cs;
  }

  // What the collections hold now (MemoryBudget's measure).
  MemoryUsage MeasureMemory() const {
    const std::vector<std::shared_ptr<CollectionImpl>> cs = Collections();
    MemoryUsage u;
    u.storage_bytes = kv_memory_->BlockCacheBytes();  // shared: the collections report their memtables
    for (const auto& c : cs) {
      auto info = c->Info();
      if (!info.ok()) continue;  // closed or dropped meanwhile
      u.index_bytes += info->index_memory_bytes;
      u.storage_bytes += info->storage_memory_bytes;
      if (const uint64_t b = info->index_memory_bytes + info->storage_memory_bytes; b > u.largest_bytes) {
        u.largest = c->name();
        u.largest_bytes = b;
      }
    }
    return u;
  }

  // Frees the HNSW floats kept in memory beside their files (MemoryBudget's
  // reclaim, before it refuses a write).
  uint64_t ReleaseVectors() const {
    const std::vector<std::shared_ptr<CollectionImpl>> cs = Collections();
    uint64_t freed = 0;
    for (const auto& c : cs) freed += c->ReleaseVectors();
    if (freed > 0) db::ReleaseFreeMemory();
    return freed;
  }

  void MaintenanceLoop() {
    std::unique_lock l(maint_mu_);
    while (!stop_) {
      // Also wake periodically: compaction is due after deletes, which do not wake us.
      maint_cv_.wait_for(l, std::chrono::seconds(30), [this] { return stop_ || maint_pending_; });
      if (stop_) break;
      maint_pending_ = false;
      l.unlock();
      const std::vector<std::shared_ptr<CollectionImpl>> cs = Collections();
      for (auto& c : cs) c->RunMaintenance();
      l.lock();
    }
  }

  const std::string dir_;
  const DatabaseOptions options_;
  std::unique_ptr<storage::FileLock> lock_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<CollectionImpl>> collections_;  // guarded by mu_
  std::atomic<uint64_t> drop_counter_{0};

  std::mutex maint_mu_;
  std::condition_variable maint_cv_;
  bool maint_pending_ = false;  // guarded by maint_mu_
  bool stop_ = false;           // guarded by maint_mu_
  std::thread maint_thread_;
  const std::shared_ptr<MemoryBudget> budget_;
  // One block cache and memtable budget for every shard's store.
  const std::shared_ptr<storage::KvMemory> kv_memory_;
};

}  // namespace

static absl::Status ValidateOptions(const DatabaseOptions& o) {
  auto bad = [](const char* field, const char* why) {
    return absl::InvalidArgumentError(absl::StrCat("options.", field, ": ", why));
  };
  if (o.index_threads < 0 || o.index_threads > 1024) return bad("index_threads", "must be 0..1024");
  if (!(o.hnsw_vectors_memory_share >= 0 && o.hnsw_vectors_memory_share <= 1)) {
    return bad("hnsw_vectors_memory_share", "must be between 0 and 1");
  }
  if (o.max_batch_points < 1) return bad("max_batch_points", "must be >= 1");
  if (o.max_batch_bytes < 1024) return bad("max_batch_bytes", "must be >= 1024");
  if (o.max_k < 1 || o.max_k > 1000000) return bad("max_k", "must be 1..1000000");
  if (o.max_queries < 1) return bad("max_queries", "must be >= 1");
  if (o.max_payload_bytes < 2) return bad("max_payload_bytes", "must be >= 2");
  if (o.storage_cache_bytes != 0 && o.storage_cache_bytes < (uint64_t{8} << 20)) {
    return bad("storage_cache_bytes", "must be 0 (sized from the memory limit) or at least 8 MiB");
  }
  if (const uint64_t limit = db::MemoryLimitFor(o.memory_limit_bytes);
      o.storage_cache_bytes != 0 && limit != 0 && o.storage_cache_bytes >= limit) {
    return bad("storage_cache_bytes", "must be below the memory limit (memory_limit_bytes), which counts it");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Database>> Database::Open(const std::string& dir,
                                                         const DatabaseOptions& options) {
  CAIRN_RETURN_IF_ERROR(ValidateOptions(options));
  // Resolving the device logs, once per process, which path runs.
  if (std::string why; options.device != Device::kCpu && !index::gpu::UseGpu(options.device, &why) &&
                       options.device == Device::kGpu) {
    return absl::FailedPreconditionError(
        absl::StrCat("options.device is gpu, but this node has no usable GPU: ", why));
  }
  index::gpu::SetProcessMemoryBudget(options.gpu_memory_budget);
  std::error_code ec;
  bool exists = fs::exists(dir, ec);
  if (!exists) {
    if (!options.create_if_missing) {
      return absl::NotFoundError(absl::StrCat("data directory ", dir, " does not exist"));
    }
    fs::create_directories(dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("create ", dir, ": ", ec.message()));
  } else if (!fs::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " is not a directory"));
  }
  fs::path format_file = fs::path(dir) / "CAIRN";
  // A new directory must be empty, but for our lock file and the format
  // file's temporary copy, left by a process killed while creating it.
  auto check_empty = [&]() -> absl::Status {
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      std::string n = e.path().filename().string();
      if (n == "node.json") {
        return absl::FailedPreconditionError(absl::StrCat(
            "directory ", dir, " belongs to a node of a cluster: serve it with cairnd --cluster"));
      }
      if (n != "LOCK" && n != "CAIRN.tmp") {
        return absl::FailedPreconditionError(absl::StrCat(
            "directory ", dir, " is not empty and not a Cairn data directory (found ", n, ")"));
      }
    }
    return absl::OkStatus();
  };
  // Refuse someone else's directory before the lock file is created in it.
  if (!fs::exists(format_file, ec)) CAIRN_RETURN_IF_ERROR(check_empty());
  CAIRN_ASSIGN_OR_RETURN(auto lock, storage::FileLock::Acquire((fs::path(dir) / "LOCK").string()));
  if (fs::exists(format_file, ec)) {
    CAIRN_ASSIGN_OR_RETURN(std::string text, storage::ReadFile(format_file.string()));
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.contains("format_version") || !j["format_version"].is_number_integer()) {
      return absl::DataLossError(absl::StrCat(format_file.string(), " is malformed"));
    }
    int version = j["format_version"].get<int>();
    if (version != kFormatVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data directory ", dir, " has format version ", version, "; this build of Cairn reads version ",
          kFormatVersion, ". Use a matching Cairn version (or its upgrade tool)"));
    }
  } else {
    // A new directory; check again now that we hold the lock.
    CAIRN_RETURN_IF_ERROR(check_empty());
    fs::remove(fs::path(dir) / "CAIRN.tmp", ec);
    CAIRN_RETURN_IF_ERROR(db::WriteFormatFile(dir));
  }
  auto database = std::make_unique<DatabaseImpl>(dir, options, std::move(lock));
  CAIRN_RETURN_IF_ERROR(database->Load());
  return std::unique_ptr<Database>(std::move(database));
}

}  // namespace cairn
