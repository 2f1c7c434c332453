#include "cluster/bootstrap.h"

#include <algorithm>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cairn/status.h"
#include "nlohmann/json.hpp"
#include "storage/file_util.h"

namespace cairn::cluster {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

uint64_t NewNodeId() {
  std::random_device rd;
  uint64_t id = 0;
  while (id == 0) id = ((static_cast<uint64_t>(rd()) << 32) | rd()) & ((uint64_t{1} << 62) - 1);
  return id;
}

// FNV-1a 64, twice with different bases: 128 bits, stable everywhere.
uint64_t Fnv(std::string_view s, uint64_t h) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

absl::StatusOr<NodeIdentity> LoadOrCreateIdentity(const std::string& data_dir, const std::string& name) {
  const std::string path = (fs::path(data_dir) / "node.json").string();
  std::error_code ec;
  if (fs::exists(path, ec)) {
    CAIRN_ASSIGN_OR_RETURN(std::string text, storage::ReadFile(path));
    Json j = Json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("node_id") || !j.contains("name") ||
        !j["node_id"].is_number_unsigned() || !j["name"].is_string()) {
      return absl::DataLossError(absl::StrCat(path, " is malformed"));
    }
    NodeIdentity id{j["node_id"].get<uint64_t>(), j["name"].get<std::string>()};
    if (id.name != name) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the data directory ", data_dir, " belongs to node \"", id.name, "\" (id ", id.id, "), not to \"", name,
          "\": a node must never start on another node's disk (give each node its own volume, or --node-name ",
          id.name, " if this really is that node)"));
    }
    return id;
  }
  fs::create_directories(data_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", data_dir, ": ", ec.message()));
  // A new node needs an empty directory: never one holding a single-node
  // database or anything else.
  for (const auto& e : fs::directory_iterator(data_dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n == "LOCK" || n == "node.json.tmp") continue;
    if (n == "CAIRN") {
      return absl::FailedPreconditionError(absl::StrCat(
          "the data directory ", data_dir, " holds a single-node database: serve it without --cluster, or give this "
          "node an empty directory (copy collections into the cluster with cairn ingest)"));
    }
    return absl::FailedPreconditionError(absl::StrCat("the data directory ", data_dir,
                                                      " is not empty and not a cluster node's (found ", n, ")"));
  }
  NodeIdentity id{NewNodeId(), name};
  CAIRN_RETURN_IF_ERROR(
      storage::WriteFileAtomic(path, Json{{"node_id", id.id}, {"name", id.name}, {"format", 1}}.dump(2) + "\n"));
  return id;
}

std::string Membership::Encode() const {
  Json seeds_json = Json::array();
  for (const auto& s : seeds) seeds_json.push_back(Json{{"node_id", s.node_id}, {"name", s.name}, {"address", s.address}});
  return Json{{"cluster_id", cluster_id}, {"initial_voters", initial_voters}, {"seeds", seeds_json}}.dump();
}

absl::StatusOr<Membership> Membership::Decode(const std::string& data) {
  Json j = Json::parse(data, nullptr, false);
  try {
    if (j.is_discarded()) throw std::runtime_error("not JSON");
    Membership m;
    m.cluster_id = j.at("cluster_id").get<std::string>();
    m.initial_voters = j.at("initial_voters").get<std::vector<uint64_t>>();
    for (const auto& s : j.at("seeds")) {
      m.seeds.push_back({s.at("node_id").get<uint64_t>(), s.at("name").get<std::string>(),
                         s.at("address").get<std::string>()});
    }
    if (m.cluster_id.empty() || m.initial_voters.empty()) throw std::runtime_error("empty");
    return m;
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("the node's membership record is malformed: ", e.what()));
  }
}

std::string ClusterIdOf(std::vector<uint64_t> ids) {
  std::sort(ids.begin(), ids.end());
  const std::string text = absl::StrJoin(ids, ",");
  return absl::StrFormat("%016x%016x", Fnv(text, 14695981039346656037ull), Fnv(text, 0x9E3779B97F4A7C15ull));
}

Decision Decide(const NodeIdentity& self, const std::vector<std::string>& seeds,
                const std::vector<SeedAnswer>& answers) {
  Decision d;
  // A cluster that exists wins over everything else.
  for (const auto& a : answers) {
    if (!a.response || a.response->cluster_id().empty()) continue;
    const auto& r = *a.response;
    Membership m;
    m.cluster_id = r.cluster_id();
    m.initial_voters.assign(r.initial_voters().begin(), r.initial_voters().end());
    for (const auto& mem : r.members()) m.seeds.push_back({mem.node_id(), mem.name(), mem.peer_address()});
    d.membership = std::move(m);
    // One of the seeds it formed with (a voter or a learner of the metadata
    // group): this node took part and has not written it down yet.
    bool member = false;
    for (const auto& s : d.membership.seeds) member = member || s.node_id == self.id;
    if (member) {
      d.kind = Decision::Kind::kAdopt;
    } else {
      d.kind = Decision::Kind::kJoin;
      d.why = absl::StrCat("seed ", a.address, " is in cluster ", r.cluster_id());
    }
    return d;
  }
  std::vector<std::string> missing, disagree;
  for (const auto& a : answers) {
    if (!a.response) {
      missing.push_back(absl::StrCat(a.address, " (", a.error, ")"));
    } else if (std::vector<std::string>(a.response->seeds().begin(), a.response->seeds().end()) != seeds) {
      disagree.push_back(a.address);
    }
  }
  if (answers.size() != seeds.size() || !missing.empty() || !disagree.empty()) {
    d.why = !missing.empty() ? absl::StrCat("waiting for every seed to answer: ", absl::StrJoin(missing, ", "))
            : !disagree.empty()
                ? absl::StrCat("seeds ", absl::StrJoin(disagree, ", "), " were started with other --seeds")
                : "an answer per seed is needed";
    return d;
  }
  Membership m;
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < answers.size(); ++i) {
    const auto& r = *answers[i].response;
    for (const auto& s : m.seeds) {
      if (s.node_id == r.node_id()) {
        d.why = absl::StrCat("seeds ", s.address, " and ", seeds[i], " are the same node (", r.node_id(), ")");
        return d;
      }
    }
    m.seeds.push_back({r.node_id(), r.name(), seeds[i]});
    ids.push_back(r.node_id());
    if (m.initial_voters.size() < 3) m.initial_voters.push_back(r.node_id());
  }
  if (std::find(ids.begin(), ids.end(), self.id) == ids.end()) {
    d.kind = Decision::Kind::kWait;
    d.why = "this node is not one of the seeds: it joins once they have formed the cluster";
    return d;
  }
  m.cluster_id = ClusterIdOf(ids);
  d.kind = Decision::Kind::kForm;
  d.membership = std::move(m);
  return d;
}

}  // namespace cairn::cluster
