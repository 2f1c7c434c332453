#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "index/gpu/ops.cuh"
#include "index/gpu/ops_kernels.cuh"

namespace cairn::index::gpu::cuda {
namespace {

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
      kernels::ConvertKernel<<<Blocks(count, 256), 256, 0, stream>>>(in, static_cast<__half*>(out), count);
      break;
    case Storage::kBFloat16:
      kernels::ConvertKernel<<<Blocks(count, 256), 256, 0, stream>>>(in, static_cast<__nv_bfloat16*>(out), count);
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
      kernels::NormsKernel<<<blocks, threads, 0, stream>>>(static_cast<const float*>(x), n, d, out);
      break;
    case Storage::kFloat16:
      kernels::NormsKernel<<<blocks, threads, 0, stream>>>(static_cast<const __half*>(x), n, d, out);
      break;
    case Storage::kBFloat16:
      kernels::NormsKernel<<<blocks, threads, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), n, d, out);
      break;
  }
  CAIRN_CUDA_LAUNCHED();
}

void GemmScaledDots(const BlasHandle& blas, cudaStream_t stream, Storage st, const void* b, size_t nb,
                    const void* q, size_t nq, uint32_t d, float alpha, float* out, size_t ldo, size_t ldq) {
  if (nb == 0 || nq == 0) return;
  const int ldqi = static_cast<int>(ldq == 0 ? d : ldq);
  // Column-major view: out^T (nb x nq, ld ldo) = B (d x nb)^T * Q (d x nq).
  const float beta = 0;
  CAIRN_CUBLAS(blas.api().set_stream(blas.get(), stream));
  const int m = static_cast<int>(nb), n = static_cast<int>(nq), kd = static_cast<int>(d);
  if (st == Storage::kFloat32) {
    CAIRN_CUBLAS(blas.api().sgemm(blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, m, n, kd, &alpha,
                                  static_cast<const float*>(b), kd, static_cast<const float*>(q), ldqi, &beta,
                                  out, static_cast<int>(ldo)));
    return;
  }
  const cudaDataType_t t = st == Storage::kFloat16 ? CUDA_R_16F : CUDA_R_16BF;
  CAIRN_CUBLAS(blas.api().gemm_ex(blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, m, n, kd, &alpha, b, t, kd, q, t, ldqi,
                                  &beta, out, CUDA_R_32F, static_cast<int>(ldo), CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
}

void AddRowValues(float* v, size_t rows, size_t k, const float* row_add, bool clamp, cudaStream_t stream) {
  if (rows * k == 0) return;
  kernels::AddRowKernel<<<Blocks(rows * k, 256), 256, 0, stream>>>(v, rows, k, row_add, clamp);
  CAIRN_CUDA_LAUNCHED();
}

}  // namespace cairn::index::gpu::cuda
