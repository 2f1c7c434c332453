// index/gpu: CUDA acceleration of exact search, IVF-Flat search and k-means
// training, behind absl::Status. Built when the CUDA toolkit is found; in a
// build without it, and on a machine without a usable GPU (no driver, no
// device, no libcublas), every entry point returns Unavailable and callers
// take the CPU path, so one binary serves both kinds of node.
//
// Scores follow the metric as everywhere in Cairn: squared L2 distance (lower
// is better) or the dot product (higher is better; cosine vectors arrive
// normalized). Labels are positions in the base, kNoId (-1) for empty slots.
//
// Thread-safety: the index classes are thread-safe; calls on one index run
// one at a time on its device.
#ifndef CAIRN_INDEX_GPU_GPU_H_
#define CAIRN_INDEX_GPU_GPU_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cairn/options.h"
#include "index/gpu/cuda_backend.h"

namespace cairn::index {
struct PositionSet;
}

namespace cairn::index::gpu {

using VectorStorage = cuda::Storage;
inline constexpr int kMaxK = cuda::kMaxK;

// True when this binary carries the CUDA code.
bool Built();

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  size_t total_bytes = 0;
  size_t free_bytes = 0;  // when probed
};

// The GPU this process uses (device 0, or CAIRN_GPU_DEVICE), probed once.
// Unavailable, with the reason, when there is none that Cairn can use.
const absl::StatusOr<DeviceInfo>& ProcessDevice();
// "NVIDIA H200 (device 0, compute 9.0, 132 SMs, 140 GiB)".
std::string Describe(const DeviceInfo& info);
// One line for logs: the path `want` resolves to here, and why.
std::string PathSummary(Device want);

// Resolves a configured device to a path: kCpu never uses the GPU; kAuto
// uses it when ProcessDevice() is usable; kGpu too, and otherwise returns
// false with the reason in *why (callers decide whether that is an error).
// The first resolution of kAuto or kGpu in a process logs the GPU taken, or
// why a GPU that seems present is not used (machines without an NVIDIA
// driver stay quiet).
bool UseGpu(Device want, std::string* why = nullptr);

// Measured ceilings of ProcessDevice() (takes about a second; for benchmarks).
absl::StatusOr<cuda::Ceilings> MeasureCeilings();

// Caps the device memory that all GPU indexes of this process hold together
// (0: no cap beyond each index's own budget). Indexes made later see what is
// left; an index over the cap is ResourceExhausted (segments then stay on
// the CPU). Default: 0.
void SetProcessMemoryBudget(size_t bytes);
size_t ProcessMemoryInUse();

// Process-wide counts, for metrics.
struct UseCounts {
  uint64_t searches = 0;   // segment searches served by the GPU (calls, not queries)
  uint64_t fallbacks = 0;  // GPU searches that failed and were served by the CPU
};
UseCounts GetUseCounts();
void CountSearch();
void CountFallback();

struct ExactOptions {
  VectorStorage storage = VectorStorage::kFloat32;
  // Device memory this index may hold (base + workspace). 0: 80% of what is
  // free at creation. A base that does not fit stays in pinned host memory
  // and is streamed through the GPU chunk by chunk.
  size_t memory_budget = 0;
  size_t max_batch = 4096;  // queries per device batch
  size_t max_chunk = 0;     // testing: cap on base rows per GEMM
  bool force_streaming = false;  // testing: stream even when the base fits
  size_t merge_every = 0;        // testing: merge partial results every this many chunks
};

// Exact (flat) k-nearest-neighbour search over a fixed base on the GPU.
class ExactIndex {
 public:
  ~ExactIndex();
  // x: n prepared vectors of dim floats (copied). Unavailable without a GPU,
  // ResourceExhausted when even streaming does not fit the budget.
  static absl::StatusOr<std::unique_ptr<ExactIndex>> Create(const float* x, size_t n, uint32_t dim,
                                                            Metric metric, const ExactOptions& options);
  // scores, labels: nq * k. `allowed` (nullable): positions that may be
  // returned. k in 1..kMaxK.
  absl::Status Search(const float* queries, size_t nq, int k, const PositionSet* allowed, float* scores,
                      int64_t* labels) const;
  bool resident() const;
  // Device memory now held; not to be called while searches run (they grow
  // their workspaces).
  size_t device_bytes() const;
  // Device memory counted for this index at creation, against the process
  // budget (its planned peak); safe to read at any time.
  size_t budgeted_bytes() const { return accounted_; }
  size_t size() const { return n_; }

 private:
  ExactIndex(std::unique_ptr<cuda::FlatBackend> b, size_t n, Metric m) : backend_(std::move(b)), n_(n), metric_(m) {}
  std::unique_ptr<cuda::FlatBackend> backend_;
  size_t n_;
  Metric metric_;
  size_t accounted_ = 0;  // bytes counted against the process budget
};

struct KMeansOptions {
  int iterations = 25;
  uint64_t seed = 1234;
  size_t memory_budget = 0;
  // Distances of the training iterations in TF32 on the tensor cores (see
  // cuda::KMeansConfig::tf32). Default: true.
  bool tf32 = true;
};

struct KMeansReport {
  double objective = 0;  // sum of squared distances (L2), or minus the sum of dots
  int empty_splits = 0;
  double seconds = 0;
};

// k-means of n prepared vectors into k centroids (k * dim floats written to
// `centroids`). Inner product and cosine assign by the largest dot product
// and keep centroids normalized, as FAISS's spherical k-means for IVF.
absl::StatusOr<KMeansReport> TrainKMeans(const float* x, size_t n, uint32_t dim, size_t k, Metric metric,
                                         const KMeansOptions& options, float* centroids);
// The nearest of k centroids for each of n vectors.
absl::Status AssignNearest(const float* x, size_t n, uint32_t dim, const float* centroids, size_t k,
                           Metric metric, int64_t* labels);

// Product-quantizer codebooks as FAISS's ProductQuantizer::train makes them:
// dim is cut into m sub-spaces of dim / m consecutive values, and each
// sub-space's parts of the n vectors are clustered (L2 k-means) into ksub
// centroids. `codebooks` gets m * ksub * (dim / m) floats, sub-space after
// sub-space (FAISS's layout). The report sums the sub-spaces' objectives.
absl::StatusOr<KMeansReport> TrainPqCodebooks(const float* x, size_t n, uint32_t dim, size_t m, size_t ksub,
                                              const KMeansOptions& options, float* codebooks);
// Encodes vectors with fixed PQ codebooks (as TrainPqCodebooks writes them)
// on the GPU. The codebooks and the buffers of a pass stay on the device, so
// one encoder serves many calls. Not thread-safe.
class PqEncoder {
 public:
  ~PqEncoder();
  // max_rows: vectors per device pass (0: 65536; tests use fewer).
  static absl::StatusOr<std::unique_ptr<PqEncoder>> Create(uint32_t dim, size_t m, size_t ksub,
                                                           const float* codebooks, size_t max_rows = 0);
  // codes[i * m + j]: the centroid of sub-space j nearest to vector i's part.
  absl::Status Encode(const float* x, size_t n, int32_t* codes) const;

 private:
  explicit PqEncoder(std::unique_ptr<cuda::PqEncoderBackend> b) : backend_(std::move(b)) {}
  std::unique_ptr<cuda::PqEncoderBackend> backend_;
};
// PqEncoder::Create, then one Encode.
absl::Status EncodePq(const float* x, size_t n, uint32_t dim, size_t m, size_t ksub, const float* codebooks,
                      int32_t* codes);

struct IvfOptions {
  size_t memory_budget = 0;
  size_t max_batch = 1024;
};

// IVF-Flat search on the GPU over lists copied from a CPU index.
class IvfFlatIndex {
 public:
  ~IvfFlatIndex();
  // ResourceExhausted when the lists do not fit the budget.
  static absl::StatusOr<std::unique_ptr<IvfFlatIndex>> Create(const float* centroids, size_t nlist,
                                                              uint32_t dim, Metric metric,
                                                              const std::vector<cuda::IvfList>& lists,
                                                              size_t n_positions, const IvfOptions& options);
  absl::Status Search(const float* queries, size_t nq, int k, int nprobe, const PositionSet* allowed,
                      float* scores, int64_t* labels, cuda::IvfScan scan = cuda::IvfScan::kAuto) const;
  // As ExactIndex's.
  size_t device_bytes() const;
  size_t budgeted_bytes() const { return accounted_; }

 private:
  IvfFlatIndex(std::unique_ptr<cuda::IvfFlatBackend> b, size_t n, Metric m)
      : backend_(std::move(b)), n_positions_(n), metric_(m) {}
  std::unique_ptr<cuda::IvfFlatBackend> backend_;
  size_t n_positions_;
  Metric metric_;
  size_t accounted_ = 0;
};

}  // namespace cairn::index::gpu

#endif  // CAIRN_INDEX_GPU_GPU_H_
