#include "db/shard.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cairn/status.h"
#include "db/key_codec.h"
#include "db/memory_budget.h"
#include "db/shard_command.h"
#include "storage/byte_codec.h"
#include "storage/file_util.h"

namespace cairn::db {
namespace fs = std::filesystem;
using storage::Cf;
using storage::ByteReader;
using storage::PutBytes;
using storage::PutU64;

namespace {

constexpr size_t kMaxGroupOps = 64;
constexpr size_t kReplayChunk = 8192;
// The tail's chunks hold up to kTailChunk points; the indexer adds a chunk
// to the growing segment kIndexStep points at a time, so a search waits for
// at most one step's insertions (the segment's lock) rather than a chunk's.
constexpr size_t kTailChunk = 4096;
constexpr size_t kIndexStep = 256;
// Filtered searches scan exactly when the filter matches at most this many
// points, or this fraction of the shard: cheaper than a graph walk that skips
// most of what it visits, and exact.
constexpr uint64_t kExactScanMinPoints = 2048;
constexpr double kExactScanFraction = 0.05;
constexpr uint64_t kExactScanFloats = 2'500'000;
const std::vector<uint64_t> kNoIds;

// Keeps the best k of (score, id) pairs, each id once (a tail chunk being
// indexed is searched with the growing segment that takes its points: the
// same point may come from both).
void KeepBest(Metric metric, size_t k, std::vector<std::pair<float, uint64_t>>* v) {
  auto better = [metric](const auto& a, const auto& b) {
    if (a.first != b.first) return index::Better(metric, a.first, b.first);
    return a.second < b.second;
  };
  // The best k first (duplicates are rare: only while a chunk is indexed),
  // then every candidate in order only when the best k repeat an id.
  const size_t top = std::min(k, v->size());
  std::partial_sort(v->begin(), v->begin() + static_cast<ptrdiff_t>(top), v->end(), better);
  absl::flat_hash_set<uint64_t> seen;
  seen.reserve(top);
  bool repeated = false;
  for (size_t i = 0; i < top && !repeated; ++i) repeated = !seen.insert((*v)[i].second).second;
  if (!repeated) {
    v->resize(top);
    return;
  }
  std::sort(v->begin(), v->end(), better);
  seen.clear();
  size_t kept = 0;
  for (size_t i = 0; i < v->size() && kept < k; ++i) {
    if (seen.insert((*v)[i].second).second) (*v)[kept++] = (*v)[i];
  }
  v->resize(kept);
}

uint64_t TailLimit(const ShardOptions& o) {
  if (o.index.type == IndexType::kFlat || o.tail_floats == 0 || o.dimension == 0) return 0;
  return std::max<uint64_t>(kTailChunk, o.tail_floats / o.dimension);
}

}  // namespace

int IndexThreads(int configured) {
  if (configured > 0) return configured;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// What one committed operation does to memory, applied after the write.
struct Shard::Plan {
  std::vector<uint64_t> delete_ids;
  std::vector<std::string> index_remove;
  std::vector<uint64_t> add_ids;
  std::vector<float> add_vectors;  // prepared for the metric
  std::vector<std::string> index_add;
};

// Reads through pending changes of the commit group, then the store.
struct Shard::Txn {
  Shard* shard = nullptr;
  storage::WriteBatch group_batch;
  std::vector<Plan> plans;
  // Group overlay: external key -> internal id (nullopt: deleted), and
  // internal id -> encoded payload value.
  absl::flat_hash_map<std::string, std::optional<uint64_t>> ids;
  absl::flat_hash_map<uint64_t, std::string> payloads;
  // The current operation's own layer, merged into the group on success.
  storage::WriteBatch batch;
  Plan plan;
  absl::flat_hash_map<std::string, std::optional<uint64_t>> op_ids;
  absl::flat_hash_map<uint64_t, std::string> op_payloads;

  absl::StatusOr<std::optional<uint64_t>> LookupId(const std::string& ext) {
    if (auto it = op_ids.find(ext); it != op_ids.end()) return it->second;
    if (auto it = ids.find(ext); it != ids.end()) return it->second;
    CAIRN_ASSIGN_OR_RETURN(auto v, shard->kv_->Get(Cf::kIds, ext));
    if (!v) return std::optional<uint64_t>();
    if (v->size() != 8) return absl::DataLossError("malformed id map entry");
    return std::optional<uint64_t>(DecodeInternalKey(*v));
  }
  absl::StatusOr<std::string> LookupPayload(uint64_t id) {
    if (auto it = op_payloads.find(id); it != op_payloads.end()) return it->second;
    if (auto it = payloads.find(id); it != payloads.end()) return it->second;
    CAIRN_ASSIGN_OR_RETURN(auto v, shard->kv_->Get(Cf::kPayloads, InternalKey(id)));
    if (!v) return absl::DataLossError(absl::StrCat("point ", id, " has no payload record"));
    return *std::move(v);
  }
  // Removes live point `old` (its vector, payload, index keys, reverse id).
  absl::Status RemovePoint(uint64_t old) {
    // Its payload index keys (none to look up without indexed fields).
    if (!shard->options_.payload_indexes.empty()) {
      CAIRN_ASSIGN_OR_RETURN(std::string value, LookupPayload(old));
      std::string_view pj, text;
      if (!DecodePayloadValue(value, &pj, &text)) return absl::DataLossError("malformed payload record");
      Json payload = Json::parse(pj, nullptr, false);
      if (!payload.is_discarded()) {
        for (auto& key : shard->payload_index_.KeysFor(payload, old)) {
          batch.Delete(Cf::kPayloadIndex, key);
          plan.index_remove.push_back(std::move(key));
        }
      }
    }
    const std::string ik = InternalKey(old);
    batch.Delete(Cf::kRids, ik);
    batch.Delete(Cf::kVectors, ik);
    batch.Delete(Cf::kPayloads, ik);
    plan.delete_ids.push_back(old);
    return absl::OkStatus();
  }
  void BeginOp() {
    batch.Clear();
    plan = Plan();
    op_ids.clear();
    op_payloads.clear();
  }
  void EndOp(bool ok) {
    if (!ok) return;
    group_batch.Append(batch);
    plans.push_back(std::move(plan));
    for (auto& [k, v] : op_ids) ids[k] = v;
    for (auto& [k, v] : op_payloads) payloads[k] = std::move(v);
  }
};

struct Shard::Writer {
  std::function<absl::Status(Txn&)> prepare;
  absl::Status status;
  bool done = false;
  std::condition_variable cv;
};

Shard::Shard(std::string dir, ShardOptions options, std::unique_ptr<storage::KvStore> kv)
    : dir_(std::move(dir)),
      options_(std::move(options)),
      tunables_{options_.index.ef_search, options_.index.nprobe, options_.index.rerank_factor,
                options_.seal_threshold, options_.compaction_deleted_ratio},
      kv_(std::move(kv)),
      tail_limit_(TailLimit(options_)),
      train_points_(tail_limit_ > 0 ? index::Segment::GrowingTrainPoints(options_.index) : 0),
      payload_index_(options_.payload_indexes) {}

ShardTunables Shard::Tunables() const {
  std::lock_guard l(tunables_mu_);
  return tunables_;
}

void Shard::SetTunables(const ShardTunables& t) {
  std::lock_guard l(tunables_mu_);
  tunables_ = t;
}

Shard::~Shard() { StopIndexer(); }

std::string Shard::SegmentPath(const std::string& file) const {
  return (fs::path(dir_) / "segments" / file).string();
}

std::string Shard::NewSegmentFile() {
  std::lock_guard commit(commit_mu_);
  return absl::StrFormat("seg-%08d.cseg", next_file_++);
}

std::string Shard::VectorFileName(const std::string& segment_file) {
  return fs::path(segment_file).replace_extension(".vec").string();
}

absl::StatusOr<std::unique_ptr<Shard>> Shard::Open(const std::string& dir, const ShardOptions& options,
                                                   const Shard* vectors_from) {
  std::error_code ec;
  fs::create_directories(fs::path(dir) / "segments", ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", dir, ": ", ec.message()));
  storage::KvOptions kv_options;
  kv_options.sync = options.sync_writes;
  kv_options.memory = options.kv_memory;
  CAIRN_ASSIGN_OR_RETURN(auto kv, storage::KvStore::Open((fs::path(dir) / "kv").string(), kv_options));
  auto shard = std::unique_ptr<Shard>(new Shard(dir, options, std::move(kv)));
  CAIRN_RETURN_IF_ERROR(shard->Load(vectors_from));
  ReleaseFreeMemory();  // what reading the segments and replaying the log took for a while
  {
    std::lock_guard commit(shard->commit_mu_);
    std::shared_lock state(shard->state_mu_);
    shard->NoteGrowingSizeLocked();  // a growing segment replayed flat: trained by the indexer
  }
  if (shard->UsesTail() && options.index_in_background) shard->indexer_ = std::thread([s = shard.get()] { s->IndexerLoop(); });
  return shard;
}

absl::Status Shard::Load(const Shard* vectors_from) {
  // Meta: next id and manifest.
  CAIRN_ASSIGN_OR_RETURN(auto next, kv_->Get(Cf::kMeta, kMetaNextId));
  if (next) {
    if (next->size() != 8) return absl::DataLossError("malformed next_id");
    next_id_ = DecodeInternalKey(*next);
  }
  CAIRN_ASSIGN_OR_RETURN(auto applied, kv_->Get(Cf::kMeta, kMetaApplied));
  if (applied) {
    if (applied->size() != 8) return absl::DataLossError("malformed applied index");
    applied_index_ = DecodeInternalKey(*applied);
  }
  CAIRN_ASSIGN_OR_RETURN(auto split, kv_->Get(Cf::kMeta, kMetaSplit));
  if (split) {
    ByteReader rd{*split};
    const uint64_t modulus = rd.U64(), residue = rd.U64();
    split_.child_group = rd.U64();
    split_.index = rd.U64();
    const uint64_t wmod = rd.U64(), wres = rd.U64();
    if (!rd.ok || !rd.in.empty() || modulus > kMaxHashModulus || (modulus != 0 && residue >= modulus) ||
        wmod > kMaxHashModulus || (wmod != 0 && wres >= wmod) || (wmod == 0 && modulus != 0)) {
      return absl::DataLossError("malformed split record");
    }
    split_.cls = HashClass{static_cast<uint32_t>(modulus), static_cast<uint32_t>(residue)};
    split_.writes = HashClass{static_cast<uint32_t>(wmod), static_cast<uint32_t>(wres)};
  }
  if (options_.load_class.modulus != 0) {
    // A split's copy: it reads and takes writes as the class it keeps (which
    // KeepHashClass then records).
    split_.cls = split_.writes = options_.load_class;
  }
  CAIRN_ASSIGN_OR_RETURN(auto manifest_text, kv_->Get(Cf::kMeta, kMetaManifest));
  std::vector<std::string> files;
  std::vector<std::string> vector_files;  // per segment file, "" for none
  std::string growing_file;
  uint64_t growing_max_id = 0;
  if (manifest_text) {
    Json m = Json::parse(*manifest_text, nullptr, false);
    if (m.is_discarded() || !m.contains("segments")) return absl::DataLossError("malformed manifest");
    sealed_through_ = m.value("sealed_through", uint64_t{0});
    next_file_ = m.value("next_file", uint64_t{1});
    for (const auto& s : m["segments"]) {
      files.push_back(s.at("file").get<std::string>());
      vector_files.push_back(s.value("vectors", std::string()));
    }
    if (m.contains("growing") && m["growing"].is_object()) {
      growing_file = m["growing"].value("file", std::string());
      growing_max_id = m["growing"].value("max_id", uint64_t{0});
    }
  }
  // Live set: without the points a split left outside the class (still in
  // storage until DropForeign deletes them).
  {
    auto it = kv_->NewIterator(Cf::kRids);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (split_.cls.Contains(it->value())) {
        live_.add(DecodeInternalKey(it->key()));
      } else {
        foreign_left_.store(true, std::memory_order_relaxed);
      }
    }
    CAIRN_RETURN_IF_ERROR(it->status());
  }
  // Payload index.
  {
    auto it = kv_->NewIterator(Cf::kPayloadIndex);
    for (it->SeekToFirst(); it->Valid(); it->Next()) payload_index_.AddKey(it->key());
    CAIRN_RETURN_IF_ERROR(it->status());
  }
  // Sealed segments, with tombstones for points deleted since they were built.
  bool dropped_vector_file = false;
  for (size_t i = 0, n = files.size(); i < n; ++i) {
    const std::string file = files[i];  // files grows below
    CAIRN_ASSIGN_OR_RETURN(auto seg, index::Segment::Load(SegmentPath(file), &options_.index));
    if (seg->dim() != options_.dimension) {
      return absl::DataLossError(absl::StrCat("segment ", file, " has dimension ", seg->dim()));
    }
    for (uint64_t id : seg->Ids()) {
      if (!live_.contains(id)) seg->MarkDeleted(id);
    }
    std::string vectors = vector_files[i];
    if (!vectors.empty()) {
      // Derived state: without it, re-ranking reads the vectors from storage.
      auto vf = index::VectorFile::Open(SegmentPath(vectors), seg->dim(), seg->size());
      if (vf.ok()) {
        seg->AttachVectorFile(*std::move(vf));
        files.push_back(vectors);
      } else {
        std::fprintf(stderr, "cairn: %s: %s; segment %s re-ranks from storage\n", dir_.c_str(),
                     vf.status().ToString().c_str(), file.c_str());
        vectors.clear();
        dropped_vector_file = true;
      }
    }
    sealed_.push_back(SealedRef{std::shared_ptr<index::Segment>(std::move(seg)), file, vectors});
  }
  // The growing segment: its saved copy when there is a good one, with
  // tombstones for points deleted since; then the writes after it.
  uint64_t replay_from = sealed_through_ + 1;
  if (!growing_file.empty()) {
    auto saved = index::Segment::LoadGrowing(SegmentPath(growing_file), options_.dimension, options_.metric,
                                             options_.index);
    if (saved.ok() && ((*saved)->size() == 0 || (*saved)->min_id() <= sealed_through_ ||
                       (*saved)->max_id() != growing_max_id)) {
      saved = absl::DataLossError(absl::StrCat("it holds ids ", (*saved)->min_id(), "..", (*saved)->max_id(),
                                               "; the manifest expects ", sealed_through_ + 1, "..", growing_max_id));
    }
    if (saved.ok()) {
      for (uint64_t id : (*saved)->Ids()) {
        if (!live_.contains(id)) (*saved)->MarkDeleted(id);
      }
      growing_saved_ = (*saved)->size();
      growing_ = std::move(*saved);
      growing_file_ = growing_file;
      growing_saved_max_id_ = growing_max_id;
      replay_from = growing_max_id + 1;
      files.push_back(growing_file);
    } else {
      std::fprintf(stderr, "cairn: %s: the growing segment's saved copy %s is not usable (%s); rebuilding it from storage\n",
                   dir_.c_str(), growing_file.c_str(), saved.status().ToString().c_str());
      // A manifest without it, so the next open does not say this again.
      std::lock_guard commit(commit_mu_);
      if (absl::Status st = WriteManifestLocked(); !st.ok()) {
        std::fprintf(stderr, "cairn: %s: cannot drop it from the manifest: %s\n", dir_.c_str(), st.ToString().c_str());
      }
    }
  }
  if (growing_ == nullptr) {
    CAIRN_ASSIGN_OR_RETURN(auto growing, index::Segment::CreateGrowing(options_.dimension, options_.metric,
                                                                       options_.index));
    growing_ = std::move(growing);
  }
  if (dropped_vector_file) {
    std::lock_guard commit(commit_mu_);
    if (absl::Status st = WriteManifestLocked(); !st.ok()) {
      std::fprintf(stderr, "cairn: %s: cannot drop the unusable vector file from the manifest: %s\n", dir_.c_str(),
                   st.ToString().c_str());
    }
  }
  // Files the manifest does not name are leftovers of an interrupted seal or
  // save (or an unusable saved copy).
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fs::path(dir_) / "segments", ec)) {
    std::string name = entry.path().filename().string();
    if (std::find(files.begin(), files.end(), name) == files.end()) fs::remove(entry.path(), ec);
  }
  const size_t dim = options_.dimension;
  if (vectors_from != nullptr) return ReplayFrom(*vectors_from, replay_from);
  auto it = kv_->NewIterator(Cf::kVectors);
  std::vector<uint64_t> ids;
  std::vector<float> vecs;
  auto flush = [&]() -> absl::Status {
    index::PrepareVectors(options_.metric, vecs.data(), ids.size(), dim);
    CAIRN_RETURN_IF_ERROR(growing_->Add(vecs.data(), ids.data(), ids.size(), IndexThreads(options_.index_threads)));
    ids.clear();
    vecs.clear();
    return absl::OkStatus();
  };
  for (it->Seek(InternalKey(replay_from)); it->Valid(); it->Next()) {
    if (it->value().size() != dim * sizeof(float)) {
      return absl::DataLossError(absl::StrCat("vector record of ", it->value().size(), " bytes"));
    }
    if (!live_.contains(DecodeInternalKey(it->key()))) continue;  // outside the class (a split)
    ids.push_back(DecodeInternalKey(it->key()));
    const float* f = reinterpret_cast<const float*>(it->value().data());
    vecs.insert(vecs.end(), f, f + dim);
    if (ids.size() == kReplayChunk) CAIRN_RETURN_IF_ERROR(flush());
  }
  CAIRN_RETURN_IF_ERROR(it->status());
  if (!ids.empty()) CAIRN_RETURN_IF_ERROR(flush());
  return absl::OkStatus();
}

absl::Status Shard::ReplayFrom(const Shard& source, uint64_t from) {
  // As Load's replay from storage, in id order: the live points from `from`
  // on, their vectors from `source`'s memory, the rest from storage (a point
  // without a vector record is left out, as there).
  const size_t dim = options_.dimension;
  std::vector<uint64_t> ids;
  std::vector<float> vecs;
  std::vector<bool> found;
  auto flush = [&]() -> absl::Status {
    vecs.assign(ids.size() * dim, 0.0f);
    found.assign(ids.size(), false);
    source.CopyVectorsInMemory(ids, vecs.data(), &found);
    CAIRN_RETURN_IF_ERROR(FillFromStorage(ids, &vecs, &found));
    KeepFound(found, dim, &ids, &vecs);
    if (!ids.empty()) {
      CAIRN_RETURN_IF_ERROR(growing_->Add(vecs.data(), ids.data(), ids.size(), IndexThreads(options_.index_threads)));
    }
    ids.clear();
    return absl::OkStatus();
  };
  for (uint64_t id : live_) {
    if (id < from) continue;
    ids.push_back(id);
    if (ids.size() == kReplayChunk) CAIRN_RETURN_IF_ERROR(flush());
  }
  if (!ids.empty()) CAIRN_RETURN_IF_ERROR(flush());
  return absl::OkStatus();
}

absl::Status Shard::FillFromStorage(const std::vector<uint64_t>& ids, std::vector<float>* vecs,
                                    std::vector<bool>* found) const {
  std::vector<uint64_t> rest;
  std::vector<size_t> at;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!(*found)[i]) {
      rest.push_back(ids[i]);
      at.push_back(i);
    }
  }
  if (rest.empty()) return absl::OkStatus();
  const size_t dim = options_.dimension;
  std::vector<float> raw;
  std::vector<bool> got;
  CAIRN_RETURN_IF_ERROR(RawVectors(rest, &raw, &got));
  for (size_t j = 0; j < rest.size(); ++j) {
    if (!got[j]) continue;
    std::memcpy(&(*vecs)[at[j] * dim], &raw[j * dim], dim * sizeof(float));
    (*found)[at[j]] = true;
  }
  return absl::OkStatus();
}

void Shard::KeepFound(const std::vector<bool>& found, size_t dim, std::vector<uint64_t>* ids,
                      std::vector<float>* vecs) {
  size_t w = 0;
  for (size_t i = 0; i < ids->size(); ++i) {
    if (!found[i]) continue;
    (*ids)[w] = (*ids)[i];
    if (w != i) std::memcpy(&(*vecs)[w * dim], &(*vecs)[i * dim], dim * sizeof(float));
    ++w;
  }
  ids->resize(w);
  vecs->resize(w * dim);
}

void Shard::CopyVectorsInMemory(absl::Span<const uint64_t> sorted_ids, float* out, std::vector<bool>* found) const {
  std::vector<std::shared_ptr<index::Segment>> segs;
  {
    std::shared_lock state(state_mu_);
    segs = AllSegmentsLocked();
  }
  for (const auto& seg : segs) {
    if (seg->size() == 0) continue;
    auto lo = std::lower_bound(sorted_ids.begin(), sorted_ids.end(), seg->min_id());
    auto hi = std::upper_bound(sorted_ids.begin(), sorted_ids.end(), seg->max_id());
    if (lo >= hi) continue;
    const size_t at = static_cast<size_t>(lo - sorted_ids.begin());
    std::vector<bool> part(static_cast<size_t>(hi - lo), false);
    seg->CopyVectors(absl::MakeConstSpan(&*lo, part.size()), out + at * options_.dimension, &part);
    for (size_t i = 0; i < part.size(); ++i) {
      if (part[i]) (*found)[at + i] = true;
    }
  }
}

// ---- writes ----------------------------------------------------------------

absl::Status Shard::Commit(std::function<absl::Status(Txn&)> prepare) {
  Writer w;
  w.prepare = std::move(prepare);
  std::unique_lock lk(queue_mu_);
  writers_.push_back(&w);
  while (!w.done && &w != writers_.front()) w.cv.wait(lk);
  if (w.done) return w.status;

  // Leader: take the queued writers (up to a limit) as one group.
  std::vector<Writer*> group;
  for (Writer* x : writers_) {
    if (group.size() == kMaxGroupOps) break;
    group.push_back(x);
  }
  lk.unlock();
  WaitForTailRoom();
  {
    std::lock_guard commit(commit_mu_);
    Txn txn;
    txn.shard = this;
    uint64_t first_id = next_id_;
    for (Writer* x : group) {
      txn.BeginOp();
      x->status = bulk_loading_ ? absl::UnavailableError("a bulk load into this collection is running; write when it is done")
                                : x->prepare(txn);
      txn.EndOp(x->status.ok());
    }
    if (absl::Status s = WriteTxnLocked(txn, first_id, 0); !s.ok()) {
      for (Writer* x : group) {
        if (x->status.ok()) x->status = s;
      }
    }
  }
  lk.lock();
  for (Writer* x : group) {
    writers_.pop_front();
    x->done = true;
    if (x != &w) x->cv.notify_one();
  }
  if (!writers_.empty()) writers_.front()->cv.notify_one();
  return w.status;
}

absl::Status Shard::WriteTxnLocked(Txn& txn, uint64_t first_id, uint64_t applied) {
  if (txn.group_batch.size() == 0 && applied == 0) return absl::OkStatus();
  txn.group_batch.Put(Cf::kMeta, kMetaNextId, InternalKey(next_id_));
  if (applied != 0) txn.group_batch.Put(Cf::kMeta, kMetaApplied, InternalKey(applied));
  if (absl::Status s = kv_->Write(txn.group_batch); !s.ok()) {
    next_id_ = first_id;
    return s;
  }
  for (const Plan& p : txn.plans) ApplyPlan(p);
  if (applied != 0) applied_index_.store(applied, std::memory_order_release);
  return absl::OkStatus();
}

void Shard::ApplyPlan(const Plan& plan) {
  // REQUIRES: commit_mu_ held (so growing_ and frozen_ do not change).
  std::vector<std::shared_ptr<index::Segment>> segs;
  {
    std::unique_lock state(state_mu_);
    ++epoch_;
    for (uint64_t id : plan.delete_ids) {
      live_.remove(id);
      id_cache_.Erase(id);
    }
    for (const auto& k : plan.index_remove) payload_index_.RemoveKey(k);
    segs = AllSegmentsLocked();
  }
  // Every segment that may hold it: a tail chunk being indexed shares its
  // ids with the growing segment.
  for (uint64_t id : plan.delete_ids) {
    for (auto& s : segs) {
      if (id >= s->min_id() && id <= s->max_id()) s->MarkDeleted(id);
    }
  }
  // A flat growing segment (an IVF collection's, untrained) takes points
  // directly while the tail is empty; growing_ and tail_ change only with
  // commit_mu_ held, as it is here.
  bool direct = !UsesTail();
  if (!direct && !plan.add_ids.empty()) {
    std::shared_lock state(state_mu_);
    direct = tail_.empty() && growing_->type() == IndexType::kFlat;
  }
  if (!plan.add_ids.empty() && !direct) {
    AppendToTail(plan.add_ids, plan.add_vectors);
  } else if (!plan.add_ids.empty()) {
    absl::Status s = growing_->Add(plan.add_vectors.data(), plan.add_ids.data(), plan.add_ids.size(),
                                   IndexThreads(options_.index_threads));
    // The write is durable; an index failure here is a bug, not a user error.
    if (!s.ok()) {
      fprintf(stderr, "cairn: FATAL: growing segment add failed: %s\n", s.ToString().c_str());
      std::abort();
    }
  }
  std::unique_lock state(state_mu_);
  ++epoch_;
  for (uint64_t id : plan.add_ids) live_.add(id);
  for (const auto& k : plan.index_add) payload_index_.AddKey(k);
  if (direct && !plan.add_ids.empty()) NoteGrowingSizeLocked();
}

// ---- the tail and its indexer ----------------------------------------------

void Shard::AppendToTail(const std::vector<uint64_t>& ids, const std::vector<float>& vecs) {
  // REQUIRES: commit_mu_ held: the indexer freezes chunks with it held, so
  // the last chunk cannot be frozen between the check and the add.
  const size_t dim = options_.dimension;
  IndexSpec flat;
  flat.type = IndexType::kFlat;
  flat.device = Device::kCpu;
  for (size_t done = 0; done < ids.size();) {
    std::shared_ptr<index::Segment> chunk;
    {
      std::shared_lock state(state_mu_);
      if (!tail_.empty() && !tail_.back()->frozen() && tail_.back()->size() < kTailChunk) chunk = tail_.back();
    }
    if (chunk == nullptr) {
      auto made = index::Segment::CreateGrowing(options_.dimension, options_.metric, flat);
      if (!made.ok()) {
        fprintf(stderr, "cairn: FATAL: cannot make a tail chunk: %s\n", made.status().ToString().c_str());
        std::abort();
      }
      chunk = std::move(*made);
      std::unique_lock state(state_mu_);
      tail_.push_back(chunk);
    }
    const size_t n = std::min(ids.size() - done, kTailChunk - chunk->size());
    // The write is durable; a failure here is a bug, not a user error.
    if (absl::Status s = chunk->Add(vecs.data() + done * dim, ids.data() + done, n, 1); !s.ok()) {
      fprintf(stderr, "cairn: FATAL: tail add failed: %s\n", s.ToString().c_str());
      std::abort();
    }
    done += n;
  }
  tail_points_.fetch_add(ids.size(), std::memory_order_acq_rel);
  std::lock_guard l(indexer_mu_);
  indexer_cv_.notify_one();
}

void Shard::WaitForTailRoom() {
  if (!UsesTail() || tail_points_.load(std::memory_order_acquire) < tail_limit_) return;
  if (!options_.index_in_background) {
    std::lock_guard index(index_mu_);
    while (tail_points_.load(std::memory_order_acquire) >= tail_limit_ && IndexOneChunkLocked()) {
    }
    return;
  }
  std::unique_lock l(indexer_mu_);
  room_cv_.wait(l, [this] { return indexer_stop_ || tail_points_.load(std::memory_order_acquire) < tail_limit_; });
}

bool Shard::IndexOneChunkLocked() {
  std::shared_ptr<index::Segment> chunk, growing;
  {
    std::lock_guard commit(commit_mu_);
    std::shared_lock state(state_mu_);
    if (tail_.empty()) return false;
    chunk = tail_.front();
    growing = growing_;  // replaced only with index_mu_ held
    chunk->Freeze();     // writers start a new chunk
  }
  // The chunk now changes only by tombstones. Its live points go to the
  // growing segment in ascending id order, above every id it holds.
  std::vector<uint64_t> ids;
  for (uint64_t id : chunk->Ids()) {
    if (chunk->IsLive(id)) ids.push_back(id);
  }
  const size_t dim = options_.dimension;
  std::vector<float> vecs(ids.size() * dim);
  std::vector<bool> found(ids.size(), false);
  chunk->CopyVectors(ids, vecs.data(), &found);
  const int threads = IndexThreads(options_.index_threads);
  for (size_t at = 0; at < ids.size(); at += kIndexStep) {
    const size_t n = std::min(kIndexStep, ids.size() - at);
    if (absl::Status s = growing->Add(vecs.data() + at * dim, ids.data() + at, n, threads); !s.ok()) {
      fprintf(stderr, "cairn: FATAL: indexing the tail failed: %s\n", s.ToString().c_str());
      std::abort();
    }
  }
  const uint64_t moved = chunk->size();
  {
    std::lock_guard commit(commit_mu_);  // no delete is half applied
    std::unique_lock state(state_mu_);
    ++epoch_;
    for (uint64_t id : ids) {
      if (!live_.contains(id)) growing->MarkDeleted(id);  // deleted while it was added
    }
    tail_.pop_front();
    NoteGrowingSizeLocked();
  }
  tail_points_.fetch_sub(moved, std::memory_order_acq_rel);
  std::lock_guard l(indexer_mu_);
  room_cv_.notify_all();
  return true;
}

void Shard::NoteGrowingSizeLocked() {
  if (train_points_ == 0 || growing_->type() != IndexType::kFlat) return;
  const uint64_t live = growing_->size() - growing_->num_deleted();
  // One that will be sealed soon is trained by the seal instead.
  if (live < std::max(train_points_, train_after_) || growing_->size() >= Tunables().seal_threshold) return;
  if (train_due_.exchange(true)) return;
  std::lock_guard l(indexer_mu_);
  indexer_cv_.notify_one();
}

void Shard::TrainGrowingLocked() {
  train_due_ = false;
  std::shared_ptr<index::Segment> flat;
  {
    std::shared_lock state(state_mu_);
    if (growing_->type() != IndexType::kFlat) return;
    flat = growing_;  // replaced only with index_mu_ held
  }
  // Trained and filled from what it holds now, with no lock held: writers
  // go on adding to `flat` meanwhile.
  std::vector<uint64_t> ids;
  std::vector<float> vecs;
  absl::StatusOr<std::unique_ptr<index::Segment>> built = absl::UnknownError("not built");
  if (absl::Status s = LiveVectorsOf(*flat, &ids, &vecs); !s.ok()) {
    built = s;
  } else {
    built = index::Segment::BuildGrowing(options_.dimension, options_.metric, options_.index, vecs.data(),
                                         ids.data(), ids.size(), IndexThreads(options_.index_threads));
  }
  if (!built.ok()) {
    std::fprintf(stderr, "cairn: %s: training the growing segment failed (it stays flat; tried again at twice "
                 "its size): %s\n", dir_.c_str(), built.status().ToString().c_str());
    std::lock_guard commit(commit_mu_);
    train_after_ = 2 * std::max<uint64_t>(ids.size(), train_points_);
    return;
  }
  std::shared_ptr<index::Segment> trained = std::move(*built);
  // The points written since: in rounds while writers go on, the last one
  // (at most about a chunk) with writers waiting.
  const size_t dim = options_.dimension;
  auto catch_up = [&](size_t at_most) -> bool {
    std::vector<uint64_t> rest;
    for (uint64_t id : flat->Ids()) {
      if (id > trained->max_id()) rest.push_back(id);
    }
    if (rest.size() > at_most) return false;
    std::vector<float> v(rest.size() * dim);
    std::vector<bool> found(rest.size(), false);
    flat->CopyVectors(rest, v.data(), &found);
    if (absl::Status s = trained->Add(v.data(), rest.data(), rest.size(), IndexThreads(options_.index_threads));
        !s.ok()) {
      fprintf(stderr, "cairn: FATAL: adding to the trained growing segment failed: %s\n", s.ToString().c_str());
      std::abort();
    }
    return true;
  };
  for (int round = 0; round < 8 && !catch_up(kTailChunk); ++round) {
    catch_up(SIZE_MAX);
  }
  std::lock_guard commit(commit_mu_);
  catch_up(SIZE_MAX);
  std::unique_lock state(state_mu_);
  ++epoch_;
  for (uint64_t id : trained->Ids()) {
    if (!live_.contains(id)) trained->MarkDeleted(id);  // deleted meanwhile
  }
  growing_ = std::move(trained);
}

void Shard::IndexerLoop() {
  for (;;) {
    {
      std::unique_lock l(indexer_mu_);
      indexer_cv_.wait(l, [this] {
        return indexer_stop_ || train_due_.load() || tail_points_.load(std::memory_order_acquire) > 0;
      });
      if (indexer_stop_) return;
    }
    // The tail first: writes go straight to a flat growing segment (and go
    // on during its training) only while the tail is empty.
    std::lock_guard index(index_mu_);
    if (!IndexOneChunkLocked() && train_due_.load()) TrainGrowingLocked();
  }
}

void Shard::StopIndexer() {
  {
    std::lock_guard l(indexer_mu_);
    indexer_stop_ = true;
  }
  indexer_cv_.notify_all();
  room_cv_.notify_all();
  if (indexer_.joinable()) indexer_.join();
}

absl::Status Shard::PrepareUpsert(Txn& txn, const std::vector<PreparedPoint>& points) {
  const size_t dim = options_.dimension;
  txn.plan.add_ids.reserve(points.size());
  txn.plan.add_vectors.reserve(points.size() * dim);
  for (const auto& p : points) {
    CAIRN_ASSIGN_OR_RETURN(auto old, txn.LookupId(p.ext_key));
    if (old) CAIRN_RETURN_IF_ERROR(txn.RemovePoint(*old));
    uint64_t id = next_id_++;
    const std::string ik = InternalKey(id);
    txn.batch.Put(Cf::kIds, p.ext_key, ik);
    txn.batch.Put(Cf::kRids, ik, p.ext_key);
    txn.batch.Put(Cf::kVectors, ik, EncodeVector(p.vector));
    std::string value = EncodePayloadValue(p.payload_json, p.text);
    txn.batch.Put(Cf::kPayloads, ik, value);
    for (auto& key : payload_index_.KeysFor(p.payload, id)) {
      txn.batch.Put(Cf::kPayloadIndex, key, "");
      txn.plan.index_add.push_back(std::move(key));
    }
    txn.op_ids[p.ext_key] = id;
    txn.op_payloads[id] = std::move(value);
    txn.plan.add_ids.push_back(id);
    txn.plan.add_vectors.insert(txn.plan.add_vectors.end(), p.vector.begin(), p.vector.end());
  }
  index::PrepareVectors(options_.metric, txn.plan.add_vectors.data(), txn.plan.add_ids.size(), dim);
  return absl::OkStatus();
}

absl::Status Shard::PrepareDelete(Txn& txn, const std::vector<std::string>& ext_keys,
                                  const std::vector<uint64_t>& expected, uint64_t* deleted) {
  *deleted = 0;
  for (size_t i = 0; i < ext_keys.size(); ++i) {
    const std::string& ext = ext_keys[i];
    CAIRN_ASSIGN_OR_RETURN(auto old, txn.LookupId(ext));
    if (!old) continue;
    // Overwritten since the caller looked: the new version was not judged.
    if (!expected.empty() && *old != expected[i]) continue;
    CAIRN_RETURN_IF_ERROR(txn.RemovePoint(*old));
    txn.batch.Delete(Cf::kIds, ext);
    txn.op_ids[ext] = std::nullopt;
    ++*deleted;
  }
  return absl::OkStatus();
}

absl::Status Shard::PrepareSetPayload(Txn& txn, const std::vector<std::string>& ext_keys, const Json& payload,
                                      bool overwrite) {
  std::vector<uint64_t> ids;
  for (const auto& ext : ext_keys) {
    CAIRN_ASSIGN_OR_RETURN(auto id, txn.LookupId(ext));
    if (!id) {
      auto pid = DecodeExternalKey(ext);
      return absl::NotFoundError(absl::StrCat("point ", pid.ok() ? pid->ToString() : "?", " does not exist"));
    }
    ids.push_back(*id);
  }
  for (uint64_t id : ids) {
    CAIRN_ASSIGN_OR_RETURN(std::string value, txn.LookupPayload(id));
    std::string_view pj, text;
    if (!DecodePayloadValue(value, &pj, &text)) return absl::DataLossError("malformed payload record");
    Json old = Json::parse(pj, nullptr, false);
    if (old.is_discarded() || !old.is_object()) old = Json::object();
    Json merged = overwrite ? payload : old;
    if (!overwrite) merged.update(payload);
    CAIRN_RETURN_IF_ERROR(ValidatePayloadTypes(options_.payload_indexes, merged));
    for (auto& key : payload_index_.KeysFor(old, id)) {
      txn.batch.Delete(Cf::kPayloadIndex, key);
      txn.plan.index_remove.push_back(std::move(key));
    }
    for (auto& key : payload_index_.KeysFor(merged, id)) {
      txn.batch.Put(Cf::kPayloadIndex, key, "");
      txn.plan.index_add.push_back(std::move(key));
    }
    std::string nv = EncodePayloadValue(merged.dump(), text);
    txn.batch.Put(Cf::kPayloads, InternalKey(id), nv);
    txn.op_payloads[id] = std::move(nv);
  }
  return absl::OkStatus();
}

absl::Status Shard::MatchFilter(const Filter& filter, std::vector<std::string>* keys,
                                std::vector<uint64_t>* ids) const {
  std::shared_lock state(state_mu_);
  CAIRN_ASSIGN_OR_RETURN(Bitmap match, EvalFilterLocked(filter));
  std::vector<uint64_t> matched(match.cardinality());
  match.toUint64Array(matched.data());
  std::vector<std::string> iks;
  for (uint64_t id : matched) iks.push_back(InternalKey(id));
  std::vector<std::optional<std::string>> exts;
  CAIRN_RETURN_IF_ERROR(kv_->MultiGet(Cf::kRids, iks, &exts));
  for (size_t i = 0; i < exts.size(); ++i) {
    if (!exts[i]) continue;
    keys->push_back(std::move(*exts[i]));
    ids->push_back(matched[i]);
  }
  return absl::OkStatus();
}

absl::Status Shard::Upsert(std::vector<PreparedPoint> points) {
  return Commit([&](Txn& txn) { return PrepareUpsert(txn, points); });
}

absl::StatusOr<uint64_t> Shard::Delete(const std::vector<std::string>& ext_keys) {
  return DeleteIf(ext_keys, {});
}

absl::StatusOr<uint64_t> Shard::DeleteIf(const std::vector<std::string>& ext_keys,
                                         const std::vector<uint64_t>& expected) {
  uint64_t deleted = 0;
  CAIRN_RETURN_IF_ERROR(Commit([&](Txn& txn) { return PrepareDelete(txn, ext_keys, expected, &deleted); }));
  return deleted;
}

absl::StatusOr<uint64_t> Shard::DeleteByFilter(const Filter& filter) {
  // Evaluate, then delete inside one commit the points that still have the
  // internal id the filter matched (a point overwritten in between is kept).
  std::vector<std::string> keys;
  std::vector<uint64_t> ids;
  CAIRN_RETURN_IF_ERROR(MatchFilter(filter, &keys, &ids));
  if (keys.empty()) return uint64_t{0};
  return DeleteIf(keys, ids);
}

absl::Status Shard::SetPayload(const std::vector<std::string>& ext_keys, const Json& payload,
                               bool overwrite) {
  return Commit([&](Txn& txn) { return PrepareSetPayload(txn, ext_keys, payload, overwrite); });
}

// ---- replicated apply ------------------------------------------------------

namespace {
// Errors that every replica meets alike for the same entry on the same data:
// the entry is refused and changes nothing. Anything else is this replica's.
bool SameOnEveryReplica(const absl::Status& s) {
  return s.code() == absl::StatusCode::kNotFound || s.code() == absl::StatusCode::kInvalidArgument ||
         IsMovedBySplit(s);
}
constexpr char kMovedBySplit[] = "moved by a shard split: ";
}  // namespace

absl::Status MovedBySplitError(const std::string& what) {
  return absl::AbortedError(absl::StrCat(kMovedBySplit, what, "; route it again with the new shard map"));
}

bool IsMovedBySplit(const absl::Status& s) {
  return s.code() == absl::StatusCode::kAborted && absl::StartsWith(s.message(), kMovedBySplit);
}

Shard::SplitRecord Shard::split_record() const {
  std::lock_guard l(split_mu_);
  return split_;
}

absl::Status Shard::CheckOwned(const ShardCommand& c) const {
  const HashClass cls = split_record().writes;
  if (cls.modulus == 0) return absl::OkStatus();
  auto outside = [&](const std::string& key) {
    if (cls.Contains(key)) return absl::OkStatus();
    auto id = DecodeExternalKey(key);
    return MovedBySplitError(absl::StrCat("point ", id.ok() ? id->ToString() : "?", " is in another shard now"));
  };
  for (const auto& p : c.points) CAIRN_RETURN_IF_ERROR(outside(p.ext_key));
  for (const auto& k : c.ext_keys) CAIRN_RETURN_IF_ERROR(outside(k));
  return absl::OkStatus();
}

absl::Status Shard::KeepHashClass(HashClass cls, uint64_t applied) {
  std::lock_guard commit(commit_mu_);
  if (bulk_loading_) return absl::FailedPreconditionError("a bulk load is running");
  return KeepHashClassLocked(SplitRecord{cls, cls, 0, 0}, applied, /*forget_requests=*/true);
}

absl::Status Shard::KeepHashClassLocked(const SplitRecord& record, uint64_t applied, bool forget_requests) {
  // The points outside the class, from the id map (external key -> id);
  // none in memory when Load left them out already (load_class).
  std::vector<uint64_t> outside;
  if (!(options_.load_class == record.cls)) {
    auto it = kv_->NewIterator(Cf::kIds);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (!record.cls.Contains(it->key()) && it->value().size() == 8) outside.push_back(DecodeInternalKey(it->value()));
    }
    CAIRN_RETURN_IF_ERROR(it->status());
  }
  Txn txn;
  txn.shard = this;
  if (forget_requests) {
    for (std::string_view prefix : {kMetaRequestPrefix, kMetaRequestIndexPrefix}) {
      auto it = kv_->NewIterator(Cf::kMeta);
      for (it->Seek(prefix); it->Valid() && it->key().substr(0, prefix.size()) == prefix; it->Next()) {
        txn.group_batch.Delete(Cf::kMeta, it->key());
      }
      CAIRN_RETURN_IF_ERROR(it->status());
    }
    requests_pruned_through_ = 0;
  }
  CAIRN_RETURN_IF_ERROR(WriteSplitRecordLocked(txn, record, applied));
  // The points outside leave at once in memory (reads, searches and counts
  // no longer see them) and later from storage (DropForeign).
  HideLocked(outside);
  {
    std::lock_guard l(drop_mu_);
    drop_after_.clear();  // the new class leaves other ids outside
  }
  if (!outside.empty()) foreign_left_.store(true, std::memory_order_release);
  return absl::OkStatus();
}

absl::Status Shard::WriteSplitRecordLocked(Txn& txn, const SplitRecord& record, uint64_t applied) {
  std::string v;
  PutU64(&v, record.cls.modulus);
  PutU64(&v, record.cls.residue);
  PutU64(&v, record.child_group);
  PutU64(&v, record.index);
  PutU64(&v, record.writes.modulus);
  PutU64(&v, record.writes.residue);
  txn.group_batch.Put(Cf::kMeta, kMetaSplit, v);
  {
    // Held across the write: a reader sees the record only once it is so.
    std::lock_guard l(split_mu_);
    CAIRN_RETURN_IF_ERROR(WriteTxnLocked(txn, next_id_, applied));
    split_ = record;
  }
  if (applied != 0) applied_index_.store(applied, std::memory_order_release);
  return absl::OkStatus();
}

void Shard::HideLocked(const std::vector<uint64_t>& ids) {
  std::vector<std::shared_ptr<index::Segment>> segs;
  {
    std::unique_lock state(state_mu_);
    ++epoch_;
    for (uint64_t id : ids) {
      live_.remove(id);
      id_cache_.Erase(id);
    }
    segs = AllSegmentsLocked();
  }
  for (uint64_t id : ids) {
    for (auto& s : segs) {
      if (id >= s->min_id() && id <= s->max_id()) s->MarkDeleted(id);
    }
  }
}

absl::StatusOr<bool> Shard::DropForeign(size_t max_points) {
  if (!foreign_left_.load(std::memory_order_acquire)) return false;
  const HashClass cls = split_record().cls;
  std::vector<std::string> keys;
  {
    std::lock_guard l(drop_mu_);
    // From where the last call stopped (ids only move out of the class
    // once, at the split).
    auto it = kv_->NewIterator(Cf::kIds);
    if (drop_after_.empty()) {
      it->SeekToFirst();
    } else {
      it->Seek(drop_after_);
    }
    for (; it->Valid() && keys.size() < max_points; it->Next()) {
      if (!cls.Contains(it->key())) keys.emplace_back(it->key());
    }
    CAIRN_RETURN_IF_ERROR(it->status());
    if (keys.empty()) {
      // (Unless a split of the shard came meanwhile: it left others.)
      if (split_record().cls == cls) foreign_left_.store(false, std::memory_order_release);
      drop_after_.clear();
      return false;
    }
    drop_after_ = keys.back();
  }
  uint64_t deleted = 0;
  CAIRN_RETURN_IF_ERROR(Commit([&](Txn& txn) { return PrepareDelete(txn, keys, {}, &deleted); }));
  return true;
}

absl::Status Shard::FlushStorage() { return kv_->Flush(); }

absl::StatusOr<uint64_t> Shard::SyncApplied() {
  // Read first: everything through it is in the write-ahead log already.
  const uint64_t applied = applied_index();
  CAIRN_RETURN_IF_ERROR(kv_->SyncWal());
  return applied;
}

absl::Status Shard::Apply(const std::vector<LogEntry>& entries, std::vector<ApplyResult>* results) {
  results->assign(entries.size(), ApplyResult{});
  WaitForTailRoom();
  std::lock_guard commit(commit_mu_);
  if (bulk_loading_) return absl::FailedPreconditionError("a bulk load is running; a replicated shard takes none");
  Txn txn;
  txn.shard = this;
  uint64_t first_id = next_id_;
  uint64_t through = applied_index_.load(std::memory_order_relaxed);  // applied, or staged in txn
  uint64_t written = through;
  auto flush = [&]() -> absl::Status {
    if (through == written && txn.group_batch.size() == 0) return absl::OkStatus();
    CAIRN_RETURN_IF_ERROR(WriteTxnLocked(txn, first_id, through));
    written = through;
    txn = Txn();
    txn.shard = this;
    first_id = next_id_;
    return absl::OkStatus();
  };
  absl::flat_hash_map<std::string, std::string> batch_requests;  // written in this call, not yet readable
  uint64_t prev = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const LogEntry& e = entries[i];
    if (e.index <= prev) return absl::InternalError(absl::StrCat("apply: entry ", e.index, " after ", prev));
    prev = e.index;
    ApplyResult& r = (*results)[i];
    if (e.index <= through) {
      r.skipped = true;
      continue;
    }
    if (e.command != nullptr && !e.command->request_id.empty()) {
      // Applied before (a retry)? Then its first result, and nothing else.
      const std::string key = std::string(kMetaRequestPrefix) + e.command->request_id;
      std::optional<std::string> seen;
      if (auto it = batch_requests.find(key); it != batch_requests.end()) {
        seen = it->second;
      } else {
        CAIRN_ASSIGN_OR_RETURN(seen, kv_->Get(Cf::kMeta, key));
      }
      // Remembered for the window's entries whatever was pruned yet, so
      // that every replica decides alike however its calls were batched.
      if (seen) {
        ByteReader rd{*seen};
        const uint64_t first_index = rd.U64();
        const uint64_t count = rd.U64();
        if (rd.ok && e.index - first_index <= options_.request_id_window) {
          r.count = count;
          through = e.index;
          continue;
        }
      }
    }
    if (e.command != nullptr &&
        (e.command->kind == ShardCommand::Kind::kSplit || e.command->kind == ShardCommand::Kind::kSplitDone)) {
      // Everything before it is written first: the child's copy is as of the
      // entry before the fence.
      CAIRN_RETURN_IF_ERROR(flush());
      const ShardCommand& c = *e.command;
      const SplitRecord now = split_record();
      const bool fence = c.kind == ShardCommand::Kind::kSplit;
      bool wrote = false;
      if (now.child_group == c.child_group && (fence || now.cls == c.keep)) {
        r.count = now.index;  // proposed again: done already
      } else if (fence && (now.fenced() || (now.cls.modulus != 0 && now.cls.KeepHalf() != c.keep))) {
        r.status = absl::InvalidArgumentError(absl::StrCat(
            "a split to (", c.keep.modulus, ", ", c.keep.residue, ") of a shard of class (", now.cls.modulus, ", ",
            now.cls.residue, ")", now.fenced() ? " with a split under way" : ""));
      } else if (!fence && (now.child_group != c.child_group || now.writes != c.keep)) {
        r.status = absl::InvalidArgumentError(absl::StrCat("the end of a split to group ", c.child_group,
                                                           ", which is not the split under way"));
      } else if (fence) {
        Txn t;
        t.shard = this;
        CAIRN_RETURN_IF_ERROR(WriteSplitRecordLocked(t, SplitRecord{now.cls, c.keep, c.child_group, e.index}, e.index));
        r.count = e.index;
        wrote = true;
      } else {
        CAIRN_RETURN_IF_ERROR(KeepHashClassLocked(SplitRecord{c.keep, c.keep, c.child_group, now.index}, e.index,
                                                  /*forget_requests=*/false));
        r.count = now.index;
        wrote = true;
      }
      through = e.index;
      if (wrote) {
        written = e.index;
        txn = Txn();
        txn.shard = this;
        first_id = next_id_;
      }
      continue;
    }
    if (e.command != nullptr) {
      const ShardCommand& c = *e.command;
      absl::Status s = CheckOwned(c);
      txn.BeginOp();
      if (s.ok()) switch (c.kind) {
        case ShardCommand::Kind::kSplit:
        case ShardCommand::Kind::kSplitDone:
          break;
        case ShardCommand::Kind::kUpsert:
          s = PrepareUpsert(txn, c.points);
          r.count = c.points.size();
          break;
        case ShardCommand::Kind::kDelete:
          s = PrepareDelete(txn, c.ext_keys, {}, &r.count);
          break;
        case ShardCommand::Kind::kDeleteByFilter: {
          // The class it may delete from: what its proposer's map names, when
          // that is what writes may name here (a fence: the kept half).
          const SplitRecord rec = split_record();
          if (rec.writes != c.expect) {
            s = MovedBySplitError(absl::StrCat("the shard holds 1/", rec.writes.modulus, " of the id hash now"));
            break;
          }
          auto filter = Filter::FromJson(c.filter_json);
          if (!filter.ok()) {
            s = filter.status();
            break;
          }
          // The filter reads memory, which holds the entries before it only
          // once they are written.
          CAIRN_RETURN_IF_ERROR(flush());
          txn.BeginOp();
          std::vector<std::string> keys;
          std::vector<uint64_t> ids;
          CAIRN_RETURN_IF_ERROR(MatchFilter(*filter, &keys, &ids));
          if (rec.fenced()) {
            // The fenced half is the new group's.
            size_t w = 0;
            for (size_t k = 0; k < keys.size(); ++k) {
              if (!rec.writes.Contains(keys[k])) continue;
              keys[w] = std::move(keys[k]);
              ids[w++] = ids[k];
            }
            keys.resize(w);
            ids.resize(w);
          }
          s = PrepareDelete(txn, keys, ids, &r.count);
          break;
        }
        case ShardCommand::Kind::kSetPayload:
          s = PrepareSetPayload(txn, c.ext_keys, c.payload, c.overwrite);
          r.count = c.ext_keys.size();
          break;
      }
      if (!s.ok() && !SameOnEveryReplica(s)) {
        next_id_ = first_id;
        return s;
      }
      if (s.ok() && !c.request_id.empty()) {
        std::string v;
        PutU64(&v, e.index);
        PutU64(&v, r.count);
        const std::string key = std::string(kMetaRequestPrefix) + c.request_id;
        txn.batch.Put(Cf::kMeta, key, v);
        txn.batch.Put(Cf::kMeta, std::string(kMetaRequestIndexPrefix) + InternalKey(e.index), c.request_id);
        batch_requests[key] = v;
      }
      txn.EndOp(s.ok());
      if (!s.ok()) {
        r.status = s;
        r.count = 0;
      }
    }
    through = e.index;
  }
  // Ids older than the window are forgotten, in index order.
  if (through > options_.request_id_window) {
    const std::string prefix(kMetaRequestIndexPrefix);
    const std::string end = prefix + InternalKey(through - options_.request_id_window);
    auto it = kv_->NewIterator(Cf::kMeta);
    // From where the last call stopped: not over the deletions again.
    for (it->Seek(prefix + InternalKey(requests_pruned_through_ + 1));
         it->Valid() && it->key() < end && it->key().substr(0, prefix.size()) == prefix; it->Next()) {
      txn.group_batch.Delete(Cf::kMeta, it->key());
      txn.group_batch.Delete(Cf::kMeta, std::string(kMetaRequestPrefix) + std::string(it->value()));
    }
    CAIRN_RETURN_IF_ERROR(it->status());
    requests_pruned_through_ = through - options_.request_id_window - 1;
  }
  return flush();
}

absl::StatusOr<Shard::Checksum> Shard::DataChecksum() const {
  // No write runs while commit_mu_ is held: the column families are read at
  // one applied index.
  std::lock_guard commit(commit_mu_);
  std::shared_lock state(state_mu_);
  Checksum c;
  c.applied_index = applied_index_.load(std::memory_order_relaxed);
  uint64_t h = StableHash(InternalKey(next_id_));
  // What a split left outside the class (deleted from storage later, at
  // each replica's pace) is not the shard's data.
  const HashClass cls = split_record().cls;
  auto outside = [&](Cf cf, std::string_view key, std::string_view value) {
    if (cls.modulus == 0) return false;
    switch (cf) {
      case Cf::kIds:
        return !cls.Contains(key);
      case Cf::kRids:
        return !cls.Contains(value);
      case Cf::kVectors:
      case Cf::kPayloads:
        return key.size() == 8 && !live_.contains(DecodeInternalKey(key));
      case Cf::kPayloadIndex:
        return key.size() >= 8 && !live_.contains(DecodeInternalKey(key.substr(key.size() - 8)));
      default:
        return false;
    }
  };
  for (Cf cf : {Cf::kIds, Cf::kRids, Cf::kVectors, Cf::kPayloads, Cf::kPayloadIndex}) {
    auto it = kv_->NewIterator(cf);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (outside(cf, it->key(), it->value())) continue;
      std::string rec;
      PutU64(&rec, h);
      rec.push_back(static_cast<char>(cf));
      PutBytes(&rec, it->key());
      PutBytes(&rec, it->value());
      h = StableHash(rec);
      if (cf == Cf::kRids) ++c.points;
    }
    CAIRN_RETURN_IF_ERROR(it->status());
  }
  c.hash = h;
  return c;
}

// ---- reads -----------------------------------------------------------------

std::vector<std::shared_ptr<index::Segment>> Shard::AllSegmentsLocked() const {
  std::vector<std::shared_ptr<index::Segment>> out;
  for (const auto& s : sealed_) out.push_back(s.segment);
  for (const auto& s : frozen_) out.push_back(s);
  out.push_back(growing_);
  for (const auto& s : tail_) out.push_back(s);
  return out;
}

absl::StatusOr<Bitmap> Shard::EvalConditionLocked(
    const Condition& c, std::optional<std::vector<std::pair<uint64_t, Json>>>* scan) const {
  switch (c.kind) {
    case Condition::Kind::kNested:
      return EvalFilterLocked(*c.nested);
    case Condition::Kind::kHasId: {
      std::vector<std::string> keys;
      for (const auto& id : c.ids) keys.push_back(ExternalKey(id));
      std::vector<std::optional<std::string>> vals;
      CAIRN_RETURN_IF_ERROR(kv_->MultiGet(Cf::kIds, keys, &vals));
      Bitmap b;
      for (const auto& v : vals) {
        if (v && v->size() == 8) b.add(DecodeInternalKey(*v));
      }
      return b & live_;
    }
    default:
      break;
  }
  if (auto b = payload_index_.Evaluate(c, live_)) return *std::move(b);
  // Not indexed: scan every payload once per query (declare an index to avoid).
  if (!scan->has_value()) {
    scan->emplace();
    auto it = kv_->NewIterator(Cf::kPayloads);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      std::string_view pj, text;
      if (!DecodePayloadValue(it->value(), &pj, &text)) continue;
      Json p = Json::parse(pj, nullptr, false);
      if (p.is_discarded()) continue;
      (*scan)->emplace_back(DecodeInternalKey(it->key()), std::move(p));
    }
    CAIRN_RETURN_IF_ERROR(it->status());
  }
  Bitmap b;
  for (const auto& [id, payload] : **scan) {
    if (MatchesCondition(c, payload)) b.add(id);
  }
  return b & live_;
}

std::shared_ptr<const index::PositionSet> Shard::FilterResult::PositionsIn(const index::Segment& seg) const {
  {
    std::lock_guard l(positions_mu);
    if (auto it = positions.find(&seg); it != positions.end()) return it->second;
  }
  auto set = std::make_shared<index::PositionSet>();
  auto lo = std::lower_bound(list.begin(), list.end(), seg.min_id());
  auto hi = std::upper_bound(list.begin(), list.end(), seg.max_id());
  if (lo < hi) {
    seg.PositionsOf(absl::MakeConstSpan(&*lo, static_cast<size_t>(hi - lo)), set.get());
  } else {
    set->Resize(seg.size());
  }
  std::lock_guard l(positions_mu);
  return positions.try_emplace(&seg, std::move(set)).first->second;
}

absl::StatusOr<std::shared_ptr<const Shard::FilterResult>> Shard::CachedFilterLocked(const Filter& filter) const {
  constexpr size_t kCacheEntries = 16;
  std::string key = filter.ToJson();
  {
    std::lock_guard l(filter_cache_mu_);
    for (auto it = filter_cache_.begin(); it != filter_cache_.end(); ++it) {
      if (it->epoch == epoch_ && it->key == key) {
        auto hit = it->result;
        if (it != filter_cache_.begin()) {
          CachedFilter e = std::move(*it);
          filter_cache_.erase(it);
          filter_cache_.push_front(std::move(e));
        }
        return hit;
      }
    }
  }
  auto r = std::make_shared<FilterResult>();
  CAIRN_ASSIGN_OR_RETURN(r->ids, EvalFilterLocked(filter));
  r->list.resize(r->ids.cardinality());
  r->ids.toUint64Array(r->list.data());
  std::lock_guard l(filter_cache_mu_);
  std::erase_if(filter_cache_, [&](const CachedFilter& e) { return e.epoch != epoch_ || e.key == key; });
  filter_cache_.push_front(CachedFilter{std::move(key), epoch_, r});
  if (filter_cache_.size() > kCacheEntries) filter_cache_.pop_back();
  return std::shared_ptr<const FilterResult>(std::move(r));
}

absl::StatusOr<Bitmap> Shard::EvalFilterLocked(const Filter& filter) const {
  std::optional<std::vector<std::pair<uint64_t, Json>>> scan;
  Bitmap result = live_;
  for (const auto& c : filter.must) {
    CAIRN_ASSIGN_OR_RETURN(Bitmap b, EvalConditionLocked(c, &scan));
    result &= b;
  }
  if (!filter.should.empty()) {
    Bitmap any;
    for (const auto& c : filter.should) {
      CAIRN_ASSIGN_OR_RETURN(Bitmap b, EvalConditionLocked(c, &scan));
      any |= b;
    }
    result &= any;
  }
  for (const auto& c : filter.must_not) {
    CAIRN_ASSIGN_OR_RETURN(Bitmap b, EvalConditionLocked(c, &scan));
    result -= b;
  }
  return result;
}

absl::Status Shard::RawVectors(const std::vector<uint64_t>& ids, std::vector<float>* out,
                               std::vector<bool>* found) const {
  const size_t dim = options_.dimension;
  out->assign(ids.size() * dim, 0.0f);
  found->assign(ids.size(), false);
  std::vector<std::string> keys;
  keys.reserve(ids.size());
  for (uint64_t id : ids) keys.push_back(InternalKey(id));
  std::vector<std::optional<std::string>> vals;
  CAIRN_RETURN_IF_ERROR(kv_->MultiGet(Cf::kVectors, keys, &vals));
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!vals[i]) continue;
    if (vals[i]->size() != dim * sizeof(float)) return absl::DataLossError("malformed vector record");
    std::memcpy(out->data() + i * dim, vals[i]->data(), dim * sizeof(float));
    (*found)[i] = true;
  }
  index::PrepareVectors(options_.metric, out->data(), ids.size(), dim);
  return absl::OkStatus();
}

absl::Status Shard::VectorsOf(const index::Segment& segment, const std::vector<uint64_t>& ids,
                              std::vector<float>* out, std::vector<bool>* found) const {
  if (segment.vector_file() == nullptr) return RawVectors(ids, out, found);
  out->assign(ids.size() * options_.dimension, 0.0f);
  found->assign(ids.size(), false);
  CAIRN_RETURN_IF_ERROR(segment.ReadVectors(ids, out->data(), found));
  return FillFromStorage(ids, out, found);
}

absl::StatusOr<std::string> Shard::SaveVectorFile(index::Segment& segment, const std::string& segment_file,
                                                  const float* vecs) const {
  if (segment.CanMoveVectorsToFile()) {
    // HNSW on int8 codes: its floats go to the file and leave memory.
    const std::string name = VectorFileName(segment_file);
    CAIRN_RETURN_IF_ERROR(segment.MoveVectorsToFile(SegmentPath(name)));
    return name;
  }
  if (segment.HasExactVectors() || segment.size() == 0) return std::string();
  const std::string name = VectorFileName(segment_file);
  const size_t dim = options_.dimension;
  if (vecs != nullptr) {
    CAIRN_RETURN_IF_ERROR(index::VectorFile::Write(SegmentPath(name), options_.dimension, vecs, segment.size()));
  } else {
    // From storage in id order (a sequential read): a row for every
    // position, zeros for a point deleted meanwhile (never read: searches
    // skip deleted positions).
    const std::vector<uint64_t> ids = segment.Ids();
    CAIRN_ASSIGN_OR_RETURN(auto w, index::VectorFile::Writer::Create(SegmentPath(name), options_.dimension));
    auto it = kv_->NewIterator(Cf::kVectors);
    it->Seek(InternalKey(ids.front()));
    std::vector<float> chunk;
    for (size_t i = 0; i < ids.size(); ++i) {
      while (it->Valid() && DecodeInternalKey(it->key()) < ids[i]) it->Next();
      CAIRN_RETURN_IF_ERROR(it->status());
      const size_t at = chunk.size();
      chunk.resize(at + dim, 0.0f);
      if (it->Valid() && DecodeInternalKey(it->key()) == ids[i]) {
        if (it->value().size() != dim * sizeof(float)) return absl::DataLossError("malformed vector record");
        std::memcpy(&chunk[at], it->value().data(), dim * sizeof(float));
        index::PrepareVectors(options_.metric, &chunk[at], 1, dim);
      }
      if (chunk.size() == kReplayChunk * dim || i + 1 == ids.size()) {
        CAIRN_RETURN_IF_ERROR(w->Append(chunk.data(), chunk.size() / dim));
        chunk.clear();
      }
    }
    CAIRN_RETURN_IF_ERROR(w->Close());
  }
  CAIRN_ASSIGN_OR_RETURN(auto file, index::VectorFile::Open(SegmentPath(name), options_.dimension, segment.size()));
  segment.AttachVectorFile(std::move(file));
  return name;
}

absl::Status Shard::ExactScan(const float* query, const std::vector<uint64_t>& ids, int k,
                              std::vector<std::pair<float, uint64_t>>* best) const {
  // REQUIRES: state_mu_ held (shared). `ids` ascending and live.
  std::vector<std::pair<float, uint64_t>> cand;
  cand.reserve(ids.size());
  const size_t dim = options_.dimension;
  std::vector<uint64_t> chunk;
  std::vector<float> vecs;
  std::vector<bool> found;
  for (const auto& seg : AllSegmentsLocked()) {
    if (seg->size() == 0) continue;
    auto lo = std::lower_bound(ids.begin(), ids.end(), seg->min_id());
    auto hi = std::upper_bound(ids.begin(), ids.end(), seg->max_id());
    if (lo >= hi) continue;
    absl::Span<const uint64_t> part(&*lo, static_cast<size_t>(hi - lo));
    if (seg->ScoreIds(query, part, &cand)) continue;
    // Lossy segment: its full vectors from its vector file or storage.
    for (size_t i = 0; i < part.size();) {
      chunk.clear();
      for (; i < part.size() && chunk.size() < 1024; ++i) {
        if (seg->IsLive(part[i])) chunk.push_back(part[i]);
      }
      CAIRN_RETURN_IF_ERROR(VectorsOf(*seg, chunk, &vecs, &found));
      for (size_t j = 0; j < chunk.size(); ++j) {
        if (found[j]) cand.emplace_back(index::Score(options_.metric, query, &vecs[j * dim], dim), chunk[j]);
      }
    }
  }
  KeepBest(options_.metric, static_cast<size_t>(k), &cand);
  *best = std::move(cand);
  return absl::OkStatus();
}

absl::Status Shard::Search(const float* queries, size_t nq, const SearchParams& params,
                           std::vector<std::vector<ScoredPoint>>* out) const {
  const size_t dim = options_.dimension;
  const size_t k = static_cast<size_t>(params.k);
  const int threads = IndexThreads(options_.index_threads);
  const ShardTunables tun = Tunables();
  std::vector<std::vector<std::pair<float, uint64_t>>> hits(nq);
  {
    std::shared_lock state(state_mu_);
    auto segs = AllSegmentsLocked();
    std::shared_ptr<const FilterResult> filtered;
    bool exact_scan = false;
    if (params.filter != nullptr && !params.filter->empty()) {
      CAIRN_ASSIGN_OR_RETURN(filtered, CachedFilterLocked(*params.filter));
      uint64_t card = filtered->list.size();
      if (card == 0) {
        out->assign(nq, {});
        return absl::OkStatus();
      }
      uint64_t live = live_.cardinality();
      // With every vector in memory, scoring the matches directly is cheaper
      // than a graph walk that must skip most of what it visits, up to about
      // kExactScanFloats floats (measured: bench/micro BM_FilteredSearch).
      const bool in_memory = std::all_of(segs.begin(), segs.end(), [](const auto& seg) {
        return seg->size() == 0 || seg->HasExactVectors();
      });
      exact_scan = params.exact || card <= kExactScanMinPoints ||
                   static_cast<double>(card) <= kExactScanFraction * static_cast<double>(live) ||
                   (in_memory && card * dim <= kExactScanFloats);
    }
    const std::vector<uint64_t>& filter_list = filtered ? filtered->list : kNoIds;
    if (exact_scan) {
      for (size_t q = 0; q < nq; ++q) {
        CAIRN_RETURN_IF_ERROR(ExactScan(queries + q * dim, filter_list, params.k, &hits[q]));
      }
    } else {
      std::vector<float> scores(nq * k);
      std::vector<int64_t> ids(nq * k);
      // What an HNSW segment's vector file cannot give it to re-rank with.
      const index::RawRows raw_rows = [this](const std::vector<uint64_t>& ids, std::vector<float>* out,
                                             std::vector<bool>* found) { return RawVectors(ids, out, found); };
      for (const auto& seg : segs) {
        if (seg->size() == 0 || seg->size() == seg->num_deleted()) continue;
        index::SegmentSearchParams sp;
        sp.raw_rows = &raw_rows;
        sp.k = params.k;
        sp.ef = params.ef > 0 ? params.ef : tun.ef_search;
        sp.nprobe = params.nprobe > 0 ? params.nprobe : tun.nprobe;
        std::shared_ptr<const index::PositionSet> allowed;
        if (filtered) {
          auto lo = std::lower_bound(filter_list.begin(), filter_list.end(), seg->min_id());
          auto hi = std::upper_bound(filter_list.begin(), filter_list.end(), seg->max_id());
          if (lo >= hi) continue;
          allowed = filtered->PositionsIn(*seg);
          sp.allowed = allowed.get();
        }
        const bool lossy = !seg->ScoresAreExact();
        const int rerank = tun.rerank_factor;
        if (lossy && rerank > 1 && !params.exact) sp.k = params.k * rerank;
        std::vector<float> s2(nq * static_cast<size_t>(sp.k));
        std::vector<int64_t> i2(nq * static_cast<size_t>(sp.k));
        absl::Status st;
        if (params.exact) {
          st = seg->SearchExact(queries, nq, sp, s2.data(), i2.data());
          if (absl::IsUnimplemented(st)) {
            // Exact over raw vectors from the store.
            std::vector<uint64_t> seg_ids;
            for (uint64_t id : seg->Ids()) {
              if (seg->IsLive(id) && (!filtered || filtered->ids.contains(id))) seg_ids.push_back(id);
            }
            for (size_t q = 0; q < nq; ++q) {
              std::vector<std::pair<float, uint64_t>> best;
              CAIRN_RETURN_IF_ERROR(ExactScan(queries + q * dim, seg_ids, params.k, &best));
              hits[q].insert(hits[q].end(), best.begin(), best.end());
            }
            continue;
          }
        } else {
          st = seg->Search(queries, nq, sp, s2.data(), i2.data(), threads);
        }
        CAIRN_RETURN_IF_ERROR(st);
        for (size_t q = 0; q < nq; ++q) {
          std::vector<std::pair<float, uint64_t>> part;
          for (size_t j = 0; j < static_cast<size_t>(sp.k); ++j) {
            int64_t id = i2[q * sp.k + j];
            if (id != index::kNoId) part.emplace_back(s2[q * sp.k + j], static_cast<uint64_t>(id));
          }
          if (lossy && rerank > 1 && !params.exact && !part.empty()) {
            std::vector<uint64_t> cids;
            for (auto& p : part) cids.push_back(p.second);
            std::vector<float> vecs;
            std::vector<bool> found;
            CAIRN_RETURN_IF_ERROR(VectorsOf(*seg, cids, &vecs, &found));
            std::vector<std::pair<float, uint64_t>> rescored;
            for (size_t i = 0; i < cids.size(); ++i) {
              if (found[i]) {
                rescored.emplace_back(index::Score(options_.metric, queries + q * dim, &vecs[i * dim], dim), cids[i]);
              }
            }
            part = std::move(rescored);
          }
          hits[q].insert(hits[q].end(), part.begin(), part.end());
        }
      }
      for (size_t q = 0; q < nq; ++q) {
        KeepBest(options_.metric, k, &hits[q]);
        // A filtered graph walk may find fewer than k allowed points; the
        // exact scan over the filter's ids always finds them.
        if (filtered && hits[q].size() < std::min<uint64_t>(k, filter_list.size())) {
          CAIRN_RETURN_IF_ERROR(ExactScan(queries + q * dim, filter_list, params.k, &hits[q]));
        }
      }
    }
  }
  out->resize(nq);
  for (size_t q = 0; q < nq; ++q) CAIRN_RETURN_IF_ERROR(Resolve(hits[q], params, &(*out)[q]));
  return absl::OkStatus();
}

absl::Status Shard::Resolve(const std::vector<std::pair<float, uint64_t>>& hits,
                            const SearchParams& params, std::vector<ScoredPoint>* out) const {
  out->clear();
  if (hits.empty()) return absl::OkStatus();
  // External ids from the cache, the rest from the rids column family.
  std::vector<std::optional<PointId>> ext_ids(hits.size());
  std::vector<std::string> missing;
  std::vector<size_t> missing_at;
  for (size_t i = 0; i < hits.size(); ++i) {
    ext_ids[i] = id_cache_.Find(hits[i].second);
    if (!ext_ids[i]) {
      missing.push_back(InternalKey(hits[i].second));
      missing_at.push_back(i);
    }
  }
  if (!missing.empty()) {
    std::vector<std::optional<std::string>> exts;
    CAIRN_RETURN_IF_ERROR(kv_->MultiGet(Cf::kRids, missing, &exts));
    for (size_t j = 0; j < missing.size(); ++j) {
      if (!exts[j]) continue;  // deleted after the search saw it
      CAIRN_ASSIGN_OR_RETURN(PointId id, DecodeExternalKey(*exts[j]));
      id_cache_.Insert(hits[missing_at[j]].second, id);
      ext_ids[missing_at[j]] = std::move(id);
    }
  }
  std::vector<std::string> keys;  // only to read payloads or vectors
  if (params.with_payload || params.with_vector) {
    keys.reserve(hits.size());
    for (const auto& h : hits) keys.push_back(InternalKey(h.second));
  }
  std::vector<std::optional<std::string>> payloads, vectors;
  if (params.with_payload) CAIRN_RETURN_IF_ERROR(kv_->MultiGet(Cf::kPayloads, keys, &payloads));
  if (params.with_vector) CAIRN_RETURN_IF_ERROR(kv_->MultiGet(Cf::kVectors, keys, &vectors));
  for (size_t i = 0; i < hits.size(); ++i) {
    if (!ext_ids[i]) continue;
    ScoredPoint sp;
    sp.id = std::move(*ext_ids[i]);
    sp.score = hits[i].first;
    if (params.with_payload && payloads[i]) {
      std::string_view pj, text;
      if (DecodePayloadValue(*payloads[i], &pj, &text)) {
        sp.payload = std::string(pj);
        sp.text = std::string(text);
      }
    }
    if (params.with_vector && vectors[i]) {
      const float* f = reinterpret_cast<const float*>(vectors[i]->data());
      sp.vector.assign(f, f + vectors[i]->size() / sizeof(float));
    }
    out->push_back(std::move(sp));
  }
  return absl::OkStatus();
}

absl::Status Shard::Get(const std::vector<std::string>& ext_keys, bool with_payload,
                        bool with_vector, std::vector<std::optional<Record>>* out) const {
  out->assign(ext_keys.size(), std::nullopt);
  // One point in time for the ids and what they point to: a point replaced
  // in between must not come back as an id without its payload.
  const auto view = kv_->NewReadView();
  std::vector<std::optional<std::string>> ids;
  CAIRN_RETURN_IF_ERROR(kv_->MultiGet(Cf::kIds, ext_keys, &ids, view.get()));
  std::vector<std::string> keys;
  std::vector<size_t> where;
  const HashClass cls = split_record().cls;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] && ids[i]->size() == 8 && cls.Contains(ext_keys[i])) {
      keys.push_back(*ids[i]);
      where.push_back(i);
    }
  }
  std::vector<std::optional<std::string>> payloads, vectors;
  if (with_payload) CAIRN_RETURN_IF_ERROR(kv_->MultiGet(Cf::kPayloads, keys, &payloads, view.get()));
  if (with_vector) CAIRN_RETURN_IF_ERROR(kv_->MultiGet(Cf::kVectors, keys, &vectors, view.get()));
  for (size_t j = 0; j < keys.size(); ++j) {
    Record r;
    CAIRN_ASSIGN_OR_RETURN(r.id, DecodeExternalKey(ext_keys[where[j]]));
    if (with_payload && payloads[j]) {
      std::string_view pj, text;
      if (DecodePayloadValue(*payloads[j], &pj, &text)) {
        r.payload = std::string(pj);
        r.text = std::string(text);
      }
    }
    if (with_vector && vectors[j]) {
      const float* f = reinterpret_cast<const float*>(vectors[j]->data());
      r.vector.assign(f, f + vectors[j]->size() / sizeof(float));
    }
    (*out)[where[j]] = std::move(r);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Shard::Count(const Filter* filter) const {
  std::shared_lock state(state_mu_);
  if (filter == nullptr || filter->empty()) return live_.cardinality();
  CAIRN_ASSIGN_OR_RETURN(Bitmap b, EvalFilterLocked(*filter));
  return b.cardinality();
}

absl::Status Shard::Scroll(const std::string& after, uint32_t limit, const Filter* filter,
                           bool with_payload, bool with_vector, std::vector<Record>* out,
                           std::string* last_key, bool* more) const {
  std::optional<Bitmap> match;
  if (filter != nullptr && !filter->empty()) {
    std::shared_lock state(state_mu_);
    CAIRN_ASSIGN_OR_RETURN(match, EvalFilterLocked(*filter));
  }
  *more = false;
  std::vector<std::string> ext_keys;
  const HashClass cls = split_record().cls;
  auto it = kv_->NewIterator(Cf::kIds);
  if (after.empty()) it->SeekToFirst();
  else it->Seek(after);
  for (; it->Valid(); it->Next()) {
    if (!after.empty() && it->key() == after) continue;
    if (!cls.Contains(it->key())) continue;  // left by a split, not deleted yet
    if (match && (it->value().size() != 8 || !match->contains(DecodeInternalKey(it->value())))) continue;
    if (ext_keys.size() == limit) {
      *more = true;
      break;
    }
    ext_keys.emplace_back(it->key());
  }
  CAIRN_RETURN_IF_ERROR(it->status());
  std::vector<std::optional<Record>> recs;
  CAIRN_RETURN_IF_ERROR(Get(ext_keys, with_payload, with_vector, &recs));
  for (auto& r : recs) {
    if (r) out->push_back(std::move(*r));
  }
  if (!ext_keys.empty()) *last_key = ext_keys.back();
  return absl::OkStatus();
}

// ---- maintenance -----------------------------------------------------------

uint64_t Shard::TailPointsLocked() const {
  // A chunk being indexed is in the growing segment up to its max id.
  const uint64_t indexed_through = growing_->max_id();
  uint64_t n = 0;
  for (const auto& chunk : tail_) {
    if (chunk->min_id() > indexed_through) {
      n += chunk->size();
    } else if (chunk->max_id() > indexed_through) {
      for (uint64_t id : chunk->Ids()) n += id > indexed_through;
    }
  }
  return n;
}

bool Shard::NeedsSeal() const {
  std::shared_lock state(state_mu_);
  return growing_->size() + TailPointsLocked() >= Tunables().seal_threshold;
}

absl::Status Shard::WriteManifestLocked() {
  // REQUIRES: commit_mu_ held.
  Json m;
  m["format_version"] = 1;
  m["sealed_through"] = sealed_through_;
  m["next_file"] = next_file_;
  Json segs = Json::array();
  {
    std::shared_lock state(state_mu_);
    for (const auto& s : sealed_) {
      segs.push_back({{"file", s.file},
                      {"count", s.segment->size()},
                      {"min_id", s.segment->min_id()},
                      {"max_id", s.segment->max_id()},
                      {"type", std::string(IndexTypeName(s.segment->type()))}});
      if (!s.vectors.empty()) segs.back()["vectors"] = s.vectors;
    }
  }
  m["segments"] = segs;
  if (!growing_file_.empty()) {
    m["growing"] = {{"file", growing_file_}, {"max_id", growing_saved_max_id_}};
  }
  storage::WriteBatch b;
  b.Put(Cf::kMeta, kMetaManifest, m.dump());
  return kv_->Write(b);
}

absl::Status Shard::LiveVectorsOf(const index::Segment& segment, std::vector<uint64_t>* ids,
                                  std::vector<float>* vecs) const {
  ids->clear();
  for (uint64_t id : segment.Ids()) {
    if (segment.IsLive(id)) ids->push_back(id);
  }
  std::vector<bool> found;
  const size_t dim = options_.dimension;
  if (segment.HasExactVectors()) {
    // From the segment's memory (as stored: prepared), not read back from
    // storage; what it lacks from storage.
    vecs->assign(ids->size() * dim, 0.0f);
    found.assign(ids->size(), false);
    segment.CopyVectors(*ids, vecs->data(), &found);
    CAIRN_RETURN_IF_ERROR(FillFromStorage(*ids, vecs, &found));
  } else {
    CAIRN_RETURN_IF_ERROR(VectorsOf(segment, *ids, vecs, &found));
  }
  // Points deleted since the tombstone check have no vector any more (or,
  // read from a vector file, are marked deleted by the caller).
  KeepFound(found, dim, ids, vecs);
  return absl::OkStatus();
}

absl::Status Shard::Seal(bool force) {
  ReleaseFreeMemoryAtExit release;  // the growing segment's floats, once sealed
  {
    std::shared_lock state(state_mu_);
    if (!force && growing_->size() + TailPointsLocked() < Tunables().seal_threshold) return absl::OkStatus();
  }
  release.Arm();
  return SealLocked(force, /*index_tail=*/true);
}

absl::Status Shard::IndexTail() {
  std::lock_guard index(index_mu_);
  while (IndexOneChunkLocked()) {
  }
  if (train_due_.load()) TrainGrowingLocked();
  return absl::OkStatus();
}

void Shard::IndexPresentTailLocked() {
  size_t chunks;  // those there now: writers may add more meanwhile
  {
    std::shared_lock state(state_mu_);
    chunks = tail_.size();
  }
  for (size_t i = 0; i < chunks && IndexOneChunkLocked(); ++i) {
  }
}

absl::Status Shard::SealLocked(bool force, bool index_tail) {
  std::lock_guard maint(maintenance_mu_);
  // A segment left frozen by a seal that failed (a build or file error) is
  // sealed first: sealed_through_ must not pass ids no sealed segment holds.
  for (;;) {
    std::shared_ptr<index::Segment> stuck;
    {
      std::shared_lock state(state_mu_);
      if (!frozen_.empty()) stuck = frozen_.front();
    }
    if (stuck == nullptr) break;
    CAIRN_RETURN_IF_ERROR(SealFrozen(stuck));
  }
  std::shared_ptr<index::Segment> frozen;
  std::unique_lock index(index_mu_);  // until growing_ is replaced: not during the build
  if (index_tail) IndexPresentTailLocked();
  {
    std::lock_guard commit(commit_mu_);
    std::unique_lock state(state_mu_);
    size_t n = growing_->size();
    if (n == 0 || (!force && n < Tunables().seal_threshold)) return absl::OkStatus();
    CAIRN_ASSIGN_OR_RETURN(auto fresh, index::Segment::CreateGrowing(options_.dimension, options_.metric,
                                                                     options_.index));
    ++epoch_;
    frozen = growing_;
    frozen->Freeze();
    frozen_.push_back(frozen);
    growing_ = std::move(fresh);
  }
  index.unlock();
  return SealFrozen(frozen);
}

absl::Status Shard::SealFrozen(const std::shared_ptr<index::Segment>& frozen) {
  // Build the sealed segment without blocking writers or searches.
  std::shared_ptr<index::Segment> sealed;
  std::vector<float> vecs;  // in the sealed segment's position order, when it was built here
  if (frozen->type() == options_.index.type) {
    sealed = frozen;  // the growing index already is the target index
    sealed->BuildSearchCodes();
  } else {
    std::vector<uint64_t> ids;
    CAIRN_RETURN_IF_ERROR(LiveVectorsOf(*frozen, &ids, &vecs));
    CAIRN_ASSIGN_OR_RETURN(auto built, index::Segment::Build(options_.dimension, options_.metric,
                                                             options_.index, vecs.data(), ids.data(),
                                                             ids.size(), IndexThreads(options_.index_threads)));
    sealed = std::move(built);
  }
  const std::string file = NewSegmentFile();
  CAIRN_ASSIGN_OR_RETURN(std::string vectors, SaveVectorFile(*sealed, file, vecs.empty() ? nullptr : vecs.data()));
  CAIRN_RETURN_IF_ERROR(sealed->Save(SegmentPath(file)));
  std::string dropped;
  {
    std::lock_guard commit(commit_mu_);
    {
      std::unique_lock state(state_mu_);
      ++epoch_;
      frozen_.erase(std::find(frozen_.begin(), frozen_.end(), frozen));
      sealed_.push_back(SealedRef{sealed, file, vectors});
      for (uint64_t id : sealed->Ids()) {
        if (!live_.contains(id)) sealed->MarkDeleted(id);
      }
    }
    sealed_through_ = std::max(sealed_through_, frozen->max_id());
    // The growing segment's saved copy was of the segment just sealed.
    if (!growing_file_.empty() && growing_saved_max_id_ <= sealed_through_) {
      dropped = std::exchange(growing_file_, std::string());
      growing_saved_ = 0;
    }
    CAIRN_RETURN_IF_ERROR(WriteManifestLocked());
  }
  std::error_code ec;  // a large file: removed with no lock held
  if (!dropped.empty()) fs::remove(SegmentPath(dropped), ec);
  return absl::OkStatus();
}

absl::Status Shard::SealIfOnlyAWrite(uint64_t min_points) {
  {
    std::shared_lock state(state_mu_);
    if (min_points == 0 || growing_->size() < min_points || growing_->type() != options_.index.type) {
      return absl::OkStatus();
    }
  }
  // Only what is indexed: the tail is replayed on open.
  return SealLocked(/*force=*/true, /*index_tail=*/false);
}

bool Shard::CheckpointDueLocked(bool at_close, bool with_tail) const {
  // A frozen segment not yet sealed holds ids below the growing one's: a
  // copy of the growing segment alone would make open skip them.
  if (options_.checkpoint_points == 0 || !frozen_.empty() || growing_->type() == IndexType::kFlat) return false;
  const uint64_t n = growing_->size() + (with_tail ? TailPointsLocked() : 0), saved = growing_saved_.load();
  const uint64_t due = at_close ? std::min<uint64_t>(options_.checkpoint_points, kMinPointsToSaveAtClose)
                                : std::max(options_.checkpoint_points, saved / 2);
  return n > saved && n - saved >= due;
}

bool Shard::NeedsCheckpoint() const {
  std::shared_lock state(state_mu_);
  return CheckpointDueLocked(/*at_close=*/false, /*with_tail=*/true);
}

absl::Status Shard::CheckpointGrowing(bool at_close) {
  if (options_.checkpoint_points == 0) return absl::OkStatus();
  std::lock_guard maint(maintenance_mu_);
  std::shared_ptr<index::Segment> growing;
  std::string file;
  {
    // What the indexer would do next, so that the copy holds what was
    // written before it (bounded by the tail's limit; what a copy lacks is
    // indexed on open instead).
    std::lock_guard index(index_mu_);
    {
      std::shared_lock state(state_mu_);
      if (!CheckpointDueLocked(at_close, /*with_tail=*/true)) return absl::OkStatus();
    }
    IndexPresentTailLocked();
  }
  {
    std::lock_guard commit(commit_mu_);
    std::shared_lock state(state_mu_);
    if (!CheckpointDueLocked(at_close, /*with_tail=*/false)) return absl::OkStatus();
    growing = growing_;
    file = absl::StrFormat("grow-%08d.cseg", next_file_++);
  }
  index::Segment::SavedExtent extent;
  CAIRN_RETURN_IF_ERROR(growing->Save(SegmentPath(file), &extent));
  std::string old;
  absl::Status st;
  {
    // growing_ is still `growing`: seals wait for maintenance_mu_.
    std::lock_guard commit(commit_mu_);
    old = std::exchange(growing_file_, file);
    const uint64_t old_saved = growing_saved_.exchange(extent.count);
    const uint64_t old_max_id = std::exchange(growing_saved_max_id_, extent.max_id);
    st = WriteManifestLocked();
    if (!st.ok()) {
      growing_file_ = std::exchange(old, file);  // the new file is the one to remove
      growing_saved_ = old_saved;
      growing_saved_max_id_ = old_max_id;
    }
  }
  std::error_code ec;  // a large file: removed with no lock held
  if (!old.empty()) fs::remove(SegmentPath(old), ec);
  return st;
}

absl::Status Shard::Compact(bool force) {
  ReleaseFreeMemoryAtExit release;  // the segments replaced, and the vectors read to rebuild them
  std::lock_guard maint(maintenance_mu_);
  std::vector<SealedRef> todo;
  {
    std::shared_lock state(state_mu_);
    for (const auto& s : sealed_) {
      size_t n = s.segment->size(), d = s.segment->num_deleted();
      if (d == 0) continue;
      if (force || static_cast<double>(d) >= Tunables().compaction_deleted_ratio * static_cast<double>(n)) {
        todo.push_back(s);
      }
    }
  }
  if (!todo.empty()) release.Arm();
  for (const auto& old : todo) {
    std::vector<uint64_t> ids;
    std::vector<float> vecs;
    CAIRN_RETURN_IF_ERROR(LiveVectorsOf(*old.segment, &ids, &vecs));
    std::shared_ptr<index::Segment> rebuilt;
    std::string file, vectors;
    if (!ids.empty()) {
      CAIRN_ASSIGN_OR_RETURN(auto built, index::Segment::Build(options_.dimension, options_.metric,
                                                               options_.index, vecs.data(), ids.data(),
                                                               ids.size(), IndexThreads(options_.index_threads)));
      rebuilt = std::move(built);
      file = NewSegmentFile();
      CAIRN_ASSIGN_OR_RETURN(vectors, SaveVectorFile(*rebuilt, file, vecs.data()));
      CAIRN_RETURN_IF_ERROR(rebuilt->Save(SegmentPath(file)));
    }
    {
      std::lock_guard commit(commit_mu_);
      {
        std::unique_lock state(state_mu_);
        auto it = std::find_if(sealed_.begin(), sealed_.end(),
                               [&](const SealedRef& s) { return s.file == old.file; });
        if (rebuilt) {
          for (uint64_t id : rebuilt->Ids()) {
            if (!live_.contains(id)) rebuilt->MarkDeleted(id);
          }
          *it = SealedRef{rebuilt, file, vectors};
        } else {
          sealed_.erase(it);
        }
        ++epoch_;
      }
      CAIRN_RETURN_IF_ERROR(WriteManifestLocked());
    }
    std::error_code ec;
    fs::remove(SegmentPath(old.file), ec);
    if (!old.vectors.empty()) fs::remove(SegmentPath(old.vectors), ec);
  }
  WriteMissingVectorFilesLocked();
  return absl::OkStatus();
}

std::vector<std::shared_ptr<index::Segment>> Shard::SealedSegments() const {
  std::vector<std::shared_ptr<index::Segment>> segs;
  std::shared_lock state(state_mu_);
  for (const auto& s : sealed_) segs.push_back(s.segment);
  return segs;
}

uint64_t Shard::KeepVectorsInMemory(const std::function<bool(uint64_t bytes)>& reserve) {
  uint64_t in = 0;
  for (const auto& seg : SealedSegments()) {
    const uint64_t bytes = seg->FileVectorBytes();
    if (bytes == 0 || !reserve(bytes)) continue;
    if (absl::Status st = seg->LoadVectorsFromFile(); !st.ok()) {
      std::fprintf(stderr, "cairn: %s: a segment's vectors stay in their file: %s\n", dir_.c_str(),
                   st.ToString().c_str());
      continue;
    }
    in += bytes;
  }
  return in;
}

uint64_t Shard::ReleaseVectors() {
  uint64_t freed = 0;
  for (const auto& seg : SealedSegments()) freed += seg->ReleaseVectors();
  return freed;
}

void Shard::WriteMissingVectorFilesLocked() {
  std::vector<SealedRef> bare;
  {
    std::shared_lock state(state_mu_);
    for (const auto& s : sealed_) {
      if (s.vectors.empty() && !s.segment->HasExactVectors() && s.segment->size() > 0) bare.push_back(s);
    }
  }
  for (const auto& s : bare) {
    // Derived state: a failure leaves the segment re-ranking from storage.
    auto vectors = SaveVectorFile(*s.segment, s.file, nullptr);
    absl::Status st = vectors.status();
    if (st.ok()) {
      std::lock_guard commit(commit_mu_);
      {
        std::unique_lock state(state_mu_);
        auto it = std::find_if(sealed_.begin(), sealed_.end(), [&](const SealedRef& r) { return r.file == s.file; });
        if (it != sealed_.end()) it->vectors = *vectors;
      }
      st = WriteManifestLocked();
    }
    if (!st.ok()) {
      std::fprintf(stderr, "cairn: %s: cannot write the vector file of segment %s: %s\n", dir_.c_str(),
                   s.file.c_str(), st.ToString().c_str());
    }
  }
}

absl::Status Shard::SnapshotAll(const std::vector<Shard*>& shards,
                                const std::vector<std::string>& target_dirs) {
  // Segment files stay put while any shard is copied; writes to every shard
  // wait while the checkpoints are taken, so they show one moment.
  std::vector<std::unique_lock<std::mutex>> maint, commit;
  for (Shard* s : shards) maint.emplace_back(s->maintenance_mu_);
  for (Shard* s : shards) commit.emplace_back(s->commit_mu_);
  std::vector<std::vector<std::string>> files(shards.size());
  for (size_t i = 0; i < shards.size(); ++i) {
    std::error_code ec;
    fs::create_directories(fs::path(target_dirs[i]) / "segments", ec);
    if (ec) return absl::InternalError(absl::StrCat("create ", target_dirs[i], ": ", ec.message()));
    CAIRN_RETURN_IF_ERROR(shards[i]->kv_->CreateCheckpoint((fs::path(target_dirs[i]) / "kv").string()));
    std::shared_lock state(shards[i]->state_mu_);
    for (const auto& seg : shards[i]->sealed_) {
      files[i].push_back(seg.file);
      if (!seg.vectors.empty()) files[i].push_back(seg.vectors);
    }
    if (!shards[i]->growing_file_.empty()) files[i].push_back(shards[i]->growing_file_);
  }
  commit.clear();
  for (size_t i = 0; i < shards.size(); ++i) {
    for (const auto& f : files[i]) {
      CAIRN_RETURN_IF_ERROR(storage::LinkOrCopyFile(
          shards[i]->SegmentPath(f), (fs::path(target_dirs[i]) / "segments" / f).string()));
    }
    CAIRN_RETURN_IF_ERROR(storage::SyncDir((fs::path(target_dirs[i]) / "segments").string()));
  }
  return absl::OkStatus();
}

ShardStats Shard::Stats() const {
  std::shared_lock state(state_mu_);
  ShardStats st;
  st.points = live_.cardinality();
  auto segs = AllSegmentsLocked();
  st.segments = segs.size();
  st.sealed_segments = sealed_.size();
  for (const auto& s : segs) {
    st.deleted_in_segments += s->num_deleted();
    st.index_memory_bytes += s->MemoryBytes();
    if (const uint64_t gpu = s->GpuBytes(); gpu > 0) {
      ++st.gpu_segments;
      st.gpu_memory_bytes += gpu;
    }
  }
  st.index_memory_bytes += payload_index_.MemoryBytes() + live_.getSizeInBytes(false);
  st.tail_points = TailPointsLocked();
  st.growing_points = growing_->size() + st.tail_points;
  // Searches scan a chunk exactly until it has moved entirely (it is then
  // dropped): it counts until then, so that 0 means answers are the index's.
  for (const auto& chunk : tail_) st.unindexed_points += chunk->size();
  if (train_points_ > 0 && growing_->type() == IndexType::kFlat) st.unindexed_points += growing_->size();
  st.growing_saved_points = growing_saved_.load();
  st.storage_memory_bytes = kv_->ApproximateMemoryBytes();
  return st;
}

}  // namespace cairn::db
