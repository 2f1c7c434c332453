// Element-wise kernels behind ops.cuh: storage conversion, squared norms, row additions.
// Included by ops.cu alone, and by the emulation test (kernel_emulation_test.cc), which
// runs these kernels on the CPU.
#ifndef CAIRN_INDEX_GPU_OPS_KERNELS_CUH_
#define CAIRN_INDEX_GPU_OPS_KERNELS_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

namespace cairn::index::gpu::cuda::kernels {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__global__ void ConvertKernel(const float* in, T* out, size_t count) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    out[i] = FromFloat<T>(in[i]);
  }
}

// One warp per row.
template <typename T>
__global__ void NormsKernel(const T* x, size_t n, uint32_t d, float* out) {
  const size_t warp = (blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (warp >= n) return;
  const T* row = x + warp * d;
  float s = 0;
  for (uint32_t j = lane; j < d; j += 32) {
    const float v = ToFloat(row[j]);
    s += v * v;
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) out[warp] = s;
}

__global__ void AddRowKernel(float* v, size_t rows, size_t k, const float* row_add, bool clamp) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < rows * k;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float x = v[i];
    if (isinf(x)) continue;
    float y = x + row_add[i / k];
    if (clamp && y < 0) y = 0;
    v[i] = y;
  }
}

}  // namespace cairn::index::gpu::cuda::kernels

#endif  // CAIRN_INDEX_GPU_OPS_KERNELS_CUH_
