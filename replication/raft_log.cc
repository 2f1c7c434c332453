#include "replication/raft_log.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "replication/check.h"

namespace cairn::raft {

RaftLog::RaftLog(const LogStorage* storage, uint64_t committed, uint64_t applied)
    : storage_(storage), offset_(storage->LastIndex() + 1), committed_(committed), applied_(applied) {
  CAIRN_CHECK(applied <= committed && committed <= storage->LastIndex(),
              "applied %llu, committed %llu, last index %llu", static_cast<unsigned long long>(applied),
              static_cast<unsigned long long>(committed), static_cast<unsigned long long>(storage->LastIndex()));
}

uint64_t RaftLog::FirstIndex() const {
  return unstable_snap_ ? unstable_snap_->meta.index + 1 : storage_->FirstIndex();
}

uint64_t RaftLog::LastIndex() const {
  if (!unstable_.empty()) return offset_ + unstable_.size() - 1;
  if (unstable_snap_) return unstable_snap_->meta.index;
  return storage_->LastIndex();
}

absl::StatusOr<uint64_t> RaftLog::Term(uint64_t i) const {
  const uint64_t first = FirstIndex();
  if (i + 1 < first) return absl::NotFoundError(absl::StrCat("raft log: entry ", i, " is compacted"));
  if (i > LastIndex()) return absl::OutOfRangeError(absl::StrCat("raft log: no entry ", i));
  if (unstable_snap_ && i == unstable_snap_->meta.index) return unstable_snap_->meta.term;
  if (!unstable_.empty() && i >= offset_) return unstable_[i - offset_].term;
  return storage_->Term(i);
}

uint64_t RaftLog::TermOrZero(uint64_t i) const {
  auto t = Term(i);
  return t.ok() ? *t : 0;
}

bool RaftLog::MatchTerm(uint64_t i, uint64_t term) const {
  auto t = Term(i);
  return t.ok() && *t == term;
}

bool RaftLog::IsUpToDate(uint64_t last_index, uint64_t last_term) const {
  const uint64_t our_term = LastTerm();
  return last_term > our_term || (last_term == our_term && last_index >= LastIndex());
}

std::optional<uint64_t> RaftLog::MaybeAppend(uint64_t index, uint64_t log_term, uint64_t commit,
                                             const std::vector<Entry>& entries) {
  if (!MatchTerm(index, log_term)) return std::nullopt;
  const uint64_t last_new = index + entries.size();
  // The first entry that is new or conflicts; entries we hold already are kept
  // (a delayed, duplicated AppendEntries must not truncate the log, §5.3).
  size_t from = 0;
  while (from < entries.size() && MatchTerm(entries[from].index, entries[from].term)) ++from;
  if (from < entries.size()) {
    CAIRN_CHECK(entries[from].index > committed_, "entry %llu conflicts with the committed log (commit %llu)",
                static_cast<unsigned long long>(entries[from].index), static_cast<unsigned long long>(committed_));
    Append(std::vector<Entry>(entries.begin() + static_cast<ptrdiff_t>(from), entries.end()));
  }
  CommitTo(std::min(commit, last_new));
  return last_new;
}

uint64_t RaftLog::Append(std::vector<Entry> entries) {
  if (entries.empty()) return LastIndex();
  const uint64_t first = entries.front().index;
  CAIRN_CHECK(first > committed_, "append at %llu would overwrite committed %llu",
              static_cast<unsigned long long>(first), static_cast<unsigned long long>(committed_));
  CAIRN_CHECK(first <= LastIndex() + 1, "append at %llu leaves a gap after %llu",
              static_cast<unsigned long long>(first), static_cast<unsigned long long>(LastIndex()));
  if (first == offset_ + unstable_.size()) {
    unstable_.insert(unstable_.end(), std::make_move_iterator(entries.begin()), std::make_move_iterator(entries.end()));
  } else if (first <= offset_) {
    // Replaces stable entries too: the driver's Append truncates them.
    offset_ = first;
    unstable_ = std::move(entries);
  } else {
    unstable_.resize(first - offset_);
    unstable_.insert(unstable_.end(), std::make_move_iterator(entries.begin()), std::make_move_iterator(entries.end()));
  }
  return LastIndex();
}

std::pair<uint64_t, uint64_t> RaftLog::FindConflictByTerm(uint64_t index, uint64_t term) const {
  for (uint64_t i = index;; --i) {
    auto t = Term(i);
    if (!t.ok()) return {i, 0};
    if (*t <= term || i == 0) return {i, *t};
  }
}

absl::StatusOr<std::vector<Entry>> RaftLog::Slice(uint64_t lo, uint64_t hi, uint64_t max_bytes) const {
  if (lo < FirstIndex()) return absl::NotFoundError(absl::StrCat("raft log: entry ", lo, " is compacted"));
  CAIRN_CHECK(lo <= hi && hi <= LastIndex() + 1, "slice [%llu, %llu) out of range",
              static_cast<unsigned long long>(lo), static_cast<unsigned long long>(hi));
  std::vector<Entry> out;
  if (lo == hi) return out;
  uint64_t bytes = 0;
  if (lo < offset_) {
    auto stable = storage_->Entries(lo, std::min(hi, offset_), max_bytes);
    if (!stable.ok()) return stable.status();
    out = std::move(*stable);
    for (const Entry& e : out) bytes += e.data.size();
    if (out.back().index + 1 < std::min(hi, offset_)) return out;  // the byte limit cut it short
  }
  for (uint64_t i = std::max(lo, offset_); i < hi; ++i) {
    const Entry& e = unstable_[i - offset_];
    bytes += e.data.size();
    if (!out.empty() && bytes > max_bytes) break;
    out.push_back(e);
  }
  return out;
}

void RaftLog::CommitTo(uint64_t index) {
  if (index <= committed_) return;
  CAIRN_CHECK(index <= LastIndex(), "commit %llu past the last index %llu", static_cast<unsigned long long>(index),
              static_cast<unsigned long long>(LastIndex()));
  committed_ = index;
}

bool RaftLog::MaybeCommit(uint64_t index, uint64_t term) {
  if (index > committed_ && TermOrZero(index) == term) {
    CommitTo(index);
    return true;
  }
  return false;
}

void RaftLog::AppliedTo(uint64_t index) {
  CAIRN_CHECK(index <= committed_ && index >= applied_, "applied %llu outside [%llu, %llu]",
              static_cast<unsigned long long>(index), static_cast<unsigned long long>(applied_),
              static_cast<unsigned long long>(committed_));
  applied_ = index;
}

bool RaftLog::HasNextCommitted() const { return committed_ + 1 > std::max(applied_ + 1, FirstIndex()); }

std::vector<Entry> RaftLog::NextCommitted(uint64_t max_bytes) const {
  const uint64_t lo = std::max(applied_ + 1, FirstIndex());
  if (committed_ + 1 <= lo) return {};
  auto ents = Slice(lo, committed_ + 1, max_bytes);
  CAIRN_CHECK(ents.ok(), "committed entries unreadable: %s", ents.status().ToString().c_str());
  return std::move(*ents);
}

void RaftLog::Restore(const Snapshot& snap) {
  unstable_snap_ = snap;
  unstable_.clear();
  offset_ = snap.meta.index + 1;
  committed_ = snap.meta.index;
}

void RaftLog::StableTo(uint64_t index, uint64_t term) {
  if (unstable_.empty() || index < offset_ || index >= offset_ + unstable_.size()) return;
  if (unstable_[index - offset_].term != term) return;  // replaced since the Ready
  unstable_.erase(unstable_.begin(), unstable_.begin() + static_cast<ptrdiff_t>(index + 1 - offset_));
  offset_ = index + 1;
}

void RaftLog::StableSnapTo(uint64_t index) {
  if (unstable_snap_ && unstable_snap_->meta.index == index) unstable_snap_.reset();
}

Snapshot RaftLog::CurrentSnapshot() const { return unstable_snap_ ? *unstable_snap_ : storage_->GetSnapshot(); }

}  // namespace cairn::raft
