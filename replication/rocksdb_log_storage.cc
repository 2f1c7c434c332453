#include "replication/rocksdb_log_storage.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"
#include "storage/byte_codec.h"
#include "storage/kv_store.h"

namespace cairn::raft {
namespace {

using storage::ByteReader;
using storage::Cf;
using storage::PutU64;

constexpr char kGroupTag = 'g';
constexpr char kHard = 'h';
constexpr char kSnap = 's';
constexpr char kPrefix = 'p';
constexpr char kEntry = 'e';
constexpr std::string_view kNodeMetaPrefix = "n/";

void PutBigEndian(std::string* k, uint64_t v) {
  for (int i = 7; i >= 0; --i) k->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t GetBigEndian(std::string_view k) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(k[i]);
  return v;
}

std::string GroupPrefix(uint64_t gid) {
  std::string k(1, kGroupTag);
  PutBigEndian(&k, gid);
  return k;
}

std::string EncodeHard(const HardState& hs) {
  std::string v;
  PutU64(&v, hs.term);
  PutU64(&v, hs.vote);
  PutU64(&v, hs.commit);
  return v;
}

std::string EncodeSnapshot(const Snapshot& s) {
  std::string v;
  PutU64(&v, s.meta.index);
  PutU64(&v, s.meta.term);
  for (const auto* ids : {&s.meta.conf.voters, &s.meta.conf.learners}) {
    PutU64(&v, ids->size());
    for (uint64_t id : *ids) PutU64(&v, id);
  }
  v.append(s.data);
  return v;
}

std::string EncodeEntry(const Entry& e) {
  std::string v;
  PutU64(&v, e.term);
  v.push_back(static_cast<char>(e.type));
  v.append(e.data);
  return v;
}

absl::Status Corrupt(std::string_view what) {
  return absl::DataLossError(absl::StrCat("raft log: malformed ", std::string(what)));
}

absl::StatusOr<Entry> DecodeEntry(uint64_t index, std::string_view v) {
  ByteReader r{v};
  Entry e;
  e.index = index;
  e.term = r.U64();
  if (!r.ok || r.in.empty() || static_cast<uint8_t>(r.in[0]) > 1) return Corrupt(absl::StrCat("entry ", index));
  e.type = static_cast<EntryType>(r.in[0]);
  e.data = std::string(r.in.substr(1));
  return e;
}

}  // namespace

// ---- LogStore ---------------------------------------------------------------

LogStore::LogStore(std::unique_ptr<storage::KvStore> kv) : kv_(std::move(kv)) {}
LogStore::~LogStore() = default;

absl::StatusOr<std::unique_ptr<LogStore>> LogStore::Open(const std::string& dir) {
  storage::KvOptions opts;
  opts.sync = true;
  CAIRN_ASSIGN_OR_RETURN(auto kv, storage::KvStore::Open(dir, opts));
  return std::unique_ptr<LogStore>(new LogStore(std::move(kv)));
}

absl::StatusOr<std::unique_ptr<RocksLogStorage>> LogStore::OpenGroup(uint64_t gid) {
  if (gid == 0) return absl::InvalidArgumentError("raft log: group 0 is not a group id");
  std::unique_ptr<RocksLogStorage> s(new RocksLogStorage(kv_.get(), gid));
  CAIRN_RETURN_IF_ERROR(s->Load());
  return s;
}

absl::StatusOr<std::vector<uint64_t>> LogStore::ListGroups() const {
  std::vector<uint64_t> out;
  auto it = kv_->NewIterator(Cf::kMeta);
  // One seek per group: from each group's first key to past its last.
  for (it->Seek(std::string(1, kGroupTag)); it->Valid();) {
    const std::string_view key = it->key();
    if (key.size() < 9 || key[0] != kGroupTag) break;
    const uint64_t gid = GetBigEndian(key.substr(1));
    out.push_back(gid);
    if (gid == UINT64_MAX) break;
    it->Seek(GroupPrefix(gid + 1));
  }
  CAIRN_RETURN_IF_ERROR(it->status());
  return out;
}

absl::Status LogStore::DropGroup(uint64_t gid) {
  const std::string prefix = GroupPrefix(gid);
  storage::WriteBatch batch;
  auto it = kv_->NewIterator(Cf::kMeta);
  for (it->Seek(prefix); it->Valid() && it->key().substr(0, prefix.size()) == prefix; it->Next()) {
    batch.Delete(Cf::kMeta, it->key());
  }
  CAIRN_RETURN_IF_ERROR(it->status());
  if (batch.size() == 0) return absl::OkStatus();
  return kv_->Write(batch);
}

absl::Status LogStore::SaveReadies(const std::vector<std::pair<RocksLogStorage*, const Ready*>>& work) {
  storage::WriteBatch batch;
  std::vector<RocksLogStorage::Plan> plans;
  plans.reserve(work.size());
  for (const auto& [log, rd] : work) {
    if (log->kv_ != kv_.get()) return absl::InternalError("raft log: a group of another store");
    plans.push_back(log->NewPlan());
    CAIRN_RETURN_IF_ERROR(log->StageReady(*rd, &plans.back(), &batch));
  }
  if (batch.size() > 0) CAIRN_RETURN_IF_ERROR(kv_->Write(batch));  // synced
  for (size_t i = 0; i < work.size(); ++i) work[i].first->Install(std::move(plans[i]));
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> LogStore::GetMeta(const std::string& name) const {
  return kv_->Get(Cf::kMeta, absl::StrCat(std::string(kNodeMetaPrefix), name));
}

absl::Status LogStore::PutMeta(const std::string& name, const std::string& value) {
  storage::WriteBatch batch;
  batch.Put(Cf::kMeta, absl::StrCat(std::string(kNodeMetaPrefix), name), value);
  return kv_->Write(batch);
}

// ---- RocksLogStorage ---------------------------------------------------------

RocksLogStorage::RocksLogStorage(storage::KvStore* kv, uint64_t gid) : kv_(kv), gid_(gid) {}
RocksLogStorage::~RocksLogStorage() = default;

absl::StatusOr<std::unique_ptr<RocksLogStorage>> RocksLogStorage::Open(const std::string& dir) {
  CAIRN_ASSIGN_OR_RETURN(auto store, LogStore::Open(dir));
  CAIRN_ASSIGN_OR_RETURN(auto log, store->OpenGroup(1));
  log->owned_store_ = std::move(store);
  return log;
}

std::string RocksLogStorage::Key(char kind) const {
  std::string k = GroupPrefix(gid_);
  k.push_back(kind);
  return k;
}

std::string RocksLogStorage::EntryKey(uint64_t index) const {
  std::string k = Key(kEntry);
  PutBigEndian(&k, index);
  return k;
}

absl::Status RocksLogStorage::Load() {
  CAIRN_ASSIGN_OR_RETURN(auto hard, kv_->Get(Cf::kMeta, Key(kHard)));
  if (hard) {
    ByteReader r{*hard};
    hard_ = HardState{r.U64(), r.U64(), r.U64()};
    if (!r.ok || !r.in.empty()) return Corrupt("hard state");
  }
  CAIRN_ASSIGN_OR_RETURN(auto snap, kv_->Get(Cf::kMeta, Key(kSnap)));
  if (snap) {
    ByteReader r{*snap};
    snap_.meta.index = r.U64();
    snap_.meta.term = r.U64();
    snap_.meta.conf.voters = r.Ids();
    snap_.meta.conf.learners = r.Ids();
    if (!r.ok) return Corrupt("snapshot");
    snap_.data = std::string(r.in);
  }
  CAIRN_ASSIGN_OR_RETURN(auto prefix, kv_->Get(Cf::kMeta, Key(kPrefix)));
  if (prefix) {
    ByteReader r{*prefix};
    prefix_index_ = r.U64();
    prefix_term_ = r.U64();
    if (!r.ok || !r.in.empty()) return Corrupt("log prefix");
  }
  const std::string entry_prefix = Key(kEntry);
  auto it = kv_->NewIterator(Cf::kMeta);
  for (it->Seek(EntryKey(prefix_index_ + 1)); it->Valid(); it->Next()) {
    const std::string_view key = it->key();
    if (key.substr(0, entry_prefix.size()) != entry_prefix) break;
    if (key != EntryKey(LastIndex() + 1)) {
      return absl::DataLossError(absl::StrCat("raft log: entries are not contiguous after ", LastIndex()));
    }
    CAIRN_ASSIGN_OR_RETURN(Entry e, DecodeEntry(LastIndex() + 1, it->value()));
    terms_.push_back(e.term);
  }
  CAIRN_RETURN_IF_ERROR(it->status());
  if (hard_.commit > LastIndex()) {
    return absl::DataLossError(absl::StrCat("raft log: commit ", hard_.commit, " is past the last entry ", LastIndex()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Entry>> RocksLogStorage::Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes) const {
  if (lo < FirstIndex()) return absl::NotFoundError(absl::StrCat("raft log: entry ", lo, " is compacted"));
  if (hi > LastIndex() + 1 || lo > hi) {
    return absl::OutOfRangeError(absl::StrCat("raft log: entries [", lo, ", ", hi, ") past the last, ", LastIndex()));
  }
  std::vector<Entry> out;
  if (lo == hi) return out;
  uint64_t bytes = 0;
  auto it = kv_->NewIterator(Cf::kMeta);
  uint64_t i = lo;
  for (it->Seek(EntryKey(lo)); it->Valid() && i < hi; it->Next(), ++i) {
    if (it->key() != EntryKey(i)) return absl::DataLossError(absl::StrCat("raft log: entry ", i, " is missing"));
    CAIRN_ASSIGN_OR_RETURN(Entry e, DecodeEntry(i, it->value()));
    bytes += e.data.size();
    if (!out.empty() && bytes > max_bytes) break;
    out.push_back(std::move(e));
  }
  CAIRN_RETURN_IF_ERROR(it->status());
  if (out.empty()) return absl::DataLossError(absl::StrCat("raft log: entry ", lo, " is missing"));
  return out;
}

absl::StatusOr<uint64_t> RocksLogStorage::Term(uint64_t i) const {
  if (i < prefix_index_) return absl::NotFoundError(absl::StrCat("raft log: entry ", i, " is compacted"));
  if (i == prefix_index_) return prefix_term_;
  if (i > LastIndex()) return absl::OutOfRangeError(absl::StrCat("raft log: no entry ", i));
  return terms_[i - prefix_index_ - 1];
}

absl::Status RocksLogStorage::StageSnapshot(const Snapshot& snap, Plan* plan, storage::WriteBatch* batch) const {
  if (snap.meta.index <= snap_.meta.index) return absl::OkStatus();  // older than what we have
  for (uint64_t i = plan->prefix_index + 1; i <= plan->last; ++i) batch->Delete(Cf::kMeta, EntryKey(i));
  batch->Put(Cf::kMeta, Key(kSnap), EncodeSnapshot(snap));
  std::string prefix;
  PutU64(&prefix, snap.meta.index);
  PutU64(&prefix, snap.meta.term);
  batch->Put(Cf::kMeta, Key(kPrefix), prefix);
  plan->snap = snap;
  plan->prefix_index = snap.meta.index;
  plan->prefix_term = snap.meta.term;
  plan->last = snap.meta.index;
  return absl::OkStatus();
}

absl::Status RocksLogStorage::StageAppend(const std::vector<Entry>& entries, Plan* plan,
                                          storage::WriteBatch* batch) const {
  auto from = entries.begin();
  while (from != entries.end() && from->index <= plan->prefix_index) ++from;  // covered by the snapshot
  if (from == entries.end()) return absl::OkStatus();
  const uint64_t first = from->index;
  if (first > plan->last + 1) {
    return absl::InternalError(absl::StrCat("raft log: append at ", first, " leaves a gap after ", plan->last));
  }
  // Replaced entries go; new ones come.
  for (uint64_t i = first; i <= plan->last; ++i) batch->Delete(Cf::kMeta, EntryKey(i));
  plan->keep_terms = first - plan->prefix_index - 1;
  plan->appended.clear();
  for (auto it = from; it != entries.end(); ++it) {
    batch->Put(Cf::kMeta, EntryKey(it->index), EncodeEntry(*it));
    plan->appended.push_back(it->term);
  }
  plan->last = entries.back().index;
  return absl::OkStatus();
}

void RocksLogStorage::Install(Plan plan) {
  if (plan.snap) {
    snap_ = std::move(*plan.snap);
    terms_.clear();
  }
  prefix_index_ = plan.prefix_index;
  prefix_term_ = plan.prefix_term;
  if (plan.keep_terms) {
    terms_.resize(*plan.keep_terms);
    terms_.insert(terms_.end(), plan.appended.begin(), plan.appended.end());
  }
  if (plan.hard) hard_ = *plan.hard;
}

absl::Status RocksLogStorage::Commit(Plan plan, const storage::WriteBatch& batch) {
  if (batch.size() == 0) return absl::OkStatus();
  CAIRN_RETURN_IF_ERROR(kv_->Write(batch));  // synced
  Install(std::move(plan));
  return absl::OkStatus();
}

absl::Status RocksLogStorage::Append(const std::vector<Entry>& entries) {
  Plan plan = NewPlan();
  storage::WriteBatch batch;
  CAIRN_RETURN_IF_ERROR(StageAppend(entries, &plan, &batch));
  return Commit(std::move(plan), batch);
}

absl::Status RocksLogStorage::SetHardState(const HardState& hs) {
  Plan plan = NewPlan();
  storage::WriteBatch batch;
  batch.Put(Cf::kMeta, Key(kHard), EncodeHard(hs));
  plan.hard = hs;
  return Commit(std::move(plan), batch);
}

absl::Status RocksLogStorage::ApplySnapshot(const Snapshot& snap) {
  Plan plan = NewPlan();
  storage::WriteBatch batch;
  CAIRN_RETURN_IF_ERROR(StageSnapshot(snap, &plan, &batch));
  return Commit(std::move(plan), batch);
}

absl::Status RocksLogStorage::StageReady(const Ready& rd, Plan* plan, storage::WriteBatch* batch) const {
  if (rd.snapshot) CAIRN_RETURN_IF_ERROR(StageSnapshot(*rd.snapshot, plan, batch));
  CAIRN_RETURN_IF_ERROR(StageAppend(rd.entries, plan, batch));
  if (rd.hard_state) {
    batch->Put(Cf::kMeta, Key(kHard), EncodeHard(*rd.hard_state));
    plan->hard = *rd.hard_state;
  }
  return absl::OkStatus();
}

absl::Status RocksLogStorage::SaveReady(const Ready& rd) {
  Plan plan = NewPlan();
  storage::WriteBatch batch;
  CAIRN_RETURN_IF_ERROR(StageReady(rd, &plan, &batch));
  return Commit(std::move(plan), batch);
}

absl::Status RocksLogStorage::CreateSnapshot(uint64_t index, const ConfState& conf, std::string data, uint64_t keep) {
  if (index <= snap_.meta.index) return absl::OkStatus();
  if (index > LastIndex()) {
    return absl::InvalidArgumentError(absl::StrCat("raft log: snapshot at ", index, " past the last entry ", LastIndex()));
  }
  CAIRN_ASSIGN_OR_RETURN(uint64_t term, Term(index));
  Snapshot snap;
  snap.meta = SnapshotMeta{.index = index, .term = term, .conf = conf};
  snap.data = std::move(data);
  storage::WriteBatch batch;
  batch.Put(Cf::kMeta, Key(kSnap), EncodeSnapshot(snap));
  const uint64_t compact_to = index > keep ? index - keep : 0;
  uint64_t new_prefix = prefix_index_, new_prefix_term = prefix_term_;
  if (compact_to > prefix_index_) {
    for (uint64_t i = prefix_index_ + 1; i <= compact_to; ++i) batch.Delete(Cf::kMeta, EntryKey(i));
    CAIRN_ASSIGN_OR_RETURN(new_prefix_term, Term(compact_to));
    new_prefix = compact_to;
    std::string prefix;
    PutU64(&prefix, new_prefix);
    PutU64(&prefix, new_prefix_term);
    batch.Put(Cf::kMeta, Key(kPrefix), prefix);
  }
  CAIRN_RETURN_IF_ERROR(kv_->Write(batch));
  snap_ = std::move(snap);
  terms_.erase(terms_.begin(), terms_.begin() + static_cast<ptrdiff_t>(new_prefix - prefix_index_));
  prefix_index_ = new_prefix;
  prefix_term_ = new_prefix_term;
  return absl::OkStatus();
}

}  // namespace cairn::raft
