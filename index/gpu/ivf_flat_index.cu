// IVF-Flat search on the GPU. The inverted lists are copied to the device
// back to back (vectors in float32, their positions beside them); a batch of
// queries finds its nprobe nearest centroids (GEMM + select), every probed
// list is scanned, writing exact distances into a per-query row, and a last
// select keeps the k best of each row. The scan goes by query (a block per
// query and list) or, when the batch's queries share lists, by list (a block
// per list and up to 32 of its queries, reading the list once for them all);
// see IvfScan.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <numeric>
#include <vector>

#include "index/gpu/cuda_common.cuh"
#include "index/gpu/ivf_kernels.cuh"
#include "index/gpu/ops.cuh"
#include "index/gpu/select.cuh"

namespace cairn::index::gpu::cuda {
namespace {

constexpr size_t kWorkspaceBytes = 1ull << 30;
// Device bytes per (query, list) pair for the scan by list: its place in the
// grouping, and at most one block's work.
constexpr size_t kPairBytes = sizeof(int64_t) + sizeof(kernels::TileWork);
// In auto mode the scan goes by list from this many pairs per probed list on
// average: each list is then read once for several queries, which outweighs
// the work of the block's unused query slots.
constexpr int64_t kMinPairsPerList = 4;

class IvfFlatCuda final : public IvfFlatBackend {
 public:
  IvfFlatCuda(const IvfConfig& cfg, size_t nlist, uint32_t d, size_t n_positions)
      : cfg_(cfg), nlist_(nlist), d_(d), n_positions_(n_positions) {}

  void Init(const float* centroids, const IvfList* lists) {
    UseDevice(cfg_.device);
    cudaDeviceProp props{};
    CAIRN_CUDA(cudaGetDeviceProperties(&props, cfg_.device));
    sm_count_ = props.multiProcessorCount;
    std::vector<int64_t> off(nlist_ + 1, 0);
    lens_.resize(nlist_);
    for (size_t l = 0; l < nlist_; ++l) {
      lens_[l] = lists[l].size;
      off[l + 1] = off[l] + static_cast<int64_t>(lists[l].size);
    }
    total_ = static_cast<size_t>(off[nlist_]);
    longest_first_.resize(nlist_);
    std::iota(longest_first_.begin(), longest_first_.end(), 0u);
    std::stable_sort(longest_first_.begin(), longest_first_.end(),
                     [&](uint32_t a, uint32_t b) { return lens_[a] > lens_[b]; });
    longest_prefix_.assign(nlist_ + 1, 0);
    for (size_t i = 0; i < nlist_; ++i) longest_prefix_[i + 1] = longest_prefix_[i] + lens_[longest_first_[i]];

    const size_t usable = UsableBytes(cfg_.device, cfg_.memory_budget);
    const size_t lists_bytes = total_ * (d_ * sizeof(float) + sizeof(int64_t)) + nlist_ * d_ * sizeof(float) +
                               (nlist_ + 1) * sizeof(int64_t) + (n_positions_ + 63) / 64 * 8;
    // Workspace: distance rows of a batch of queries probing the longest
    // lists (at most kMaxK of them), within what the budget leaves.
    const size_t max_probe = std::min<size_t>(nlist_, kMaxK);
    const size_t per_query = longest_prefix_[max_probe] * (sizeof(float) + sizeof(int64_t)) +
                             nlist_ * sizeof(float) + kMaxK * 24 + max_probe * kPairBytes;
    const size_t io = cfg_.max_batch * (d_ * sizeof(float) + kMaxK * 24) + 2 * nlist_ * sizeof(uint32_t);
    if (lists_bytes + io + per_query > usable) {
      throw CudaFailure(Code::kResourceExhausted,
                        "IVF-Flat segment of " + std::to_string(total_) + " vectors needs " +
                            std::to_string((lists_bytes + io + per_query) >> 20) +
                            " MiB of GPU memory; the budget allows " + std::to_string(usable >> 20) + " MiB");
    }
    ws_bytes_ = std::min({usable - lists_bytes - io, kWorkspaceBytes, cfg_.max_batch * per_query});
    planned_bytes_ = lists_bytes + io + ws_bytes_;

    data_.Reset(std::max<size_t>(total_, 1) * d_);
    positions_.Reset(std::max<size_t>(total_, 1));
    list_off_.Reset(nlist_ + 1);
    centroids_.Reset(nlist_ * d_);
    cnorm_.Reset(nlist_);
    cudaStream_t s = stream_.get();
    CAIRN_CUDA(cudaMemcpyAsync(list_off_.get(), off.data(), off.size() * sizeof(int64_t), cudaMemcpyHostToDevice, s));
    CAIRN_CUDA(cudaMemcpyAsync(centroids_.get(), centroids, nlist_ * d_ * sizeof(float), cudaMemcpyHostToDevice, s));
    RowSquaredNorms(centroids_.get(), nlist_, d_, Storage::kFloat32, cnorm_.get(), s);
    // Lists go up through one pinned staging buffer, a few lists at a time.
    const size_t stage_rows = std::max<size_t>(1, (64ull << 20) / (d_ * sizeof(float)));
    PinnedArray<float> stage(stage_rows * d_);
    PinnedArray<int64_t> stage_pos(stage_rows);
    size_t filled = 0, dst_row = 0;
    auto flush = [&] {
      if (filled == 0) return;
      CAIRN_CUDA(cudaMemcpyAsync(data_.get() + dst_row * d_, stage.get(), filled * d_ * sizeof(float),
                                 cudaMemcpyHostToDevice, s));
      CAIRN_CUDA(cudaMemcpyAsync(positions_.get() + dst_row, stage_pos.get(), filled * sizeof(int64_t),
                                 cudaMemcpyHostToDevice, s));
      stream_.Sync();
      dst_row += filled;
      filled = 0;
    };
    for (size_t l = 0; l < nlist_; ++l) {
      for (size_t i = 0; i < lists[l].size;) {
        const size_t take = std::min(lists[l].size - i, stage_rows - filled);
        std::memcpy(stage.get() + filled * d_, lists[l].vectors + i * d_, take * d_ * sizeof(float));
        std::memcpy(stage_pos.get() + filled, lists[l].positions + i, take * sizeof(int64_t));
        filled += take;
        i += take;
        if (filled == stage_rows) flush();
      }
    }
    flush();
    stream_.Sync();
  }

  Result Search(const float* queries, size_t nq, int k, int nprobe, const uint64_t* allow, float* dist,
                int64_t* labels, IvfScan scan) override {
    std::lock_guard lock(mu_);
    return Guard([&] { SearchLocked(queries, nq, k, nprobe, allow, dist, labels, scan); });
  }

  size_t device_bytes() const override {
    return std::max(planned_bytes_, data_.bytes() + positions_.bytes() + list_off_.bytes() + centroids_.bytes() + cnorm_.bytes() +
           allow_.bytes() + q_.bytes() + coarse_.bytes() + probe_v_.bytes() + probe_i_.bytes() +
           probe_start_.bytes() + row_len_.bytes() + dist_.bytes() + labels_.bytes() + out_v_.bytes() +
           out_i_.bytes() + part_v_.bytes() + part_i_.bytes() + counts_.bytes() + order_.bytes() + work_.bytes());
  }

 private:
  void SearchLocked(const float* queries, size_t nq, int k, int nprobe, const uint64_t* allow, float* dist,
                    int64_t* labels, IvfScan scan) {
    if (k < 1 || k > kMaxK) throw CudaFailure(Code::kInvalidArgument, "k must be in 1..1024 on the GPU");
    UseDevice(cfg_.device);
    nprobe = static_cast<int>(std::clamp<size_t>(static_cast<size_t>(std::max(nprobe, 1)), 1,
                                                 std::min<size_t>(nlist_, kMaxK)));
    cudaStream_t s = stream_.get();
    const uint64_t* allow_dev = nullptr;
    if (allow != nullptr) {
      const size_t words = (n_positions_ + 63) / 64;
      Grow(&allow_, words);
      CAIRN_CUDA(cudaMemcpyAsync(allow_.get(), allow, words * sizeof(uint64_t), cudaMemcpyHostToDevice, s));
      allow_dev = allow_.get();
    }
    // Every query's row fits the nprobe longest lists.
    const size_t row_cap = std::max<size_t>(1, longest_prefix_[nprobe]);
    const size_t per_query =
        row_cap * (sizeof(float) + sizeof(int64_t)) + nlist_ * sizeof(float) + nprobe * kPairBytes;
    const size_t qb_max = std::clamp<size_t>(ws_bytes_ / per_query, 1, cfg_.max_batch);
    for (size_t q0 = 0; q0 < nq; q0 += qb_max) {
      const size_t qb = std::min(qb_max, nq - q0);
      Grow(&q_, qb * d_);
      Grow(&coarse_, qb * nlist_);
      Grow(&probe_v_, qb * nprobe);
      Grow(&probe_i_, qb * nprobe);
      Grow(&probe_start_, qb * nprobe);
      Grow(&row_len_, qb);
      Grow(&dist_, qb * row_cap);
      Grow(&labels_, qb * row_cap);
      Grow(&out_v_, qb * k);
      Grow(&out_i_, qb * k);
      Grow(&h_q_, qb * d_);
      Grow(&h_v_, qb * k);
      Grow(&h_i_, qb * k);
      std::memcpy(h_q_.get(), queries + q0 * d_, qb * d_ * sizeof(float));
      CAIRN_CUDA(cudaMemcpyAsync(q_.get(), h_q_.get(), qb * d_ * sizeof(float), cudaMemcpyHostToDevice, s));

      const bool l2 = !cfg_.inner_product;
      GemmScaledDots(blas_, s, Storage::kFloat32, centroids_.get(), nlist_, q_.get(), qb, d_, l2 ? -2.0f : -1.0f,
                     coarse_.get(), nlist_);
      SelectArgs c;
      c.v = coarse_.get();
      c.ld = static_cast<int64_t>(nlist_);
      c.rows = static_cast<int>(qb);
      c.cols = static_cast<int64_t>(nlist_);
      c.col_add = l2 ? cnorm_.get() : nullptr;
      c.k = nprobe;
      c.out_v = probe_v_.get();
      c.out_i = probe_i_.get();
      c.out_ld = nprobe;
      LaunchSelect(c, s);

      kernels::ProbeOffsetsKernel<<<static_cast<unsigned>(CeilDiv(qb, 128)), 128, 0, s>>>(
          probe_i_.get(), static_cast<int>(qb), nprobe, list_off_.get(), probe_start_.get(), row_len_.get());
      CAIRN_CUDA_LAUNCHED();
      const int64_t npairs = static_cast<int64_t>(qb) * nprobe;
      size_t n_work = 0;
      if (GroupPairsByList(npairs, scan, &n_work)) {
        if (n_work > 0) {
          auto* tiled = l2 ? &kernels::TiledScanKernel<true> : &kernels::TiledScanKernel<false>;
          tiled<<<static_cast<unsigned>(n_work), kernels::kTileThreads, 0, s>>>(
              q_.get(), d_, nprobe, probe_start_.get(), work_.get(), order_.get(), data_.get(), positions_.get(),
              list_off_.get(), allow_dev, dist_.get(), labels_.get(), static_cast<int64_t>(row_cap));
          CAIRN_CUDA_LAUNCHED();
        }
      } else {
        const size_t shmem = d_ <= kernels::kSharedQueryDims ? d_ * sizeof(float) : 0;
        const dim3 scan_grid(static_cast<unsigned>(qb), static_cast<unsigned>(nprobe));
        kernels::ScanKernel<<<scan_grid, kernels::kScanThreads, shmem, s>>>(
            q_.get(), d_, probe_i_.get(), nprobe, probe_start_.get(), data_.get(), positions_.get(),
            list_off_.get(), allow_dev, l2, dist_.get(), labels_.get(), static_cast<int64_t>(row_cap));
        CAIRN_CUDA_LAUNCHED();
      }

      // Long rows and few queries: slices in parallel, then their merge.
      const int slices = PickSlices(static_cast<int>(qb), static_cast<int64_t>(row_cap), k, sm_count_);
      SelectArgs a;
      a.v = dist_.get();
      a.ld = static_cast<int64_t>(row_cap);
      a.rows = static_cast<int>(qb);
      a.cols = static_cast<int64_t>(row_cap);
      a.row_len = row_len_.get();
      a.in_ids = labels_.get();
      a.k = k;
      a.slices = slices;
      a.slice_len = static_cast<int64_t>(CeilDiv(row_cap, slices));
      if (slices == 1) {
        a.out_v = out_v_.get();
        a.out_i = out_i_.get();
        a.out_ld = k;
        LaunchSelect(a, s);
      } else {
        const size_t part_ld = static_cast<size_t>(slices) * k;
        Grow(&part_v_, qb * part_ld);
        Grow(&part_i_, qb * part_ld);
        a.out_v = part_v_.get();
        a.out_i = part_i_.get();
        a.out_ld = static_cast<int64_t>(part_ld);
        LaunchSelect(a, s);
        SelectArgs m;
        m.v = part_v_.get();
        m.in_ids = part_i_.get();
        m.ld = static_cast<int64_t>(part_ld);
        m.rows = static_cast<int>(qb);
        m.cols = static_cast<int64_t>(part_ld);
        m.k = k;
        m.out_v = out_v_.get();
        m.out_i = out_i_.get();
        m.out_ld = k;
        LaunchSelect(m, s);
      }
      CAIRN_CUDA(cudaMemcpyAsync(h_v_.get(), out_v_.get(), qb * k * sizeof(float), cudaMemcpyDeviceToHost, s));
      CAIRN_CUDA(cudaMemcpyAsync(h_i_.get(), out_i_.get(), qb * k * sizeof(int64_t), cudaMemcpyDeviceToHost, s));
      stream_.Sync();
      std::memcpy(dist + q0 * k, h_v_.get(), qb * k * sizeof(float));
      std::memcpy(labels + q0 * k, h_i_.get(), qb * k * sizeof(int64_t));
    }
  }

  // Whether the scan of the batch's npairs (query, list) pairs in probe_i_
  // goes by list; if so, groups the pairs by list (order_) and plans the
  // blocks (work_, n_work of them). Auto mode decides on the pairs' counts.
  bool GroupPairsByList(int64_t npairs, IvfScan scan, size_t* n_work) {
    // The counters are 32-bit; a batch that small in pairs has little to share.
    if (scan == IvfScan::kByQuery || npairs > INT32_MAX) return false;
    if (scan == IvfScan::kAuto &&
        npairs < std::max<int64_t>(2 * kernels::kTileQueries, static_cast<int64_t>(nlist_ / 4))) {
      return false;
    }
    cudaStream_t s = stream_.get();
    Grow(&counts_, 2 * nlist_);  // counts, then cursors
    Grow(&h_counts_, 2 * nlist_);
    CAIRN_CUDA(cudaMemsetAsync(counts_.get(), 0, nlist_ * sizeof(uint32_t), s));
    kernels::CountPairsKernel<<<GridFor(npairs, 256), 256, 0, s>>>(probe_i_.get(), npairs, counts_.get());
    CAIRN_CUDA_LAUNCHED();
    CAIRN_CUDA(cudaMemcpyAsync(h_counts_.get(), counts_.get(), nlist_ * sizeof(uint32_t), cudaMemcpyDeviceToHost, s));
    stream_.Sync();
    int64_t pairs = 0, probed = 0;
    for (size_t l = 0; l < nlist_; ++l) {
      pairs += h_counts_.get()[l];
      probed += h_counts_.get()[l] > 0;
    }
    if (scan == IvfScan::kAuto && pairs < kMinPairsPerList * probed) return false;
    const size_t max_work = static_cast<size_t>(pairs) / kernels::kTileQueries + static_cast<size_t>(probed) + 1;
    Grow(&h_work_, max_work);
    uint32_t* cursor = h_counts_.get() + nlist_;
    kernels::PlanTiles(h_counts_.get(), longest_first_.data(), nlist_, cursor, h_work_.get(), n_work);
    if (*n_work == 0) return true;
    Grow(&work_, *n_work);
    Grow(&order_, static_cast<size_t>(pairs));
    CAIRN_CUDA(cudaMemcpyAsync(counts_.get() + nlist_, cursor, nlist_ * sizeof(uint32_t), cudaMemcpyHostToDevice, s));
    CAIRN_CUDA(cudaMemcpyAsync(work_.get(), h_work_.get(), *n_work * sizeof(kernels::TileWork),
                               cudaMemcpyHostToDevice, s));
    kernels::ScatterPairsKernel<<<GridFor(npairs, 256), 256, 0, s>>>(probe_i_.get(), npairs,
                                                                      counts_.get() + nlist_, order_.get());
    CAIRN_CUDA_LAUNCHED();
    return true;
  }

  const IvfConfig cfg_;
  const size_t nlist_;
  const uint32_t d_;
  const size_t n_positions_;
  std::mutex mu_;
  Stream stream_;
  BlasHandle blas_;
  size_t total_ = 0;
  size_t ws_bytes_ = 0;
  size_t planned_bytes_ = 0;
  int sm_count_ = 1;
  std::vector<size_t> lens_;
  std::vector<uint32_t> longest_first_;  // list numbers, longest list first
  std::vector<size_t> longest_prefix_;   // lengths of the i longest lists together
  DeviceArray<float> data_, centroids_, cnorm_;
  DeviceArray<int64_t> positions_, list_off_;
  DeviceArray<uint64_t> allow_;
  DeviceArray<float> q_, coarse_, probe_v_, dist_, out_v_, part_v_;
  DeviceArray<int64_t> probe_i_, probe_start_, row_len_, labels_, out_i_, part_i_;
  DeviceArray<uint32_t> counts_;  // pairs per list, then each list's cursor
  DeviceArray<int64_t> order_;    // the batch's pairs grouped by list
  DeviceArray<kernels::TileWork> work_;
  PinnedArray<float> h_q_, h_v_;
  PinnedArray<int64_t> h_i_;
  PinnedArray<uint32_t> h_counts_;
  PinnedArray<kernels::TileWork> h_work_;
};

}  // namespace

Result MakeIvfFlat(const float* centroids, size_t nlist, uint32_t dim, const IvfList* lists, size_t n_positions,
                   const IvfConfig& config, std::unique_ptr<IvfFlatBackend>* out) {
  return Guard([&] {
    if (nlist == 0 || dim == 0) throw CudaFailure(Code::kInvalidArgument, "IVF index without lists");
    UseDevice(config.device);
    auto idx = std::make_unique<IvfFlatCuda>(config, nlist, dim, n_positions);
    idx->Init(centroids, lists);
    *out = std::move(idx);
  });
}

}  // namespace cairn::index::gpu::cuda
