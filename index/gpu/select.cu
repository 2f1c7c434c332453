#include <algorithm>
#include <climits>

#include "index/gpu/cuda_common.cuh"
#include "index/gpu/select.cuh"
#include "index/gpu/select_kernel.cuh"

namespace cairn::index::gpu::cuda {

void LaunchSelect(const SelectArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  if (a.k < 1 || a.k > kMaxK) throw CudaFailure(Code::kInvalidArgument, "k must be in 1..1024 on the GPU");
  if (a.slices < 1 || a.slices > 65535) throw CudaFailure(Code::kInternal, "bad slice count");
  if (a.slices > 1 && a.slice_len * a.slices < a.cols) throw CudaFailure(Code::kInternal, "slices do not cover the row");
  if (a.cols >= static_cast<int64_t>(UINT32_MAX)) {  // columns are kept as uint32, 0xffffffff pads
    throw CudaFailure(Code::kInternal, "select row too long");
  }
  dim3 grid(static_cast<unsigned>(a.rows), static_cast<unsigned>(a.slices));
  kernels::SelectKernel<<<grid, kernels::kSelectThreads, 0, stream>>>(a);
  CAIRN_CUDA_LAUNCHED();
}

int PickSlices(int rows, int64_t cols, int k, int sm_count) {
  const int64_t want_blocks = 2LL * std::max(sm_count, 1);
  if (rows >= want_blocks) return 1;
  const int64_t min_slice = std::max<int64_t>(4096, 8LL * k);
  int64_t slices = (want_blocks + rows - 1) / rows;
  slices = std::min<int64_t>(slices, std::max<int64_t>(1, cols / min_slice));
  return static_cast<int>(std::clamp<int64_t>(slices, 1, 65535));
}

}  // namespace cairn::index::gpu::cuda
