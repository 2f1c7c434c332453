// Top-k selection on the GPU: the k smallest values of each row of a
// distance matrix, sorted ascending, for k up to kMaxK (1024).
//
// One block of 256 threads per (row, slice): a radix select over the 32-bit
// order-preserving keys of the floats (four passes of 8 bits over shared
// histograms) finds the k-th key, a fifth pass gathers the keys below it and
// as many equal to it as needed, and a bitonic sort in shared memory orders
// them. Splitting long rows into slices, then selecting again over the
// slices' results (in_ids), keeps every multiprocessor busy for small batches.
#ifndef CAIRN_INDEX_GPU_SELECT_CUH_
#define CAIRN_INDEX_GPU_SELECT_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace cairn::index::gpu::cuda {

struct SelectArgs {
  // Input: rows x cols values, row r at v + r * ld.
  const float* v = nullptr;
  int64_t ld = 0;
  int rows = 0;
  int64_t cols = 0;
  // Optional: row r has only row_len[r] valid columns.
  const int64_t* row_len = nullptr;
  // Optional: added to the value of column c before selecting.
  const float* col_add = nullptr;
  // Optional: the label of element (r, c), same layout as v; a negative label
  // marks an empty element. Without it the label is id_offset + c.
  const int64_t* in_ids = nullptr;
  int64_t id_offset = 0;
  // Optional: only labels whose bit is set may be selected (bit = label).
  const uint64_t* allow = nullptr;
  int k = 0;
  // Each row is cut into `slices` slices of slice_len columns; (r, s) writes
  // its k results at out + r * out_ld + s * k.
  int slices = 1;
  int64_t slice_len = 0;  // 0: the whole row
  float* out_v = nullptr;
  int64_t* out_i = nullptr;
  int64_t out_ld = 0;
};

// Missing results are +infinity with label -1.
void LaunchSelect(const SelectArgs& args, cudaStream_t stream);

// Slices that keep the device busy: about two blocks per multiprocessor in
// all, each slice at least min_slice columns.
int PickSlices(int rows, int64_t cols, int k, int sm_count);

}  // namespace cairn::index::gpu::cuda

#endif  // CAIRN_INDEX_GPU_SELECT_CUH_
