#include "index/blas_core.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "faiss/IndexFlat.h"
#include "gtest/gtest.h"

namespace cairn::index {
namespace {

TEST(BlasCoreTest, OnlyOpenBlasFallbackIsReplacedAndByWhatTheCpuRuns) {
  EXPECT_EQ(BetterBlasCore("Prescott", true, true, true), "SkylakeX");
  EXPECT_EQ(BetterBlasCore("Prescott", false, true, true), "Haswell");
  EXPECT_EQ(BetterBlasCore("Prescott", false, false, true), "SandyBridge");
  EXPECT_EQ(BetterBlasCore("Prescott", false, false, false), "");
  // A core OpenBLAS recognised is its choice, whatever the CPU has.
  EXPECT_EQ(BetterBlasCore("Haswell", true, true, true), "");
  EXPECT_EQ(BetterBlasCore("Zen", true, true, true), "");
  EXPECT_EQ(BetterBlasCore("SkylakeX", true, true, true), "");
}

TEST(BlasCoreTest, TheBlasThisProcessRunsIsNotAFallbackTheCpuOutgrows) {
  const std::string core = BlasCore();
  if (core.empty()) GTEST_SKIP() << "the BLAS is not OpenBLAS";
  std::printf("BLAS: %s\n", core.c_str());
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_EQ(core.find("OpenBLAS Prescott"), std::string::npos) << core;
  }
  EXPECT_EQ(BlasCoreSwitched(), core.find("switched from") != std::string::npos);
}

// FAISS's exact search of more than 20 queries runs through sgemm: its
// answers, on whatever kernels the process runs, are the brute-force ones.
TEST(BlasCoreTest, SgemmSearchesEqualBruteForce) {
  const size_t d = 96, n = 3000, nq = 64, k = 5;
  std::mt19937 rng(7);
  std::normal_distribution<float> g;
  std::vector<float> x(n * d), q(nq * d);
  for (float& v : x) v = g(rng);
  for (float& v : q) v = g(rng);
  faiss::IndexFlatL2 index(d);
  index.add(n, x.data());
  std::vector<float> dist(nq * k);
  std::vector<faiss::Index::idx_t> ids(nq * k);
  index.search(nq, q.data(), k, dist.data(), ids.data());
  for (size_t i = 0; i < nq; ++i) {
    std::vector<std::pair<double, size_t>> all(n);
    for (size_t j = 0; j < n; ++j) {
      double s = 0;
      for (size_t t = 0; t < d; ++t) {
        const double diff = static_cast<double>(q[i * d + t]) - x[j * d + t];
        s += diff * diff;
      }
      all[j] = {s, j};
    }
    std::partial_sort(all.begin(), all.begin() + k, all.end());
    for (size_t r = 0; r < k; ++r) {
      EXPECT_EQ(ids[i * k + r], static_cast<faiss::Index::idx_t>(all[r].second)) << "query " << i << " rank " << r;
      EXPECT_NEAR(dist[i * k + r], all[r].first, 1e-3 * all[r].first) << "query " << i << " rank " << r;
    }
  }
}

}  // namespace
}  // namespace cairn::index
