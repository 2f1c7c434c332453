#include "db/config_codec.h"

#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"

namespace cairn::db {
using Json = nlohmann::json;

std::string ConfigToJson(const CollectionConfig& c) {
  Json j;
  j["dimension"] = c.dimension;
  j["metric"] = std::string(MetricName(c.metric));
  j["num_shards"] = c.num_shards;
  if (c.replication_factor != 0) j["replication_factor"] = c.replication_factor;
  j["seal_threshold"] = c.seal_threshold;
  j["compaction_deleted_ratio"] = c.compaction_deleted_ratio;
  if (c.split_points != 0) j["split_points"] = c.split_points;
  j["index"] = {{"type", std::string(IndexTypeName(c.index.type))},
                {"hnsw_m", c.index.hnsw_m},
                {"ef_construction", c.index.ef_construction},
                {"ef_search", c.index.ef_search},
                {"nlist", c.index.nlist},
                {"nprobe", c.index.nprobe},
                {"pq_m", c.index.pq_m},
                {"pq_nbits", c.index.pq_nbits},
                {"rerank_factor", c.index.rerank_factor},
                {"hnsw_int8", c.index.hnsw_int8},
                {"device", std::string(DeviceName(c.index.device))},
                {"pq_tables", std::string(PqTablesName(c.index.pq_tables))}};
  Json p = Json::array();
  for (const auto& f : c.payload_indexes) {
    p.push_back({{"field", f.field}, {"type", std::string(PayloadTypeName(f.type))}});
  }
  j["payload_indexes"] = p;
  return j.dump(2);
}

absl::StatusOr<CollectionConfig> ConfigFromJson(std::string_view text) {
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("collection config: not a JSON object");
  }
  CollectionConfig c;
  try {
    c.dimension = j.at("dimension").get<uint32_t>();
    CAIRN_ASSIGN_OR_RETURN(c.metric, ParseMetric(j.value("metric", std::string("l2"))));
    c.num_shards = j.value("num_shards", c.num_shards);
    c.replication_factor = j.value("replication_factor", c.replication_factor);
    c.seal_threshold = j.value("seal_threshold", c.seal_threshold);
    c.compaction_deleted_ratio = j.value("compaction_deleted_ratio", c.compaction_deleted_ratio);
    c.split_points = j.value("split_points", c.split_points);
    if (j.contains("index")) {
      const Json& ix = j["index"];
      CAIRN_ASSIGN_OR_RETURN(c.index.type, ParseIndexType(ix.value("type", std::string("hnsw"))));
      c.index.hnsw_m = ix.value("hnsw_m", c.index.hnsw_m);
      c.index.ef_construction = ix.value("ef_construction", c.index.ef_construction);
      c.index.ef_search = ix.value("ef_search", c.index.ef_search);
      c.index.nlist = ix.value("nlist", c.index.nlist);
      c.index.nprobe = ix.value("nprobe", c.index.nprobe);
      c.index.pq_m = ix.value("pq_m", c.index.pq_m);
      c.index.pq_nbits = ix.value("pq_nbits", c.index.pq_nbits);
      c.index.rerank_factor = ix.value("rerank_factor", c.index.rerank_factor);
      // Collections created before the option walk on floats, as they did.
      c.index.hnsw_int8 = ix.value("hnsw_int8", false);
      CAIRN_ASSIGN_OR_RETURN(c.index.device, ParseDevice(ix.value("device", std::string("auto"))));
      CAIRN_ASSIGN_OR_RETURN(c.index.pq_tables, ParsePqTables(ix.value("pq_tables", std::string("auto"))));
    }
    if (j.contains("payload_indexes")) {
      for (const auto& p : j["payload_indexes"]) {
        PayloadIndexSpec s;
        s.field = p.at("field").get<std::string>();
        CAIRN_ASSIGN_OR_RETURN(s.type, ParsePayloadType(p.value("type", std::string("keyword"))));
        c.payload_indexes.push_back(std::move(s));
      }
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("collection config: ", e.what()));
  }
  return c;
}

absl::Status ValidateConfig(const CollectionConfig& c) {
  auto bad = [](std::string_view field, std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("config.", std::string(field), ": ", std::string(why)));
  };
  if (c.dimension < 1 || c.dimension > 65536) return bad("dimension", "must be 1..65536");
  // An unknown metric would be persisted as "?" and fail the next open.
  if (static_cast<int>(c.metric) < 0 || static_cast<int>(c.metric) > 2) return bad("metric", "unknown");
  if (c.num_shards < 1 || c.num_shards > 256) return bad("num_shards", "must be 1..256");
  if (c.replication_factor > 7) return bad("replication_factor", "must be 0 (the default) to 7");
  if (c.seal_threshold < 1000) return bad("seal_threshold", "must be >= 1000");
  if (c.split_points != 0 && c.split_points < 1000) return bad("split_points", "must be 0 (never) or >= 1000");
  if (!(c.compaction_deleted_ratio > 0 && c.compaction_deleted_ratio <= 1)) {
    return bad("compaction_deleted_ratio", "must be in (0, 1]");
  }
  const IndexSpec& ix = c.index;
  if (static_cast<int>(ix.type) < 0 || static_cast<int>(ix.type) > 5) return bad("index.type", "unknown");
  if (ix.hnsw_m < 4 || ix.hnsw_m > 128) return bad("index.hnsw_m", "must be 4..128");
  if (ix.ef_construction < 8 || ix.ef_construction > 4096) return bad("index.ef_construction", "must be 8..4096");
  if (ix.ef_search < 1 || ix.ef_search > 65536) return bad("index.ef_search", "must be 1..65536");
  if (ix.nlist < 1 || ix.nlist > (1 << 20)) return bad("index.nlist", "must be 1..1048576");
  if (ix.nprobe < 1 || ix.nprobe > (1 << 20)) return bad("index.nprobe", "must be 1..1048576");
  if (ix.pq_nbits < 4 || ix.pq_nbits > 12) return bad("index.pq_nbits", "must be 4..12");
  if (ix.pq_m < 0 || (ix.pq_m > 0 && c.dimension % static_cast<uint32_t>(ix.pq_m) != 0)) {
    return bad("index.pq_m", absl::StrCat("must divide the dimension ", c.dimension, " (or be 0 for automatic)"));
  }
  if (ix.rerank_factor < 0 || ix.rerank_factor > 100) return bad("index.rerank_factor", "must be 0..100");
  std::set<std::string> seen;
  for (size_t i = 0; i < c.payload_indexes.size(); ++i) {
    const auto& f = c.payload_indexes[i].field;
    std::string where = absl::StrCat("payload_indexes[", i, "]");
    if (f.empty() || f.size() > 255) return bad(where, "field must be 1..255 bytes");
    if (f.front() == '.' || f.back() == '.' || f.find("..") != std::string::npos) {
      return bad(where, absl::StrCat("field \"", f, "\" is not a valid dotted path"));
    }
    if (!seen.insert(f).second) return bad(where, absl::StrCat("field \"", f, "\" declared twice"));
    int t = static_cast<int>(c.payload_indexes[i].type);
    if (t < 0 || t > 3) return bad(where, "unknown type");
  }
  return absl::OkStatus();
}

absl::Status ValidateCollectionName(std::string_view name) {
  bool ok = !name.empty() && name.size() <= 64 && name[0] != '-' && name[0] != '_';
  for (char ch : name) {
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_')) ok = false;
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "collection name \"", std::string(name), "\" is invalid: use 1..64 characters of A-Z a-z 0-9 _ -, "
        "starting with a letter or digit"));
  }
  return absl::OkStatus();
}

absl::Status CheckConfigUpdate(const CollectionConfig& c, const CollectionConfig& update,
                               bool replication_factor_may_change) {
  auto fixed = [](const char* field) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.", field, " cannot change on an existing collection; create a new collection and re-ingest"));
  };
  if (update.dimension != c.dimension) return fixed("dimension");
  if (update.metric != c.metric) return fixed("metric");
  if (update.num_shards != c.num_shards) return fixed("num_shards");
  if (update.index.type != c.index.type) return fixed("index.type");
  if (update.index.hnsw_m != c.index.hnsw_m) return fixed("index.hnsw_m");
  if (update.index.ef_construction != c.index.ef_construction) return fixed("index.ef_construction");
  if (update.index.nlist != c.index.nlist) return fixed("index.nlist");
  if (update.index.pq_m != c.index.pq_m) return fixed("index.pq_m");
  if (update.index.pq_nbits != c.index.pq_nbits) return fixed("index.pq_nbits");
  if (update.index.hnsw_int8 != c.index.hnsw_int8) return fixed("index.hnsw_int8");
  if (update.index.device != c.index.device) return fixed("index.device");
  if (update.index.pq_tables != c.index.pq_tables) return fixed("index.pq_tables");
  if (update.payload_indexes.size() != c.payload_indexes.size()) return fixed("payload_indexes");
  for (size_t i = 0; i < c.payload_indexes.size(); ++i) {
    if (update.payload_indexes[i].field != c.payload_indexes[i].field ||
        update.payload_indexes[i].type != c.payload_indexes[i].type) {
      return fixed("payload_indexes");
    }
  }
  if (!replication_factor_may_change && update.split_points != 0) {
    return absl::InvalidArgumentError(
        "config.split_points: a single-node server's shard count is set at creation; shards split in a cairnd "
        "--cluster");
  }
  if (!replication_factor_may_change && update.replication_factor > 1 &&
      update.replication_factor != c.replication_factor) {
    return absl::InvalidArgumentError(
        "config.replication_factor: a single-node server holds one copy of each collection; replicas are for a "
        "cairnd --cluster");
  }
  return absl::OkStatus();
}

}  // namespace cairn::db
