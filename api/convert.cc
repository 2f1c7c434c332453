#include "api/convert.h"

#include <google/protobuf/util/json_util.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"

namespace cairn::api {
namespace {

absl::Status Bad(const std::string& where, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", why));
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::StatusOr<PointId> FromProto(const v1::PointId& id, const std::string& where) {
  switch (id.kind_case()) {
    case v1::PointId::kNum:
      return PointId(id.num());
    case v1::PointId::kStr:
      if (id.str().empty() || id.str().size() > 256) return Bad(where, "string ids are 1..256 bytes");
      return PointId(id.str());
    default:
      return Bad(where, "the id is not set (num or str)");
  }
}

void ToProto(const PointId& id, v1::PointId* out) {
  if (id.is_number()) out->set_num(id.number());
  else out->set_str(id.str());
}

absl::StatusOr<std::vector<PointId>> FromProto(
    const google::protobuf::RepeatedPtrField<v1::PointId>& ids, const std::string& where) {
  std::vector<PointId> out;
  out.reserve(ids.size());
  for (int i = 0; i < ids.size(); ++i) {
    CAIRN_ASSIGN_OR_RETURN(PointId id, FromProto(ids[i], absl::StrCat(where, "[", i, "]")));
    out.push_back(std::move(id));
  }
  return out;
}

absl::StatusOr<std::string> StructToJson(const google::protobuf::Struct& s, const std::string& where) {
  std::string out;
  auto st = google::protobuf::util::MessageToJsonString(s, &out);
  if (!st.ok()) return Bad(where, std::string(st.message()));
  return out;
}

void JsonToStruct(const std::string& json, google::protobuf::Struct* out) {
  out->Clear();
  if (json.empty()) return;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  if (!google::protobuf::util::JsonStringToMessage(json, out, options).ok()) out->Clear();
}

namespace {

absl::Status ExactIds(google::protobuf::RepeatedPtrField<v1::Condition>* conds, const std::string& where);

// has_id numbers travel as doubles (google.protobuf.Value), plain or as
// {"num": N}. From 2^53 they may not be the number the client wrote (2^53
// itself may be 2^53 + 1 rounded): refused, rather than matching some other
// id. Below it they are exact, and are rewritten as {"num": "N"} because the
// JSON printer writes some of them in exponent form (1e+15).
absl::Status ExactId(google::protobuf::Value* v, const std::string& where) {
  google::protobuf::Value* num = v;
  if (v->has_struct_value()) {
    auto& fields = *v->mutable_struct_value()->mutable_fields();
    auto it = fields.find("num");
    if (it == fields.end() || fields.size() != 1) return absl::OkStatus();
    num = &it->second;
  }
  if (num->kind_case() != google::protobuf::Value::kNumberValue) return absl::OkStatus();
  const double d = num->number_value();
  if (d >= 9007199254740992.0) {
    return Bad(where, "a number id of 2^53 or more is not exact as a JSON number; give it as {\"num\": \"N\"}");
  }
  if (d < 0 || d != std::floor(d)) return absl::OkStatus();  // the filter parser says what is wrong
  const std::string digits = absl::StrCat(static_cast<uint64_t>(d));
  v->mutable_struct_value()->mutable_fields()->clear();
  (*v->mutable_struct_value()->mutable_fields())["num"].set_string_value(digits);
  return absl::OkStatus();
}

absl::Status ExactIds(v1::Condition* c, const std::string& where) {
  for (int i = 0; i < c->has_id().values_size(); ++i) {
    CAIRN_RETURN_IF_ERROR(ExactId(c->mutable_has_id()->mutable_values(i), absl::StrCat(where, ".has_id[", i, "]")));
  }
  CAIRN_RETURN_IF_ERROR(ExactIds(c->mutable_must(), where + ".must"));
  CAIRN_RETURN_IF_ERROR(ExactIds(c->mutable_should(), where + ".should"));
  return ExactIds(c->mutable_must_not(), where + ".must_not");
}

absl::Status ExactIds(google::protobuf::RepeatedPtrField<v1::Condition>* conds, const std::string& where) {
  for (int i = 0; i < conds->size(); ++i) {
    CAIRN_RETURN_IF_ERROR(ExactIds(conds->Mutable(i), absl::StrCat(where, "[", i, "]")));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::optional<Filter>> FromProto(const v1::Filter& f, bool has_filter) {
  if (!has_filter || (f.must().empty() && f.should().empty() && f.must_not().empty())) {
    return std::optional<Filter>();
  }
  v1::Filter exact = f;
  CAIRN_RETURN_IF_ERROR(ExactIds(exact.mutable_must(), "filter.must"));
  CAIRN_RETURN_IF_ERROR(ExactIds(exact.mutable_should(), "filter.should"));
  CAIRN_RETURN_IF_ERROR(ExactIds(exact.mutable_must_not(), "filter.must_not"));
  // The proto's JSON form (with proto field names) is the filter's JSON form:
  // one parser, one set of error messages for every client.
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  auto st = google::protobuf::util::MessageToJsonString(exact, &json, options);
  if (!st.ok()) return Bad("filter", std::string(st.message()));
  CAIRN_ASSIGN_OR_RETURN(Filter filter, Filter::FromJson(json));
  return std::optional<Filter>(std::move(filter));
}

absl::StatusOr<CollectionConfig> FromProto(const v1::CollectionConfig& c) {
  CollectionConfig out;
  out.dimension = c.dimension();
  switch (c.metric()) {
    case v1::METRIC_UNSPECIFIED:
    case v1::METRIC_L2: out.metric = Metric::kL2; break;
    case v1::METRIC_INNER_PRODUCT: out.metric = Metric::kInnerProduct; break;
    case v1::METRIC_COSINE: out.metric = Metric::kCosine; break;
    default: return Bad("config.metric", "unknown metric");
  }
  const v1::IndexSpec& ix = c.index();
  switch (ix.type()) {
    case v1::INDEX_TYPE_UNSPECIFIED:
    case v1::INDEX_TYPE_HNSW: out.index.type = IndexType::kHnsw; break;
    case v1::INDEX_TYPE_FLAT: out.index.type = IndexType::kFlat; break;
    case v1::INDEX_TYPE_IVF_FLAT: out.index.type = IndexType::kIvfFlat; break;
    case v1::INDEX_TYPE_IVF_PQ: out.index.type = IndexType::kIvfPq; break;
    case v1::INDEX_TYPE_IVF_SQ8: out.index.type = IndexType::kIvfSq8; break;
    case v1::INDEX_TYPE_HNSW_SQ: out.index.type = IndexType::kHnswSq; break;
    default: return Bad("config.index.type", "unknown index type");
  }
  auto set = [](uint32_t v, int* field) {
    if (v != 0) *field = v > 1u << 30 ? 1 << 30 : static_cast<int>(v);
  };
  set(ix.hnsw_m(), &out.index.hnsw_m);
  set(ix.ef_construction(), &out.index.ef_construction);
  set(ix.ef_search(), &out.index.ef_search);
  set(ix.nlist(), &out.index.nlist);
  set(ix.nprobe(), &out.index.nprobe);
  set(ix.pq_m(), &out.index.pq_m);
  set(ix.pq_nbits(), &out.index.pq_nbits);
  set(ix.rerank_factor(), &out.index.rerank_factor);
  if (ix.has_hnsw_int8()) out.index.hnsw_int8 = ix.hnsw_int8();
  switch (ix.device()) {
    case v1::DEVICE_AUTO: out.index.device = Device::kAuto; break;
    case v1::DEVICE_CPU: out.index.device = Device::kCpu; break;
    case v1::DEVICE_GPU: out.index.device = Device::kGpu; break;
    default: return Bad("config.index.device", "unknown device");
  }
  switch (ix.pq_tables()) {
    case v1::PQ_TABLES_AUTO: out.index.pq_tables = PqTables::kAuto; break;
    case v1::PQ_TABLES_ON: out.index.pq_tables = PqTables::kOn; break;
    case v1::PQ_TABLES_OFF: out.index.pq_tables = PqTables::kOff; break;
    default: return Bad("config.index.pq_tables", "unknown value (auto, on, off)");
  }
  for (int i = 0; i < c.payload_indexes_size(); ++i) {
    const auto& p = c.payload_indexes(i);
    PayloadIndexSpec spec;
    spec.field = p.field();
    switch (p.type()) {
      case v1::PAYLOAD_TYPE_UNSPECIFIED:
      case v1::PAYLOAD_TYPE_KEYWORD: spec.type = PayloadType::kKeyword; break;
      case v1::PAYLOAD_TYPE_INTEGER: spec.type = PayloadType::kInteger; break;
      case v1::PAYLOAD_TYPE_FLOAT: spec.type = PayloadType::kFloat; break;
      case v1::PAYLOAD_TYPE_BOOL: spec.type = PayloadType::kBool; break;
      default: return Bad(absl::StrCat("config.payload_indexes[", i, "].type"), "unknown type");
    }
    out.payload_indexes.push_back(std::move(spec));
  }
  if (c.num_shards() != 0) out.num_shards = c.num_shards();
  out.replication_factor = c.replication_factor();
  if (c.seal_threshold() != 0) out.seal_threshold = c.seal_threshold();
  if (c.compaction_deleted_ratio() != 0) out.compaction_deleted_ratio = c.compaction_deleted_ratio();
  out.split_points = c.split_points();
  return out;
}

void ToProto(const CollectionConfig& c, v1::CollectionConfig* out) {
  out->set_dimension(c.dimension);
  out->set_metric(c.metric == Metric::kL2             ? v1::METRIC_L2
                  : c.metric == Metric::kInnerProduct ? v1::METRIC_INNER_PRODUCT
                                                      : v1::METRIC_COSINE);
  auto* ix = out->mutable_index();
  static constexpr v1::IndexType kTypes[] = {v1::INDEX_TYPE_FLAT,     v1::INDEX_TYPE_HNSW,
                                             v1::INDEX_TYPE_IVF_FLAT, v1::INDEX_TYPE_IVF_PQ,
                                             v1::INDEX_TYPE_IVF_SQ8,  v1::INDEX_TYPE_HNSW_SQ};
  ix->set_type(kTypes[static_cast<int>(c.index.type)]);
  ix->set_hnsw_m(c.index.hnsw_m);
  ix->set_ef_construction(c.index.ef_construction);
  ix->set_ef_search(c.index.ef_search);
  ix->set_nlist(c.index.nlist);
  ix->set_nprobe(c.index.nprobe);
  ix->set_pq_m(c.index.pq_m);
  ix->set_pq_nbits(c.index.pq_nbits);
  ix->set_rerank_factor(c.index.rerank_factor);
  ix->set_hnsw_int8(c.index.hnsw_int8);
  ix->set_device(c.index.device == Device::kCpu   ? v1::DEVICE_CPU
                 : c.index.device == Device::kGpu ? v1::DEVICE_GPU
                                                  : v1::DEVICE_AUTO);
  ix->set_pq_tables(c.index.pq_tables == PqTables::kOn    ? v1::PQ_TABLES_ON
                    : c.index.pq_tables == PqTables::kOff ? v1::PQ_TABLES_OFF
                                                          : v1::PQ_TABLES_AUTO);
  static constexpr v1::PayloadType kPayload[] = {v1::PAYLOAD_TYPE_KEYWORD, v1::PAYLOAD_TYPE_INTEGER,
                                                 v1::PAYLOAD_TYPE_FLOAT, v1::PAYLOAD_TYPE_BOOL};
  for (const auto& p : c.payload_indexes) {
    auto* pi = out->add_payload_indexes();
    pi->set_field(p.field);
    pi->set_type(kPayload[static_cast<int>(p.type)]);
  }
  out->set_num_shards(c.num_shards);
  out->set_replication_factor(c.replication_factor);
  out->set_seal_threshold(c.seal_threshold);
  out->set_compaction_deleted_ratio(c.compaction_deleted_ratio);
  out->set_split_points(c.split_points);
}

void ToProto(const CollectionInfo& info, v1::CollectionInfo* out) {
  out->set_name(info.name);
  ToProto(info.config, out->mutable_config());
  out->set_points(info.points);
  out->set_segments(info.segments);
  out->set_sealed_segments(info.sealed_segments);
  out->set_deleted_in_segments(info.deleted_in_segments);
  out->set_index_memory_bytes(info.index_memory_bytes);
  out->set_storage_memory_bytes(info.storage_memory_bytes);
  out->set_gpu_segments(info.gpu_segments);
  out->set_gpu_memory_bytes(info.gpu_memory_bytes);
  out->set_unindexed_points(info.unindexed_points);
}

absl::StatusOr<std::vector<Point>> FromProto(const v1::UpsertRequest& req) {
  std::vector<Point> points;
  points.reserve(req.points_size());
  for (int i = 0; i < req.points_size(); ++i) {
    const auto& p = req.points(i);
    const std::string where = absl::StrCat("points[", i, "]");
    Point out;
    CAIRN_ASSIGN_OR_RETURN(out.id, FromProto(p.id(), where + ".id"));
    out.vector.assign(p.vector().begin(), p.vector().end());
    if (p.has_payload()) {
      CAIRN_ASSIGN_OR_RETURN(out.payload, StructToJson(p.payload(), where + ".payload"));
    }
    out.text = p.text();
    points.push_back(std::move(out));
  }
  return points;
}

void ToProto(const Record& r, v1::Record* out) {
  ToProto(r.id, out->mutable_id());
  out->mutable_vector()->Add(r.vector.begin(), r.vector.end());
  if (!r.payload.empty()) JsonToStruct(r.payload, out->mutable_payload());
  out->set_text(r.text);
}

void ToProto(const ScoredPoint& p, v1::ScoredPoint* out) {
  ToProto(p.id, out->mutable_id());
  out->set_score(p.score);
  if (!p.payload.empty()) JsonToStruct(p.payload, out->mutable_payload());
  out->set_text(p.text);
  out->mutable_vector()->Add(p.vector.begin(), p.vector.end());
}

absl::Status FromProto(const v1::SearchParams& p, SearchParams* out) {
  // Beyond int: refused here, naming the value asked for (the database's
  // checks name the limits of its options).
  if (p.k() > 1u << 30) {
    return absl::InvalidArgumentError(absl::StrCat("search: k must be 1..the server's max_k, got ", p.k()));
  }
  out->k = p.k() == 0 ? 10 : static_cast<int>(p.k());
  out->ef = p.ef() > 65536 ? 65537 : static_cast<int>(p.ef());
  out->nprobe = p.nprobe() > 1u << 20 ? (1 << 20) + 1 : static_cast<int>(p.nprobe());
  out->exact = p.exact();
  out->with_payload = p.with_payload();
  out->with_vector = p.with_vector();
  CAIRN_ASSIGN_OR_RETURN(ReadOptions read, ReadOptionsFromProto(p.consistency(), p.max_staleness_ms(), "search"));
  out->consistency = read.consistency;
  out->max_staleness_ms = read.max_staleness_ms;
  return absl::OkStatus();
}

absl::StatusOr<ReadOptions> ReadOptionsFromProto(int consistency, uint32_t max_staleness_ms,
                                                 const std::string& what) {
  ReadOptions out;
  switch (consistency) {
    case v1::READ_CONSISTENCY_LINEARIZABLE: out.consistency = ReadConsistency::kLinearizable; break;
    case v1::READ_CONSISTENCY_LOCAL: out.consistency = ReadConsistency::kLocal; break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": unknown consistency ", consistency, " (0 linearizable, 1 local)"));
  }
  out.max_staleness_ms = max_staleness_ms;
  return out;
}

}  // namespace cairn::api
