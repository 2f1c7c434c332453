#include "index/nearest.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace cairn::index {
namespace {

std::vector<float> Gaussian(size_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> v(count);
  for (float& f : v) f = g(rng);
  return v;
}

// The reference: every distance in double, the first best on a tie.
struct Best {
  int64_t label;
  double score;   // squared L2, or the inner product
  double margin;  // to the second best (infinity with one centroid)
};

Best BruteForce(const float* row, const float* c, size_t k, size_t d, bool l2) {
  Best b{-1, 0, std::numeric_limits<double>::infinity()};
  double second = 0;
  bool have_second = false;
  for (size_t j = 0; j < k; ++j) {
    double s = 0;
    for (size_t t = 0; t < d; ++t) {
      const double a = row[t], y = c[j * d + t];
      s += l2 ? (a - y) * (a - y) : a * y;
    }
    const bool better = b.label < 0 || (l2 ? s < b.score : s > b.score);
    if (better) {
      if (b.label >= 0) {
        second = b.score;
        have_second = true;
      }
      b.label = static_cast<int64_t>(j);
      b.score = s;
    } else if (!have_second || (l2 ? s < second : s > second)) {
      second = s;
      have_second = true;
    }
  }
  if (have_second) b.margin = std::abs(second - b.score);
  return b;
}

void ExpectNearest(size_t n, size_t k, size_t d, bool l2, SimdLevel level) {
  SCOPED_TRACE(testing::Message() << "n " << n << " k " << k << " d " << d << (l2 ? " l2" : " ip") << " level "
                                  << SimdLevelName(level));
  const std::vector<float> x = Gaussian(n * d, 7 + n + k + d);
  const std::vector<float> c = Gaussian(k * d, 11 + k);
  std::vector<int64_t> labels(n, -7);
  std::vector<float> dist(n);
  NearestCentroids(x.data(), n, c.data(), k, d, l2, labels.data(), dist.data(), level);
  size_t exact = 0;
  for (size_t i = 0; i < n; ++i) {
    const Best want = BruteForce(&x[i * d], c.data(), k, d, l2);
    const double tol = 1e-4 * (1.0 + std::abs(want.score));
    ASSERT_GE(labels[i], 0);
    ASSERT_LT(labels[i], static_cast<int64_t>(k));
    EXPECT_NEAR(dist[i], want.score, tol) << "row " << i;
    if (want.margin > tol) {
      EXPECT_EQ(labels[i], want.label) << "row " << i;
      ++exact;
    } else {
      // A near tie: whichever was chosen scores as the best does.
      const Best chosen = BruteForce(&x[i * d], &c[static_cast<size_t>(labels[i]) * d], 1, d, l2);
      EXPECT_NEAR(chosen.score, want.score, tol) << "row " << i;
    }
  }
  if (d > 1) {
    EXPECT_GT(exact, n * 9 / 10);  // near ties are rare in random data past one dimension
  }
}

TEST(NearestCentroidsTest, FindsTheNearestAtEverySimdLevel) {
  for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    for (bool l2 : {true, false}) {
      // Centroid counts around the lanes (8, 16) and the 1,024-centroid
      // block; rows past one 1,024-row block; odd dimensions.
      for (size_t k : {1u, 5u, 8u, 15u, 16u, 17u, 100u, 1024u, 1100u}) ExpectNearest(1030, k, 13, l2, level);
      ExpectNearest(50, 2100, 128, l2, level);
      ExpectNearest(3, 40, 1, l2, level);
    }
  }
}

TEST(NearestCentroidsTest, TiesGoToTheLowerIndex) {
  const size_t d = 4, k = 40;
  // Every centroid equal: all tie, each lane's first and the last block's.
  std::vector<float> c(k * d, 0.5f);
  std::vector<float> x = Gaussian(64 * d, 3);
  for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    for (bool l2 : {true, false}) {
      std::vector<int64_t> labels(64, -7);
      NearestCentroids(x.data(), 64, c.data(), k, d, l2, labels.data(), nullptr, level);
      for (int64_t l : labels) EXPECT_EQ(l, 0) << SimdLevelName(level);
    }
  }
  // Two equal best centroids far apart in the list (other lanes, another
  // block): the first wins.
  const size_t big = 2050;
  std::vector<float> far(big * d, 100.0f);
  const std::vector<float> row = {1, 2, 3, 4};
  for (size_t j : {37u, 1500u, 2049u}) std::copy(row.begin(), row.end(), far.begin() + static_cast<ptrdiff_t>(j * d));
  for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    int64_t label = -7;
    float dist = -1;
    NearestCentroids(row.data(), 1, far.data(), big, d, true, &label, &dist, level);
    EXPECT_EQ(label, 37) << SimdLevelName(level);
    EXPECT_EQ(dist, 0.0f);  // never negative, though the product rounds
  }
}

TEST(NearestCentroidsTest, NoCentroidsGiveNoLabel) {
  const std::vector<float> x = Gaussian(3 * 8, 1);
  std::vector<int64_t> labels(3, 5);
  std::vector<float> dist(3, 0);
  NearestCentroids(x.data(), 3, nullptr, 0, 8, true, labels.data(), dist.data());
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(labels[i], -1);
    EXPECT_TRUE(std::isinf(dist[i]) && dist[i] > 0);
  }
  NearestCentroids(x.data(), 3, nullptr, 0, 8, false, labels.data(), dist.data());
  EXPECT_TRUE(std::isinf(dist[0]) && dist[0] < 0);
}

}  // namespace
}  // namespace cairn::index
