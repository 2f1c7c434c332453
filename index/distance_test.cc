#include "index/distance.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace cairn::index {
namespace {

double RefL2(const float* a, const float* b, size_t d) {
  double s = 0;
  for (size_t i = 0; i < d; ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return s;
}

double RefIp(const float* a, const float* b, size_t d) {
  double s = 0;
  for (size_t i = 0; i < d; ++i) s += double(a[i]) * b[i];
  return s;
}

// Every level agrees with a double-precision reference at every length,
// including lengths that exercise each tail path, and unaligned pointers.
TEST(DistanceTest, EveryLevelMatchesReference) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    DistanceFn l2 = L2SqrKernel(level), ip = InnerProductKernel(level);
    for (size_t d : {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 100, 128, 129, 384, 784, 1536}) {
      std::vector<float> buf(2 * d + 2);
      for (auto& v : buf) v = g(rng);
      const float* a = buf.data() + 1;  // unaligned on purpose
      const float* b = buf.data() + d + 2;
      double want_l2 = RefL2(a, b, d), want_ip = RefIp(a, b, d);
      EXPECT_NEAR(l2(a, b, d), want_l2, 1e-4 * (1 + std::abs(want_l2)))
          << SimdLevelName(level) << " d=" << d;
      EXPECT_NEAR(ip(a, b, d), want_ip, 1e-4 * (1 + std::abs(want_ip)))
          << SimdLevelName(level) << " d=" << d;
    }
  }
}

TEST(DistanceTest, IdenticalVectorsAreAtZero) {
  std::vector<float> v(784, 3.5f);
  EXPECT_EQ(L2Sqr(v.data(), v.data(), v.size()), 0.0f);
  EXPECT_FLOAT_EQ(InnerProduct(v.data(), v.data(), v.size()), 784 * 3.5f * 3.5f);
}

TEST(DistanceTest, ActiveLevelIsNamed) {
  std::string name = SimdLevelName(ActiveSimdLevel());
  EXPECT_TRUE(name == "scalar" || name == "avx2" || name == "avx512") << name;
}

}  // namespace
}  // namespace cairn::index
