#include "index/nearest.h"

// GCC 12 flags its own _mm512_setzero idioms as uninitialized use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "index/distance.h"

// The Fortran BLAS entry point FAISS itself calls (libblas: OpenBLAS on
// Debian, on the kernels index/blas_core.h picks).
extern "C" int sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                      const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                      const float* beta, float* c, const int* ldc);

namespace cairn::index {
namespace {

// Rows and centroids per block: a block's products (4 MiB) stay in cache
// between the sgemm that writes them and the scan that reads them.
constexpr size_t kRows = 1024;
constexpr size_t kCols = 1024;

// The smallest of norms[j] + a * ip[j] over j < count (count >= 1) and its
// position, the first one on a tie. With a = -2 and the centroids' squared
// norms, that is the nearest centroid in L2 (less the row's own norm); with
// a = -1 and zero norms, the largest inner product, negated.
using ScanFn = size_t (*)(const float* ip, const float* norms, float a, size_t count, float* best);

size_t ScanScalar(const float* ip, const float* norms, float a, size_t count, float* best) {
  size_t at = 0;
  float b = norms[0] + a * ip[0];
  for (size_t j = 1; j < count; ++j) {
    const float v = norms[j] + a * ip[j];
    if (v < b) {
      b = v;
      at = j;
    }
  }
  *best = b;
  return at;
}

// Folds the lanes' bests (value, position) into the first smallest, then the
// tail from `from` on one at a time (its positions come after every lane's).
size_t Finish(const float* lane_best, const int32_t* lane_at, size_t lanes, const float* ip, const float* norms,
              float a, size_t from, size_t count, float* best) {
  float b = lane_best[0];
  size_t at = static_cast<size_t>(lane_at[0]);
  for (size_t l = 1; l < lanes; ++l) {
    const auto la = static_cast<size_t>(lane_at[l]);
    if (lane_best[l] < b || (lane_best[l] == b && la < at)) {
      b = lane_best[l];
      at = la;
    }
  }
  for (size_t j = from; j < count; ++j) {
    const float v = norms[j] + a * ip[j];
    if (v < b) {
      b = v;
      at = j;
    }
  }
  *best = b;
  return at;
}

__attribute__((target("avx2,fma"))) size_t ScanAvx2(const float* ip, const float* norms, float a, size_t count,
                                                   float* best) {
  if (count < 8) return ScanScalar(ip, norms, a, count, best);
  const __m256 va = _mm256_set1_ps(a);
  __m256 bv = _mm256_fmadd_ps(va, _mm256_loadu_ps(ip), _mm256_loadu_ps(norms));
  __m256i bi = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i idx = bi;
  const __m256i step = _mm256_set1_epi32(8);
  size_t j = 8;
  for (; j + 8 <= count; j += 8) {
    idx = _mm256_add_epi32(idx, step);
    const __m256 v = _mm256_fmadd_ps(va, _mm256_loadu_ps(ip + j), _mm256_loadu_ps(norms + j));
    const __m256 lt = _mm256_cmp_ps(v, bv, _CMP_LT_OQ);
    bv = _mm256_blendv_ps(bv, v, lt);
    bi = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bi), _mm256_castsi256_ps(idx), lt));
  }
  alignas(32) float lane_best[8];
  alignas(32) int32_t lane_at[8];
  _mm256_store_ps(lane_best, bv);
  _mm256_store_si256(reinterpret_cast<__m256i*>(lane_at), bi);
  return Finish(lane_best, lane_at, 8, ip, norms, a, j, count, best);
}

__attribute__((target("avx512f"))) size_t ScanAvx512(const float* ip, const float* norms, float a, size_t count,
                                                    float* best) {
  if (count < 16) return ScanScalar(ip, norms, a, count, best);
  const __m512 va = _mm512_set1_ps(a);
  __m512 bv = _mm512_fmadd_ps(va, _mm512_loadu_ps(ip), _mm512_loadu_ps(norms));
  __m512i bi = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i idx = bi;
  const __m512i step = _mm512_set1_epi32(16);
  size_t j = 16;
  for (; j + 16 <= count; j += 16) {
    idx = _mm512_add_epi32(idx, step);
    const __m512 v = _mm512_fmadd_ps(va, _mm512_loadu_ps(ip + j), _mm512_loadu_ps(norms + j));
    const __mmask16 lt = _mm512_cmp_ps_mask(v, bv, _CMP_LT_OQ);
    bv = _mm512_mask_mov_ps(bv, lt, v);
    bi = _mm512_mask_mov_epi32(bi, lt, idx);
  }
  alignas(64) float lane_best[16];
  alignas(64) int32_t lane_at[16];
  _mm512_store_ps(lane_best, bv);
  _mm512_store_si512(lane_at, bi);
  return Finish(lane_best, lane_at, 16, ip, norms, a, j, count, best);
}

ScanFn ScanAt(SimdLevel level) {
  switch (std::min(level, SupportedSimdLevel())) {
    case SimdLevel::kAvx512: return ScanAvx512;
    case SimdLevel::kAvx2: return ScanAvx2;
    default: return ScanScalar;
  }
}

}  // namespace

void NearestCentroids(const float* x, size_t n, const float* centroids, size_t k, size_t d, bool l2,
                      int64_t* labels, float* distances, SimdLevel level) {
  if (n == 0) return;
  if (k == 0) {
    std::fill(labels, labels + n, int64_t{-1});
    if (distances != nullptr) {
      const float none = l2 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
      std::fill(distances, distances + n, none);
    }
    return;
  }
  const ScanFn scan = ScanAt(level);
  std::vector<float> norms(k, 0.0f);
  if (l2) {
    for (size_t j = 0; j < k; ++j) norms[j] = InnerProduct(centroids + j * d, centroids + j * d, d);
  }
  const float a = l2 ? -2.0f : -1.0f;
  const size_t rows = std::min(n, kRows), cols = std::min(k, kCols);
  std::vector<float> ip(rows * cols);
  std::vector<float> best(rows);
  const int di = static_cast<int>(d);
  const float one = 1.0f, zero = 0.0f;
  for (size_t i0 = 0; i0 < n; i0 += kRows) {
    const size_t nr = std::min(kRows, n - i0);
    const int nri = static_cast<int>(nr);
    for (size_t j0 = 0; j0 < k; j0 += kCols) {
      const size_t nc = std::min(kCols, k - j0);
      const int nci = static_cast<int>(nc);
      // Column-major nc x nr: ip[r * nc + c] = <x[i0 + r], centroid[j0 + c]>.
      sgemm_("T", "N", &nci, &nri, &di, &one, centroids + j0 * d, &di, x + i0 * d, &di, &zero, ip.data(), &nci);
      for (size_t r = 0; r < nr; ++r) {
        float s;
        const size_t at = scan(ip.data() + r * nc, norms.data() + j0, a, nc, &s);
        if (j0 == 0 || s < best[r]) {
          best[r] = s;
          labels[i0 + r] = static_cast<int64_t>(j0 + at);
        }
      }
    }
    if (distances == nullptr) continue;
    for (size_t r = 0; r < nr; ++r) {
      const float* row = x + (i0 + r) * d;
      distances[i0 + r] = l2 ? std::max(0.0f, InnerProduct(row, row, d) + best[r]) : -best[r];
    }
  }
}

}  // namespace cairn::index
