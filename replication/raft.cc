#include "replication/raft.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "replication/check.h"

namespace cairn::raft {
namespace {

constexpr std::string_view kTransferContext = "transfer";

// Where the state machine starts: the snapshot's index (a snapshot covers
// committed entries only, even if the hard state saying so was not synced).
uint64_t SnapshotIndex(const LogStorage& s) { return std::max(s.GetSnapshotMeta().index, s.FirstIndex() - 1); }

std::string EncodeReadSeq(uint64_t seq) { return std::string(reinterpret_cast<const char*>(&seq), 8); }

std::optional<uint64_t> DecodeReadSeq(const std::string& ctx) {
  if (ctx.size() != 8) return std::nullopt;
  uint64_t seq;
  std::memcpy(&seq, ctx.data(), 8);
  return seq;
}

MessageType VoteRespType(MessageType t) {
  return t == MessageType::kPreVote ? MessageType::kPreVoteResp : MessageType::kVoteResp;
}

bool Contains(const std::vector<uint64_t>& v, uint64_t x) { return std::binary_search(v.begin(), v.end(), x); }

void Insert(std::vector<uint64_t>* v, uint64_t x) {
  auto it = std::lower_bound(v->begin(), v->end(), x);
  if (it == v->end() || *it != x) v->insert(it, x);
}

void Erase(std::vector<uint64_t>* v, uint64_t x) {
  auto it = std::lower_bound(v->begin(), v->end(), x);
  if (it != v->end() && *it == x) v->erase(it);
}

uint64_t DataBytes(const std::vector<Entry>& ents) {
  uint64_t n = 0;
  for (const Entry& e : ents) n += e.data.size();
  return n;
}

}  // namespace

// ---- ConfChange and names ----------------------------------------------------

std::string ConfChange::Encode() const {
  std::string out(1, static_cast<char>(type));
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((node >> (8 * i)) & 0xff));
  return out;
}

absl::StatusOr<ConfChange> ConfChange::Decode(std::string_view data) {
  if (data.size() != 9 || static_cast<uint8_t>(data[0]) > 2) {
    return absl::DataLossError("raft: malformed membership change entry");
  }
  ConfChange cc;
  cc.type = static_cast<Type>(data[0]);
  for (int i = 0; i < 8; ++i) cc.node |= static_cast<uint64_t>(static_cast<uint8_t>(data[1 + i])) << (8 * i);
  return cc;
}

std::string_view MessageTypeName(MessageType t) {
  switch (t) {
    case MessageType::kApp: return "App";
    case MessageType::kAppResp: return "AppResp";
    case MessageType::kVote: return "Vote";
    case MessageType::kVoteResp: return "VoteResp";
    case MessageType::kPreVote: return "PreVote";
    case MessageType::kPreVoteResp: return "PreVoteResp";
    case MessageType::kHeartbeat: return "Heartbeat";
    case MessageType::kHeartbeatResp: return "HeartbeatResp";
    case MessageType::kSnap: return "Snap";
    case MessageType::kTimeoutNow: return "TimeoutNow";
    case MessageType::kProp: return "Prop";
    case MessageType::kReadIndex: return "ReadIndex";
    case MessageType::kReadIndexResp: return "ReadIndexResp";
  }
  return "?";
}

std::string_view RoleName(Role r) {
  switch (r) {
    case Role::kFollower: return "follower";
    case Role::kPreCandidate: return "pre-candidate";
    case Role::kCandidate: return "candidate";
    case Role::kLeader: return "leader";
  }
  return "?";
}

// ---- construction --------------------------------------------------------------

absl::Status Config::Validate() const {
  if (id == kNone) return absl::InvalidArgumentError("raft: id must be nonzero");
  if (storage == nullptr) return absl::InvalidArgumentError("raft: storage is required");
  if (heartbeat_tick <= 0) return absl::InvalidArgumentError("raft: heartbeat_tick must be positive");
  if (election_tick <= heartbeat_tick) return absl::InvalidArgumentError("raft: election_tick must exceed heartbeat_tick");
  if (max_inflight_msgs == 0) return absl::InvalidArgumentError("raft: max_inflight_msgs must be positive");
  if (lease_reads && !check_quorum) return absl::InvalidArgumentError("raft: lease_reads requires check_quorum");
  const HardState hs = storage->InitialHardState();
  if (hs.commit > storage->LastIndex()) {
    return absl::InvalidArgumentError(absl::StrCat("raft: stored commit ", hs.commit, " is past the last entry ",
                                                   storage->LastIndex()));
  }
  const uint64_t commit = std::max(hs.commit, SnapshotIndex(*storage));
  if (applied > commit) {
    return absl::InvalidArgumentError(absl::StrCat("raft: applied ", applied, " is past the commit index ", commit));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Raft>> Raft::Create(Config config) {
  if (absl::Status st = config.Validate(); !st.ok()) return st;
  // The state machine starts from the snapshot, which may be past the first
  // entry kept (compaction lags it).
  if (config.applied < SnapshotIndex(*config.storage)) config.applied = SnapshotIndex(*config.storage);
  if (!config.rand) {
    uint64_t state = config.id * 0x9E3779B97F4A7C15ull + 1;
    config.rand = [state](uint64_t n) mutable {
      state += 0x9E3779B97F4A7C15ull;  // splitmix64
      uint64_t z = state;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return (z ^ (z >> 31)) % n;
    };
  }
  return std::unique_ptr<Raft>(new Raft(std::move(config)));
}

Raft::Raft(Config config)
    : cfg_(std::move(config)),
      id_(cfg_.id),
      log_(cfg_.storage, std::max(cfg_.storage->InitialHardState().commit, SnapshotIndex(*cfg_.storage)),
           cfg_.applied) {
  const HardState hs = cfg_.storage->InitialHardState();
  term_ = hs.term;
  vote_ = hs.vote;
  prev_hard_ = hs;
  conf_ = cfg_.storage->InitialConfState();
  // Membership as of the commit index: replay the committed changes the
  // snapshot does not cover, so a restarted node never campaigns or counts
  // votes with an old configuration.
  conf_applied_index_ = SnapshotIndex(*cfg_.storage);
  // With lease reads, a node that just started may have acknowledged a
  // leader's heartbeat before it stopped: it grants no vote for an election
  // timeout, as if it had heard from a leader (dissertation §6.4.1).
  startup_guard_ = cfg_.lease_reads;
  if (log_.committed() > conf_applied_index_) {
    auto ents = log_.Slice(conf_applied_index_ + 1, log_.committed() + 1, UINT64_MAX);
    CAIRN_CHECK(ents.ok(), "raft: committed entries unreadable at start: %s", ents.status().ToString().c_str());
    for (const Entry& e : *ents) {
      if (e.type != EntryType::kConfChange) continue;
      auto cc = ConfChange::Decode(e.data);
      CAIRN_CHECK(cc.ok(), "raft: entry %llu: %s", static_cast<unsigned long long>(e.index),
                  cc.status().ToString().c_str());
      ApplyConfChange(*cc);
    }
    conf_applied_index_ = log_.committed();
  }
  BecomeFollower(term_, kNone);
}

bool Raft::IsVoter(uint64_t id) const { return Contains(conf_.voters, id); }

bool Raft::Promotable() const { return IsVoter(id_) && !log_.HasPendingSnapshot(); }

const Progress* Raft::progress(uint64_t peer) const {
  auto it = prs_.find(peer);
  return it == prs_.end() ? nullptr : &it->second;
}

// ---- roles -----------------------------------------------------------------

void Raft::Reset(uint64_t term) {
  if (term_ != term) {
    term_ = term;
    vote_ = kNone;
  }
  leader_ = kNone;
  election_elapsed_ = 0;
  heartbeat_elapsed_ = 0;
  randomized_election_timeout_ =
      cfg_.election_tick + static_cast<int>(cfg_.rand(static_cast<uint64_t>(cfg_.election_tick)));
  AbortTransfer();
  votes_.clear();
  prs_.clear();
  pending_conf_index_ = 0;
  uncommitted_bytes_ = 0;
  pending_reads_.clear();
  reads_before_commit_.clear();
  transferred_in_term_ = false;
  quiesced_ = false;
}

void Raft::BecomeFollower(uint64_t term, uint64_t leader) {
  Reset(term);
  leader_ = leader;
  role_ = Role::kFollower;
}

void Raft::BecomePreCandidate() {
  CAIRN_CHECK(role_ != Role::kLeader, "a leader cannot become a pre-candidate");
  // No term change and no vote: a pre-vote round changes nothing if it fails.
  votes_.clear();
  leader_ = kNone;
  role_ = Role::kPreCandidate;
}

void Raft::BecomeCandidate() {
  CAIRN_CHECK(role_ != Role::kLeader, "a leader cannot become a candidate");
  Reset(term_ + 1);
  vote_ = id_;
  role_ = Role::kCandidate;
}

void Raft::BecomeLeader() {
  CAIRN_CHECK(role_ == Role::kCandidate, "only a candidate becomes leader");
  Reset(term_);
  leader_ = id_;
  role_ = Role::kLeader;
  RebuildProgress();
  // The no-op of §5.4.2/§8. Membership changes wait until it is applied: the
  // fix for one-at-a-time changes across leader changes.
  const uint64_t noop = log_.LastIndex() + 1;
  log_.Append({Entry{.term = term_, .index = noop, .data = {}}});
  prs_.at(id_).SetSelf(noop);
  pending_conf_index_ = noop;
  MaybeCommit();  // a single voter commits at once
  BroadcastAppend();
}

void Raft::RebuildProgress() {
  prs_.clear();
  const uint64_t next = log_.LastIndex() + 1;
  for (uint64_t v : conf_.voters) prs_.emplace(v, Progress(next, cfg_.max_inflight_msgs, false));
  for (uint64_t l : conf_.learners) prs_.emplace(l, Progress(next, cfg_.max_inflight_msgs, true));
  // Followers count as active once they answer (check-quorum).
  auto self = prs_.find(id_);
  if (self != prs_.end()) {
    self->second.SetSelf(log_.LastIndex());
    self->second.set_recent_active(true);
  }
}

void Raft::Hup(bool transfer) {
  if (role_ == Role::kLeader || !Promotable()) return;
  // Committed membership changes not yet applied would change who votes.
  if (log_.committed() > conf_applied_index_) {
    auto ents = log_.Slice(std::max(conf_applied_index_ + 1, log_.FirstIndex()), log_.committed() + 1, UINT64_MAX);
    if (ents.ok()) {
      for (const Entry& e : *ents) {
        if (e.type == EntryType::kConfChange) return;
      }
    }
  }
  StartElection(cfg_.pre_vote && !transfer, transfer);
}

void Raft::Campaign() { Hup(/*transfer=*/false); }

void Raft::StartElection(bool pre_vote, bool transfer) {
  uint64_t vote_term;
  MessageType type;
  if (pre_vote) {
    BecomePreCandidate();
    vote_term = term_ + 1;
    type = MessageType::kPreVote;
  } else {
    BecomeCandidate();
    vote_term = term_;
    type = MessageType::kVote;
  }
  auto [granted, rejected] = Poll(id_, true);
  if (granted >= Quorum()) {
    // A single voter wins its own election.
    if (pre_vote) {
      StartElection(false, transfer);
    } else {
      BecomeLeader();
    }
    return;
  }
  for (uint64_t v : conf_.voters) {
    if (v == id_) continue;
    Message m;
    m.type = type;
    m.to = v;
    m.term = vote_term;
    m.index = log_.LastIndex();
    m.log_term = log_.LastTerm();
    if (transfer) m.context = std::string(kTransferContext);
    Send(std::move(m));
  }
}

std::pair<size_t, size_t> Raft::Poll(uint64_t from, bool granted) {
  votes_.emplace(from, granted);  // the first answer counts
  size_t yes = 0, no = 0;
  for (uint64_t v : conf_.voters) {
    auto it = votes_.find(v);
    if (it == votes_.end()) continue;
    (it->second ? yes : no)++;
  }
  return {yes, no};
}

// ---- messages out ----------------------------------------------------------------

void Raft::Send(Message m) {
  m.from = id_;
  // Votes carry the term they campaign in; a forwarded proposal or read is
  // term-less (it is not part of the protocol, only a relay).
  if (m.type != MessageType::kVote && m.type != MessageType::kPreVote && m.type != MessageType::kVoteResp &&
      m.type != MessageType::kPreVoteResp && m.type != MessageType::kProp && m.type != MessageType::kReadIndex) {
    m.term = term_;
  }
  msgs_.push_back(std::move(m));
}

bool Raft::SendAppend(uint64_t to, bool send_if_empty) {
  auto it = prs_.find(to);
  if (it == prs_.end()) return false;
  Progress& pr = it->second;
  if (pr.IsPaused()) return false;
  Message m;
  m.to = to;
  auto prev_term = log_.Term(pr.next() - 1);
  absl::StatusOr<std::vector<Entry>> ents =
      prev_term.ok() ? log_.Slice(pr.next(), log_.LastIndex() + 1, cfg_.max_size_per_msg) : prev_term.status();
  if (!prev_term.ok() || !ents.ok()) {
    // The entries it needs are compacted: send the snapshot (§7).
    if (!pr.recent_active()) return false;
    Snapshot snap = log_.CurrentSnapshot();
    CAIRN_CHECK(!snap.empty(), "raft: entries before %llu are compacted but there is no snapshot",
                static_cast<unsigned long long>(log_.FirstIndex()));
    m.type = MessageType::kSnap;
    pr.BecomeSnapshot(snap.meta.index);
    m.snapshot = std::move(snap);
    Send(std::move(m));
    return true;
  }
  if (ents->empty() && !send_if_empty) return false;
  m.type = MessageType::kApp;
  m.index = pr.next() - 1;
  m.log_term = *prev_term;
  m.commit = log_.committed();
  m.entries = std::move(*ents);
  const bool non_empty = !m.entries.empty();
  pr.SentEntries(non_empty ? m.entries.back().index : m.index, non_empty);
  Send(std::move(m));
  return true;
}

void Raft::SendHeartbeat(uint64_t to, const std::string& context) {
  // Never past what the follower is known to hold: its log may still have a
  // conflicting suffix there.
  Message m;
  m.type = MessageType::kHeartbeat;
  m.to = to;
  m.commit = std::min(prs_.at(to).match(), log_.committed());
  m.index = ticks_;  // echoed back: when the acknowledged heartbeat left (lease reads)
  m.context = context;
  Send(std::move(m));
}

void Raft::BroadcastAppend() {
  for (auto& [id, pr] : prs_) {
    if (id != id_) SendAppend(id, true);
  }
}

void Raft::BroadcastHeartbeat(const std::string& context) {
  for (auto& [id, pr] : prs_) {
    if (id != id_) SendHeartbeat(id, context);
  }
}

bool Raft::CanQuiesce() const {
  if (!cfg_.quiesce || role_ != Role::kLeader || lead_transferee_ != kNone) return false;
  if (!pending_reads_.empty() || !reads_before_commit_.empty()) return false;
  const uint64_t last = log_.LastIndex();
  if (log_.committed() != last || log_.applied() != last) return false;  // conf changes applied too
  for (const auto& [id, pr] : prs_) {
    if (id != id_ && (pr.match() != last || !pr.recent_active())) return false;
  }
  return true;
}

void Raft::Unquiesce(bool leader_lost) {
  if (!quiesced_) return;
  quiesced_ = false;
  if (role_ == Role::kLeader) {
    // Check-quorum counts only answers that come after waking.
    election_elapsed_ = 0;
    for (auto& [id, pr] : prs_) {
      if (id != id_) pr.set_recent_active(false);
    }
  } else if (leader_lost) {
    election_elapsed_ = std::max(election_elapsed_, cfg_.election_tick);
  } else if (leader_ != kNone) {
    // Awake, this member times out unless its leader heartbeats again: an
    // answer wakes a leader that is still quiet.
    Message m;
    m.type = MessageType::kHeartbeatResp;
    m.to = leader_;
    Send(std::move(m));
  }
}

bool Raft::MaybeCommit() {
  std::vector<uint64_t> matches;
  for (uint64_t v : conf_.voters) {
    auto it = prs_.find(v);
    matches.push_back(it == prs_.end() ? 0 : it->second.match());
  }
  if (matches.empty()) return false;
  std::sort(matches.begin(), matches.end(), std::greater<>());
  if (!log_.MaybeCommit(matches[Quorum() - 1], term_)) return false;
  if (!reads_before_commit_.empty() && CommittedInCurrentTerm()) {
    auto waiting = std::move(reads_before_commit_);
    reads_before_commit_.clear();
    for (auto& [from, ctx] : waiting) LeaderReadIndex(from, std::move(ctx));
  }
  return true;
}

bool Raft::CommittedInCurrentTerm() const { return log_.TermOrZero(log_.committed()) == term_; }

// ---- client calls ------------------------------------------------------------------

absl::Status Raft::AppendProposal(std::vector<Entry> entries) {
  if (!prs_.count(id_)) return absl::UnavailableError("raft: this node was removed from the group");
  if (lead_transferee_ != kNone) {
    return absl::UnavailableError(absl::StrCat("raft: leadership is moving to node ", lead_transferee_, "; retry there"));
  }
  const uint64_t bytes = DataBytes(entries);
  if (cfg_.max_uncommitted_bytes > 0 && uncommitted_bytes_ > 0 && uncommitted_bytes_ + bytes > cfg_.max_uncommitted_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("raft: ", uncommitted_bytes_,
                                                     " bytes proposed and not yet committed; retry later"));
  }
  uint64_t index = log_.LastIndex();
  int changes = 0;
  for (Entry& e : entries) {
    if (e.type == EntryType::kConfChange) {
      if (++changes > 1) return absl::InvalidArgumentError("raft: one membership change per proposal");
      auto cc = ConfChange::Decode(e.data);
      if (!cc.ok()) return absl::InvalidArgumentError(cc.status().message());
      if (pending_conf_index_ > log_.applied()) {
        return absl::FailedPreconditionError("raft: a membership change is still pending; retry once it is applied");
      }
      if (cc->node == kNone) return absl::InvalidArgumentError("raft: membership change names node 0");
      if (cc->type != ConfChange::Type::kAddVoter && IsVoter(cc->node) && conf_.voters.size() == 1) {
        return absl::FailedPreconditionError("raft: cannot remove or demote the last voter");
      }
    }
  }
  for (Entry& e : entries) {
    e.term = term_;
    e.index = ++index;
    if (e.type == EntryType::kConfChange) pending_conf_index_ = e.index;
  }
  uncommitted_bytes_ += bytes;
  log_.Append(std::move(entries));
  prs_.at(id_).SetSelf(log_.LastIndex());
  MaybeCommit();
  BroadcastAppend();
  return absl::OkStatus();
}

absl::Status Raft::Propose(std::string data) {
  Message m;
  m.type = MessageType::kProp;
  m.from = id_;
  m.entries.push_back(Entry{.type = EntryType::kNormal, .data = std::move(data)});
  return Step(m);
}

absl::Status Raft::ProposeConfChange(const ConfChange& cc) {
  Message m;
  m.type = MessageType::kProp;
  m.from = id_;
  m.entries.push_back(Entry{.type = EntryType::kConfChange, .data = cc.Encode()});
  return Step(m);
}

absl::Status Raft::ReadIndex(std::string context) {
  Message m;
  m.type = MessageType::kReadIndex;
  m.from = id_;
  m.context = std::move(context);
  return Step(m);
}

absl::Status Raft::TransferLeadership(uint64_t to) {
  if (role_ != Role::kLeader) {
    return absl::FailedPreconditionError(absl::StrCat("raft: not the leader (leader: ", leader_, ")"));
  }
  if (to == id_) return absl::OkStatus();
  if (!IsVoter(to)) return absl::InvalidArgumentError(absl::StrCat("raft: node ", to, " is not a voter"));
  Unquiesce(/*leader_lost=*/false);
  if (lead_transferee_ == to) return absl::OkStatus();
  AbortTransfer();
  // The transfer must finish within one election timeout or it is abandoned.
  transfer_deadline_ = ticks_ + static_cast<uint64_t>(cfg_.election_tick);
  lead_transferee_ = to;
  transferred_in_term_ = true;
  const Progress& pr = prs_.at(to);
  if (pr.match() == log_.LastIndex()) {
    Message m;
    m.type = MessageType::kTimeoutNow;
    m.to = to;
    Send(std::move(m));
  } else {
    SendAppend(to, true);
  }
  return absl::OkStatus();
}

void Raft::ReportUnreachable(uint64_t id) {
  auto it = prs_.find(id);
  if (role_ == Role::kLeader && it != prs_.end() && it->second.state() == Progress::State::kReplicate) {
    it->second.BecomeProbe();
  }
}

void Raft::ReportSnapshot(uint64_t id, bool ok) {
  auto it = prs_.find(id);
  if (role_ != Role::kLeader || it == prs_.end() || it->second.state() != Progress::State::kSnapshot) return;
  Unquiesce(/*leader_lost=*/false);
  // Success: probe from past the snapshot once the follower answers.
  // Failure: probe from its match again, after the next heartbeat reply.
  it->second.SnapshotDone(ok);
}

// ---- messages in -------------------------------------------------------------------

absl::Status Raft::Step(const Message& m) {
  if (m.to != kNone && m.to != id_ && m.type != MessageType::kProp && m.type != MessageType::kReadIndex) {
    return absl::InvalidArgumentError(absl::StrCat("raft: message for node ", m.to, " stepped into node ", id_));
  }
  // Anything but the quiet heartbeat and its answer wakes a quiet replica.
  if (quiesced_ && !m.quiesce) Unquiesce(/*leader_lost=*/false);
  const bool is_vote = m.type == MessageType::kVote || m.type == MessageType::kPreVote;
  if (m.term == 0) {
    // Local or relayed (proposal, read): handled by role below.
  } else if (m.term > term_) {
    if (is_vote) {
      // §6 of the dissertation: with check-quorum, a node that heard from a
      // leader within the minimum election timeout ignores votes (leader
      // stickiness), unless the vote is a leadership transfer.
      const bool force = m.context == kTransferContext;
      const bool in_lease = cfg_.check_quorum && (leader_ != kNone || startup_guard_) &&
                            election_elapsed_ < cfg_.election_tick;
      if (!force && in_lease) return absl::OkStatus();
    }
    if (m.type == MessageType::kPreVote) {
      // A pre-vote changes no term.
    } else if (m.type == MessageType::kPreVoteResp && !m.reject) {
      // Granted pre-votes carry the future term; we bump it on winning.
    } else if (m.type == MessageType::kApp || m.type == MessageType::kHeartbeat || m.type == MessageType::kSnap) {
      BecomeFollower(m.term, m.from);
    } else {
      // Figure 2: only a current leader's AppendEntries or a granted vote
      // restarts the election timer, not a higher term alone. Otherwise nodes
      // with stale logs that keep campaigning (pre-vote off) hold back the
      // timer of the one node that could win.
      const int elapsed = election_elapsed_;
      const bool was_leader = role_ == Role::kLeader;
      BecomeFollower(m.term, kNone);
      if (!was_leader) election_elapsed_ = elapsed;
    }
  } else if (m.term < term_) {
    if ((cfg_.check_quorum || cfg_.pre_vote) && (m.type == MessageType::kHeartbeat || m.type == MessageType::kApp)) {
      // A stale leader (partitioned, or its pre-votes kept it from learning
      // our term): tell it the term so it steps down.
      Message r;
      r.type = MessageType::kAppResp;
      r.to = m.from;
      Send(std::move(r));
    } else if (m.type == MessageType::kPreVote) {
      Message r;
      r.type = MessageType::kPreVoteResp;
      r.to = m.from;
      r.term = term_;
      r.reject = true;
      Send(std::move(r));
    }
    return absl::OkStatus();
  }

  if (is_vote) {
    // §5.2, §5.4.1. We may vote again for whom we voted; a pre-vote for a
    // later term does not need a free vote.
    const bool can_vote = vote_ == m.from || (vote_ == kNone && leader_ == kNone) ||
                          (m.type == MessageType::kPreVote && m.term > term_);
    Message r;
    r.type = VoteRespType(m.type);
    r.to = m.from;
    if (can_vote && log_.IsUpToDate(m.index, m.log_term)) {
      r.term = m.term;
      Send(std::move(r));
      if (m.type == MessageType::kVote) {
        election_elapsed_ = 0;
        vote_ = m.from;
      }
    } else {
      r.term = term_;
      r.reject = true;
      Send(std::move(r));
    }
    return absl::OkStatus();
  }

  switch (role_) {
    case Role::kLeader:
      return StepLeader(m);
    case Role::kCandidate:
    case Role::kPreCandidate:
      return StepCandidate(m);
    case Role::kFollower:
      return StepFollower(m);
  }
  return absl::OkStatus();
}

absl::Status Raft::StepLeader(const Message& m) {
  switch (m.type) {
    case MessageType::kProp: {
      if (m.entries.empty()) return absl::InvalidArgumentError("raft: empty proposal");
      std::vector<Entry> ents;
      for (const Entry& e : m.entries) ents.push_back(Entry{.type = e.type, .data = e.data});
      absl::Status st = AppendProposal(std::move(ents));
      // A relayed proposal that fails is dropped: its client retries.
      return m.from == id_ ? st : absl::OkStatus();
    }
    case MessageType::kReadIndex:
      if (conf_.voters.size() == 1 && IsVoter(id_)) {
        AnswerRead(m.from, log_.committed(), m.context);
        return absl::OkStatus();
      }
      // §6.4 step 1: the leader's commit index is current only once it has
      // committed an entry of its own term.
      if (!CommittedInCurrentTerm()) {
        reads_before_commit_.emplace_back(m.from, m.context);
        return absl::OkStatus();
      }
      LeaderReadIndex(m.from, m.context);
      return absl::OkStatus();
    default:
      break;
  }

  auto it = prs_.find(m.from);
  if (it == prs_.end()) return absl::OkStatus();  // not (or no longer) a member
  Progress& pr = it->second;
  switch (m.type) {
    case MessageType::kAppResp: {
      pr.set_recent_active(true);
      if (m.reject) {
        uint64_t hint = m.reject_hint;
        if (m.log_term > 0) hint = log_.FindConflictByTerm(m.reject_hint, m.log_term).first;
        if (pr.MaybeDecrTo(m.index, hint)) {
          if (pr.state() == Progress::State::kReplicate) pr.BecomeProbe();
          SendAppend(m.from, true);
        }
        return absl::OkStatus();
      }
      const bool was_paused = pr.IsPaused();
      const bool updated = pr.MaybeUpdate(m.index);
      if (pr.state() == Progress::State::kProbe && (updated || pr.match() == m.index)) {
        pr.BecomeReplicate();  // the follower's match is found
      } else if (pr.state() == Progress::State::kSnapshot &&
                 (pr.match() >= pr.pending_snapshot() || pr.match() + 1 >= log_.FirstIndex())) {
        // The snapshot arrived, or the follower can catch up from the log.
        pr.BecomeProbe();
        pr.BecomeReplicate();
      }
      if (updated && MaybeCommit()) {
        BroadcastAppend();
      } else if (was_paused) {
        SendAppend(m.from, false);
      }
      // Fill the pipeline with whatever else it lacks.
      while (SendAppend(m.from, false)) {
      }
      if (m.from == lead_transferee_ && prs_.at(m.from).match() == log_.LastIndex()) {
        Message t;
        t.type = MessageType::kTimeoutNow;
        t.to = m.from;
        Send(std::move(t));
      }
      return absl::OkStatus();
    }
    case MessageType::kHeartbeatResp: {
      pr.set_recent_active(true);
      if (m.quiesce && quiesced_) quiesce_acks_.insert(m.from);
      pr.AckedHeartbeatSentAt(m.index);
      pr.OnHeartbeatResponse();
      if (pr.match() < log_.LastIndex()) SendAppend(m.from, true);
      if (auto seq = DecodeReadSeq(m.context)) {
        // The ack confirms the read it carried and every earlier one.
        auto r = pending_reads_.find(*seq);
        if (r != pending_reads_.end()) {
          r->second.acks.insert(m.from);
          size_t acks = 0;
          for (uint64_t v : r->second.acks) acks += IsVoter(v) ? 1 : 0;
          if (acks >= Quorum()) ReleaseReads(*seq);
        }
      }
      return absl::OkStatus();
    }
    default:
      return absl::OkStatus();
  }
}

void Raft::AnswerRead(uint64_t to, uint64_t index, std::string context) {
  if (to == id_) {
    reads_.push_back(ReadState{index, std::move(context)});
    return;
  }
  Message r;
  r.type = MessageType::kReadIndexResp;
  r.to = to;
  r.index = index;
  r.context = std::move(context);
  Send(std::move(r));
}

bool Raft::LeaseValid() const {
  // A quorum acknowledged heartbeats sent within the last election timeout
  // (less a tick for drift): none of them votes for anyone else before that
  // timeout has passed since they heard them. Never while leadership is
  // being handed over, nor after, in this term: the target's votes pass the
  // followers' leases, even when its TimeoutNow arrives late.
  if (!cfg_.lease_reads || transferred_in_term_) return false;
  std::vector<uint64_t> sent;
  for (uint64_t v : conf_.voters) {
    auto it = prs_.find(v);
    sent.push_back(v == id_ ? ticks_ : it == prs_.end() ? 0 : it->second.heartbeat_acked_at());
  }
  std::sort(sent.begin(), sent.end(), std::greater<>());
  const uint64_t oldest_in_quorum = sent[Quorum() - 1];
  return oldest_in_quorum > 0 && ticks_ + 1 < oldest_in_quorum + static_cast<uint64_t>(cfg_.election_tick);
}

void Raft::LeaderReadIndex(uint64_t from, std::string context) {
  const uint64_t index = log_.committed();
  if (LeaseValid()) {
    AnswerRead(from, index, std::move(context));
    return;
  }
  // §6.4: a heartbeat round; the read is safe once a quorum acknowledges it.
  // Reads are told apart by a sequence number of ours, never reused, so two
  // clients' equal contexts or a stale ack cannot mix them up.
  const uint64_t seq = ++read_seq_;
  pending_reads_.emplace(seq, PendingRead{.index = index, .from = from, .context = std::move(context), .acks = {id_}});
  BroadcastHeartbeat(EncodeReadSeq(seq));
}

void Raft::ReleaseReads(uint64_t seq) {
  while (!pending_reads_.empty() && pending_reads_.begin()->first <= seq) {
    auto node = pending_reads_.extract(pending_reads_.begin());
    AnswerRead(node.mapped().from, node.mapped().index, std::move(node.mapped().context));
  }
}

absl::Status Raft::StepCandidate(const Message& m) {
  const MessageType my_resp = role_ == Role::kPreCandidate ? MessageType::kPreVoteResp : MessageType::kVoteResp;
  switch (m.type) {
    case MessageType::kProp:
    case MessageType::kReadIndex:
      // A relay from a follower that still thought we lead is dropped.
      if (m.from != id_) return absl::OkStatus();
      return absl::UnavailableError("raft: no leader (election under way); retry later");
    case MessageType::kApp:
      BecomeFollower(m.term, m.from);
      HandleAppend(m);
      return absl::OkStatus();
    case MessageType::kHeartbeat:
      BecomeFollower(m.term, m.from);
      HandleHeartbeat(m);
      return absl::OkStatus();
    case MessageType::kSnap:
      BecomeFollower(m.term, m.from);
      HandleSnapshot(m);
      return absl::OkStatus();
    case MessageType::kPreVoteResp:
    case MessageType::kVoteResp: {
      if (m.type != my_resp) return absl::OkStatus();
      auto [granted, rejected] = Poll(m.from, !m.reject);
      if (granted >= Quorum()) {
        if (role_ == Role::kPreCandidate) {
          StartElection(/*pre_vote=*/false, /*transfer=*/false);
        } else {
          BecomeLeader();
        }
      } else if (rejected >= Quorum()) {
        // A rejection carries a term >= ours; stay at our term (pre-vote) or theirs.
        BecomeFollower(std::max(term_, m.term), kNone);
      }
      return absl::OkStatus();
    }
    default:
      return absl::OkStatus();
  }
}

absl::Status Raft::StepFollower(const Message& m) {
  switch (m.type) {
    case MessageType::kProp: {
      if (m.from != id_) return absl::OkStatus();  // a relay that reached a non-leader: dropped
      if (leader_ == kNone) return absl::UnavailableError("raft: no leader known; retry later");
      if (cfg_.disable_proposal_forwarding) {
        return absl::UnavailableError(absl::StrCat("raft: not the leader; propose to node ", leader_));
      }
      Message f = m;
      f.to = leader_;
      Send(std::move(f));
      return absl::OkStatus();
    }
    case MessageType::kReadIndex: {
      if (m.from != id_) return absl::OkStatus();
      if (leader_ == kNone) return absl::UnavailableError("raft: no leader known; retry later");
      Message f = m;
      f.to = leader_;
      Send(std::move(f));
      return absl::OkStatus();
    }
    case MessageType::kApp:
      election_elapsed_ = 0;
      leader_ = m.from;
      HandleAppend(m);
      return absl::OkStatus();
    case MessageType::kHeartbeat:
      election_elapsed_ = 0;
      leader_ = m.from;
      HandleHeartbeat(m);
      return absl::OkStatus();
    case MessageType::kSnap:
      election_elapsed_ = 0;
      leader_ = m.from;
      HandleSnapshot(m);
      return absl::OkStatus();
    case MessageType::kTimeoutNow:
      // Leadership transfer: campaign at once, past the leader's lease.
      Hup(/*transfer=*/true);
      return absl::OkStatus();
    case MessageType::kReadIndexResp:
      reads_.push_back(ReadState{m.index, m.context});
      return absl::OkStatus();
    default:
      return absl::OkStatus();
  }
}

void Raft::HandleAppend(const Message& m) {
  Message r;
  r.type = MessageType::kAppResp;
  r.to = m.from;
  if (m.index < log_.committed()) {
    // Everything up to our commit is known to match.
    r.index = log_.committed();
    Send(std::move(r));
    return;
  }
  if (auto last_new = log_.MaybeAppend(m.index, m.log_term, m.commit, m.entries)) {
    r.index = *last_new;
    Send(std::move(r));
    return;
  }
  // Reject, with a hint that skips a whole conflicting term (§5.3's optimization).
  auto [hint_index, hint_term] = log_.FindConflictByTerm(std::min(m.index, log_.LastIndex()), m.log_term);
  r.reject = true;
  r.index = m.index;
  r.reject_hint = hint_index;
  r.log_term = hint_term;
  Send(std::move(r));
}

void Raft::HandleHeartbeat(const Message& m) {
  log_.CommitTo(std::min(m.commit, log_.LastIndex()));
  Message r;
  r.type = MessageType::kHeartbeatResp;
  r.to = m.from;
  r.index = m.index;
  r.context = m.context;
  // A follower holding exactly the log the leader committed goes quiet with
  // it; one that does not stays awake (and its election timer wakes the group
  // if need be).
  if (m.quiesce && cfg_.quiesce && m.from == leader_ && log_.LastIndex() == m.commit &&
      log_.committed() == m.commit) {
    quiesced_ = true;
    r.quiesce = true;
  }
  Send(std::move(r));
}

void Raft::HandleSnapshot(const Message& m) {
  Message r;
  r.type = MessageType::kAppResp;
  r.to = m.from;
  if (m.snapshot && Restore(*m.snapshot)) {
    r.index = log_.LastIndex();
  } else {
    r.index = log_.committed();
  }
  Send(std::move(r));
}

bool Raft::Restore(const Snapshot& snap) {
  if (snap.meta.index <= log_.committed()) return false;
  if (log_.MatchTerm(snap.meta.index, snap.meta.term)) {
    // We hold the entries it covers: just commit up to it.
    log_.CommitTo(snap.meta.index);
    return false;
  }
  log_.Restore(snap);
  conf_ = snap.meta.conf;
  conf_applied_index_ = snap.meta.index;
  return true;
}

// ---- time --------------------------------------------------------------------------

void Raft::Tick() {
  ++ticks_;
  if (ticks_ >= static_cast<uint64_t>(cfg_.election_tick)) startup_guard_ = false;
  if (lead_transferee_ != kNone && ticks_ >= transfer_deadline_) AbortTransfer();
  if (quiesced_) {
    // A member that missed the quiet heartbeat (or whose answer was lost)
    // would time out and campaign: the leader wakes and tries again, well
    // within that member's election timeout.
    if (role_ != Role::kLeader || ticks_ - quiesced_at_ < static_cast<uint64_t>((cfg_.election_tick - 1) / 2)) return;
    bool all = true;
    for (const auto& [id, pr] : prs_) all = all && (id == id_ || quiesce_acks_.count(id));
    if (all) return;
    Unquiesce(/*leader_lost=*/false);
  }
  if (role_ != Role::kLeader) {
    if (election_elapsed_ < std::numeric_limits<int>::max()) ++election_elapsed_;
    // A node that cannot campaign (a learner, or one that believes so) keeps
    // counting: past an election timeout it no longer defends a leader it
    // stopped hearing from, and grants votes again.
    if (Promotable() && election_elapsed_ >= randomized_election_timeout_) {
      election_elapsed_ = 0;
      Hup(/*transfer=*/false);
    }
    return;
  }
  ++heartbeat_elapsed_;
  ++election_elapsed_;
  if (election_elapsed_ >= cfg_.election_tick) {
    election_elapsed_ = 0;
    if (cfg_.check_quorum) {
      // Check-quorum: a leader that has not heard from a majority in an
      // election timeout may have been replaced; it steps down.
      size_t active = 0;
      for (auto& [id, pr] : prs_) {
        if (IsVoter(id) && (id == id_ || pr.recent_active())) ++active;
        if (id != id_) pr.set_recent_active(false);
      }
      if (active < Quorum()) {
        BecomeFollower(term_, kNone);
        return;
      }
    }
  }
  if (heartbeat_elapsed_ >= cfg_.heartbeat_tick) {
    heartbeat_elapsed_ = 0;
    if (CanQuiesce()) {
      // The last heartbeat until something happens.
      for (auto& [id, pr] : prs_) {
        if (id == id_) continue;
        Message m;
        m.type = MessageType::kHeartbeat;
        m.to = id;
        m.commit = log_.committed();
        m.index = ticks_;
        m.quiesce = true;
        Send(std::move(m));
      }
      quiesced_ = true;
      quiesced_at_ = ticks_;
      quiesce_acks_.clear();
      return;
    }
    // Carry the newest pending read, so ordinary heartbeats confirm it too.
    BroadcastHeartbeat(pending_reads_.empty() ? std::string() : EncodeReadSeq(pending_reads_.rbegin()->first));
  }
}

// ---- membership ----------------------------------------------------------------------

void Raft::ApplyConfChange(const ConfChange& cc) {
  switch (cc.type) {
    case ConfChange::Type::kAddVoter:
      Erase(&conf_.learners, cc.node);
      Insert(&conf_.voters, cc.node);
      break;
    case ConfChange::Type::kAddLearner:
      Erase(&conf_.voters, cc.node);
      Insert(&conf_.learners, cc.node);
      break;
    case ConfChange::Type::kRemove:
      Erase(&conf_.voters, cc.node);
      Erase(&conf_.learners, cc.node);
      break;
  }
  if (role_ != Role::kLeader) return;
  // The leader's progress follows the configuration.
  for (auto it = prs_.begin(); it != prs_.end();) {
    if (!IsVoter(it->first) && !Contains(conf_.learners, it->first)) {
      it = prs_.erase(it);
    } else {
      it->second.set_learner(!IsVoter(it->first));
      ++it;
    }
  }
  for (const auto* ids : {&conf_.voters, &conf_.learners}) {
    for (uint64_t n : *ids) {
      auto [it, added] = prs_.try_emplace(n, log_.LastIndex() + 1, cfg_.max_inflight_msgs, ids == &conf_.learners);
      if (added) it->second.set_recent_active(true);  // a new member gets an election timeout to answer
    }
  }
  if (!IsVoter(id_)) {
    // Removed or demoted: a leader must be a voter. Its last heartbeats tell
    // every follower, paused or not, that the change is committed; without
    // them the group could keep counting this node toward its quorum.
    BroadcastHeartbeat(std::string());
    BecomeFollower(term_, kNone);
    return;
  }
  if (lead_transferee_ != kNone && !IsVoter(lead_transferee_)) AbortTransfer();
  // A smaller quorum may commit more.
  if (MaybeCommit()) BroadcastAppend();
  for (auto& [id, pr] : prs_) {
    if (id != id_ && pr.match() == 0) SendAppend(id, true);
  }
}

// ---- Ready -----------------------------------------------------------------------------

bool Raft::HasReady() const {
  return HardState{term_, vote_, log_.committed()} != prev_hard_ || !log_.UnstableEntries().empty() ||
         log_.HasPendingSnapshot() || !msgs_.empty() || log_.HasNextCommitted() || !reads_.empty();
}

Ready Raft::GetReady() {
  Ready rd;
  const HardState hs{term_, vote_, log_.committed()};
  if (hs != prev_hard_) rd.hard_state = hs;
  rd.entries = log_.UnstableEntries();
  rd.snapshot = log_.UnstableSnapshot();
  rd.messages = std::move(msgs_);
  msgs_.clear();
  rd.committed = log_.NextCommitted(cfg_.max_committed_size_per_ready);
  rd.reads = std::move(reads_);
  reads_.clear();
  rd.role = role_;
  rd.leader = leader_;
  rd.term = term_;
  return rd;
}

void Raft::Advance(const Ready& rd) {
  if (rd.hard_state) prev_hard_ = *rd.hard_state;
  if (rd.snapshot) {
    log_.StableSnapTo(rd.snapshot->meta.index);
    if (rd.snapshot->meta.index > log_.applied()) log_.AppliedTo(rd.snapshot->meta.index);
  }
  if (!rd.entries.empty()) log_.StableTo(rd.entries.back().index, rd.entries.back().term);
  for (const Entry& e : rd.committed) {
    if (e.type != EntryType::kConfChange || e.index <= conf_applied_index_) continue;
    auto cc = ConfChange::Decode(e.data);
    CAIRN_CHECK(cc.ok(), "raft: committed entry %llu: %s", static_cast<unsigned long long>(e.index),
                cc.status().ToString().c_str());
    conf_applied_index_ = e.index;
    ApplyConfChange(*cc);
  }
  if (!rd.committed.empty()) {
    // Committed proposals no longer count against the leader's limit (the
    // entries are in hand here; MaybeCommit would have to read them back).
    if (role_ == Role::kLeader) uncommitted_bytes_ -= std::min(uncommitted_bytes_, DataBytes(rd.committed));
    const uint64_t last = rd.committed.back().index;
    if (last > conf_applied_index_) conf_applied_index_ = last;
    log_.AppliedTo(last);
  }
}

}  // namespace cairn::raft
