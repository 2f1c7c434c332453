// Snapshot transfer between a sender and a receiver wired to each other in
// process: files arrive whole and verified, a broken transfer resumes, files
// the receiver has are kept, corruption and unsafe paths are refused, and an
// install interrupted by a crash is finished or rolled back at open.
#include "cluster/snapshot_transfer.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "storage/file_util.h"

namespace cairn::cluster {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

void WriteFile(const fs::path& p, const std::string& data) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << data;
}

std::string Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

uint64_t TotalBytes(const SnapshotDescriptor& d) {
  uint64_t n = 0;
  for (const auto& f : d.files) n += f.size;
  return n;
}

std::string Slurp(const fs::path& p) {
  auto s = storage::ReadFile(p.string());
  return s.ok() ? *s : "<missing>";
}

class SnapshotTransferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "cairn-snap-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    // A shard's files: a store, segments, one of them several chunks long.
    src_ = dir_ / "source";
    WriteFile(src_ / "kv" / "000012.sst", Random(300000, 1));
    WriteFile(src_ / "kv" / "MANIFEST-000005", Random(1000, 2));
    WriteFile(src_ / "segments" / "seg-7.cseg", Random(2500000, 3));
    WriteFile(src_ / "segments" / "seg-9.cseg", "");
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  SnapshotDescriptor Describe() {
    auto files = ListSnapshotFiles(src_.string());
    EXPECT_TRUE(files.ok()) << files.status();
    SnapshotDescriptor d;
    d.id = "1-5-2-1-99";
    d.source_node = 1;
    d.files = *files;
    return d;
  }
  // Reads from the source directory, counting chunks.
  ChunkReader Reader(int* chunks, int fail_after = -1, bool corrupt = false) {
    return [=, this](const std::string& path, uint64_t offset, uint32_t length) -> absl::StatusOr<std::string> {
      if (fail_after >= 0 && *chunks >= fail_after) return absl::UnavailableError("the connection broke");
      ++*chunks;
      std::string all = Slurp(src_ / path);
      std::string out = all.substr(offset, length);
      if (corrupt && !out.empty()) out[0] ^= 1;
      return out;
    };
  }
  void ExpectSameFiles(const fs::path& a, const fs::path& b) {
    auto fa = ListSnapshotFiles(a.string());
    auto fb = ListSnapshotFiles(b.string());
    ASSERT_TRUE(fa.ok() && fb.ok());
    EXPECT_EQ(*fa, *fb);
  }

  fs::path dir_, src_;
};

TEST_F(SnapshotTransferTest, DescriptorsRoundTripAndUnsafePathsAreRefused) {
  SnapshotDescriptor d = Describe();
  ASSERT_EQ(d.files.size(), 4u);
  EXPECT_EQ(TotalBytes(d), 300000u + 1000 + 2500000);
  auto back = SnapshotDescriptor::Decode(d.Encode());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id, d.id);
  EXPECT_EQ(back->source_node, 1u);
  EXPECT_EQ(back->files, d.files);
  for (const char* bad : {"../etc/passwd", "/etc/passwd", "kv/../../x", "a//b", "./a", "a/.", ""}) {
    EXPECT_FALSE(IsSafeRelativePath(bad)) << bad;
    SnapshotDescriptor e = d;
    e.files[0].path = bad;
    EXPECT_FALSE(SnapshotDescriptor::Decode(e.Encode()).ok()) << bad;
  }
  EXPECT_TRUE(IsSafeRelativePath("kv/000012.sst"));
  std::string cut = d.Encode();
  cut.pop_back();
  EXPECT_EQ(SnapshotDescriptor::Decode(cut).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(SnapshotDescriptor::Decode("garbage").status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(SnapshotTransferTest, ABrokenTransferResumesAndKeepsWhatArrived) {
  const SnapshotDescriptor d = Describe();
  const fs::path staged = dir_ / "g.staged", live = dir_ / "g";
  FetchOptions o;
  o.chunk_bytes = 256 << 10;
  int chunks = 0;
  auto first = FetchSnapshot(d, staged.string(), live.string(), Reader(&chunks, /*fail_after=*/5), o);
  EXPECT_EQ(first.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(IsStagedComplete(staged.string(), d.id));
  chunks = 0;
  auto second = FetchSnapshot(d, staged.string(), live.string(), Reader(&chunks), o);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(IsStagedComplete(staged.string(), d.id));
  EXPECT_FALSE(IsStagedComplete(staged.string(), "another id"));
  // The five chunks that arrived (two files whole, two chunks of the third)
  // are not fetched again.
  EXPECT_EQ(second->bytes_kept, 300000u + 1000 + 2 * o.chunk_bytes);
  EXPECT_EQ(second->bytes_fetched, TotalBytes(d) - second->bytes_kept);
  fs::remove(staged / kCompleteMarker);
  ExpectSameFiles(staged, src_);
}

TEST_F(SnapshotTransferTest, FilesTheReplicaHasAreKeptAndStrayFilesGo) {
  const SnapshotDescriptor d = Describe();
  const fs::path staged = dir_ / "g.staged", live = dir_ / "g";
  // The live replica has the big segment (same content), and a store file
  // of its own under a name the snapshot uses too (different content).
  fs::create_directories(live / "segments");
  fs::copy_file(src_ / "segments" / "seg-7.cseg", live / "segments" / "seg-7.cseg");
  WriteFile(live / "kv" / "000012.sst", Random(300000, 42));
  WriteFile(staged / "kv" / "000099.sst", "from an older snapshot");
  int chunks = 0;
  auto r = FetchSnapshot(d, staged.string(), live.string(), Reader(&chunks), FetchOptions());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->bytes_kept, 2500000u);
  EXPECT_EQ(r->bytes_fetched, 301000u);
  EXPECT_FALSE(fs::exists(staged / "kv" / "000099.sst"));
  fs::remove(staged / kCompleteMarker);
  ExpectSameFiles(staged, src_);
}

TEST_F(SnapshotTransferTest, ACorruptedTransferIsNeverComplete) {
  const SnapshotDescriptor d = Describe();
  const fs::path staged = dir_ / "g.staged";
  int chunks = 0;
  auto r = FetchSnapshot(d, staged.string(), (dir_ / "g").string(), Reader(&chunks, -1, /*corrupt=*/true),
                         FetchOptions());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_FALSE(IsStagedComplete(staged.string(), d.id));
}

TEST_F(SnapshotTransferTest, TheRateIsBounded) {
  const SnapshotDescriptor d = Describe();
  FetchOptions o;
  o.chunk_bytes = 256 << 10;
  o.rate_bytes_per_second = 8 << 20;  // 2.8 MB: at least a third of a second
  int chunks = 0;
  const auto start = std::chrono::steady_clock::now();
  auto r = FetchSnapshot(d, (dir_ / "g.staged").string(), (dir_ / "g").string(), Reader(&chunks), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE(std::chrono::steady_clock::now() - start, 300ms);
}

TEST_F(SnapshotTransferTest, AnInterruptedInstallIsFinishedOrRolledBackAtOpen) {
  const SnapshotDescriptor d = Describe();
  const fs::path live = dir_ / "g", staged = dir_ / "g.staged";
  WriteFile(live / "kv" / "OLD", "old replica");
  int chunks = 0;
  ASSERT_TRUE(FetchSnapshot(d, staged.string(), live.string(), Reader(&chunks), FetchOptions()).ok());
  // Crash after the old copy moved aside, before the staged one moved in.
  fs::rename(live, dir_ / "g.old");
  ASSERT_TRUE(RecoverInstall(staged.string(), live.string()).ok());
  EXPECT_TRUE(fs::exists(live / "segments" / "seg-7.cseg"));
  EXPECT_FALSE(fs::exists(live / kCompleteMarker));
  EXPECT_FALSE(fs::exists(dir_ / "g.old"));
  // The same crash with an incomplete staged copy: the old copy comes back.
  fs::rename(live, dir_ / "g.old");
  WriteFile(staged / "kv" / "partial", "x");
  ASSERT_TRUE(RecoverInstall(staged.string(), live.string()).ok());
  EXPECT_TRUE(fs::exists(live / "segments" / "seg-7.cseg"));
  // And a whole install.
  fs::remove_all(staged);
  ASSERT_TRUE(FetchSnapshot(d, staged.string(), live.string(), Reader(&chunks), FetchOptions()).ok());
  ASSERT_TRUE(InstallStaged(staged.string(), live.string()).ok());
  EXPECT_FALSE(fs::exists(staged));
  ExpectSameFiles(live, src_);
}

// The sender and the receiver, wired to each other as the peer port wires them.
TEST_F(SnapshotTransferTest, ASenderAndAReceiverMoveASnapshotAndRaftHearsOfIt) {
  std::mutex mu;
  std::vector<std::pair<uint64_t, bool>> reports;  // replica, ok
  std::vector<raft::Transport::GroupMessage> delivered;
  bool break_next = true;
  SnapshotSender* sender_ptr = nullptr;
  SnapshotReceiver* receiver_ptr = nullptr;
  SnapshotSender::Hooks sh;
  sh.checkpoint = [&](uint64_t gid, const std::string& dir) {
    EXPECT_EQ(gid, 5u);
    fs::copy(src_, dir, fs::copy_options::recursive);
    return absl::OkStatus();
  };
  sh.send = [&](uint64_t to_node, raft::Transport::GroupMessage gm) {
    EXPECT_EQ(to_node, 2u);
    receiver_ptr->Offer(1, std::move(gm));
  };
  sh.report = [&](uint64_t gid, uint64_t replica, bool ok) {
    std::lock_guard l(mu);
    reports.push_back({replica, ok});
  };
  TransferOptions to;
  to.retry_after = 50ms;
  to.idle_timeout = 2s;
  SnapshotSender sender(1, (dir_ / "out").string(), sh, to);
  sender_ptr = &sender;
  SnapshotReceiver::Hooks rh;
  rh.group_dir = [&](uint64_t gid) { return (dir_ / "node2" / absl::StrCat(gid)).string(); };
  rh.read_chunk = [&](uint64_t node, const std::string& id, const std::string& path, uint64_t offset,
                      uint32_t length) -> absl::StatusOr<std::string> {
    EXPECT_EQ(node, 1u);
    {
      std::lock_guard l(mu);
      if (break_next && offset > 0) {
        break_next = false;
        return absl::UnavailableError("the connection broke");
      }
    }
    return sender_ptr->ReadChunk(id, path, offset, length);
  };
  rh.done = [&](uint64_t node, const std::string& id, bool ok, const std::string& error) {
    sender_ptr->Done(id, ok, error);
  };
  rh.deliver = [&](uint64_t from, raft::Transport::GroupMessage gm) {
    std::lock_guard l(mu);
    delivered.push_back(std::move(gm));
  };
  rh.reached = [&](uint64_t gid, uint64_t index) {
    std::lock_guard l(mu);
    return !delivered.empty();
  };
  FetchOptions fo;
  fo.chunk_bytes = 512 << 10;
  SnapshotReceiver receiver(rh, fo);
  receiver_ptr = &receiver;

  auto offer = [&] {
    raft::Transport::GroupMessage gm;
    gm.group = 5;
    gm.msg.type = raft::MessageType::kSnap;
    gm.msg.from = 51;
    gm.msg.to = 52;
    gm.msg.snapshot = raft::Snapshot{};
    gm.msg.snapshot->meta.index = 700;
    sender.Offer(2, gm);
  };
  auto wait = [&](size_t n) {
    for (int i = 0; i < 1000; ++i) {
      {
        std::lock_guard l(mu);
        if (reports.size() >= n) return;
      }
      std::this_thread::sleep_for(10ms);
    }
  };
  // The first transfer breaks: Raft hears of it after retry_after.
  offer();
  wait(1);
  {
    std::lock_guard l(mu);
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_EQ(reports[0], std::make_pair(uint64_t{52}, false));
    EXPECT_TRUE(delivered.empty());
  }
  // Raft offers again: a new checkpoint, the rest of the files.
  offer();
  wait(2);
  std::lock_guard l(mu);
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[1], std::make_pair(uint64_t{52}, true));
  ASSERT_EQ(delivered.size(), 1u);
  auto d = SnapshotDescriptor::Decode(delivered[0].msg.snapshot->data);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->source_node, 1u);
  EXPECT_TRUE(IsStagedComplete((dir_ / "node2" / "5.staged").string(), d->id));
  auto st = receiver.stats();
  EXPECT_EQ(st.succeeded, 1u);
  EXPECT_GT(st.bytes.bytes_kept, 0u);
  EXPECT_EQ(sender.stats().succeeded, 1u);
  EXPECT_EQ(sender.stats().failed, 1u);
  // Served files are gone once done; an unknown transfer or path is refused.
  EXPECT_FALSE(fs::exists(dir_ / "out" / d->id));
  EXPECT_EQ(sender.ReadChunk(d->id, "kv/000012.sst", 0, 10).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SnapshotTransferTest, ASenderServesOnlyTheFilesOfItsSnapshots) {
  std::mutex mu;
  std::vector<bool> reports;
  std::string sent_id;
  SnapshotSender::Hooks sh;
  sh.checkpoint = [&](uint64_t, const std::string& dir) {
    fs::copy(src_, dir, fs::copy_options::recursive);
    return absl::OkStatus();
  };
  sh.send = [&](uint64_t, raft::Transport::GroupMessage gm) {
    std::lock_guard l(mu);
    sent_id = SnapshotDescriptor::Decode(gm.msg.snapshot->data)->id;
  };
  sh.report = [&](uint64_t, uint64_t, bool ok) {
    std::lock_guard l(mu);
    reports.push_back(ok);
  };
  TransferOptions to;
  to.idle_timeout = 300ms;
  to.retry_after = 10ms;
  SnapshotSender sender(1, (dir_ / "out").string(), sh, to);
  raft::Transport::GroupMessage gm;
  gm.group = 5;
  gm.msg.type = raft::MessageType::kSnap;
  gm.msg.to = 52;
  gm.msg.snapshot = raft::Snapshot{};
  sender.Offer(2, gm);
  std::string id;
  for (int i = 0; i < 500 && id.empty(); ++i) {
    std::this_thread::sleep_for(10ms);
    std::lock_guard l(mu);
    id = sent_id;
  }
  ASSERT_FALSE(id.empty());
  auto ok = sender.ReadChunk(id, "kv/MANIFEST-000005", 10, 20);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, Slurp(src_ / "kv" / "MANIFEST-000005").substr(10, 20));
  EXPECT_EQ(sender.ReadChunk(id, "../source/kv/MANIFEST-000005", 0, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sender.ReadChunk(id, "kv/MANIFEST-000005", 5000, 10).status().code(), absl::StatusCode::kOutOfRange);
  // Nobody reads it any more: given up, and Raft hears so.
  for (int i = 0; i < 300; ++i) {
    std::this_thread::sleep_for(10ms);
    std::lock_guard l(mu);
    if (!reports.empty()) break;
  }
  std::lock_guard l(mu);
  EXPECT_EQ(reports, std::vector<bool>{false});
  EXPECT_FALSE(fs::exists(dir_ / "out" / id));
}

}  // namespace
}  // namespace cairn::cluster
