#include <algorithm>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"
#include "replication/log_storage.h"

namespace cairn::raft {

absl::Status Bootstrap(LogStorage* storage, std::vector<uint64_t> voters, std::vector<uint64_t> learners) {
  if (storage->LastIndex() != 0 || storage->InitialHardState() != HardState{}) {
    return absl::FailedPreconditionError("raft: bootstrap needs an empty log");
  }
  if (voters.empty()) return absl::InvalidArgumentError("raft: bootstrap needs at least one voter");
  std::sort(voters.begin(), voters.end());
  voters.erase(std::unique(voters.begin(), voters.end()), voters.end());
  if (voters.front() == kNone) return absl::InvalidArgumentError("raft: node ids must be nonzero");
  std::sort(learners.begin(), learners.end());
  learners.erase(std::unique(learners.begin(), learners.end()), learners.end());
  for (uint64_t l : learners) {
    if (l == kNone || std::binary_search(voters.begin(), voters.end(), l)) {
      return absl::InvalidArgumentError("raft: learners must be nonzero and not voters");
    }
  }
  Snapshot snap;
  snap.meta = SnapshotMeta{.index = 1, .term = 1, .conf = ConfState{.voters = std::move(voters), .learners = std::move(learners)}};
  CAIRN_RETURN_IF_ERROR(storage->ApplySnapshot(snap));
  return storage->SetHardState(HardState{.term = 1, .vote = kNone, .commit = 1});
}

absl::Status LogStorage::SaveReady(const Ready& rd) {
  if (rd.snapshot) CAIRN_RETURN_IF_ERROR(ApplySnapshot(*rd.snapshot));
  CAIRN_RETURN_IF_ERROR(Append(rd.entries));
  if (rd.hard_state) CAIRN_RETURN_IF_ERROR(SetHardState(*rd.hard_state));
  return absl::OkStatus();
}

MemoryStorage::MemoryStorage() { ents_.push_back(Entry{}); }

absl::StatusOr<std::vector<Entry>> MemoryStorage::Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes) const {
  if (lo < FirstIndex()) return absl::NotFoundError(absl::StrCat("raft log: entry ", lo, " is compacted"));
  if (hi > LastIndex() + 1 || lo > hi) {
    return absl::OutOfRangeError(absl::StrCat("raft log: entries [", lo, ", ", hi, ") past the last, ", LastIndex()));
  }
  std::vector<Entry> out;
  uint64_t bytes = 0;
  const uint64_t off = ents_[0].index;
  for (uint64_t i = lo; i < hi; ++i) {
    const Entry& e = ents_[i - off];
    bytes += e.data.size();
    if (!out.empty() && bytes > max_bytes) break;
    out.push_back(e);
  }
  return out;
}

absl::StatusOr<uint64_t> MemoryStorage::Term(uint64_t i) const {
  const uint64_t off = ents_[0].index;
  if (i < off) return absl::NotFoundError(absl::StrCat("raft log: entry ", i, " is compacted"));
  if (i - off >= ents_.size()) return absl::OutOfRangeError(absl::StrCat("raft log: no entry ", i));
  return ents_[i - off].term;
}

absl::Status MemoryStorage::Append(const std::vector<Entry>& entries) {
  if (entries.empty()) return absl::OkStatus();
  const uint64_t first = entries.front().index;
  if (first > LastIndex() + 1) {
    return absl::InternalError(absl::StrCat("raft log: append at ", first, " leaves a gap after ", LastIndex()));
  }
  // Entries the snapshot already covers are skipped.
  auto from = entries.begin();
  while (from != entries.end() && from->index < FirstIndex()) ++from;
  if (from == entries.end()) return absl::OkStatus();
  ents_.resize(from->index - ents_[0].index);
  ents_.insert(ents_.end(), from, entries.end());
  return absl::OkStatus();
}

absl::Status MemoryStorage::SetHardState(const HardState& hs) {
  hard_ = hs;
  return absl::OkStatus();
}

absl::Status MemoryStorage::ApplySnapshot(const Snapshot& snap) {
  if (snap.meta.index <= snap_.meta.index) return absl::OkStatus();  // older than what we have
  snap_ = snap;
  ents_.assign(1, Entry{.term = snap.meta.term, .index = snap.meta.index, .data = {}});
  return absl::OkStatus();
}

absl::Status MemoryStorage::CreateSnapshot(uint64_t index, const ConfState& conf, std::string data, uint64_t keep) {
  if (index <= snap_.meta.index) return absl::OkStatus();
  if (index > LastIndex()) {
    return absl::InvalidArgumentError(absl::StrCat("raft log: snapshot at ", index, " past the last entry ", LastIndex()));
  }
  const uint64_t off = ents_[0].index;
  snap_.meta = SnapshotMeta{.index = index, .term = ents_[index - off].term, .conf = conf};
  snap_.data = std::move(data);
  // Keep `keep` entries before the snapshot point (compaction lags it).
  const uint64_t compact_to = index > keep ? index - keep : 0;
  if (compact_to > off) ents_.erase(ents_.begin(), ents_.begin() + static_cast<ptrdiff_t>(compact_to - off));
  return absl::OkStatus();
}

}  // namespace cairn::raft
