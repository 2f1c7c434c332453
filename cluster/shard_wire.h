// Reads of one shard, as a node sends them to another that hosts a replica
// (cairn.internal.v1.ShardRead.request), and their answers. Binary
// (storage/byte_codec.h): ids travel in their storage form, floats as their
// bytes, so what a remote replica returns is bit for bit what a local one
// would. Decoding refuses anything malformed with InvalidArgument.
#ifndef CAIRN_CLUSTER_SHARD_WIRE_H_
#define CAIRN_CLUSTER_SHARD_WIRE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "cairn/collection.h"
#include "db/shard.h"

namespace cairn::cluster {

struct ShardReadRequest {
  // kExport: a copy of the replica's files for the asking node (a backup),
  // answered with a SnapshotDescriptor by the cluster, not by ExecuteRead.
  enum class Op : uint8_t { kSearch = 1, kGet = 2, kCount = 3, kScroll = 4, kStats = 5, kExport = 6 };
  Op op = Op::kStats;
  // kSearch: queries prepared for the metric, nq x dim.
  std::vector<float> queries;
  uint32_t nq = 0;
  int k = 0, ef = 0, nprobe = 0;
  bool exact = false;
  bool with_payload = false, with_vector = false;  // kSearch, kGet, kScroll
  std::string filter_json;  // kSearch, kCount, kScroll; "" for none
  std::vector<std::string> keys;  // kGet: external keys
  std::string after;  // kScroll
  uint32_t limit = 0;  // kScroll
  // The class of ids the reader's shard map gives the shard (modulus 0: as
  // created): a replica holding another refuses the read (CheckHashClass).
  db::HashClass expect;

  std::string Encode() const;
  static absl::StatusOr<ShardReadRequest> Decode(std::string_view data);
};

// OK when `shard` holds the class `expect` names. A shard split since: the
// MovedBySplitError a reader routes again on; a replica that has not applied
// a split the reader knows of: Unavailable (another replica serves it).
absl::Status CheckHashClass(const db::Shard& shard, db::HashClass expect);

// Runs `req` on a local replica and encodes the answer (checking the class
// it expects first, but for kExport).
absl::StatusOr<std::string> ExecuteRead(const db::Shard& shard, const ShardReadRequest& req);

// The answers, decoded.
absl::StatusOr<std::vector<std::vector<ScoredPoint>>> DecodeSearchAnswer(std::string_view data);
absl::StatusOr<std::vector<std::optional<Record>>> DecodeGetAnswer(std::string_view data);
absl::StatusOr<uint64_t> DecodeCountAnswer(std::string_view data);
struct ScrollAnswer {
  std::vector<Record> records;
  std::string last_key;
  bool more = false;
};
absl::StatusOr<ScrollAnswer> DecodeScrollAnswer(std::string_view data);
absl::StatusOr<db::ShardStats> DecodeStatsAnswer(std::string_view data);

}  // namespace cairn::cluster

#endif  // CAIRN_CLUSTER_SHARD_WIRE_H_
