// The IVF-Flat scan kernels (ivf_flat_index.cu).
// Included by ivf_flat_index.cu alone, and by the emulation test (kernel_emulation_test.cc), which
// runs these kernels on the CPU.
#ifndef CAIRN_INDEX_GPU_IVF_KERNELS_CUH_
#define CAIRN_INDEX_GPU_IVF_KERNELS_CUH_

#include <cstddef>
#include <cstdint>

// The block's dynamic shared memory as an array of `type` (the emulator
// defines its own).
#ifndef CAIRN_DYNAMIC_SHARED
#define CAIRN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace cairn::index::gpu::cuda::kernels {

constexpr int kScanThreads = 256;
constexpr uint32_t kSharedQueryDims = 12 * 1024;  // 48 KiB of floats

// For each query: where each probed list's distances start in its row, and
// the row's length.
__global__ void ProbeOffsetsKernel(const int64_t* probes, int nq, int nprobe, const int64_t* list_off,
                                   int64_t* probe_start, int64_t* row_len) {
  const int q = blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= nq) return;
  int64_t at = 0;
  for (int p = 0; p < nprobe; ++p) {
    const int64_t list = probes[static_cast<int64_t>(q) * nprobe + p];
    probe_start[static_cast<int64_t>(q) * nprobe + p] = at;
    if (list >= 0) at += list_off[list + 1] - list_off[list];
  }
  row_len[q] = at;
}

// Block (q, p): the distances from query q to every vector of its p-th list.
// A warp per vector, lanes over dimensions.
__global__ void __launch_bounds__(kScanThreads) ScanKernel(
    const float* queries, uint32_t d, const int64_t* probes, int nprobe, const int64_t* probe_start,
    const float* data, const int64_t* positions, const int64_t* list_off, const uint64_t* allow, bool l2,
    float* dist, int64_t* labels, int64_t row_cap) {
  CAIRN_DYNAMIC_SHARED(float, sq);
  const int64_t q = blockIdx.x;
  const int p = blockIdx.y;
  const int64_t list = probes[q * nprobe + p];
  if (list < 0) return;
  const float* query = queries + q * d;
  const bool shared = d <= kSharedQueryDims;
  if (shared) {
    for (uint32_t j = threadIdx.x; j < d; j += blockDim.x) sq[j] = query[j];
    __syncthreads();
    query = sq;
  }
  const int64_t begin = list_off[list], len = list_off[list + 1] - begin;
  float* out_d = dist + q * row_cap + probe_start[q * nprobe + p];
  int64_t* out_l = labels + q * row_cap + probe_start[q * nprobe + p];
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int64_t i = warp; i < len; i += kScanThreads / 32) {
    const int64_t pos = positions[begin + i];
    if (allow != nullptr && !((allow[pos >> 6] >> (pos & 63)) & 1ull)) {
      if (lane == 0) out_l[i] = -1;
      continue;
    }
    const float* v = data + (begin + i) * d;
    float s = 0;
    if (l2) {
      for (uint32_t j = lane; j < d; j += 32) {
        const float t = query[j] - v[j];
        s += t * t;
      }
    } else {
      for (uint32_t j = lane; j < d; j += 32) s += query[j] * v[j];
    }
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) {
      out_d[i] = l2 ? s : -s;
      out_l[i] = pos;
    }
  }
}

}  // namespace cairn::index::gpu::cuda::kernels

#endif  // CAIRN_INDEX_GPU_IVF_KERNELS_CUH_
