// Shared pieces of the CUDA backend: checked calls, owning handles for
// device and pinned memory, streams and events, and cuBLAS loaded at run time.
//
// Inside the .cu files a failed CUDA or cuBLAS call throws CudaFailure; each
// entry point of cuda_backend.h catches it and returns a Result, so nothing
// is thrown past index/gpu.
//
// cuBLAS is opened with dlopen on first use, so one binary runs on machines
// without it (or without a GPU): the GPU path then reports Unavailable.
#ifndef CAIRN_INDEX_GPU_CUDA_COMMON_CUH_
#define CAIRN_INDEX_GPU_CUDA_COMMON_CUH_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "index/gpu/cuda_backend.h"

namespace cairn::index::gpu::cuda {

class CudaFailure : public std::runtime_error {
 public:
  CudaFailure(Code code, const std::string& what) : std::runtime_error(what), code_(code) {}
  Code code() const { return code_; }

 private:
  Code code_;
};

[[noreturn]] void ThrowCuda(cudaError_t e, const char* expr, const char* file, int line);
[[noreturn]] void ThrowBlas(cublasStatus_t s, const char* expr, const char* file, int line);

#define CAIRN_CUDA(expr)                                                         \
  do {                                                                           \
    cudaError_t cairn_e_ = (expr);                                               \
    if (cairn_e_ != cudaSuccess) ::cairn::index::gpu::cuda::ThrowCuda(cairn_e_, #expr, __FILE__, __LINE__); \
  } while (0)
#define CAIRN_CUBLAS(expr)                                                       \
  do {                                                                           \
    cublasStatus_t cairn_s_ = (expr);                                            \
    if (cairn_s_ != CUBLAS_STATUS_SUCCESS) ::cairn::index::gpu::cuda::ThrowBlas(cairn_s_, #expr, __FILE__, __LINE__); \
  } while (0)
// After every kernel launch: launch errors (bad configuration) surface here.
#define CAIRN_CUDA_LAUNCHED() CAIRN_CUDA(cudaGetLastError())

// Runs fn, turning CudaFailure and std::bad_alloc into a Result.
template <typename Fn>
Result Guard(Fn&& fn) {
  try {
    fn();
    return {};
  } catch (const CudaFailure& f) {
    return {f.code(), f.what()};
  } catch (const std::bad_alloc&) {
    return {Code::kResourceExhausted, "out of host memory"};
  } catch (const std::exception& e) {
    return {Code::kInternal, e.what()};
  }
}

// cuBLAS entry points, resolved from libcublas.so at run time.
struct Blas {
  decltype(&cublasCreate_v2) create;
  decltype(&cublasDestroy_v2) destroy;
  decltype(&cublasSetStream_v2) set_stream;
  decltype(&cublasSgemm_v2) sgemm;
  // cublasGemmEx is overloaded in C++; this is the C entry point.
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                            cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
  decltype(&cublasSetMathMode) set_math_mode;
  decltype(&cublasGetStatusString) status_string;
};
// nullptr (and *why set) when libcublas cannot be loaded.
const Blas* LoadBlas(std::string* why);

// Sets the device for the calling thread; throws if it fails.
void UseDevice(int device);

// Owns a device allocation (cudaMalloc; never managed memory).
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n) { Reset(n); }
  ~DeviceArray() { Free(); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    Free();
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
    return *this;
  }
  void Reset(size_t n) {
    Free();
    if (n == 0) return;
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, n * sizeof(T));
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the sticky error of a failed allocation
      throw CudaFailure(Code::kResourceExhausted,
                        "cudaMalloc of " + std::to_string(n * sizeof(T)) + " bytes failed: out of device memory");
    }
    CAIRN_CUDA(e);
    p_ = static_cast<T*>(p);
    n_ = n;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  void Free() {
    if (p_ != nullptr) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Owns page-locked host memory (cudaHostAlloc), for asynchronous copies.
template <typename T>
class PinnedArray {
 public:
  PinnedArray() = default;
  explicit PinnedArray(size_t n) { Reset(n); }
  ~PinnedArray() { Free(); }
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  void Reset(size_t n) {
    Free();
    if (n == 0) return;
    void* p = nullptr;
    cudaError_t e = cudaHostAlloc(&p, n * sizeof(T), cudaHostAllocDefault);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      throw CudaFailure(Code::kResourceExhausted,
                        "cudaHostAlloc of " + std::to_string(n * sizeof(T)) + " bytes failed");
    }
    CAIRN_CUDA(e);
    p_ = static_cast<T*>(p);
    n_ = n;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  void Free() {
    if (p_ != nullptr) cudaFreeHost(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Grow-only workspaces: reallocated (contents dropped) only when too small.
template <typename T>
void Grow(DeviceArray<T>* a, size_t n) {
  if (a->size() < n) a->Reset(n);
}
template <typename T>
void Grow(PinnedArray<T>* a, size_t n) {
  if (a->size() < n) a->Reset(n);
}

class Stream {
 public:
  Stream() { CAIRN_CUDA(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() {
    if (s_ != nullptr) cudaStreamDestroy(s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void Sync() const { CAIRN_CUDA(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_ = nullptr;
};

class Event {
 public:
  Event() { CAIRN_CUDA(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming)); }
  ~Event() {
    if (e_ != nullptr) cudaEventDestroy(e_);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return e_; }
  void Record(cudaStream_t s) { CAIRN_CUDA(cudaEventRecord(e_, s)); }
  void Sync() const { CAIRN_CUDA(cudaEventSynchronize(e_)); }

 private:
  cudaEvent_t e_ = nullptr;
};

// A cuBLAS handle (one per backend; calls on it are serialized by the owner).
class BlasHandle {
 public:
  BlasHandle();
  ~BlasHandle();
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;
  const Blas& api() const { return *api_; }
  cublasHandle_t get() const { return h_; }
  // Float32 GEMMs on the tensor cores in TF32 (10-bit mantissas, float32
  // accumulation): several times faster, about 1e-3 relative error.
  void AllowTf32(bool on) {
    CAIRN_CUBLAS(api_->set_math_mode(h_, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  }

 private:
  const Blas* api_ = nullptr;
  cublasHandle_t h_ = nullptr;
};

// Memory the caller may take on `device`: the budget, or 80% of what is free.
size_t UsableBytes(int device, size_t budget);

inline size_t CeilDiv(size_t a, size_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over `work` items (at most 65,536).
inline unsigned GridFor(size_t work, unsigned threads) {
  return static_cast<unsigned>(std::min<size_t>(CeilDiv(work, threads), 1u << 16));
}

}  // namespace cairn::index::gpu::cuda

#endif  // CAIRN_INDEX_GPU_CUDA_COMMON_CUH_
