// RecordingMachine: a raft::StateMachine for tests that keeps, in memory, the
// data of every entry it applied, in order, and refuses to apply an index
// twice. It outlives its node's restarts, as a shard keeps its data on its own
// disk. The data "refuse" is refused (InvalidArgument) and changes nothing.
// Its snapshots carry the whole list in their data.
#ifndef CAIRN_REPLICATION_TEST_STATE_MACHINE_H_
#define CAIRN_REPLICATION_TEST_STATE_MACHINE_H_

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "replication/node.h"
#include "storage/byte_codec.h"

namespace cairn::raft {

class RecordingMachine final : public StateMachine {
 public:
  // How long WaitFor waits: generous, for sanitizer builds on two busy cores.
  static constexpr std::chrono::seconds kWait{20};

  absl::Status Apply(const std::vector<Entry>& entries, std::vector<absl::StatusOr<uint64_t>>* results) override {
    std::lock_guard l(mu_);
    for (const auto& e : entries) {
      if (e.index <= applied_) return absl::InternalError(absl::StrCat("entry ", e.index, " applied twice"));
      applied_ = e.index;
      if (e.type == EntryType::kNormal && !e.data.empty()) {
        if (e.data == "refuse") {
          results->push_back(absl::InvalidArgumentError("refused"));
          continue;
        }
        log_.push_back(e.data);
      }
      results->push_back(static_cast<uint64_t>(log_.size()));
    }
    cv_.notify_all();
    return absl::OkStatus();
  }
  uint64_t AppliedIndex() const override {
    std::lock_guard l(mu_);
    return applied_;
  }
  absl::Status Restore(const Snapshot& snapshot) override {
    {
      // A held install waits (a large snapshot being opened).
      std::unique_lock g(gate_mu_);
      restoring_ = true;
      gate_cv_.notify_all();
      gate_cv_.wait_for(g, kWait, [&] { return !held_; });
      restoring_ = false;
    }
    std::lock_guard l(mu_);
    std::vector<std::string> log;
    storage::ByteReader r{snapshot.data};
    while (r.ok && !r.in.empty()) log.push_back(r.Bytes());
    if (!r.ok) return absl::DataLossError("malformed snapshot");
    log_ = std::move(log);
    applied_ = snapshot.meta.index;
    ++restores_;
    cv_.notify_all();
    return absl::OkStatus();
  }
  absl::StatusOr<Compaction> PrepareCompaction() override {
    std::lock_guard l(mu_);
    Compaction c;
    c.index = applied_;
    for (const auto& d : log_) {
      storage::PutU64(&c.data, d.size());
      c.data.append(d);
    }
    return c;
  }
  // Installs wait in Restore until released (or kWait).
  void HoldRestores() {
    std::lock_guard g(gate_mu_);
    held_ = true;
  }
  void ReleaseRestores() {
    std::lock_guard g(gate_mu_);
    held_ = false;
    gate_cv_.notify_all();
  }
  // Waits until an install is waiting in Restore.
  bool WaitForHeldRestore() {
    std::unique_lock g(gate_mu_);
    return gate_cv_.wait_for(g, kWait, [&] { return restoring_; });
  }
  // Snapshots installed.
  int restores() const {
    std::lock_guard l(mu_);
    return restores_;
  }
  std::vector<std::string> log() const {
    std::lock_guard l(mu_);
    return log_;
  }
  bool Contains(const std::string& s) const {
    std::lock_guard l(mu_);
    return std::find(log_.begin(), log_.end(), s) != log_.end();
  }
  // Waits until the log holds `n` entries.
  bool WaitFor(size_t n) const {
    std::unique_lock l(mu_);
    return cv_.wait_for(l, kWait, [&] { return log_.size() >= n; });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::mutex gate_mu_;
  std::condition_variable gate_cv_;
  bool held_ = false;       // guarded by gate_mu_
  bool restoring_ = false;  // guarded by gate_mu_
  uint64_t applied_ = 0;
  int restores_ = 0;
  std::vector<std::string> log_;
};

}  // namespace cairn::raft

#endif  // CAIRN_REPLICATION_TEST_STATE_MACHINE_H_
