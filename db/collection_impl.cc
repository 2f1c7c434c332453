#include "db/collection_impl.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cairn/status.h"
#include "db/config_codec.h"
#include "db/snapshot_dir.h"
#include "db/key_codec.h"
#include "db/shard_loader.h"
#include "index/distance.h"
#include "index/gpu/gpu.h"
#include "index/segment.h"
#include "storage/file_util.h"

namespace cairn::db {
namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxStringId = 256;

// Largest vector norm taken: any two such vectors' L2 distance (at most
// (|a| + |b|)^2), inner product and squared norms stay finite in float32.
const double kMaxNorm = std::sqrt(static_cast<double>(std::numeric_limits<float>::max()) / 4);

// Smallest norm cosine takes: it has to divide by it.
constexpr double kMinCosineNorm = 1e-18;

// Values `metric` can score: finite, a norm of at most kMaxNorm, and for
// cosine a direction.
absl::Status CheckVectorValues(absl::Span<const float> v, std::string_view what, Metric metric) {
  // The common case in one SIMD pass: a sum of squares that is finite (so is
  // every value: a non-finite one makes it infinite or NaN) and clear of
  // both bounds by more than float's rounding over the sum. Anything else
  // is decided, and explained, by the exact pass below.
  const double fast = index::InnerProduct(v.data(), v.data(), v.size());
  constexpr double kMargin = 1e-3;
  if (std::isfinite(fast) && fast <= kMaxNorm * kMaxNorm * (1 - kMargin) &&
      (metric != Metric::kCosine || fast >= kMinCosineNorm * kMinCosineNorm * (1 + kMargin))) {
    return absl::OkStatus();
  }
  double norm2 = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(what), " has a non-finite value (", v[i], ") at position ", i));
    }
    norm2 += static_cast<double>(v[i]) * v[i];
  }
  if (norm2 > kMaxNorm * kMaxNorm) {
    return absl::InvalidArgumentError(absl::StrCat(
        std::string(what), " has a norm of ", absl::SixDigits(std::sqrt(norm2)), ", above the ",
        absl::SixDigits(kMaxNorm), " whose distances float32 can hold; scale the vectors down"));
  }
  if (metric == Metric::kCosine && norm2 < kMinCosineNorm * kMinCosineNorm) {
    return absl::InvalidArgumentError(absl::StrCat(
        std::string(what), norm2 == 0 ? " is all zeros" : " is too close to zero to normalize",
        ": cosine similarity needs a direction (a vector with no content has none)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Json> ParsePayloadObject(std::string_view text, std::string_view what) {
  if (text.empty()) return Json::object();
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": payload is not valid JSON"));
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": payload must be a JSON object"));
  return j;
}

absl::Status ValidateFilter(const Filter& f, const std::string& where, int depth);

absl::Status ValidateCondition(const Condition& c, const std::string& where, int depth) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", std::string(why)));
  };
  auto finite = [](const FieldValue& v) {
    const double* d = std::get_if<double>(&v);
    return d == nullptr || std::isfinite(*d);
  };
  switch (c.kind) {
    case Condition::Kind::kNested:
      if (c.nested == nullptr) return bad("a nested condition needs a filter");
      return ValidateFilter(*c.nested, where, depth + 1);
    case Condition::Kind::kHasId:
      return absl::OkStatus();
    case Condition::Kind::kMatch:
      if (!finite(c.value)) return bad("match value is not finite");
      break;
    case Condition::Kind::kMatchAny:
      for (const auto& v : c.any) {
        if (!finite(v)) return bad("match value is not finite");
      }
      break;
    case Condition::Kind::kRange: {
      // The same words as Filter::FromJson's errors.
      const std::string range = where + ".range";
      if (!c.gt && !c.gte && !c.lt && !c.lte) {
        return absl::InvalidArgumentError(range + ": needs at least one of gt, gte, lt, lte");
      }
      for (const auto& b : {c.gt, c.gte, c.lt, c.lte}) {
        if (b && !std::isfinite(*b)) return absl::InvalidArgumentError(range + ": not finite");
      }
      break;
    }
    case Condition::Kind::kIsNull:
      break;
    default:
      return bad("unknown condition kind");
  }
  if (c.field.empty()) return bad("needs a field name");
  return absl::OkStatus();
}

// Filters built in C++ skip the checks Filter::FromJson makes. Unchecked, a
// null nested filter would crash and a range without bounds match every
// number (DeleteByFilter would delete them all).
absl::Status ValidateFilter(const Filter& f, const std::string& where, int depth) {
  if (depth > 32) return absl::InvalidArgumentError(absl::StrCat(where, ": nested too deeply"));
  const std::pair<const char*, const std::vector<Condition>*> lists[] = {
      {"must", &f.must}, {"should", &f.should}, {"must_not", &f.must_not}};
  for (const auto& [name, list] : lists) {
    for (size_t i = 0; i < list->size(); ++i) {
      CAIRN_RETURN_IF_ERROR(
          ValidateCondition((*list)[i], absl::StrCat(where, ".", name, "[", i, "]"), depth));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateFilter(const Filter* f) {
  return f == nullptr ? absl::OkStatus() : ValidateFilter(*f, "filter", 0);
}

}  // namespace

std::shared_ptr<storage::KvMemory> NewKvMemory(const DatabaseOptions& options) {
  const uint64_t bytes = StorageMemoryFor(options.storage_cache_bytes, MemoryLimitFor(options.memory_limit_bytes));
  return storage::KvMemory::Create(bytes, bytes / 2);
}

ShardOptions ShardOptionsFor(const std::string& name, const CollectionConfig& config,
                             const DatabaseOptions& options, std::shared_ptr<storage::KvMemory> kv_memory) {
  ShardOptions so;
  so.kv_memory = std::move(kv_memory);
  so.dimension = config.dimension;
  so.metric = config.metric;
  so.index = config.index;
  if (so.index.device == Device::kAuto) so.index.device = options.device;
  if (so.index.device != Device::kCpu) {
    std::string why;
    if (!index::gpu::UseGpu(so.index.device, &why) && so.index.device == Device::kGpu) {
      // Same index files either way: serve from the CPU rather than not at all.
      std::fprintf(stderr, "cairn: collection %s asks for device gpu, but this node has no usable GPU (%s); "
                   "its searches and index builds run on the CPU\n", name.c_str(), why.c_str());
    }
  }
  so.payload_indexes = config.payload_indexes;
  so.seal_threshold = config.seal_threshold;
  so.compaction_deleted_ratio = config.compaction_deleted_ratio;
  so.sync_writes = options.sync_writes;
  so.index_threads = options.index_threads;
  so.checkpoint_points = options.growing_checkpoint_points;
  return so;
}

CollectionImpl::CollectionImpl(std::string name, std::string dir, CollectionConfig config,
                               DatabaseOptions options, std::function<void()> wake)
    : name_(std::move(name)),
      dir_(std::move(dir)),
      config_(std::move(config)),
      options_(options),
      wake_maintenance_(std::move(wake)) {}

CollectionImpl::~CollectionImpl() = default;

absl::StatusOr<std::shared_ptr<CollectionImpl>> CollectionImpl::Open(
    const std::string& name, const std::string& dir, const CollectionConfig& config,
    const DatabaseOptions& options, std::function<void()> wake_maintenance,
    std::shared_ptr<storage::KvMemory> kv_memory) {
  auto c = std::shared_ptr<CollectionImpl>(
      new CollectionImpl(name, dir, config, options, std::move(wake_maintenance)));
  const ShardOptions so = ShardOptionsFor(name, config, options, std::move(kv_memory));
  for (uint32_t i = 0; i < config.num_shards; ++i) {
    std::string sdir = (fs::path(dir) / ShardDirName(i)).string();
    CAIRN_ASSIGN_OR_RETURN(auto shard, Shard::Open(sdir, so));
    c->access_.push_back(shard.get());
    c->shards_.push_back(std::move(shard));
  }
  c->router_ = HashRouter::Even(config.num_shards);
  return c;
}

std::shared_ptr<CollectionImpl> CollectionImpl::OverShards(const std::string& name, const CollectionConfig& config,
                                                           const DatabaseOptions& options,
                                                           std::vector<std::shared_ptr<ShardAccess>> shards,
                                                           std::optional<HashRouter> router) {
  auto c = std::shared_ptr<CollectionImpl>(new CollectionImpl(name, "", config, options, nullptr));
  c->remote_ = std::move(shards);
  for (auto& s : c->remote_) c->access_.push_back(s.get());
  c->router_ = router ? *std::move(router) : HashRouter::Even(static_cast<uint32_t>(c->access_.size()));
  return c;
}

absl::Status CollectionImpl::CheckLocal(const char* what) const {
  if (!remote_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(what, " is not available for a replicated collection"));
  }
  return absl::OkStatus();
}

CollectionConfig CollectionImpl::config() const {
  std::lock_guard l(config_mu_);
  return config_;
}

absl::Status CollectionImpl::UpdateConfig(const CollectionConfig& update) {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  CAIRN_RETURN_IF_ERROR(CheckLocal("UpdateConfig here"));
  CAIRN_RETURN_IF_ERROR(ValidateConfig(update));
  std::lock_guard l(config_mu_);
  CAIRN_RETURN_IF_ERROR(CheckConfigUpdate(config_, update));
  CAIRN_RETURN_IF_ERROR(storage::WriteFileAtomic((fs::path(dir_) / "collection.json").string(), ConfigToJson(update)));
  // Only the tunables change: other threads read the fixed fields unlocked.
  config_.index.ef_search = update.index.ef_search;
  config_.index.nprobe = update.index.nprobe;
  config_.index.rerank_factor = update.index.rerank_factor;
  config_.seal_threshold = update.seal_threshold;
  config_.compaction_deleted_ratio = update.compaction_deleted_ratio;
  for (auto& s : shards_) {
    s->SetTunables({update.index.ef_search, update.index.nprobe, update.index.rerank_factor, update.seal_threshold,
                    update.compaction_deleted_ratio});
  }
  // A lower threshold may make a seal or compaction due now, not at the next write.
  if (wake_maintenance_) wake_maintenance_();
  return absl::OkStatus();
}

absl::Status CollectionImpl::CheckOpen() const {
  if (closed_) {
    return absl::FailedPreconditionError(
        absl::StrCat("collection \"", name_, "\" was dropped or its database closed"));
  }
  return absl::OkStatus();
}

size_t CollectionImpl::ShardOf(const std::string& ext_key) const {
  return router_.ShardOf(ext_key);
}

absl::Status CollectionImpl::ValidateIds(absl::Span<const PointId> ids) const {
  if (ids.size() > options_.max_batch_points) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request has ", ids.size(), " ids; the limit is ", options_.max_batch_points));
  }
  for (const auto& id : ids) {
    if (!id.is_number() && (id.str().empty() || id.str().size() > kMaxStringId)) {
      return absl::InvalidArgumentError(
          absl::StrCat("string ids must be 1..", kMaxStringId, " bytes"));
    }
  }
  return absl::OkStatus();
}

void CollectionImpl::SealOnClose(uint64_t min_points) {
  std::shared_lock lock(close_mu_);
  if (closed_) return;
  for (auto& s : shards_) {
    absl::Status st = s->SealIfOnlyAWrite(min_points);
    if (st.ok()) st = s->CheckpointGrowing(/*at_close=*/true);
    if (!st.ok()) {
      // The points are safe in storage: the next Open rebuilds the segment.
      std::fprintf(stderr, "cairn: collection %s: saving the growing segment at close failed (%s); "
                   "the next open rebuilds it\n", name_.c_str(), st.ToString().c_str());
    }
  }
}

void CollectionImpl::Close() {
  std::unique_lock lock(close_mu_);
  closed_ = true;
  access_.clear();
  shards_.clear();
  remote_.clear();
}

absl::StatusOr<CollectionInfo> CollectionImpl::Info() const {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  CollectionInfo info;
  info.name = name_;
  info.config = config();
  for (const auto* s : access_) {
    CAIRN_ASSIGN_OR_RETURN(ShardStats st, s->ReadStats());
    info.points += st.points;
    info.segments += st.segments;
    info.sealed_segments += st.sealed_segments;
    info.deleted_in_segments += st.deleted_in_segments;
    info.index_memory_bytes += st.index_memory_bytes;
    info.storage_memory_bytes += st.storage_memory_bytes;
    info.gpu_segments += st.gpu_segments;
    info.gpu_memory_bytes += st.gpu_memory_bytes;
    info.unindexed_points += st.unindexed_points;
  }
  return info;
}

absl::StatusOr<PreparedPoint> CollectionImpl::PreparePoint(const Point& p, size_t i) const {
  std::string what = absl::StrCat("upsert: point ", i, " (id ", p.id.ToString(), ")");
  if (!p.id.is_number() && (p.id.str().empty() || p.id.str().size() > kMaxStringId)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": string ids must be 1..", kMaxStringId, " bytes"));
  }
  if (p.vector.size() != config_.dimension) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": vector has dimension ", p.vector.size(),
                                                   "; the collection's is ", config_.dimension));
  }
  CAIRN_RETURN_IF_ERROR(CheckVectorValues(p.vector, what + ": vector", config_.metric));
  if (p.payload.size() > options_.max_payload_bytes || p.text.size() > options_.max_payload_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": payload or text over ",
                                                     options_.max_payload_bytes, " bytes"));
  }
  PreparedPoint pp;
  pp.id = p.id;
  pp.ext_key = ExternalKey(p.id);
  CAIRN_ASSIGN_OR_RETURN(pp.payload, ParsePayloadObject(p.payload, what));
  absl::Status ts = ValidatePayloadTypes(config_.payload_indexes, pp.payload);
  if (!ts.ok()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", ts.message()));
  pp.payload_json = pp.payload.dump();
  pp.vector = p.vector;
  pp.text = p.text;
  return pp;
}

// One shard loader per shard; points go to the shard of their id.
class CollectionImpl::Loader final : public BulkLoader {
 public:
  Loader(const CollectionImpl* coll, std::vector<std::unique_ptr<Shard::Loader>> loaders)
      : coll_(coll), loaders_(std::move(loaders)) {}

  absl::Status Add(absl::Span<const Point> points) override {
    if (done_) return absl::FailedPreconditionError("bulk load: already finished");
    std::vector<PreparedPoint> prepared;
    prepared.reserve(points.size());
    for (size_t i = 0; i < points.size(); ++i) {
      CAIRN_ASSIGN_OR_RETURN(PreparedPoint pp, coll_->PreparePoint(points[i], i));
      prepared.push_back(std::move(pp));
    }
    for (auto& pp : prepared) {
      size_t s = coll_->ShardOf(pp.ext_key);
      CAIRN_RETURN_IF_ERROR(loaders_[s]->Add(std::move(pp)));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Finish() override {
    if (done_) return absl::FailedPreconditionError("bulk load: already finished");
    done_ = true;
    uint64_t n = 0;
    for (auto& l : loaders_) {
      CAIRN_ASSIGN_OR_RETURN(uint64_t k, l->Finish());
      n += k;
    }
    return n;
  }

 private:
  const CollectionImpl* coll_;
  std::vector<std::unique_ptr<Shard::Loader>> loaders_;
  bool done_ = false;
};

absl::StatusOr<std::unique_ptr<BulkLoader>> CollectionImpl::BeginBulkLoad(const BulkLoadOptions& options) {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  CAIRN_RETURN_IF_ERROR(CheckLocal("a bulk load"));
  uint64_t segment_size = options.segment_size;
  if (segment_size == 0) {
    std::lock_guard l(config_mu_);
    segment_size = config_.seal_threshold;
  }
  std::vector<std::unique_ptr<Shard::Loader>> loaders;
  for (auto& shard : shards_) {
    auto l = shard->BeginBulkLoad(segment_size);
    if (!l.ok()) {
      return absl::Status(l.status().code(), absl::StrCat("collection ", name_, ": ", l.status().message()));
    }
    loaders.push_back(*std::move(l));
  }
  return std::unique_ptr<BulkLoader>(new Loader(this, std::move(loaders)));
}

absl::Status CollectionImpl::Upsert(absl::Span<const Point> points) {
  // Before close_mu_: the budget's measure reads every collection's Info.
  if (budget_ != nullptr && !points.empty()) {
    CAIRN_RETURN_IF_ERROR(budget_->Admit(points.size() * BytesPerPoint(config_),
                                         absl::StrCat("an upsert of ", points.size(), " points to collection ", name_)));
  }
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  if (points.empty()) return absl::InvalidArgumentError("upsert: the batch is empty");
  if (points.size() > options_.max_batch_points) {
    return absl::ResourceExhaustedError(absl::StrCat("upsert: batch of ", points.size(),
                                                     " points is over the limit of ",
                                                     options_.max_batch_points));
  }
  std::vector<std::vector<PreparedPoint>> per_shard(access_.size());
  absl::flat_hash_set<std::string> seen;
  uint64_t bytes = 0;
  for (size_t i = 0; i < points.size(); ++i) {
    const Point& p = points[i];
    bytes += p.vector.size() * sizeof(float) + p.payload.size() + p.text.size();
    if (bytes > options_.max_batch_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("upsert: batch is over ",
                                                       options_.max_batch_bytes, " bytes"));
    }
    CAIRN_ASSIGN_OR_RETURN(PreparedPoint pp, PreparePoint(p, i));
    if (!seen.insert(pp.ext_key).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "upsert: point ", i, " (id ", p.id.ToString(), "): the id appears more than once in the batch; send one point per id"));
    }
    per_shard[ShardOf(pp.ext_key)].push_back(std::move(pp));
  }
  bool wake = false;
  for (size_t s = 0; s < access_.size(); ++s) {
    if (per_shard[s].empty()) continue;
    CAIRN_RETURN_IF_ERROR(access_[s]->Upsert(std::move(per_shard[s])));
    wake = wake || (s < shards_.size() && (shards_[s]->NeedsSeal() || shards_[s]->NeedsCheckpoint()));
  }
  if (wake && wake_maintenance_) wake_maintenance_();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::optional<Record>>> CollectionImpl::Get(
    absl::Span<const PointId> ids, bool with_payload, bool with_vector, const ReadOptions& read) const {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  CAIRN_RETURN_IF_ERROR(ValidateIds(ids));
  std::vector<std::optional<Record>> out(ids.size());
  std::vector<std::vector<std::string>> keys(access_.size());
  std::vector<std::vector<size_t>> where(access_.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    std::string k = ExternalKey(ids[i]);
    size_t s = ShardOf(k);
    keys[s].push_back(std::move(k));
    where[s].push_back(i);
  }
  for (size_t s = 0; s < access_.size(); ++s) {
    if (keys[s].empty()) continue;
    std::vector<std::optional<Record>> part;
    CAIRN_RETURN_IF_ERROR(access_[s]->Get(keys[s], with_payload, with_vector, read, &part));
    for (size_t j = 0; j < part.size(); ++j) out[where[s][j]] = std::move(part[j]);
  }
  return out;
}

absl::StatusOr<uint64_t> CollectionImpl::Delete(absl::Span<const PointId> ids) {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  CAIRN_RETURN_IF_ERROR(ValidateIds(ids));
  std::vector<std::vector<std::string>> keys(access_.size());
  for (const auto& id : ids) {
    std::string k = ExternalKey(id);
    keys[ShardOf(k)].push_back(std::move(k));
  }
  uint64_t total = 0;
  for (size_t s = 0; s < access_.size(); ++s) {
    if (keys[s].empty()) continue;
    CAIRN_ASSIGN_OR_RETURN(uint64_t n, access_[s]->Delete(keys[s]));
    total += n;
  }
  return total;
}

absl::StatusOr<uint64_t> CollectionImpl::DeleteByFilter(const Filter& filter) {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  if (filter.empty()) {
    return absl::InvalidArgumentError("delete by filter: the filter is empty (it would delete every point)");
  }
  CAIRN_RETURN_IF_ERROR(ValidateFilter(&filter));
  uint64_t total = 0;
  for (auto* s : access_) {
    CAIRN_ASSIGN_OR_RETURN(uint64_t n, s->DeleteByFilter(filter));
    total += n;
  }
  return total;
}

absl::Status CollectionImpl::SetPayloadImpl(absl::Span<const PointId> ids,
                                            std::string_view payload_json, bool overwrite) {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  CAIRN_RETURN_IF_ERROR(ValidateIds(ids));
  if (ids.empty()) return absl::InvalidArgumentError("set payload: no ids given");
  if (payload_json.size() > options_.max_payload_bytes) {
    return absl::ResourceExhaustedError("set payload: payload over the size limit");
  }
  CAIRN_ASSIGN_OR_RETURN(Json payload, ParsePayloadObject(payload_json, "set payload"));
  CAIRN_RETURN_IF_ERROR(ValidatePayloadTypes(config_.payload_indexes, payload));
  std::vector<std::vector<std::string>> keys(access_.size());
  for (const auto& id : ids) {
    std::string k = ExternalKey(id);
    keys[ShardOf(k)].push_back(std::move(k));
  }
  // With several shards, check existence everywhere first so a missing id
  // changes nothing.
  if (access_.size() > 1) {
    for (size_t s = 0; s < access_.size(); ++s) {
      if (keys[s].empty()) continue;
      std::vector<std::optional<Record>> recs;
      CAIRN_RETURN_IF_ERROR(access_[s]->Get(keys[s], false, false, ReadOptions(), &recs));
      for (size_t j = 0; j < recs.size(); ++j) {
        if (!recs[j]) {
          auto pid = DecodeExternalKey(keys[s][j]);
          return absl::NotFoundError(absl::StrCat("point ", pid.ok() ? pid->ToString() : "?", " does not exist"));
        }
      }
    }
  }
  for (size_t s = 0; s < access_.size(); ++s) {
    if (keys[s].empty()) continue;
    CAIRN_RETURN_IF_ERROR(access_[s]->SetPayload(keys[s], payload, overwrite));
  }
  return absl::OkStatus();
}

absl::Status CollectionImpl::SetPayload(absl::Span<const PointId> ids, std::string_view payload_json) {
  return SetPayloadImpl(ids, payload_json, false);
}

absl::Status CollectionImpl::OverwritePayload(absl::Span<const PointId> ids,
                                              std::string_view payload_json) {
  return SetPayloadImpl(ids, payload_json, true);
}

absl::StatusOr<uint64_t> CollectionImpl::Count(const Filter* filter, const ReadOptions& read) const {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  CAIRN_RETURN_IF_ERROR(ValidateFilter(filter));
  uint64_t total = 0;
  for (const auto* s : access_) {
    CAIRN_ASSIGN_OR_RETURN(uint64_t n, s->Count(filter, read));
    total += n;
  }
  return total;
}

// Cursor: hex of (u16 shard, external key of the last point returned).
absl::StatusOr<ScrollPage> CollectionImpl::Scroll(const ScrollRequest& req) const {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  if (req.limit < 1 || req.limit > options_.max_batch_points) {
    return absl::InvalidArgumentError(absl::StrCat("scroll: limit must be 1..", options_.max_batch_points));
  }
  CAIRN_RETURN_IF_ERROR(ValidateFilter(req.filter));
  size_t shard = 0;
  std::string after;
  if (!req.cursor.empty()) {
    std::string raw = absl::HexStringToBytes(req.cursor);
    if (raw.size() < 2 || absl::BytesToHexString(raw) != req.cursor) {
      return absl::InvalidArgumentError("scroll: malformed cursor");
    }
    shard = (static_cast<uint8_t>(raw[0]) << 8) | static_cast<uint8_t>(raw[1]);
    after = raw.substr(2);
    if (shard >= access_.size()) return absl::InvalidArgumentError("scroll: cursor names no shard");
  }
  const ReadOptions read{req.consistency, req.max_staleness_ms};
  ScrollPage page;
  while (shard < access_.size()) {
    uint32_t want = req.limit - static_cast<uint32_t>(page.points.size());
    std::string last;
    bool more = false;
    CAIRN_RETURN_IF_ERROR(access_[shard]->Scroll(after, want, req.filter, req.with_payload, req.with_vector,
                                                 read, &page.points, &last, &more));
    if (!last.empty()) after = last;
    auto cursor_at = [](size_t s, const std::string& key) {
      std::string raw;
      raw.push_back(static_cast<char>(s >> 8));
      raw.push_back(static_cast<char>(s & 0xff));
      return absl::BytesToHexString(raw + key);
    };
    if (more) {
      // Points past `after` remain in this shard. A short page means some
      // vanished between listing and reading them: read on from `after`.
      if (page.points.size() < req.limit) continue;
      page.next_cursor = cursor_at(shard, after);
      return page;
    }
    ++shard;
    after.clear();
    if (page.points.size() == req.limit) {
      if (shard < access_.size()) page.next_cursor = cursor_at(shard, "");
      return page;
    }
  }
  return page;
}

absl::StatusOr<std::vector<ScoredPoint>> CollectionImpl::Search(absl::Span<const float> query,
                                                                const SearchParams& params) const {
  if (query.size() != config_.dimension) {
    return absl::InvalidArgumentError(absl::StrCat("search: query has dimension ", query.size(),
                                                   "; the collection's is ", config_.dimension));
  }
  CAIRN_ASSIGN_OR_RETURN(auto all, SearchBatch(query, params));
  return std::move(all[0]);
}

absl::StatusOr<std::vector<std::vector<ScoredPoint>>> CollectionImpl::SearchBatch(
    absl::Span<const float> queries, const SearchParams& params) const {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  const size_t dim = config_.dimension;
  if (queries.empty() || queries.size() % dim != 0) {
    return absl::InvalidArgumentError(absl::StrCat("search: the queries hold ", queries.size(),
                                                   " floats, not a multiple of the collection's dimension ", dim));
  }
  const size_t nq = queries.size() / dim;
  if (nq > static_cast<size_t>(options_.max_queries)) {
    return absl::ResourceExhaustedError(absl::StrCat("search: ", nq, " queries; the limit is ",
                                                     options_.max_queries));
  }
  if (params.k < 1 || params.k > options_.max_k) {
    return absl::InvalidArgumentError(absl::StrCat("search: k must be 1..", options_.max_k, ", got ", params.k));
  }
  if (params.ef < 0 || params.ef > 65536) return absl::InvalidArgumentError("search: ef must be 0..65536");
  if (params.nprobe < 0 || params.nprobe > (1 << 20)) {
    return absl::InvalidArgumentError("search: nprobe must be 0..1048576");
  }
  for (size_t q = 0; q < nq; ++q) {
    CAIRN_RETURN_IF_ERROR(CheckVectorValues(queries.subspan(q * dim, dim),
                                            nq == 1 ? std::string("search: query") : absl::StrCat("search: query ", q),
                                            config_.metric));
  }
  CAIRN_RETURN_IF_ERROR(ValidateFilter(params.filter));
  std::vector<float> prepared(queries.begin(), queries.end());
  index::PrepareVectors(config_.metric, prepared.data(), nq, dim);

  std::vector<std::vector<ScoredPoint>> merged(nq);
  for (const auto* s : access_) {
    std::vector<std::vector<ScoredPoint>> part;
    CAIRN_RETURN_IF_ERROR(s->Search(prepared.data(), nq, params, &part));
    for (size_t q = 0; q < nq; ++q) {
      for (auto& p : part[q]) merged[q].push_back(std::move(p));
    }
  }
  if (access_.size() > 1) {
    const Metric m = config_.metric;
    for (auto& r : merged) {
      std::stable_sort(r.begin(), r.end(), [m](const ScoredPoint& a, const ScoredPoint& b) {
        return index::Better(m, a.score, b.score);
      });
      if (r.size() > static_cast<size_t>(params.k)) r.resize(static_cast<size_t>(params.k));
    }
  }
  return merged;
}

absl::Status CollectionImpl::Seal() {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  CAIRN_RETURN_IF_ERROR(CheckLocal("Seal here"));
  for (auto& s : shards_) CAIRN_RETURN_IF_ERROR(s->Seal(/*force=*/true));
  KeepVectorsInMemoryLocked();
  return absl::OkStatus();
}

absl::Status CollectionImpl::Compact(bool force) {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  CAIRN_RETURN_IF_ERROR(CheckLocal("Compact here"));
  for (auto& s : shards_) CAIRN_RETURN_IF_ERROR(s->Compact(force));
  KeepVectorsInMemoryLocked();
  return absl::OkStatus();
}

void CollectionImpl::KeepVectorsInMemory() {
  std::shared_lock lock(close_mu_);
  if (!closed_) KeepVectorsInMemoryLocked();
}

void CollectionImpl::KeepVectorsInMemoryLocked() {
  const double share = options_.hnsw_vectors_memory_share;
  if (budget_ == nullptr || share <= 0) return;
  for (auto& s : shards_) s->KeepVectorsInMemory([&](uint64_t bytes) { return budget_->Reserve(bytes, share); });
}

uint64_t CollectionImpl::ReleaseVectors() {
  std::shared_lock lock(close_mu_);
  if (closed_) return 0;
  uint64_t freed = 0;
  for (auto& s : shards_) freed += s->ReleaseVectors();
  return freed;
}

void CollectionImpl::RunMaintenance() {
  std::shared_lock lock(close_mu_);
  if (closed_) return;
  for (auto& s : shards_) {
    absl::Status st = s->Seal(/*force=*/false);
    if (st.ok()) st = s->Compact(/*force=*/false);
    if (st.ok()) st = s->CheckpointGrowing(/*at_close=*/false);
    if (!st.ok()) {
      fprintf(stderr, "cairn: maintenance of collection %s failed: %s\n", name_.c_str(),
              st.ToString().c_str());
    }
  }
  KeepVectorsInMemoryLocked();
}

absl::Status CollectionImpl::SnapshotShards(const std::string& dir) {
  std::shared_lock lock(close_mu_);
  CAIRN_RETURN_IF_ERROR(CheckOpen());
  CAIRN_RETURN_IF_ERROR(CheckLocal("a snapshot here"));
  std::vector<Shard*> shards;
  std::vector<std::string> dirs;
  for (size_t i = 0; i < shards_.size(); ++i) {
    shards.push_back(shards_[i].get());
    dirs.push_back((fs::path(dir) / ShardDirName(i)).string());
  }
  return Shard::SnapshotAll(shards, dirs);
}

}  // namespace cairn::db
