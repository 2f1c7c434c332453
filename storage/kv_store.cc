#include "storage/kv_store.h"

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/write_batch.h>
#include <rocksdb/write_buffer_manager.h>

#include "absl/strings/str_cat.h"

namespace cairn::storage {
namespace {

constexpr const char* kCfNames[kNumCf] = {"default", "vectors", "payloads",
                                          "ids",     "rids",    "pindex"};

rocksdb::Slice ToSlice(std::string_view s) { return rocksdb::Slice(s.data(), s.size()); }

absl::Status FromRocks(const rocksdb::Status& s, std::string_view context) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(std::string(context), ": ", s.ToString());
  switch (s.code()) {
    case rocksdb::Status::kNotFound:
      return absl::NotFoundError(msg);
    case rocksdb::Status::kCorruption:
      return absl::DataLossError(msg);
    case rocksdb::Status::kInvalidArgument:
      return absl::InvalidArgumentError(msg);
    case rocksdb::Status::kIOError:
      if (s.subcode() == rocksdb::Status::kNoSpace) return absl::ResourceExhaustedError(msg);
      if (s.ToString().find("lock") != std::string::npos) {
        return absl::FailedPreconditionError(msg);
      }
      return absl::UnavailableError(msg);
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTryAgain:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

class RocksIterator final : public KvIterator {
 public:
  explicit RocksIterator(rocksdb::Iterator* it) : it_(it) {}
  void SeekToFirst() override { it_->SeekToFirst(); }
  void Seek(std::string_view t) override { it_->Seek(ToSlice(t)); }
  bool Valid() const override { return it_->Valid(); }
  void Next() override { it_->Next(); }
  std::string_view key() const override {
    auto k = it_->key();
    return {k.data(), k.size()};
  }
  std::string_view value() const override {
    auto v = it_->value();
    return {v.data(), v.size()};
  }
  absl::Status status() const override { return FromRocks(it_->status(), "iterate"); }

 private:
  std::unique_ptr<rocksdb::Iterator> it_;
};

}  // namespace

void WriteBatch::Put(Cf cf, std::string_view key, std::string_view value) {
  ops_.push_back(Op{cf, false, std::string(key), std::string(value)});
  bytes_ += key.size() + value.size();
}

void WriteBatch::Delete(Cf cf, std::string_view key) {
  ops_.push_back(Op{cf, true, std::string(key), {}});
  bytes_ += key.size();
}

void WriteBatch::Append(const WriteBatch& other) {
  ops_.insert(ops_.end(), other.ops_.begin(), other.ops_.end());
  bytes_ += other.bytes_;
}

struct KvMemory::Rep {
  std::shared_ptr<rocksdb::Cache> cache;
  std::shared_ptr<rocksdb::WriteBufferManager> write_buffers;
};

KvMemory::KvMemory(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}
KvMemory::~KvMemory() = default;

std::shared_ptr<KvMemory> KvMemory::Create(uint64_t capacity_bytes, uint64_t write_buffer_bytes) {
  auto rep = std::make_unique<Rep>();
  rep->cache = rocksdb::NewLRUCache(capacity_bytes);
  rep->write_buffers = std::make_shared<rocksdb::WriteBufferManager>(write_buffer_bytes, rep->cache);
  return std::shared_ptr<KvMemory>(new KvMemory(std::move(rep)));
}

uint64_t KvMemory::capacity_bytes() const { return rep_->cache->GetCapacity(); }
uint64_t KvMemory::write_buffer_bytes() const { return rep_->write_buffers->buffer_size(); }
uint64_t KvMemory::MemtableBytes() const { return rep_->write_buffers->memory_usage(); }
uint64_t KvMemory::BlockCacheBytes() const {
  const uint64_t usage = rep_->cache->GetUsage(), memtables = MemtableBytes();
  return usage > memtables ? usage - memtables : 0;
}

struct KvStore::Rep {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::WriteOptions write_options;
  std::shared_ptr<KvMemory> memory;      // shared, when given
  std::shared_ptr<rocksdb::Cache> cache;  // the shared one or its own
  std::vector<rocksdb::ColumnFamilyOptions> cf_options;

  ~Rep() {
    if (db) {
      for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
      db->Close();
    }
  }
};

KvStore::KvStore(std::string path, std::unique_ptr<Rep> rep)
    : path_(std::move(path)), rep_(std::move(rep)) {}
KvStore::~KvStore() = default;

absl::StatusOr<std::unique_ptr<KvStore>> KvStore::Open(const std::string& path,
                                                       const KvOptions& options) {
  auto rep = std::make_unique<Rep>();
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = options.create_if_missing;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 2;
  db_options.keep_log_file_num = 3;
  db_options.max_total_wal_size = 256ull << 20;
  // Good-citizen defaults for a library that may host many shards per process.
  db_options.max_open_files = 512;
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;

  rep->memory = options.memory;
  if (rep->memory != nullptr) {
    rep->cache = rep->memory->rep_->cache;
    db_options.write_buffer_manager = rep->memory->rep_->write_buffers;
  } else {
    rep->cache = rocksdb::NewLRUCache(64ull << 20);
  }
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rep->cache;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.cache_index_and_filter_blocks = true;
  // Partitioned index and filters: a large file's index (a 512 MB vectors file
  // has about 2 MB of it) would not fit one shard of the cache and be read
  // back from disk on every lookup; partitions of 4 KiB are cached like data,
  // and only their small top level is pinned.
  table.index_type = rocksdb::BlockBasedTableOptions::kTwoLevelIndexSearch;
  table.partition_filters = true;
  table.metadata_block_size = 4096;
  table.pin_top_level_index_and_filter = true;
  table.cache_index_and_filter_blocks_with_high_priority = true;

  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (int i = 0; i < kNumCf; ++i) {
    rocksdb::ColumnFamilyOptions cf;
    cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
    cf.write_buffer_size = 32ull << 20;
    if (static_cast<Cf>(i) == Cf::kVectors) {
      // Raw vectors are large and write-once: keep them out of the LSM tree so
      // compaction moves only keys and blob references.
      cf.enable_blob_files = true;
      cf.min_blob_size = 256;
      cf.blob_file_size = 256ull << 20;
      cf.enable_blob_garbage_collection = true;
      cf.write_buffer_size = 64ull << 20;
      cf.compression = rocksdb::kNoCompression;  // floats do not compress
    } else {
      cf.compression = rocksdb::kLZ4Compression;
    }
    cfs.emplace_back(kCfNames[i], cf);
    rep->cf_options.push_back(cf);
  }

  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, path, cfs, &rep->handles, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("open RocksDB at ", path));
  rep->db.reset(raw);
  rep->write_options.sync = options.sync;
  return std::unique_ptr<KvStore>(new KvStore(path, std::move(rep)));
}

absl::Status KvStore::Write(const WriteBatch& batch) {
  if (write_failed_.load()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store ", path_, " refuses writes after an earlier write failed; reopen it"));
  }
  rocksdb::WriteBatch wb;
  for (const auto& op : batch.ops_) {
    auto* h = rep_->handles[static_cast<int>(op.cf)];
    rocksdb::Status s = op.is_delete ? wb.Delete(h, ToSlice(op.key))
                                     : wb.Put(h, ToSlice(op.key), ToSlice(op.value));
    if (!s.ok()) return FromRocks(s, "build write batch");
  }
  rocksdb::Status s = rep_->db->Write(rep_->write_options, &wb);
  if (!s.ok()) {
    write_failed_.store(true);
    return FromRocks(s, absl::StrCat("write to ", path_));
  }
  return absl::OkStatus();
}

namespace {

class RocksSstWriter final : public SstWriter {
 public:
  RocksSstWriter(Cf cf, std::string path, const rocksdb::Options& options)
      : cf_(cf), path_(std::move(path)), writer_(rocksdb::EnvOptions(), options) {}
  absl::Status Open() { return FromRocks(writer_.Open(path_), absl::StrCat("create ", path_)); }
  absl::Status Put(std::string_view key, std::string_view value) override {
    ++entries_;
    return FromRocks(writer_.Put(ToSlice(key), ToSlice(value)), absl::StrCat("write ", path_));
  }
  uint64_t entries() const override { return entries_; }
  Cf cf() const override { return cf_; }
  const std::string& path() const override { return path_; }
  absl::Status Finish() override {
    if (entries_ == 0) return absl::OkStatus();
    return FromRocks(writer_.Finish(), absl::StrCat("finish ", path_));
  }

 private:
  Cf cf_;
  std::string path_;
  rocksdb::SstFileWriter writer_;
  uint64_t entries_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SstWriter>> KvStore::NewSstWriter(Cf cf, const std::string& path) const {
  rocksdb::Options options(rocksdb::DBOptions(), rep_->cf_options[static_cast<int>(cf)]);
  auto w = std::make_unique<RocksSstWriter>(cf, path, options);
  if (auto s = w->Open(); !s.ok()) return s;
  return std::unique_ptr<SstWriter>(std::move(w));
}

absl::Status KvStore::IngestFiles(const std::vector<SstWriter*>& files) {
  std::vector<rocksdb::IngestExternalFileArg> args;
  for (const SstWriter* f : files) {
    if (f->entries() == 0) continue;
    rocksdb::IngestExternalFileArg a;
    a.column_family = rep_->handles[static_cast<int>(f->cf())];
    a.external_files = {f->path()};
    a.options.move_files = true;
    a.options.snapshot_consistency = false;
    args.push_back(std::move(a));
  }
  if (args.empty()) return absl::OkStatus();
  return FromRocks(rep_->db->IngestExternalFiles(args), absl::StrCat("ingest files into ", path_));
}

absl::StatusOr<std::optional<std::string>> KvStore::Get(Cf cf, std::string_view key) const {
  std::string value;
  rocksdb::Status s = rep_->db->Get(rocksdb::ReadOptions(), rep_->handles[static_cast<int>(cf)],
                                    ToSlice(key), &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, "get");
  return std::optional<std::string>(std::move(value));
}

KvStore::ReadView::~ReadView() {
  store_->rep_->db->ReleaseSnapshot(static_cast<const rocksdb::Snapshot*>(snapshot_));
}

std::unique_ptr<KvStore::ReadView> KvStore::NewReadView() const {
  return std::unique_ptr<ReadView>(new ReadView(this, rep_->db->GetSnapshot()));
}

absl::Status KvStore::MultiGet(Cf cf, absl::Span<const std::string> keys,
                               std::vector<std::optional<std::string>>* out, const ReadView* at) const {
  out->assign(keys.size(), std::nullopt);
  if (keys.empty()) return absl::OkStatus();
  std::vector<rocksdb::Slice> slices;
  slices.reserve(keys.size());
  for (const auto& k : keys) slices.emplace_back(k);
  std::vector<rocksdb::PinnableSlice> values(keys.size());
  std::vector<rocksdb::Status> statuses(keys.size());
  rocksdb::ReadOptions ro;
  if (at != nullptr) ro.snapshot = static_cast<const rocksdb::Snapshot*>(at->snapshot_);
  rep_->db->MultiGet(ro, rep_->handles[static_cast<int>(cf)], keys.size(), slices.data(), values.data(),
                     statuses.data());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (statuses[i].IsNotFound()) continue;
    if (!statuses[i].ok()) return FromRocks(statuses[i], "multiget");
    (*out)[i] = values[i].ToString();
  }
  return absl::OkStatus();
}

std::unique_ptr<KvIterator> KvStore::NewIterator(Cf cf) const {
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;  // scans should not evict the hot set
  return std::make_unique<RocksIterator>(
      rep_->db->NewIterator(ro, rep_->handles[static_cast<int>(cf)]));
}

absl::Status KvStore::CreateCheckpoint(const std::string& dir) const {
  rocksdb::Checkpoint* cp = nullptr;
  rocksdb::Status s = rocksdb::Checkpoint::Create(rep_->db.get(), &cp);
  if (!s.ok()) return FromRocks(s, "checkpoint");
  std::unique_ptr<rocksdb::Checkpoint> owned(cp);
  // Flush first so the checkpoint is SST files (hard links) rather than a WAL copy.
  s = cp->CreateCheckpoint(dir, /*log_size_for_flush=*/0);
  return FromRocks(s, absl::StrCat("checkpoint to ", dir));
}

absl::Status KvStore::Flush() {
  rocksdb::FlushOptions fo;
  fo.wait = true;
  rocksdb::Status s = rep_->db->Flush(fo, rep_->handles);
  return FromRocks(s, "flush");
}

absl::Status KvStore::SyncWal() {
  if (write_failed_.load()) return absl::FailedPreconditionError("an earlier write failed: reopen the store");
  rocksdb::Status s = rep_->db->SyncWAL();
  if (!s.ok()) write_failed_.store(true);
  return FromRocks(s, "sync the write-ahead log");
}

uint64_t KvStore::ApproximateMemoryBytes() const {
  uint64_t total = 0, v = 0;
  for (const char* prop : {"rocksdb.cur-size-all-mem-tables", "rocksdb.estimate-table-readers-mem"}) {
    for (auto* h : rep_->handles) {
      if (rep_->db->GetIntProperty(h, prop, &v)) total += v;
    }
  }
  return rep_->memory != nullptr ? total : total + rep_->cache->GetUsage();
}

}  // namespace cairn::storage
