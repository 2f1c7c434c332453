// Exact search on the GPU: distances of a batch of queries to the base by
// GEMM, then top-k selection, chunk by chunk of base rows.
//
// The base lives on the device in float32, float16 or bfloat16. When it does
// not fit the memory budget it stays in pinned host memory and is streamed
// through two device buffers, the copy of chunk i+1 overlapping the search of
// chunk i. Query batches alternate between two lanes (stream, buffers, cuBLAS
// handle) so that one batch's transfers overlap the other's compute.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "index/gpu/cuda_common.cuh"
#include "index/gpu/ops.cuh"
#include "index/gpu/select.cuh"

namespace cairn::index::gpu::cuda {
namespace {

// Distance-matrix workspace per lane: bounded so that two lanes and the base
// share the budget, and large enough for 4096 queries x 16384 base rows.
constexpr size_t kMinDistBytes = 64ull << 20;
constexpr size_t kMaxDistBytes = 1ull << 30;
// Per-chunk top-k results waiting to be merged, per lane: chunks are merged
// into a running top-k whenever this fills, so it stays bounded for any base.
constexpr size_t kPartBytes = 256ull << 20;
constexpr size_t kResultBytes = sizeof(float) + sizeof(int64_t);

struct Lane {
  Stream stream;
  BlasHandle blas;
  Event done;
  DeviceArray<float> q32;
  DeviceArray<char> qconv;
  DeviceArray<float> qnorm;
  DeviceArray<float> dist;
  DeviceArray<float> part_v;
  DeviceArray<int64_t> part_i;
  DeviceArray<float> out_v;
  DeviceArray<int64_t> out_i;
  PinnedArray<float> h_q;
  PinnedArray<float> h_v;
  PinnedArray<int64_t> h_i;
  // The batch whose results are in flight: first query and count.
  size_t pending_first = 0;
  size_t pending_count = 0;
};

class FlatIndexCuda final : public FlatBackend {
 public:
  FlatIndexCuda(const FlatConfig& config, size_t n, uint32_t dim) : cfg_(config), n_(n), d_(dim) {}

  void Init(const float* x) {
    UseDevice(cfg_.device);
    cudaDeviceProp p{};
    CAIRN_CUDA(cudaGetDeviceProperties(&p, cfg_.device));
    sm_count_ = p.multiProcessorCount;
    elem_ = StorageBytes(cfg_.storage);
    const size_t usable = UsableBytes(cfg_.device, cfg_.memory_budget);
    const size_t row_bytes = static_cast<size_t>(d_) * elem_;
    const size_t base_bytes = n_ * row_bytes;
    const size_t norm_bytes = n_ * sizeof(float);
    // Per lane: queries, their norms and the final results of a batch.
    const size_t lane_fixed =
        cfg_.max_batch * (d_ * (sizeof(float) + elem_) + sizeof(float) + kMaxK * kResultBytes) + (2 << 20);
    if (usable < norm_bytes + 2 * (kMinDistBytes + lane_fixed)) {
      throw CudaFailure(Code::kResourceExhausted,
                        "GPU memory budget of " + std::to_string(usable >> 20) + " MiB is too small for exact search over " +
                            std::to_string(n_) + " vectors (needs at least " +
                            std::to_string((norm_bytes + 2 * (kMinDistBytes + lane_fixed)) >> 20) + " MiB)");
    }
    resident_ = !cfg_.force_streaming &&
                base_bytes + norm_bytes + 2 * (kMinDistBytes + lane_fixed) <= usable;
    size_t left = usable - norm_bytes - (resident_ ? base_bytes : 0) - 2 * lane_fixed;
    if (!resident_) {
      // Two chunk buffers of at most a quarter of what is left each.
      stream_rows_ = std::max<size_t>(1024, left / 4 / row_bytes);
      stream_rows_ = std::min(stream_rows_, n_);
      if (2 * stream_rows_ * row_bytes + 2 * kMinDistBytes > left) {
        throw CudaFailure(Code::kResourceExhausted, "GPU memory budget of " + std::to_string(usable >> 20) +
                                                        " MiB cannot hold two chunks of " + std::to_string(d_) +
                                                        "-dimensional vectors to stream the base through");
      }
      left -= 2 * stream_rows_ * row_bytes;
    }
    // The distance workspace: what a full batch over the whole base needs, up
    // to what the budget leaves (small segments take little).
    dist_elems_ = std::clamp(left / 2, kMinDistBytes, kMaxDistBytes) / sizeof(float);
    dist_elems_ = std::min(dist_elems_, std::max<size_t>(cfg_.max_batch * n_, 1 << 20));
    // At least 128 base rows per GEMM for a full batch.
    batch_ = std::max<size_t>(1, std::min(cfg_.max_batch, dist_elems_ / 128));
    nlanes_ = resident_ ? 2 : 1;
    // Partial results: bounded by kPartBytes when a batch spans chunks, else
    // only the slices of small batches.
    const bool chunked = !resident_ || cfg_.max_chunk > 0 || n_ > dist_elems_ / batch_;
    const size_t part_bytes =
        chunked ? kPartBytes : (batch_ + 4 * static_cast<size_t>(sm_count_)) * kMaxK * kResultBytes;
    planned_bytes_ = norm_bytes + (resident_ ? base_bytes : 2 * stream_rows_ * row_bytes) +
                     nlanes_ * (lane_fixed + dist_elems_ * sizeof(float) + part_bytes);

    norms_.Reset(n_);
    Stream upload;
    // Upload through pinned staging in pieces, converting on the device.
    const size_t piece_rows = std::max<size_t>(1, (64ull << 20) / (d_ * sizeof(float)));
    PinnedArray<float> staging(std::min(n_, piece_rows) * d_);
    DeviceArray<float> f32(std::min(n_, piece_rows) * d_);
    DeviceArray<char> conv;
    if (resident_) {
      base_.Reset(base_bytes);
    } else {
      host_base_.Reset(base_bytes);
      conv.Reset(std::min(n_, piece_rows) * row_bytes);
    }
    for (size_t r0 = 0; r0 < n_; r0 += piece_rows) {
      const size_t rn = std::min(piece_rows, n_ - r0);
      std::memcpy(staging.get(), x + r0 * d_, rn * d_ * sizeof(float));
      CAIRN_CUDA(cudaMemcpyAsync(f32.get(), staging.get(), rn * d_ * sizeof(float), cudaMemcpyHostToDevice,
                                 upload.get()));
      char* dst = resident_ ? base_.get() + r0 * row_bytes : conv.get();
      ConvertFloats(f32.get(), dst, rn * d_, cfg_.storage, upload.get());
      RowSquaredNorms(dst, rn, d_, cfg_.storage, norms_.get() + r0, upload.get());
      if (!resident_) {
        CAIRN_CUDA(cudaMemcpyAsync(host_base_.get() + r0 * row_bytes, dst, rn * row_bytes, cudaMemcpyDeviceToHost,
                                   upload.get()));
      }
      upload.Sync();  // staging is reused by the next piece
    }
    if (!resident_) {
      for (auto& b : chunk_buf_) b.Reset(stream_rows_ * row_bytes);
    }
    for (int l = 0; l < nlanes_; ++l) {
      Lane& lane = lanes_[l];
      lane.q32.Reset(batch_ * d_);
      if (cfg_.storage != Storage::kFloat32) lane.qconv.Reset(batch_ * row_bytes);
      lane.qnorm.Reset(batch_);
      lane.dist.Reset(dist_elems_);
      lane.h_q.Reset(batch_ * d_);
    }
  }

  Result Search(const float* queries, size_t nq, int k, const uint64_t* allow, float* dist,
                int64_t* labels) override {
    std::lock_guard lock(mu_);
    Result r = Guard([&] { SearchLocked(queries, nq, k, allow, dist, labels); });
    if (!r.ok()) {
      // Results of a failed call must never land in the next call's output.
      for (auto& lane : lanes_) lane.pending_count = 0;
      cudaDeviceSynchronize();
    }
    return r;
  }

  bool resident() const override { return resident_; }
  // What Init planned for (workspaces grow to it on use), or more if grown past.
  size_t device_bytes() const override {
    size_t b = base_.bytes() + norms_.bytes() + allow_.bytes() + chunk_buf_[0].bytes() + chunk_buf_[1].bytes();
    for (const auto& l : lanes_) {
      b += l.q32.bytes() + l.qconv.bytes() + l.qnorm.bytes() + l.dist.bytes() + l.part_v.bytes() +
           l.part_i.bytes() + l.out_v.bytes() + l.out_i.bytes();
    }
    return std::max(b, planned_bytes_);
  }

 private:
  void SearchLocked(const float* queries, size_t nq, int k, const uint64_t* allow, float* dist,
                    int64_t* labels) {
    if (k < 1 || k > kMaxK) throw CudaFailure(Code::kInvalidArgument, "k must be in 1..1024 on the GPU");
    UseDevice(cfg_.device);
    const uint64_t* allow_dev = nullptr;
    if (allow != nullptr) {
      // On lane 0's stream; lane 1 waits for it (the lanes' streams do not
      // synchronize with the legacy default stream).
      const size_t words = (n_ + 63) / 64;
      Grow(&allow_, words);
      CAIRN_CUDA(cudaMemcpyAsync(allow_.get(), allow, words * sizeof(uint64_t), cudaMemcpyHostToDevice,
                                 lanes_[0].stream.get()));
      allow_ready_.Record(lanes_[0].stream.get());
      CAIRN_CUDA(cudaStreamWaitEvent(lanes_[1].stream.get(), allow_ready_.get(), 0));
      allow_dev = allow_.get();
    }
    size_t batch_no = 0;
    for (size_t q0 = 0; q0 < nq; q0 += batch_, ++batch_no) {
      Lane& lane = lanes_[batch_no % nlanes_];
      Collect(&lane, k, dist, labels);
      const size_t qb = std::min(batch_, nq - q0);
      std::memcpy(lane.h_q.get(), queries + q0 * d_, qb * d_ * sizeof(float));
      CAIRN_CUDA(cudaMemcpyAsync(lane.q32.get(), lane.h_q.get(), qb * d_ * sizeof(float), cudaMemcpyHostToDevice,
                                 lane.stream.get()));
      RunBatch(&lane, qb, k, allow_dev);
      Grow(&lane.h_v, qb * k);
      Grow(&lane.h_i, qb * k);
      CAIRN_CUDA(cudaMemcpyAsync(lane.h_v.get(), lane.out_v.get(), qb * k * sizeof(float), cudaMemcpyDeviceToHost,
                                 lane.stream.get()));
      CAIRN_CUDA(cudaMemcpyAsync(lane.h_i.get(), lane.out_i.get(), qb * k * sizeof(int64_t),
                                 cudaMemcpyDeviceToHost, lane.stream.get()));
      lane.done.Record(lane.stream.get());
      lane.pending_first = q0;
      lane.pending_count = qb;
    }
    for (auto& lane : lanes_) Collect(&lane, k, dist, labels);
  }

  // Waits for the lane's batch in flight, if any, and copies its results out.
  void Collect(Lane* lane, int k, float* dist, int64_t* labels) {
    if (lane->pending_count == 0) return;
    lane->done.Sync();
    const size_t off = lane->pending_first * k, cnt = lane->pending_count * k;
    std::memcpy(dist + off, lane->h_v.get(), cnt * sizeof(float));
    std::memcpy(labels + off, lane->h_i.get(), cnt * sizeof(int64_t));
    lane->pending_count = 0;
  }

  void RunBatch(Lane* lane, size_t qb, int k, const uint64_t* allow) {
    cudaStream_t s = lane->stream.get();
    const bool l2 = !cfg_.inner_product;
    const void* q = lane->q32.get();
    if (cfg_.storage != Storage::kFloat32) {
      ConvertFloats(lane->q32.get(), lane->qconv.get(), qb * d_, cfg_.storage, s);
      q = lane->qconv.get();
    }
    if (l2) RowSquaredNorms(q, qb, d_, cfg_.storage, lane->qnorm.get(), s);

    size_t chunk = std::max<size_t>(1, dist_elems_ / qb);
    if (cfg_.max_chunk > 0) chunk = std::min(chunk, cfg_.max_chunk);
    if (!resident_) chunk = std::min(chunk, stream_rows_);
    chunk = std::min(chunk, n_);
    const size_t nchunks = CeilDiv(n_, chunk);
    const int slices = PickSlices(static_cast<int>(qb), static_cast<int64_t>(chunk), k, sm_count_);
    const bool single = nchunks * slices == 1;
    // Chunk results wait in `part` behind the running top-k (columns 0..k-1)
    // and are merged into it whenever `part` is full, and after the last chunk.
    const size_t per_chunk = static_cast<size_t>(slices) * k;
    const size_t room = kPartBytes / kResultBytes / qb;
    const size_t chunks_per_merge =
        std::min(nchunks, cfg_.merge_every > 0 ? cfg_.merge_every
                                               : std::max<size_t>(1, room > static_cast<size_t>(k) ? (room - k) / per_chunk : 1));
    const size_t part_ld = k + chunks_per_merge * per_chunk;
    Grow(&lane->out_v, qb * k);
    Grow(&lane->out_i, qb * k);
    if (!single) {
      Grow(&lane->part_v, qb * part_ld);
      Grow(&lane->part_i, qb * part_ld);
    }
    const size_t row_bytes = static_cast<size_t>(d_) * elem_;
    size_t waiting = 0;  // chunks in `part` not yet merged
    bool running = false;  // columns 0..k-1 of `part` hold a running top-k
    for (size_t ci = 0; ci < nchunks; ++ci) {
      const size_t c0 = ci * chunk, cn = std::min(chunk, n_ - c0);
      const char* b;
      if (resident_) {
        b = base_.get() + c0 * row_bytes;
      } else {
        const int buf = static_cast<int>(ci % 2);
        CAIRN_CUDA(cudaStreamWaitEvent(copy_stream_.get(), consumed_[buf].get(), 0));
        CAIRN_CUDA(cudaMemcpyAsync(chunk_buf_[buf].get(), host_base_.get() + c0 * row_bytes, cn * row_bytes,
                                   cudaMemcpyHostToDevice, copy_stream_.get()));
        copied_[buf].Record(copy_stream_.get());
        CAIRN_CUDA(cudaStreamWaitEvent(s, copied_[buf].get(), 0));
        b = chunk_buf_[buf].get();
      }
      GemmScaledDots(lane->blas, s, cfg_.storage, b, cn, q, qb, d_, l2 ? -2.0f : -1.0f, lane->dist.get(), cn);
      if (!resident_) consumed_[ci % 2].Record(s);
      SelectArgs a;
      a.v = lane->dist.get();
      a.ld = static_cast<int64_t>(cn);
      a.rows = static_cast<int>(qb);
      a.cols = static_cast<int64_t>(cn);
      a.col_add = l2 ? norms_.get() + c0 : nullptr;
      a.id_offset = static_cast<int64_t>(c0);
      a.allow = allow;
      a.k = k;
      a.slices = slices;
      a.slice_len = static_cast<int64_t>(CeilDiv(cn, slices));
      if (single) {
        a.out_v = lane->out_v.get();
        a.out_i = lane->out_i.get();
        a.out_ld = k;
        LaunchSelect(a, s);
        continue;
      }
      const size_t col = k + waiting * per_chunk;
      a.out_v = lane->part_v.get() + col;
      a.out_i = lane->part_i.get() + col;
      a.out_ld = static_cast<int64_t>(part_ld);
      LaunchSelect(a, s);
      ++waiting;
      const bool last = ci + 1 == nchunks;
      if (waiting < chunks_per_merge && !last) continue;
      // Merge: the running top-k (if any) and the waiting chunks' results.
      const size_t first = running ? 0 : k;
      SelectArgs m;
      m.v = lane->part_v.get() + first;
      m.in_ids = lane->part_i.get() + first;
      m.ld = static_cast<int64_t>(part_ld);
      m.rows = static_cast<int>(qb);
      m.cols = static_cast<int64_t>(k + waiting * per_chunk - first);
      m.k = k;
      m.out_v = lane->out_v.get();
      m.out_i = lane->out_i.get();
      m.out_ld = k;
      LaunchSelect(m, s);
      waiting = 0;
      if (!last) {
        CAIRN_CUDA(cudaMemcpy2DAsync(lane->part_v.get(), part_ld * sizeof(float), lane->out_v.get(),
                                     k * sizeof(float), k * sizeof(float), qb, cudaMemcpyDeviceToDevice, s));
        CAIRN_CUDA(cudaMemcpy2DAsync(lane->part_i.get(), part_ld * sizeof(int64_t), lane->out_i.get(),
                                     k * sizeof(int64_t), k * sizeof(int64_t), qb, cudaMemcpyDeviceToDevice, s));
        running = true;
      }
    }
    if (l2) AddRowValues(lane->out_v.get(), qb, k, lane->qnorm.get(), true, s);
  }

  const FlatConfig cfg_;
  const size_t n_;
  const uint32_t d_;
  std::mutex mu_;
  size_t batch_ = 1;        // queries per device batch
  int nlanes_ = 2;          // 1 when streaming: the copy engine is busy with the base
  size_t planned_bytes_ = 0;
  Event allow_ready_;
  int sm_count_ = 1;
  size_t elem_ = 4;
  bool resident_ = true;
  size_t stream_rows_ = 0;
  size_t dist_elems_ = 0;
  DeviceArray<char> base_;
  DeviceArray<float> norms_;
  DeviceArray<uint64_t> allow_;
  PinnedArray<char> host_base_;
  DeviceArray<char> chunk_buf_[2];
  Stream copy_stream_;
  Event copied_[2];
  Event consumed_[2];
  Lane lanes_[2];
};

}  // namespace

Result MakeFlat(const float* x, size_t n, uint32_t dim, const FlatConfig& config,
                std::unique_ptr<FlatBackend>* out) {
  return Guard([&] {
    if (n == 0 || dim == 0) throw CudaFailure(Code::kInvalidArgument, "empty base");
    if (config.max_batch == 0) throw CudaFailure(Code::kInvalidArgument, "max_batch must be positive");
    UseDevice(config.device);
    auto idx = std::make_unique<FlatIndexCuda>(config, n, dim);
    idx->Init(x);
    *out = std::move(idx);
  });
}

}  // namespace cairn::index::gpu::cuda
