// cairnd: the Cairn server. Serves the cairn.v1 gRPC API over a data
// directory; see `cairnd --help`.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <thread>

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "api/service.h"
#include "cluster/cluster.h"
#include "storage/file_util.h"
#include "cairn/database.h"
#include "db/memory_budget.h"
#include "index/blas_core.h"
#include "index/gpu/gpu.h"

namespace {

void Usage(FILE* out) {
  std::fprintf(out,
      "Usage: cairnd [flags]\n"
      "\n"
      "Serves the Cairn vector database over gRPC (package cairn.v1, with the standard\n"
      "grpc.health.v1 health service and server reflection, so grpcurl works).\n"
      "\n"
      "Flags (each also read from the environment variable shown; flags win):\n"
      "  --listen HOST:PORT      gRPC address (CAIRN_LISTEN; default 127.0.0.1:7600;\n"
      "                          port 0 picks a free port)\n"
      "  --http-listen HOST:PORT HTTP address of /metrics (Prometheus), /healthz and /readyz\n"
      "                          (CAIRN_HTTP_LISTEN; default 127.0.0.1:7601; empty: off)\n"
      "  --data-dir DIR          data directory, created when missing (CAIRN_DATA_DIR;\n"
      "                          default ./data)\n"
      "  --workers N             request threads in each of two lanes, reads and writes\n"
      "                          (admin calls have their own two), so that neither waits\n"
      "                          for the other; 0 = cores (CAIRN_WORKERS; default 0)\n"
      "  --max-request-mb N      largest request message (CAIRN_MAX_REQUEST_MB; default 64)\n"
      "  --grace-seconds N       on SIGTERM/SIGINT, how long calls in flight may take to\n"
      "                          finish before they are cancelled (CAIRN_GRACE_SECONDS;\n"
      "                          default 30)\n"
      "  --log-format FORMAT     json (default) or logfmt: one line per event on stderr\n"
      "  --port-file PATH        write the bound port to PATH once listening\n"
      "  --device DEVICE         auto, cpu or gpu: where IVF training and searches of sealed\n"
      "                          flat and IVF-Flat segments run for collections created with\n"
      "                          device auto (CAIRN_DEVICE; default auto: a GPU when one is\n"
      "                          usable, logged at start; gpu: refuse to start without one)\n"
      "  --gpu-memory-mb N       GPU memory all index copies may hold together; segments past\n"
      "                          it are searched on the CPU (CAIRN_GPU_MEMORY_MB; default 0:\n"
      "                          each copy up to 80%% of the free memory)\n"
      "  --memory-limit-mb N     memory the collections may hold together (index and storage\n"
      "                          memory); an upsert past it is refused with RESOURCE_EXHAUSTED\n"
      "                          and writes nothing (CAIRN_MEMORY_LIMIT_MB; default 0: 85%% of\n"
      "                          the container's memory limit, else of the machine's; -1: none).\n"
      "                          In a cluster, the node that proposes a shard's write checks\n"
      "                          its own replicas' memory\n"
      "  --storage-cache-mb N    RocksDB block cache and memtables of every shard together, one\n"
      "                          cache (CAIRN_STORAGE_CACHE_MB; default 0: an eighth of the\n"
      "                          memory limit, 256 MiB to 8 GiB, at most a quarter of the limit)\n"
      "  --hnsw-vectors-in-memory-percent N\n"
      "                          sealed HNSW segments (int8 walk) keep their floats in a file and\n"
      "                          re-rank from it; while the node holds under N%% of its memory\n"
      "                          limit with them, they keep a copy in memory too (no reads),\n"
      "                          freed before a write would be refused\n"
      "                          (CAIRN_HNSW_VECTORS_IN_MEMORY_PERCENT; default 50; 0: never)\n"
      "\n"
      "Security:\n"
      "  --api-keys-file PATH    API keys with roles, one \"ROLE KEY\" per line; roles are\n"
      "                          read, write, admin (CAIRN_API_KEYS_FILE; or the keys\n"
      "                          themselves in CAIRN_API_KEYS as \"read:KEY,admin:KEY\").\n"
      "                          The file is read again when it changes (within 2 s):\n"
      "                          keys rotate without a restart\n"
      "  --insecure-no-auth      serve without API keys; refused unless listening on a\n"
      "                          loopback address (CAIRN_INSECURE_NO_AUTH=1)\n"
      "  --tls-cert PATH         PEM certificate chain; with --tls-key turns on TLS\n"
      "                          (CAIRN_TLS_CERT)\n"
      "  --tls-key PATH          PEM private key (CAIRN_TLS_KEY)\n"
      "  --tls-client-ca PATH    PEM CA for client certificates: mTLS, every client must\n"
      "                          present a certificate it signed (CAIRN_TLS_CLIENT_CA)\n"
      "  Clients send their key as metadata \"authorization: Bearer KEY\".\n"
      "\n"
      "Cluster (a replicated, sharded cluster of cairnd nodes; see the README's cluster section):\n"
      "  --cluster               run as a node of a cluster (CAIRN_CLUSTER=1). Each collection\n"
      "                          is split into shards, each shard a Raft group of\n"
      "                          replication_factor replicas on distinct nodes; any node\n"
      "                          serves any request\n"
      "  --node-name NAME        this node's name, unique in the cluster (CAIRN_NODE_NAME;\n"
      "                          default the hostname, e.g. cairn-1 in a StatefulSet)\n"
      "  --seeds LIST            peer addresses of the nodes that form the cluster, the same\n"
      "                          comma-separated list on every node (CAIRN_SEEDS), e.g.\n"
      "                          cairn-0.cairn-headless:7602,cairn-1.cairn-headless:7602,...\n"
      "                          The cluster forms only once every seed answers with an empty\n"
      "                          disk; a node that has a cluster ignores it\n"
      "  --peer-listen HOST:PORT where the peer port listens (CAIRN_PEER_LISTEN; default the\n"
      "                          --listen host with port 7602)\n"
      "  --advertise HOST:PORT   this node's peer address as the others reach it (CAIRN_ADVERTISE;\n"
      "                          default the seed whose host is the node name or starts with\n"
      "                          \"NAME.\", else --peer-listen)\n"
      "  --cluster-secret-file PATH  a secret every node of the cluster shares; peer calls\n"
      "                          without it are refused (CAIRN_CLUSTER_SECRET_FILE, or the\n"
      "                          secret itself in CAIRN_CLUSTER_SECRET). Required when the peer\n"
      "                          port is not on loopback, unless mTLS is on\n"
      "  --peer-tls-cert PATH, --peer-tls-key PATH, --peer-tls-ca PATH\n"
      "                          mTLS between nodes: this node's certificate and key, and the\n"
      "                          CA every peer's certificate must chain to\n"
      "  --peer-tls-server-name NAME  the name every peer's certificate is checked\n"
      "                          against (CAIRN_PEER_TLS_SERVER_NAME; default the host of\n"
      "                          the peer's address). A name all nodes' certificates carry\n"
      "                          serves pods that come and go; gRPC does not match a\n"
      "                          wildcard such as *.cairn-headless\n"
      "  --zone ZONE             this node's failure domain, shown in the status (CAIRN_ZONE)\n"
      "  --raft-tick-ms N        the Raft clock; elections time out after 10 to 20 ticks\n"
      "                          (CAIRN_RAFT_TICK_MS; default 100)\n"
      "  --raft-log-compact-entries N  a group's Raft log is cut behind a snapshot after\n"
      "                          N applied entries (CAIRN_RAFT_LOG_COMPACT_ENTRIES; default\n"
      "                          20000), keeping N/4 (at most 5000) and up to 10 N for a\n"
      "                          follower behind; one further behind catches up from files\n"
      "  --snapshot-max-mbps N   MiB per second a replica fetches a snapshot's files at, at most\n"
      "                          (CAIRN_SNAPSHOT_MAX_MBPS; default 128; 0: no bound)\n"
      "  --raft-quiesce on|off   idle groups go quiet: no heartbeats, one keepalive per node\n"
      "                          pair per tick; a write, a read or a silent leader wakes them\n"
      "                          (CAIRN_RAFT_QUIESCE; default on)\n"
      "  --dead-node-timeout D   a node silent this long is dead: its replicas are re-created\n"
      "                          on other nodes (it is used again if it comes back), e.g. 30m,\n"
      "                          90s, 2h (CAIRN_DEAD_NODE_TIMEOUT; default 30m). Nodes are\n"
      "                          never removed by silence: see cairn cluster drain/remove\n"
      "  On SIGTERM a cluster node answers /readyz with 503 at once, then hands the\n"
      "  leaderships it holds to caught-up replicas (at most 10 s), so that a rolling\n"
      "  restart costs clients no election timeout, then drains (--grace-seconds).\n"
      "\n"
      "  --config PATH           JSON settings, keys named like the flags with underscores,\n"
      "                          e.g. {\"listen\": \"0.0.0.0:7600\", \"data_dir\": \"/data\"}\n"
      "                          (CAIRN_CONFIG); flags and CAIRN_* variables override it\n"
      "  --help                  this text\n"
      "\n"
      "Example:\n"
      "  cairnd --data-dir /var/lib/cairn --listen 0.0.0.0:7600 --api-keys-file /etc/cairn/keys \\\n"
      "         --tls-cert /etc/cairn/tls.crt --tls-key /etc/cairn/tls.key\n"
      "  cairnd --insecure-no-auth      # development, on 127.0.0.1:7600\n"
      "  cairnd --cluster --node-name cairn-1 --data-dir /data --listen 0.0.0.0:7600 \\\n"
      "         --seeds cairn-0.cairn-headless:7602,cairn-1.cairn-headless:7602,cairn-2.cairn-headless:7602 \\\n"
      "         --cluster-secret-file /etc/cairn/cluster-secret --api-keys-file /etc/cairn/keys\n"
      "  grpcurl -plaintext -H 'authorization: Bearer KEY' 127.0.0.1:7600 cairn.v1.Server/Info\n"
      "\n"
      "Exit status: 0 after a clean shutdown, 1 when it cannot start (address in use,\n"
      "data directory locked by another process or of another format), 2 for bad flags.\n");
}

// HOST:PORT with a port of 0..65535 (1..65535 when `zero_ok` is false).
bool ValidAddress(const std::string& a, bool zero_ok) {
  const size_t colon = a.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= a.size() || colon + 6 < a.size()) return false;
  long port = 0;
  for (size_t i = colon + 1; i < a.size(); ++i) {
    if (a[i] < '0' || a[i] > '9') return false;
    port = port * 10 + (a[i] - '0');
  }
  return port <= 65535 && (zero_ok || port > 0);
}

// The keys a keys file holds; InvalidArgument for a file that does not
// parse or lists none.
absl::StatusOr<cairn::api::ApiKeys> KeysOfFile(const std::string& text) {
  auto keys = cairn::api::ApiKeys::ParseFile(text);
  if (keys.ok() && keys->size() == 0) return absl::InvalidArgumentError("the API keys list is empty");
  return keys;
}

bool ParseInt(const std::string& s, long lo, long hi, long* out) {
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < lo || v > hi) return false;
  *out = v;
  return true;
}

// One line per event on stderr: JSON (default) or logfmt (--log-format).
bool g_logfmt = false;

void LogEvent(const char* event, const nlohmann::ordered_json& fields = nlohmann::ordered_json::object()) {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char ts[32];
  std::strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
  nlohmann::ordered_json line;
  line["time"] = ts;
  line["event"] = event;
  for (const auto& [k, v] : fields.items()) line[k] = v;
  std::string out;
  if (!g_logfmt) {
    out = line.dump();
  } else {
    for (const auto& [k, v] : line.items()) {
      if (!out.empty()) out += ' ';
      out += k + "=" + (v.is_string() ? nlohmann::json(v.get<std::string>()).dump() : v.dump());
    }
  }
  std::fprintf(stderr, "%s\n", out.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  // Precedence: flags, then CAIRN_* variables, then the config file, then
  // defaults. The config file is JSON whose keys are the flag names with
  // underscores: {"listen": "0.0.0.0:7600", "data_dir": "/var/lib/cairn"}.
  std::string config_path = std::getenv("CAIRN_CONFIG") ? std::getenv("CAIRN_CONFIG") : "";
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--config") config_path = argv[i + 1];
  }
  std::map<std::string, std::string> config;
  if (!config_path.empty()) {
    auto text = cairn::storage::ReadFile(config_path);
    auto j = text.ok() ? nlohmann::json::parse(*text, nullptr, false) : nlohmann::json();
    if (!text.ok() || j.is_discarded() || !j.is_object()) {
      std::fprintf(stderr, "cairnd: config file %s: %s\n", config_path.c_str(),
                   text.ok() ? "not a JSON object" : std::string(text.status().message()).c_str());
      return 2;
    }
    static const std::set<std::string> kKeys = {
        "listen", "http_listen", "data_dir", "workers", "max_request_mb", "grace_seconds", "api_keys_file",
        "insecure_no_auth", "tls_cert", "tls_key", "tls_client_ca", "device", "gpu_memory_mb", "memory_limit_mb", "storage_cache_mb",
        "hnsw_vectors_in_memory_percent",
        "cluster", "node_name", "seeds", "peer_listen", "advertise", "cluster_secret_file", "peer_tls_cert",
        "peer_tls_key", "peer_tls_ca", "peer_tls_server_name", "zone", "raft_tick_ms", "raft_log_compact_entries", "snapshot_max_mbps",
        "raft_quiesce", "dead_node_timeout"};
    for (const auto& [k, v] : j.items()) {
      if (!kKeys.contains(k)) {
        std::fprintf(stderr, "cairnd: config file %s: unknown key \"%s\"\n", config_path.c_str(), k.c_str());
        return 2;
      }
      config[k] = v.is_string() ? v.get<std::string>() : v.is_boolean() ? (v.get<bool>() ? "1" : "0") : v.dump();
    }
  }
  auto Env = [&config](const char* name, const std::string& fallback) {
    const char* v = std::getenv(name);
    if (v && *v) return std::string(v);
    std::string key = name + 6;  // CAIRN_LISTEN -> listen
    for (char& c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (auto it = config.find(key); it != config.end()) return it->second;
    return fallback;
  };
  std::string listen = Env("CAIRN_LISTEN", "127.0.0.1:7600");
  std::string http_listen = Env("CAIRN_HTTP_LISTEN", "127.0.0.1:7601");
  std::string data_dir = Env("CAIRN_DATA_DIR", "./data");
  std::string workers = Env("CAIRN_WORKERS", "0");
  std::string max_mb = Env("CAIRN_MAX_REQUEST_MB", "64");
  std::string grace = Env("CAIRN_GRACE_SECONDS", "30");
  std::string port_file;
  std::string device = Env("CAIRN_DEVICE", "auto");
  std::string gpu_mb = Env("CAIRN_GPU_MEMORY_MB", "0");
  std::string memory_mb = Env("CAIRN_MEMORY_LIMIT_MB", "0");
  std::string storage_cache_mb = Env("CAIRN_STORAGE_CACHE_MB", "0");
  std::string vectors_percent = Env("CAIRN_HNSW_VECTORS_IN_MEMORY_PERCENT", "50");
  std::string keys_file = Env("CAIRN_API_KEYS_FILE", "");
  std::string keys_inline = Env("CAIRN_API_KEYS", "");
  std::string keys_text;  // the keys file as read at start
  bool no_auth = Env("CAIRN_INSECURE_NO_AUTH", "") == "1";
  std::string tls_cert = Env("CAIRN_TLS_CERT", ""), tls_key = Env("CAIRN_TLS_KEY", ""),
              tls_client_ca = Env("CAIRN_TLS_CLIENT_CA", "");
  bool cluster_mode = Env("CAIRN_CLUSTER", "") == "1";
  char host_name[256] = {0};
  gethostname(host_name, sizeof(host_name) - 1);
  std::string node_name = Env("CAIRN_NODE_NAME", host_name);
  std::string seeds = Env("CAIRN_SEEDS", "");
  std::string peer_listen = Env("CAIRN_PEER_LISTEN", "");
  std::string advertise = Env("CAIRN_ADVERTISE", "");
  std::string cluster_secret_file = Env("CAIRN_CLUSTER_SECRET_FILE", "");
  std::string cluster_secret = Env("CAIRN_CLUSTER_SECRET", "");
  std::string peer_tls_cert = Env("CAIRN_PEER_TLS_CERT", ""), peer_tls_key = Env("CAIRN_PEER_TLS_KEY", ""),
              peer_tls_ca = Env("CAIRN_PEER_TLS_CA", "");
  std::string peer_tls_server_name = Env("CAIRN_PEER_TLS_SERVER_NAME", "");
  std::string zone = Env("CAIRN_ZONE", "");
  std::string raft_tick = Env("CAIRN_RAFT_TICK_MS", "100");
  std::string compact_entries = Env("CAIRN_RAFT_LOG_COMPACT_ENTRIES", "20000");
  std::string raft_quiesce = Env("CAIRN_RAFT_QUIESCE", "on");
  std::string dead_node_timeout = Env("CAIRN_DEAD_NODE_TIMEOUT", "30m");
  std::string snapshot_mbps = Env("CAIRN_SNAPSHOT_MAX_MBPS", "128");
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* dst) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "cairnd: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      *dst = argv[++i];
    };
    if (a == "--help" || a == "-h") {
      Usage(stdout);
      return 0;
    } else if (a == "--config") {
      std::string ignored;
      value(&ignored);  // read above
    } else if (a == "--log-format") {
      std::string f;
      value(&f);
      if (f != "json" && f != "logfmt") {
        std::fprintf(stderr, "cairnd: --log-format is json or logfmt\n");
        return 2;
      }
      g_logfmt = f == "logfmt";
    } else if (a == "--listen") {
      value(&listen);
    } else if (a == "--http-listen") {
      value(&http_listen);
    } else if (a == "--data-dir") {
      value(&data_dir);
    } else if (a == "--workers") {
      value(&workers);
    } else if (a == "--max-request-mb") {
      value(&max_mb);
    } else if (a == "--grace-seconds") {
      value(&grace);
    } else if (a == "--port-file") {
      value(&port_file);
    } else if (a == "--device") {
      value(&device);
    } else if (a == "--gpu-memory-mb") {
      value(&gpu_mb);
    } else if (a == "--memory-limit-mb") {
      value(&memory_mb);
    } else if (a == "--storage-cache-mb") {
      value(&storage_cache_mb);
    } else if (a == "--hnsw-vectors-in-memory-percent") {
      value(&vectors_percent);
    } else if (a == "--api-keys-file") {
      value(&keys_file);
    } else if (a == "--insecure-no-auth") {
      no_auth = true;
    } else if (a == "--tls-cert") {
      value(&tls_cert);
    } else if (a == "--tls-key") {
      value(&tls_key);
    } else if (a == "--tls-client-ca") {
      value(&tls_client_ca);
    } else if (a == "--cluster") {
      cluster_mode = true;
    } else if (a == "--node-name") {
      value(&node_name);
    } else if (a == "--seeds") {
      value(&seeds);
    } else if (a == "--peer-listen") {
      value(&peer_listen);
    } else if (a == "--advertise") {
      value(&advertise);
    } else if (a == "--cluster-secret-file") {
      value(&cluster_secret_file);
    } else if (a == "--peer-tls-cert") {
      value(&peer_tls_cert);
    } else if (a == "--peer-tls-key") {
      value(&peer_tls_key);
    } else if (a == "--peer-tls-ca") {
      value(&peer_tls_ca);
    } else if (a == "--peer-tls-server-name") {
      value(&peer_tls_server_name);
    } else if (a == "--zone") {
      value(&zone);
    } else if (a == "--raft-tick-ms") {
      value(&raft_tick);
    } else if (a == "--raft-log-compact-entries") {
      value(&compact_entries);
    } else if (a == "--snapshot-max-mbps") {
      value(&snapshot_mbps);
    } else if (a == "--raft-quiesce") {
      value(&raft_quiesce);
    } else if (a == "--dead-node-timeout") {
      value(&dead_node_timeout);
    } else {
      std::fprintf(stderr, "cairnd: unknown flag %s (see cairnd --help)\n", a.c_str());
      return 2;
    }
  }
  long n_workers, n_max_mb, n_grace, n_gpu_mb, n_tick, n_compact, n_snap_mbps, n_memory_mb, n_storage_cache_mb;
  if (!ParseInt(storage_cache_mb, 0, 1L << 30, &n_storage_cache_mb) || (n_storage_cache_mb > 0 && n_storage_cache_mb < 8)) {
    std::fprintf(stderr, "cairnd: --storage-cache-mb is a number of MiB, 0 (the default: sized from the memory limit) "
                         "or at least 8\n");
    return 2;
  }
  long n_vectors_percent;
  if (!ParseInt(vectors_percent, 0, 100, &n_vectors_percent)) {
    std::fprintf(stderr, "cairnd: --hnsw-vectors-in-memory-percent is a percentage of the memory limit, 0 to 100 "
                         "(default 50; 0: HNSW floats are read from their files only)\n");
    return 2;
  }
  if (!ParseInt(memory_mb, -1, 1L << 40, &n_memory_mb)) {
    std::fprintf(stderr, "cairnd: --memory-limit-mb is a number of MiB, 0 (the default: 85%% of the container's or "
                         "machine's memory) or -1 (no limit)\n");
    return 2;
  }
  if (!ParseInt(workers, 0, 1024, &n_workers) || !ParseInt(max_mb, 1, 2047, &n_max_mb) ||
      !ParseInt(grace, 0, 3600, &n_grace) || !ParseInt(gpu_mb, 0, 1L << 30, &n_gpu_mb) ||
      !ParseInt(raft_tick, 1, 10000, &n_tick) || !ParseInt(compact_entries, 10, 100000000, &n_compact) ||
      !ParseInt(snapshot_mbps, 0, 1L << 20, &n_snap_mbps)) {
    std::fprintf(stderr,
                 "cairnd: --workers must be 0..1024, --max-request-mb 1..2047, "
                 "--grace-seconds 0..3600, --gpu-memory-mb 0 or more, --raft-tick-ms 1..10000, "
                 "--raft-log-compact-entries 10..100000000, --snapshot-max-mbps 0 or more\n");
    return 2;
  }
  // A duration: a number of seconds, or with a unit s, m or h (30m).
  long n_dead_seconds = 0;
  {
    std::string v = dead_node_timeout;
    long unit = 1;
    if (!v.empty() && (v.back() == 's' || v.back() == 'm' || v.back() == 'h')) {
      unit = v.back() == 'h' ? 3600 : v.back() == 'm' ? 60 : 1;
      v.pop_back();
    }
    if (!ParseInt(v, 1, 30L * 24 * 3600, &n_dead_seconds) || n_dead_seconds * unit > 30L * 24 * 3600) {
      std::fprintf(stderr, "cairnd: --dead-node-timeout is a duration such as 30m, 90s or 2h (1 s to 30 days), got \"%s\"\n",
                   dead_node_timeout.c_str());
      return 2;
    }
    n_dead_seconds *= unit;
  }
  if (raft_quiesce != "on" && raft_quiesce != "off" && raft_quiesce != "1" && raft_quiesce != "0") {
    std::fprintf(stderr, "cairnd: --raft-quiesce is on or off, got \"%s\"\n", raft_quiesce.c_str());
    return 2;
  }
  for (const auto& [flag, addr] : {std::pair<const char*, std::string>{"--listen", listen},
                                   {"--http-listen", http_listen.empty() ? "x:0" : http_listen},
                                   {"--peer-listen", peer_listen.empty() ? "x:0" : peer_listen}}) {
    if (!ValidAddress(addr, true)) {
      std::fprintf(stderr, "cairnd: %s is HOST:PORT with a port of 0..65535, got \"%s\"\n", flag, addr.c_str());
      return 2;
    }
  }
  cairn::cluster::ClusterOptions cluster_options;
  if (cluster_mode) {
    cluster_options.data_dir = data_dir;
    cluster_options.node_name = node_name;
    if (node_name.empty()) {
      std::fprintf(stderr, "cairnd: --cluster needs a node name: --node-name or a hostname\n");
      return 2;
    }
    for (const auto& s : absl::StrSplit(seeds, ',', absl::SkipWhitespace())) {
      cluster_options.seeds.push_back(std::string(absl::StripAsciiWhitespace(s)));
      if (!ValidAddress(cluster_options.seeds.back(), false)) {
        std::fprintf(stderr, "cairnd: --seeds is a comma-separated list of HOST:PORT, got \"%s\"\n",
                     cluster_options.seeds.back().c_str());
        return 2;
      }
    }
    if (!advertise.empty() && !ValidAddress(advertise, false)) {
      std::fprintf(stderr, "cairnd: --advertise is HOST:PORT, got \"%s\"\n", advertise.c_str());
      return 2;
    }
    cluster_options.peer_listen =
        peer_listen.empty() ? listen.substr(0, listen.rfind(':')) + ":7602" : peer_listen;
    cluster_options.advertise = advertise;
    cluster_options.zone = zone;
    cluster_options.tick = std::chrono::milliseconds(n_tick);
    cluster_options.log_compact_entries = static_cast<uint64_t>(n_compact);
    // Keep a quarter as much behind the snapshot (at most the default), and
    // up to ten times as much for a follower that is behind.
    cluster_options.log_keep_entries = std::min<uint64_t>(cluster_options.log_keep_entries, n_compact / 4);
    cluster_options.log_max_keep_entries = 10 * static_cast<uint64_t>(n_compact);
    cluster_options.snapshot_rate_bytes = static_cast<uint64_t>(n_snap_mbps) << 20;
    cluster_options.quiesce = raft_quiesce == "on" || raft_quiesce == "1";
    cluster_options.dead_node_timeout = std::chrono::seconds(n_dead_seconds);
    if (!cluster_secret_file.empty()) {
      auto secret = cairn::storage::ReadFile(cluster_secret_file);
      if (!secret.ok()) {
        std::fprintf(stderr, "cairnd: --cluster-secret-file: %s\n", std::string(secret.status().message()).c_str());
        return 2;
      }
      cluster_secret = std::string(absl::StripAsciiWhitespace(*secret));
    }
    if (!cluster_secret.empty() && cluster_secret.size() < 16) {
      std::fprintf(stderr, "cairnd: the cluster secret is %zu characters; use at least 16 (e.g. openssl rand -hex 32)\n",
                   cluster_secret.size());
      return 2;
    }
    cluster_options.security.secret = cluster_secret;
    cluster_options.security.tls_server_name = peer_tls_server_name;
    for (auto [path, dst] : {std::pair{&peer_tls_cert, &cluster_options.security.tls_cert_pem},
                             std::pair{&peer_tls_key, &cluster_options.security.tls_key_pem},
                             std::pair{&peer_tls_ca, &cluster_options.security.tls_ca_pem}}) {
      if (path->empty()) continue;
      auto pem = cairn::storage::ReadFile(*path);
      if (!pem.ok()) {
        std::fprintf(stderr, "cairnd: %s\n", std::string(pem.status().message()).c_str());
        return 2;
      }
      *dst = *std::move(pem);
    }
    if (!cairn::cluster::IsLoopbackAddress(cluster_options.peer_listen) && cluster_secret.empty() &&
        peer_tls_cert.empty()) {
      std::fprintf(stderr, "cairnd: the peer port %s is not on loopback: give --cluster-secret-file (or "
                           "CAIRN_CLUSTER_SECRET) or --peer-tls-cert/--peer-tls-key/--peer-tls-ca, so that only "
                           "nodes of this cluster can join\n", cluster_options.peer_listen.c_str());
      return 2;
    }
  } else if (!seeds.empty() || !peer_listen.empty() || !advertise.empty()) {
    std::fprintf(stderr, "cairnd: --seeds, --peer-listen and --advertise need --cluster\n");
    return 2;
  }
  cairn::DatabaseOptions db_options;
  if (auto d = cairn::ParseDevice(device); d.ok()) {
    db_options.device = *d;
  } else {
    std::fprintf(stderr, "cairnd: --device is auto, cpu or gpu\n");
    return 2;
  }
  db_options.gpu_memory_budget = static_cast<uint64_t>(n_gpu_mb) << 20;
  db_options.memory_limit_bytes =
      n_memory_mb < 0 ? cairn::kNoMemoryLimit : static_cast<uint64_t>(n_memory_mb) << 20;
  db_options.storage_cache_bytes = static_cast<uint64_t>(n_storage_cache_mb) << 20;
  db_options.hnsw_vectors_memory_share = static_cast<double>(n_vectors_percent) / 100.0;

  cairn::api::ServerOptions options;
  if (no_auth) {
    std::string host = listen.substr(0, listen.rfind(':'));
    if (host.rfind("127.", 0) != 0 && host != "localhost" && host != "[::1]") {
      std::fprintf(stderr, "cairnd: --insecure-no-auth is only for loopback addresses (127.0.0.1, "
                           "localhost, [::1]); %s is not one. Configure API keys instead.\n",
                   listen.c_str());
      return 2;
    }
    LogEvent("warning", {{"message", "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who can reach " +
                                             listen + " can read, change and delete all data"}});
  } else {
    absl::StatusOr<cairn::api::ApiKeys> keys = absl::InvalidArgumentError(
        "no API keys configured: give --api-keys-file or CAIRN_API_KEYS, or --insecure-no-auth "
        "for development on a loopback address");
    if (!keys_file.empty()) {
      auto text = cairn::storage::ReadFile(keys_file);
      keys = text.ok() ? KeysOfFile(*text) : text.status();
      if (text.ok()) keys_text = *text;
    } else if (!keys_inline.empty()) {
      keys = cairn::api::ApiKeys::ParseList(keys_inline);
    }
    if (keys.ok() && keys->size() == 0) keys = absl::InvalidArgumentError("the API keys list is empty");
    if (!keys.ok()) {
      std::fprintf(stderr, "cairnd: %s\n", std::string(keys.status().message()).c_str());
      return 2;
    }
    LogEvent("auth", {{"api_keys", keys->size()}});
    options.api_keys = *std::move(keys);
  }
  for (auto [path, dst] : {std::pair{&tls_cert, &options.tls_cert_pem},
                           std::pair{&tls_key, &options.tls_key_pem},
                           std::pair{&tls_client_ca, &options.tls_client_ca_pem}}) {
    if (path->empty()) continue;
    auto pem = cairn::storage::ReadFile(*path);
    if (!pem.ok()) {
      std::fprintf(stderr, "cairnd: %s\n", std::string(pem.status().message()).c_str());
      return 2;
    }
    *dst = *std::move(pem);
  }

  // SIGTERM and SIGINT are taken by sigwait below, in this thread alone.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  options.listen = listen;
  options.http_listen = http_listen;
  options.worker_threads = static_cast<int>(n_workers);
  options.max_request_bytes = static_cast<int>(n_max_mb << 20);
  // A data directory another process holds: say so before taking the ports
  // (Database::Open below takes the lock for good).
  if (std::filesystem::exists(std::filesystem::path(data_dir) / "LOCK")) {
    if (auto probe = cairn::storage::FileLock::Acquire((std::filesystem::path(data_dir) / "LOCK").string());
        !probe.ok()) {
      std::fprintf(stderr, "cairnd: cannot open data directory %s: %s\n", data_dir.c_str(),
                   std::string(probe.status().message()).c_str());
      return 1;
    }
  }
  cairn::api::CairnServer server(options);
  auto port = server.Start();
  if (!port.ok()) {
    std::fprintf(stderr, "cairnd: %s\n", std::string(port.status().message()).c_str());
    return absl::IsInvalidArgument(port.status()) ? 2 : 1;
  }
  LogEvent("listening", {{"address", listen}, {"port", *port}, {"http_port", server.http_port()},
                         {"tls", !options.tls_cert_pem.empty()}, {"mtls", !options.tls_client_ca_pem.empty()},
                         {"blas", cairn::index::BlasCore()}});
  if (!port_file.empty()) {
    std::ofstream(port_file + ".tmp") << *port << "\n";
    std::rename((port_file + ".tmp").c_str(), port_file.c_str());
  }

  // The keys file is read again when it changes (a Kubernetes Secret mounted
  // as a directory is updated in place): new keys apply within 2 s; a file
  // that does not parse is logged and the keys in use are kept.
  std::jthread keys_watcher;
  if (!keys_file.empty() && options.api_keys) {
    keys_watcher = std::jthread([&server, keys_file, last = keys_text](std::stop_token stop) mutable {
      std::mutex mu;
      std::condition_variable_any cv;
      while (true) {
        {
          std::unique_lock l(mu);
          cv.wait_for(l, stop, std::chrono::seconds(2), [] { return false; });
        }
        if (stop.stop_requested()) return;
        auto text = cairn::storage::ReadFile(keys_file);
        if (!text.ok() || *text == last) continue;  // a missing file mid-update: keep the keys
        last = *text;
        auto keys = KeysOfFile(*text);
        if (!keys.ok()) {
          LogEvent("api_keys_not_reloaded", {{"file", keys_file},
                                             {"error", std::string(keys.status().message())},
                                             {"kept", "the keys in use"}});
          continue;
        }
        const size_t n = keys->size();
        if (auto s = server.SetApiKeys(*std::move(keys)); s.ok()) {
          LogEvent("api_keys_reloaded", {{"file", keys_file}, {"api_keys", n}});
        }
      }
    });
  }

  auto t0 = std::chrono::steady_clock::now();
  // The data opens on a thread of its own while this one waits for SIGTERM
  // or SIGINT: sigwait must run in the main thread, or the kernel hands the
  // signal to a thread a library started before main (OpenBLAS does) and its
  // default action ends the process. A signal while a cluster forms (which
  // may wait for other nodes) stops the process at once: nothing is
  // half-written in that state.
  std::atomic<bool> serving{false};
  std::atomic<cairn::cluster::Cluster*> cluster_node{nullptr};  // owned by the server once serving
  std::thread opener([&] {
    absl::StatusOr<std::unique_ptr<cairn::Database>> db = absl::UnknownError("not opened");
    if (cluster_mode) {
      cluster_options.db = db_options;
      LogEvent("cluster", {{"node_name", cluster_options.node_name},
                           {"peer_listen", cluster_options.peer_listen},
                           {"seeds", seeds},
                           {"peer_auth", !peer_tls_cert.empty() && !cluster_secret.empty() ? "mtls+secret"
                                         : !peer_tls_cert.empty()                          ? "mtls"
                                         : !cluster_secret.empty()                         ? "secret"
                                                                                           : "none (loopback)"}});
      auto c = cairn::cluster::Cluster::Open(cluster_options);
      if (c.ok()) {
        LogEvent("cluster_member",
                 {{"cluster_id", (*c)->cluster_id()}, {"node_id", std::to_string((*c)->node_id())}});
        cluster_node = c->get();
        db = std::unique_ptr<cairn::Database>(std::move(*c));
      } else {
        db = c.status();
      }
    } else {
      db = cairn::Database::Open(data_dir, db_options);
    }
    if (!db.ok()) {
      std::fprintf(stderr, "cairnd: cannot open data directory %s: %s\n", data_dir.c_str(),
                   std::string(db.status().message()).c_str());
      server.Shutdown(std::chrono::milliseconds(0));
      std::_Exit(1);
    }
    LogEvent("device", {{"setting", std::string(cairn::DeviceName(db_options.device))},
                        {"path", cairn::index::gpu::PathSummary(db_options.device)}});
    {  // a cluster node's limit too: writes proposed on it are admitted under it
      const uint64_t limit = cairn::db::MemoryLimitFor(db_options.memory_limit_bytes);
      LogEvent("memory", {{"limit_mb", limit == 0 ? std::string("none") : std::to_string(limit >> 20)},
                          {"source", n_memory_mb != 0 ? std::string("--memory-limit-mb") : std::string("85% of the cgroup's or machine's memory")},
                          {"storage_cache_mb", std::to_string(cairn::db::StorageMemoryFor(db_options.storage_cache_bytes, limit) >> 20)},
                          {"hnsw_vectors_in_memory_percent", std::to_string(n_vectors_percent)}});
    }
    size_t collections = (*db)->ListCollections().size();
    serving = true;  // from here a signal drains instead of stopping at once
    server.Serve(std::move(*db));
    LogEvent("serving", {{"data_dir", data_dir}, {"collections", collections},
                         {"load_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}});
  });

  int sig = 0;
  sigwait(&signals, &sig);
  if (!serving.load()) {
    LogEvent("stopped", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}, {"before", "serving"}});
    std::_Exit(0);
  }
  opener.join();
  // Not ready from this moment (/readyz 503), so that clients are sent
  // elsewhere while leaderships move and calls drain.
  server.StopReady();
  if (auto* c = cluster_node.load()) {
    // Leaderships go to caught-up replicas before the node stops answering.
    const auto h0 = std::chrono::steady_clock::now();
    const size_t still = c->HandOffLeadership(std::chrono::seconds(10));
    LogEvent("leadership_handed_off",
             {{"still_leading", still},
              {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - h0).count()}});
  }
  LogEvent("draining", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}, {"grace_seconds", n_grace}});
  server.Shutdown(std::chrono::seconds(n_grace));
  LogEvent("stopped");
  return 0;
}
