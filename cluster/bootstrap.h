// How a node knows who it is, and how a cluster forms without ever forming
// twice.
//
// Identity: DATA/node.json holds the node's id (random, minted when the
// directory is empty, never reused) and its name. A directory whose name is
// not this node's is refused: it is another node's disk.
//
// Membership: DATA/raftlog holds, beside the logs, the node's membership
// record {cluster id, initial voters of the metadata group, the seed nodes'
// ids and addresses}, written once in one synced write. A node with it is a
// member and ignores --seeds.
//
// Formation (Decide): an empty node asks every seed who it is (Hello). The
// cluster forms only when every seed answered, every one is empty, and every
// one names the same seeds: then all compute the same cluster id (a hash of
// the seeds' sorted node ids) and the same initial voters (the first three
// seeds in seed order), so they agree without another round. A seed that has
// a cluster whose seeds include this node's id means this node took part in
// forming it and has not written its record yet: it adopts that record.
// Any other answer with a cluster means the cluster exists and this node must
// join it (a membership operation); anything else means wait.
#ifndef CAIRN_CLUSTER_BOOTSTRAP_H_
#define CAIRN_CLUSTER_BOOTSTRAP_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cluster/peer.h"

namespace cairn::cluster {

struct NodeIdentity {
  uint64_t id = 0;
  std::string name;
};

// Reads DATA/node.json, or creates it with a new id when the directory holds
// no node yet. FailedPrecondition when it belongs to a node of another name;
// DataLoss when malformed.
absl::StatusOr<NodeIdentity> LoadOrCreateIdentity(const std::string& data_dir, const std::string& name);

// What a member knows of how its cluster began.
struct Membership {
  std::string cluster_id;
  std::vector<uint64_t> initial_voters;  // node ids: the metadata group's voters
  struct Seed {
    uint64_t node_id = 0;
    std::string name;
    std::string address;
  };
  std::vector<Seed> seeds;  // every seed, in seed order

  std::string Encode() const;
  static absl::StatusOr<Membership> Decode(const std::string& data);
};

// One seed's answer, or none when it could not be reached.
struct SeedAnswer {
  std::string address;  // as in --seeds
  std::optional<pb::HelloResponse> response;
  std::string error;  // why there is no response
};

struct Decision {
  enum class Kind {
    kWait,   // not every seed answered, or they disagree: ask again later
    kForm,   // every seed is empty: form the cluster with `membership`
    kAdopt,  // the seeds formed the cluster with this node among them
    kJoin,   // the cluster exists without this node: join it
  };
  Kind kind = Kind::kWait;
  Membership membership;  // kForm, kAdopt, kJoin (what is known of it)
  std::string why;        // kWait, kJoin: for the log
};

// `seeds` as given to this node; `answers` one per seed (this node answers
// for itself); `self` this node.
Decision Decide(const NodeIdentity& self, const std::vector<std::string>& seeds,
                const std::vector<SeedAnswer>& answers);

// The cluster id the seeds with these node ids form: 32 hex digits.
std::string ClusterIdOf(std::vector<uint64_t> seed_node_ids);

}  // namespace cairn::cluster

#endif  // CAIRN_CLUSTER_BOOTSTRAP_H_
