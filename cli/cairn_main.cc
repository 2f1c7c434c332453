// cairn: the command-line tool. Talks to a running cairnd over gRPC.
// `cairn --help` and `cairn COMMAND --help` explain every command.
//
// Exit status: 0 ok, 1 usage error, 2 input error (a bad file or record),
// 3 server error (unreachable, or it refused the request).
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cairn/v1/cluster.grpc.pb.h"
#include "cairn/v1/collections.grpc.pb.h"
#include "cairn/v1/points.grpc.pb.h"
#include "cairn/v1/search.grpc.pb.h"
#include "cairn/v1/server.grpc.pb.h"
#include "cairn/v1/snapshots.grpc.pb.h"
#include "api/convert.h"
#include "cli/ingest.h"
#include "cli/readers.h"
#include <google/protobuf/util/json_util.h>

namespace {

using Json = nlohmann::json;
namespace v1 = cairn::v1;

constexpr int kOk = 0, kUsage = 1, kInput = 2, kServer = 3, kInterrupted = 130;

// The first Ctrl-C (or SIGTERM) asks the ingest to stop after what is in
// flight, keeping its checkpoint; a second one exits at once.
void OnInterrupt(int) {
  if (cairn::cli::g_interrupted.exchange(true)) _exit(kInterrupted);
}

void InstallInterruptHandlers() {
  struct sigaction sa = {};
  sa.sa_handler = OnInterrupt;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// "--name N": false when present and not a whole number.
template <typename Args>
bool ParseCount(const Args& a, const std::string& name, uint64_t fallback, uint64_t* out) {
  std::string v = a.Get(name);
  if (v.empty()) {
    *out = fallback;
    return true;
  }
  char* end = nullptr;
  errno = 0;
  unsigned long long x = std::strtoull(v.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v[0] == '-') return false;
  *out = x;
  return true;
}

const char* kUsageText =
    "Usage: cairn [connection flags] COMMAND [args]\n"
    "\n"
    "Commands:\n"
    "  collection create NAME --dim N [--metric l2|ip|cosine] [--index TYPE]\n"
    "                    [--payload-index FIELD:TYPE]... [--shards N] [--replication-factor N]\n"
    "  collection list | info NAME | drop NAME\n"
    "  collection update NAME [--replication-factor N] [--ef-search N] [--nprobe N] ...\n"
    "  collection split NAME [--wait]\n"
    "  ingest --collection NAME [options] FILE...   load vectors: online to cairnd, or\n"
    "         offline into a data directory with --data-dir DIR\n"
    "  search --collection NAME (--vector X1,X2,... | --queries FILE) [--k N] [--filter JSON]\n"
    "  snapshot create NAME | list [NAME] | download SNAPSHOT [--output FILE] |\n"
    "           restore SNAPSHOT NEW_NAME | delete SNAPSHOT\n"
    "  info\n"
    "  cluster status [--json]   the nodes and Raft groups of a cairnd --cluster\n"
    "  cluster nodes [--json] | drain NODE | activate NODE | remove NODE\n"
    "\n"
    "Connection flags (or environment variables):\n"
    "  --target HOST:PORT   cairnd's gRPC address (CAIRN_TARGET; default 127.0.0.1:7600)\n"
    "  --api-key KEY        API key (CAIRN_API_KEY)\n"
    "  --tls-ca FILE        verify cairnd's TLS certificate with this CA (CAIRN_TLS_CA)\n"
    "  --tls-server-name N  the name cairnd's certificate is checked against (default the\n"
    "                       target's host; CAIRN_TLS_SERVER_NAME), e.g. cairn for a pod\n"
    "                       called by its address\n"
    "\n"
    "Examples:\n"
    "  cairn collection create docs --dim 384 --metric cosine --payload-index lang:keyword\n"
    "  cairn ingest --collection docs chunks.jsonl.gz\n"
    "  cairn search --collection docs --vector 0.1,0.3,... --filter '{\"must\":[{\"key\":\"lang\",\"match\":{\"value\":\"en\"}}]}'\n"
    "\n"
    "Exit status: 0 ok, 1 usage error, 2 input error, 3 server error, 130 interrupted.\n"
    "`cairn COMMAND --help` explains each command.\n";

const std::map<std::string, std::string> kCommandHelp = {
    {"collection",
     "Usage: cairn collection create NAME --dim N [--metric l2|ip|cosine] [--index TYPE] [--nlist N]\n"
     "                        [--payload-index FIELD:TYPE]... [--shards N] [--hnsw-int8 on|off]\n"
     "                        [--rerank N] [--device auto|cpu|gpu] [--replication-factor N]\n"
     "                        [--split-points N] [--pq-tables auto|on|off]\n"
     "       cairn collection list\n"
     "       cairn collection info NAME\n"
     "       cairn collection drop NAME\n"
     "       cairn collection update NAME [--replication-factor N] [--ef-search N] [--nprobe N]\n"
     "                        [--rerank N] [--seal-threshold N] [--compaction-deleted-ratio X]\n"
     "                        [--split-points N]\n"
     "       cairn collection split NAME [--wait]\n"
     "\n"
     "TYPE of --index: hnsw (default), flat, ivf_flat, ivf_pq, ivf_sq8, hnsw_sq.\n"
     "TYPE of --payload-index: keyword, integer, float, bool (repeat the flag per field).\n"
     "--rerank N: lossy indexes (ivf_pq, ivf_sq8, hnsw_sq) fetch k*N candidates and re-rank them\n"
     "  with exact distances from the stored vectors (0..100; default 0: off). ivf_pq needs it:\n"
     "  on 5,000 clustered 32-d points, recall@10 is 0.73 without and 1.0 with --rerank 4.\n"
     "--hnsw-int8: HNSW walks sealed segments on 8-bit codes of the vectors and re-ranks the\n"
     "  candidates exactly (default on; off walks on float32, without the extra byte per\n"
     "  dimension per point of memory). Fixed once the collection exists.\n"
     "--replication-factor N: copies of each shard on distinct nodes of a cairnd --cluster, kept\n"
     "  alike by Raft (default: 3, or the number of nodes when fewer; more than the nodes is\n"
     "  refused). A single-node cairnd keeps one copy. `collection update` changes it online on\n"
     "  a cluster: replicas are added (copied from the leader) or removed in the background;\n"
     "  `cairn cluster status` shows the moves under way.\n"
     "update: what may change on an existing collection: the replication factor (cluster),\n"
     "  HNSW's --ef-search, IVF's --nprobe, --rerank, --seal-threshold (points in a growing\n"
     "  segment before it is sealed), --compaction-deleted-ratio (0..1] and --split-points\n"
     "  (cluster).\n"
     "split (cluster): splits every shard of the collection in two, online: each shard keeps half\n"
     "  its ids (by their hash) and a new shard on the same nodes takes the other half; the cluster\n"
     "  then moves replicas to balance the nodes. Searches and writes go on meanwhile; a write that\n"
     "  reaches a shard just split is sent on to the new one. --wait returns once every split is\n"
     "  done. Refused while a shard has another operation under way, past 256 shards, and by a\n"
     "  single-node server (its shard count is set at creation with --shards).\n"
     "--split-points N (cluster): the cluster splits, by itself, a shard holding more than N\n"
     "  points (0: never, the default; otherwise at least 1000). `collection update` changes it.\n"
     "--device: where IVF training (k-means; IVF-PQ codebooks and codes) and searches of sealed\n"
     "  flat and IVF-Flat segments run:\n"
     "  auto (default: the server's --device, by default a GPU when it has one), cpu, or gpu\n"
     "  (refused by a server without a GPU). Fixed once the collection exists.\n"
     "--pq-tables (ivf_pq, l2): FAISS's precomputed distance tables in sealed segments, which\n"
     "  make short lists quicker to scan: auto (default: where they cost at most an eighth of the\n"
     "  segment's codes), on (every segment, nlist x m KiB each), off. Fixed once created.\n"
     "\n"
     "Example:\n"
     "  cairn collection create docs --dim 384 --metric cosine --payload-index lang:keyword\n"
     "  cairn collection update docs --replication-factor 5\n"},
    {"ingest",
     "Usage: cairn ingest --collection NAME [options] FILE...\n"
     "\n"
     "Loads the files, in order, into collection NAME.\n"
     "\n"
     "Input:\n"
     "  --format F        auto (default: from the name, else the first bytes), fvecs, ivecs, bvecs,\n"
     "                    npy (float32/float16/uint8 rows), hdf5 (ann-benchmarks layout), idx\n"
     "                    (MNIST images), jsonl; any of them gzip-compressed (.gz). FILE - is stdin.\n"
     "  --dataset NAME    HDF5 dataset to read (default train)\n"
     "  --payloads FILE   JSON Lines payloads for a binary file: line i is record i's payload\n"
     "                    object (or null); once per FILE, in the same order\n"
     "  --start-id N      first id of binary records (default 0)\n"
     "  --skip-bad        skip bad records (not JSON, wrong dimension, NaN) and report how many\n"
     "  --json            print a summary {records, points_written, seconds, records_per_second,\n"
     "                    mb_per_second, errors, retries, skipped, ...} on stdout\n"
     "\n"
     "Ids: JSON Lines records carry \"id\" (a number or a string); records of binary files get\n"
     "their position in the input, counted across all FILEs from --start-id. An id repeated in\n"
     "the input is written again: the last one wins.\n"
     "\n"
     "Online (default): to cairnd at --target, over client-streaming upserts.\n"
     "  --batch N         points per message (default 1000)\n"
     "  --inflight N      requests in flight, each 8 messages acknowledged together (default 4)\n"
     "  --retries N       retries of a failed request, with exponential backoff (default 10)\n"
     "  --checkpoint FILE where acknowledged progress is recorded\n"
     "                    (default ./.cairn-ingest-NAME-HASH.checkpoint, HASH from the target and the\n"
     "                    files, so parallel ingests of other files do not meet; removed when the\n"
     "                    ingest completes). Two ingests cannot share a checkpoint at once.\n"
     "  --resume          continue an interrupted ingest (Ctrl-C, kill, lost server) from its\n"
     "                    checkpoint; give the same files. The result equals an uninterrupted run.\n"
     "  A bad record stops the ingest with exit status 2, naming the file and record; the records\n"
     "  before it are written, nothing after it (fix it, then --resume).\n"
     "\n"
     "Offline: --data-dir DIR loads straight into a data directory no server holds (the fastest\n"
     "first load: sorted storage files and sealed index segments built directly). The collection\n"
     "must be empty; it is created when absent from --dim, --metric, --index, --nlist,\n"
     "--payload-index, --shards, --hnsw-int8, --rerank and --device as for `collection create`.\n"
     "--segment-size N sets the points per sealed segment (default: the collection's seal\n"
     "threshold). All or nothing: a bad record, an error or Ctrl-C leaves the collection\n"
     "empty (or absent, when this ingest created it). Then serve it with `cairnd --data-dir DIR`.\n"
     "\n"
     "Progress goes to stderr: a bar on a terminal, a line every 5 s otherwise.\n"
     "Exit status: 0 ok, 1 usage error, 2 input error, 3 server error, 130 interrupted.\n"
     "\n"
     "Examples:\n"
     "  cairn ingest --collection docs chunks.jsonl.gz\n"
     "  cairn ingest --collection images --payloads meta.jsonl embeddings.npy\n"
     "  cairn ingest --data-dir /var/lib/cairn --collection sift --dim 128 --index ivf_flat sift_base.fvecs\n"},
    {"search",
     "Usage: cairn search --collection NAME (--vector X1,X2,... | --queries FILE) [--k N] [--ef N]\n"
     "                    [--nprobe N] [--exact] [--filter JSON] [--json]\n"
     "                    [--consistency linearizable|local] [--max-staleness-ms N]\n"
     "\n"
     "Prints the k nearest points (default 10) with score and payload; --json prints the\n"
     "response as JSON (one line per query). --filter takes the API's filter JSON.\n"
     "--queries reads query vectors from a file in any ingest format (- is JSON Lines on stdin;\n"
     "--format, --dataset (HDF5, default test) and --max-queries N apply), sent in batches. A JSON\n"
     "Lines query is {\"vector\": [...]} (\"id\" optional) or a bare [...].\n"
     "--exact searches by brute force (the ground truth for recall checks).\n"
     "--consistency (a cairnd --cluster): linearizable (default) sees every write acknowledged\n"
     "  before the search, through any node; local answers from what the serving replicas have\n"
     "  applied without asking the shard leaders (cheaper, may miss the latest writes), refused\n"
     "  by a replica that has not heard from its leader within --max-staleness-ms (default 5000).\n"
     "\n"
     "Examples:\n"
     "  cairn search --collection docs --vector 0.1,0.9,0.1,0.1 --k 3 \\\n"
     "    --filter '{\"must\":[{\"key\":\"lang\",\"match\":{\"value\":\"en\"}}]}'\n"
     "  cairn search --collection sift --queries sift_query.fvecs --k 100 --json > hits.jsonl\n"},
    {"snapshot",
     "Usage: cairn snapshot create COLLECTION\n"
     "       cairn snapshot list [COLLECTION]\n"
     "       cairn snapshot download SNAPSHOT [--output FILE]\n"
     "       cairn snapshot restore SNAPSHOT NEW_COLLECTION\n"
     "       cairn snapshot delete SNAPSHOT\n"
     "\n"
     "A snapshot is one consistent moment of a collection, kept by the server (in its data\n"
     "directory, until deleted). download streams it as a tar (default SNAPSHOT.tar; - for\n"
     "stdout) that is itself a data directory: extract it and run cairnd on it. restore makes a\n"
     "new collection from it; delete frees its space. Every snapshot command needs the admin\n"
     "role. --json prints snapshot details as JSON.\n"
     "\n"
     "Example:\n"
     "  cairn snapshot create docs && cairn snapshot list docs\n"
     "  cairn snapshot download docs-20261129T230501Z --output docs.tar\n"},
    {"cluster",
     "Usage: cairn cluster status [--json]\n"
     "       cairn cluster nodes [--json]\n"
     "       cairn cluster drain NODE\n"
     "       cairn cluster activate NODE\n"
     "       cairn cluster remove NODE\n"
     "\n"
     "status: what a node of a cairnd --cluster knows of its cluster: the nodes, every Raft\n"
     "  group (the metadata group and one per shard of each collection) with its leader, term,\n"
     "  commit index, and each replica's applied index and lag behind the leader, and the\n"
     "  operations under way (replicas and leaderships moving). Any node answers.\n"
     "nodes: each node's name, id, zone, state, replicas and leaders held, bytes on disk, and\n"
     "  whether it votes in the metadata group. States: joining (catching up with the\n"
     "  metadata), active, draining, dead (silent for cairnd's --dead-node-timeout, 30 min by\n"
     "  default: its replicas are re-created on other nodes), removed.\n"
     "drain NODE (a name or an id): moves every replica and leadership off the node. Refused\n"
     "  when the other active nodes would be fewer than a collection's replication factor.\n"
     "  When `nodes` shows it removable, `remove` takes it; then scale the StatefulSet down.\n"
     "activate NODE: a draining (or dead) node takes replicas again.\n"
     "remove NODE: the node leaves the cluster for good; its id is refused from then on (a pod\n"
     "  started again on an empty disk joins as a new node). Refused for an active node (drain\n"
     "  it first), a node that still holds a replica or votes in the metadata group. Stopping\n"
     "  a pod never removes it. drain, activate and remove need the admin role.\n"
     "--json prints the whole answer as JSON. A single-node cairnd says it is not a cluster.\n"
     "\n"
     "Example:\n  cairn --target 127.0.0.1:7600 cluster status\n"
     "  cairn cluster drain cairn-4 && cairn cluster nodes && cairn cluster remove cairn-4\n"},
    {"info",
     "Usage: cairn info\n\nPrints the server's version, format, SIMD level, uptime and collections, and the device\n"
     "its indexes use (the GPU, or why it has none).\n"
     "\nExample:\n  CAIRN_TARGET=10.0.0.5:7600 CAIRN_API_KEY=... cairn info\n"},
};

struct Conn {
  std::string target;
  std::shared_ptr<grpc::Channel> channel;
  std::string api_key;
  void Prepare(grpc::ClientContext* ctx) const {
    if (!api_key.empty()) ctx->AddMetadata("authorization", "Bearer " + api_key);
  }
};

// A usage error: the reason and where help is (the whole overview only when
// no command was given).
int Usage(const std::string& why) {
  if (why == "no command") {
    std::fprintf(stderr, "cairn: %s\n\n%s", why.c_str(), kUsageText);
  } else {
    std::fprintf(stderr, "cairn: %s\n(`cairn --help` lists the commands; `cairn COMMAND --help` explains one)\n",
                 why.c_str());
  }
  return kUsage;
}

int ServerError(const grpc::Status& s) {
  std::fprintf(stderr, "cairn: server: %s: %s\n", s.error_code() == grpc::StatusCode::UNAVAILABLE
                                                       ? "UNAVAILABLE (is cairnd running at the target?)"
                                                       : cairn::cli::GrpcCodeName(s.error_code()).c_str(),
               s.error_message().c_str());
  return kServer;
}

// Pulls "--name value" pairs and bare arguments out of args.
struct Args {
  std::map<std::string, std::vector<std::string>> flags;
  std::vector<std::string> rest;
  std::set<std::string> switches;
  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = flags.find(name);
    return it == flags.end() ? fallback : it->second.back();
  }
  bool Has(const std::string& name) const { return flags.count(name) || switches.count(name); }
};

bool Parse(const std::vector<std::string>& in, const std::set<std::string>& switches, Args* out,
           std::string* error) {
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string& a = in[i];
    if (a.rfind("--", 0) == 0) {
      if (switches.count(a)) {
        out->switches.insert(a);
        continue;
      }
      if (i + 1 >= in.size()) {
        *error = a + " needs a value";
        return false;
      }
      out->flags[a].push_back(in[++i]);
    } else {
      out->rest.push_back(a);
    }
  }
  return true;
}

// The flags (beyond the connection flags) and the most bare arguments each
// command takes; anything else is a usage error, so that a misspelled flag
// (--fitler) is never silently ignored.
struct CommandShape {
  std::set<std::string> flags;
  size_t max_args;  // after the command word(s); SIZE_MAX: any number (files)
};

const std::set<std::string>& CreateFlags() {
  static const std::set<std::string> f = {"--dim",       "--metric", "--index",  "--nlist",        "--shards",
                                          "--hnsw-int8", "--rerank", "--device", "--payload-index",
                                          "--replication-factor", "--split-points", "--pq-tables"};
  return f;
}

// Ingest's flags for one mode only: online (to cairnd), and offline
// (--data-dir, which creates the collection from the create flags).
const std::set<std::string>& IngestOnlineOnly() {
  static const std::set<std::string> f = {"--batch", "--inflight", "--retries", "--checkpoint"};
  return f;
}
const std::set<std::string>& IngestOfflineOnly() {
  static const std::set<std::string> f = [] {
    std::set<std::string> s = CreateFlags();
    s.insert("--segment-size");
    return s;
  }();
  return f;
}

// The shape of `cmd` (with its subcommand, as "collection create"), or null.
const CommandShape* ShapeOf(const std::string& cmd) {
  static const std::map<std::string, CommandShape> kShapes = [] {
    std::set<std::string> ingest = {"--collection", "--format", "--dataset", "--payloads", "--start-id",
                                    "--skip-bad",   "--json",   "--resume",  "--data-dir"};
    ingest.insert(IngestOnlineOnly().begin(), IngestOnlineOnly().end());
    ingest.insert(IngestOfflineOnly().begin(), IngestOfflineOnly().end());
    return std::map<std::string, CommandShape>{
        {"collection create", {CreateFlags(), 1}},
        {"collection list", {{}, 0}},
        {"collection info", {{}, 1}},
        {"collection drop", {{}, 1}},
        {"collection split", {{"--wait"}, 1}},
        {"ingest", {ingest, SIZE_MAX}},
        {"search",
         {{"--collection", "--vector", "--queries", "--k", "--ef", "--nprobe", "--exact", "--filter", "--json",
           "--format", "--dataset", "--max-queries", "--consistency", "--max-staleness-ms"},
          0}},
        {"info", {{}, 0}},
        {"cluster status", {{"--json"}, 0}},
        {"cluster nodes", {{"--json"}, 0}},
        {"cluster drain", {{}, 1}},
        {"cluster activate", {{}, 1}},
        {"cluster remove", {{}, 1}},
        {"collection update",
         {{"--replication-factor", "--split-points", "--ef-search", "--nprobe", "--rerank", "--seal-threshold",
           "--compaction-deleted-ratio"},
          1}},
        {"snapshot create", {{"--json"}, 1}},
        {"snapshot list", {{"--json"}, 1}},
        {"snapshot download", {{"--output"}, 1}},
        {"snapshot restore", {{}, 2}},
        {"snapshot delete", {{}, 1}},
    };
  }();
  auto it = kShapes.find(cmd);
  return it == kShapes.end() ? nullptr : &it->second;
}

// An empty string, or what is wrong with the flags and bare arguments given
// to `cmd` (`args` after the command word; `words`: 1, or 2 with a subcommand).
std::string CheckShape(const std::string& cmd, const Args& args, size_t words) {
  const CommandShape* shape = ShapeOf(cmd);
  if (shape == nullptr) return "";  // an unknown subcommand: the command says so
  static const std::set<std::string> kConnection = {"--target", "--api-key", "--tls-ca", "--tls-server-name"};
  auto known = [&](const std::string& f) { return shape->flags.count(f) > 0 || kConnection.count(f) > 0; };
  for (const auto& [flag, values] : args.flags) {
    if (!known(flag)) return "unknown flag " + flag + " for `cairn " + cmd + "`";
  }
  for (const auto& flag : args.switches) {
    if (!known(flag)) return "unknown flag " + flag + " for `cairn " + cmd + "`";
  }
  const size_t given = args.rest.size() >= words - 1 ? args.rest.size() - (words - 1) : 0;
  if (given > shape->max_args) {
    return "`cairn " + cmd + "` takes " +
           (shape->max_args == 0 ? std::string("no") : "at most " + std::to_string(shape->max_args)) +
           " bare argument" + (shape->max_args == 1 ? "" : "s") + "; unexpected: " + args.rest[words - 1 + shape->max_args];
  }
  return "";
}

// A message as JSON with the .proto field names (the API's JSON form).
std::string ProtoJson(const google::protobuf::Message& m, bool pretty = false, bool all_fields = false) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = pretty;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = all_fields;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

// The collection settings of `collection create` (and of an offline ingest
// that creates its collection) from flags.
int ConfigFromFlags(const Args& a, const std::string& cmd, v1::CollectionConfig* cfg) {
  uint64_t dim = 0;
  if (!a.flags.count("--dim")) return Usage(cmd + ": --dim N is required");
  if (!ParseCount(a, "--dim", 0, &dim) || dim == 0 || dim > UINT32_MAX) {
    return Usage(cmd + ": --dim is a positive integer, got '" + a.Get("--dim") + "'");
  }
  cfg->set_dimension(static_cast<uint32_t>(dim));
  const std::string metric = a.Get("--metric", "l2");
  if (metric == "l2") cfg->set_metric(v1::METRIC_L2);
  else if (metric == "ip") cfg->set_metric(v1::METRIC_INNER_PRODUCT);
  else if (metric == "cosine") cfg->set_metric(v1::METRIC_COSINE);
  else return Usage("--metric is l2, ip or cosine");
  static const std::map<std::string, v1::IndexType> kIndex = {
      {"flat", v1::INDEX_TYPE_FLAT},       {"hnsw", v1::INDEX_TYPE_HNSW},       {"ivf_flat", v1::INDEX_TYPE_IVF_FLAT},
      {"ivf_pq", v1::INDEX_TYPE_IVF_PQ},   {"ivf_sq8", v1::INDEX_TYPE_IVF_SQ8}, {"hnsw_sq", v1::INDEX_TYPE_HNSW_SQ}};
  auto ix = kIndex.find(a.Get("--index", "hnsw"));
  if (ix == kIndex.end()) return Usage("--index is flat, hnsw, ivf_flat, ivf_pq, ivf_sq8 or hnsw_sq");
  cfg->mutable_index()->set_type(ix->second);
  uint64_t n = 0;
  if (!ParseCount(a, "--nlist", 0, &n) || n > 1u << 20) {
    return Usage("--nlist is 0 (automatic) to 1048576, got '" + a.Get("--nlist") + "'");
  }
  cfg->mutable_index()->set_nlist(static_cast<uint32_t>(n));
  if (!ParseCount(a, "--rerank", 0, &n) || n > 100) {
    return Usage("--rerank is 0 (off) to 100, got '" + a.Get("--rerank") + "'");
  }
  cfg->mutable_index()->set_rerank_factor(static_cast<uint32_t>(n));
  static const std::map<std::string, v1::PayloadType> kTypes = {{"keyword", v1::PAYLOAD_TYPE_KEYWORD},
                                                                {"integer", v1::PAYLOAD_TYPE_INTEGER},
                                                                {"float", v1::PAYLOAD_TYPE_FLOAT},
                                                                {"bool", v1::PAYLOAD_TYPE_BOOL}};
  if (auto it = a.flags.find("--payload-index"); it != a.flags.end()) {
    for (const auto& spec : it->second) {
      size_t colon = spec.rfind(':');
      auto t = colon == std::string::npos ? kTypes.end() : kTypes.find(spec.substr(colon + 1));
      if (t == kTypes.end()) return Usage("--payload-index is FIELD:TYPE with TYPE keyword, integer, float or bool");
      auto* p = cfg->add_payload_indexes();
      p->set_field(spec.substr(0, colon));
      p->set_type(t->second);
    }
  }
  if (!ParseCount(a, "--shards", 1, &n) || n == 0 || n > UINT32_MAX) {
    return Usage("--shards is a positive integer, got '" + a.Get("--shards") + "'");
  }
  cfg->set_num_shards(static_cast<uint32_t>(n));
  if (!ParseCount(a, "--replication-factor", 0, &n) || n > 7) {
    return Usage("--replication-factor is 1..7 (0: the default), got '" + a.Get("--replication-factor") + "'");
  }
  cfg->set_replication_factor(static_cast<uint32_t>(n));
  if (a.flags.count("--split-points")) {
    if (!ParseCount(a, "--split-points", 0, &n) || (n != 0 && n < 1000)) {
      return Usage("--split-points is 0 (never) or at least 1000, got '" + a.Get("--split-points") + "'");
    }
    cfg->set_split_points(n);
  }
  if (a.flags.count("--hnsw-int8")) {
    const std::string v = a.Get("--hnsw-int8");
    if (v != "on" && v != "off") return Usage("--hnsw-int8 is on or off");
    cfg->mutable_index()->set_hnsw_int8(v == "on");
  }
  if (a.flags.count("--device")) {
    static const std::map<std::string, v1::Device> kDevices = {
        {"auto", v1::DEVICE_AUTO}, {"cpu", v1::DEVICE_CPU}, {"gpu", v1::DEVICE_GPU}};
    auto d = kDevices.find(a.Get("--device"));
    if (d == kDevices.end()) return Usage("--device is auto, cpu or gpu");
    cfg->mutable_index()->set_device(d->second);
  }
  if (a.flags.count("--pq-tables")) {
    static const std::map<std::string, v1::PqTables> kTables = {
        {"auto", v1::PQ_TABLES_AUTO}, {"on", v1::PQ_TABLES_ON}, {"off", v1::PQ_TABLES_OFF}};
    auto t = kTables.find(a.Get("--pq-tables"));
    if (t == kTables.end()) return Usage("--pq-tables is auto, on or off");
    cfg->mutable_index()->set_pq_tables(t->second);
  }
  return kOk;
}

int CollectionCmd(const Conn& c, const Args& a) {
  if (a.rest.empty()) return Usage("collection: create, list, info, drop, update or split?");
  auto stub = v1::Collections::NewStub(c.channel);
  const std::string& sub = a.rest[0];
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  if (sub == "list") {
    v1::ListCollectionsResponse resp;
    auto s = stub->List(&ctx, v1::ListCollectionsRequest(), &resp);
    if (!s.ok()) return ServerError(s);
    for (const auto& n : resp.names()) std::printf("%s\n", n.c_str());
    return kOk;
  }
  if (a.rest.size() < 2) return Usage("collection " + sub + ": which collection?");
  const std::string& name = a.rest[1];
  if (sub == "info") {
    v1::GetCollectionRequest req;
    req.set_name(name);
    v1::CollectionInfo info;
    auto s = stub->Get(&ctx, req, &info);
    if (!s.ok()) return ServerError(s);
    std::printf("%s", ProtoJson(info, /*pretty=*/true, /*all_fields=*/true).c_str());
    return kOk;
  }
  if (sub == "drop") {
    v1::DeleteCollectionRequest req;
    req.set_name(name);
    v1::DeleteCollectionResponse resp;
    auto s = stub->Delete(&ctx, req, &resp);
    if (!s.ok()) return ServerError(s);
    std::printf("dropped %s\n", name.c_str());
    return kOk;
  }
  if (sub == "split") {
    auto cluster = v1::Cluster::NewStub(c.channel);
    v1::SplitShardsRequest req;
    req.set_collection(name);
    v1::SplitShardsResponse resp;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto s = cluster->SplitShards(&ctx, req, &resp);
    if (!s.ok()) return ServerError(s);
    std::printf("splitting the %u shard(s) of %s: `cairn cluster status` shows the splits under way\n",
                resp.splitting(), name.c_str());
    if (!a.switches.count("--wait")) return kOk;
    // Until no split of the collection is under way.
    for (int polls = 0;; ++polls) {
      if (cairn::cli::g_interrupted.load()) return kInterrupted;
      grpc::ClientContext sctx;
      c.Prepare(&sctx);
      sctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      v1::ClusterStatusResponse st;
      auto ss = cluster->Status(&sctx, v1::ClusterStatusRequest(), &st);
      if (!ss.ok()) return ServerError(ss);
      size_t under_way = 0, shards = 0;
      for (const auto& o : st.operations()) under_way += o.kind() == "split" && o.collection() == name;
      for (const auto& g : st.groups()) shards += g.collection() == name;
      if (under_way == 0) {
        std::printf("done: %s has %zu shards\n", name.c_str(), shards);
        return kOk;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(polls < 20 ? 100 : 500));
    }
  }
  if (sub == "update") {
    v1::UpdateCollectionRequest req;
    req.set_name(name);
    struct Count {
      const char* flag;
      uint64_t max;
      void (v1::UpdateCollectionRequest::*set)(uint32_t);
    };
    for (const Count& f : {Count{"--replication-factor", 7, &v1::UpdateCollectionRequest::set_replication_factor},
                           Count{"--ef-search", 1u << 30, &v1::UpdateCollectionRequest::set_ef_search},
                           Count{"--nprobe", 1u << 30, &v1::UpdateCollectionRequest::set_nprobe},
                           Count{"--rerank", 100, &v1::UpdateCollectionRequest::set_rerank_factor}}) {
      if (!a.flags.count(f.flag)) continue;
      uint64_t n = 0;
      const uint64_t min = std::string(f.flag) == "--rerank" ? 0 : 1;
      if (!ParseCount(a, f.flag, 0, &n) || n < min || n > f.max) {
        return Usage(absl::StrCat(f.flag, " is ", min, "..", f.max, ", got '", a.Get(f.flag), "'"));
      }
      (req.*f.set)(static_cast<uint32_t>(n));
    }
    if (a.flags.count("--seal-threshold")) {
      uint64_t n = 0;
      if (!ParseCount(a, "--seal-threshold", 0, &n) || n == 0) {
        return Usage("--seal-threshold is a positive number of points, got '" + a.Get("--seal-threshold") + "'");
      }
      req.set_seal_threshold(n);
    }
    if (a.flags.count("--compaction-deleted-ratio")) {
      double r = 0;
      if (!absl::SimpleAtod(a.Get("--compaction-deleted-ratio"), &r) || !(r > 0 && r <= 1)) {
        return Usage("--compaction-deleted-ratio is in (0, 1], got '" + a.Get("--compaction-deleted-ratio") + "'");
      }
      req.set_compaction_deleted_ratio(r);
    }
    if (a.flags.count("--split-points")) {
      uint64_t n = 0;
      if (!ParseCount(a, "--split-points", 0, &n) || (n != 0 && n < 1000)) {
        return Usage("--split-points is 0 (never) or at least 1000, got '" + a.Get("--split-points") + "'");
      }
      req.set_split_points(n);
    }
    if (a.flags.empty()) return Usage("collection update: what to change? (see cairn collection --help)");
    v1::CollectionInfo info;
    auto s = stub->Update(&ctx, req, &info);
    if (!s.ok()) return ServerError(s);
    std::printf("updated %s", name.c_str());
    if (req.has_replication_factor()) {
      std::printf(": %u replicas per shard; the cluster adds or removes them in the background "
                  "(cairn cluster status shows the moves)", req.replication_factor());
    }
    std::printf("\n");
    return kOk;
  }
  if (sub != "create") return Usage("collection: unknown subcommand " + sub);
  v1::CreateCollectionRequest req;
  req.set_name(name);
  if (int rc = ConfigFromFlags(a, "collection create", req.mutable_config()); rc != kOk) return rc;
  v1::CollectionInfo info;
  auto s = stub->Create(&ctx, req, &info);
  if (!s.ok()) return ServerError(s);
  std::printf("created %s (dimension %u)\n", name.c_str(), info.config().dimension());
  return kOk;
}

int IngestCmd(const Conn& c, const Args& a) {
  const std::string coll = a.Get("--collection");
  if (coll.empty()) return Usage("ingest: --collection NAME is required");
  if (a.rest.empty()) return Usage("ingest: which files?");
  cairn::cli::SourceOptions src;
  src.files = a.rest;
  if (auto it = a.flags.find("--payloads"); it != a.flags.end()) {
    src.payload_files = it->second;
    if (src.payload_files.size() != src.files.size()) {
      return Usage("ingest: give one --payloads FILE per vector file, in the same order");
    }
  }
  // Every file readable before anything is written (not only the first).
  for (const auto* files : {&src.files, &src.payload_files}) {
    for (const auto& f : *files) {
      if (f != "-" && ::access(f.c_str(), R_OK) != 0) {
        std::fprintf(stderr, "cairn: %s: cannot open: %s\ncairn: nothing was written.\n", f.c_str(),
                     std::strerror(errno));
        return kInput;
      }
    }
  }
  src.reader.format = a.Get("--format", "auto");
  src.reader.hdf5_dataset = a.Get("--dataset", "train");
  src.skip_bad = a.Has("--skip-bad");
  uint64_t n = 0;
  if (!ParseCount(a, "--start-id", 0, &n)) return Usage("ingest: --start-id is a number");
  src.start_id = n;
  const bool offline = a.Has("--data-dir");
  const bool json = a.Has("--json");
  // Each mode's own flags are refused in the other, not ignored.
  for (const auto& f : IngestOnlineOnly()) {
    if (offline && a.Has(f)) return Usage("ingest: " + f + " is for an online ingest (without --data-dir)");
  }
  for (const auto& f : IngestOfflineOnly()) {
    if (!offline && a.Has(f)) {
      return Usage("ingest: " + f + " is for an offline ingest (--data-dir) that creates its collection; online, "
                   "create the collection first (cairn collection create)");
    }
  }
  absl::StatusOr<cairn::cli::IngestStats> st;
  if (offline) {
    cairn::cli::OfflineOptions o;
    o.data_dir = a.Get("--data-dir");
    o.collection = coll;
    o.json = json;
    if (a.Has("--resume")) {
      return Usage("ingest: --resume is for online ingest; an offline ingest is all or nothing (run it again)");
    }
    if (!ParseCount(a, "--segment-size", 0, &n)) return Usage("ingest: --segment-size is a number");
    o.segment_size = n;
    if (a.Has("--dim")) {
      v1::CollectionConfig cfg;
      if (int rc = ConfigFromFlags(a, "ingest", &cfg); rc != kOk) return rc;
      auto config = cairn::api::FromProto(cfg);
      if (!config.ok()) return Usage(absl::StrCat("ingest: ", std::string(config.status().message())));
      o.create = *config;
    }
    InstallInterruptHandlers();
    st = cairn::cli::IngestOffline(src, o);
  } else {
    cairn::cli::OnlineOptions o;
    o.collection = coll;
    o.json = json;
    o.resume = a.Has("--resume");
    o.checkpoint = a.Get("--checkpoint", cairn::cli::DefaultCheckpointPath(c.target, coll, src.files));
    if (!ParseCount(a, "--batch", 1000, &n) || n == 0) return Usage("ingest: --batch is a positive number");
    o.batch = n;
    if (!ParseCount(a, "--inflight", 4, &n) || n == 0 || n > 64) return Usage("ingest: --inflight is 1..64");
    o.inflight = static_cast<int>(n);
    if (!ParseCount(a, "--retries", 10, &n) || n > 1000) return Usage("ingest: --retries is 0..1000");
    o.max_retries = static_cast<int>(n);
    // The collection's dimension, to name the file and record of a bad vector.
    {
      grpc::ClientContext ictx;
      c.Prepare(&ictx);
      v1::GetCollectionRequest req;
      req.set_name(coll);
      v1::CollectionInfo info;
      auto s = v1::Collections::NewStub(c.channel)->Get(&ictx, req, &info);
      if (!s.ok()) return ServerError(s);
      src.dimension = info.config().dimension();
    }
    InstallInterruptHandlers();
    st = cairn::cli::IngestOnline(c.channel, [&c](grpc::ClientContext* ctx) { c.Prepare(ctx); }, src, o);
  }
  if (!st.ok()) {
    std::fprintf(stderr, "cairn: %s\n", std::string(st.status().message()).c_str());
    return absl::IsNotFound(st.status()) || absl::IsFailedPrecondition(st.status()) ||
                   absl::IsInvalidArgument(st.status())
               ? kUsage
               : kInput;
  }
  const uint64_t total = st->resumed_records + st->records;
  if (json) {
    Json out{{"mode", offline ? "offline" : "online"},
             {"records", st->records},
             {"records_total", total},
             {"points_written", st->points_written},
             {"seconds", st->seconds},
             {"finish_seconds", st->finish_seconds},
             {"records_per_second", st->seconds > 0 ? st->records / st->seconds : 0.0},
             {"mb_per_second", st->seconds > 0 ? st->bytes / 1e6 / st->seconds : 0.0},
             {"errors", st->error.empty() ? 0 : 1},
             {"retries", st->retries},
             {"resumed", st->resumed},
             {"interrupted", st->interrupted},
             {"skipped", st->skipped},
             {"skipped_sample", st->skipped_sample}};
    if (!st->error.empty()) out["error"] = st->error;
    std::printf("%s\n", out.dump().c_str());
  }
  if (st->skipped > 0 && !json) {
    std::fprintf(stderr, "ingest: skipped %llu bad records (--skip-bad), for example:\n",
                 static_cast<unsigned long long>(st->skipped));
    for (const auto& w : st->skipped_sample) std::fprintf(stderr, "  %s\n", w.c_str());
  }
  if (!st->error.empty() && offline) {
    std::fprintf(stderr, "cairn: %s\ncairn: stopped; nothing was loaded (an offline ingest is all or nothing).\n",
                 st->error.c_str());
    return st->error_kind == cairn::cli::IngestStats::ErrorKind::kInput ? kInput : kServer;
  }
  if (!st->error.empty() && total == 0 && st->points_written == 0) {
    std::fprintf(stderr,
                 "cairn: %s\ncairn: stopped before any request was acknowledged; once the cause is fixed, run the "
                 "same command again (it rewrites whatever may have been written).\n",
                 st->error.c_str());
    return st->error_kind == cairn::cli::IngestStats::ErrorKind::kInput ? kInput : kServer;
  }
  if (!st->error.empty()) {
    std::fprintf(stderr,
                 "cairn: %s\ncairn: stopped; the %llu records before it are written. Fix the cause and run the same "
                 "command with --resume to continue from there.\n",
                 st->error.c_str(), static_cast<unsigned long long>(total));
    return st->error_kind == cairn::cli::IngestStats::ErrorKind::kInput ? kInput : kServer;
  }
  if (st->interrupted && offline) {
    std::fprintf(stderr, "cairn: interrupted; nothing was loaded (an offline ingest is all or nothing).\n");
    return kInterrupted;
  }
  if (st->interrupted) {
    std::fprintf(stderr, "cairn: interrupted; %llu records are written. Run the same command with --resume to "
                         "continue.\n", static_cast<unsigned long long>(total));
    return kInterrupted;
  }
  if (!json) {
    std::fprintf(stderr, "ingest: wrote %llu points in %.2f s (%.0f records/s)\n",
                 static_cast<unsigned long long>(st->records), st->seconds,
                 st->seconds > 0 ? st->records / st->seconds : 0.0);
  }
  return kOk;
}

void PrintHits(const v1::SearchResponse& resp, bool json, long query) {
  if (json) {
    // Every field, so that an exact match shows "score": 0 rather than no score.
    std::string out = ProtoJson(resp, /*pretty=*/false, /*all_fields=*/true);
    if (query >= 0) out = absl::StrCat("{\"query\":", query, ",", out.substr(1));
    std::printf("%s\n", out.c_str());
    return;
  }
  if (query >= 0) std::printf("%squery %ld\n", query > 0 ? "\n" : "", query);
  std::printf("%-24s %-12s %s\n", "id", "score", "payload");
  for (const auto& h : resp.hits()) {
    std::string id = h.id().has_str() ? h.id().str() : std::to_string(h.id().num());
    // A string id that reads as a number is quoted: "7" and 7 are different points.
    if (uint64_t unused; h.id().has_str() && absl::SimpleAtoi(id, &unused)) id = absl::StrCat("\"", id, "\"");
    std::string payload;
    (void)google::protobuf::util::MessageToJsonString(h.payload(), &payload);
    // Padded to 24 characters, not bytes (UTF-8 ids).
    size_t chars = 0;
    for (unsigned char ch : id) chars += (ch & 0xC0) != 0x80;
    std::printf("%s%s %-12.6g %s\n", id.c_str(), std::string(chars < 24 ? 24 - chars : 0, ' ').c_str(), h.score(),
                payload.c_str());
  }
}

int SearchCmd(const Conn& c, const Args& a) {
  const std::string coll = a.Get("--collection");
  if (coll.empty()) return Usage("search: --collection NAME is required");
  const std::string vec = a.Get("--vector"), queries = a.Get("--queries");
  if (vec.empty() == queries.empty()) return Usage("search: give --vector X1,X2,... or --queries FILE");
  v1::SearchParams params;
  uint64_t n = 0;
  if (!ParseCount(a, "--k", 10, &n) || n == 0 || n > 10000) {
    return Usage("search: --k is 1..10000, got '" + a.Get("--k") + "'");
  }
  params.set_k(static_cast<uint32_t>(n));
  if (!ParseCount(a, "--ef", 0, &n) || n > 1u << 20) {
    return Usage("search: --ef is 0 (the collection's default) to 1048576, got '" + a.Get("--ef") + "'");
  }
  params.set_ef(static_cast<uint32_t>(n));
  if (!ParseCount(a, "--nprobe", 0, &n) || n > 1u << 20) {
    return Usage("search: --nprobe is 0 (the collection's default) to 1048576, got '" + a.Get("--nprobe") + "'");
  }
  params.set_nprobe(static_cast<uint32_t>(n));
  params.set_exact(a.Has("--exact"));
  if (const std::string c = a.Get("--consistency", "linearizable"); c == "local") {
    params.set_consistency(v1::READ_CONSISTENCY_LOCAL);
  } else if (c != "linearizable") {
    return Usage("search: --consistency is linearizable or local, got '" + c + "'");
  }
  if (!ParseCount(a, "--max-staleness-ms", 0, &n) || n > UINT32_MAX) {
    return Usage("search: --max-staleness-ms is a count of milliseconds, got '" + a.Get("--max-staleness-ms") + "'");
  }
  params.set_max_staleness_ms(static_cast<uint32_t>(n));
  params.set_with_payload(true);
  if (std::string f = a.Get("--filter"); !f.empty()) {
    google::protobuf::util::JsonParseOptions o;
    auto st = google::protobuf::util::JsonStringToMessage(f, params.mutable_filter(), o);
    if (!st.ok()) {
      std::fprintf(stderr, "cairn: --filter: %s\n", std::string(st.message()).c_str());
      return kInput;
    }
  }
  const bool json = a.Has("--json");
  auto stub = v1::Search::NewStub(c.channel);
  if (!vec.empty()) {
    v1::SearchRequest req;
    req.set_collection(coll);
    *req.mutable_params() = params;
    for (absl::string_view part : absl::StrSplit(vec, ',')) {
      char* end = nullptr;
      std::string p(part);
      float f = std::strtof(p.c_str(), &end);
      if (p.empty() || *end != '\0') {
        std::fprintf(stderr, "cairn: --vector: \"%s\" is not a number\n", p.c_str());
        return kInput;
      }
      req.add_vector(f);
    }
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::SearchResponse resp;
    auto s = stub->Search(&ctx, req, &resp);
    if (!s.ok()) return ServerError(s);
    PrintHits(resp, json, -1);
    return kOk;
  }
  // Queries from a file (any ingest format; "-" reads JSON Lines from stdin),
  // sent in batches; results in file order, numbered from 0.
  cairn::cli::ReaderOptions ro;
  ro.format = a.Get("--format", queries == "-" ? "jsonl" : "auto");
  ro.hdf5_dataset = a.Get("--dataset", "test");
  ro.vectors_only = true;
  auto reader = cairn::cli::OpenReader(queries, ro);
  if (!reader.ok()) {
    std::fprintf(stderr, "cairn: %s\n", std::string(reader.status().message()).c_str());
    return kInput;
  }
  uint64_t max_queries = 0;
  if (!ParseCount(a, "--max-queries", 0, &max_queries)) return Usage("search: --max-queries is a number");
  long done = 0;
  size_t dim = 0;
  while (true) {
    v1::SearchBatchRequest req;
    req.set_collection(coll);
    *req.mutable_params() = params;
    int in_batch = 0;
    for (; in_batch < 64 && (max_queries == 0 || done + in_batch < static_cast<long>(max_queries)); ++in_batch) {
      auto rec = (*reader)->Next();
      if (!rec.ok()) {
        std::fprintf(stderr, "cairn: %s\n", std::string(rec.status().message()).c_str());
        return kInput;
      }
      if (!rec->has_value()) break;
      const auto& v = (*rec)->vector;
      if (dim == 0) dim = v.size();
      if (v.size() != dim) {
        std::fprintf(stderr, "cairn: %s: record %llu: dimension %zu differs from the first query's %zu\n",
                     queries.c_str(), static_cast<unsigned long long>((*rec)->number), v.size(), dim);
        return kInput;
      }
      req.mutable_vectors()->Add(v.begin(), v.end());
    }
    if (in_batch == 0) break;
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::SearchBatchResponse resp;
    auto s = stub->SearchBatch(&ctx, req, &resp);
    if (!s.ok()) return ServerError(s);
    for (const auto& r : resp.results()) PrintHits(r, json, done++);
  }
  return kOk;
}

int SnapshotCmd(const Conn& c, const Args& a) {
  if (a.rest.empty()) return Usage("snapshot: create, list, download, restore or delete?");
  auto stub = v1::Snapshots::NewStub(c.channel);
  const std::string& sub = a.rest[0];
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  const bool json = a.Has("--json");
  auto print_info = [&](const v1::SnapshotInfo& i) {
    if (json) {
      std::printf("%s\n", ProtoJson(i, false, /*all_fields=*/true).c_str());
      return;
    }
    char when[32] = "?";
    time_t t = static_cast<time_t>(i.created_unix());
    struct tm tm;
    if (gmtime_r(&t, &tm) != nullptr) std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    const double b = static_cast<double>(i.size_bytes());
    std::string size = b >= 1e9 ? absl::StrFormat("%.1f GB", b / 1e9)
                       : b >= 1e6 ? absl::StrFormat("%.1f MB", b / 1e6)
                                  : absl::StrFormat("%.1f kB", b / 1e3);
    std::printf("%-40s %-20s %-22s %s\n", i.name().c_str(), i.collection().c_str(), when, size.c_str());
  };
  if (sub == "create") {
    if (a.rest.size() < 2) return Usage("snapshot create: which collection?");
    v1::CreateSnapshotRequest req;
    req.set_collection(a.rest[1]);
    v1::SnapshotInfo info;
    auto s = stub->Create(&ctx, req, &info);
    if (!s.ok()) return ServerError(s);
    print_info(info);
    return kOk;
  }
  if (sub == "list") {
    v1::ListSnapshotsRequest req;
    if (a.rest.size() >= 2) req.set_collection(a.rest[1]);
    v1::ListSnapshotsResponse resp;
    auto s = stub->List(&ctx, req, &resp);
    if (!s.ok()) return ServerError(s);
    for (const auto& i : resp.snapshots()) print_info(i);
    return kOk;
  }
  if (sub == "restore") {
    if (a.rest.size() < 3) return Usage("snapshot restore: NAME NEW_COLLECTION");
    v1::RestoreSnapshotRequest req;
    req.set_name(a.rest[1]);
    req.set_collection(a.rest[2]);
    v1::RestoreSnapshotResponse resp;
    auto s = stub->Restore(&ctx, req, &resp);
    if (!s.ok()) return ServerError(s);
    std::printf("restored %s as %s\n", a.rest[1].c_str(), a.rest[2].c_str());
    return kOk;
  }
  if (sub == "delete") {
    if (a.rest.size() < 2) return Usage("snapshot delete: which snapshot (a name from snapshot list)?");
    v1::DeleteSnapshotRequest req;
    req.set_name(a.rest[1]);
    v1::DeleteSnapshotResponse resp;
    auto s = stub->Delete(&ctx, req, &resp);
    if (!s.ok()) return ServerError(s);
    std::printf("deleted %s\n", a.rest[1].c_str());
    return kOk;
  }
  if (sub != "download") return Usage("snapshot: unknown subcommand " + sub);
  if (a.rest.size() < 2) return Usage("snapshot download: which snapshot (a name from snapshot list)?");
  const std::string name = a.rest[1];
  std::string path = a.Get("--output", name + ".tar");
  // Written to a temporary name and renamed when complete: a failed download
  // leaves no file that looks whole.
  const bool to_stdout = path == "-";
  const std::string tmp = path + ".part";
  std::FILE* f = to_stdout ? stdout : std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    std::fprintf(stderr, "cairn: cannot create %s: %s\n", tmp.c_str(), std::strerror(errno));
    return kInput;
  }
  v1::DownloadSnapshotRequest req;
  req.set_name(name);
  auto reader = stub->Download(&ctx, req);
  v1::SnapshotChunk chunk;
  uint64_t bytes = 0;
  bool write_ok = true;
  while (reader->Read(&chunk)) {
    if (chunk.offset() != bytes) {
      ctx.TryCancel();
      write_ok = false;
      std::fprintf(stderr, "cairn: download: chunk at offset %llu, expected %llu\n",
                   static_cast<unsigned long long>(chunk.offset()), static_cast<unsigned long long>(bytes));
      break;
    }
    if (std::fwrite(chunk.data().data(), 1, chunk.data().size(), f) != chunk.data().size()) {
      ctx.TryCancel();
      write_ok = false;
      std::fprintf(stderr, "cairn: cannot write %s: %s\n", tmp.c_str(), std::strerror(errno));
      break;
    }
    bytes += chunk.data().size();
  }
  grpc::Status s = reader->Finish();
  if (to_stdout) {
    std::fflush(stdout);
  } else {
    write_ok = std::fflush(f) == 0 && fsync(fileno(f)) == 0 && write_ok;
    std::fclose(f);
    if (!s.ok() || !write_ok || std::rename(tmp.c_str(), path.c_str()) != 0) std::remove(tmp.c_str());
  }
  if (!write_ok) return kInput;
  if (!s.ok()) return ServerError(s);
  if (!to_stdout) {
    std::fprintf(stderr, "downloaded %s to %s (%.1f MB); it is a data directory as a tar: `tar -xf %s -C DIR` "
                         "then `cairnd --data-dir DIR`\n", name.c_str(), path.c_str(), bytes / 1e6, path.c_str());
  }
  return kOk;
}

// A byte count for people: 1.5 GiB.
std::string HumanBytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(b, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

void PrintNodes(const v1::ClusterStatusResponse& st) {
  std::printf("%-16s %-20s %-28s %-10s %-9s %-9s %-8s %-8s %-10s %s\n", "NODE", "ID", "PEER ADDRESS", "ZONE", "STATE",
              "REACHABLE", "REPLICAS", "LEADERS", "BYTES", "METADATA");
  std::vector<v1::ClusterNode> nodes(st.nodes().begin(), st.nodes().end());
  std::sort(nodes.begin(), nodes.end(), [](const auto& a, const auto& b) {
    return std::make_tuple(a.state() == "removed", a.name()) < std::make_tuple(b.state() == "removed", b.name());
  });
  for (const auto& n : nodes) {
    std::printf("%-16s %-20llu %-28s %-10s %-9s %-9s %-8llu %-8llu %-10s %s\n", n.name().c_str(),
                static_cast<unsigned long long>(n.id()), n.address().c_str(), n.zone().empty() ? "-" : n.zone().c_str(),
                n.state().c_str(), n.state() == "removed" ? "-" : n.reachable() ? "yes" : "NO",
                static_cast<unsigned long long>(n.replicas()), static_cast<unsigned long long>(n.leaders()),
                HumanBytes(n.bytes()).c_str(),
                n.metadata_voter() ? "voter" : n.removable() ? "removable" : n.state() == "removed" ? "-" : "learner");
  }
}

int ClusterCmd(const Conn& c, const Args& a) {
  if (a.rest.empty()) return Usage("cluster: which subcommand? (status, nodes, drain, activate, remove)");
  const std::string& sub = a.rest[0];
  auto stub = v1::Cluster::NewStub(c.channel);
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  if (sub == "drain" || sub == "activate" || sub == "remove") {
    if (a.rest.size() < 2) return Usage("cluster " + sub + ": which node? (a name or an id; cairn cluster nodes)");
    v1::NodeRequest req;
    req.set_node(a.rest[1]);
    v1::ClusterNode n;
    auto s = sub == "drain"      ? stub->DrainNode(&ctx, req, &n)
             : sub == "activate" ? stub->ActivateNode(&ctx, req, &n)
                                 : stub->RemoveNode(&ctx, req, &n);
    if (!s.ok()) return ServerError(s);
    if (sub == "drain") {
      std::printf("node %s is draining: its replicas and leaderships move to other nodes (it holds %llu %s);\n"
                  "`cairn cluster nodes` shows it removable once it holds none\n",
                  n.name().c_str(), static_cast<unsigned long long>(n.replicas()),
                  n.replicas() == 1 ? "replica" : "replicas");
    } else if (sub == "activate") {
      std::printf("node %s is %s\n", n.name().c_str(), n.state().c_str());
    } else {
      std::printf("node %s (id %llu) was removed from the cluster; its id is refused from now on\n", n.name().c_str(),
                  static_cast<unsigned long long>(n.id()));
    }
    return kOk;
  }
  if (sub != "status" && sub != "nodes") return Usage("cluster: unknown subcommand " + sub);
  v1::ClusterStatusResponse st;
  auto s = stub->Status(&ctx, v1::ClusterStatusRequest(), &st);
  if (!s.ok()) return ServerError(s);
  if (sub == "nodes") {
    st.clear_groups();
    st.clear_operations();
  }
  if (a.switches.count("--json")) {
    std::printf("%s", ProtoJson(st, /*pretty=*/true, /*all_fields=*/true).c_str());
    return kOk;
  }
  if (st.mode() != "cluster") {
    std::printf("single-node: %s is not a cluster node (cairnd --cluster)\n", c.target.c_str());
    return kOk;
  }
  std::map<uint64_t, std::string> names;
  for (const auto& n : st.nodes()) names[n.id()] = n.name();
  auto name_of = [&](uint64_t id) { return names.count(id) ? names[id] : absl::StrCat(id); };
  std::printf("cluster %s, answered by %s\n\n", st.cluster_id().c_str(), st.node_name().c_str());
  PrintNodes(st);
  if (sub == "nodes") return kOk;
  if (st.operations_size() > 0) {
    std::printf("\n%-6s %-16s %-6s %-16s %-20s %-12s %s\n", "GROUP", "COLLECTION", "SHARD", "OPERATION", "REASON",
                "STEP", "REPLICAS");
    for (const auto& o : st.operations()) {
      std::string what = o.kind() == "move" ? absl::StrCat(o.from_replica() ? absl::StrCat(o.from_replica()) : "-",
                                                           " -> ", o.to_replica() ? absl::StrCat(o.to_replica()) : "-")
                                            : absl::StrCat("lead -> ", o.to_replica());
      if (o.to_node_id() != 0) absl::StrAppend(&what, " on ", name_of(o.to_node_id()));
      std::printf("%-6llu %-16s %-6u %-16s %-20s %-12s %s\n", static_cast<unsigned long long>(o.group()),
                  o.collection().c_str(), o.shard(), o.kind().c_str(), o.reason().c_str(), o.step().c_str(),
                  what.c_str());
    }
  }
  std::printf("\n%-6s %-16s %-6s %-16s %-6s %-8s %s\n", "GROUP", "COLLECTION", "SHARD", "LEADER", "TERM", "COMMIT",
              "REPLICAS (node applied/lag)");
  for (const auto& g : st.groups()) {
    std::vector<std::string> reps;
    for (const auto& r : g.replicas()) {
      reps.push_back(absl::StrCat(name_of(r.node_id()), r.leader() ? "*" : "", " ",
                                  r.reported() ? absl::StrCat(r.applied()) : "?", "/",
                                  g.leader_node_id() != 0 ? absl::StrCat(r.lag()) : "?"));
    }
    std::printf("%-6llu %-16s %-6s %-16s %-6llu %-8llu %s\n", static_cast<unsigned long long>(g.group()),
                g.collection().empty() ? "(metadata)" : g.collection().c_str(),
                g.collection().empty() ? "-" : absl::StrCat(g.shard()).c_str(),
                g.leader_node_id() == 0 ? "NONE" : name_of(g.leader_node_id()).c_str(),
                static_cast<unsigned long long>(g.term()), static_cast<unsigned long long>(g.commit()),
                absl::StrJoin(reps, ", ").c_str());
  }
  return kOk;
}

int InfoCmd(const Conn& c) {
  auto stub = v1::Server::NewStub(c.channel);
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  v1::ServerInfo info;
  auto s = stub->Info(&ctx, v1::ServerInfoRequest(), &info);
  if (!s.ok()) return ServerError(s);
  std::printf("version %s, format %u, simd %s, up %llu s, collections: %s\ndevice: %s\n", info.version().c_str(),
              info.format_version(), info.simd().c_str(), static_cast<unsigned long long>(info.uptime_seconds()),
              info.collections().empty() ? "(none)" : absl::StrJoin(info.collections(), ", ").c_str(),
              info.device().empty() ? "(not reported)" : info.device().c_str());
  return kOk;
}

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> all(argv + 1, argv + argc);
  for (const auto& a : all) {
    if (a == "--help" || a == "-h") {
      // The command's own help when a command is named, else the overview.
      for (const auto& w : all) {
        if (auto it = kCommandHelp.find(w); it != kCommandHelp.end()) {
          std::printf("%s", it->second.c_str());
          return kOk;
        }
      }
      std::printf("%s", kUsageText);
      return kOk;
    }
  }
  Args args;
  std::string error;
  if (!Parse(all, {"--json", "--skip-bad", "--resume", "--exact", "--wait"}, &args, &error)) return Usage(error);
  if (args.rest.empty()) return Usage("no command");
  std::string target = args.Get("--target", Env("CAIRN_TARGET", "127.0.0.1:7600"));
  Conn conn;
  conn.target = target;
  conn.api_key = args.Get("--api-key", Env("CAIRN_API_KEY", ""));
  std::string ca = args.Get("--tls-ca", Env("CAIRN_TLS_CA", ""));
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!ca.empty()) {
    std::ifstream f(ca);
    if (!f) {
      std::fprintf(stderr, "cairn: cannot read %s\n", ca.c_str());
      return kInput;
    }
    grpc::SslCredentialsOptions o;
    o.pem_root_certs.assign(std::istreambuf_iterator<char>(f), {});
    creds = grpc::SslCredentials(o);
  }
  grpc::ChannelArguments ch_args;
  ch_args.SetMaxSendMessageSize(64 << 20);
  ch_args.SetMaxReceiveMessageSize(64 << 20);
  if (std::string name = args.Get("--tls-server-name", Env("CAIRN_TLS_SERVER_NAME", "")); !name.empty() && !ca.empty()) {
    ch_args.SetSslTargetNameOverride(name);
  }
  conn.channel = grpc::CreateCustomChannel(target, creds, ch_args);
  std::string cmd = args.rest[0];
  args.rest.erase(args.rest.begin());
  const bool has_sub = cmd == "collection" || cmd == "snapshot" || cmd == "cluster";
  const std::string shape = has_sub && !args.rest.empty() ? cmd + " " + args.rest[0] : cmd;
  if (std::string bad = CheckShape(shape, args, has_sub ? 2 : 1); !bad.empty()) {
    return Usage(bad + " (see cairn " + cmd + " --help)");
  }
  if (cmd == "collection") return CollectionCmd(conn, args);
  if (cmd == "ingest") return IngestCmd(conn, args);
  if (cmd == "search") return SearchCmd(conn, args);
  if (cmd == "info") return InfoCmd(conn);
  if (cmd == "cluster") return ClusterCmd(conn, args);
  if (cmd == "snapshot") return SnapshotCmd(conn, args);
  return Usage("unknown command " + cmd);
}
