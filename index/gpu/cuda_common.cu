#include "index/gpu/cuda_common.cuh"

#include "index/gpu/ops.cuh"

#include <dlfcn.h>

#include <mutex>
#include <vector>

namespace cairn::index::gpu::cuda {

void ThrowCuda(cudaError_t e, const char* expr, const char* file, int line) {
  Code code = Code::kInternal;
  if (e == cudaErrorMemoryAllocation) code = Code::kResourceExhausted;
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorInvalidDevice ||
      e == cudaErrorDevicesUnavailable || e == cudaErrorSystemDriverMismatch ||
      e == cudaErrorCompatNotSupportedOnDevice || e == cudaErrorNoKernelImageForDevice) {
    code = Code::kUnavailable;
  }
  throw CudaFailure(code, std::string("CUDA: ") + cudaGetErrorString(e) + " (" + expr + " at " + file +
                              ":" + std::to_string(line) + ")");
}

void ThrowBlas(cublasStatus_t s, const char* expr, const char* file, int line) {
  const Blas* blas = LoadBlas(nullptr);
  std::string what = blas != nullptr ? blas->status_string(s) : std::to_string(static_cast<int>(s));
  Code code = s == CUBLAS_STATUS_ALLOC_FAILED ? Code::kResourceExhausted : Code::kInternal;
  throw CudaFailure(code, "cuBLAS: " + what + " (" + expr + " at " + file + ":" + std::to_string(line) + ")");
}

namespace {

struct Loaded {
  Blas api{};
  bool ok = false;
  std::string why;
};

template <typename F>
bool Sym(void* lib, const char* name, F* out, std::string* why) {
  void* p = dlsym(lib, name);
  if (p == nullptr) {
    *why = std::string("libcublas has no symbol ") + name;
    return false;
  }
  *out = reinterpret_cast<F>(p);
  return true;
}

const Loaded& LoadOnce() {
  static const Loaded* loaded = [] {
    auto* l = new Loaded;
    void* lib = nullptr;
    // The soname of the toolkit Cairn was built with first, then any.
    // The loader's search path first, then where the toolkit installs it.
    for (const char* name : {"libcublas.so." CAIRN_CUBLAS_SOVERSION, "libcublas.so",
                             "/usr/local/cuda/lib64/libcublas.so." CAIRN_CUBLAS_SOVERSION}) {
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib != nullptr) break;
    }
    if (lib == nullptr) {
      const char* err = dlerror();
      l->why = std::string("cannot load libcublas.so." CAIRN_CUBLAS_SOVERSION ": ") + (err ? err : "not found") +
               " (install the CUDA toolkit's cuBLAS or add its folder to LD_LIBRARY_PATH)";
      return l;
    }
    l->ok = Sym(lib, "cublasCreate_v2", &l->api.create, &l->why) &&
            Sym(lib, "cublasDestroy_v2", &l->api.destroy, &l->why) &&
            Sym(lib, "cublasSetStream_v2", &l->api.set_stream, &l->why) &&
            Sym(lib, "cublasSgemm_v2", &l->api.sgemm, &l->why) &&
            Sym(lib, "cublasGemmEx", &l->api.gemm_ex, &l->why) &&
            Sym(lib, "cublasSetMathMode", &l->api.set_math_mode, &l->why) &&
            Sym(lib, "cublasGetStatusString", &l->api.status_string, &l->why);
    return l;
  }();
  return *loaded;
}

}  // namespace

const Blas* LoadBlas(std::string* why) {
  const Loaded& l = LoadOnce();
  if (!l.ok) {
    if (why != nullptr) *why = l.why;
    return nullptr;
  }
  return &l.api;
}

void UseDevice(int device) { CAIRN_CUDA(cudaSetDevice(device)); }

BlasHandle::BlasHandle() {
  std::string why;
  api_ = LoadBlas(&why);
  if (api_ == nullptr) throw CudaFailure(Code::kUnavailable, why);
  CAIRN_CUBLAS(api_->create(&h_));
  // Float32 GEMMs stay float32 (no TF32): results match the CPU path.
  if (cublasStatus_t st = api_->set_math_mode(h_, CUBLAS_DEFAULT_MATH); st != CUBLAS_STATUS_SUCCESS) {
    api_->destroy(h_);
    ThrowBlas(st, "cublasSetMathMode", __FILE__, __LINE__);
  }
}

BlasHandle::~BlasHandle() {
  if (h_ != nullptr) api_->destroy(h_);
}

size_t UsableBytes(int device, size_t budget) {
  size_t free_b = 0, total_b = 0;
  CAIRN_CUDA(cudaMemGetInfo(&free_b, &total_b));
  const size_t cap = free_b / 10 * 8;
  return budget == 0 ? cap : std::min(budget, cap);
}

Result MeasureCeilings(int device, Ceilings* out) {
  return Guard([&] {
    UseDevice(device);
    Stream s;
    struct TimingEvent {
      cudaEvent_t e = nullptr;
      TimingEvent() { CAIRN_CUDA(cudaEventCreate(&e)); }
      ~TimingEvent() { cudaEventDestroy(e); }
    } ev0, ev1;
    cudaEvent_t t0 = ev0.e, t1 = ev1.e;
    auto time_ms = [&](auto&& body, int reps) {
      body();  // warm-up
      CAIRN_CUDA(cudaEventRecord(t0, s.get()));
      for (int i = 0; i < reps; ++i) body();
      CAIRN_CUDA(cudaEventRecord(t1, s.get()));
      CAIRN_CUDA(cudaEventSynchronize(t1));
      float ms = 0;
      CAIRN_CUDA(cudaEventElapsedTime(&ms, t0, t1));
      return static_cast<double>(ms) / reps;
    };
    const size_t bytes = 2ull << 30;
    {
      DeviceArray<char> a(bytes), b(bytes);
      CAIRN_CUDA(cudaMemsetAsync(a.get(), 1, bytes, s.get()));
      const double ms = time_ms([&] { CAIRN_CUDA(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, s.get())); }, 10);
      out->copy_bytes_per_s = 2.0 * bytes / (ms / 1e3);
    }
    BlasHandle blas;
    CAIRN_CUBLAS(blas.api().set_stream(blas.get(), s.get()));
    const int m = 8192;
    const double flops = 2.0 * m * m * m;
    DeviceArray<float> a(size_t{m} * m), b(size_t{m} * m), c(size_t{m} * m);
    DeviceArray<char> ha(size_t{m} * m * 2), hb(size_t{m} * m * 2);
    // Random-looking inputs (zeros run faster than real data).
    std::vector<float> host(size_t{m} * m);
    uint32_t x = 12345;
    for (auto& v : host) {
      x = x * 1664525u + 1013904223u;
      v = static_cast<float>(x >> 8) / 16777216.0f - 0.5f;
    }
    CAIRN_CUDA(cudaMemcpy(a.get(), host.data(), host.size() * 4, cudaMemcpyHostToDevice));
    CAIRN_CUDA(cudaMemcpy(b.get(), host.data(), host.size() * 4, cudaMemcpyHostToDevice));
    const float one = 1, zero = 0;
    out->sgemm_flops = flops / (time_ms([&] {
      CAIRN_CUBLAS(blas.api().sgemm(blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, m, m, m, &one, a.get(), m, b.get(), m, &zero, c.get(), m));
    }, 5) / 1e3);
    for (int pass = 0; pass < 2; ++pass) {
      const Storage st = pass == 0 ? Storage::kFloat16 : Storage::kBFloat16;
      ConvertFloats(a.get(), ha.get(), size_t{m} * m, st, s.get());
      ConvertFloats(b.get(), hb.get(), size_t{m} * m, st, s.get());
      const cudaDataType_t t = pass == 0 ? CUDA_R_16F : CUDA_R_16BF;
      const double f = flops / (time_ms([&] {
        CAIRN_CUBLAS(blas.api().gemm_ex(blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, m, m, m, &one, ha.get(), t, m, hb.get(), t, m,
                                        &zero, c.get(), CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      }, 10) / 1e3);
      (pass == 0 ? out->hgemm_flops : out->bgemm_flops) = f;
    }
  });
}

Result Probe(int device, DeviceProps* out) {
  return Guard([&] {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
      cudaGetLastError();
      if (void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL); driver == nullptr) {
        throw CudaFailure(Code::kNoDriver, "no NVIDIA driver (libcuda.so.1 not found)");
      } else {
        dlclose(driver);
      }
      throw CudaFailure(Code::kUnavailable, std::string("no usable CUDA device: ") + cudaGetErrorString(e));
    }
    if (count == 0) throw CudaFailure(Code::kUnavailable, "no CUDA device");
    if (device < 0 || device >= count) {
      throw CudaFailure(Code::kUnavailable, "CUDA device " + std::to_string(device) + " does not exist (" +
                                                std::to_string(count) + " present)");
    }
    cudaDeviceProp p{};
    CAIRN_CUDA(cudaGetDeviceProperties(&p, device));
    if (p.major < 7 || (p.major == 7 && p.minor < 5)) {
      throw CudaFailure(Code::kUnavailable, std::string(p.name) + " has compute capability " +
                                                std::to_string(p.major) + "." + std::to_string(p.minor) +
                                                "; Cairn's GPU code needs 7.5 or newer");
    }
    UseDevice(device);
    std::string why;
    if (LoadBlas(&why) == nullptr) throw CudaFailure(Code::kUnavailable, why);
    out->name = p.name;
    out->ordinal = device;
    out->cc_major = p.major;
    out->cc_minor = p.minor;
    out->sm_count = p.multiProcessorCount;
    CAIRN_CUDA(cudaMemGetInfo(&out->free_bytes, &out->total_bytes));
    CAIRN_CUDA(cudaDriverGetVersion(&out->driver_version));
  });
}

}  // namespace cairn::index::gpu::cuda
