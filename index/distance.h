// Distance kernels with runtime dispatch: AVX-512, AVX2+FMA or portable C++,
// picked once at start-up from what the CPU supports (Debian's FAISS is built
// for baseline x86-64 and computes distances one float at a time; these are
// what Cairn's HNSW and flat segments use instead).
//
// CAIRN_SIMD=scalar|avx2|avx512 in the environment caps the level (for
// benchmarks and tests); a level the CPU lacks is never chosen.
#ifndef CAIRN_INDEX_DISTANCE_H_
#define CAIRN_INDEX_DISTANCE_H_

#include <cstddef>

namespace cairn::index {

enum class SimdLevel { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Squared Euclidean distance of two d-dimensional vectors.
float L2Sqr(const float* a, const float* b, size_t d);
// Dot product of two d-dimensional vectors.
float InnerProduct(const float* a, const float* b, size_t d);

SimdLevel ActiveSimdLevel();
// The best level the CPU supports, whatever CAIRN_SIMD says.
SimdLevel SupportedSimdLevel();
const char* SimdLevelName(SimdLevel level);

// The kernels of one level, for tests that compare levels. Falls back to the
// best supported level at or below `level`.
using DistanceFn = float (*)(const float*, const float*, size_t);
DistanceFn L2SqrKernel(SimdLevel level);
DistanceFn InnerProductKernel(SimdLevel level);

}  // namespace cairn::index

#endif  // CAIRN_INDEX_DISTANCE_H_
