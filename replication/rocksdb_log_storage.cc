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

constexpr std::string_view kHardKey = "raft/hard";
constexpr std::string_view kSnapKey = "raft/snap";
constexpr std::string_view kPrefixKey = "raft/prefix";
constexpr std::string_view kEntryPrefix = "raft/e/";

std::string EntryKey(uint64_t index) {
  std::string k(kEntryPrefix);
  for (int i = 7; i >= 0; --i) k.push_back(static_cast<char>((index >> (8 * i)) & 0xff));
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

RocksLogStorage::RocksLogStorage(std::unique_ptr<storage::KvStore> kv) : kv_(std::move(kv)) {}
RocksLogStorage::~RocksLogStorage() = default;

absl::StatusOr<std::unique_ptr<RocksLogStorage>> RocksLogStorage::Open(const std::string& dir) {
  storage::KvOptions opts;
  opts.sync = true;
  CAIRN_ASSIGN_OR_RETURN(auto kv, storage::KvStore::Open(dir, opts));
  std::unique_ptr<RocksLogStorage> s(new RocksLogStorage(std::move(kv)));
  CAIRN_RETURN_IF_ERROR(s->Load());
  return s;
}

absl::Status RocksLogStorage::Load() {
  CAIRN_ASSIGN_OR_RETURN(auto hard, kv_->Get(Cf::kMeta, kHardKey));
  if (hard) {
    ByteReader r{*hard};
    hard_ = HardState{r.U64(), r.U64(), r.U64()};
    if (!r.ok || !r.in.empty()) return Corrupt("hard state");
  }
  CAIRN_ASSIGN_OR_RETURN(auto snap, kv_->Get(Cf::kMeta, kSnapKey));
  if (snap) {
    ByteReader r{*snap};
    snap_.meta.index = r.U64();
    snap_.meta.term = r.U64();
    snap_.meta.conf.voters = r.Ids();
    snap_.meta.conf.learners = r.Ids();
    if (!r.ok) return Corrupt("snapshot");
    snap_.data = std::string(r.in);
  }
  CAIRN_ASSIGN_OR_RETURN(auto prefix, kv_->Get(Cf::kMeta, kPrefixKey));
  if (prefix) {
    ByteReader r{*prefix};
    prefix_index_ = r.U64();
    prefix_term_ = r.U64();
    if (!r.ok || !r.in.empty()) return Corrupt("log prefix");
  }
  auto it = kv_->NewIterator(Cf::kMeta);
  for (it->Seek(EntryKey(prefix_index_ + 1)); it->Valid(); it->Next()) {
    const std::string_view key = it->key();
    if (key.substr(0, kEntryPrefix.size()) != kEntryPrefix) break;
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
  batch->Put(Cf::kMeta, kSnapKey, EncodeSnapshot(snap));
  std::string prefix;
  PutU64(&prefix, snap.meta.index);
  PutU64(&prefix, snap.meta.term);
  batch->Put(Cf::kMeta, kPrefixKey, prefix);
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

absl::Status RocksLogStorage::Commit(Plan plan, const storage::WriteBatch& batch) {
  if (batch.size() == 0) return absl::OkStatus();
  CAIRN_RETURN_IF_ERROR(kv_->Write(batch));  // synced
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
  batch.Put(Cf::kMeta, kHardKey, EncodeHard(hs));
  plan.hard = hs;
  return Commit(std::move(plan), batch);
}

absl::Status RocksLogStorage::ApplySnapshot(const Snapshot& snap) {
  Plan plan = NewPlan();
  storage::WriteBatch batch;
  CAIRN_RETURN_IF_ERROR(StageSnapshot(snap, &plan, &batch));
  return Commit(std::move(plan), batch);
}

absl::Status RocksLogStorage::SaveReady(const Ready& rd) {
  Plan plan = NewPlan();
  storage::WriteBatch batch;
  if (rd.snapshot) CAIRN_RETURN_IF_ERROR(StageSnapshot(*rd.snapshot, &plan, &batch));
  CAIRN_RETURN_IF_ERROR(StageAppend(rd.entries, &plan, &batch));
  if (rd.hard_state) {
    batch.Put(Cf::kMeta, kHardKey, EncodeHard(*rd.hard_state));
    plan.hard = *rd.hard_state;
  }
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
  batch.Put(Cf::kMeta, kSnapKey, EncodeSnapshot(snap));
  const uint64_t compact_to = index > keep ? index - keep : 0;
  uint64_t new_prefix = prefix_index_, new_prefix_term = prefix_term_;
  if (compact_to > prefix_index_) {
    for (uint64_t i = prefix_index_ + 1; i <= compact_to; ++i) batch.Delete(Cf::kMeta, EntryKey(i));
    CAIRN_ASSIGN_OR_RETURN(new_prefix_term, Term(compact_to));
    new_prefix = compact_to;
    std::string prefix;
    PutU64(&prefix, new_prefix);
    PutU64(&prefix, new_prefix_term);
    batch.Put(Cf::kMeta, kPrefixKey, prefix);
  }
  CAIRN_RETURN_IF_ERROR(kv_->Write(batch));
  snap_ = std::move(snap);
  terms_.erase(terms_.begin(), terms_.begin() + static_cast<ptrdiff_t>(new_prefix - prefix_index_));
  prefix_index_ = new_prefix;
  prefix_term_ = new_prefix_term;
  return absl::OkStatus();
}

}  // namespace cairn::raft
