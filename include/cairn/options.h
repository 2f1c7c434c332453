// Options and configuration for Cairn databases and collections.
//
// Every option is a plain field with its meaning and `Default:`. Options are
// validated when they are used (Database::Open, CreateCollection, Search); an
// invalid value is an InvalidArgument naming the field.
#ifndef CAIRN_OPTIONS_H_
#define CAIRN_OPTIONS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace cairn {

// How two vectors are compared. Scores in results follow the metric:
//   kL2            squared Euclidean distance; lower is closer.
//   kInnerProduct  dot product; higher is closer.
//   kCosine        cosine similarity in [-1, 1]; higher is closer. Vectors are
//                  normalized for indexing; Get returns them as they were given.
enum class Metric { kL2 = 0, kInnerProduct = 1, kCosine = 2 };

// The index that sealed segments are built with (FAISS underneath).
enum class IndexType {
  kFlat = 0,     // exact search; no training
  kHnsw = 1,     // graph index over full-precision vectors
  kIvfFlat = 2,  // inverted lists of full-precision vectors; trained
  kIvfPq = 3,    // inverted lists of product-quantized codes; trained
  kIvfSq8 = 4,   // inverted lists of 8-bit scalar-quantized vectors; trained
  kHnswSq = 5,   // graph index over 8-bit scalar-quantized vectors; trained
};

// Where index work runs (see index/gpu/). kAuto: on a GPU when the process
// finds a usable one, else on the CPU; kCpu: always the CPU; kGpu: a GPU is
// required (creating a collection fails without one; a collection opened on
// a node without one is served by the CPU, with a warning).
enum class Device { kAuto = 0, kCpu = 1, kGpu = 2 };

// IndexSpec::pq_tables.
enum class PqTables { kAuto = 0, kOn = 1, kOff = 2 };

struct IndexSpec {
  IndexType type = IndexType::kHnsw;
  // HNSW graph degree (links per node on upper layers; twice that on layer 0).
  // Default: 32. Range: 4..128.
  int hnsw_m = 32;
  // HNSW candidate list size while building. Default: 100. Range: 8..4096.
  int ef_construction = 100;
  // HNSW candidate list size while searching, when the request sets none.
  // Raised to k when smaller. Default: 64.
  int ef_search = 64;
  // IVF number of inverted lists. Lowered at seal time to keep at least 39
  // training points per list (FAISS's minimum for stable k-means). Default: 1024.
  int nlist = 1024;
  // IVF lists probed per query, when the request sets none. Default: 16.
  int nprobe = 16;
  // IVF-PQ sub-quantizers; must divide the dimension. 0 picks the largest
  // divisor of the dimension that is <= dimension/4 and <= 64. Default: 0.
  int pq_m = 0;
  // IVF-PQ bits per sub-quantizer code. Default: 8. Range: 4..12.
  int pq_nbits = 8;
  // For lossy indexes (IVF-PQ, IVF-SQ8, HNSW-SQ): fetch k * rerank_factor
  // candidates and re-rank them with exact distances from the raw vectors.
  // 0 or 1 turns re-ranking off. Default: 0.
  int rerank_factor = 0;
  // HNSW: walk sealed segments' graphs on 8-bit codes of the vectors (a
  // quarter of the memory traffic of float32), then re-rank the walk's best
  // candidates (3k of them, at most ef) with the full-precision vectors, so
  // returned scores stay exact. A sealed segment then keeps its float32
  // vectors on disk (its vector file, read through the page cache to
  // re-rank), and memory holds d bytes a point for the codes instead of 4d
  // for the floats; a bulk load links its graph on the codes and never holds
  // the floats. Off: sealed segments keep the floats in memory and walk on
  // them. Dimensions above 4096 always walk on floats. Default: true.
  bool hnsw_int8 = true;
  // IVF-PQ with the L2 metric: FAISS's precomputed distance tables (nlist x
  // pq_m x 2^pq_nbits floats a sealed segment), which spare each probed list
  // the table of its residual (about 14% of a search with lists of ~3,000
  // points; more with shorter lists). kAuto keeps them in a sealed segment
  // where they cost at most an eighth of its codes (10M points at nlist
  // 3,162 and pq_m 32: 10 bytes a point, a third of the codes; in a 500k
  // point segment more than the codes); kOn in every sealed segment, for
  // speed at low nprobe over memory; kOff in none. Default: kAuto.
  PqTables pq_tables = PqTables::kAuto;
  // Where IVF training (k-means; for IVF-PQ also the codebooks and codes) and
  // the searches of sealed Flat and IVF-Flat segments run. kAuto defers to DatabaseOptions::device. HNSW graphs are
  // built and searched on the CPU either way; the index files are the same.
  // Default: kAuto.
  Device device = Device::kAuto;
};

// Type of a declared (indexed) payload field.
enum class PayloadType { kKeyword = 0, kInteger = 1, kFloat = 2, kBool = 3 };

// A payload field to index. `field` is a top-level key or a dotted path
// ("meta.lang"). Values must have the declared type (or be null/absent, or an
// array of that type); an upsert with another type is an InvalidArgument.
struct PayloadIndexSpec {
  std::string field;
  PayloadType type = PayloadType::kKeyword;
};

struct CollectionConfig {
  // Vector dimension. Required: 1..65536.
  uint32_t dimension = 0;
  // Default: kL2.
  Metric metric = Metric::kL2;
  IndexSpec index;
  std::vector<PayloadIndexSpec> payload_indexes;
  // Number of shards; points go to shard hash(id) % num_shards. An upsert
  // batch is atomic within each shard. Default: 1. Range: 1..256.
  uint32_t num_shards = 1;
  // Copies of each shard, each on another node, kept alike by Raft (cairnd
  // --cluster only). 0 means the default: 3, or the number of nodes when
  // fewer. Above the number of nodes it is refused. The embedded library and
  // single-node cairnd keep one copy and refuse more than 1. Default: 0.
  uint32_t replication_factor = 0;
  // Points in a shard's growing segment before it is sealed in the background
  // into a segment of `index.type`. Default: 500000. Minimum: 1000.
  uint64_t seal_threshold = 500000;
  // Sealed segments whose deleted fraction passes this are rewritten by
  // compaction. Default: 0.2.
  double compaction_deleted_ratio = 0.2;
  // A cluster (cairnd --cluster) splits a shard holding more than this many
  // points in two, online (as `cairn collection split` does for every
  // shard). 0: never. The embedded library and single-node cairnd refuse a
  // nonzero value (their shard count is set at creation). Default: 0;
  // otherwise at least 1000.
  uint64_t split_points = 0;
};

// DatabaseOptions::memory_limit_bytes: no limit.
inline constexpr uint64_t kNoMemoryLimit = ~uint64_t{0};

struct DatabaseOptions {
  // Create the data directory when it does not exist. Default: true.
  bool create_if_missing = true;
  // The most memory, in bytes, the collections may hold together (their
  // index and storage memory, as CollectionInfo reports them). An upsert
  // that would pass it fails with ResourceExhausted, saying what holds the
  // memory and what to do, and writes nothing; searches, reads and deletes
  // go on. 0: 85% of the cgroup's memory limit (a container's), else of the
  // machine's memory. kNoMemoryLimit: none. Default: 0.
  uint64_t memory_limit_bytes = 0;
  // Memory for RocksDB's block cache and memtables, shared by every shard
  // of the database: one LRU cache whose capacity bounds cached blocks and
  // memtables together (memtables are flushed once they pass half of it).
  // Part of what memory_limit_bytes counts. 0: an eighth of the memory
  // limit, between 256 MiB and 8 GiB but at most a quarter of the limit
  // (1 GiB without a limit); otherwise at least 8 MiB and below the limit.
  // Default: 0.
  uint64_t storage_cache_bytes = 0;
  // Sealed HNSW segments that walk on int8 codes (IndexSpec::hnsw_int8)
  // keep their float32 vectors in a file beside them and re-rank a search's
  // best candidates with rows read from it. While what the node holds, with
  // a segment's floats, stays within this share of memory_limit_bytes, the
  // segment also keeps them in memory (4 bytes a dimension a point), and
  // its searches read nothing: on Open, after a seal or compaction, and in
  // background maintenance. They are memory the node gives back: before an
  // upsert is refused for memory, every such copy is freed (the files stay)
  // and the upsert is decided again. 0: the floats stay in their files.
  // With no limit (kNoMemoryLimit), every segment keeps them. Default: 0.5.
  double hnsw_vectors_memory_share = 0.5;
  // Sync the write-ahead log before acknowledging a write. Turning this off
  // trades durability of the last writes on power loss for speed; a process
  // crash still loses nothing. Default: true.
  bool sync_writes = true;
  // Seal growing segments and compact in a background thread. When false,
  // only Collection::Seal / Compact do it. Default: true.
  bool background_maintenance = true;
  // When the database is closed, a shard's growing segment of at least this
  // many points is sealed if it already is the collection's index (HNSW), a
  // file write: the next Open loads it instead of rebuilding it from storage
  // (minutes for hundreds of thousands of points). Smaller ones, and those
  // that would need an index build (IVF types), are rebuilt on Open. 0: never.
  // Default: 50000.
  uint64_t seal_on_close_points = 50000;
  // A shard's growing HNSW segment is saved to a file in the background each
  // time it has gained this many points (and half again what its last copy
  // held) since that copy, and at close when it is not sealed then and its
  // copy lacks this many points or 1,000: after a crash, the next Open loads
  // the copy and rebuilds only the points after it (for IVF collections, also
  // after a clean close). Writes to the shard wait while the segment is
  // written to the file (not while it is synced): at 768 dimensions and the
  // defaults, the last copy before a seal is about 1 GB. 0: never; every
  // Open then rebuilds growing segments from storage. Default: 50000.
  uint64_t growing_checkpoint_points = 50000;
  // Threads FAISS may use inside one batch search or index build (OpenMP).
  // Single-query searches always use one. 0 means the number of cores.
  // Default: 0.
  int index_threads = 0;
  // Most points in one upsert or get or delete request. Default: 100000.
  uint64_t max_batch_points = 100000;
  // Most bytes (vectors + payloads + texts) in one upsert. Default: 256 MiB.
  uint64_t max_batch_bytes = 256ull << 20;
  // Most results one search may ask for (k). Default: 10000.
  int max_k = 10000;
  // Most queries in one batch search. Default: 10000.
  int max_queries = 10000;
  // Most bytes of one payload (JSON) or text chunk. Default: 1 MiB.
  uint64_t max_payload_bytes = 1ull << 20;
  // The device of collections whose index spec says kAuto: kAuto uses a GPU
  // when one is usable (logged once), kCpu never does, kGpu requires one
  // (Open fails without it). Default: kAuto.
  Device device = Device::kAuto;
  // Device memory, in bytes, that all GPU index copies of this process may
  // hold together; a segment that does not fit is searched on the CPU. 0: each
  // copy may take up to 80% of the memory free when it is made. Default: 0.
  uint64_t gpu_memory_budget = 0;
};

// Names used in JSON configs, logs and errors ("l2", "hnsw", "keyword", ...).
std::string_view MetricName(Metric m);
std::string_view IndexTypeName(IndexType t);
std::string_view PayloadTypeName(PayloadType t);
std::string_view DeviceName(Device d);
std::string_view PqTablesName(PqTables t);
absl::StatusOr<Metric> ParseMetric(std::string_view name);
absl::StatusOr<IndexType> ParseIndexType(std::string_view name);
absl::StatusOr<PayloadType> ParsePayloadType(std::string_view name);
absl::StatusOr<Device> ParseDevice(std::string_view name);
absl::StatusOr<PqTables> ParsePqTables(std::string_view name);

}  // namespace cairn

#endif  // CAIRN_OPTIONS_H_
