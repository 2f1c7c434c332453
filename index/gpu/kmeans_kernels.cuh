// The k-means kernels (kmeans.cu): argmin over a distance matrix, the counting sort of
// points by cluster, and the per-cluster means.
// Included by kmeans.cu alone, and by the emulation test (kernel_emulation_test.cc), which
// runs these kernels on the CPU.
#ifndef CAIRN_INDEX_GPU_KMEANS_KERNELS_CUH_
#define CAIRN_INDEX_GPU_KMEANS_KERNELS_CUH_

#include <cstddef>
#include <cstdint>

namespace cairn::index::gpu::cuda::kernels {

// One warp per row: the column with the smallest dist[r][j] + col_add[j]
// (ties to the lower column). best[r] gets that value plus row_add[r].
__global__ void ArgMinKernel(const float* dist, size_t rows, size_t cols, const float* col_add,
                             const float* row_add, int32_t* assign, float* best) {
  const size_t r = (blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float* row = dist + r * cols;
  float bv = __int_as_float(0x7f800000);
  int32_t bi = 0x7fffffff;
  for (size_t j = lane; j < cols; j += 32) {
    const float v = row[j] + (col_add != nullptr ? col_add[j] : 0.0f);
    if (v < bv) {
      bv = v;
      bi = static_cast<int32_t>(j);
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_down_sync(0xffffffffu, bv, off);
    const int32_t oi = __shfl_down_sync(0xffffffffu, bi, off);
    if (ov < bv || (ov == bv && oi < bi)) {
      bv = ov;
      bi = oi;
    }
  }
  if (lane == 0) {
    if (bi == 0x7fffffff) bi = 0;  // every value NaN: any centroid
    assign[r] = bi;
    if (best != nullptr) {
      float v = bv + (row_add != nullptr ? row_add[r] : 0.0f);
      best[r] = row_add != nullptr ? fmaxf(v, 0.0f) : v;
    }
  }
}

__global__ void CountKernel(const int32_t* assign, size_t n, uint32_t* counts) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    atomicAdd(&counts[assign[i]], 1u);
  }
}

__global__ void ScatterKernel(const int32_t* assign, size_t n, uint32_t* cursor, uint32_t* order) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    order[atomicAdd(&cursor[assign[i]], 1u)] = static_cast<uint32_t>(i);
  }
}

// One block per centroid: the mean of its points, or unchanged when empty.
__global__ void MeanKernel(const float* x, uint32_t d, const uint32_t* order, const uint32_t* offsets,
                           float* centroids) {
  const size_t c = blockIdx.x;
  const uint32_t begin = offsets[c], end = offsets[c + 1];
  if (begin == end) return;
  const double count = static_cast<double>(end - begin);
  for (uint32_t j = threadIdx.x; j < d; j += blockDim.x) {
    double s = 0;  // large clusters: float would lose the small terms
    for (uint32_t m = begin; m < end; ++m) s += x[static_cast<size_t>(order[m]) * d + j];
    centroids[c * d + j] = static_cast<float>(s / count);
  }
}

}  // namespace cairn::index::gpu::cuda::kernels

#endif  // CAIRN_INDEX_GPU_KMEANS_KERNELS_CUH_
