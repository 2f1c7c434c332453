// ShardCommand: one write to a shard, in the form a replicated log entry
// carries it. The node that takes a client's request validates and prepares
// it (ids, dimension, NaN, payload types) and encodes a ShardCommand; every
// replica decodes it and hands it to Shard::Apply, which does the same thing
// on every replica (see shard.h).
//
// Encoding (little-endian, storage/byte_codec.h): a format byte (1), a kind
// byte, the request id, then the kind's fields. Decode refuses anything else with DataLoss:
// a replica must never apply half of a command it cannot read.
#ifndef CAIRN_DB_SHARD_COMMAND_H_
#define CAIRN_DB_SHARD_COMMAND_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "db/shard.h"

namespace cairn::db {

struct ShardCommand {
  enum class Kind : uint8_t { kUpsert = 1, kDelete = 2, kDeleteByFilter = 3, kSetPayload = 4, kSplit = 5, kSplitDone = 6 };
  Kind kind = Kind::kUpsert;
  // Names the client's request: a command proposed again with the same id
  // (a retry after a lost answer) is applied once (see Shard::Apply). Empty:
  // none, applied each time.
  std::string request_id;
  std::vector<PreparedPoint> points;  // kUpsert
  std::vector<std::string> ext_keys;  // kDelete, kSetPayload (ExternalKey form)
  std::string filter_json;            // kDeleteByFilter (Filter::ToJson form)
  // kDeleteByFilter: the class the proposer's shard map gives the shard
  // (Shard::SplitRecord::cls): a shard split since refuses it
  // (MovedBySplitError), as the ids it matched are partly in another.
  HashClass expect;
  Json payload;                       // kSetPayload: an object
  bool overwrite = false;             // kSetPayload: replace instead of merge
  // kSplit: the shard will keep the ids of class `keep` (its class's
  // modulus doubled) and group `child_group` takes those of class `child`;
  // from now on writes of `child` ids are refused (the new group starts
  // from a copy as of this entry). kSplitDone (the new group serves): the
  // shard holds `keep` only.
  HashClass keep, child;
  uint64_t child_group = 0;

  std::string Encode() const;
  // DataLoss when `data` is not an encoded command.
  static absl::StatusOr<ShardCommand> Decode(std::string_view data);
};

}  // namespace cairn::db

#endif  // CAIRN_DB_SHARD_COMMAND_H_
