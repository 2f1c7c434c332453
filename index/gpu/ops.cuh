// Building blocks shared by the GPU indexes: storage conversion, squared
// norms, distance GEMMs and small element-wise fixes.
#ifndef CAIRN_INDEX_GPU_OPS_CUH_
#define CAIRN_INDEX_GPU_OPS_CUH_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "index/gpu/cuda_common.cuh"

namespace cairn::index::gpu::cuda {

size_t StorageBytes(Storage st);

// out (count elements of `st`) = in (float32), rounded to nearest.
void ConvertFloats(const float* in, void* out, size_t count, Storage st, cudaStream_t stream);

// out[i] = squared norm of row i of x (n rows of d values of `st`), in float32.
void RowSquaredNorms(const void* x, size_t n, uint32_t d, Storage st, float* out, cudaStream_t stream);

// out[i * ldo + j] = alpha * dot(q_i, b_j) for nq query rows q and nb base rows
// b, row-major of d values of `st`; accumulates in float32. Query row i
// starts at q + i * ldq (0: d), so q may be d columns of wider rows.
void GemmScaledDots(const BlasHandle& blas, cudaStream_t stream, Storage st, const void* b, size_t nb,
                    const void* q, size_t nq, uint32_t d, float alpha, float* out, size_t ldo, size_t ldq = 0);

// v[r * k + j] += row_add[r] for finite entries, clamped at 0 when `clamp`.
void AddRowValues(float* v, size_t rows, size_t k, const float* row_add, bool clamp, cudaStream_t stream);

}  // namespace cairn::index::gpu::cuda

#endif  // CAIRN_INDEX_GPU_OPS_CUH_
