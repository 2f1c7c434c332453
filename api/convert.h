// Conversions between cairn.v1 messages and the embedded API's types. Every
// conversion of client input validates it and names the offending field.
#ifndef CAIRN_API_CONVERT_H_
#define CAIRN_API_CONVERT_H_

#include <optional>
#include <string>
#include <vector>

#include <grpcpp/support/status.h>

#include "absl/status/statusor.h"
#include "cairn/collection.h"
#include "cairn/options.h"
#include "cairn/v1/collections.pb.h"
#include "cairn/v1/common.pb.h"
#include "cairn/v1/points.pb.h"
#include "cairn/v1/search.pb.h"

namespace cairn::api {

// absl codes and gRPC codes share their numbers and meanings.
grpc::Status ToGrpc(const absl::Status& s);

absl::StatusOr<PointId> FromProto(const v1::PointId& id, const std::string& where);
void ToProto(const PointId& id, v1::PointId* out);
absl::StatusOr<std::vector<PointId>> FromProto(
    const google::protobuf::RepeatedPtrField<v1::PointId>& ids, const std::string& where);

// Payloads travel as google.protobuf.Struct and are stored as JSON text.
absl::StatusOr<std::string> StructToJson(const google::protobuf::Struct& s, const std::string& where);
// An empty or malformed stored payload becomes an empty Struct.
void JsonToStruct(const std::string& json, google::protobuf::Struct* out);

// nullopt for an unset (or empty) filter.
absl::StatusOr<std::optional<Filter>> FromProto(const v1::Filter& f, bool has_filter);

absl::StatusOr<CollectionConfig> FromProto(const v1::CollectionConfig& c);
void ToProto(const CollectionConfig& c, v1::CollectionConfig* out);
void ToProto(const CollectionInfo& info, v1::CollectionInfo* out);

absl::StatusOr<std::vector<Point>> FromProto(const v1::UpsertRequest& req);
void ToProto(const Record& r, v1::Record* out);
void ToProto(const ScoredPoint& p, v1::ScoredPoint* out);

// How a read asked to be served; InvalidArgument for an unknown consistency
// (`what` names the request in the message).
absl::StatusOr<ReadOptions> ReadOptionsFromProto(int consistency, uint32_t max_staleness_ms,
                                                 const std::string& what);

// Fills SearchParams (except filter) from the request's, checking ranges.
absl::Status FromProto(const v1::SearchParams& p, SearchParams* out);

}  // namespace cairn::api

#endif  // CAIRN_API_CONVERT_H_
