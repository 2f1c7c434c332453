// The CUDA side of index/gpu: plain C++ types only (no Abseil, no CUDA
// headers), so that nvcc compiles the .cu files that implement it without
// seeing the rest of Cairn. gpu.cc wraps it in absl::Status; nothing outside
// index/gpu includes this header.
//
// Conventions: row-major float32 input; distances are "lower is better"
// (L2 squared, or the negated dot product for inner product); labels are
// positions 0..n-1 in the base, -1 for an empty slot. Bitsets hold bit i of
// position i in words[i / 64].
//
// Thread-safety: backends serialize their own calls (one mutex each).
#ifndef CAIRN_INDEX_GPU_CUDA_BACKEND_H_
#define CAIRN_INDEX_GPU_CUDA_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace cairn::index::gpu::cuda {

// kNoDriver: Unavailable because the machine has no NVIDIA driver at all.
enum class Code { kOk, kUnavailable, kNoDriver, kResourceExhausted, kInvalidArgument, kInternal };

struct Result {
  Code code = Code::kOk;
  std::string message;
  bool ok() const { return code == Code::kOk; }
};

struct DeviceProps {
  std::string name;
  int ordinal = 0;
  int cc_major = 0;
  int cc_minor = 0;
  int sm_count = 0;
  size_t total_bytes = 0;
  size_t free_bytes = 0;
  int driver_version = 0;  // e.g. 13000
};

// Unavailable (with the reason: no driver, no device, no cuBLAS) when the
// device cannot run Cairn's kernels.
Result Probe(int device, DeviceProps* out);

enum class Storage { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// What the device reaches on this machine, measured: device-to-device copy
// (bytes read + written per second) and square GEMMs (float32 SIMT, float16
// and bfloat16 tensor cores with float32 accumulation).
struct Ceilings {
  double copy_bytes_per_s = 0;
  double sgemm_flops = 0;
  double hgemm_flops = 0;
  double bgemm_flops = 0;
};
Result MeasureCeilings(int device, Ceilings* out);

// Largest k the selection kernel takes.
inline constexpr int kMaxK = 1024;

class FlatBackend {
 public:
  virtual ~FlatBackend() = default;
  // k (1..kMaxK) nearest positions per query; `allow` (nullable) limits them.
  virtual Result Search(const float* queries, size_t nq, int k, const uint64_t* allow, float* dist,
                        int64_t* labels) = 0;
  virtual bool resident() const = 0;     // base held on the device (else streamed)
  virtual size_t device_bytes() const = 0;  // device memory held
};

struct FlatConfig {
  int device = 0;
  bool inner_product = false;
  Storage storage = Storage::kFloat32;
  size_t memory_budget = 0;  // 0: 80% of the free device memory
  size_t max_batch = 4096;   // queries per device batch
  // Largest chunk of base rows one GEMM covers (0: by memory). Tests set it
  // small to run the chunked paths on small data.
  size_t max_chunk = 0;
  bool force_streaming = false;  // keep the base in host memory even if it fits
  size_t merge_every = 0;        // chunks between merges of partial results (0: by memory)
};

Result MakeFlat(const float* x, size_t n, uint32_t dim, const FlatConfig& config,
                std::unique_ptr<FlatBackend>* out);

struct KMeansConfig {
  int device = 0;
  bool inner_product = false;  // assign by largest dot product, renormalize centroids
  int iterations = 25;
  uint64_t seed = 1234;
  size_t memory_budget = 0;
  // Training iterations compute distances in TF32 (assignment by Assign()
  // stays float32). Ties between nearly equidistant centroids may go either
  // way; the clustering is as good.
  bool tf32 = true;
};

struct KMeansStats {
  double objective = 0;     // sum of distances to the assigned centroid, last iteration
  int empty_splits = 0;     // empty clusters re-seeded by splitting a large one
  double seconds = 0;
};

// Lloyd's k-means of n points into k centroids (out: k * dim floats).
Result KMeans(const float* x, size_t n, uint32_t dim, size_t k, const KMeansConfig& config,
              float* centroids, KMeansStats* stats);

// The nearest centroid of each of n points (out: n labels), as k-means assigns.
Result Assign(const float* x, size_t n, uint32_t dim, const float* centroids, size_t k,
              const KMeansConfig& config, int64_t* labels);

// Product-quantizer codes: dim is cut into m sub-spaces of dim / m
// consecutive values, each with ksub centroids (codebooks: m * ksub *
// (dim / m) floats, sub-space after sub-space). Encode writes
// codes[i * m + j], the centroid of sub-space j nearest (L2) to that part of
// point i. The codebooks and a pass's buffers stay on the device between
// calls; calls on one encoder must not overlap.
class PqEncoderBackend {
 public:
  virtual ~PqEncoderBackend() = default;
  virtual Result Encode(const float* x, size_t n, int32_t* codes) = 0;
};

// max_rows: points per device pass (0: 65536).
Result MakePqEncoder(uint32_t dim, size_t m, size_t ksub, const float* codebooks, const KMeansConfig& config,
                     size_t max_rows, std::unique_ptr<PqEncoderBackend>* out);

// How the probed lists are scanned. By query: a block per (query, list),
// reading the list once per query that probes it (few queries per list:
// small batches). By list: the batch's (query, list) pairs grouped by list,
// a block per list and up to 32 of its queries, reading the list once for
// them all (many queries per list: large batches). Auto picks by the
// batch's pairs per probed list. The results are the same.
enum class IvfScan { kAuto = 0, kByQuery = 1, kByList = 2 };

class IvfFlatBackend {
 public:
  virtual ~IvfFlatBackend() = default;
  virtual Result Search(const float* queries, size_t nq, int k, int nprobe, const uint64_t* allow,
                        float* dist, int64_t* labels, IvfScan scan) = 0;
  virtual size_t device_bytes() const = 0;
};

// One inverted list: `size` vectors of dim floats and their positions.
struct IvfList {
  const float* vectors = nullptr;
  const int64_t* positions = nullptr;
  size_t size = 0;
};

struct IvfConfig {
  int device = 0;
  bool inner_product = false;
  size_t memory_budget = 0;
  size_t max_batch = 1024;
};

// `n_positions`: one past the largest position (the size of `allow`).
Result MakeIvfFlat(const float* centroids, size_t nlist, uint32_t dim, const IvfList* lists,
                   size_t n_positions, const IvfConfig& config,
                   std::unique_ptr<IvfFlatBackend>* out);

}  // namespace cairn::index::gpu::cuda

#endif  // CAIRN_INDEX_GPU_CUDA_BACKEND_H_
