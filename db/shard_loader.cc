// Shard::Loader: the bulk-load path. Instead of write batches through the WAL
// and a growing HNSW graph, points go to sorted files (RocksDB SSTs) and to
// sealed segments built directly, a segment at a time in the background
// while the next one fills. Finish ingests every file at once and switches
// the manifest, so a crash leaves the shard with none of the points or all.
//
// Internal ids are assigned in arrival order, so the vectors and payloads
// files are written in key order as points arrive; the id maps and payload
// index keys are sorted at the end. An external id that arrives more than
// once keeps its last point: the earlier ones are left out of the id maps,
// their vectors and payloads deleted and their segment slots tombstoned.
#include <algorithm>
#include <filesystem>
#include <future>
#include <numeric>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cairn/status.h"
#include "db/key_codec.h"
#include "db/shard_loader.h"

namespace cairn::db {
namespace fs = std::filesystem;
using storage::Cf;

Shard::Loader::~Loader() {
  if (pending_.valid()) pending_.wait();
  std::error_code ec;
  fs::remove_all(tmp_, ec);
  if (!finished_) {
    // Abandoned: segment files not in the manifest go on the next open;
    // remove them now all the same.
    for (const auto& f : made_) fs::remove(shard_->SegmentPath(f), ec);
  }
  std::lock_guard commit(shard_->commit_mu_);
  shard_->bulk_loading_ = false;
}

absl::Status Shard::Loader::Start() {
  tmp_ = (fs::path(shard_->dir_) / "bulk-load").string();
  std::error_code ec;
  fs::remove_all(tmp_, ec);
  fs::create_directories(tmp_, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", tmp_, ": ", ec.message()));
  {
    std::lock_guard commit(shard_->commit_mu_);
    first_id_ = next_id_ = shard_->next_id_;
  }
  CAIRN_ASSIGN_OR_RETURN(vectors_, shard_->kv_->NewSstWriter(Cf::kVectors, tmp_ + "/vectors.sst"));
  CAIRN_ASSIGN_OR_RETURN(payloads_, shard_->kv_->NewSstWriter(Cf::kPayloads, tmp_ + "/payloads.sst"));
  return absl::OkStatus();
}

absl::Status Shard::Loader::Add(PreparedPoint p) {
  const uint64_t id = next_id_++;
  const std::string ik = InternalKey(id);
  CAIRN_RETURN_IF_ERROR(vectors_->Put(ik, VectorBytes(p.vector)));
  CAIRN_RETURN_IF_ERROR(payloads_->Put(ik, EncodePayloadValue(p.payload_json, p.text)));
  for (auto& key : shard_->payload_index_.KeysFor(p.payload, id)) index_keys_.push_back(std::move(key));
  ids_.emplace_back(std::move(p.ext_key), id);
  if (streams_) {
    const ShardOptions& o = shard_->options_;
    if (seg_writer_ == nullptr) {
      seg_file_ = shard_->NewSegmentFile();
      CAIRN_ASSIGN_OR_RETURN(seg_writer_, index::VectorFile::Writer::Create(
                                              shard_->SegmentPath(VectorFileName(seg_file_)), o.dimension));
      sample_rng_.seed(0x5eed);
    }
    prepared_.assign(p.vector.begin(), p.vector.end());
    index::PrepareVectors(o.metric, prepared_.data(), 1, o.dimension);
    CAIRN_RETURN_IF_ERROR(seg_writer_->Append(prepared_.data(), 1));
    // Reservoir sampling: every point so far is in the sample alike likely.
    const uint64_t row = seg_ids_.size(), cap = index::Segment::TrainingRows(o.index);
    if (row < cap) {
      sample_.insert(sample_.end(), prepared_.begin(), prepared_.end());
    } else if (uint64_t j = std::uniform_int_distribution<uint64_t>(0, row)(sample_rng_); j < cap) {
      std::copy(prepared_.begin(), prepared_.end(), sample_.begin() + static_cast<ptrdiff_t>(j * o.dimension));
    }
  } else {
    seg_vecs_.Append(p.vector);
  }
  seg_ids_.push_back(id);
  if (seg_ids_.size() >= segment_size_) return StartSegment();
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Shard::Loader::Finish() {
  // The last segment builds in the background while the id maps and
  // payload index are sorted and written, unless it is built from its vector
  // file or is an HNSW graph: such loads keep their peak low (the maps'
  // memory would come on top of the build's) and build long enough for the
  // maps not to matter.
  if (!seg_ids_.empty()) CAIRN_RETURN_IF_ERROR(StartSegment());
  if (streams_ || shard_->options_.index.type == IndexType::kHnsw) CAIRN_RETURN_IF_ERROR(WaitSegment());
  // Id maps: the last point of each external id wins.
  std::sort(ids_.begin(), ids_.end());
  std::vector<uint64_t> dead;
  std::vector<std::pair<uint64_t, size_t>> live;  // internal id, index into ids_
  for (size_t i = 0; i < ids_.size(); ++i) {
    if (i + 1 < ids_.size() && ids_[i + 1].first == ids_[i].first) {
      dead.push_back(ids_[i].second);
    } else {
      live.emplace_back(ids_[i].second, i);
    }
  }
  std::sort(dead.begin(), dead.end());
  std::sort(live.begin(), live.end());
  CAIRN_ASSIGN_OR_RETURN(auto ids_w, shard_->kv_->NewSstWriter(Cf::kIds, tmp_ + "/ids.sst"));
  for (size_t i = 0; i < ids_.size(); ++i) {
    if (i + 1 < ids_.size() && ids_[i + 1].first == ids_[i].first) continue;
    CAIRN_RETURN_IF_ERROR(ids_w->Put(ids_[i].first, InternalKey(ids_[i].second)));
  }
  CAIRN_ASSIGN_OR_RETURN(auto rids_w, shard_->kv_->NewSstWriter(Cf::kRids, tmp_ + "/rids.sst"));
  for (const auto& [id, i] : live) CAIRN_RETURN_IF_ERROR(rids_w->Put(InternalKey(id), ids_[i].first));
  auto is_dead = [&](std::string_view key) {
    return std::binary_search(dead.begin(), dead.end(), DecodeInternalKey(key.substr(key.size() - 8)));
  };
  std::erase_if(index_keys_, is_dead);
  std::sort(index_keys_.begin(), index_keys_.end());
  CAIRN_ASSIGN_OR_RETURN(auto index_w, shard_->kv_->NewSstWriter(Cf::kPayloadIndex, tmp_ + "/pindex.sst"));
  for (const auto& k : index_keys_) CAIRN_RETURN_IF_ERROR(index_w->Put(k, ""));
  std::vector<storage::SstWriter*> files = {vectors_.get(), payloads_.get(), ids_w.get(), rids_w.get(),
                                            index_w.get()};
  for (auto* f : files) CAIRN_RETURN_IF_ERROR(f->Finish());
  CAIRN_RETURN_IF_ERROR(WaitSegment());
  CAIRN_RETURN_IF_ERROR(shard_->kv_->IngestFiles(files));

  std::lock_guard commit(shard_->commit_mu_);
  // Points that a later one replaced, and the new next id, in one write;
  // then the manifest that names the segments. A crash between the two
  // leaves no manifest: the next open replays the points from storage.
  storage::WriteBatch b;
  for (uint64_t id : dead) {
    b.Delete(Cf::kVectors, InternalKey(id));
    b.Delete(Cf::kPayloads, InternalKey(id));
  }
  b.Put(Cf::kMeta, kMetaNextId, InternalKey(next_id_));
  CAIRN_RETURN_IF_ERROR(shard_->kv_->Write(b));
  shard_->next_id_ = next_id_;
  {
    std::unique_lock state(shard_->state_mu_);
    ++shard_->epoch_;
    for (const auto& [id, i] : live) shard_->live_.add(id);
    for (const auto& k : index_keys_) shard_->payload_index_.AddKey(k);
    for (auto& s : built_) {
      for (uint64_t id : dead) {
        if (id >= s.segment->min_id() && id <= s.segment->max_id()) s.segment->MarkDeleted(id);
      }
      shard_->sealed_.push_back(std::move(s));
    }
  }
  if (next_id_ > first_id_) shard_->sealed_through_ = next_id_ - 1;
  finished_ = true;
  CAIRN_RETURN_IF_ERROR(shard_->WriteManifestLocked());
  return static_cast<uint64_t>(live.size());
}

// Builds and saves a sealed segment of the buffered points in the
// background (waiting for the one before: one build at a time).
absl::Status Shard::Loader::StartSegment() {
  CAIRN_RETURN_IF_ERROR(WaitSegment());
  if (streams_) {
    CAIRN_RETURN_IF_ERROR(seg_writer_->Close());  // synced before the build reads it
    seg_writer_.reset();
    const std::string file = std::exchange(seg_file_, std::string());
    const std::string vectors = VectorFileName(file);
    made_.push_back(file);
    made_.push_back(vectors);
    pending_ = std::async(std::launch::async, [this, file, vectors, ids = std::move(seg_ids_),
                                               sample = std::move(sample_)]() {
      return BuildStreamedSegment(file, vectors, ids, sample);
    });
    seg_ids_ = {};
    sample_ = {};
    return absl::OkStatus();
  }
  const std::string file = shard_->NewSegmentFile();
  made_.push_back(file);
  made_.push_back(VectorFileName(file));
  const ShardOptions& o = shard_->options_;
  index::PrepareVectors(o.metric, seg_vecs_.data(), seg_ids_.size(), o.dimension);
  pending_ = std::async(std::launch::async, [this, file, ids = std::move(seg_ids_),
                                             vecs = std::move(seg_vecs_)]() mutable -> absl::Status {
    const ShardOptions& o = shard_->options_;
    // An HNSW (or flat) segment takes the buffer as its vectors: one copy.
    CAIRN_ASSIGN_OR_RETURN(auto seg, index::Segment::Build(o.dimension, o.metric, o.index, &vecs, ids.data(),
                                                           ids.size(), IndexThreads(o.index_threads)));
    // A lossy one keeps its codes and writes the buffer to its vector file.
    // The buffer is its only source here: storage holds none of the load's
    // points until Finish ingests its files.
    if (vecs.empty() && !seg->HasExactVectors() && !seg->CanMoveVectorsToFile()) {
      return absl::InternalError("bulk load: a segment that keeps no exact vectors was built without them");
    }
    CAIRN_ASSIGN_OR_RETURN(std::string vectors,
                           shard_->SaveVectorFile(*seg, file, vecs.empty() ? nullptr : vecs.data()));
    CAIRN_RETURN_IF_ERROR(seg->Save(shard_->SegmentPath(file)));
    built_.push_back(SealedRef{std::shared_ptr<index::Segment>(std::move(seg)), file, vectors});
    return absl::OkStatus();
  });
  seg_ids_ = {};
  seg_vecs_ = {};
  return absl::OkStatus();
}

absl::Status Shard::Loader::BuildStreamedSegment(const std::string& file, const std::string& vectors,
                                                 const std::vector<uint64_t>& ids, const std::vector<float>& sample) {
  const ShardOptions& o = shard_->options_;
  const size_t dim = o.dimension, n = ids.size();
  const std::string vpath = shard_->SegmentPath(vectors);
  CAIRN_ASSIGN_OR_RETURN(auto vf, index::VectorFile::Open(vpath, o.dimension, n));
  auto read = [&vf](size_t first, size_t count, float* out) { return vf->ReadRange(first, count, out); };
  std::unique_ptr<index::Segment> seg;
  std::string attached = vectors;
  if (index::Segment::Streams(o.index, o.dimension, n)) {
    CAIRN_ASSIGN_OR_RETURN(seg, index::Segment::BuildStreamed(o.dimension, o.metric, o.index, sample.data(),
                                                              sample.size() / dim, read, ids.data(), n,
                                                              IndexThreads(o.index_threads)));
    seg->AttachVectorFile(std::move(vf));
  } else {
    // Too few points to train: a flat segment, which keeps the vectors itself.
    std::vector<float> all(n * dim);
    CAIRN_RETURN_IF_ERROR(read(0, n, all.data()));
    CAIRN_ASSIGN_OR_RETURN(seg, index::Segment::Build(o.dimension, o.metric, o.index, all.data(), ids.data(), n,
                                                      IndexThreads(o.index_threads)));
    vf.reset();
    std::error_code ec;
    fs::remove(vpath, ec);
    attached.clear();
  }
  CAIRN_RETURN_IF_ERROR(seg->Save(shard_->SegmentPath(file)));
  built_.push_back(SealedRef{std::shared_ptr<index::Segment>(std::move(seg)), file, attached});
  return absl::OkStatus();
}

absl::Status Shard::Loader::WaitSegment() {
  if (!pending_.valid()) return absl::OkStatus();
  return pending_.get();
}


absl::StatusOr<std::unique_ptr<Shard::Loader>> Shard::BeginBulkLoad(uint64_t segment_size) {
  {
    std::lock_guard commit(commit_mu_);
    std::shared_lock state(state_mu_);
    if (bulk_loading_) return absl::FailedPreconditionError("a bulk load is already running");
    if (!live_.isEmpty() || !sealed_.empty() || !frozen_.empty() || growing_->size() > 0 ||
        !tail_.empty()) {
      return absl::FailedPreconditionError("a bulk load needs an empty collection; this one holds points");
    }
    bulk_loading_ = true;
  }
  auto loader = std::make_unique<Loader>(this, std::max<uint64_t>(1, segment_size));
  CAIRN_RETURN_IF_ERROR(loader->Start());
  return loader;
}

}  // namespace cairn::db
