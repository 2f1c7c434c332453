#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "index/gpu/ops.cuh"

namespace cairn::index::gpu::cuda {
namespace {

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

unsigned Blocks(size_t work, unsigned threads) {
  size_t b = (work + threads - 1) / threads;
  return static_cast<unsigned>(std::min<size_t>(b, 1u << 20));
}

}  // namespace

size_t StorageBytes(Storage st) { return st == Storage::kFloat32 ? 4 : 2; }

void ConvertFloats(const float* in, void* out, size_t count, Storage st, cudaStream_t stream) {
  if (count == 0) return;
  switch (st) {
    case Storage::kFloat32:
      CAIRN_CUDA(cudaMemcpyAsync(out, in, count * sizeof(float), cudaMemcpyDeviceToDevice, stream));
      return;
    case Storage::kFloat16:
      ConvertKernel<<<Blocks(count, 256), 256, 0, stream>>>(in, static_cast<__half*>(out), count);
      break;
    case Storage::kBFloat16:
      ConvertKernel<<<Blocks(count, 256), 256, 0, stream>>>(in, static_cast<__nv_bfloat16*>(out), count);
      break;
  }
  CAIRN_CUDA_LAUNCHED();
}

void RowSquaredNorms(const void* x, size_t n, uint32_t d, Storage st, float* out, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned threads = 256;
  const unsigned blocks = static_cast<unsigned>((n * 32 + threads - 1) / threads);
  switch (st) {
    case Storage::kFloat32:
      NormsKernel<<<blocks, threads, 0, stream>>>(static_cast<const float*>(x), n, d, out);
      break;
    case Storage::kFloat16:
      NormsKernel<<<blocks, threads, 0, stream>>>(static_cast<const __half*>(x), n, d, out);
      break;
    case Storage::kBFloat16:
      NormsKernel<<<blocks, threads, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), n, d, out);
      break;
  }
  CAIRN_CUDA_LAUNCHED();
}

void GemmScaledDots(const BlasHandle& blas, cudaStream_t stream, Storage st, const void* b, size_t nb,
                    const void* q, size_t nq, uint32_t d, float alpha, float* out, size_t ldo) {
  if (nb == 0 || nq == 0) return;
  // Column-major view: out^T (nb x nq, ld ldo) = B (d x nb)^T * Q (d x nq).
  const float beta = 0;
  CAIRN_CUBLAS(blas.api().set_stream(blas.get(), stream));
  const int m = static_cast<int>(nb), n = static_cast<int>(nq), kd = static_cast<int>(d);
  if (st == Storage::kFloat32) {
    CAIRN_CUBLAS(blas.api().sgemm(blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, m, n, kd, &alpha,
                                  static_cast<const float*>(b), kd, static_cast<const float*>(q), kd, &beta,
                                  out, static_cast<int>(ldo)));
    return;
  }
  const cudaDataType_t t = st == Storage::kFloat16 ? CUDA_R_16F : CUDA_R_16BF;
  CAIRN_CUBLAS(blas.api().gemm_ex(blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, m, n, kd, &alpha, b, t, kd, q, t, kd,
                                  &beta, out, CUDA_R_32F, static_cast<int>(ldo), CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
}

void AddRowValues(float* v, size_t rows, size_t k, const float* row_add, bool clamp, cudaStream_t stream) {
  if (rows * k == 0) return;
  AddRowKernel<<<Blocks(rows * k, 256), 256, 0, stream>>>(v, rows, k, row_add, clamp);
  CAIRN_CUDA_LAUNCHED();
}

}  // namespace cairn::index::gpu::cuda
