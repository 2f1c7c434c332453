// Runs CUDA kernels on the CPU, for tests of their logic on machines without a
// GPU (CI). Include it before any kernel header (select_kernel.cuh...): the
// kernels compile unchanged as host C++ against the definitions below.
//
// The model it follows:
// - one std::thread per CUDA thread of a block, all running at once; blocks
//   run one after another, in a shuffled order (a valid CUDA schedule; races
//   between blocks are not seen);
// - __shared__ becomes `static`, so a block's threads share it; between
//   blocks it keeps its contents (a kernel that reads shared memory before
//   writing it is not caught here: compute-sanitizer's initcheck does that
//   on a GPU). Dynamic shared memory (CAIRN_DYNAMIC_SHARED) is filled with
//   0xff bytes (NaN floats) before each block, and over 48 KiB fails;
// - __syncthreads is a barrier of the block's threads that have not
//   returned;
// - warp intrinsics (__shfl_down_sync, __match_any_sync) exchange values
//   through a barrier of the 32 lanes. Only full masks are emulated: a warp
//   operation with a lane that has returned, or in a warp of under 32
//   threads, fails the process, as it is undefined behaviour on a GPU. The
//   barrier also orders memory, which a shuffle does not on a GPU: a missing
//   __syncwarp is not caught;
// - atomics are relaxed std::atomic_ref operations, as on a GPU.
// Built with ThreadSanitizer, every missing barrier between threads that
// share memory shows as a data race; built with AddressSanitizer, every
// out-of-bounds access to shared or global memory shows. A barrier that some
// threads never reach fails the process after 60 s.
#ifndef CAIRN_INDEX_GPU_CUDA_EMULATOR_H_
#define CAIRN_INDEX_GPU_CUDA_EMULATOR_H_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <random>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- what nvcc provides to device code, in the global namespace ----------
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace cairn::index::gpu::emu {

// A kernel broke a rule of the CUDA model: the process stops with the reason.
[[noreturn]] inline void Fail(const char* why) {
  std::fprintf(stderr, "cuda emulator: %s\n", why);
  std::fflush(stderr);
  std::abort();
}

// A reusable barrier for a number of threads that shrinks as threads leave.
class Barrier {
 public:
  void Reset(int expected) {
    std::lock_guard<std::mutex> lock(mu_);
    expected_ = expected;
    arrived_ = 0;
  }

  // Waits for every remaining thread; `last` runs once, in the thread that
  // arrives last, before any is released. With `need` > 0, fails unless
  // that many threads remain (checked as the caller arrives, under the same
  // lock as Leave, so a thread leaving at any moment is caught).
  void Wait(const std::function<void()>& last = nullptr, int need = 0) {
    std::unique_lock<std::mutex> lock(mu_);
    if (need > 0 && expected_ != need) Fail("warp operation with a full mask after a lane of the warp returned");
    const uint64_t gen = gen_;
    if (++arrived_ >= expected_) {
      if (last) last();
      Release();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return gen_ != gen; })) {
      Fail("deadlock: a barrier was not reached by every thread of the block or warp within 60 s");
    }
  }

  // The calling thread returned from the kernel. With `strict`, a thread
  // waiting here means the others are in a warp operation without it.
  void Leave(bool strict) {
    std::lock_guard<std::mutex> lock(mu_);
    --expected_;
    if (arrived_ > 0) {
      if (strict) Fail("a lane returned while the rest of its warp was in a warp operation (full mask)");
      if (arrived_ >= expected_) Release();
    }
  }

 private:
  void Release() {
    arrived_ = 0;
    ++gen_;
    cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  int expected_ = 0;
  int arrived_ = 0;
  uint64_t gen_ = 0;
};

struct Warp {
  Barrier barrier;  // its lanes that have not returned
  int size = 0;     // threads of the block in this warp
  uint64_t slot[32] = {};
};

// Exactly the requested bytes (so that AddressSanitizer sees an access past
// them), 16-byte aligned like CUDA's dynamic shared memory.
class DynamicBytes {
 public:
  explicit DynamicBytes(size_t n) : n_(n), p_(::operator new[](n, std::align_val_t{16})) {}
  ~DynamicBytes() { ::operator delete[](p_, std::align_val_t{16}); }
  DynamicBytes(const DynamicBytes&) = delete;
  DynamicBytes& operator=(const DynamicBytes&) = delete;
  void* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  size_t n_;
  void* p_;
};

struct Block {
  explicit Block(size_t dynamic_bytes) : dynamic_shared(dynamic_bytes) {}
  Barrier sync;  // __syncthreads
  Barrier next;  // all threads between two blocks
  std::vector<std::unique_ptr<Warp>> warps;
  DynamicBytes dynamic_shared;
};

struct ThreadState {
  Block* block = nullptr;
  int tid = 0;
};
inline thread_local ThreadState t_state;

// Every lane puts `value`; each gets f(slots) once all have.
template <typename F>
auto WarpExchange(uint64_t value, F f) {
  Warp& w = *t_state.block->warps[t_state.tid / 32];
  if (w.size != 32) Fail("warp operation in a warp of under 32 threads (block size not a multiple of 32)");
  const int lane = t_state.tid & 31;
  w.slot[lane] = value;
  w.barrier.Wait(nullptr, 32);
  auto result = f(w.slot, lane);
  w.barrier.Wait(nullptr, 32);
  return result;
}

template <typename T>
uint64_t ToBits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T FromBits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <typename T>
T* DynamicShared() {
  return static_cast<T*>(t_state.block->dynamic_shared.get());
}

inline void CheckLaunch(dim3 grid, dim3 block, size_t dynamic_shared) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64) Fail("launch: block size out of range");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    Fail("launch: grid size out of range");
  }
  if (dynamic_shared > 48 * 1024) Fail("launch: over 48 KiB of dynamic shared memory without an opt-in");
}

// kernel<<<grid, block, dynamic_shared>>>(args...), on the CPU; returns when
// every block has run.
template <typename... Params, typename... Args>
void Launch(dim3 grid, dim3 block_dim, size_t dynamic_shared, void (*kernel)(Params...), Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel argument count");
  CheckLaunch(grid, block_dim, dynamic_shared);
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  const int n = static_cast<int>(block_dim.x * block_dim.y * block_dim.z);
  Block block(dynamic_shared);
  for (int t = 0; t < n; t += 32) {
    auto w = std::make_unique<Warp>();
    w->size = std::min(32, n - t);
    block.warps.push_back(std::move(w));
  }
  auto reset = [&] {
    block.sync.Reset(n);
    for (auto& w : block.warps) w->barrier.Reset(w->size);
    std::memset(block.dynamic_shared.get(), 0xff, block.dynamic_shared.size());
  };
  reset();
  block.next.Reset(n);
  // Blocks in a shuffled order (seeded per launch, so runs repeat): a kernel
  // that depends on the order of its blocks shows it.
  std::vector<uint3> order;
  order.reserve(static_cast<size_t>(grid.x) * grid.y * grid.z);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) order.push_back(uint3{x, y, z});
    }
  }
  static std::atomic<uint64_t> launches{0};
  std::mt19937_64 rng(0x5eed + launches.fetch_add(1, std::memory_order_relaxed));
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      t_state = ThreadState{&block, t};
      ::threadIdx = uint3{t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y)};
      ::blockDim = block_dim;
      ::gridDim = grid;
      for (const uint3& b : order) {
        ::blockIdx = b;
        std::apply(kernel, params);
        block.warps[t / 32]->barrier.Leave(/*strict=*/true);
        block.sync.Leave(/*strict=*/false);
        block.next.Wait(reset);
      }
      t_state = ThreadState{};
    });
  }
  for (auto& th : threads) th.join();
}

}  // namespace cairn::index::gpu::emu

// ---- more of what nvcc provides to device code ----------------------------

#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#define CAIRN_DYNAMIC_SHARED(type, name) type* name = ::cairn::index::gpu::emu::DynamicShared<type>()

inline void __syncthreads() { cairn::index::gpu::emu::t_state.block->sync.Wait(); }

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta) {
  namespace emu = cairn::index::gpu::emu;
  if (mask != 0xffffffffu) emu::Fail("only full warp masks are emulated");
  return emu::WarpExchange(emu::ToBits(value), [&](const uint64_t* slot, int lane) {
    return lane + delta < 32 ? emu::FromBits<T>(slot[lane + delta]) : value;
  });
}

// Lanes whose values have the same bits (CUDA's overloads: 32- and 64-bit
// integers and floats).
template <typename T>
unsigned __match_any_sync(unsigned mask, T value) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "__match_any_sync takes 32- or 64-bit values");
  namespace emu = cairn::index::gpu::emu;
  if (mask != 0xffffffffu) emu::Fail("only full warp masks are emulated");
  const uint64_t bits = emu::ToBits(value);
  return emu::WarpExchange(bits, [&](const uint64_t* slot, int) {
    unsigned same = 0;
    for (int l = 0; l < 32; ++l) {
      if (slot[l] == bits) same |= 1u << l;
    }
    return same;
  });
}

// Relaxed, as on a GPU: an atomic orders nothing else (that takes a fence).
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  return std::atomic_ref<unsigned>(*p).fetch_add(v, std::memory_order_relaxed);
}

inline int __ffs(unsigned x) { return x == 0 ? 0 : std::countr_zero(x) + 1; }
inline int __popc(unsigned x) { return std::popcount(x); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }

template <typename T>
T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
T max(T a, T b) {
  return a < b ? b : a;
}
// As on a GPU, min and max of floats are fminf and fmaxf (a NaN loses).
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

#endif  // CAIRN_INDEX_GPU_CUDA_EMULATOR_H_
