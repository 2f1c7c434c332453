// GPU tests: every GPU result is compared with a CPU reference (float64
// brute force, FAISS's k-means, the CPU IVF-Flat of Segment). Without a
// usable GPU they skip with the reason, except the tests of the fallback
// itself, which run everywhere.
//
// CAIRN_TEST_SEED replays a run's random data.
#include "index/gpu/gpu.h"

#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/impl/ProductQuantizer.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "index/segment.h"

namespace cairn::index::gpu {
namespace {

uint64_t TestSeed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("CAIRN_TEST_SEED");
    uint64_t s = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
    std::cout << "[ seed     ] CAIRN_TEST_SEED=" << s << std::endl;
    return s;
  }();
  return seed;
}

#define SKIP_WITHOUT_GPU()                                                                   \
  do {                                                                                       \
    if (!ProcessDevice().ok()) GTEST_SKIP() << "no usable GPU: " << ProcessDevice().status(); \
  } while (0)

// n points around `clusters` random centers in [-1, 1]^dim.
std::vector<float> Clustered(size_t n, uint32_t dim, std::mt19937_64& rng, int clusters = 50) {
  std::uniform_real_distribution<float> u(-1, 1);
  std::normal_distribution<float> noise(0, 0.2f);
  std::vector<float> centers(static_cast<size_t>(clusters) * dim);
  for (auto& c : centers) c = u(rng);
  std::vector<float> x(n * dim);
  for (size_t i = 0; i < n; ++i) {
    const size_t c = rng() % clusters;
    for (uint32_t j = 0; j < dim; ++j) x[i * dim + j] = centers[c * dim + j] + noise(rng);
  }
  return x;
}

void Normalize(std::vector<float>* x, uint32_t dim) { PrepareVectors(Metric::kCosine, x->data(), x->size() / dim, dim); }

// Lower is better, in float64.
double RefDistance(Metric m, const float* a, const float* b, uint32_t dim) {
  double s = 0;
  for (uint32_t j = 0; j < dim; ++j) {
    s += m == Metric::kL2 ? (double(a[j]) - b[j]) * (double(a[j]) - b[j]) : -double(a[j]) * b[j];
  }
  return s;
}

// Checks GPU results (scores in the metric's convention) against float64
// brute force: the score at every rank matches the reference's within `tol`
// relative, every returned label is allowed, distinct and truly that close,
// and slots are empty exactly when fewer than k points are allowed. Labels
// may differ from the reference only between exact ties.
void ExpectExact(Metric m, const std::vector<float>& base, const std::vector<float>& queries, uint32_t dim,
                 int k, const PositionSet* allowed, const std::vector<float>& scores,
                 const std::vector<int64_t>& labels, double tol = 2e-4) {
  const size_t n = base.size() / dim, nq = queries.size() / dim;
  int failures = 0;
  for (size_t q = 0; q < nq && failures < 5; ++q) {
    std::vector<std::pair<double, int64_t>> ref;
    for (size_t i = 0; i < n; ++i) {
      if (allowed != nullptr && !allowed->Test(i)) continue;
      ref.emplace_back(RefDistance(m, &queries[q * dim], &base[i * dim], dim), static_cast<int64_t>(i));
    }
    std::sort(ref.begin(), ref.end());
    std::set<int64_t> seen;
    for (int j = 0; j < k; ++j) {
      const float got = scores[q * k + j];
      const int64_t label = labels[q * k + j];
      if (static_cast<size_t>(j) >= ref.size()) {
        EXPECT_EQ(label, kNoId) << "query " << q << " rank " << j;
        continue;
      }
      const double want = ref[j].first;
      const double got_lower = m == Metric::kL2 ? got : -double(got);
      const double scale = std::max(1.0, std::abs(want));
      bool ok = label >= 0 && static_cast<size_t>(label) < n && seen.insert(label).second &&
                std::abs(got_lower - want) <= tol * scale &&
                std::abs(RefDistance(m, &queries[q * dim], &base[label * dim], dim) - want) <= tol * scale &&
                (allowed == nullptr || allowed->Test(static_cast<size_t>(label)));
      if (!ok) {
        ADD_FAILURE() << "query " << q << " rank " << j << ": got label " << label << " score " << got
                      << ", reference label " << ref[j].second << " distance " << want;
        ++failures;
        break;
      }
    }
  }
}

TEST(GpuDeviceTest, PathIsChosenAndExplained) {
  std::string why;
  EXPECT_FALSE(UseGpu(Device::kCpu, &why));
  const bool present = ProcessDevice().ok();
  EXPECT_EQ(UseGpu(Device::kAuto), present);
  EXPECT_EQ(UseGpu(Device::kGpu, &why), present);
  if (!present) {
    EXPECT_FALSE(why.empty());
    EXPECT_EQ(ProcessDevice().status().code(), absl::StatusCode::kUnavailable);
    std::vector<float> x(64, 1.0f);
    auto idx = ExactIndex::Create(x.data(), 8, 8, Metric::kL2, {});
    EXPECT_EQ(idx.status().code(), absl::StatusCode::kUnavailable);
    std::vector<float> c(8);
    EXPECT_EQ(TrainKMeans(x.data(), 8, 8, 1, Metric::kL2, {}, c.data()).status().code(),
              absl::StatusCode::kUnavailable);
    std::cout << "CPU path: " << why << std::endl;
  } else {
    std::cout << "GPU path: " << Describe(*ProcessDevice()) << std::endl;
  }
}

struct ExactCase {
  Metric metric;
  int k;
  size_t max_batch;
  size_t max_chunk;
  bool streaming;
  bool filtered;
  size_t merge_every = 0;
};

class GpuExactTest : public ::testing::TestWithParam<ExactCase> {};

TEST_P(GpuExactTest, MatchesFloat64BruteForce) {
  SKIP_WITHOUT_GPU();
  const ExactCase& c = GetParam();
  std::mt19937_64 rng(TestSeed());
  const uint32_t dim = 100;
  const size_t n = 20011, nq = 37;
  auto base = Clustered(n, dim, rng);
  auto queries = Clustered(nq, dim, rng);
  if (c.metric == Metric::kCosine) {
    Normalize(&base, dim);
    Normalize(&queries, dim);
  }
  ExactOptions o;
  o.max_batch = c.max_batch;
  o.max_chunk = c.max_chunk;
  o.force_streaming = c.streaming;
  o.merge_every = c.merge_every;
  auto idx = ExactIndex::Create(base.data(), n, dim, c.metric, o);
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ((*idx)->resident(), !c.streaming);
  PositionSet allowed;
  if (c.filtered) {
    allowed.Resize(n - 7);  // shorter than the base: the tail is not allowed
    for (size_t i = 0; i + 7 < n; ++i) {
      if (rng() % 50 == 0) allowed.Set(i);
    }
  }
  std::vector<float> scores(nq * c.k, 12345.0f);
  std::vector<int64_t> labels(nq * c.k, 777);
  ASSERT_TRUE((*idx)->Search(queries.data(), nq, c.k, c.filtered ? &allowed : nullptr, scores.data(),
                             labels.data())
                  .ok());
  ExpectExact(c.metric, base, queries, dim, c.k, c.filtered ? &allowed : nullptr, scores, labels);
}

INSTANTIATE_TEST_SUITE_P(
    Paths, GpuExactTest,
    ::testing::Values(ExactCase{Metric::kL2, 10, 4096, 0, false, false},
                      ExactCase{Metric::kInnerProduct, 10, 4096, 0, false, false},
                      ExactCase{Metric::kCosine, 100, 4096, 0, false, false},
                      ExactCase{Metric::kL2, 1, 4096, 0, false, false},
                      ExactCase{Metric::kL2, 1024, 4096, 0, false, false},
                      // several chunks and a merge; two lanes of small batches
                      ExactCase{Metric::kL2, 64, 5, 3000, false, false},
                      ExactCase{Metric::kInnerProduct, 10, 8, 1500, true, false},
                      // a running top-k merged with two chunks at a time
                      ExactCase{Metric::kL2, 100, 37, 1000, false, false, 2},
                      ExactCase{Metric::kCosine, 10, 3, 700, true, true, 3},
                      // a 2% allow-list; k above what is allowed pads with empties
                      ExactCase{Metric::kL2, 10, 4096, 0, false, true},
                      ExactCase{Metric::kL2, 1000, 16, 4000, false, true}));

TEST(GpuExactHalfTest, HalfPrecisionStorageKeepsRecall) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(TestSeed());
  const uint32_t dim = 128;
  const size_t n = 30000, nq = 100;
  const int k = 10;
  auto base = Clustered(n, dim, rng, 200);
  auto queries = Clustered(nq, dim, rng, 200);
  auto exact = ExactIndex::Create(base.data(), n, dim, Metric::kL2, {});
  ASSERT_TRUE(exact.ok()) << exact.status();
  std::vector<float> s0(nq * k), s1(nq * k);
  std::vector<int64_t> l0(nq * k), l1(nq * k);
  ASSERT_TRUE((*exact)->Search(queries.data(), nq, k, nullptr, s0.data(), l0.data()).ok());
  for (VectorStorage st : {VectorStorage::kFloat16, VectorStorage::kBFloat16}) {
    ExactOptions o;
    o.storage = st;
    auto half = ExactIndex::Create(base.data(), n, dim, Metric::kL2, o);
    ASSERT_TRUE(half.ok()) << half.status();
    ASSERT_TRUE((*half)->Search(queries.data(), nq, k, nullptr, s1.data(), l1.data()).ok());
    size_t hits = 0;
    for (size_t q = 0; q < nq; ++q) {
      std::set<int64_t> truth(l0.begin() + q * k, l0.begin() + (q + 1) * k);
      for (int j = 0; j < k; ++j) hits += truth.count(l1[q * k + j]);
    }
    const double recall = double(hits) / (nq * k);
    std::cout << "storage " << static_cast<int>(st) << " recall@10 " << recall << std::endl;
    EXPECT_GE(recall, st == VectorStorage::kFloat16 ? 0.97 : 0.90);
  }
}

TEST(GpuExactTest, BudgetTooSmallIsResourceExhausted) {
  SKIP_WITHOUT_GPU();
  std::vector<float> x(1000 * 16, 0.5f);
  ExactOptions o;
  o.memory_budget = 1 << 20;
  auto idx = ExactIndex::Create(x.data(), 1000, 16, Metric::kL2, o);
  EXPECT_EQ(idx.status().code(), absl::StatusCode::kResourceExhausted) << idx.status();
}

TEST(GpuKMeansTest, ObjectiveMatchesFaissCpu) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(TestSeed());
  const uint32_t dim = 64;
  const size_t n = 50000, k = 256;
  auto x = Clustered(n, dim, rng, 300);
  std::vector<float> gpu_c(k * dim);
  KMeansOptions o;
  o.iterations = 20;
  o.seed = TestSeed();
  auto rep = TrainKMeans(x.data(), n, dim, k, Metric::kL2, o, gpu_c.data());
  ASSERT_TRUE(rep.ok()) << rep.status();

  faiss::ClusteringParameters cp;
  cp.niter = 20;
  cp.seed = static_cast<int>(TestSeed() & 0x7fffffff);
  cp.max_points_per_centroid = 1 << 20;  // no subsampling: the same points
  faiss::Clustering clus(dim, k, cp);
  faiss::IndexFlatL2 assigner(dim);
  clus.train(n, x.data(), assigner);
  const double cpu_obj = clus.iteration_stats.back().obj;
  std::cout << "k-means objective: GPU " << rep->objective << " FAISS CPU " << cpu_obj << " (" << rep->seconds
            << " s on the GPU, " << rep->empty_splits << " splits)" << std::endl;
  // Different random starts: local optima differ by a few percent at most.
  EXPECT_LE(rep->objective, cpu_obj * 1.05);
  EXPECT_GE(rep->objective, cpu_obj * 0.90);

  // The reported objective is the distance of every point to its nearest
  // returned centroid (the last assignment precedes the last update, so
  // the final centroids can only be as good or better).
  std::vector<int64_t> assign(n);
  ASSERT_TRUE(AssignNearest(x.data(), n, dim, gpu_c.data(), k, Metric::kL2, assign.data()).ok());
  double obj = 0;
  std::vector<size_t> sizes(k);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_GE(assign[i], 0);
    ASSERT_LT(static_cast<size_t>(assign[i]), k);
    const double d = RefDistance(Metric::kL2, &x[i * dim], &gpu_c[assign[i] * dim], dim);
    double best = d;
    for (size_t c = 0; c < k; c += 17) best = std::min(best, RefDistance(Metric::kL2, &x[i * dim], &gpu_c[c * dim], dim));
    ASSERT_LE(d, best * (1 + 1e-4) + 1e-4) << "point " << i << " not assigned to its nearest centroid";
    obj += d;
    ++sizes[assign[i]];
  }
  EXPECT_LE(obj, rep->objective * (1 + 1e-3));
  EXPECT_EQ(std::count(sizes.begin(), sizes.end(), 0u), 0) << "empty clusters after k-means";
}

TEST(GpuPqTest, CodebooksMatchFaissCpuAndCodesAreNearest) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(TestSeed());
  const uint32_t dim = 64;
  const size_t n = 20000, m = 8, ksub = 256, dsub = dim / m;
  auto x = Clustered(n, dim, rng, 100);
  std::vector<float> codebooks(m * ksub * dsub);
  KMeansOptions o;
  o.tf32 = false;
  auto rep = TrainPqCodebooks(x.data(), n, dim, m, ksub, o, codebooks.data());
  ASSERT_TRUE(rep.ok()) << rep.status();
  std::vector<int32_t> codes(n * m);
  ASSERT_TRUE(EncodePq(x.data(), n, dim, m, ksub, codebooks.data(), codes.data()).ok());
  // One encoder, several calls of several passes each: the same codes.
  auto encoder = PqEncoder::Create(dim, m, ksub, codebooks.data(), /*max_rows=*/3000);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  std::vector<int32_t> in_passes(n * m, -1);
  ASSERT_TRUE((*encoder)->Encode(x.data(), 7001, in_passes.data()).ok());
  ASSERT_TRUE((*encoder)->Encode(x.data() + 7001 * dim, n - 7001, in_passes.data() + 7001 * m).ok());
  // Other pass shapes may take other GEMM kernels: codes may differ only
  // between sub-centroids at the same distance (within float rounding).
  size_t differ = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < m; ++j) {
      const int32_t a = codes[i * m + j], b = in_passes[i * m + j];
      ASSERT_GE(b, 0);
      ASSERT_LT(static_cast<size_t>(b), ksub);
      if (a == b) continue;
      ++differ;
      const float* part = &x[i * dim + j * dsub];
      const double da = RefDistance(Metric::kL2, part, &codebooks[(j * ksub + a) * dsub], dsub);
      const double db = RefDistance(Metric::kL2, part, &codebooks[(j * ksub + b) * dsub], dsub);
      ASSERT_NEAR(da, db, 1e-4 * (1 + da)) << "point " << i << " sub-space " << j;
    }
  }
  EXPECT_LE(differ, n * m / 1000) << "codes from several passes differ from one pass's";

  faiss::ProductQuantizer cpu(dim, m, 8);
  cpu.train(static_cast<int>(n), x.data());
  std::vector<uint8_t> cpu_codes(n * cpu.code_size);
  cpu.compute_codes(x.data(), cpu_codes.data(), n);
  double gpu_err = 0, cpu_err = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < m; ++j) {
      const float* part = &x[i * dim + j * dsub];
      const int32_t c = codes[i * m + j];
      ASSERT_GE(c, 0);
      ASSERT_LT(static_cast<size_t>(c), ksub);
      const double d = RefDistance(Metric::kL2, part, &codebooks[(j * ksub + c) * dsub], dsub);
      double best = d;
      for (size_t e = 0; e < ksub; ++e) best = std::min(best, RefDistance(Metric::kL2, part, &codebooks[(j * ksub + e) * dsub], dsub));
      ASSERT_LE(d, best * (1 + 1e-4) + 1e-5) << "point " << i << " sub-space " << j << ": code not the nearest";
      gpu_err += d;
      cpu_err += RefDistance(Metric::kL2, part, cpu.get_centroids(j, cpu_codes[i * m + j]), dsub);
    }
  }
  std::cout << "PQ quantization error: GPU codebooks " << gpu_err / n << ", FAISS CPU " << cpu_err / n << " ("
            << rep->seconds << " s on the GPU for " << m << " sub-spaces)" << std::endl;
  EXPECT_LE(gpu_err, cpu_err * 1.03);
  EXPECT_NEAR(rep->objective, gpu_err, gpu_err * 0.05);  // the last assignment precedes the last update
}

TEST(GpuKMeansTest, InnerProductCentroidsAreNormalized) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(TestSeed());
  const uint32_t dim = 32;
  const size_t n = 8000, k = 64;
  auto x = Clustered(n, dim, rng);
  Normalize(&x, dim);
  std::vector<float> c(k * dim);
  auto rep = TrainKMeans(x.data(), n, dim, k, Metric::kCosine, {}, c.data());
  ASSERT_TRUE(rep.ok()) << rep.status();
  for (size_t i = 0; i < k; ++i) {
    double s = 0;
    for (uint32_t j = 0; j < dim; ++j) s += double(c[i * dim + j]) * c[i * dim + j];
    EXPECT_NEAR(s, 1.0, 1e-4) << "centroid " << i;
  }
  EXPECT_LT(rep->objective, 0);  // minus the sum of dot products
}

TEST(GpuKMeansTest, EmptyClustersAreSplit) {
  SKIP_WITHOUT_GPU();
  // 64 centroids over 8 distinct points, each repeated: most clusters start
  // as duplicates and come out empty on the first assignment.
  const uint32_t dim = 8;
  std::vector<float> x;
  for (int rep = 0; rep < 100; ++rep) {
    for (int p = 0; p < 8; ++p) {
      for (uint32_t j = 0; j < dim; ++j) x.push_back(static_cast<float>((p * 7 + j) % 5));
    }
  }
  std::vector<float> c(64 * dim);
  auto rep = TrainKMeans(x.data(), 800, dim, 64, Metric::kL2, {}, c.data());
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_GT(rep->empty_splits, 0);
  for (float v : c) EXPECT_TRUE(std::isfinite(v));
}

TEST(GpuKMeansTest, TooFewPointsIsInvalidArgument) {
  SKIP_WITHOUT_GPU();
  std::vector<float> x(10 * 4, 1.0f), c(20 * 4);
  EXPECT_EQ(TrainKMeans(x.data(), 10, 4, 20, Metric::kL2, {}, c.data()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// FAISS's CPU IVF-Flat over x, and its lists as the GPU index takes them.
struct CpuIvf {
  CpuIvf(Metric metric, uint32_t dim, size_t nlist, const std::vector<float>& x)
      : quantizer(dim, metric == Metric::kL2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT),
        ivf(&quantizer, dim, nlist, quantizer.metric_type),
        lists(nlist) {
    const auto n = static_cast<faiss::Index::idx_t>(x.size() / dim);
    ivf.train(n, x.data());
    ivf.add(n, x.data());
    for (size_t l = 0; l < nlist; ++l) {
      lists[l].vectors = reinterpret_cast<const float*>(ivf.invlists->get_codes(l));
      lists[l].positions = ivf.invlists->get_ids(l);
      lists[l].size = ivf.invlists->list_size(l);
    }
  }
  faiss::IndexFlat quantizer;
  faiss::IndexIVFFlat ivf;
  std::vector<cuda::IvfList> lists;
};

// Both scans of the probed lists (by query, by list) against the CPU.
class GpuIvfTest : public ::testing::TestWithParam<std::tuple<Metric, cuda::IvfScan>> {};

TEST_P(GpuIvfTest, MatchesTheCpuScanOfTheSameLists) {
  SKIP_WITHOUT_GPU();
  const auto [metric, scan] = GetParam();
  std::mt19937_64 rng(TestSeed());
  const uint32_t dim = 48;
  const size_t n = 30000, nq = 200, nlist = 128;
  const int k = 20, nprobe = 9;
  auto x = Clustered(n, dim, rng, 100);
  auto queries = Clustered(nq, dim, rng, 100);
  if (metric == Metric::kCosine) {
    Normalize(&x, dim);
    Normalize(&queries, dim);
  }
  CpuIvf cpu(metric, dim, nlist, x);
  const faiss::IndexFlat& quantizer = cpu.quantizer;
  const std::vector<cuda::IvfList>& lists = cpu.lists;
  auto gpu = IvfFlatIndex::Create(quantizer.get_xb(), nlist, dim, metric, lists, n, {});
  ASSERT_TRUE(gpu.ok()) << gpu.status();

  // The reference: exact distances over the lists of the nprobe nearest
  // centroids (what FAISS's IVF-Flat scan computes), in float64.
  PositionSet allowed;
  allowed.Resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (rng() % 4 != 0) allowed.Set(i);
  }
  for (bool filtered : {false, true}) {
    std::vector<float> scores(nq * k);
    std::vector<int64_t> labels(nq * k);
    ASSERT_TRUE((*gpu)->Search(queries.data(), nq, k, nprobe, filtered ? &allowed : nullptr, scores.data(),
                               labels.data(), scan)
                    .ok());
    int bad = 0;
    for (size_t q = 0; q < nq && bad < 5; ++q) {
      std::vector<std::pair<double, size_t>> cd;
      for (size_t l = 0; l < nlist; ++l) cd.emplace_back(RefDistance(metric, &queries[q * dim], quantizer.get_xb() + l * dim, dim), l);
      std::sort(cd.begin(), cd.end());
      std::vector<std::pair<double, int64_t>> ref;
      for (int p = 0; p < nprobe; ++p) {
        const auto& L = lists[cd[p].second];
        for (size_t i = 0; i < L.size; ++i) {
          if (filtered && !allowed.Test(L.positions[i])) continue;
          ref.emplace_back(RefDistance(metric, &queries[q * dim], L.vectors + i * dim, dim), L.positions[i]);
        }
      }
      std::sort(ref.begin(), ref.end());
      for (int j = 0; j < k; ++j) {
        const double got = metric == Metric::kL2 ? scores[q * k + j] : -double(scores[q * k + j]);
        if (static_cast<size_t>(j) >= ref.size()) {
          EXPECT_EQ(labels[q * k + j], kNoId);
          continue;
        }
        const double tol = 2e-4 * std::max(1.0, std::abs(ref[j].first));
        if (std::abs(got - ref[j].first) > tol ||
            (labels[q * k + j] != ref[j].second &&
             std::abs(RefDistance(metric, &queries[q * dim], &x[labels[q * k + j] * dim], dim) - ref[j].first) > tol)) {
          ADD_FAILURE() << "filtered=" << filtered << " query " << q << " rank " << j << ": got " << labels[q * k + j]
                        << " (" << got << "), want " << ref[j].second << " (" << ref[j].first << ")";
          ++bad;
          break;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Metrics, GpuIvfTest,
                         ::testing::Combine(::testing::Values(Metric::kL2, Metric::kInnerProduct, Metric::kCosine),
                                            ::testing::Values(cuda::IvfScan::kByQuery, cuda::IvfScan::kByList)),
                         [](const auto& info) {
                           const Metric m = std::get<0>(info.param);
                           return std::string(m == Metric::kL2 ? "L2" : m == Metric::kCosine ? "Cosine" : "IP") +
                                  (std::get<1>(info.param) == cuda::IvfScan::kByList ? "_ByList" : "_ByQuery");
                         });

// Many small batches (the last one short), 768 dimensions and 32+ queries
// per list: the scans by query, by list and auto agree on every batch.
TEST(GpuIvfTest, ScansAgreeOverManyBatches) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(TestSeed());
  const uint32_t dim = 768;
  const size_t n = 20000, nq = 1000, nlist = 64;
  const int k = 10, nprobe = 32;
  auto x = Clustered(n, dim, rng, 64);
  auto queries = Clustered(nq, dim, rng, 64);
  CpuIvf cpu(Metric::kL2, dim, nlist, x);
  IvfOptions options;
  options.max_batch = 64;  // 16 batches, the last of 40 queries
  auto gpu = IvfFlatIndex::Create(cpu.quantizer.get_xb(), nlist, dim, Metric::kL2, cpu.lists, n, options);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  PositionSet allowed;
  allowed.Resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (i % 5 != 0) allowed.Set(i);
  }
  for (const PositionSet* allow : std::vector<const PositionSet*>{nullptr, &allowed}) {
    std::vector<float> want_s(nq * k);
    std::vector<int64_t> want_l(nq * k);
    ASSERT_TRUE((*gpu)->Search(queries.data(), nq, k, nprobe, allow, want_s.data(), want_l.data(),
                               cuda::IvfScan::kByQuery)
                    .ok());
    for (cuda::IvfScan scan : {cuda::IvfScan::kByList, cuda::IvfScan::kAuto}) {
      std::vector<float> got_s(nq * k);
      std::vector<int64_t> got_l(nq * k);
      ASSERT_TRUE(
          (*gpu)->Search(queries.data(), nq, k, nprobe, allow, got_s.data(), got_l.data(), scan).ok());
      int bad = 0;
      for (size_t j = 0; j < nq * k && bad < 5; ++j) {
        const double tol = 2e-4 * std::max(1.0f, std::abs(want_s[j]));
        // Ids may differ only between points at the same distance.
        const bool same = got_l[j] == want_l[j] ||
                          (got_l[j] >= 0 && want_l[j] >= 0 &&
                           std::abs(RefDistance(Metric::kL2, &queries[(j / k) * dim], &x[got_l[j] * dim], dim) -
                                    want_s[j]) <= tol);
        if (std::abs(got_s[j] - want_s[j]) > tol || !same) {
          ADD_FAILURE() << "scan " << static_cast<int>(scan) << " filtered=" << (allow != nullptr) << " slot " << j
                        << ": got " << got_l[j] << " (" << got_s[j] << "), by query " << want_l[j] << " ("
                        << want_s[j] << ")";
          ++bad;
        }
        if (allow != nullptr && got_l[j] >= 0) {
          EXPECT_TRUE(allow->Test(got_l[j])) << "slot " << j;
        }
      }
    }
  }
}

TEST(GpuIvfTest, ListsBeyondTheBudgetAreResourceExhausted) {
  SKIP_WITHOUT_GPU();
  std::vector<float> c(4 * 8, 0.0f), v(1000 * 8, 1.0f);
  std::vector<int64_t> pos(1000);
  std::iota(pos.begin(), pos.end(), 0);
  std::vector<cuda::IvfList> lists(4);
  lists[0] = {v.data(), pos.data(), 1000};
  IvfOptions o;
  o.memory_budget = 1 << 20;
  auto idx = IvfFlatIndex::Create(c.data(), 4, 8, Metric::kL2, lists, 1000, o);
  EXPECT_EQ(idx.status().code(), absl::StatusCode::kResourceExhausted) << idx.status();
}


// Segment end to end: the same sealed segment searched on the GPU and on the
// CPU gives the same results (except exact ties), with tombstones and an
// allow-list; and a segment trained on the GPU is saved in the same format
// and served by the CPU.
class GpuSegmentTest : public ::testing::TestWithParam<IndexType> {};

TEST_P(GpuSegmentTest, GpuAndCpuSearchesAgree) {
  SKIP_WITHOUT_GPU();
  const IndexType type = GetParam();
  std::mt19937_64 rng(TestSeed());
  const uint32_t dim = 40;
  const size_t n = 20000, nq = 64;
  const int k = 10;
  auto x = Clustered(n, dim, rng, 80);
  auto queries = Clustered(nq, dim, rng, 80);
  std::vector<uint64_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = 5 + 3 * i;
  IndexSpec spec;
  spec.type = type;
  spec.nlist = 100;
  spec.nprobe = 8;
  spec.device = Device::kGpu;
  auto on_gpu = Segment::Build(dim, Metric::kL2, spec, x.data(), ids.data(), n, 2);
  ASSERT_TRUE(on_gpu.ok()) << on_gpu.status();
  const std::string path = ::testing::TempDir() + "/gpu_segment_" + std::to_string(static_cast<int>(type));
  ASSERT_TRUE((*on_gpu)->Save(path).ok());
  IndexSpec cpu_spec = spec;
  cpu_spec.device = Device::kCpu;
  auto on_cpu = Segment::Load(path, &cpu_spec);
  ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
  for (size_t i = 0; i < n; i += 7) {
    (*on_gpu)->MarkDeleted(ids[i]);
    (*on_cpu)->MarkDeleted(ids[i]);
  }
  PositionSet allowed;
  allowed.Resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (i % 3 != 0) allowed.Set(i);
  }
  for (const PositionSet* allow : std::vector<const PositionSet*>{nullptr, &allowed}) {
    SegmentSearchParams p;
    p.k = k;
    p.allowed = allow;
    std::vector<float> s_gpu(nq * k), s_cpu(nq * k);
    std::vector<int64_t> i_gpu(nq * k), i_cpu(nq * k);
    const UseCounts before = GetUseCounts();
    ASSERT_TRUE((*on_gpu)->Search(queries.data(), nq, p, s_gpu.data(), i_gpu.data(), 2).ok());
    EXPECT_TRUE((*on_gpu)->OnGpu());
    EXPECT_EQ(GetUseCounts().searches, before.searches + 1);  // the metric cairn_gpu_segment_searches_total
    EXPECT_EQ(GetUseCounts().fallbacks, before.fallbacks);
    EXPECT_GT((*on_gpu)->GpuBytes(), 0u);  // CollectionInfo::gpu_memory_bytes
    ASSERT_TRUE((*on_cpu)->Search(queries.data(), nq, p, s_cpu.data(), i_cpu.data(), 2).ok());
    EXPECT_FALSE((*on_cpu)->OnGpu());
    for (size_t j = 0; j < nq * k; ++j) {
      const double tol = 2e-4 * std::max(1.0f, std::abs(s_cpu[j]));
      EXPECT_NEAR(s_gpu[j], s_cpu[j], tol) << "slot " << j;
      if (i_gpu[j] != i_cpu[j] && i_gpu[j] >= 0) {
        // Two ids swap only between points at the same distance (within
        // float rounding of the two computations).
        const size_t at = (static_cast<size_t>(i_gpu[j]) - 5) / 3;
        EXPECT_NEAR(RefDistance(Metric::kL2, &queries[(j / k) * dim], &x[at * dim], dim), s_cpu[j], tol)
            << "slot " << j;
      }
      if (i_gpu[j] >= 0) {
        const size_t at = (static_cast<size_t>(i_gpu[j]) - 5) / 3;
        EXPECT_NE(at % 7, 0u) << "a deleted id came back";
        if (allow != nullptr) {
          EXPECT_TRUE(allow->Test(at)) << "an id outside the allow-list came back";
        }
      }
    }
  }
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(Types, GpuSegmentTest, ::testing::Values(IndexType::kFlat, IndexType::kIvfFlat));

TEST(GpuSegmentTest, IvfPqTrainedOnTheGpuKeepsRecall) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(TestSeed());
  const uint32_t dim = 32;
  const size_t n = 20000, nq = 100;
  const int k = 10;
  auto x = Clustered(n, dim, rng, 60);
  auto queries = Clustered(nq, dim, rng, 60);
  std::vector<uint64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  double recall[2];
  for (Device device : {Device::kCpu, Device::kGpu}) {
    IndexSpec spec;
    spec.type = IndexType::kIvfPq;
    spec.nlist = 64;
    spec.nprobe = 16;
    spec.pq_m = 16;
    spec.device = device;
    auto seg = Segment::Build(dim, Metric::kL2, spec, x.data(), ids.data(), n, 2);
    ASSERT_TRUE(seg.ok()) << seg.status();
    SegmentSearchParams p;
    p.k = k;
    std::vector<float> s(nq * k);
    std::vector<int64_t> got(nq * k);
    ASSERT_TRUE((*seg)->Search(queries.data(), nq, p, s.data(), got.data(), 2).ok());
    size_t hits = 0;
    for (size_t q = 0; q < nq; ++q) {
      std::vector<std::pair<double, int64_t>> ref;
      for (size_t i = 0; i < n; ++i) ref.emplace_back(RefDistance(Metric::kL2, &queries[q * dim], &x[i * dim], dim), i);
      std::partial_sort(ref.begin(), ref.begin() + k, ref.end());
      std::set<int64_t> truth;
      for (int j = 0; j < k; ++j) truth.insert(ref[j].second);
      for (int j = 0; j < k; ++j) hits += truth.count(got[q * k + j]);
    }
    recall[device == Device::kGpu] = double(hits) / (nq * k);
  }
  std::cout << "IVF-PQ recall@10: CPU-trained " << recall[0] << ", GPU-trained " << recall[1] << std::endl;
  EXPECT_GE(recall[1], recall[0] - 0.05);
}


TEST(GpuSegmentTest, SegmentsBeyondTheProcessBudgetStayOnTheCpu) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(TestSeed());
  const uint32_t dim = 16;
  const size_t n = 5000, nq = 10;
  auto x = Clustered(n, dim, rng);
  auto queries = Clustered(nq, dim, rng);
  std::vector<uint64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  IndexSpec spec;
  spec.type = IndexType::kFlat;
  spec.device = Device::kGpu;
  auto seg = Segment::Build(dim, Metric::kL2, spec, x.data(), ids.data(), n, 1);
  ASSERT_TRUE(seg.ok()) << seg.status();
  SetProcessMemoryBudget(1 << 20);
  SegmentSearchParams p;
  p.k = 5;
  std::vector<float> s(nq * 5);
  std::vector<int64_t> got(nq * 5);
  EXPECT_TRUE((*seg)->Search(queries.data(), nq, p, s.data(), got.data(), 1).ok());
  SetProcessMemoryBudget(0);
  EXPECT_FALSE((*seg)->OnGpu());
  ExpectExact(Metric::kL2, x, queries, dim, 5, nullptr, s, got);
  EXPECT_EQ(ProcessMemoryInUse(), 0u);
}

}  // namespace
}  // namespace cairn::index::gpu
