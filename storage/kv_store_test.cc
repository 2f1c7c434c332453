// Tests for KvStore (real RocksDB on a temp dir) and the file primitives.
#include "storage/kv_store.h"

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <thread>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "storage/file_util.h"

namespace cairn::storage {
namespace {

namespace fs = std::filesystem;

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "cairn-storage-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string dir_;
};

using KvStoreTest = TempDirTest;
using FileUtilTest = TempDirTest;

std::unique_ptr<KvStore> OpenOrDie(const std::string& path, KvOptions options = {}) {
  auto kv = KvStore::Open(path, options);
  EXPECT_TRUE(kv.ok()) << kv.status();
  return kv.ok() ? *std::move(kv) : nullptr;
}

std::vector<std::pair<std::string, std::string>> Scan(const KvStore& kv, Cf cf) {
  std::vector<std::pair<std::string, std::string>> out;
  auto it = kv.NewIterator(cf);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    out.emplace_back(std::string(it->key()), std::string(it->value()));
  }
  EXPECT_TRUE(it->status().ok()) << it->status();
  return out;
}

using KV = std::vector<std::pair<std::string, std::string>>;

TEST_F(KvStoreTest, WriteGetMultiGetPerColumnFamily) {
  auto kv = OpenOrDie(Path("db"));
  ASSERT_NE(kv, nullptr);
  WriteBatch b;
  b.Put(Cf::kMeta, "k", "meta");
  b.Put(Cf::kVectors, "k", std::string(512, 'v'));  // over min_blob_size: a blob
  b.Put(Cf::kPayloads, "k", "payload");
  b.Put(Cf::kIds, "k", "ids");
  b.Put(Cf::kRids, "k", "rids");
  b.Put(Cf::kPayloadIndex, "k", "");
  b.Put(Cf::kIds, "other", "x");
  EXPECT_EQ(b.size(), 7u);
  ASSERT_TRUE(kv->Write(b).ok());

  const std::pair<Cf, std::string> want[] = {
      {Cf::kMeta, "meta"}, {Cf::kVectors, std::string(512, 'v')}, {Cf::kPayloads, "payload"},
      {Cf::kIds, "ids"},   {Cf::kRids, "rids"},                   {Cf::kPayloadIndex, ""}};
  for (const auto& [cf, value] : want) {
    auto got = kv->Get(cf, "k");
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->has_value()) << "cf " << static_cast<int>(cf);
    EXPECT_EQ(**got, value) << "cf " << static_cast<int>(cf);
  }
  // Column families are separate key spaces.
  auto absent = kv->Get(Cf::kMeta, "other");
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent->has_value());

  std::vector<std::optional<std::string>> out;
  std::vector<std::string> keys = {"other", "missing", "k"};
  ASSERT_TRUE(kv->MultiGet(Cf::kIds, keys, &out).ok());
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0], std::optional<std::string>("x"));
  EXPECT_EQ(out[1], std::nullopt);
  EXPECT_EQ(out[2], std::optional<std::string>("ids"));

  std::vector<std::string> none;
  out.assign(5, std::string("stale"));
  ASSERT_TRUE(kv->MultiGet(Cf::kIds, none, &out).ok());
  EXPECT_TRUE(out.empty());
}

TEST_F(KvStoreTest, IteratorIsOrderedPerColumnFamilyAndSeeks) {
  auto kv = OpenOrDie(Path("db"));
  ASSERT_NE(kv, nullptr);
  WriteBatch b;
  for (const char* k : {"c", "a", "e", "b", "d"}) b.Put(Cf::kRids, k, std::string("v") + k);
  b.Put(Cf::kIds, "zz", "other cf");
  ASSERT_TRUE(kv->Write(b).ok());

  EXPECT_EQ(Scan(*kv, Cf::kRids),
            (KV{{"a", "va"}, {"b", "vb"}, {"c", "vc"}, {"d", "vd"}, {"e", "ve"}}));
  EXPECT_EQ(Scan(*kv, Cf::kIds), (KV{{"zz", "other cf"}}));
  EXPECT_TRUE(Scan(*kv, Cf::kMeta).empty());

  auto it = kv->NewIterator(Cf::kRids);
  it->Seek("bb");
  ASSERT_TRUE(it->Valid());
  EXPECT_EQ(it->key(), "c");
  it->Seek("f");
  EXPECT_FALSE(it->Valid());
  EXPECT_TRUE(it->status().ok());
}

TEST_F(KvStoreTest, IteratorSeesAPointInTime) {
  auto kv = OpenOrDie(Path("db"));
  ASSERT_NE(kv, nullptr);
  WriteBatch b;
  b.Put(Cf::kMeta, "a", "1");
  ASSERT_TRUE(kv->Write(b).ok());
  auto it = kv->NewIterator(Cf::kMeta);
  WriteBatch later;
  later.Put(Cf::kMeta, "b", "2");
  later.Delete(Cf::kMeta, "a");
  ASSERT_TRUE(kv->Write(later).ok());
  KV seen;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    seen.emplace_back(std::string(it->key()), std::string(it->value()));
  }
  EXPECT_EQ(seen, (KV{{"a", "1"}}));
  EXPECT_EQ(Scan(*kv, Cf::kMeta), (KV{{"b", "2"}}));
}

TEST_F(KvStoreTest, WriteBatchAppliesPutsAndDeletesTogetherInOrder) {
  auto kv = OpenOrDie(Path("db"));
  ASSERT_NE(kv, nullptr);
  WriteBatch setup;
  setup.Put(Cf::kIds, "old", "1");
  setup.Put(Cf::kRids, "gone", "1");
  ASSERT_TRUE(kv->Write(setup).ok());

  WriteBatch a, b;
  a.Put(Cf::kIds, "new", "2");
  a.Delete(Cf::kIds, "old");
  b.Delete(Cf::kRids, "gone");
  b.Put(Cf::kIds, "new", "3");  // later op on the same key wins
  a.Append(b);
  EXPECT_EQ(a.size(), 4u);
  EXPECT_EQ(a.bytes(), std::string("new2oldgonenew3").size());
  ASSERT_TRUE(kv->Write(a).ok());
  EXPECT_EQ(Scan(*kv, Cf::kIds), (KV{{"new", "3"}}));
  EXPECT_TRUE(Scan(*kv, Cf::kRids).empty());

  a.Clear();
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(a.bytes(), 0u);
  ASSERT_TRUE(kv->Write(a).ok());  // an empty batch is a no-op
  EXPECT_EQ(Scan(*kv, Cf::kIds), (KV{{"new", "3"}}));
}

TEST_F(KvStoreTest, ReopenKeepsData) {
  {
    auto kv = OpenOrDie(Path("db"));
    ASSERT_NE(kv, nullptr);
    WriteBatch b;
    for (int i = 0; i < 100; ++i) {
      b.Put(Cf::kVectors, "key" + std::to_string(1000 + i), std::string(300, static_cast<char>(i)));
    }
    b.Put(Cf::kMeta, "m", "meta");
    ASSERT_TRUE(kv->Write(b).ok());
    WriteBatch d;
    d.Delete(Cf::kVectors, "key1050");
    ASSERT_TRUE(kv->Write(d).ok());
  }
  auto kv = OpenOrDie(Path("db"), KvOptions{.create_if_missing = false});
  ASSERT_NE(kv, nullptr);
  auto rows = Scan(*kv, Cf::kVectors);
  ASSERT_EQ(rows.size(), 99u);
  for (const auto& [k, v] : rows) {
    int i = std::stoi(k.substr(3)) - 1000;
    EXPECT_NE(i, 50);
    EXPECT_EQ(v, std::string(300, static_cast<char>(i)));
  }
  auto m = kv->Get(Cf::kMeta, "m");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*m, std::optional<std::string>("meta"));
  // Flush then reopen: data now comes from SST and blob files.
  ASSERT_TRUE(kv->Flush().ok());
  kv.reset();
  kv = OpenOrDie(Path("db"));
  ASSERT_NE(kv, nullptr);
  EXPECT_EQ(Scan(*kv, Cf::kVectors), rows);
  EXPECT_GT(kv->ApproximateMemoryBytes(), 0u);
}

// Stores sharing a KvMemory: their memtables are charged to one cache and
// flushed once together they pass the write buffer limit; cached blocks are
// reported by the KvMemory, not by each store.
TEST_F(KvStoreTest, SharedMemoryBoundsTheMemtablesOfEveryStore) {
  constexpr uint64_t kWriteBuffers = 4ull << 20;
  auto memory = KvMemory::Create(64ull << 20, kWriteBuffers);
  KvOptions options;
  options.sync = false;
  options.memory = memory;
  auto a = OpenOrDie(Path("a"), options);
  auto b = OpenOrDie(Path("b"), options);
  ASSERT_TRUE(a && b);
  // 24 MiB into each store: under the 32 MiB a column family's memtable
  // holds before flushing itself, so only the shared limit flushes them.
  const std::string value(1024, 'p');
  for (int i = 0; i < 24 * 1024; i += 256) {
    for (KvStore* kv : {a.get(), b.get()}) {
      WriteBatch batch;
      for (int j = i; j < i + 256; ++j) batch.Put(Cf::kPayloads, "k" + std::to_string(100000 + j), value);
      ASSERT_TRUE(kv->Write(batch).ok());
    }
  }
  // Flushes are decided on writes and run in the background: small writes
  // (bounded in number and time) until they have caught up.
  for (int i = 0; i < 750 && memory->MemtableBytes() > 3 * kWriteBuffers; ++i) {
    for (KvStore* kv : {a.get(), b.get()}) {
      WriteBatch nudge;
      nudge.Put(Cf::kMeta, "nudge", std::to_string(i));
      ASSERT_TRUE(kv->Write(nudge).ok());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_LE(memory->MemtableBytes(), 3 * kWriteBuffers);  // of the 48 MiB written
  EXPECT_GT(memory->MemtableBytes(), 0u);
  EXPECT_LE(a->ApproximateMemoryBytes() + b->ApproximateMemoryBytes(), 5 * kWriteBuffers);
  // Reads fill the one cache; the stores do not count it.
  const uint64_t a_before = a->ApproximateMemoryBytes();
  for (int i = 0; i < 24 * 1024; i += 97) {
    for (KvStore* kv : {a.get(), b.get()}) {
      auto got = kv->Get(Cf::kPayloads, "k" + std::to_string(100000 + i));
      ASSERT_TRUE(got.ok() && got->has_value());
      EXPECT_EQ(**got, value);
    }
  }
  EXPECT_GT(memory->BlockCacheBytes(), 1ull << 20);
  EXPECT_LE(memory->BlockCacheBytes() + memory->MemtableBytes(), memory->capacity_bytes() + (1ull << 20));
  EXPECT_LT(a->ApproximateMemoryBytes(), a_before + (1ull << 20));
}

TEST_F(KvStoreTest, OpenMissingWithoutCreateFails) {
  auto kv = KvStore::Open(Path("absent"), KvOptions{.create_if_missing = false});
  ASSERT_FALSE(kv.ok());
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kInvalidArgument) << kv.status();
  EXPECT_FALSE(fs::exists(Path("absent/CURRENT")));
}

TEST_F(KvStoreTest, SecondOpenOfSamePathIsFailedPrecondition) {
  auto kv = OpenOrDie(Path("db"));
  ASSERT_NE(kv, nullptr);
  auto second = KvStore::Open(Path("db"), {});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
}

TEST_F(KvStoreTest, CheckpointOpensWithSameDataAndIsIndependent) {
  auto kv = OpenOrDie(Path("db"));
  ASSERT_NE(kv, nullptr);
  WriteBatch b;
  for (int i = 0; i < 50; ++i) {
    b.Put(Cf::kIds, "id" + std::to_string(i), std::to_string(i));
    b.Put(Cf::kVectors, "id" + std::to_string(i), std::string(400, 'a' + i % 26));
  }
  ASSERT_TRUE(kv->Write(b).ok());
  const KV ids = Scan(*kv, Cf::kIds);
  const KV vectors = Scan(*kv, Cf::kVectors);
  ASSERT_TRUE(kv->CreateCheckpoint(Path("cp")).ok());
  // The target must not exist.
  EXPECT_FALSE(kv->CreateCheckpoint(Path("cp")).ok());

  WriteBatch after;
  after.Put(Cf::kIds, "late", "x");
  after.Delete(Cf::kIds, "id0");
  ASSERT_TRUE(kv->Write(after).ok());

  auto cp = OpenOrDie(Path("cp"), KvOptions{.create_if_missing = false});
  ASSERT_NE(cp, nullptr);
  EXPECT_EQ(Scan(*cp, Cf::kIds), ids);
  EXPECT_EQ(Scan(*cp, Cf::kVectors), vectors);
  // And writes to the copy do not reach the source.
  WriteBatch cpw;
  cpw.Put(Cf::kMeta, "only-in-copy", "1");
  ASSERT_TRUE(cp->Write(cpw).ok());
  auto src = kv->Get(Cf::kMeta, "only-in-copy");
  ASSERT_TRUE(src.ok());
  EXPECT_FALSE(src->has_value());
}

TEST_F(FileUtilTest, WriteFileAtomicAndReadFileRoundTrip) {
  const std::string path = Path("f");
  std::string data;
  for (int i = 0; i < 200000; ++i) data.push_back(static_cast<char>(i * 7));
  ASSERT_TRUE(WriteFileAtomic(path, data).ok());
  auto got = ReadFile(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, data);
  ASSERT_TRUE(WriteFileAtomic(path, "replaced").ok());
  got = ReadFile(path);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, "replaced");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  ASSERT_TRUE(WriteFileAtomic(path, "").ok());
  got = ReadFile(path);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, "");

  ASSERT_TRUE(WriteFileSynced(Path("g"), "synced").ok());
  got = ReadFile(Path("g"));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, "synced");
}

TEST_F(FileUtilTest, ReadMissingFileIsNotFound) {
  auto got = ReadFile(Path("missing"));
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(WriteFileAtomic(Path("no/such/dir/f"), "x").ok());
}

TEST_F(FileUtilTest, LinkOrCopyFile) {
  ASSERT_TRUE(WriteFileSynced(Path("a"), "contents").ok());
  ASSERT_TRUE(LinkOrCopyFile(Path("a"), Path("b")).ok());
  auto got = ReadFile(Path("b"));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, "contents");
  EXPECT_FALSE(LinkOrCopyFile(Path("missing"), Path("c")).ok());
}

// Both cache modes write exactly what was appended, across the 4 MiB
// blocks bypass mode writes around the page cache (a tail after the last
// whole block, appends larger than a block, a header written back at 0).
TEST_F(FileUtilTest, SyncedFileWritesWhatWasAppendedInBothCacheModes) {
  constexpr size_t kBlock = 4 << 20;
  std::string big(2 * kBlock + 12345, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
  for (auto cache : {SyncedFile::Cache::kKeep, SyncedFile::Cache::kBypass}) {
    for (size_t total : {size_t{0}, size_t{1}, kBlock - 1, kBlock, kBlock + 1, 2 * kBlock + 12345}) {
      SCOPED_TRACE(::testing::Message() << (cache == SyncedFile::Cache::kBypass ? "bypass " : "keep ") << total);
      const std::string path = Path("f");
      auto f = SyncedFile::Create(path, cache);
      ASSERT_TRUE(f.ok()) << f.status();
      // Small pieces, then one large piece, then small ones again.
      std::string want;
      size_t at = 0;
      for (size_t piece : {size_t{3}, size_t{4093}, kBlock + 7, size_t{1}, size_t{65536}, big.size()}) {
        const size_t take = std::min(piece, total - at);
        ASSERT_TRUE((*f)->Append(std::string_view(big).substr(at, take)).ok());
        want.append(big, at, take);
        at += take;
      }
      ASSERT_EQ(want.size(), total);
      EXPECT_EQ((*f)->size(), total);
      if (total >= 8) {
        ASSERT_TRUE((*f)->WriteAt(0, "HEADER!!").ok());
        want.replace(0, 8, "HEADER!!");
      }
      ASSERT_TRUE((*f)->Close().ok());
      auto got = ReadFile(path);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(got->size(), want.size());
      EXPECT_TRUE(*got == want);
    }
  }
}

TEST(Crc32Test, KnownValues) {
  EXPECT_EQ(Crc32("123456789"), 0xCBF43926u);
  EXPECT_EQ(Crc32(""), 0u);
  // Chaining through the seed equals one pass.
  EXPECT_EQ(Crc32("56789", Crc32("1234")), 0xCBF43926u);
  EXPECT_NE(Crc32("123456780"), 0xCBF43926u);
}

TEST(Crc32cTest, KnownValuesAndBothPathsAgree) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);  // CRC-32C's check value
  EXPECT_EQ(Crc32cPortable("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c("56789", Crc32c("1234")), 0xE3069283u);
  // Every length and alignment of the 8-byte steps, against the table.
  std::string data(3000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131 + 7) & 0xff);
  for (size_t start : {0, 1, 3, 7}) {
    for (size_t len : {0, 1, 7, 8, 9, 63, 64, 65, 1000, 2990}) {
      const std::string_view v(data.data() + start, len);
      EXPECT_EQ(Crc32c(v), Crc32cPortable(v)) << start << "+" << len;
    }
  }
  EXPECT_NE(Crc32c("123456780"), 0xE3069283u);
}

TEST_F(FileUtilTest, SecondFileLockOnSamePathFails) {
  const std::string path = Path("LOCK");
  auto first = FileLock::Acquire(path);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = FileLock::Acquire(path);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  first->reset();  // release
  auto third = FileLock::Acquire(path);
  EXPECT_TRUE(third.ok()) << third.status();
}

TEST_F(FileUtilTest, SyncDir) {
  EXPECT_TRUE(SyncDir(dir_).ok());
  auto s = SyncDir(Path("missing"));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace cairn::storage
