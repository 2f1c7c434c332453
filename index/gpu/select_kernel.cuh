// The top-k selection kernel behind LaunchSelect (select.cuh describes it).
// Included by select.cu alone, and by the emulation test (kernel_emulation_test.cc), which
// runs these kernels on the CPU.
#ifndef CAIRN_INDEX_GPU_SELECT_KERNEL_CUH_
#define CAIRN_INDEX_GPU_SELECT_KERNEL_CUH_

#include <cstdint>

#include "index/gpu/cuda_backend.h"
#include "index/gpu/select.cuh"

namespace cairn::index::gpu::cuda::kernels {

constexpr int kSelectThreads = 256;  // the histogram scan uses one thread per bin

// Order-preserving map of a float to an unsigned key: a < b iff Key(a) < Key(b).
__device__ __forceinline__ uint32_t Key(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float Unkey(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__global__ void __launch_bounds__(kSelectThreads) SelectKernel(SelectArgs a) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t scan[256];
  __shared__ uint32_t skey[kMaxK];
  __shared__ uint32_t scol[kMaxK];  // column relative to the row
  __shared__ uint32_t sh_prefix, sh_remaining, sh_total, sh_lt, sh_eq;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int64_t r = blockIdx.x;
  const int64_t s = blockIdx.y;
  const int k = a.k;
  int64_t len = a.cols;
  if (a.row_len != nullptr) len = min(len, a.row_len[r]);
  const int64_t slice_len = a.slice_len > 0 ? a.slice_len : a.cols;
  const int64_t begin = s * slice_len;
  const int64_t end = min(begin + slice_len, len);
  const float* row = a.v + r * a.ld;
  const int64_t* row_ids = a.in_ids != nullptr ? a.in_ids + r * a.ld : nullptr;

  auto key_of = [&](int64_t c, uint32_t* key) -> bool {
    const int64_t label = row_ids != nullptr ? row_ids[c] : a.id_offset + c;
    if (label < 0) return false;
    if (a.allow != nullptr && !((a.allow[label >> 6] >> (label & 63)) & 1ull)) return false;
    float v = row[c];
    if (a.col_add != nullptr) v += a.col_add[c];
    *key = Key(v);
    return true;
  };

  // Radix select: after pass p, `prefix` holds the top 8(p+1) bits of the
  // k-th smallest key and `remaining` its rank among keys with that prefix.
  uint32_t prefix = 0, mask = 0, remaining = static_cast<uint32_t>(k);
  bool take_all = false;
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    hist[tid] = 0;
    __syncthreads();
    // The whole warp steps together (the bound is the same for its lanes), so
    // the match below can name all 32 lanes.
    for (int64_t base = begin + (tid & ~31); base < end; base += kSelectThreads) {
      const int64_t c = base + lane;
      uint32_t key = 0;
      const bool counted = c < end && key_of(c, &key) && (key & mask) == prefix;
      // Distances close in value share their top key bits, so most lanes hit
      // one bin: lanes with the same bin add once, through their lowest lane.
      const uint32_t bin = counted ? (key >> shift) & 255u : 256u;
      const unsigned same = __match_any_sync(0xffffffffu, bin);
      if (counted && lane == __ffs(same) - 1) atomicAdd(&hist[bin], __popc(same));
    }
    __syncthreads();
    const uint32_t h = hist[tid];
    scan[tid] = h;
    __syncthreads();
    for (int off = 1; off < kSelectThreads; off <<= 1) {
      const uint32_t add = tid >= off ? scan[tid - off] : 0;
      __syncthreads();
      scan[tid] += add;
      __syncthreads();
    }
    const uint32_t incl = scan[tid];
    const uint32_t excl = incl - h;
    if (pass == 0 && tid == kSelectThreads - 1) sh_total = incl;
    __syncthreads();
    if (pass == 0 && sh_total <= static_cast<uint32_t>(k)) {
      take_all = true;
      break;
    }
    if (excl < remaining && remaining <= incl) {
      sh_prefix = prefix | (static_cast<uint32_t>(tid) << shift);
      sh_remaining = remaining - excl;
    }
    __syncthreads();
    prefix = sh_prefix;
    remaining = sh_remaining;
    mask |= 255u << shift;
  }

  if (tid == 0) {
    sh_lt = 0;
    sh_eq = 0;
  }
  __syncthreads();
  uint32_t selected;
  if (take_all) {
    selected = sh_total;
    for (int64_t c = begin + tid; c < end; c += kSelectThreads) {
      uint32_t key;
      if (key_of(c, &key)) {
        const uint32_t pos = atomicAdd(&sh_lt, 1u);
        skey[pos] = key;
        scol[pos] = static_cast<uint32_t>(c);
      }
    }
  } else {
    selected = static_cast<uint32_t>(k);
    const uint32_t kth = prefix;
    const uint32_t below = static_cast<uint32_t>(k) - remaining;  // keys < kth, all taken
    for (int64_t c = begin + tid; c < end; c += kSelectThreads) {
      uint32_t key;
      if (!key_of(c, &key) || key > kth) continue;
      if (key < kth) {
        const uint32_t pos = atomicAdd(&sh_lt, 1u);
        skey[pos] = key;
        scol[pos] = static_cast<uint32_t>(c);
      } else {
        const uint32_t pos = atomicAdd(&sh_eq, 1u);
        if (pos < remaining) {
          skey[below + pos] = key;
          scol[below + pos] = static_cast<uint32_t>(c);
        }
      }
    }
  }
  int p2 = 1;
  while (p2 < k) p2 <<= 1;
  for (int j = static_cast<int>(selected) + tid; j < p2; j += kSelectThreads) {
    skey[j] = 0xffffffffu;
    scol[j] = 0xffffffffu;
  }
  __syncthreads();

  // Bitonic sort of p2 (key, column) pairs, ascending.
  for (int size = 2; size <= p2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < p2 / 2; i += kSelectThreads) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        const bool up = (lo & size) == 0;
        const uint32_t klo = skey[lo], khi = skey[hi];
        const uint32_t clo = scol[lo], chi = scol[hi];
        const bool greater = klo > khi || (klo == khi && clo > chi);
        if (greater == up) {
          skey[lo] = khi;
          skey[hi] = klo;
          scol[lo] = chi;
          scol[hi] = clo;
        }
      }
      __syncthreads();
    }
  }

  for (int j = tid; j < k; j += kSelectThreads) {
    const int64_t o = r * a.out_ld + s * k + j;
    if (static_cast<uint32_t>(j) < selected) {
      const int64_t c = scol[j];
      a.out_v[o] = Unkey(skey[j]);
      a.out_i[o] = row_ids != nullptr ? row_ids[c] : a.id_offset + c;
    } else {
      a.out_v[o] = __int_as_float(0x7f800000);  // +infinity
      a.out_i[o] = -1;
    }
  }
}

}  // namespace cairn::index::gpu::cuda::kernels

#endif  // CAIRN_INDEX_GPU_SELECT_KERNEL_CUH_
