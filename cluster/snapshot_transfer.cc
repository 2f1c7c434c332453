#include "cluster/snapshot_transfer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"
#include "storage/byte_codec.h"
#include "storage/file_util.h"

namespace cairn::cluster {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using storage::ByteReader;
using storage::PutU64;

constexpr char kDescriptorMagic[] = "cairn-snapshot-1";

void PutString(std::string* out, std::string_view s) {
  PutU64(out, s.size());
  out->append(s);
}

// The CRC of a file's first `limit` bytes (all of it by default).
absl::StatusOr<uint32_t> FileCrc(const std::string& path, uint64_t limit = UINT64_MAX) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::string buf(1 << 20, '\0');
  uint32_t crc = 0;
  uint64_t left = limit;
  while (left > 0 && in) {
    in.read(buf.data(), static_cast<std::streamsize>(std::min<uint64_t>(buf.size(), left)));
    const auto n = static_cast<uint64_t>(in.gcount());
    if (n == 0) break;
    crc = storage::Crc32(std::string_view(buf.data(), n), crc);
    left -= n;
  }
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", path));
  return crc;
}

bool SameFile(const std::string& path, const SnapshotFile& f) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec) || fs::file_size(path, ec) != f.size || ec) return false;
  auto crc = FileCrc(path);
  return crc.ok() && *crc == f.crc;
}

absl::Status SyncFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open ", path));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return absl::InternalError(absl::StrCat("fsync ", path, " failed"));
  return absl::OkStatus();
}

// Appends the rest of `f` to `path` from the reader, at most `rate` bytes a
// second, and checks the whole file's CRC.
absl::Status FetchFile(const SnapshotFile& f, const std::string& path, uint64_t have, const ChunkReader& read,
                       const FetchOptions& o, FetchStats* stats) {
  std::ofstream out(path, std::ios::binary | std::ios::app);
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  const auto start = Clock::now();
  uint64_t fetched = 0;
  uint64_t offset = have;
  while (offset < f.size) {
    if (o.cancelled && o.cancelled()) return absl::CancelledError("the snapshot fetch was cancelled");
    const auto want = static_cast<uint32_t>(std::min<uint64_t>(o.chunk_bytes, f.size - offset));
    CAIRN_ASSIGN_OR_RETURN(std::string chunk, read(f.path, offset, want));
    if (chunk.empty() || chunk.size() > want) {
      return absl::DataLossError(absl::StrCat(f.path, ": the sender returned ", chunk.size(), " bytes at offset ",
                                              offset, " of ", f.size));
    }
    out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
    offset += chunk.size();
    fetched += chunk.size();
    stats->bytes_fetched += chunk.size();
    if (o.rate_bytes_per_second > 0) {
      const auto due = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                                   static_cast<double>(fetched) / static_cast<double>(o.rate_bytes_per_second)));
      std::this_thread::sleep_until(due);
    }
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  CAIRN_ASSIGN_OR_RETURN(uint32_t crc, FileCrc(path));
  if (crc != f.crc) {
    std::error_code ec;
    fs::remove(path, ec);  // fetched again whole next time
    return absl::DataLossError(absl::StrCat(f.path, ": checksum mismatch after the transfer"));
  }
  ++stats->files_fetched;
  return SyncFile(path);
}

}  // namespace

// ---- descriptor -------------------------------------------------------------------

std::string SnapshotDescriptor::Encode() const {
  std::string out;
  PutString(&out, kDescriptorMagic);
  PutString(&out, id);
  PutU64(&out, source_node);
  PutU64(&out, files.size());
  for (const auto& f : files) {
    PutString(&out, f.path);
    PutU64(&out, f.size);
    PutU64(&out, f.crc);
  }
  return out;
}

absl::StatusOr<SnapshotDescriptor> SnapshotDescriptor::Decode(std::string_view data) {
  ByteReader r{data};
  if (r.Bytes() != kDescriptorMagic || !r.ok) return absl::DataLossError("not a shard snapshot descriptor");
  SnapshotDescriptor d;
  d.id = r.Bytes();
  d.source_node = r.U64();
  const uint64_t n = r.U64();
  if (!r.ok || n > r.in.size()) return absl::DataLossError("malformed snapshot descriptor");
  for (uint64_t i = 0; i < n && r.ok; ++i) {
    SnapshotFile f;
    f.path = r.Bytes();
    f.size = r.U64();
    f.crc = static_cast<uint32_t>(r.U64());
    if (r.ok && !IsSafeRelativePath(f.path)) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot descriptor names an unsafe path: \"", f.path, "\""));
    }
    d.files.push_back(std::move(f));
  }
  if (!r.ok || !r.in.empty() || d.id.empty() || !IsSafeRelativePath(d.id)) {
    return absl::DataLossError("malformed snapshot descriptor");
  }
  return d;
}

bool IsSafeRelativePath(std::string_view path) {
  if (path.empty() || path.front() == '/' || path.find('\0') != std::string_view::npos || path.size() > 4096) {
    return false;
  }
  while (true) {
    const size_t slash = path.find('/');
    const std::string_view part = path.substr(0, slash);
    if (part.empty() || part == "." || part == "..") return false;
    if (slash == std::string_view::npos) return true;
    path.remove_prefix(slash + 1);
  }
}

absl::StatusOr<std::vector<SnapshotFile>> ListSnapshotFiles(const std::string& dir) {
  std::vector<SnapshotFile> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    SnapshotFile f;
    f.path = fs::relative(it->path(), dir, ec).string();
    f.size = it->file_size(ec);
    if (ec) break;
    CAIRN_ASSIGN_OR_RETURN(f.crc, FileCrc(it->path().string()));
    out.push_back(std::move(f));
  }
  if (ec) return absl::InternalError(absl::StrCat("list ", dir, ": ", ec.message()));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
  return out;
}

// ---- staging and installing -----------------------------------------------------------

bool IsStagedComplete(const std::string& staged, const std::string& id) {
  auto marker = storage::ReadFile((fs::path(staged) / kCompleteMarker).string());
  if (!marker.ok()) return false;
  auto d = SnapshotDescriptor::Decode(*marker);
  return d.ok() && d->id == id;
}

absl::StatusOr<FetchStats> FetchSnapshot(const SnapshotDescriptor& desc, const std::string& staged,
                                         const std::string& live, const ChunkReader& read,
                                         const FetchOptions& options) {
  FetchStats stats;
  std::error_code ec;
  fs::remove(fs::path(staged) / kCompleteMarker, ec);
  fs::create_directories(staged, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", staged, ": ", ec.message()));
  // What is staged and not named goes (an older snapshot's files).
  {
    std::set<std::string> named;
    for (const auto& f : desc.files) named.insert(f.path);
    CAIRN_ASSIGN_OR_RETURN(auto present, ListSnapshotFiles(staged));
    for (const auto& f : present) {
      if (!named.count(f.path)) fs::remove(fs::path(staged) / f.path, ec);
    }
  }
  for (const auto& f : desc.files) {
    const std::string path = (fs::path(staged) / f.path).string();
    fs::create_directories(fs::path(path).parent_path(), ec);
    if (ec) return absl::InternalError(absl::StrCat("create ", fs::path(path).parent_path().string(), ": ", ec.message()));
    uint64_t have = fs::is_regular_file(path, ec) ? fs::file_size(path, ec) : 0;
    if (ec) have = 0;
    if (have == f.size && SameFile(path, f)) {
      ++stats.files_kept;
      stats.bytes_kept += f.size;
      continue;
    }
    const std::string live_copy = live.empty() ? std::string() : (fs::path(live) / f.path).string();
    if (!live_copy.empty() && SameFile(live_copy, f)) {
      fs::remove(path, ec);
      CAIRN_RETURN_IF_ERROR(storage::LinkOrCopyFile(live_copy, path));
      ++stats.files_kept;
      stats.bytes_kept += f.size;
      continue;
    }
    // A partial file resumes where it stopped when its start is right (the
    // whole file's CRC is checked at the end either way).
    if (have > f.size) {
      fs::remove(path, ec);
      have = 0;
    }
    stats.bytes_kept += have;
    absl::Status s = FetchFile(f, path, have, read, options, &stats);
    if (absl::IsDataLoss(s) && have > 0) {
      // The kept start was another file's: once more, from the start.
      stats.bytes_kept -= have;
      s = FetchFile(f, path, 0, read, options, &stats);
    }
    CAIRN_RETURN_IF_ERROR(s);
  }
  for (const auto& entry : fs::recursive_directory_iterator(staged, ec)) {
    if (entry.is_directory()) CAIRN_RETURN_IF_ERROR(storage::SyncDir(entry.path().string()));
  }
  CAIRN_RETURN_IF_ERROR(storage::WriteFileAtomic((fs::path(staged) / kCompleteMarker).string(), desc.Encode()));
  return stats;
}

absl::Status InstallStaged(const std::string& staged, const std::string& live) {
  std::error_code ec;
  const std::string old = live + ".old";
  fs::remove_all(old, ec);
  if (fs::exists(live, ec)) {
    fs::rename(live, old, ec);
    if (ec) return absl::InternalError(absl::StrCat("rename ", live, ": ", ec.message()));
  }
  fs::rename(staged, live, ec);
  if (ec) return absl::InternalError(absl::StrCat("rename ", staged, " to ", live, ": ", ec.message()));
  CAIRN_RETURN_IF_ERROR(storage::SyncDir(fs::path(live).parent_path().string()));
  fs::remove(fs::path(live) / kCompleteMarker, ec);
  fs::remove_all(old, ec);
  return absl::OkStatus();
}

absl::Status RecoverInstall(const std::string& staged, const std::string& live) {
  std::error_code ec;
  const std::string old = live + ".old";
  if (!fs::exists(live, ec) && fs::exists(old, ec)) {
    // Moved aside, not replaced: the staged copy when complete, else the old.
    const bool complete = fs::exists(fs::path(staged) / kCompleteMarker, ec);
    fs::rename(complete ? staged : old, live, ec);
    if (ec) return absl::InternalError(absl::StrCat("recover ", live, ": ", ec.message()));
    CAIRN_RETURN_IF_ERROR(storage::SyncDir(fs::path(live).parent_path().string()));
  }
  fs::remove(fs::path(live) / kCompleteMarker, ec);
  fs::remove_all(old, ec);
  return absl::OkStatus();
}

// ---- sender -------------------------------------------------------------------------

SnapshotSender::SnapshotSender(uint64_t self, std::string root, Hooks hooks, TransferOptions options)
    : self_(self), root_(std::move(root)), hooks_(std::move(hooks)), options_(options) {
  std::error_code ec;
  fs::remove_all(root_, ec);
  worker_ = std::thread([this] { Run(); });
}

SnapshotSender::~SnapshotSender() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
  std::error_code ec;
  fs::remove_all(root_, ec);
}

void SnapshotSender::Offer(uint64_t to_node, raft::Transport::GroupMessage gm) {
  {
    std::lock_guard l(mu_);
    offers_.emplace_back(to_node, std::move(gm));
  }
  cv_.notify_all();
}

void SnapshotSender::Run() {
  std::unique_lock l(mu_);
  while (!stop_) {
    // Idle, it sleeps until an offer; with transfers or retries to watch, it
    // looks again every 100 ms.
    const auto wait = transfers_.empty() && retries_.empty() ? std::chrono::milliseconds(3600 * 1000)
                                                              : std::chrono::milliseconds(100);
    cv_.wait_for(l, wait, [this] { return stop_ || !offers_.empty(); });
    if (stop_) break;
    const auto now = Clock::now();
    for (auto it = transfers_.begin(); it != transfers_.end();) {
      auto next = std::next(it);
      if (now - it->second.last_activity > options_.idle_timeout) {
        std::fprintf(stderr, "cairn: snapshot %s of group %llu to node %llu: nothing read for %lld ms, given up\n",
                     it->first.c_str(), static_cast<unsigned long long>(it->second.gid),
                     static_cast<unsigned long long>(it->second.to_node),
                     static_cast<long long>(options_.idle_timeout.count()));
        EndLocked(it->first, false);
      }
      it = next;
    }
    std::vector<Retry> due;
    for (auto it = retries_.begin(); it != retries_.end();) {
      if (it->at <= now) {
        due.push_back(*it);
        it = retries_.erase(it);
      } else {
        ++it;
      }
    }
    auto offers = std::move(offers_);
    offers_.clear();
    l.unlock();
    for (const auto& r : due) hooks_.report(r.gid, r.replica, false);
    for (auto& [to, gm] : offers) Start(to, std::move(gm));
    l.lock();
  }
}

absl::StatusOr<SnapshotDescriptor> SnapshotSender::Checkpoint(uint64_t gid, const std::string& id) {
  const std::string dir = (fs::path(root_) / id).string();
  std::error_code ec;
  fs::create_directories(root_, ec);
  absl::Status s = hooks_.checkpoint(gid, dir);
  SnapshotDescriptor desc;
  desc.id = id;
  desc.source_node = self_;
  if (s.ok()) {
    auto files = ListSnapshotFiles(dir);
    if (files.ok()) {
      desc.files = *std::move(files);
    } else {
      s = files.status();
    }
  }
  if (!s.ok()) {
    fs::remove_all(dir, ec);
    return s;
  }
  return desc;
}

void SnapshotSender::RegisterLocked(const SnapshotDescriptor& desc, uint64_t gid, uint64_t replica,
                                    uint64_t to_node) {
  Transfer t{gid, replica, to_node, (fs::path(root_) / desc.id).string(), {}, Clock::now()};
  for (const auto& f : desc.files) t.sizes[f.path] = f.size;
  transfers_[desc.id] = std::move(t);
  ++stats_.started;
}

void SnapshotSender::Start(uint64_t to_node, raft::Transport::GroupMessage gm) {
  const uint64_t gid = gm.group, replica = gm.msg.to;
  std::string id;
  {
    std::lock_guard l(mu_);
    // One transfer per replica: a newer offer replaces an older one.
    for (auto it = transfers_.begin(); it != transfers_.end();) {
      auto next = std::next(it);
      if (it->second.gid == gid && it->second.replica == replica) {
        std::error_code ec;
        fs::remove_all(it->second.dir, ec);
        transfers_.erase(it);
      }
      it = next;
    }
    if (transfers_.size() >= options_.max_transfers) {
      retries_.push_back({Clock::now() + options_.retry_after, gid, replica});
      return;
    }
    id = absl::StrCat(self_, "-", gid, "-", replica, "-", next_id_++, "-", std::random_device{}());
  }
  auto desc = Checkpoint(gid, id);
  std::lock_guard l(mu_);
  if (!desc.ok()) {
    std::fprintf(stderr, "cairn: cannot make a snapshot of group %llu for node %llu: %s\n",
                 static_cast<unsigned long long>(gid), static_cast<unsigned long long>(to_node),
                 desc.status().ToString().c_str());
    ++stats_.failed;
    retries_.push_back({Clock::now() + options_.retry_after, gid, replica});
    return;
  }
  RegisterLocked(*desc, gid, replica, to_node);
  gm.msg.snapshot->data = desc->Encode();
  hooks_.send(to_node, std::move(gm));
}

absl::StatusOr<SnapshotDescriptor> SnapshotSender::Export(uint64_t gid) {
  std::string id;
  {
    std::lock_guard l(mu_);
    if (transfers_.size() >= options_.max_transfers) {
      return absl::UnavailableError(absl::StrCat("node ", self_, " is serving ", transfers_.size(),
                                                 " snapshot transfers, its most at once; retry"));
    }
    id = absl::StrCat(self_, "-", gid, "-export-", next_id_++, "-", std::random_device{}());
  }
  CAIRN_ASSIGN_OR_RETURN(SnapshotDescriptor desc, Checkpoint(gid, id));
  {
    std::lock_guard l(mu_);
    RegisterLocked(desc, gid, kExportReplica, /*to_node=*/0);
  }
  cv_.notify_all();  // the idle timeout watches it
  return desc;
}

absl::StatusOr<std::string> SnapshotSender::ReadChunk(const std::string& id, const std::string& path,
                                                      uint64_t offset, uint32_t length) {
  std::string file;
  uint64_t size = 0;
  {
    std::lock_guard l(mu_);
    auto it = transfers_.find(id);
    if (it == transfers_.end()) return absl::NotFoundError(absl::StrCat("no snapshot transfer \"", id, "\" here"));
    auto f = it->second.sizes.find(path);
    if (f == it->second.sizes.end()) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot \"", id, "\" holds no file \"", path, "\""));
    }
    it->second.last_activity = Clock::now();
    file = (fs::path(it->second.dir) / path).string();
    size = f->second;
  }
  if (offset > size) return absl::OutOfRangeError(absl::StrCat(path, ": offset ", offset, " is past its end"));
  const uint64_t n = std::min<uint64_t>({length, size - offset, 4u << 20});
  std::ifstream in(file, std::ios::binary);
  std::string out(n, '\0');
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(out.data(), static_cast<std::streamsize>(n));
  if (!in || static_cast<uint64_t>(in.gcount()) != n) return absl::InternalError(absl::StrCat("cannot read ", file));
  std::lock_guard l(mu_);
  stats_.bytes_served += n;
  return out;
}

void SnapshotSender::Done(const std::string& id, bool ok, const std::string& error) {
  std::lock_guard l(mu_);
  auto it = transfers_.find(id);
  if (it == transfers_.end()) return;
  if (!ok) {
    std::fprintf(stderr, "cairn: snapshot %s of group %llu: node %llu could not take it: %s\n", id.c_str(),
                 static_cast<unsigned long long>(it->second.gid),
                 static_cast<unsigned long long>(it->second.to_node), error.c_str());
  }
  EndLocked(id, ok);
  cv_.notify_all();  // a retry to time
}

void SnapshotSender::EndLocked(const std::string& id, bool ok) {
  auto it = transfers_.find(id);
  std::error_code ec;
  fs::remove_all(it->second.dir, ec);
  const uint64_t gid = it->second.gid, replica = it->second.replica;
  transfers_.erase(it);
  if (replica == kExportReplica) {
    ++(ok ? stats_.succeeded : stats_.failed);
    return;  // Raft does not wait for it
  }
  if (ok) {
    ++stats_.succeeded;
    // Raft probes the replica from past the snapshot.
    retries_.erase(std::remove_if(retries_.begin(), retries_.end(),
                                  [&](const Retry& r) { return r.gid == gid && r.replica == replica; }),
                   retries_.end());
    hooks_.report(gid, replica, true);
  } else {
    ++stats_.failed;
    retries_.push_back({Clock::now() + options_.retry_after, gid, replica});
  }
}

SnapshotSender::Stats SnapshotSender::stats() const {
  std::lock_guard l(mu_);
  return stats_;
}

// ---- receiver ----------------------------------------------------------------------------

SnapshotReceiver::SnapshotReceiver(Hooks hooks, FetchOptions fetch) : hooks_(std::move(hooks)), fetch_(std::move(fetch)) {}

SnapshotReceiver::~SnapshotReceiver() {
  std::map<uint64_t, Fetch> fetches;
  {
    std::lock_guard l(mu_);
    for (auto& [gid, f] : fetches_) f.cancel->store(true);
    fetches = std::move(fetches_);
    fetches_.clear();
  }
  for (auto& [gid, f] : fetches) f.thread.join();
}

void SnapshotReceiver::Offer(uint64_t from_node, raft::Transport::GroupMessage gm) {
  if (!gm.msg.snapshot) return;
  auto desc = SnapshotDescriptor::Decode(gm.msg.snapshot->data);
  if (!desc.ok()) {
    std::fprintf(stderr, "cairn: a snapshot of group %llu from node %llu was refused: %s\n",
                 static_cast<unsigned long long>(gm.group), static_cast<unsigned long long>(from_node),
                 desc.status().ToString().c_str());
    return;
  }
  std::unique_lock l(mu_);
  auto it = fetches_.find(gm.group);
  if (it != fetches_.end()) {
    if (it->second.id == desc->id) return;  // already on it
    // A newer snapshot: the older fetch stops (its files are kept if they
    // match) before the newer one starts in the same directory.
    it->second.cancel->store(true);
    Fetch old = std::move(it->second);
    fetches_.erase(it);
    l.unlock();
    old.thread.join();
    l.lock();
    if (fetches_.count(gm.group)) return;  // another offer came meanwhile
  }
  Fetch& f = fetches_[gm.group];
  f.id = desc->id;
  f.cancel = std::make_shared<std::atomic<bool>>(false);
  f.thread = std::thread([this, from_node, gm = std::move(gm), d = *std::move(desc), c = f.cancel]() mutable {
    Run(from_node, std::move(gm), std::move(d), c);
  });
}

void SnapshotReceiver::Cancel(uint64_t gid) {
  Fetch f;
  {
    std::lock_guard l(mu_);
    auto it = fetches_.find(gid);
    if (it == fetches_.end()) return;
    it->second.cancel->store(true);
    f = std::move(it->second);
    fetches_.erase(it);
  }
  f.thread.join();
}

void SnapshotReceiver::Run(uint64_t from_node, raft::Transport::GroupMessage gm, SnapshotDescriptor desc,
                           std::shared_ptr<std::atomic<bool>> cancel) {
  const uint64_t gid = gm.group;
  const uint64_t index = gm.msg.snapshot->meta.index;
  const std::string live = hooks_.group_dir(gid);
  FetchOptions o = fetch_;
  o.cancelled = [cancel, outer = fetch_.cancelled] { return cancel->load() || (outer && outer()); };
  auto read = [&](const std::string& path, uint64_t offset, uint32_t length) {
    return hooks_.read_chunk(desc.source_node, desc.id, path, offset, length);
  };
  const auto start = Clock::now();
  auto stats = FetchSnapshot(desc, live + ".staged", live, read, o);
  absl::Status s = stats.status();
  if (s.ok()) {
    hooks_.deliver(from_node, std::move(gm));
    // Raft takes it within a turn or two; a group not hosted here (yet) drops
    // it, and the leader hears so and sends another later.
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!hooks_.reached(gid, index) && Clock::now() < deadline && !cancel->load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!hooks_.reached(gid, index)) s = absl::UnavailableError("the replica did not take the snapshot");
  }
  if (!cancel->load()) hooks_.done(desc.source_node, desc.id, s.ok(), s.ToString());
  std::lock_guard l(mu_);
  if (s.ok()) {
    ++stats_.succeeded;
    stats_.bytes.files_fetched += stats->files_fetched;
    stats_.bytes.files_kept += stats->files_kept;
    stats_.bytes.bytes_fetched += stats->bytes_fetched;
    stats_.bytes.bytes_kept += stats->bytes_kept;
    std::fprintf(stderr,
                 "cairn: group %llu: snapshot %s installed from node %llu in %.2f s: %llu bytes fetched, %llu kept\n",
                 static_cast<unsigned long long>(gid), desc.id.c_str(),
                 static_cast<unsigned long long>(desc.source_node),
                 std::chrono::duration<double>(Clock::now() - start).count(),
                 static_cast<unsigned long long>(stats->bytes_fetched),
                 static_cast<unsigned long long>(stats->bytes_kept));
  } else {
    ++stats_.failed;
    std::fprintf(stderr, "cairn: group %llu: snapshot %s from node %llu failed: %s\n",
                 static_cast<unsigned long long>(gid), desc.id.c_str(),
                 static_cast<unsigned long long>(desc.source_node), s.ToString().c_str());
  }
}

SnapshotReceiver::Stats SnapshotReceiver::stats() const {
  std::lock_guard l(mu_);
  return stats_;
}

}  // namespace cairn::cluster
