// The IVF-Flat scan kernels (ivf_flat_index.cu).
// Included by ivf_flat_index.cu alone, and by the emulation test (kernel_emulation_test.cc), which
// runs these kernels on the CPU.
#ifndef CAIRN_INDEX_GPU_IVF_KERNELS_CUH_
#define CAIRN_INDEX_GPU_IVF_KERNELS_CUH_

#include <cstddef>
#include <cstdint>

// Loops over register arrays unrolled by nvcc (so the arrays stay in
// registers); plain loops for the host compiler.
#if defined(__CUDACC__)
#define CAIRN_UNROLL _Pragma("unroll")
#else
#define CAIRN_UNROLL
#endif

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

// ---- Scan by list --------------------------------------------------------
// With many queries per probed list (large batches), each list's vectors are
// read once for up to kTileQueries of the queries that probe it, instead of
// once per query: the scan becomes a tiled product of queries by vectors in
// shared memory, bound by arithmetic rather than by memory. A pair
// j = q * nprobe + p names the p-th list query q probes; the pairs are
// grouped by list (counted, then scattered) and each block takes one
// TileWork: a list and up to kTileQueries of its pairs. It writes the same
// rows, in the same places, as ScanKernel.

constexpr int kTileQueries = 32;   // pairs per block
constexpr int kTileVectors = 128;  // list vectors per step
constexpr int kTileDims = 32;      // dimensions per step
constexpr int kTileThreads = 256;  // 8 warps: warp w takes queries 4w..4w+3, lane l vectors l, l+32, l+64, l+96
static_assert(kTileThreads == 256 && kTileQueries == 32 && kTileVectors == 128 && kTileDims == 32,
              "TiledScanKernel's loads and tiles are laid out for these sizes");

struct TileWork {
  int64_t list = 0;
  int64_t pair_begin = 0;  // into the pairs grouped by list
  int32_t pairs = 0;       // 1..kTileQueries
};

__global__ void CountPairsKernel(const int64_t* probes, int64_t npairs, uint32_t* counts) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < npairs;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (probes[j] >= 0) atomicAdd(&counts[probes[j]], 1u);
  }
}

// cursor: where each list's pairs start (the exclusive sum of the counts).
__global__ void ScatterPairsKernel(const int64_t* probes, int64_t npairs, uint32_t* cursor, int64_t* order) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < npairs;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (probes[j] >= 0) order[atomicAdd(&cursor[probes[j]], 1u)] = j;
  }
}

// The host's half of the grouping: from the counts of pairs per list, each
// list's first pair (cursor, for ScatterPairsKernel) and the blocks' work,
// the lists taken in `list_order` (longest first, so that the longest blocks
// do not start last and leave the GPU idle at the end). Returns the number
// of pairs.
inline int64_t PlanTiles(const uint32_t* counts, const uint32_t* list_order, size_t nlist, uint32_t* cursor,
                         TileWork* work, size_t* n_work) {
  int64_t at = 0;
  size_t w = 0;
  for (size_t o = 0; o < nlist; ++o) {
    const uint32_t l = list_order[o];
    cursor[l] = static_cast<uint32_t>(at);
    for (uint32_t t = 0; t < counts[l]; t += kTileQueries) {
      work[w].list = static_cast<int64_t>(l);
      work[w].pair_begin = at + t;
      work[w].pairs = static_cast<int32_t>(counts[l] - t < static_cast<uint32_t>(kTileQueries) ? counts[l] - t
                                                                                              : kTileQueries);
      ++w;
    }
    at += counts[l];
  }
  *n_work = w;
  return at;
}

// Four blocks per SM: 64 registers a thread, which nvcc 13 reaches without
// spilling.
template <bool kL2>
__global__ void __launch_bounds__(kTileThreads, 4) TiledScanKernel(
    const float* queries, uint32_t d, int nprobe, const int64_t* probe_start, const TileWork* work,
    const int64_t* order, const float* data, const int64_t* positions, const int64_t* list_off,
    const uint64_t* allow, float* dist, int64_t* labels, int64_t row_cap) {
  // Padded so that a warp's stores (4 queries x 8 dimensions; 32 dimensions
  // of 8 vectors) and loads (32 consecutive vectors) fall in distinct banks;
  // qs rows stay 16-byte aligned for the float4 loads.
  __shared__ __align__(16) float qs[kTileDims][kTileQueries + 4];
  __shared__ float vs[kTileDims][kTileVectors + 1];
  __shared__ int64_t qrow[kTileQueries];    // the pair's query, -1 past the block's pairs
  __shared__ int64_t out_at[kTileQueries];  // where the pair's distances start in dist / labels
  const TileWork w = work[blockIdx.x];
  const int64_t begin = list_off[w.list], len = list_off[w.list + 1] - begin;
  const int t = threadIdx.x, warp = t / 32, lane = t & 31;
  if (t < kTileQueries) {
    if (t < w.pairs) {
      const int64_t pair = order[w.pair_begin + t];
      qrow[t] = pair / nprobe;
      out_at[t] = pair / nprobe * row_cap + probe_start[pair];
    } else {
      qrow[t] = -1;
      out_at[t] = -1;
    }
  }
  __syncthreads();
  // Loads: this thread takes dimensions (lane & 7) + 8i of query 4 * warp + lane / 8
  // (i < 4), and dimension `lane` of vectors warp + 8i (i < 16).
  const int qi = warp * 4 + lane / 8, qj = lane & 7;
  const float* qp = qrow[qi] >= 0 ? queries + qrow[qi] * d + qj : nullptr;
  // The block's pairs fill its slots from 0: warps past them only load.
  const bool active = warp * 4 < w.pairs;
  for (int64_t v0 = 0; v0 < len; v0 += kTileVectors) {
    const float* vp = data + (begin + v0 + warp) * d + lane;
    const int64_t vstride = 8 * static_cast<int64_t>(d), vleft = len - v0 - warp;
    float acc[4][4] = {};
    for (uint32_t d0 = 0; d0 < d; d0 += kTileDims) {
      float ql[kTileDims / 8], vl[kTileVectors / 8];
      CAIRN_UNROLL
      for (int i = 0; i < kTileDims / 8; ++i) {
        ql[i] = qp != nullptr && d0 + qj + 8 * i < d ? qp[d0 + 8 * i] : 0.0f;
      }
      CAIRN_UNROLL
      for (int i = 0; i < kTileVectors / 8; ++i) {
        vl[i] = d0 + lane < d && 8 * i < vleft ? vp[i * vstride + d0] : 0.0f;
      }
      CAIRN_UNROLL
      for (int i = 0; i < kTileDims / 8; ++i) qs[qj + 8 * i][qi] = ql[i];
      CAIRN_UNROLL
      for (int i = 0; i < kTileVectors / 8; ++i) vs[lane][warp + 8 * i] = vl[i];
      __syncthreads();
      if (active) {
        CAIRN_UNROLL
        for (int j = 0; j < kTileDims; ++j) {
          const float4 q4 = *reinterpret_cast<const float4*>(&qs[j][warp * 4]);
          const float qv[4] = {q4.x, q4.y, q4.z, q4.w};
          float vv[4];
          CAIRN_UNROLL
          for (int c = 0; c < 4; ++c) vv[c] = vs[j][lane + 32 * c];
          CAIRN_UNROLL
          for (int r = 0; r < 4; ++r) {
            CAIRN_UNROLL
            for (int c = 0; c < 4; ++c) {
              if constexpr (kL2) {
                const float diff = qv[r] - vv[c];
                acc[r][c] += diff * diff;
              } else {
                acc[r][c] += qv[r] * vv[c];
              }
            }
          }
        }
      }
      __syncthreads();
    }
    if (!active) continue;
    CAIRN_UNROLL
    for (int c = 0; c < 4; ++c) {
      const int64_t i = v0 + lane + 32 * c;
      if (i >= len) break;
      const int64_t pos = positions[begin + i];
      const bool allowed = allow == nullptr || ((allow[pos >> 6] >> (pos & 63)) & 1ull);
      CAIRN_UNROLL
      for (int r = 0; r < 4; ++r) {
        const int64_t at = out_at[warp * 4 + r];
        if (at < 0) continue;
        labels[at + i] = allowed ? pos : -1;
        if (allowed) dist[at + i] = kL2 ? acc[r][c] : -acc[r][c];
      }
    }
  }
}

}  // namespace cairn::index::gpu::cuda::kernels

#endif  // CAIRN_INDEX_GPU_IVF_KERNELS_CUH_
