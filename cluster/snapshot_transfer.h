// Snapshot transfer: how a replica that is behind its leader's compacted log,
// or new, gets the shard's state as files.
//
// A shard's Raft snapshot is its files: a RocksDB checkpoint plus the sealed
// segment files (db::Shard::SnapshotAll). The Raft message that installs it
// carries only a SnapshotDescriptor (an id, the node that serves the files,
// and each file's path, size and CRC). The receiver pulls the files in
// chunks, checks every file's CRC, and only then steps the message into Raft,
// whose apply swaps the staged directory in (InstallStaged).
//
//   leader                                  follower
//   Raft emits InstallSnapshot
//   SnapshotSender::Offer: checkpoint into
//     <group dir>.out/<id>, descriptor  ---> SnapshotReceiver::Offer
//                                           fetch into <group dir>.staged:
//   ReadChunk(id, path, offset)       <---    files already there (a broken
//                                             transfer, or the live replica)
//                                             with the same path, size and CRC
//                                             are kept; partial files resume
//                                           verify, write the COMPLETE marker,
//                                           deliver the message to Raft
//   Done(id, ok) -> Raft's ReportSnapshot <-- once Raft took it (or it failed)
//
// Every path is relative, normal and free of "..", on both sides: a
// descriptor naming any other path is refused whole. The receiver's rate is
// bounded (options), so that a transfer does not starve the writes. A sender
// that hears nothing of a transfer for idle_timeout gives up on it and tells
// Raft, which sends a new snapshot later.
//
// Thread-safety: both classes are thread-safe; hooks run on their worker
// threads.
#ifndef CAIRN_CLUSTER_SNAPSHOT_TRANSFER_H_
#define CAIRN_CLUSTER_SNAPSHOT_TRANSFER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "replication/node.h"

namespace cairn::cluster {

struct SnapshotFile {
  std::string path;  // relative to the snapshot's root
  uint64_t size = 0;
  uint32_t crc = 0;

  bool operator==(const SnapshotFile&) const = default;
};

// What a shard's Raft snapshot message carries.
struct SnapshotDescriptor {
  std::string id;            // unique per checkpoint
  uint64_t source_node = 0;  // serves the files
  std::vector<SnapshotFile> files;

  std::string Encode() const;
  // DataLoss when malformed; InvalidArgument when a path is unsafe.
  static absl::StatusOr<SnapshotDescriptor> Decode(std::string_view data);
};

// Whether `path` is relative, without "." or ".." parts, empty parts or NUL.
bool IsSafeRelativePath(std::string_view path);

// Every regular file under `dir` with its size and CRC, sorted by path.
absl::StatusOr<std::vector<SnapshotFile>> ListSnapshotFiles(const std::string& dir);

// The marker a complete, verified staged snapshot holds (its descriptor).
inline constexpr char kCompleteMarker[] = "SNAPSHOT_COMPLETE";

// Whether `staged` holds snapshot `id`, complete and verified.
bool IsStagedComplete(const std::string& staged, const std::string& id);

// Replaces the directory `live` with `staged` (which IsStagedComplete):
// `live` moves aside to `live`.old, `staged` takes its place, the old copy
// goes. A crash anywhere in between is finished by RecoverInstall.
absl::Status InstallStaged(const std::string& staged, const std::string& live);
// At open, before `live` is used: finishes an install a crash interrupted, or
// puts the old copy back when the staged one is not complete.
absl::Status RecoverInstall(const std::string& staged, const std::string& live);

struct FetchStats {
  uint64_t files_fetched = 0;
  uint64_t files_kept = 0;  // already staged, or linked from the live copy
  uint64_t bytes_fetched = 0;
  uint64_t bytes_kept = 0;
};

// Reads `length` bytes at `offset` of file `path` of snapshot `id` from the
// node that serves it (fewer at the end of the file).
using ChunkReader = std::function<absl::StatusOr<std::string>(const std::string& path, uint64_t offset,
                                                               uint32_t length)>;

struct FetchOptions {
  uint32_t chunk_bytes = 1 << 20;
  // Bytes per second fetched, at most (0: no bound).
  uint64_t rate_bytes_per_second = 0;
  // Checked between chunks: the fetch stops with Cancelled when it returns true.
  std::function<bool()> cancelled;
};

// Fetches the descriptor's files into `staged` (created when missing), keeping
// the files there or in `live` (none when empty) that match, resuming partial ones; verifies
// every file, syncs, and writes the complete marker last. Files in `staged`
// that the descriptor does not name are removed. DataLoss when a file's CRC
// does not match after fetching it whole.
absl::StatusOr<FetchStats> FetchSnapshot(const SnapshotDescriptor& desc, const std::string& staged,
                                         const std::string& live, const ChunkReader& read,
                                         const FetchOptions& options);

struct TransferOptions {
  // A transfer nobody read from for this long has failed. Default: 60 s.
  std::chrono::milliseconds idle_timeout{60000};
  // How long after a failed transfer Raft hears of it (and sends another).
  // Default: 1 s.
  std::chrono::milliseconds retry_after{1000};
  // Transfers served at once; offers beyond fail. Default: 4.
  size_t max_transfers = 4;
};

// The leader's side: makes the checkpoint, sends the descriptor, serves the
// files, and reports the outcome to Raft.
class SnapshotSender {
 public:
  struct Hooks {
    // Writes a checkpoint of group `gid`'s replica into `dir` (not existing).
    std::function<absl::Status(uint64_t gid, const std::string& dir)> checkpoint;
    // Sends a Raft message to a node.
    std::function<void(uint64_t to_node, raft::Transport::GroupMessage gm)> send;
    // Raft's ReportSnapshot.
    std::function<void(uint64_t gid, uint64_t replica, bool ok)> report;
  };
  // Checkpoints live in `root`, which is emptied now.
  SnapshotSender(uint64_t self, std::string root, Hooks hooks, TransferOptions options);
  ~SnapshotSender();

  // A Raft InstallSnapshot message for `to_node`: its data is replaced by the
  // descriptor of a fresh checkpoint.
  void Offer(uint64_t to_node, raft::Transport::GroupMessage gm);
  // A copy of group `gid`'s replica here for a node that need not be in the
  // group (a backup of the collection): a checkpoint made now, served
  // like a Raft snapshot's files until Done or the idle timeout, of which
  // Raft hears nothing. Unavailable while max_transfers are being served.
  absl::StatusOr<SnapshotDescriptor> Export(uint64_t gid);
  // NotFound for an unknown transfer; InvalidArgument for a path it does not hold.
  absl::StatusOr<std::string> ReadChunk(const std::string& id, const std::string& path, uint64_t offset,
                                        uint32_t length);
  // The receiver is done with transfer `id`: Raft took the snapshot (ok), or not.
  void Done(const std::string& id, bool ok, const std::string& error);

  struct Stats {
    uint64_t started = 0, succeeded = 0, failed = 0, bytes_served = 0;
  };
  Stats stats() const;

 private:
  struct Transfer {
    uint64_t gid = 0, replica = 0, to_node = 0;
    std::string dir;
    std::map<std::string, uint64_t> sizes;  // by path
    std::chrono::steady_clock::time_point last_activity;
  };
  // The replica of an Export's transfer (Raft numbers replicas from 1).
  static constexpr uint64_t kExportReplica = 0;
  void Run();
  void Start(uint64_t to_node, raft::Transport::GroupMessage gm);
  // Writes a checkpoint of `gid` into root_/`id` and lists its files.
  absl::StatusOr<SnapshotDescriptor> Checkpoint(uint64_t gid, const std::string& id);
  // REQUIRES: mu_ held.
  void RegisterLocked(const SnapshotDescriptor& desc, uint64_t gid, uint64_t replica, uint64_t to_node);
  // REQUIRES: mu_ held. Ends `id`; Raft hears of it at once (ok) or later.
  void EndLocked(const std::string& id, bool ok);

  const uint64_t self_;
  const std::string root_;
  const Hooks hooks_;
  const TransferOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::deque<std::pair<uint64_t, raft::Transport::GroupMessage>> offers_;
  std::map<std::string, Transfer> transfers_;  // by id
  struct Retry {
    std::chrono::steady_clock::time_point at;
    uint64_t gid, replica;
  };
  std::vector<Retry> retries_;
  uint64_t next_id_ = 1;
  Stats stats_;
  std::thread worker_;
};

// The follower's side: fetches, verifies, and hands the message to Raft.
class SnapshotReceiver {
 public:
  struct Hooks {
    // The live directory of group `gid`'s replica here.
    std::function<std::string(uint64_t gid)> group_dir;
    // Reads a chunk from the node serving snapshot `id`.
    std::function<absl::StatusOr<std::string>(uint64_t node, const std::string& id, const std::string& path,
                                              uint64_t offset, uint32_t length)>
        read_chunk;
    // Tells the serving node how the transfer ended.
    std::function<void(uint64_t node, const std::string& id, bool ok, const std::string& error)> done;
    // Steps the message into Raft here.
    std::function<void(uint64_t from_node, raft::Transport::GroupMessage gm)> deliver;
    // Whether group `gid` here has reached `index` (installed the snapshot,
    // or caught up past it).
    std::function<bool(uint64_t gid, uint64_t index)> reached;
  };
  SnapshotReceiver(Hooks hooks, FetchOptions fetch);
  ~SnapshotReceiver();

  // A Raft InstallSnapshot message carrying a descriptor, from `from_node`.
  void Offer(uint64_t from_node, raft::Transport::GroupMessage gm);
  // Stops the group's fetch, if any, and waits for it to end.
  void Cancel(uint64_t gid);

  struct Stats {
    uint64_t succeeded = 0, failed = 0;
    FetchStats bytes;
  };
  Stats stats() const;

 private:
  struct Fetch {
    std::string id;
    std::shared_ptr<std::atomic<bool>> cancel;
    std::thread thread;
  };
  void Run(uint64_t from_node, raft::Transport::GroupMessage gm, SnapshotDescriptor desc,
           std::shared_ptr<std::atomic<bool>> cancel);

  const Hooks hooks_;
  const FetchOptions fetch_;
  mutable std::mutex mu_;
  std::map<uint64_t, Fetch> fetches_;  // by group
  Stats stats_;
};

}  // namespace cairn::cluster

#endif  // CAIRN_CLUSTER_SNAPSHOT_TRANSFER_H_
