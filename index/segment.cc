#include "index/segment.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/DistanceComputer.h>
#include <faiss/impl/FaissAssert.h>
#include <faiss/impl/HNSW.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <omp.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <numeric>
#include <random>
#include <stdexcept>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "cairn/status.h"
#include "index/blas_core.h"
#include "index/catch_faiss.h"
#include "index/compact_lists.h"
#include "index/distance.h"
#include "index/gpu/gpu.h"
#include "index/hnsw_search.h"
#include "index/ivf_parts.h"
#include "index/nearest.h"
#include "storage/file_util.h"

namespace cairn::index {
namespace {

// Links in the check of FAISS's BLAS kernels (index/blas_core.h), which
// runs before main.
[[maybe_unused]] const bool kBlasCoreLinked = BlasCoreSwitched();

using idx_t = faiss::Index::idx_t;

constexpr char kMagic[8] = {'C', 'A', 'I', 'R', 'N', 'S', 'E', 'G'};
// 2: after the FAISS index, the int8 codes of an HNSW segment whose vectors
// are in its vector file. Format 1 files (no codes) read as before.
constexpr uint32_t kSegmentFormat = 2;
constexpr uint32_t kSegmentFormatNoCodes = 1;
// Trained index types need enough points for stable k-means; smaller
// segments are stored flat, which is exact and as fast at that size.
constexpr size_t kMinTrainPoints = 4096;
// Smaller segments are searched on the CPU even on a GPU node: a GPU copy's
// workspace would cost more device memory than it saves time.
constexpr size_t kMinGpuPoints = 4096;
// Queries per call from which a segment whose base is streamed from host
// memory (larger than the GPU budget) is searched on the GPU.
constexpr size_t kMinStreamedBatch = 64;
// A GPU copy that did not fit is tried again after this long.
constexpr std::chrono::seconds kGpuRetryAfter(60);

// Sets this thread's OpenMP team size for the scope (FAISS reads it).
class OmpThreads {
 public:
  explicit OmpThreads(int n) : prev_(omp_get_max_threads()) {
    if (n > 0) omp_set_num_threads(n);
  }
  ~OmpThreads() { omp_set_num_threads(prev_); }

 private:
  int prev_;
};

struct PositionSelector final : faiss::IDSelector {
  const std::vector<uint64_t>* deleted = nullptr;
  const PositionSet* allowed = nullptr;
  bool is_member(idx_t i) const override {
    size_t p = static_cast<size_t>(i);
    if (deleted && ((*deleted)[p >> 6] >> (p & 63)) & 1) return false;
    if (allowed && !allowed->Test(p)) return false;
    return true;
  }
};

// Flat storage whose distances use Cairn's SIMD kernels (index/distance.h).
// HNSW graphs built over it use them for construction and search alike. It
// serializes as a plain faiss::IndexFlat, so files stay FAISS-readable.
class FastFlat final : public faiss::IndexFlat {
 public:
  FastFlat(int d, faiss::MetricType metric) : faiss::IndexFlat(d, metric) {}

  // Takes `rows` (whole vectors) as its storage, to be announced by the
  // next add of as many rows at get_xb(): IndexHNSW::add adds to its storage
  // and then links the graph over the same vectors, so they are held once.
  void Adopt(std::vector<uint8_t>&& rows) {
    FAISS_THROW_IF_NOT(ntotal == 0 && rows.size() % code_size == 0);
    codes = std::move(rows);
    adopted_ = static_cast<idx_t>(codes.size() / code_size);
  }
  void add(idx_t n, const float* x) override {
    if (adopted_ > 0) {
      FAISS_THROW_IF_NOT(n == adopted_ && x == get_xb());
      ntotal = n;
      adopted_ = 0;
      return;
    }
    faiss::IndexFlat::add(n, x);
  }

  faiss::FlatCodesDistanceComputer* get_FlatCodesDistanceComputer() const override {
    return new Dis(*this);
  }

  // Few queries: scan with the SIMD kernels. Many: FAISS's BLAS path, or
  // for the nearest one alone (an IVF quantizer assigning points, k-means
  // assigning its training points) sgemm and a SIMD scan (index/nearest.h).
  void search(idx_t n, const float* x, idx_t k, float* distances, idx_t* labels,
              const faiss::SearchParameters* params) const override {
    const faiss::IDSelector* sel = params ? params->sel : nullptr;
    if (n >= 20 && k == 1 && sel == nullptr) {
      NearestCentroids(x, static_cast<size_t>(n), get_xb(), static_cast<size_t>(ntotal), static_cast<size_t>(d),
                       metric_type == faiss::METRIC_L2, labels, distances);
      return;
    }
    if (n >= 20) {
      faiss::IndexFlat::search(n, x, k, distances, labels, params);
      return;
    }
    const bool l2 = metric_type == faiss::METRIC_L2;
    const float* xb = get_xb();
    const size_t dim = static_cast<size_t>(d);
    std::vector<std::pair<float, idx_t>> heap;
    for (idx_t q = 0; q < n; ++q) {
      heap.clear();
      const float* qv = x + q * d;
      // heap.front() is the worst kept result.
      auto worse = [l2](const std::pair<float, idx_t>& a, const std::pair<float, idx_t>& b) {
        return l2 ? a.first < b.first : a.first > b.first;
      };
      for (idx_t i = 0; i < ntotal; ++i) {
        if (sel && !sel->is_member(i)) continue;
        float s = l2 ? L2Sqr(qv, xb + i * dim, dim) : InnerProduct(qv, xb + i * dim, dim);
        if (static_cast<idx_t>(heap.size()) < k) {
          heap.emplace_back(s, i);
          std::push_heap(heap.begin(), heap.end(), worse);
        } else if (l2 ? s < heap.front().first : s > heap.front().first) {
          std::pop_heap(heap.begin(), heap.end(), worse);
          heap.back() = {s, i};
          std::push_heap(heap.begin(), heap.end(), worse);
        }
      }
      std::sort_heap(heap.begin(), heap.end(), worse);
      for (idx_t j = 0; j < k; ++j) {
        if (j < static_cast<idx_t>(heap.size())) {
          distances[q * k + j] = heap[j].first;
          labels[q * k + j] = heap[j].second;
        } else {
          distances[q * k + j] = l2 ? INFINITY : -INFINITY;
          labels[q * k + j] = -1;
        }
      }
    }
  }

 private:
  struct Dis final : faiss::FlatCodesDistanceComputer {
    explicit Dis(const FastFlat& f)
        : faiss::FlatCodesDistanceComputer(f.codes.data(), f.code_size),
          d(static_cast<size_t>(f.d)),
          l2(f.metric_type == faiss::METRIC_L2) {}
    void set_query(const float* x) override { q = x; }
    float distance_to_code(const uint8_t* code) override {
      const float* v = reinterpret_cast<const float*>(code);
      return l2 ? L2Sqr(q, v, d) : InnerProduct(q, v, d);
    }
    float symmetric_dis(idx_t i, idx_t j) override {
      const float* a = reinterpret_cast<const float*>(codes + i * code_size);
      const float* b = reinterpret_cast<const float*>(codes + j * code_size);
      return l2 ? L2Sqr(a, b, d) : InnerProduct(a, b, d);
    }
    const float* q = nullptr;
    size_t d;
    bool l2;
  };
  idx_t adopted_ = 0;  // rows taken by Adopt, not yet added
};

// Moves a plain IndexFlat's vectors into a FastFlat.
std::unique_ptr<FastFlat> ToFastFlat(faiss::IndexFlat* flat) {
  auto fast = std::make_unique<FastFlat>(flat->d, flat->metric_type);
  fast->codes.swap(flat->codes);
  fast->ntotal = flat->ntotal;
  fast->is_trained = flat->is_trained;
  flat->ntotal = 0;
  return fast;
}

// Replaces the plain IndexFlat in `slot` (owned by its index when `*owned`)
// by a FastFlat holding its vectors, which the index then owns. Leaves
// anything else, and a FastFlat, as it is.
void SwapInFastFlat(faiss::Index** slot, bool* owned) {
  auto* flat = dynamic_cast<faiss::IndexFlat*>(*slot);
  if (flat == nullptr || dynamic_cast<FastFlat*>(flat) != nullptr) return;
  auto fast = ToFastFlat(flat);
  if (*owned) delete *slot;
  *slot = fast.release();
  *owned = true;
}

// Gives an HNSW-over-flat index FastFlat storage.
void UseFastStorage(faiss::IndexHNSW* hnsw) { SwapInFastFlat(&hnsw->storage, &hnsw->own_fields); }

// Gives an IVF index over a flat quantizer a FastFlat quantizer (its
// centroids moved, not copied): later adds assign their points through it.
void UseFastQuantizer(faiss::IndexIVF* ivf) { SwapInFastFlat(&ivf->quantizer, &ivf->own_fields); }

// HNSW construction distances between the int8 code rows of an Int8Codes,
// in real units (squared L2, or the negated inner product, of the vectors the
// codes stand for) so that the distances to an inserted point and those
// between two stored points compare. The point being inserted is a stored
// row (SetRow); FAISS's float queries are not taken.
class CodeRowDistance final : public faiss::DistanceComputer {
 public:
  // lo_dot[i] = lo . code_i for inner products (unused for L2).
  CodeRowDistance(const Int8Codes& codes, Metric metric, const std::vector<float>& lo_dot, float lo_lo)
      : codes_(codes),
        l2_(metric == Metric::kL2),
        s_(codes.scale()),
        lo_dot_(lo_dot),
        lo_lo_(lo_lo),
        q_(codes.stride()),
        tmp_(codes.stride()) {}
  void SetRow(idx_t i) {
    Widen(codes_.row(static_cast<size_t>(i)), q_.data());
    q_lo_ = l2_ ? 0.0f : lo_dot_[static_cast<size_t>(i)];
  }
  void set_query(const float*) override {}  // construction uses SetRow
  float operator()(idx_t j) override { return Dist(j, q_.data(), q_lo_); }
  float symmetric_dis(idx_t i, idx_t j) override {
    Widen(codes_.row(static_cast<size_t>(i)), tmp_.data());
    return Dist(j, tmp_.data(), l2_ ? 0.0f : lo_dot_[static_cast<size_t>(i)]);
  }

 private:
  void Widen(const uint8_t* c, int16_t* out) const {
    for (size_t d = 0; d < codes_.stride(); ++d) out[d] = c[d];
  }
  float Dist(idx_t j, const int16_t* q, float q_lo) const {
    const uint8_t* c = codes_.row(static_cast<size_t>(j));
    if (l2_) return s_ * s_ * static_cast<float>(CodeL2(c, q, codes_.stride()));
    // x . y = (lo + s a) . (lo + s b) = lo.lo + s (lo.a + lo.b) + s^2 a.b
    return -(lo_lo_ + s_ * (q_lo + lo_dot_[static_cast<size_t>(j)]) +
             s_ * s_ * static_cast<float>(CodeDot(c, q, codes_.stride())));
  }
  const Int8Codes& codes_;
  const bool l2_;
  const float s_;
  const std::vector<float>& lo_dot_;
  const float lo_lo_;
  std::vector<int16_t> q_, tmp_;
  float q_lo_ = 0;
};

// Links an empty HNSW graph over the rows of `codes` (FAISS's insertion, with
// distances between codes): levels drawn as FAISS draws them, points inserted
// from the highest level down, each level's in a seeded order on `threads`
// threads. The index's storage stays empty.
void LinkOnCodes(faiss::IndexHNSW* idx, const Int8Codes& codes, Metric metric, int threads) {
  faiss::HNSW& hnsw = idx->hnsw;
  const size_t n = codes.size();
  std::vector<float> lo_dot;
  float lo_lo = 0;
  if (metric != Metric::kL2) {
    const std::vector<float>& lo = codes.lo();
    for (float v : lo) lo_lo += v * v;
    lo_dot.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const uint8_t* c = codes.row(i);
      float s = 0;
      for (size_t d = 0; d < lo.size(); ++d) s += lo[d] * static_cast<float>(c[d]);
      lo_dot[i] = s;
    }
  }
  const int max_level = hnsw.prepare_level_tab(n, false);
  std::vector<std::vector<int>> by_level(static_cast<size_t>(max_level) + 1);
  for (size_t i = 0; i < n; ++i) by_level[static_cast<size_t>(hnsw.levels[i] - 1)].push_back(static_cast<int>(i));
  std::vector<omp_lock_t> locks(n);
  for (auto& l : locks) omp_init_lock(&l);
  std::mt19937_64 rng(0x5eed);
  for (int level = max_level; level >= 0; --level) {
    std::vector<int>& points = by_level[static_cast<size_t>(level)];
    std::shuffle(points.begin(), points.end(), rng);
#pragma omp parallel num_threads(std::max(threads, 1))
    {
      faiss::VisitedTable visited(static_cast<int>(n));
      CodeRowDistance dis(codes, metric, lo_dot, lo_lo);
#pragma omp for schedule(dynamic, 64)
      for (size_t i = 0; i < points.size(); ++i) {
        dis.SetRow(points[i]);
        hnsw.add_with_locks(dis, level, points[i], locks, visited);
      }
    }
  }
  for (auto& l : locks) omp_destroy_lock(&l);
  idx->ntotal = static_cast<idx_t>(n);
}

faiss::MetricType FaissMetric(Metric m) {
  return m == Metric::kL2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT;
}

bool IsTrained(IndexType t) {
  return t == IndexType::kIvfFlat || t == IndexType::kIvfPq || t == IndexType::kIvfSq8 ||
         t == IndexType::kHnswSq;
}

// Points k-means trains on: 128 per list, FAISS's minimum of 39 with room to
// spare and half its cap of 256, which costs half the training time of the
// cap for the same recall (Fashion-MNIST, 244 lists: recall@10 at nprobe 4
// was 0.949 either way). PQ codebooks (256 centroids per sub-quantizer) need
// at least 256 * 39 points.
size_t TrainingSample(IndexType type, size_t lists) {
  size_t want = 128 * std::max<size_t>(lists, 1);
  if (type == IndexType::kIvfPq) want = std::max<size_t>(want, 256 * 64);
  return std::max<size_t>(want, 10000);
}

int PickPqM(uint32_t dim) {
  int best = 1;
  for (int m = 1; m <= 64 && static_cast<uint32_t>(m) <= dim / 4; ++m) {
    if (dim % m == 0) best = m;
  }
  return best;
}

std::unique_ptr<faiss::Index> MakeIndex(uint32_t dim, Metric metric, IndexType type,
                                        const IndexSpec& spec, size_t n) {
  faiss::MetricType mt = FaissMetric(metric);
  switch (type) {
    case IndexType::kFlat:
      return std::make_unique<FastFlat>(dim, mt);
    case IndexType::kHnsw: {
      auto idx = std::make_unique<faiss::IndexHNSWFlat>(dim, spec.hnsw_m, mt);
      UseFastStorage(idx.get());
      idx->hnsw.efConstruction = spec.ef_construction;
      idx->hnsw.efSearch = spec.ef_search;
      return idx;
    }
    case IndexType::kHnswSq: {
      auto idx = std::make_unique<faiss::IndexHNSWSQ>(dim, faiss::ScalarQuantizer::QT_8bit,
                                                      spec.hnsw_m, mt);
      idx->hnsw.efConstruction = spec.ef_construction;
      idx->hnsw.efSearch = spec.ef_search;
      return idx;
    }
    default:
      break;
  }
  size_t nlist = std::max<size_t>(1, std::min<size_t>(spec.nlist, n / 39));
  auto* quantizer = new FastFlat(dim, mt);
  std::unique_ptr<faiss::IndexIVF> ivf;
  if (type == IndexType::kIvfFlat) {
    ivf = std::make_unique<faiss::IndexIVFFlat>(quantizer, dim, nlist, mt);
  } else if (type == IndexType::kIvfPq) {
    int m = spec.pq_m > 0 ? spec.pq_m : PickPqM(dim);
    ivf = std::make_unique<faiss::IndexIVFPQ>(quantizer, dim, nlist, m, spec.pq_nbits, mt);
  } else {
    ivf = std::make_unique<faiss::IndexIVFScalarQuantizer>(
        quantizer, dim, nlist, faiss::ScalarQuantizer::QT_8bit, mt);
  }
  ivf->own_fields = true;
  ivf->nprobe = spec.nprobe;
  return ivf;
}

// Runs one(q) for every query, on up to `threads` OpenMP threads.
template <typename Fn>
void ForEachQuery(size_t nq, int threads, const Fn& one) {
  if (nq == 1 || threads <= 1) {
    for (size_t q = 0; q < nq; ++q) one(q);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4)
  for (size_t q = 0; q < nq; ++q) one(q);
}

void PutU32(std::string* out, uint32_t v) { out->append(reinterpret_cast<const char*>(&v), 4); }
void PutU64(std::string* out, uint64_t v) { out->append(reinterpret_cast<const char*>(&v), 8); }

// `count` of the n rows of x, drawn without replacement by a seeded
// partial shuffle.
std::vector<float> RandomRows(const float* x, size_t n, size_t dim, size_t count, uint64_t seed) {
  std::vector<size_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < count; ++i) {
    std::uniform_int_distribution<size_t> pick(i, n - 1);
    std::swap(perm[i], perm[pick(rng)]);
  }
  std::vector<float> rows(count * dim);
  for (size_t i = 0; i < count; ++i) std::memcpy(&rows[i * dim], x + perm[i] * dim, dim * sizeof(float));
  return rows;
}

// Trains the IVF coarse centroids on the GPU and installs them in the
// quantizer, so that FAISS's train() skips its own k-means (it does when the
// quantizer is trained and holds nlist centroids) and trains only the PQ or
// SQ codebooks. Returns the centroids, or nothing (after logging why) when
// the GPU failed and FAISS should train on the CPU.
std::vector<float> TrainCentroidsOnGpu(faiss::IndexIVF* ivf, Metric metric, const float* x, size_t n) {
  const size_t nlist = ivf->nlist;
  const auto dim = static_cast<uint32_t>(ivf->d);
  std::vector<float> centroids(nlist * dim);
  gpu::KMeansOptions opts;
  opts.iterations = ivf->cp.niter;
  opts.seed = static_cast<uint64_t>(ivf->cp.seed);
  auto report = gpu::TrainKMeans(x, n, dim, nlist, metric, opts, centroids.data());
  absl::Status st = report.ok() ? InstallCoarseCentroids(ivf, centroids.data()) : report.status();
  if (!st.ok()) {
    std::fprintf(stderr, "cairn: GPU k-means failed, training on the CPU: %s\n", st.ToString().c_str());
    return {};
  }
  return centroids;
}

// Trains an IVF-PQ index's codebooks on the GPU, after its coarse centroids
// (TrainCentroidsOnGpu): the k-means of each sub-space over the residuals of
// as many training vectors as FAISS takes (max_points_per_centroid * ksub),
// with FAISS's iterations and seed. False (after logging why) when FAISS
// should train them on the CPU.
bool TrainPqOnGpu(faiss::IndexIVFPQ* ivf, Metric metric, const std::vector<float>& centroids, const float* x,
                  size_t n) {
  faiss::ProductQuantizer& pq = ivf->pq;
  if (!ivf->by_residual || n <= pq.ksub) return false;
  const auto dim = static_cast<uint32_t>(ivf->d);
  const size_t rows = std::min(n, pq.ksub * static_cast<size_t>(std::max(pq.cp.max_points_per_centroid, 1)));
  std::vector<float> part = RandomRows(x, n, dim, rows, static_cast<uint64_t>(pq.cp.seed));
  std::vector<idx_t> lists(rows);
  absl::Status st = gpu::AssignNearest(part.data(), rows, dim, centroids.data(), ivf->nlist, metric, lists.data());
  std::vector<float> codebooks(pq.M * pq.ksub * pq.dsub);
  if (st.ok()) {
    std::vector<float> residuals(rows * dim);
    IvfResiduals(*ivf, rows, part.data(), lists.data(), residuals.data());
    gpu::KMeansOptions opts;
    opts.iterations = pq.cp.niter;
    opts.seed = static_cast<uint64_t>(pq.cp.seed);
    opts.tf32 = false;  // small sub-spaces: float32 costs little
    st = gpu::TrainPqCodebooks(residuals.data(), rows, dim, pq.M, pq.ksub, opts, codebooks.data()).status();
  }
  if (st.ok()) st = TrainIvfPqWithCodebooks(ivf, codebooks.data(), x, n);
  if (!st.ok()) {
    std::fprintf(stderr, "cairn: GPU PQ training failed, training the codebooks on the CPU: %s\n",
                 st.ToString().c_str());
    return false;
  }
  return true;
}

// Adds the first of n vectors to an IVF-PQ index with codes made on the
// GPU, block by block, and returns how many it added: all of them, or those
// before a block the GPU failed to encode (the caller adds the rest). A
// block whose codes FAISS fails to add may be in the lists in part: that
// fails the build (no fallback, which would add it twice).
size_t AddPqCodesFromGpu(faiss::IndexIVFPQ* ivf, const float* x, size_t n, const idx_t* lists) {
  const size_t dim = static_cast<size_t>(ivf->d), m = ivf->pq.M;
  constexpr size_t kBlock = 65536;
  auto encoder = gpu::PqEncoder::Create(static_cast<uint32_t>(dim), m, ivf->pq.ksub, ivf->pq.centroids.data(),
                                        std::min(n, kBlock));
  if (!encoder.ok()) {
    std::fprintf(stderr, "cairn: GPU PQ encoding failed, encoding on the CPU: %s\n",
                 encoder.status().ToString().c_str());
    return 0;
  }
  std::vector<float> residuals;
  std::vector<int32_t> codes;
  size_t done = 0;
  while (done < n) {
    const size_t rn = std::min(kBlock, n - done);
    residuals.resize(rn * dim);
    codes.resize(rn * m);
    IvfResiduals(*ivf, rn, x + done * dim, lists + done, residuals.data());
    absl::Status st = (*encoder)->Encode(residuals.data(), rn, codes.data());
    if (!st.ok()) {
      std::fprintf(stderr, "cairn: GPU PQ encoding failed, encoding on the CPU: %s\n", st.ToString().c_str());
      return done;
    }
    st = AddIvfPqCodes(ivf, rn, lists + done, codes.data());
    if (!st.ok()) throw std::runtime_error(st.ToString());
    done += rn;
  }
  return done;
}

// Adds n vectors to an IVF index given their lists (from the GPU); IVF-PQ
// encodes them on the GPU too, and FAISS encodes what the GPU did not.
void AddWithLists(faiss::IndexIVF* ivf, const float* x, size_t n, const idx_t* lists) {
  auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(ivf);
  const size_t done = ivfpq != nullptr && ivfpq->by_residual ? AddPqCodesFromGpu(ivfpq, x, n, lists) : 0;
  if (done < n) ivf->add_core(static_cast<idx_t>(n - done), x + done * ivf->d, nullptr, lists + done);
}

// Trains `idx` (of `type`, untrained) on the n rows of x: an IVF type's
// centroids (and PQ codebooks) on the GPU when spec.device resolves to one,
// else as FAISS does. Returns the GPU's centroids for AddRows (empty: none).
std::vector<float> TrainIndex(faiss::Index* idx, IndexType type, const IndexSpec& spec, Metric metric,
                              const float* x, size_t n) {
  // IVF-SQ8 trains its (cheap) scalar quantizer on the CPU either way.
  const bool gpu_train = (type == IndexType::kIvfFlat || type == IndexType::kIvfPq ||
                          type == IndexType::kIvfSq8) && gpu::UseGpu(spec.device);
  std::vector<float> centroids;
  auto* ivf = dynamic_cast<faiss::IndexIVF*>(idx);
  if (ivf != nullptr && gpu_train) centroids = TrainCentroidsOnGpu(ivf, metric, x, n);
  auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(idx);
  const bool trained = ivfpq != nullptr && !centroids.empty() && TrainPqOnGpu(ivfpq, metric, centroids, x, n);
  if (!trained) idx->train(static_cast<idx_t>(n), x);
  return centroids;
}

// Makes room in each list of an IVF index for the rows assigned to it, so
// that adding them neither copies a list as it grows nor leaves it up to
// twice the size of what it holds (FAISS grows a list by doubling).
void ReserveLists(faiss::IndexIVF* ivf, size_t n, const idx_t* lists) {
  auto* array = dynamic_cast<faiss::ArrayInvertedLists*>(ivf->invlists);
  if (array == nullptr) return;
  std::vector<size_t> count(ivf->nlist, 0);
  for (size_t i = 0; i < n; ++i) {
    if (lists[i] >= 0 && static_cast<size_t>(lists[i]) < ivf->nlist) ++count[static_cast<size_t>(lists[i])];
  }
  for (size_t l = 0; l < ivf->nlist; ++l) {
    array->codes[l].reserve(array->codes[l].size() + count[l] * array->code_size);
    array->ids[l].reserve(array->ids[l].size() + count[l]);
  }
}

// Adds the n rows of x to an IVF index from their lists, a block at a time,
// giving the pages of x behind each block back to the system: x is a buffer
// nothing reads afterwards, and the build then holds the vectors about once
// (in the lists) rather than twice. The pages read as zeros if touched again.
void AddAndRelease(faiss::IndexIVF* ivf, const float* x, size_t n, const idx_t* lists) {
  constexpr size_t kBlock = 65536;
  const size_t row = static_cast<size_t>(ivf->d) * sizeof(float);
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(x);
  uintptr_t released = (begin + page - 1) / page * page;  // whole pages of x only
  for (size_t i = 0; i < n; i += kBlock) {
    const size_t m = std::min(kBlock, n - i);
    ivf->add_core(static_cast<idx_t>(m), x + i * ivf->d, nullptr, lists + i);
    const uintptr_t end = (begin + (i + m) * row) / page * page;
    if (end > released) {
      ::madvise(reinterpret_cast<void*>(released), end - released, MADV_DONTNEED);
      released = end;
    }
  }
}

// Adds the n rows of x to `idx`, assigned to their IVF lists on the GPU when
// `gpu_centroids` holds the lists' centroids (on the CPU if that fails).
// With `whole` (a segment's build adding all its rows at once) each list is
// sized for its rows first (ReserveLists); a build adding chunk by chunk
// leaves the lists to grow as FAISS grows them. With `release` (and whole),
// x is a buffer the IVF index may empty as it adds (AddAndRelease).
void AddRows(faiss::Index* idx, const float* x, size_t n, Metric metric, const std::vector<float>& gpu_centroids,
             bool whole, bool release = false) {
  if (n == 0) return;
  auto* ivf = dynamic_cast<faiss::IndexIVF*>(idx);
  static_assert(std::is_same_v<idx_t, int64_t>);
  if (ivf != nullptr && !gpu_centroids.empty()) {
    std::vector<idx_t> lists(n);
    absl::Status st = gpu::AssignNearest(x, n, static_cast<uint32_t>(ivf->d), gpu_centroids.data(), ivf->nlist,
                                         metric, lists.data());
    if (st.ok()) {
      if (whole) ReserveLists(ivf, n, lists.data());
      if (whole && release) {
        AddAndRelease(ivf, x, n, lists.data());
      } else {
        AddWithLists(ivf, x, n, lists.data());
      }
      return;
    }
    std::fprintf(stderr, "cairn: GPU assignment failed, adding on the CPU: %s\n", st.ToString().c_str());
  }
  if (ivf != nullptr && whole) {
    std::vector<idx_t> lists(n);
    ivf->quantizer->assign(static_cast<idx_t>(n), x, lists.data());
    ReserveLists(ivf, n, lists.data());
    if (release) {
      AddAndRelease(ivf, x, n, lists.data());
    } else {
      ivf->add_core(static_cast<idx_t>(n), x, nullptr, lists.data());
    }
    return;
  }
  idx->add(static_cast<idx_t>(n), x);
}

// Fits an IVF index's memory to its segment, once built or read:
// - a sealed IVF-PQ or IVF-SQ8 segment keeps its lists' ids in 4 bytes
//   (CompactInvertedLists); the other types' lists stay as FAISS lays them
//   out (Cairn's IVF-Flat scan and GPU copy read them).
// - IVF-PQ (L2) keeps FAISS's precomputed distance tables, nlist x M x 256
//   floats, only in a sealed segment where they cost at most an eighth of
//   its codes (IndexSpec::pq_tables kAuto; kOn: in every sealed segment,
//   kOff: in none): they save a list's residual table (about 14% of a search's
//   time with lists of ~3,000 points) at m KiB a list, which is 10 bytes a
//   vector at 10M points and nlist 3,162, m 32 (a third of the codes), and
//   more than the codes in a 500k-point segment.
void FitIvfIndex(faiss::Index* idx, IndexType type, PqTables pq_tables, bool sealed) {
  auto* ivf = dynamic_cast<faiss::IndexIVF*>(idx);
  if (ivf == nullptr) return;
  if (auto* pq = dynamic_cast<faiss::IndexIVFPQ*>(ivf)) {
    const uint64_t table = static_cast<uint64_t>(pq->nlist) * pq->pq.M * pq->pq.ksub * sizeof(float);
    const bool cheap = table * 8 <= static_cast<uint64_t>(pq->ntotal) * pq->code_size;
    const bool tables = sealed && pq->by_residual && pq->metric_type == faiss::METRIC_L2 &&
                        (pq_tables == PqTables::kOn || (pq_tables == PqTables::kAuto && cheap));
    if (!tables) {
      pq->use_precomputed_table = 0;  // each probed list's table from its residual
      pq->precomputed_table.resize(0);
    } else if (pq->precomputed_table.size() == 0) {
      pq->use_precomputed_table = 1;
      pq->precompute_table();
    }
  }
  if (!sealed || (type != IndexType::kIvfPq && type != IndexType::kIvfSq8)) return;
  if (dynamic_cast<CompactInvertedLists*>(ivf->invlists) != nullptr) return;
  if (auto compact = CompactInvertedLists::Compact(ivf->invlists)) ivf->replace_invlists(compact.release(), true);
}

// A streamed build reads its vectors about this many bytes at a time.
constexpr size_t kStreamChunkBytes = 8 << 20;
// An HNSW segment that walks on its codes re-ranks the best k x this of its
// walk's ef candidates, from its vector file or from the floats in memory
// (the same candidates either way: answers do not depend on where the floats
// are). On 200k x 768 cosine (bench/ann, 2 threads), re-ranking 2k, 3k or 4k
// of them instead of all ef lost at most 0.0001 of recall@10 at ef 32 to 128, and
// each row read costs about 2 us (a pread and its checksum): at ef 128, 2k
// answered 5,419 queries/s and all ef 3,066.
constexpr size_t kRerankPerK = 3;
// Rows read back at a time to derive an HNSW segment's codes from its vector
// file (a sequential read: small chunks cost nothing).
constexpr size_t kCodeChunkBytes = 1 << 20;

}  // namespace

// A segment's vectors on the GPU: one of the two.
struct Segment::GpuCopy {
  std::unique_ptr<gpu::ExactIndex> exact;
  std::unique_ptr<gpu::IvfFlatIndex> ivf;
};

void VectorBuffer::Unmap::operator()(uint8_t* p) const { ::munmap(p, bytes); }

void VectorBuffer::Append(absl::Span<const float> v) {
  const auto* b = reinterpret_cast<const uint8_t*>(v.data());
  const size_t len = v.size() * sizeof(float);
  if (blocks_.empty() || blocks_.back().size + len > blocks_.back().bytes.get_deleter().bytes) {
    // Blocks grow from 64 KiB to kMaxBlockBytes: small buffers stay small.
    const size_t last = blocks_.empty() ? 0 : blocks_.back().bytes.get_deleter().bytes;
    const size_t want = std::max(len, last == 0 ? size_t{64} << 10 : std::min(kMaxBlockBytes, 2 * last));
    void* m = ::mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    blocks_.push_back(Block{std::unique_ptr<uint8_t, Unmap>(static_cast<uint8_t*>(m), Unmap{want}), 0});
  }
  Block& block = blocks_.back();
  std::memcpy(block.bytes.get() + block.size, b, len);
  block.size += len;
  floats_ += v.size();
}

float* VectorBuffer::data() {
  if (!blocks_.empty()) {
    bytes_.reserve(floats_ * sizeof(float));
    for (Block& block : blocks_) {
      bytes_.insert(bytes_.end(), block.bytes.get(), block.bytes.get() + block.size);
      block.bytes.reset();
    }
    blocks_.clear();
  }
  return reinterpret_cast<float*>(bytes_.data());
}

void PrepareVectors(Metric metric, float* x, size_t n, size_t dim) {
  if (metric != Metric::kCosine) return;
  for (size_t i = 0; i < n; ++i) {
    float* v = x + i * dim;
    float norm = std::sqrt(InnerProduct(v, v, dim));
    if (norm > 0) {
      float inv = 1.0f / norm;
      for (size_t j = 0; j < dim; ++j) v[j] *= inv;
    }
  }
}

float Score(Metric metric, const float* a, const float* b, size_t dim) {
  return metric == Metric::kL2 ? L2Sqr(a, b, dim) : InnerProduct(a, b, dim);
}

namespace {

// (score, position) pairs best first: ascending distance for L2, descending
// similarity otherwise; ties by position.
void SortBestFirst(Metric metric, std::vector<std::pair<float, int64_t>>* found) {
  if (metric == Metric::kL2) {
    std::sort(found->begin(), found->end());
  } else {
    std::sort(found->begin(), found->end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
  }
}

}  // namespace

Segment::Segment(uint32_t dim, Metric metric, IndexType type, const IndexSpec& spec,
                 std::unique_ptr<faiss::Index> index)
    : dim_(dim), metric_(metric), type_(type), spec_(spec), index_(std::move(index)) {}

Segment::~Segment() = default;

namespace {

bool IsIvf(IndexType t) {
  return t == IndexType::kIvfFlat || t == IndexType::kIvfPq || t == IndexType::kIvfSq8;
}

// The index type of a new growing segment of a collection whose index is
// `spec`. IVF types start flat: they are trained (BuildGrowing) once the
// segment holds GrowingTrainPoints, and then stay compact as they grow.
IndexType GrowingType(const IndexSpec& spec) {
  return spec.type == IndexType::kHnsw || spec.type == IndexType::kHnswSq ? IndexType::kHnsw : IndexType::kFlat;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Segment>> Segment::CreateGrowing(uint32_t dim, Metric metric,
                                                                const IndexSpec& spec) {
  const IndexType type = GrowingType(spec);
  std::unique_ptr<faiss::Index> idx;
  CAIRN_RETURN_IF_ERROR(CatchFaiss("create", [&] { idx = MakeIndex(dim, metric, type, spec, 0); }));
  return std::unique_ptr<Segment>(new Segment(dim, metric, type, spec, std::move(idx)));
}

size_t Segment::GrowingTrainPoints(const IndexSpec& spec) {
  if (!IsIvf(spec.type)) return 0;
  return std::max(kMinTrainPoints, TrainingSample(spec.type, std::max(spec.nlist, 1)));
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::BuildGrowing(uint32_t dim, Metric metric, const IndexSpec& spec,
                                                               const float* x, const uint64_t* ids, size_t n,
                                                               int threads) {
  if (!IsIvf(spec.type) || n < GrowingTrainPoints(spec)) {
    return absl::InvalidArgumentError(absl::StrCat("a growing IVF segment needs ",
                                                   GrowingTrainPoints(spec), " points to train; got ", n));
  }
  CAIRN_ASSIGN_OR_RETURN(auto seg, BuildOf(spec.type, dim, metric, spec, x, ids, n, threads));
  FitIvfIndex(seg->index_.get(), seg->type_, seg->spec_.pq_tables, false);
  seg->frozen_ = false;
  return seg;
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::Build(uint32_t dim, Metric metric,
                                                        const IndexSpec& spec, const float* x,
                                                        const uint64_t* ids, size_t n,
                                                        int threads) {
  return BuildSealed(dim, metric, spec, x, ids, n, threads, nullptr);
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::Build(uint32_t dim, Metric metric, const IndexSpec& spec,
                                                        VectorBuffer* x, const uint64_t* ids, size_t n,
                                                        int threads) {
  if (x->size() != n * dim) return absl::InternalError("vector buffer does not hold n rows");
  return BuildSealed(dim, metric, spec, x->data(), ids, n, threads, x);
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::BuildSealed(uint32_t dim, Metric metric, const IndexSpec& spec,
                                                              const float* x, const uint64_t* ids, size_t n,
                                                              int threads, VectorBuffer* adopt) {
  IndexType type = spec.type;
  if (IsTrained(type) && n < kMinTrainPoints) type = IndexType::kFlat;
  CAIRN_ASSIGN_OR_RETURN(auto seg, BuildOf(type, dim, metric, spec, x, ids, n, threads, adopt));
  FitIvfIndex(seg->index_.get(), seg->type_, seg->spec_.pq_tables, true);
  seg->MapListRows();
  // From a buffer (a bulk load), HNSW's codes are derived by
  // MoveVectorsToFile once the floats are written out and freed.
  if (adopt == nullptr) seg->BuildSearchCodes();
  return seg;
}

bool Segment::Streams(const IndexSpec& spec, uint32_t dim, size_t n) {
  if (spec.type == IndexType::kHnsw) return spec.hnsw_int8 && dim <= Int8Codes::kMaxDim && n > 0;
  return (spec.type == IndexType::kIvfPq || spec.type == IndexType::kIvfSq8 || spec.type == IndexType::kHnswSq) &&
         n >= kMinTrainPoints;
}

size_t Segment::TrainingRows(const IndexSpec& spec) {
  if (spec.type == IndexType::kHnsw) return 0;  // codes on a grid fitted to every row
  return TrainingSample(spec.type, static_cast<size_t>(std::max(spec.nlist, 1)));
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::BuildStreamed(uint32_t dim, Metric metric, const IndexSpec& spec,
                                                                const float* sample, size_t sample_n,
                                                                const RowReader& rows, const uint64_t* ids,
                                                                size_t n, int threads) {
  if (!Streams(spec, dim, n) || (sample_n == 0 && spec.type != IndexType::kHnsw)) {
    return absl::InvalidArgumentError(absl::StrCat("a streamed build is for hnsw segments that walk on int8 codes, "
                                                   "and ivf_pq, ivf_sq8 and hnsw_sq segments of ",
                                                   kMinTrainPoints, " points or more, with a sample"));
  }
  if (spec.type == IndexType::kHnsw) return BuildHnswOnCodes(dim, metric, spec, rows, ids, n, threads);
  OmpThreads omp(threads);
  std::unique_ptr<faiss::Index> idx;
  absl::Status read;
  CAIRN_RETURN_IF_ERROR(CatchFaiss("build", [&] {
    idx = MakeIndex(dim, metric, spec.type, spec, n);
    auto* ivf = dynamic_cast<faiss::IndexIVF*>(idx.get());
    const size_t want = std::min(sample_n, TrainingSample(spec.type, ivf ? ivf->nlist : 1));
    std::vector<float> buf;
    if (want < sample_n) buf = RandomRows(sample, sample_n, dim, want, 0x5eed);
    const std::vector<float> gpu_centroids =
        TrainIndex(idx.get(), spec.type, spec, metric, want < sample_n ? buf.data() : sample, want);
    std::vector<float> chunk;
    const size_t rows_per_chunk = std::max<size_t>(1, kStreamChunkBytes / (sizeof(float) * dim));
    for (size_t first = 0; first < n && read.ok(); first += rows_per_chunk) {
      const size_t count = std::min(rows_per_chunk, n - first);
      chunk.resize(count * dim);
      read = rows(first, count, chunk.data());
      if (read.ok()) AddRows(idx.get(), chunk.data(), count, metric, gpu_centroids, false);
    }
  }));
  CAIRN_RETURN_IF_ERROR(read);
  FitIvfIndex(idx.get(), spec.type, spec.pq_tables, true);
  auto seg = std::unique_ptr<Segment>(new Segment(dim, metric, spec.type, spec, std::move(idx)));
  seg->ids_.Assign(ids, n);
  seg->deleted_.assign((n + 63) / 64, 0);
  seg->frozen_ = true;
  return seg;
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::BuildHnswOnCodes(uint32_t dim, Metric metric, const IndexSpec& spec,
                                                                   const RowReader& rows, const uint64_t* ids,
                                                                   size_t n, int threads) {
  // The codes' grid from every row, then the codes: two reads of the rows,
  // a chunk at a time.
  Int8Codes codes(dim);
  const size_t rows_per_chunk = std::max<size_t>(1, kCodeChunkBytes / (sizeof(float) * dim));
  std::vector<float> chunk;
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) codes.Allocate(n);
    for (size_t first = 0; first < n; first += rows_per_chunk) {
      const size_t count = std::min(rows_per_chunk, n - first);
      chunk.resize(count * dim);
      CAIRN_RETURN_IF_ERROR(rows(first, count, chunk.data()));
      if (pass == 0) {
        codes.Fit(chunk.data(), count);
      } else {
        codes.Encode(first, chunk.data(), count);
      }
    }
  }
  std::vector<float>().swap(chunk);
  std::unique_ptr<faiss::Index> idx;
  CAIRN_RETURN_IF_ERROR(CatchFaiss("build", [&] {
    idx = MakeIndex(dim, metric, IndexType::kHnsw, spec, n);
    LinkOnCodes(static_cast<faiss::IndexHNSW*>(idx.get()), codes, metric, threads);
  }));
  auto seg = std::unique_ptr<Segment>(new Segment(dim, metric, IndexType::kHnsw, spec, std::move(idx)));
  seg->ids_.Assign(ids, n);
  seg->deleted_.assign((n + 63) / 64, 0);
  seg->codes_ = std::make_shared<const Int8Codes>(std::move(codes));
  seg->vectors_on_disk_.store(true, std::memory_order_release);
  seg->frozen_ = true;
  return seg;
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::BuildOf(IndexType type, uint32_t dim, Metric metric,
                                                          const IndexSpec& spec, const float* x,
                                                          const uint64_t* ids, size_t n, int threads,
                                                          VectorBuffer* adopt) {
  OmpThreads omp(threads);
  std::unique_ptr<faiss::Index> idx;
  std::vector<float> gpu_centroids;
  CAIRN_RETURN_IF_ERROR(CatchFaiss("build", [&] {
    idx = MakeIndex(dim, metric, type, spec, n);
    if (!idx->is_trained) {
      auto* ivf = dynamic_cast<faiss::IndexIVF*>(idx.get());
      const size_t sample = std::min(n, TrainingSample(type, ivf ? ivf->nlist : 1));
      std::vector<float> buf;
      if (sample < n) buf = RandomRows(x, n, dim, sample, 0x5eed);
      gpu_centroids = TrainIndex(idx.get(), type, spec, metric, sample < n ? buf.data() : x, sample);
    }
    if (n > 0 && adopt != nullptr) {
      // Flat, or HNSW over flat storage: the vectors become the storage.
      auto* hnsw = dynamic_cast<faiss::IndexHNSW*>(idx.get());
      auto* flat = dynamic_cast<FastFlat*>(hnsw != nullptr ? hnsw->storage : idx.get());
      if (flat != nullptr) {
        flat->Adopt(std::move(adopt->bytes_));
        *adopt = {};
        x = flat->get_xb();
      }
    }
    // IVF-Flat copies the vectors into its lists, emptying the buffer as it
    // goes (the lossy types encode them and leave the buffer to the caller,
    // which writes it to their vector files).
    const bool drain = adopt != nullptr && !adopt->empty() && type == IndexType::kIvfFlat &&
                       x == adopt->data();
    AddRows(idx.get(), x, n, metric, gpu_centroids, true, drain);
    if (drain) *adopt = {};
  }));
  auto seg = std::unique_ptr<Segment>(new Segment(dim, metric, type, spec, std::move(idx)));
  seg->ids_.Assign(ids, n);
  seg->deleted_.assign((n + 63) / 64, 0);
  seg->frozen_ = true;
  return seg;
}

absl::Status Segment::Add(const float* x, const uint64_t* ids, size_t n, int threads) {
  if (n == 0) return absl::OkStatus();
  std::unique_lock lock(mu_);
  if (frozen_) return absl::FailedPreconditionError("segment is frozen");
  if (!ids_.empty() && ids[0] <= ids_.back()) {
    return absl::InternalError("segment ids must ascend");
  }
  // Within the batch too: PositionOf binary-searches ids_.
  for (size_t i = 1; i < n; ++i) {
    if (ids[i] <= ids[i - 1]) return absl::InternalError("segment ids must ascend");
  }
  OmpThreads omp(threads);
  CAIRN_RETURN_IF_ERROR(CatchFaiss("add", [&] { index_->add(static_cast<idx_t>(n), x); }));
  ids_.Append(ids, n);
  deleted_.resize((ids_.size() + 63) / 64, 0);
  return absl::OkStatus();
}

void Segment::Freeze() {
  std::unique_lock lock(mu_);
  frozen_ = true;
  ids_.ShrinkToFit();
  FitIvfIndex(index_.get(), type_, spec_.pq_tables, true);
  MapListRows();
}

bool Segment::WalksOnCodes() const {
  return type_ == IndexType::kHnsw && spec_.hnsw_int8 && dim_ <= Int8Codes::kMaxDim;
}

bool Segment::FloatsHeldLocked() const {
  const faiss::Index* flat = FlatStorage();
  return flat != nullptr && flat->ntotal == index_->ntotal;
}

void Segment::BuildSearchCodes() {
  if (!WalksOnCodes()) return;
  std::shared_ptr<const Int8Codes> codes;
  {
    std::shared_lock lock(mu_);
    if (!frozen_ || codes_ || !FloatsHeldLocked()) return;
    const auto* flat = static_cast<const faiss::IndexFlat*>(
        static_cast<const faiss::IndexHNSW*>(index_.get())->storage);
    codes = std::make_shared<const Int8Codes>(Int8Codes::Build(
        reinterpret_cast<const float*>(flat->codes.data()), static_cast<size_t>(flat->ntotal), dim_));
  }
  std::unique_lock lock(mu_);
  codes_ = std::move(codes);
}

bool Segment::frozen() const {
  std::shared_lock lock(mu_);
  return frozen_;
}

absl::Status Segment::Search(const float* queries, size_t nq, const SegmentSearchParams& params,
                             float* scores, int64_t* ids, int threads) const {
  const size_t k = static_cast<size_t>(params.k);
  float worst = metric_ == Metric::kL2 ? INFINITY : -INFINITY;
  std::fill(scores, scores + nq * k, worst);
  std::fill(ids, ids + nq * k, kNoId);
  if ((type_ == IndexType::kFlat || type_ == IndexType::kIvfFlat) && params.k <= gpu::kMaxK && !params.force_cpu &&
      (type_ != IndexType::kIvfFlat || GpuNprobe(params) <= gpu::kMaxK)) {
    auto g = GpuCopyForSearch();
    // A base streamed over PCIe pays for itself only over large batches.
    if (g != nullptr && (g->ivf != nullptr || g->exact->resident() || nq >= kMinStreamedBatch)) {
      absl::Status st = SearchOnGpu(*g, queries, nq, params, scores, ids);
      if (st.ok()) {
        gpu::CountSearch();
        return st;
      }
      gpu::CountFallback();
      DisableGpu(st);
      std::fill(scores, scores + nq * k, worst);
      std::fill(ids, ids + nq * k, kNoId);
    }
  }
  int want_ef = std::max(params.ef > 0 ? params.ef : spec_.ef_search, params.k);
  const double allowed_fraction =
      params.allowed == nullptr ? 1.0
                                : static_cast<double>(params.allowed->count) / static_cast<double>(std::max<size_t>(size(), 1));
  if (params.allowed != nullptr && type_ != IndexType::kHnsw) {
    // FAISS's walk (HNSW-SQ) stops after about ef steps whatever it skips,
    // so it needs a longer candidate list to find k allowed points. Cairn's
    // own walk (HNSW) goes on until it holds ef allowed ones.
    want_ef = static_cast<int>(want_ef * std::min(8.0, 1.0 / std::sqrt(std::max(allowed_fraction, 1e-6))));
  }
  if (auto* h = type_ == IndexType::kHnsw ? nullptr : dynamic_cast<faiss::IndexHNSW*>(index_.get())) {
    // FAISS 1.7.3 sizes the candidate heap by the index's own efSearch and
    // takes the smaller of it and the request's: raise it (never lower it,
    // other searches may be running) so the request's ef takes effect.
    bool raise;
    {
      std::shared_lock lock(mu_);
      raise = h->hnsw.efSearch < want_ef;
    }
    if (raise) {
      std::unique_lock lock(mu_);
      h->hnsw.efSearch = std::max(h->hnsw.efSearch, want_ef);
    }
  }
  std::shared_lock lock(mu_);
  if (ids_.empty() || num_deleted_ == ids_.size()) return absl::OkStatus();

  if (type_ == IndexType::kHnsw) {
    // Cairn's own walk over the graph (index/hnsw_search.h).
    const auto* h = static_cast<const faiss::IndexHNSW*>(index_.get());
    HnswGraph g;
    g.neighbors = h->hnsw.neighbors.data();
    g.offsets = h->hnsw.offsets.data();
    g.cum_neighbors = h->hnsw.cum_nneighbor_per_level.data();
    g.entry_point = h->hnsw.entry_point;
    g.max_level = h->hnsw.max_level;
    g.size = static_cast<size_t>(h->ntotal);
    const bool floats = FloatsHeldLocked();
    if (!floats && codes_ == nullptr) {
      return absl::FailedPreconditionError("HNSW segment searched while its vectors move to their file");
    }
    // A walk on the codes returns its best by the codes, re-ranked with the
    // floats: from memory when the segment holds them, else rows read from
    // the vector file or the caller's store. The same candidates either way,
    // so the answers do not depend on where the floats are.
    const float* base =
        floats ? reinterpret_cast<const float*>(static_cast<const faiss::IndexFlat*>(h->storage)->codes.data())
               : nullptr;
    const bool on_codes = codes_ != nullptr;
    const std::shared_ptr<const VectorFile> file = floats ? nullptr : vector_file_.load();
    const bool rerank = on_codes && (floats || file != nullptr || params.raw_rows != nullptr);
    HnswQuery hq;
    hq.base = on_codes ? nullptr : base;
    hq.dim = dim_;
    hq.metric = metric_;
    hq.codes = codes_.get();
    hq.deleted = num_deleted_ > 0 ? &deleted_ : nullptr;
    hq.allowed = params.allowed;
    hq.allowed_fraction = allowed_fraction;
    hq.ef = want_ef;
    hq.k = rerank ? std::min(std::max<size_t>(k, static_cast<size_t>(want_ef)), kRerankPerK * k) : k;
    std::mutex failed_mu;
    absl::Status failed;
    auto one = [&](size_t q) {
      thread_local std::vector<std::pair<float, int64_t>> found;
      const float* query = queries + q * dim_;
      HnswSearch(g, hq, query, &found);
      if (rerank && !found.empty()) {
        if (absl::Status st = Rerank(base, file.get(), params.raw_rows, query, &found); !st.ok()) {
          std::lock_guard l(failed_mu);
          failed.Update(st);
          return;
        }
      }
      for (size_t j = 0; j < found.size() && j < k; ++j) {
        scores[q * k + j] = found[j].first;
        ids[q * k + j] = static_cast<int64_t>(ids_[static_cast<size_t>(found[j].second)]);
      }
    };
    ForEachQuery(nq, threads, one);
    return failed;
  }

  if (type_ == IndexType::kIvfFlat) {
    const auto* ivf = static_cast<const faiss::IndexIVF*>(index_.get());
    if (dynamic_cast<const faiss::IndexFlat*>(ivf->quantizer) != nullptr) {
      const size_t nprobe = std::min<size_t>(params.nprobe > 0 ? params.nprobe : spec_.nprobe, ivf->nlist);
      auto one = [&](size_t q) {
        IvfFlatScan(queries + q * dim_, nprobe, params.allowed, k, scores + q * k, ids + q * k);
      };
      ForEachQuery(nq, threads, one);
      return absl::OkStatus();
    }
  }

  PositionSelector sel;
  sel.deleted = num_deleted_ > 0 ? &deleted_ : nullptr;
  sel.allowed = params.allowed;
  faiss::IDSelector* selp = (sel.deleted || sel.allowed) ? &sel : nullptr;

  faiss::SearchParametersHNSW hnsw_params;
  faiss::SearchParametersIVF ivf_params;
  faiss::SearchParameters flat_params;
  faiss::SearchParameters* sp = &flat_params;
  if (dynamic_cast<const faiss::IndexHNSW*>(index_.get()) != nullptr) {
    hnsw_params.efSearch = want_ef;
    sp = &hnsw_params;
  } else if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index_.get())) {
    ivf_params.nprobe = std::min<size_t>(params.nprobe > 0 ? params.nprobe : spec_.nprobe,
                                         ivf->nlist);
    sp = &ivf_params;
  }
  sp->sel = selp;

  std::vector<idx_t> labels(nq * k);
  OmpThreads omp(nq == 1 ? 1 : threads);
  CAIRN_RETURN_IF_ERROR(CatchFaiss("search", [&] {
    index_->search(static_cast<idx_t>(nq), queries, static_cast<idx_t>(k), scores,
                   labels.data(), sp);
  }));
  LabelsToIds(labels, worst, scores, ids);
  return absl::OkStatus();
}

absl::Status Segment::Rerank(const float* base, const VectorFile* file, const RawRows* raw, const float* query,
                             std::vector<std::pair<float, int64_t>>* found) const {
  if (base != nullptr) {
    for (auto& [score, pos] : *found) score = Score(metric_, query, base + static_cast<size_t>(pos) * dim_, dim_);
    SortBestFirst(metric_, found);
    return absl::OkStatus();
  }
  thread_local std::vector<uint64_t> rows;
  thread_local std::vector<float> vecs;
  thread_local std::vector<bool> ok;
  const size_t n = found->size();
  rows.resize(n);
  for (size_t i = 0; i < n; ++i) rows[i] = static_cast<uint64_t>((*found)[i].second);
  vecs.resize(n * dim_);
  ok.assign(n, false);
  if (file != nullptr) CAIRN_RETURN_IF_ERROR(file->Read(rows, vecs.data(), &ok));
  if (raw != nullptr && std::find(ok.begin(), ok.end(), false) != ok.end()) {
    // No file, or damaged rows (the file reports them): from the store.
    std::vector<uint64_t> ids;
    std::vector<size_t> at;
    for (size_t i = 0; i < n; ++i) {
      if (!ok[i]) {
        ids.push_back(ids_[static_cast<size_t>(rows[i])]);
        at.push_back(i);
      }
    }
    std::vector<float> got;
    std::vector<bool> got_ok;
    CAIRN_RETURN_IF_ERROR((*raw)(ids, &got, &got_ok));
    for (size_t j = 0; j < ids.size(); ++j) {
      if (!got_ok[j]) continue;
      std::memcpy(&vecs[at[j] * dim_], &got[j * dim_], size_t{dim_} * sizeof(float));
      ok[at[j]] = true;
    }
  }
  // A row found nowhere (a point deleted meanwhile) keeps its codes' score.
  for (size_t i = 0; i < n; ++i) {
    if (ok[i]) (*found)[i].first = Score(metric_, query, &vecs[i * dim_], dim_);
  }
  SortBestFirst(metric_, found);
  return absl::OkStatus();
}

void Segment::IvfFlatScan(const float* query, size_t nprobe, const PositionSet* allowed, size_t k,
                          float* scores, int64_t* ids) const {
  // IVF-Flat with Cairn's kernels: the nearest nprobe centroids, then every
  // vector of their lists (FAISS's own scan computes distances one float at a
  // time as Debian builds it). REQUIRES: mu_ held (shared).
  const auto* ivf = static_cast<const faiss::IndexIVF*>(index_.get());
  const auto* centroids = static_cast<const faiss::IndexFlat*>(ivf->quantizer);
  const bool l2 = metric_ == Metric::kL2;
  const size_t dim = dim_;
  auto dist = [&](const float* v) { return l2 ? L2Sqr(query, v, dim) : -InnerProduct(query, v, dim); };
  thread_local std::vector<std::pair<float, size_t>> lists;
  lists.clear();
  const float* cx = centroids->get_xb();
  for (size_t c = 0; c < ivf->nlist; ++c) lists.emplace_back(dist(cx + c * dim), c);
  std::partial_sort(lists.begin(), lists.begin() + static_cast<ptrdiff_t>(nprobe), lists.end());
  thread_local std::vector<std::pair<float, int64_t>> heap;  // max-heap of the k best
  heap.clear();
  const bool filtered = num_deleted_ > 0 || allowed != nullptr;
  for (size_t p = 0; p < nprobe; ++p) {
    const size_t list = lists[p].second;
    const size_t n = ivf->invlists->list_size(list);
    if (n == 0) continue;
    faiss::InvertedLists::ScopedCodes codes(ivf->invlists, list);
    faiss::InvertedLists::ScopedIds pos(ivf->invlists, list);
    const float* v = reinterpret_cast<const float*>(codes.get());
    for (size_t j = 0; j < n; ++j, v += dim) {
      const size_t at = static_cast<size_t>(pos[j]);
      if (filtered && (((deleted_[at >> 6] >> (at & 63)) & 1) || (allowed && !allowed->Test(at)))) continue;
      const float d = dist(v);
      if (heap.size() < k) {
        heap.emplace_back(d, static_cast<int64_t>(at));
        std::push_heap(heap.begin(), heap.end());
      } else if (d < heap.front().first) {
        std::pop_heap(heap.begin(), heap.end());
        heap.back() = {d, static_cast<int64_t>(at)};
        std::push_heap(heap.begin(), heap.end());
      }
    }
  }
  std::sort_heap(heap.begin(), heap.end());
  for (size_t j = 0; j < heap.size(); ++j) {
    scores[j] = l2 ? heap[j].first : -heap[j].first;
    ids[j] = static_cast<int64_t>(ids_[static_cast<size_t>(heap[j].second)]);
  }
}

bool Segment::OnGpu() const { return gpu_.load(std::memory_order_acquire) != nullptr; }

uint64_t Segment::GpuBytes() const {
  auto copy = gpu_.load(std::memory_order_acquire);
  if (copy == nullptr) return 0;
  // Searches may be growing the copy's workspaces: read what its creation counted.
  return copy->exact != nullptr ? copy->exact->budgeted_bytes() : copy->ivf->budgeted_bytes();
}

std::shared_ptr<const Segment::GpuCopy> Segment::GpuCopyForSearch() const {
  // The plain flag first: on CPU nodes every search stops here.
  if (spec_.device == Device::kCpu || cpu_only_.load(std::memory_order_acquire)) return nullptr;
  if (auto copy = gpu_.load(std::memory_order_acquire)) return copy;
  const int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
  if (now < gpu_retry_at_.load(std::memory_order_relaxed)) return nullptr;
  if (!frozen()) return nullptr;  // growing: considered again once sealed
  std::unique_lock making(gpu_mu_, std::try_to_lock);
  if (!making.owns_lock()) return nullptr;  // another search is making it
  if (auto copy = gpu_.load(std::memory_order_acquire)) return copy;
  if (!gpu::UseGpu(spec_.device) || size() < kMinGpuPoints) {
    cpu_only_.store(true, std::memory_order_release);
    return nullptr;
  }
  std::shared_lock lock(mu_);
  auto copy = std::make_shared<GpuCopy>();
  absl::Status st;
  if (type_ == IndexType::kFlat) {
    const auto* flat = static_cast<const faiss::IndexFlat*>(index_.get());
    auto made = gpu::ExactIndex::Create(flat->get_xb(), static_cast<size_t>(flat->ntotal), dim_, metric_, {});
    if (made.ok()) copy->exact = *std::move(made);
    st = made.status();
  } else {
    const auto* ivf = static_cast<const faiss::IndexIVF*>(index_.get());
    const auto* centroids = dynamic_cast<const faiss::IndexFlat*>(ivf->quantizer);
    if (centroids == nullptr) {
      cpu_only_.store(true, std::memory_order_release);
      return nullptr;
    }
    std::vector<gpu::cuda::IvfList> lists(ivf->nlist);
    for (size_t l = 0; l < ivf->nlist; ++l) {
      lists[l].vectors = reinterpret_cast<const float*>(ivf->invlists->get_codes(l));
      lists[l].positions = ivf->invlists->get_ids(l);
      lists[l].size = ivf->invlists->list_size(l);
    }
    auto made = gpu::IvfFlatIndex::Create(centroids->get_xb(), ivf->nlist, dim_, metric_, lists, ids_.size(), {});
    if (made.ok()) copy->ivf = *std::move(made);
    st = made.status();
  }
  if (!st.ok()) {
    const bool retry = absl::IsResourceExhausted(st);
    if (retry) {
      gpu_retry_at_.store(now + std::chrono::nanoseconds(kGpuRetryAfter).count(), std::memory_order_relaxed);
    } else {
      cpu_only_.store(true, std::memory_order_release);
    }
    std::fprintf(stderr, "cairn: %s segment of %zu vectors is searched on the CPU%s: %s\n",
                 type_ == IndexType::kFlat ? "flat" : "ivf_flat", ids_.size(),
                 retry ? " (the GPU copy is tried again in a minute)" : "", st.ToString().c_str());
    return nullptr;
  }
  std::shared_ptr<const GpuCopy> made = std::move(copy);
  gpu_.store(made, std::memory_order_release);
  return made;
}

void Segment::DisableGpu(const absl::Status& why) const {
  std::fprintf(stderr, "cairn: a GPU search failed; this segment is searched on the CPU from now on: %s\n",
               why.ToString().c_str());
  cpu_only_.store(true, std::memory_order_release);
  gpu_.store(nullptr, std::memory_order_release);
}

absl::Status Segment::SearchOnGpu(const GpuCopy& gpu, const float* queries, size_t nq,
                                  const SegmentSearchParams& params, float* scores, int64_t* ids) const {
  // Frozen: ids_ never changes; only the tombstones are read under the lock,
  // which is not held while the GPU works (writers would wait on it).
  const size_t n = ids_.size();
  PositionSet allowed;
  const PositionSet* allow = params.allowed;
  {
    std::shared_lock lock(mu_);
    if (num_deleted_ > 0) {
      // One bitset for the device: allowed and not deleted.
      allowed.words.assign((n + 63) / 64, ~uint64_t{0});
      if (params.allowed != nullptr) {
        for (size_t w = 0; w < allowed.words.size(); ++w) {
          allowed.words[w] = w < params.allowed->words.size() ? params.allowed->words[w] : 0;
        }
      }
      for (size_t w = 0; w < allowed.words.size(); ++w) allowed.words[w] &= ~deleted_[w];
      if (n % 64 != 0) allowed.words.back() &= (uint64_t{1} << (n % 64)) - 1;
      allow = &allowed;
    }
  }
  const size_t k = static_cast<size_t>(params.k);
  std::vector<int64_t> labels(nq * k);
  absl::Status st;
  if (gpu.exact) {
    st = gpu.exact->Search(queries, nq, params.k, allow, scores, labels.data());
  } else {
    st = gpu.ivf->Search(queries, nq, params.k, GpuNprobe(params), allow, scores, labels.data(), params.gpu_ivf_scan);
  }
  if (!st.ok()) return st;
  for (int64_t label : labels) {
    if (label >= static_cast<int64_t>(n)) return absl::InternalError("GPU search returned a position past the segment");
  }
  LabelsToIds(labels, metric_ == Metric::kL2 ? INFINITY : -INFINITY, scores, ids);
  return absl::OkStatus();
}

int Segment::GpuNprobe(const SegmentSearchParams& params) const {
  const auto* ivf = static_cast<const faiss::IndexIVF*>(index_.get());
  return static_cast<int>(std::min<size_t>(params.nprobe > 0 ? params.nprobe : spec_.nprobe, ivf->nlist));
}

void Segment::LabelsToIds(const std::vector<int64_t>& labels, float worst,
                          float* scores, int64_t* ids) const {
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0) {
      scores[i] = worst;
      ids[i] = kNoId;
    } else {
      ids[i] = static_cast<int64_t>(ids_[static_cast<size_t>(labels[i])]);
    }
  }
}

const faiss::Index* Segment::FlatStorage() const {
  if (type_ == IndexType::kFlat) return index_.get();
  if (type_ == IndexType::kHnsw) {
    return static_cast<const faiss::IndexHNSW*>(index_.get())->storage;
  }
  return nullptr;
}

bool Segment::HasExactVectors() const {
  return type_ == IndexType::kFlat ||
         (type_ == IndexType::kHnsw && !vectors_on_disk_.load(std::memory_order_acquire)) ||
         list_rows_ready_.load(std::memory_order_acquire);
}

void Segment::MapListRows() {
  if (type_ != IndexType::kIvfFlat || list_rows_ready_.load()) return;
  const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index_.get());
  const auto* lists = ivf != nullptr ? dynamic_cast<const faiss::ArrayInvertedLists*>(ivf->invlists) : nullptr;
  if (lists == nullptr || static_cast<size_t>(ivf->ntotal) != ids_.size()) return;
  std::vector<const float*> rows(ids_.size(), nullptr);
  for (size_t l = 0; l < lists->nlist; ++l) {
    const std::vector<idx_t>& positions = lists->ids[l];
    const uint8_t* codes = lists->codes[l].data();
    for (size_t j = 0; j < positions.size(); ++j) {
      const idx_t p = positions[j];
      if (p < 0 || static_cast<size_t>(p) >= rows.size() || rows[static_cast<size_t>(p)] != nullptr) return;
      rows[static_cast<size_t>(p)] = reinterpret_cast<const float*>(codes + j * lists->code_size);
    }
  }
  if (std::find(rows.begin(), rows.end(), nullptr) != rows.end()) return;
  list_rows_ = std::move(rows);
  list_rows_ready_.store(true, std::memory_order_release);
}

const float* Segment::FloatBaseLocked() const {
  if (!FloatsHeldLocked()) return nullptr;
  return static_cast<const faiss::IndexFlat*>(FlatStorage())->get_xb();
}

bool Segment::ScoresAreExact() const {
  return type_ == IndexType::kFlat || type_ == IndexType::kIvfFlat || type_ == IndexType::kHnsw;
}

bool Segment::CanMoveVectorsToFile() const {
  if (!WalksOnCodes() || vector_file_.load() != nullptr) return false;  // a file: ReleaseVectors
  std::shared_lock lock(mu_);
  return frozen_ && !ids_.empty() && FloatsHeldLocked();
}

absl::Status Segment::MoveVectorsToFile(const std::string& path) {
  if (!CanMoveVectorsToFile()) {
    return absl::FailedPreconditionError("only a frozen HNSW segment that walks on int8 codes and holds its "
                                         "vectors moves them to a file");
  }
  // Written while searches go on (the segment is frozen: nothing adds).
  std::optional<Int8Codes> fit;
  size_t n;
  {
    std::shared_lock lock(mu_);
    n = ids_.size();
    const float* xb = static_cast<const faiss::IndexFlat*>(FlatStorage())->get_xb();
    CAIRN_RETURN_IF_ERROR(VectorFile::Write(path, dim_, xb, n));
    if (codes_ == nullptr) {
      // The codes' grid, from the floats while they are here.
      fit.emplace(dim_);
      fit->Fit(xb, n);
    }
  }
  CAIRN_ASSIGN_OR_RETURN(auto file, VectorFile::Open(path, dim_, n));
  std::vector<uint8_t> floats;  // freed once the lock is let go
  {
    std::unique_lock lock(mu_);
    auto* flat = static_cast<faiss::IndexFlat*>(static_cast<faiss::IndexHNSW*>(index_.get())->storage);
    floats.swap(flat->codes);
    flat->ntotal = 0;
    vector_file_.store(file);
    vectors_on_disk_.store(true, std::memory_order_release);
  }
  std::vector<uint8_t>().swap(floats);  // given back (assigning {} would keep the capacity)
  if (!fit) return absl::OkStatus();
  // The codes from the file, a chunk at a time: the floats and the codes
  // are never held together.
  fit->Allocate(n);
  const size_t rows_per_chunk = std::max<size_t>(1, kCodeChunkBytes / (sizeof(float) * dim_));
  std::vector<float> chunk;
  for (size_t first = 0; first < n; first += rows_per_chunk) {
    const size_t count = std::min(rows_per_chunk, n - first);
    chunk.resize(count * dim_);
    CAIRN_RETURN_IF_ERROR(file->ReadRange(first, count, chunk.data()));
    fit->Encode(first, chunk.data(), count);
  }
  auto codes = std::make_shared<const Int8Codes>(*std::move(fit));
  std::unique_lock lock(mu_);
  codes_ = std::move(codes);
  return absl::OkStatus();
}

uint64_t Segment::FileVectorBytes() const {
  if (!WalksOnCodes() || vector_file_.load() == nullptr || load_failed_.load()) return 0;
  std::shared_lock lock(mu_);
  if (!vectors_on_disk_.load() || codes_ == nullptr) return 0;
  return uint64_t{ids_.size()} * dim_ * sizeof(float);
}

absl::Status Segment::LoadVectorsFromFile() {
  if (FileVectorBytes() == 0) {
    return absl::FailedPreconditionError("only an HNSW segment whose floats are in its vector file loads them");
  }
  const std::shared_ptr<const VectorFile> file = vector_file_.load();
  const size_t n = file->rows();
  std::vector<uint8_t> floats(n * dim_ * sizeof(float));
  const size_t rows_per_chunk = std::max<size_t>(1, kCodeChunkBytes / (sizeof(float) * dim_));
  for (size_t first = 0; first < n; first += rows_per_chunk) {
    absl::Status read = file->ReadRange(first, std::min(rows_per_chunk, n - first),
                                        reinterpret_cast<float*>(floats.data()) + first * dim_);
    if (!read.ok()) {
      load_failed_.store(true);  // not tried again: the file serves its good rows, storage the rest
      return read;
    }
  }
  std::unique_lock lock(mu_);
  if (!vectors_on_disk_.load() || vector_file_.load() != file) return absl::OkStatus();  // raced: nothing to do
  auto* flat = static_cast<faiss::IndexFlat*>(static_cast<faiss::IndexHNSW*>(index_.get())->storage);
  flat->codes.swap(floats);
  flat->ntotal = static_cast<idx_t>(n);
  vectors_on_disk_.store(false, std::memory_order_release);
  return absl::OkStatus();
}

uint64_t Segment::ReleaseVectors() {
  if (!WalksOnCodes() || vector_file_.load() == nullptr) return 0;
  std::vector<uint8_t> floats;  // freed once the lock is let go
  {
    std::unique_lock lock(mu_);
    if (vectors_on_disk_.load() || codes_ == nullptr || !frozen_ || !FloatsHeldLocked()) return 0;
    auto* flat = static_cast<faiss::IndexFlat*>(static_cast<faiss::IndexHNSW*>(index_.get())->storage);
    floats.swap(flat->codes);
    flat->ntotal = 0;
    vectors_on_disk_.store(true, std::memory_order_release);
  }
  const uint64_t freed = floats.size();
  std::vector<uint8_t>().swap(floats);
  return freed;
}

void Segment::CopyVectors(absl::Span<const uint64_t> sorted_ids, float* out, std::vector<bool>* found) const {
  std::shared_lock lock(mu_);
  const float* base = FloatBaseLocked();
  if (base == nullptr && list_rows_.empty()) return;
  size_t p = 0;
  for (size_t i = 0; i < sorted_ids.size() && p < ids_.size(); ++i) {
    const uint64_t id = sorted_ids[i];
    if (id < ids_[p]) continue;
    if (ids_[p] != id) p = ids_.LowerBound(id);
    if (p == ids_.size() || ids_[p] != id) continue;
    std::memcpy(out + i * dim_, RowLocked(p, base), dim_ * sizeof(float));
    (*found)[i] = true;
  }
}

absl::Status Segment::SearchExact(const float* queries, size_t nq,
                                  const SegmentSearchParams& params, float* scores,
                                  int64_t* ids) const {
  const faiss::Index* flat = FlatStorage();
  std::shared_lock lock(mu_);
  if (flat == nullptr || !FloatsHeldLocked()) {
    return absl::UnimplementedError("segment does not keep full-precision vectors in memory");
  }
  const size_t k = static_cast<size_t>(params.k);
  float worst = metric_ == Metric::kL2 ? INFINITY : -INFINITY;
  std::fill(scores, scores + nq * k, worst);
  std::fill(ids, ids + nq * k, kNoId);
  if (ids_.empty()) return absl::OkStatus();
  PositionSelector sel;
  sel.deleted = num_deleted_ > 0 ? &deleted_ : nullptr;
  sel.allowed = params.allowed;
  faiss::SearchParameters sp;
  sp.sel = (sel.deleted || sel.allowed) ? &sel : nullptr;
  std::vector<idx_t> labels(nq * k);
  OmpThreads omp(1);
  CAIRN_RETURN_IF_ERROR(CatchFaiss("exact search", [&] {
    flat->search(static_cast<idx_t>(nq), queries, static_cast<idx_t>(k), scores, labels.data(),
                 &sp);
  }));
  LabelsToIds(labels, worst, scores, ids);
  return absl::OkStatus();
}

bool Segment::ScoreIds(const float* query, absl::Span<const uint64_t> ids,
                       std::vector<std::pair<float, uint64_t>>* out) const {
  std::shared_lock lock(mu_);
  const float* base = FloatBaseLocked();
  if (base == nullptr && list_rows_.empty()) return false;
  if (ids_.empty()) return true;
  out->reserve(out->size() + ids.size());
  // `ids` ascend, like ids_: walk both once (position = id - first when the
  // segment's ids have no gaps) instead of a binary search per id.
  const uint64_t first = ids_.front();
  const bool dense = ids_.back() - first + 1 == ids_.size();
  size_t p = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint64_t id = ids[i];
    if (dense) {
      if (id < first || id - first >= ids_.size()) continue;
      p = static_cast<size_t>(id - first);
    } else {
      while (p < ids_.size() && ids_[p] < id) ++p;
      if (p == ids_.size()) break;
      if (ids_[p] != id) continue;
    }
    if ((deleted_[p >> 6] >> (p & 63)) & 1) continue;
    if (dense && i + 1 < ids.size() && ids[i + 1] >= first && ids[i + 1] - first < ids_.size()) {
      __builtin_prefetch(RowLocked(static_cast<size_t>(ids[i + 1] - first), base));
    }
    out->emplace_back(Score(metric_, query, RowLocked(p, base), dim_), id);
  }
  return true;
}

std::optional<size_t> Segment::PositionOfLocked(uint64_t id) const {
  const size_t p = ids_.LowerBound(id);
  if (p == ids_.size() || ids_[p] != id) return std::nullopt;
  return p;
}

void Segment::PositionsOf(absl::Span<const uint64_t> sorted_ids, PositionSet* out) const {
  std::shared_lock lock(mu_);
  out->Resize(ids_.size());
  if (ids_.empty()) return;
  const uint64_t first = ids_.front(), last = ids_.back();
  if (last - first + 1 == ids_.size()) {  // no gaps: position = id - first
    for (uint64_t id : sorted_ids) {
      if (id >= first && id <= last) out->Set(id - first);
    }
    return;
  }
  size_t p = 0;
  for (uint64_t id : sorted_ids) {
    while (p < ids_.size() && ids_[p] < id) ++p;
    if (p == ids_.size()) break;
    if (ids_[p] == id) out->Set(p);
  }
}

std::optional<size_t> Segment::PositionOf(uint64_t id) const {
  std::shared_lock lock(mu_);
  return PositionOfLocked(id);
}

bool Segment::MarkDeleted(uint64_t id) {
  std::unique_lock lock(mu_);
  auto pos = PositionOfLocked(id);
  if (!pos) return false;
  uint64_t bit = uint64_t{1} << (*pos & 63);
  if (deleted_[*pos >> 6] & bit) return false;
  deleted_[*pos >> 6] |= bit;
  ++num_deleted_;
  return true;
}

bool Segment::IsLive(uint64_t id) const {
  std::shared_lock lock(mu_);
  auto pos = PositionOfLocked(id);
  return pos && !((deleted_[*pos >> 6] >> (*pos & 63)) & 1);
}

void Segment::AttachVectorFile(std::shared_ptr<const VectorFile> file) {
  std::shared_lock lock(mu_);
  if (file->rows() != ids_.size() || !frozen_) {
    std::fprintf(stderr, "cairn: FATAL: vector file %s has %llu rows for a%s segment of %zu points\n",
                 file->path().c_str(), static_cast<unsigned long long>(file->rows()), frozen_ ? "" : " growing",
                 ids_.size());
    std::abort();
  }
  vector_file_.store(std::move(file));
}

absl::Status Segment::ReadVectors(absl::Span<const uint64_t> ids, float* out, std::vector<bool>* found) const {
  const auto file = vector_file_.load();
  if (file == nullptr) return absl::OkStatus();
  std::vector<uint64_t> rows;
  std::vector<size_t> at;
  {
    std::shared_lock lock(mu_);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (auto p = PositionOfLocked(ids[i])) {
        rows.push_back(*p);
        at.push_back(i);
      }
    }
  }
  if (rows.empty()) return absl::OkStatus();
  std::vector<float> vecs(rows.size() * dim_);
  std::vector<bool> ok(rows.size(), false);
  CAIRN_RETURN_IF_ERROR(file->Read(rows, vecs.data(), &ok));
  for (size_t j = 0; j < rows.size(); ++j) {
    if (!ok[j]) continue;
    std::memcpy(out + at[j] * dim_, &vecs[j * dim_], size_t{dim_} * sizeof(float));
    (*found)[at[j]] = true;
  }
  return absl::OkStatus();
}

std::vector<uint64_t> Segment::Ids() const {
  std::shared_lock lock(mu_);
  return ids_.ToVector();
}

size_t Segment::size() const {
  std::shared_lock lock(mu_);
  return ids_.size();
}

size_t Segment::num_deleted() const {
  std::shared_lock lock(mu_);
  return num_deleted_;
}

uint64_t Segment::min_id() const {
  std::shared_lock lock(mu_);
  return ids_.empty() ? 0 : ids_.front();
}

uint64_t Segment::max_id() const {
  std::shared_lock lock(mu_);
  return ids_.empty() ? 0 : ids_.back();
}

uint64_t Segment::MemoryBytes() const {
  std::shared_lock lock(mu_);
  uint64_t bytes = ids_.MemoryBytes() + deleted_.size() * 8 + list_rows_.capacity() * sizeof(const float*);
  if (auto* h = dynamic_cast<const faiss::IndexHNSW*>(index_.get())) {
    bytes += h->hnsw.neighbors.size() * sizeof(faiss::HNSW::storage_idx_t) +
             h->hnsw.offsets.size() * sizeof(size_t) + h->hnsw.levels.size() * sizeof(int) +
             static_cast<uint64_t>(h->storage->ntotal) * h->storage->sa_code_size();
    if (codes_) bytes += codes_->MemoryBytes();
  } else if (auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index_.get())) {
    // The lists' codes and ids, the coarse centroids, and the quantizer's
    // own tables: PQ codebooks and, for L2, the precomputed distance tables
    // (nlist x M x ksub floats, often more than the codes), SQ ranges.
    const auto* compact = dynamic_cast<const CompactInvertedLists*>(ivf->invlists);
    bytes += (compact != nullptr ? compact->MemoryBytes()
                                 : static_cast<uint64_t>(ivf->ntotal) * (ivf->code_size + sizeof(idx_t))) +
             static_cast<uint64_t>(ivf->nlist) * dim_ * sizeof(float);
    if (auto* pq = dynamic_cast<const faiss::IndexIVFPQ*>(ivf)) {
      bytes += (pq->pq.centroids.size() + pq->precomputed_table.size()) * sizeof(float);
    } else if (auto* sq = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(ivf)) {
      bytes += sq->sq.trained.size() * sizeof(float);
    }
  } else {
    bytes += static_cast<uint64_t>(index_->ntotal) * dim_ * sizeof(float);
  }
  return bytes;
}

// File layout (little-endian):
//   "CAIRNSEG" u32 format u32 dim u32 metric u32 type u64 n  u64 ids[n]
//   u64 faiss_len  faiss_bytes[faiss_len]
//   u64 meta_len  meta[meta_len]  codes[n x stride when meta_len > 0]
//   u32 crc32(all of the above)
// The codes part (format 2): Int8Codes::Meta and the codes, for an HNSW
// segment whose floats are in its vector file (its FAISS storage is empty).
namespace {

// Streams FAISS's serialization into a file, with a running CRC.
class StreamWriter final : public faiss::IOWriter {
 public:
  explicit StreamWriter(storage::SyncedFile* f) : f_(f) {}
  size_t operator()(const void* ptr, size_t size, size_t nitems) override {
    std::string_view chunk(static_cast<const char*>(ptr), size * nitems);
    if (!status_.ok()) return 0;
    status_ = f_->Append(chunk);
    if (!status_.ok()) return 0;
    crc_ = storage::Crc32(chunk, crc_);
    bytes_ += chunk.size();
    return nitems;
  }
  const absl::Status& status() const { return status_; }
  uint32_t crc() const { return crc_; }
  uint64_t bytes() const { return bytes_; }

 private:
  storage::SyncedFile* f_;
  absl::Status status_;
  uint32_t crc_ = 0;
  uint64_t bytes_ = 0;
};

// Streams bytes [begin, end) of a file to FAISS's reader, a buffer at a time.
class FileStreamReader final : public faiss::IOReader {
 public:
  FileStreamReader(const storage::ReadOnlyFile& f, uint64_t begin, uint64_t end) : f_(f), at_(begin), end_(end) {}
  size_t operator()(void* ptr, size_t size, size_t nitems) override {
    char* out = static_cast<char*>(ptr);
    const size_t want = size * nitems;
    if (want == 0) return nitems;
    size_t done = 0;
    while (done < want && status_.ok()) {
      if (pos_ < buf_.size()) {
        const size_t take = std::min(want - done, buf_.size() - pos_);
        std::memcpy(out + done, buf_.data() + pos_, take);
        pos_ += take;
        done += take;
        continue;
      }
      const uint64_t left = end_ - at_;
      if (left == 0) break;
      if (want - done >= kBuffer) {  // large arrays go straight to their place
        const size_t n = static_cast<size_t>(std::min<uint64_t>(want - done, left));
        status_ = f_.ReadAt(at_, out + done, n);
        at_ += n;
        done += n;
        continue;
      }
      buf_.resize(static_cast<size_t>(std::min<uint64_t>(kBuffer, left)));
      status_ = f_.ReadAt(at_, buf_.data(), buf_.size());
      at_ += buf_.size();
      pos_ = 0;
    }
    return status_.ok() ? done / size : 0;
  }
  const absl::Status& status() const { return status_; }

 private:
  static constexpr size_t kBuffer = 1 << 20;
  const storage::ReadOnlyFile& f_;
  uint64_t at_, end_;
  std::string buf_;
  size_t pos_ = 0;
  absl::Status status_;
};

}  // namespace

absl::Status Segment::Save(const std::string& path, SavedExtent* extent) const {
  // Layout: header (magic, format, dim, metric, type, count, ids, index
  // size), the FAISS index, CRC32 of everything before it. The index is
  // streamed after a placeholder header, which is filled in once its size is
  // known; the CRCs of the two parts are combined.
  {
    std::shared_lock lock(mu_);
    if (vectors_on_disk_.load() && codes_ == nullptr) {
      return absl::FailedPreconditionError("an HNSW segment is saved once its codes are derived");
    }
    if (!vectors_on_disk_.load() && vector_file_.load() != nullptr && WalksOnCodes()) {
      return absl::FailedPreconditionError("an HNSW segment whose floats have a file is saved without them "
                                           "(ReleaseVectors first)");
    }
  }
  // Read back only by a later open (the index is in memory): around the
  // page cache.
  CAIRN_ASSIGN_OR_RETURN(auto file, storage::SyncedFile::Create(path, storage::SyncedFile::Cache::kBypass));
  std::string header;
  uint64_t faiss_bytes = 0;
  StreamWriter writer(file.get());
  {
    // Held while the segment is read, not during the fsync: a growing
    // segment's Add waits only for the copy into the page cache.
    std::shared_lock lock(mu_);
    header.reserve(64 + ids_.size() * 8);
    header.append(kMagic, sizeof(kMagic));
    PutU32(&header, kSegmentFormat);
    PutU32(&header, dim_);
    PutU32(&header, static_cast<uint32_t>(metric_));
    PutU32(&header, static_cast<uint32_t>(type_));
    PutU64(&header, ids_.size());
    for (size_t p = 0; p < ids_.size(); ++p) PutU64(&header, ids_[p]);
    PutU64(&header, 0);  // the index's size, filled in below
    CAIRN_RETURN_IF_ERROR(file->Append(header));
    absl::Status written = CatchFaiss("write", [&] { faiss::write_index(index_.get(), &writer); });
    CAIRN_RETURN_IF_ERROR(writer.status());  // the cause, when the file write failed
    CAIRN_RETURN_IF_ERROR(written);
    faiss_bytes = writer.bytes();
    std::string meta;
    if (vectors_on_disk_.load()) meta = codes_->Meta();
    std::string len;
    PutU64(&len, meta.size());
    writer(len.data(), 1, len.size());
    writer(meta.data(), 1, meta.size());
    if (!meta.empty()) writer(codes_->data(), 1, codes_->size() * codes_->stride());
    CAIRN_RETURN_IF_ERROR(writer.status());
    if (extent != nullptr) *extent = {ids_.size(), ids_.empty() ? 0 : ids_.back()};
  }
  const size_t size_at = header.size() - 8;
  header.resize(size_at);
  PutU64(&header, faiss_bytes);
  CAIRN_RETURN_IF_ERROR(file->WriteAt(size_at, std::string_view(header).substr(size_at)));
  std::string crc;
  PutU32(&crc, storage::Crc32Combine(storage::Crc32(header), writer.crc(), writer.bytes()));
  CAIRN_RETURN_IF_ERROR(file->Append(crc));
  return file->Close();
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::Read(const std::string& path,
                                                       const IndexSpec* defaults) {
  // Read in pieces: the checksum of the whole file first (nothing is parsed
  // before it matches, so a damaged size cannot ask for a huge allocation),
  // then the parts, the index streamed into FAISS. Opening a segment holds
  // its index once, not the file's bytes beside it.
  CAIRN_ASSIGN_OR_RETURN(auto file, storage::ReadOnlyFile::Open(path));
  auto corrupt = [&](std::string_view why) {
    return absl::DataLossError(absl::StrCat("segment file ", path, " is corrupt: ", std::string(why)));
  };
  // magic, format, dim, metric, type, count; then the ids, the index's
  // size, the index and the CRC.
  constexpr size_t kFixed = sizeof(kMagic) + 4 * 4 + 8;
  const uint64_t size = file->size();
  if (size < kFixed + 8 + 4) return corrupt("truncated header");
  char head[kFixed];
  CAIRN_RETURN_IF_ERROR(file->ReadAt(0, head, kFixed));
  if (std::memcmp(head, kMagic, sizeof(kMagic)) != 0) return corrupt("bad magic");
  uint32_t stored_crc;
  CAIRN_RETURN_IF_ERROR(file->ReadAt(size - 4, &stored_crc, 4));
  CAIRN_ASSIGN_OR_RETURN(uint32_t crc, file->Crc32Of(size - 4));
  if (crc != stored_crc) return corrupt("checksum mismatch");
  size_t off = sizeof(kMagic);
  auto u32 = [&] {
    uint32_t v;
    std::memcpy(&v, head + off, 4);
    off += 4;
    return v;
  };
  uint32_t format = u32();
  if (format != kSegmentFormat && format != kSegmentFormatNoCodes) {
    return absl::FailedPreconditionError(absl::StrCat(
        "segment file ", path, " has format ", format, "; this build reads ", kSegmentFormat));
  }
  uint32_t dim = u32();
  uint32_t metric = u32();
  uint32_t type = u32();
  uint64_t n;
  std::memcpy(&n, head + off, 8);
  off += 8;
  if (metric > 2 || type > 5) return corrupt("bad metric or type");
  if (n > (size - off) / 8) return corrupt("id count past end");
  std::vector<uint64_t> ids(n);
  CAIRN_RETURN_IF_ERROR(file->ReadAt(off, ids.data(), n * 8));
  off += n * 8;
  if (size - off < 12) return corrupt("truncated index");
  uint64_t flen;
  CAIRN_RETURN_IF_ERROR(file->ReadAt(off, &flen, 8));
  off += 8;
  if (format == kSegmentFormatNoCodes ? flen != size - off - 4 : flen > size - off - 4 - 8) {
    return corrupt("index length mismatch");
  }
  FileStreamReader reader(*file, off, off + flen);
  std::unique_ptr<faiss::Index> idx;
  absl::Status parsed = CatchFaiss("read", [&] { idx.reset(faiss::read_index(&reader, faiss::IO_FLAG_SKIP_PRECOMPUTE_TABLE)); });
  CAIRN_RETURN_IF_ERROR(reader.status());  // the cause, when the file read failed
  CAIRN_RETURN_IF_ERROR(parsed);
  if (static_cast<uint64_t>(idx->ntotal) != n || idx->d != static_cast<int>(dim)) {
    return corrupt("index does not match its id list");
  }
  std::optional<Int8Codes> codes;
  if (format != kSegmentFormatNoCodes) {
    off += flen;
    uint64_t mlen;
    CAIRN_RETURN_IF_ERROR(file->ReadAt(off, &mlen, 8));
    off += 8;
    if (mlen > size - off - 4) return corrupt("codes length past end");
    if (mlen == 0) {
      if (off != size - 4) return corrupt("bytes after the index");
    } else {
      std::string meta(mlen, '\0');
      CAIRN_RETURN_IF_ERROR(file->ReadAt(off, meta.data(), mlen));
      off += mlen;
      auto c = Int8Codes::FromMeta(meta, n);
      if (!c.ok() || c->dim() != dim) return corrupt("bad int8 code grid");
      if (c->size() * c->stride() != size - off - 4) return corrupt("codes length mismatch");
      CAIRN_RETURN_IF_ERROR(file->ReadAt(off, c->mutable_data(), c->size() * c->stride()));
      codes = *std::move(c);
    }
  }
  // An HNSW segment without floats needs its codes, and only it has them.
  const auto* hnsw_read = dynamic_cast<const faiss::IndexHNSW*>(idx.get());
  const bool floatless = hnsw_read != nullptr && dynamic_cast<const faiss::IndexFlat*>(hnsw_read->storage) != nullptr &&
                         hnsw_read->storage->ntotal != idx->ntotal;
  if (floatless != codes.has_value() || (floatless && (type != static_cast<uint32_t>(IndexType::kHnsw) ||
                                                       hnsw_read->storage->ntotal != 0))) {
    return corrupt("vectors and codes do not match");
  }
  if (auto* h = dynamic_cast<faiss::IndexHNSW*>(idx.get())) UseFastStorage(h);
  if (auto* f = dynamic_cast<faiss::IndexFlat*>(idx.get())) idx = ToFastFlat(f);
  if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(idx.get())) UseFastQuantizer(ivf);
  IndexSpec spec = defaults ? *defaults : IndexSpec();
  spec.type = static_cast<IndexType>(type);
  if (auto* h = dynamic_cast<faiss::IndexHNSW*>(idx.get())) {
    // The saved efSearch may have been raised by searches (see Search).
    if (!defaults) spec.ef_search = h->hnsw.efSearch;
    h->hnsw.efSearch = spec.ef_search;
  }
  if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(idx.get())) {
    if (!defaults) spec.nprobe = static_cast<int>(ivf->nprobe);
    spec.nlist = static_cast<int>(ivf->nlist);
  }
  auto seg = std::unique_ptr<Segment>(
      new Segment(dim, static_cast<Metric>(metric), spec.type, spec, std::move(idx)));
  seg->ids_.Assign(ids.data(), ids.size());
  seg->deleted_.assign((n + 63) / 64, 0);
  if (codes) {
    seg->codes_ = std::make_shared<const Int8Codes>(*std::move(codes));
    seg->vectors_on_disk_.store(true, std::memory_order_release);
  }
  return seg;
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::Load(const std::string& path,
                                                       const IndexSpec* defaults) {
  CAIRN_ASSIGN_OR_RETURN(auto seg, Read(path, defaults));
  seg->frozen_ = true;
  FitIvfIndex(seg->index_.get(), seg->type_, seg->spec_.pq_tables, true);
  seg->MapListRows();
  seg->BuildSearchCodes();
  return seg;
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::LoadGrowing(const std::string& path, uint32_t dim,
                                                              Metric metric, const IndexSpec& spec) {
  CAIRN_ASSIGN_OR_RETURN(auto seg, Read(path, &spec));
  if (seg->dim_ != dim || seg->metric_ != metric || seg->vectors_on_disk_.load() ||
      (seg->type_ != GrowingType(spec) && !(IsIvf(spec.type) && seg->type_ == spec.type))) {
    return absl::DataLossError(absl::StrCat("segment file ", path, " (dimension ", seg->dim_,
                                            ") is not a growing segment of this collection"));
  }
  return seg;
}

}  // namespace cairn::index
