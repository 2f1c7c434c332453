// CollectionConfig <-> JSON (the collection.json file, and the API's form),
// and config validation.
#ifndef CAIRN_DB_CONFIG_CODEC_H_
#define CAIRN_DB_CONFIG_CODEC_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "cairn/options.h"

namespace cairn::db {

std::string ConfigToJson(const CollectionConfig& config);
absl::StatusOr<CollectionConfig> ConfigFromJson(std::string_view json);
// InvalidArgument naming the first bad field.
absl::Status ValidateConfig(const CollectionConfig& config);
absl::Status ValidateCollectionName(std::string_view name);
// Whether `update` changes only what UpdateConfig may change on a collection
// configured as `current` (the tunables); InvalidArgument names the first
// other field that differs.
// `replication_factor_may_change`: a cluster changes it online; a single
// node refuses any other value than its own.
absl::Status CheckConfigUpdate(const CollectionConfig& current, const CollectionConfig& update,
                               bool replication_factor_may_change = false);

}  // namespace cairn::db

#endif  // CAIRN_DB_CONFIG_CODEC_H_
