#include "replication/progress.h"

#include <algorithm>

namespace cairn::raft {

bool Progress::IsPaused() const {
  switch (state_) {
    case State::kProbe:
      return probe_sent_;
    case State::kReplicate:
      return inflight_.size() >= max_inflight_;
    case State::kSnapshot:
      return true;
  }
  return true;
}

void Progress::BecomeProbe() {
  // After a snapshot the follower holds at least what it covered.
  next_ = state_ == State::kSnapshot ? std::max(match_ + 1, pending_snapshot_ + 1) : match_ + 1;
  state_ = State::kProbe;
  probe_sent_ = false;
  pending_snapshot_ = 0;
  inflight_.clear();
}

void Progress::BecomeReplicate() {
  next_ = match_ + 1;
  state_ = State::kReplicate;
  probe_sent_ = false;
  pending_snapshot_ = 0;
  inflight_.clear();
}

void Progress::BecomeSnapshot(uint64_t index) {
  state_ = State::kSnapshot;
  pending_snapshot_ = index;
  probe_sent_ = false;
  inflight_.clear();
}

void Progress::SnapshotDone(bool ok) {
  if (!ok) pending_snapshot_ = 0;
  BecomeProbe();
  probe_sent_ = !ok;
}

bool Progress::MaybeUpdate(uint64_t n) {
  bool updated = false;
  if (match_ < n) {
    match_ = n;
    updated = true;
    probe_sent_ = false;
  }
  next_ = std::max(next_, n + 1);
  while (!inflight_.empty() && inflight_.front() <= n) inflight_.pop_front();
  return updated;
}

bool Progress::MaybeDecrTo(uint64_t rejected, uint64_t hint) {
  if (state_ == State::kReplicate) {
    if (rejected <= match_) return false;  // stale: that index was acked since
    next_ = match_ + 1;
    return true;
  }
  if (next_ == 0 || next_ - 1 != rejected) return false;  // not the probe in flight
  next_ = std::max(std::min(rejected, hint + 1), match_ + 1);
  probe_sent_ = false;
  return true;
}

void Progress::SentEntries(uint64_t last, bool non_empty) {
  if (state_ == State::kReplicate) {
    if (non_empty) {
      next_ = last + 1;
      inflight_.push_back(last);
    }
  } else if (state_ == State::kProbe) {
    probe_sent_ = true;
  }
}

void Progress::OnHeartbeatResponse() {
  probe_sent_ = false;
  if (state_ == State::kReplicate && inflight_.size() >= max_inflight_) inflight_.pop_front();
}

std::string_view ProgressStateName(Progress::State s) {
  switch (s) {
    case Progress::State::kProbe:
      return "probe";
    case Progress::State::kReplicate:
      return "replicate";
    case Progress::State::kSnapshot:
      return "snapshot";
  }
  return "?";
}

}  // namespace cairn::raft
