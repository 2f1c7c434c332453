#include "index/gpu/gpu.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "index/segment.h"

namespace cairn::index::gpu {
namespace {

absl::Status ToStatus(const cuda::Result& r) {
  switch (r.code) {
    case cuda::Code::kOk: return absl::OkStatus();
    case cuda::Code::kUnavailable:
    case cuda::Code::kNoDriver: return absl::UnavailableError(r.message);
    case cuda::Code::kResourceExhausted: return absl::ResourceExhaustedError(r.message);
    case cuda::Code::kInvalidArgument: return absl::InvalidArgumentError(r.message);
    case cuda::Code::kInternal: break;
  }
  return absl::InternalError(r.message);
}

// Set by ProcessDevice(): this machine or build has no GPU support at all
// (as opposed to a GPU that is present but unusable).
bool g_no_gpu_support = false;

[[maybe_unused]] absl::Status NotBuilt() {
  return absl::UnavailableError("this build of Cairn has no CUDA code (built without the CUDA toolkit)");
}

[[maybe_unused]] bool InnerProduct(Metric m) { return m != Metric::kL2; }

std::atomic<size_t> g_budget{0};
std::atomic<size_t> g_in_use{0};

// The budget an index may take: its own, within what the process has left.
// Counts a new index's device memory against the process; returns it.
[[maybe_unused]] size_t Account(size_t bytes) {
  g_in_use += bytes;
  return bytes;
}

[[maybe_unused]] size_t BudgetFor(size_t own) {
  const size_t cap = g_budget.load();
  if (cap == 0) return own;
  const size_t used = g_in_use.load();
  const size_t left = cap > used ? cap - used : 1;  // 1 byte: fails as ResourceExhausted
  return own == 0 ? left : std::min(own, left);
}

// The allowed set as a bitset of exactly `n` positions.
const uint64_t* AllowBits(const PositionSet* allowed, size_t n, std::vector<uint64_t>* scratch) {
  if (allowed == nullptr) return nullptr;
  const size_t words = (n + 63) / 64;
  if (allowed->words.size() >= words) return allowed->words.data();
  scratch->assign(words, 0);
  std::memcpy(scratch->data(), allowed->words.data(), allowed->words.size() * sizeof(uint64_t));
  return scratch->data();
}

// Back to the metric's scores: the backend ranks by lower-is-better.
void ToScores(Metric metric, size_t count, float* scores, const int64_t* labels) {
  for (size_t i = 0; i < count; ++i) {
    if (labels[i] < 0) {
      scores[i] = metric == Metric::kL2 ? INFINITY : -INFINITY;
    } else if (metric != Metric::kL2) {
      scores[i] = -scores[i];
    }
  }
}

absl::Status CheckK(int k) {
  if (k < 1 || k > kMaxK) return absl::InvalidArgumentError(absl::StrCat("k must be in 1..", kMaxK, " on the GPU"));
  return absl::OkStatus();
}

}  // namespace

bool Built() {
#ifdef CAIRN_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

const absl::StatusOr<DeviceInfo>& ProcessDevice() {
  static const absl::StatusOr<DeviceInfo>* device = [] {
#ifdef CAIRN_HAVE_CUDA
    int ordinal = 0;
    if (const char* env = std::getenv("CAIRN_GPU_DEVICE"); env != nullptr && *env != '\0') {
      ordinal = std::atoi(env);
    }
    cuda::DeviceProps p;
    cuda::Result r = cuda::Probe(ordinal, &p);
    g_no_gpu_support = r.code == cuda::Code::kNoDriver;
    if (!r.ok()) return new absl::StatusOr<DeviceInfo>(ToStatus(r));
    DeviceInfo info;
    info.ordinal = p.ordinal;
    info.name = p.name;
    info.cc_major = p.cc_major;
    info.cc_minor = p.cc_minor;
    info.sm_count = p.sm_count;
    info.total_bytes = p.total_bytes;
    info.free_bytes = p.free_bytes;
    return new absl::StatusOr<DeviceInfo>(info);
#else
    g_no_gpu_support = true;
    return new absl::StatusOr<DeviceInfo>(NotBuilt());
#endif
  }();
  return *device;
}

std::string PathSummary(Device want) {
  if (want == Device::kCpu) return "cpu (device cpu)";
  const auto& dev = ProcessDevice();
  if (dev.ok()) return "gpu: " + Describe(*dev);
  return "cpu: no usable GPU (" + std::string(dev.status().message()) + ")";
}

std::string Describe(const DeviceInfo& info) {
  return absl::StrFormat("%s (device %d, compute %d.%d, %d SMs, %d GiB)", info.name, info.ordinal, info.cc_major,
                         info.cc_minor, info.sm_count, static_cast<int>(info.total_bytes >> 30));
}

bool UseGpu(Device want, std::string* why) {
  if (want == Device::kCpu) return false;
  const auto& dev = ProcessDevice();
  // Logged once: the GPU taken, or why a GPU that seems present is not used.
  // A machine with no NVIDIA driver (or a build without CUDA) stays quiet:
  // the CPU is the only path there; cairnd states it at start (PathSummary).
  static std::once_flag logged;
  std::call_once(logged, [&] {
    if (dev.ok()) {
      std::fprintf(stderr, "cairn: GPU path: %s\n", Describe(*dev).c_str());
    } else if (!g_no_gpu_support) {
      std::fprintf(stderr, "cairn: CPU path: no usable GPU (%s)\n", std::string(dev.status().message()).c_str());
    }
  });
  if (!dev.ok() && why != nullptr) *why = std::string(dev.status().message());
  return dev.ok();
}

absl::StatusOr<cuda::Ceilings> MeasureCeilings() {
  if (!ProcessDevice().ok()) return ProcessDevice().status();
#ifdef CAIRN_HAVE_CUDA
  cuda::Ceilings c;
  if (auto r = cuda::MeasureCeilings(ProcessDevice()->ordinal, &c); !r.ok()) return ToStatus(r);
  return c;
#else
  return NotBuilt();
#endif
}

void SetProcessMemoryBudget(size_t bytes) { g_budget.store(bytes); }
size_t ProcessMemoryInUse() { return g_in_use.load(); }

namespace {
std::atomic<uint64_t> g_searches{0}, g_fallbacks{0};
}  // namespace

UseCounts GetUseCounts() {
  return UseCounts{g_searches.load(std::memory_order_relaxed), g_fallbacks.load(std::memory_order_relaxed)};
}
void CountSearch() { g_searches.fetch_add(1, std::memory_order_relaxed); }
void CountFallback() { g_fallbacks.fetch_add(1, std::memory_order_relaxed); }

ExactIndex::~ExactIndex() { g_in_use -= accounted_; }
IvfFlatIndex::~IvfFlatIndex() { g_in_use -= accounted_; }

absl::StatusOr<std::unique_ptr<ExactIndex>> ExactIndex::Create(const float* x, size_t n, uint32_t dim,
                                                               Metric metric, const ExactOptions& options) {
  if (n == 0 || dim == 0) return absl::InvalidArgumentError("exact GPU index over an empty base");
  if (!ProcessDevice().ok()) return ProcessDevice().status();
#ifdef CAIRN_HAVE_CUDA
  cuda::FlatConfig c;
  c.device = ProcessDevice()->ordinal;
  c.inner_product = InnerProduct(metric);
  c.storage = options.storage;
  c.memory_budget = BudgetFor(options.memory_budget);
  c.max_batch = options.max_batch;
  c.max_chunk = options.max_chunk;
  c.force_streaming = options.force_streaming;
  c.merge_every = options.merge_every;
  std::unique_ptr<cuda::FlatBackend> b;
  if (auto r = cuda::MakeFlat(x, n, dim, c, &b); !r.ok()) return ToStatus(r);
  auto idx = std::unique_ptr<ExactIndex>(new ExactIndex(std::move(b), n, metric));
  idx->accounted_ = Account(idx->device_bytes());
  return idx;
#else
  return NotBuilt();
#endif
}

absl::Status ExactIndex::Search(const float* queries, size_t nq, int k, const PositionSet* allowed, float* scores,
                                int64_t* labels) const {
  if (auto s = CheckK(k); !s.ok()) return s;
  if (nq == 0) return absl::OkStatus();
  std::vector<uint64_t> scratch;
  const uint64_t* allow = AllowBits(allowed, n_, &scratch);
  if (auto s = ToStatus(backend_->Search(queries, nq, k, allow, scores, labels)); !s.ok()) return s;
  ToScores(metric_, nq * static_cast<size_t>(k), scores, labels);
  return absl::OkStatus();
}

bool ExactIndex::resident() const { return backend_->resident(); }
size_t ExactIndex::device_bytes() const { return backend_->device_bytes(); }

absl::StatusOr<KMeansReport> TrainKMeans(const float* x, size_t n, uint32_t dim, size_t k, Metric metric,
                                         const KMeansOptions& options, float* centroids) {
  if (!ProcessDevice().ok()) return ProcessDevice().status();
#ifdef CAIRN_HAVE_CUDA
  cuda::KMeansConfig c;
  c.device = ProcessDevice()->ordinal;
  c.inner_product = InnerProduct(metric);
  c.iterations = options.iterations;
  c.seed = options.seed;
  c.tf32 = options.tf32;
  c.memory_budget = BudgetFor(options.memory_budget);
  cuda::KMeansStats st;
  if (auto r = cuda::KMeans(x, n, dim, k, c, centroids, &st); !r.ok()) return ToStatus(r);
  KMeansReport rep;
  rep.objective = st.objective;
  rep.empty_splits = st.empty_splits;
  rep.seconds = st.seconds;
  return rep;
#else
  return NotBuilt();
#endif
}

absl::Status AssignNearest(const float* x, size_t n, uint32_t dim, const float* centroids, size_t k,
                           Metric metric, int64_t* labels) {
  if (!ProcessDevice().ok()) return ProcessDevice().status();
#ifdef CAIRN_HAVE_CUDA
  cuda::KMeansConfig c;
  c.device = ProcessDevice()->ordinal;
  c.inner_product = InnerProduct(metric);
  c.memory_budget = BudgetFor(0);
  return ToStatus(cuda::Assign(x, n, dim, centroids, k, c, labels));
#else
  return NotBuilt();
#endif
}

absl::StatusOr<KMeansReport> TrainPqCodebooks(const float* x, size_t n, uint32_t dim, size_t m, size_t ksub,
                                              const KMeansOptions& options, float* codebooks) {
  if (m == 0 || dim % m != 0) return absl::InvalidArgumentError("the dimension must be a multiple of m");
  if (!ProcessDevice().ok()) return ProcessDevice().status();
  const uint32_t dsub = dim / static_cast<uint32_t>(m);
  std::vector<float> part(n * dsub);
  KMeansReport total;
  for (size_t j = 0; j < m; ++j) {
    for (size_t i = 0; i < n; ++i) std::memcpy(&part[i * dsub], x + i * dim + j * dsub, dsub * sizeof(float));
    auto r = TrainKMeans(part.data(), n, dsub, ksub, Metric::kL2, options, codebooks + j * ksub * dsub);
    if (!r.ok()) return r.status();
    total.objective += r->objective;
    total.empty_splits += r->empty_splits;
    total.seconds += r->seconds;
  }
  return total;
}

PqEncoder::~PqEncoder() = default;

absl::StatusOr<std::unique_ptr<PqEncoder>> PqEncoder::Create(uint32_t dim, size_t m, size_t ksub,
                                                             const float* codebooks, size_t max_rows) {
  if (!ProcessDevice().ok()) return ProcessDevice().status();
#ifdef CAIRN_HAVE_CUDA
  cuda::KMeansConfig c;
  c.device = ProcessDevice()->ordinal;
  c.memory_budget = BudgetFor(0);
  std::unique_ptr<cuda::PqEncoderBackend> b;
  if (auto r = cuda::MakePqEncoder(dim, m, ksub, codebooks, c, max_rows, &b); !r.ok()) return ToStatus(r);
  return std::unique_ptr<PqEncoder>(new PqEncoder(std::move(b)));
#else
  return NotBuilt();
#endif
}

absl::Status PqEncoder::Encode(const float* x, size_t n, int32_t* codes) const {
#ifdef CAIRN_HAVE_CUDA
  return ToStatus(backend_->Encode(x, n, codes));
#else
  return NotBuilt();
#endif
}

absl::Status EncodePq(const float* x, size_t n, uint32_t dim, size_t m, size_t ksub, const float* codebooks,
                      int32_t* codes) {
  if (n == 0) return absl::OkStatus();
  auto enc = PqEncoder::Create(dim, m, ksub, codebooks, std::min<size_t>(n, 65536));
  if (!enc.ok()) return enc.status();
  return (*enc)->Encode(x, n, codes);
}

absl::StatusOr<std::unique_ptr<IvfFlatIndex>> IvfFlatIndex::Create(const float* centroids, size_t nlist,
                                                                   uint32_t dim, Metric metric,
                                                                   const std::vector<cuda::IvfList>& lists,
                                                                   size_t n_positions, const IvfOptions& options) {
  if (lists.size() != nlist) return absl::InvalidArgumentError("one list per centroid");
  if (!ProcessDevice().ok()) return ProcessDevice().status();
#ifdef CAIRN_HAVE_CUDA
  cuda::IvfConfig c;
  c.device = ProcessDevice()->ordinal;
  c.inner_product = InnerProduct(metric);
  c.memory_budget = BudgetFor(options.memory_budget);
  c.max_batch = options.max_batch;
  std::unique_ptr<cuda::IvfFlatBackend> b;
  if (auto r = cuda::MakeIvfFlat(centroids, nlist, dim, lists.data(), n_positions, c, &b); !r.ok()) {
    return ToStatus(r);
  }
  auto idx = std::unique_ptr<IvfFlatIndex>(new IvfFlatIndex(std::move(b), n_positions, metric));
  idx->accounted_ = Account(idx->device_bytes());
  return idx;
#else
  return NotBuilt();
#endif
}

absl::Status IvfFlatIndex::Search(const float* queries, size_t nq, int k, int nprobe, const PositionSet* allowed,
                                  float* scores, int64_t* labels, cuda::IvfScan scan) const {
  if (auto s = CheckK(k); !s.ok()) return s;
  if (nq == 0) return absl::OkStatus();
  std::vector<uint64_t> scratch;
  const uint64_t* allow = AllowBits(allowed, n_positions_, &scratch);
  if (auto s = ToStatus(backend_->Search(queries, nq, k, nprobe, allow, scores, labels, scan)); !s.ok()) return s;
  ToScores(metric_, nq * static_cast<size_t>(k), scores, labels);
  return absl::OkStatus();
}

size_t IvfFlatIndex::device_bytes() const { return backend_->device_bytes(); }

}  // namespace cairn::index::gpu
