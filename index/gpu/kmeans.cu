// k-means on the GPU (Lloyd's algorithm), the slow step of building IVF
// indexes: each iteration assigns every point to its nearest centroid by
// GEMM + argmin, then recomputes each centroid as the mean of its points
// (points grouped by a counting sort, one block per centroid, no atomics on
// the sums; the order of points within a cluster follows atomics, so sums
// may differ in the last bits between runs). Empty clusters are re-seeded by splitting a cluster picked with
// probability proportional to its size.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "index/gpu/cuda_common.cuh"
#include "index/gpu/kmeans_kernels.cuh"
#include "index/gpu/ops.cuh"

namespace cairn::index::gpu::cuda {
namespace {

constexpr size_t kDistBytes = 1ull << 30;

// Device-resident points and centroids, and the assignment step.
class Lloyd {
 public:
  Lloyd(const KMeansConfig& cfg, size_t n, uint32_t d, size_t k, bool tf32)
      : cfg_(cfg), n_(n), d_(d), k_(k) {
    blas_.AllowTf32(tf32);
  }

  // Uploads n points (pieces of at most `piece_rows` go through pinned memory).
  void UploadPoints(const float* x, size_t rows) {
    x_.Reset(rows * d_);
    const size_t piece = std::max<size_t>(1, (64ull << 20) / (d_ * sizeof(float)));
    PinnedArray<float> staging(std::min(rows, piece) * d_);
    for (size_t r0 = 0; r0 < rows; r0 += piece) {
      const size_t rn = std::min(piece, rows - r0);
      std::memcpy(staging.get(), x + r0 * d_, rn * d_ * sizeof(float));
      CAIRN_CUDA(cudaMemcpyAsync(x_.get() + r0 * d_, staging.get(), rn * d_ * sizeof(float),
                                 cudaMemcpyHostToDevice, stream_.get()));
      stream_.Sync();
    }
    if (!cfg_.inner_product) {
      xnorm_.Reset(rows);
      RowSquaredNorms(x_.get(), rows, d_, Storage::kFloat32, xnorm_.get(), stream_.get());
    }
  }

  void SetCentroids(const float* c) {
    if (centroids_.size() == 0) centroids_.Reset(k_ * d_);
    CAIRN_CUDA(cudaMemcpyAsync(centroids_.get(), c, k_ * d_ * sizeof(float), cudaMemcpyHostToDevice,
                               stream_.get()));
    if (!cfg_.inner_product) {
      if (cnorm_.size() == 0) cnorm_.Reset(k_);
      RowSquaredNorms(centroids_.get(), k_, d_, Storage::kFloat32, cnorm_.get(), stream_.get());
    }
  }

  // assign[i] (and best[i] when non-null) for the rows points on the device.
  void AssignRows(const float* x, const float* xnorm, size_t rows, int32_t* assign, float* best) {
    const size_t chunk = std::max<size_t>(1, std::min(rows, kDistBytes / sizeof(float) / k_));
    if (dist_.size() < chunk * k_) dist_.Reset(chunk * k_);
    const bool l2 = !cfg_.inner_product;
    for (size_t r0 = 0; r0 < rows; r0 += chunk) {
      const size_t rn = std::min(chunk, rows - r0);
      GemmScaledDots(blas_, stream_.get(), Storage::kFloat32, centroids_.get(), k_, x + r0 * d_, rn, d_,
                     l2 ? -2.0f : -1.0f, dist_.get(), k_);
      const unsigned threads = 256;
      const unsigned blocks = static_cast<unsigned>((rn * 32 + threads - 1) / threads);
      kernels::ArgMinKernel<<<blocks, threads, 0, stream_.get()>>>(
          dist_.get(), rn, k_, l2 ? cnorm_.get() : nullptr, l2 && xnorm != nullptr ? xnorm + r0 : nullptr,
          assign + r0, best != nullptr ? best + r0 : nullptr);
      CAIRN_CUDA_LAUNCHED();
    }
  }

  const KMeansConfig cfg_;
  const size_t n_;
  const uint32_t d_;
  const size_t k_;
  Stream stream_;
  BlasHandle blas_;
  DeviceArray<float> x_, xnorm_, centroids_, cnorm_, dist_;
};

void CheckFits(const KMeansConfig& cfg, size_t need, const char* what) {
  const size_t usable = UsableBytes(cfg.device, cfg.memory_budget);
  if (need > usable) {
    throw CudaFailure(Code::kResourceExhausted, std::string(what) + " needs " + std::to_string(need >> 20) +
                                                    " MiB of GPU memory; the budget allows " +
                                                    std::to_string(usable >> 20) + " MiB");
  }
}

void Normalize(float* c, size_t k, uint32_t d) {
  for (size_t i = 0; i < k; ++i) {
    double s = 0;
    for (uint32_t j = 0; j < d; ++j) s += double(c[i * d + j]) * c[i * d + j];
    if (s > 0) {
      const float inv = static_cast<float>(1.0 / std::sqrt(s));
      for (uint32_t j = 0; j < d; ++j) c[i * d + j] *= inv;
    }
  }
}

}  // namespace

Result KMeans(const float* x, size_t n, uint32_t dim, size_t k, const KMeansConfig& cfg, float* centroids,
              KMeansStats* stats) {
  return Guard([&] {
    if (k == 0 || n < k) {
      throw CudaFailure(Code::kInvalidArgument, "k-means needs at least as many points (" + std::to_string(n) +
                                                    ") as centroids (" + std::to_string(k) + ")");
    }
    if (k > 0x7fffffff || n > 0xffffffffull) throw CudaFailure(Code::kInvalidArgument, "k-means input too large");
    UseDevice(cfg.device);
    const size_t dist_rows = std::min(n, std::max<size_t>(1, kDistBytes / sizeof(float) / k));
    CheckFits(cfg, n * dim * 4 + n * 16 + 2 * k * dim * 4 + k * 12 + dist_rows * k * 4 + (64ull << 20),
              "k-means over these points");
    const auto start = std::chrono::steady_clock::now();
    Lloyd ll(cfg, n, dim, k, cfg.tf32);
    ll.UploadPoints(x, n);

    // Seeded start: k distinct points.
    std::mt19937_64 rng(cfg.seed);
    std::vector<uint32_t> perm(n);
    std::iota(perm.begin(), perm.end(), 0u);
    for (size_t i = 0; i < k; ++i) {
      std::uniform_int_distribution<size_t> pick(i, n - 1);
      std::swap(perm[i], perm[pick(rng)]);
    }
    std::vector<float> c(k * dim);
    for (size_t i = 0; i < k; ++i) std::memcpy(&c[i * dim], x + size_t{perm[i]} * dim, dim * sizeof(float));
    if (cfg.inner_product) Normalize(c.data(), k, dim);
    ll.SetCentroids(c.data());

    DeviceArray<int32_t> assign(n);
    DeviceArray<float> best(n);
    DeviceArray<uint32_t> counts(k), offsets(k + 1), order(n);
    std::vector<uint32_t> h_counts(k), h_offsets(k + 1);
    std::vector<float> h_best;
    cudaStream_t s = ll.stream_.get();
    int splits = 0;
    const int iterations = std::max(1, cfg.iterations);
    for (int it = 0; it < iterations; ++it) {
      const bool last = it + 1 == iterations;
      ll.AssignRows(ll.x_.get(), ll.xnorm_.get(), n, assign.get(), last ? best.get() : nullptr);
      CAIRN_CUDA(cudaMemsetAsync(counts.get(), 0, k * sizeof(uint32_t), s));
      kernels::CountKernel<<<GridFor(n, 256), 256, 0, s>>>(assign.get(), n, counts.get());
      CAIRN_CUDA_LAUNCHED();
      CAIRN_CUDA(cudaMemcpyAsync(h_counts.data(), counts.get(), k * sizeof(uint32_t), cudaMemcpyDeviceToHost, s));
      ll.stream_.Sync();
      h_offsets[0] = 0;
      for (size_t i = 0; i < k; ++i) h_offsets[i + 1] = h_offsets[i] + h_counts[i];
      CAIRN_CUDA(cudaMemcpyAsync(offsets.get(), h_offsets.data(), (k + 1) * sizeof(uint32_t),
                                 cudaMemcpyHostToDevice, s));
      // counts becomes the scatter cursor, starting at each cluster's offset.
      CAIRN_CUDA(cudaMemcpyAsync(counts.get(), h_offsets.data(), k * sizeof(uint32_t), cudaMemcpyHostToDevice, s));
      kernels::ScatterKernel<<<GridFor(n, 256), 256, 0, s>>>(assign.get(), n, counts.get(), order.get());
      CAIRN_CUDA_LAUNCHED();
      kernels::MeanKernel<<<static_cast<unsigned>(k), 256, 0, s>>>(ll.x_.get(), dim, order.get(), offsets.get(),
                                                                   ll.centroids_.get());
      CAIRN_CUDA_LAUNCHED();
      CAIRN_CUDA(cudaMemcpyAsync(c.data(), ll.centroids_.get(), k * dim * sizeof(float), cudaMemcpyDeviceToHost, s));
      if (last) {
        h_best.resize(n);
        CAIRN_CUDA(cudaMemcpyAsync(h_best.data(), best.get(), n * sizeof(float), cudaMemcpyDeviceToHost, s));
      }
      ll.stream_.Sync();

      // Re-seed empty clusters: split a cluster chosen in proportion to its
      // size into two slightly perturbed copies.
      std::vector<double> weight(k);
      for (size_t i = 0; i < k; ++i) weight[i] = h_counts[i] > 1 ? h_counts[i] - 1.0 : 0.0;
      bool changed = false;
      for (size_t e = 0; e < k; ++e) {
        if (h_counts[e] != 0) continue;
        if (std::accumulate(weight.begin(), weight.end(), 0.0) <= 0) break;  // nothing left to split
        std::discrete_distribution<size_t> donor_of(weight.begin(), weight.end());
        const size_t donor = donor_of(rng);
        const float eps = 1.0f / 1024;
        for (uint32_t j = 0; j < dim; ++j) {
          const float v = c[donor * dim + j];
          const float sign = (j % 2 == 0) ? 1.0f : -1.0f;
          c[e * dim + j] = v * (1 + sign * eps);
          c[donor * dim + j] = v * (1 - sign * eps);
        }
        h_counts[e] = h_counts[donor] / 2;
        h_counts[donor] -= h_counts[e];
        weight[e] = h_counts[e] > 1 ? h_counts[e] - 1.0 : 0.0;
        weight[donor] = h_counts[donor] > 1 ? h_counts[donor] - 1.0 : 0.0;
        ++splits;
        changed = true;
      }
      if (cfg.inner_product) {
        Normalize(c.data(), k, dim);
        changed = true;
      }
      if (changed || !last) ll.SetCentroids(c.data());
    }
    ll.stream_.Sync();
    std::memcpy(centroids, c.data(), k * dim * sizeof(float));
    if (stats != nullptr) {
      double obj = 0;
      for (float v : h_best) obj += v;
      stats->objective = obj;
      stats->empty_splits = splits;
      stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
  });
}

Result Assign(const float* x, size_t n, uint32_t dim, const float* centroids, size_t k, const KMeansConfig& cfg,
              int64_t* labels) {
  return Guard([&] {
    if (k == 0 || k > 0x7fffffff) throw CudaFailure(Code::kInvalidArgument, "centroid count out of range");
    if (n == 0) return;
    UseDevice(cfg.device);
    const size_t dist_rows = std::min(n, std::max<size_t>(1, kDistBytes / sizeof(float) / k));
    const size_t piece = std::min(n, std::max<size_t>(dist_rows, 1));
    CheckFits(cfg, piece * (dim * 4 + 12) + k * dim * 4 + k * 4 + dist_rows * k * 4 + (64ull << 20),
              "assigning points to centroids");
    Lloyd ll(cfg, n, dim, k, /*tf32=*/false);
    ll.SetCentroids(centroids);
    DeviceArray<float> xs(piece * dim);
    DeviceArray<int32_t> a(piece);
    PinnedArray<float> staging(piece * dim);
    PinnedArray<int32_t> out(piece);
    cudaStream_t s = ll.stream_.get();
    for (size_t r0 = 0; r0 < n; r0 += piece) {
      const size_t rn = std::min(piece, n - r0);
      std::memcpy(staging.get(), x + r0 * dim, rn * dim * sizeof(float));
      CAIRN_CUDA(cudaMemcpyAsync(xs.get(), staging.get(), rn * dim * sizeof(float), cudaMemcpyHostToDevice, s));
      ll.AssignRows(xs.get(), nullptr, rn, a.get(), nullptr);
      CAIRN_CUDA(cudaMemcpyAsync(out.get(), a.get(), rn * sizeof(int32_t), cudaMemcpyDeviceToHost, s));
      ll.stream_.Sync();
      for (size_t i = 0; i < rn; ++i) labels[r0 + i] = out.get()[i];
    }
  });
}

namespace {

// The codebooks and the buffers of one pass stay on the device between calls.
class PqEncoderCuda final : public PqEncoderBackend {
 public:
  PqEncoderCuda(const KMeansConfig& cfg, uint32_t dim, size_t m, size_t ksub, size_t piece)
      : cfg_(cfg), dim_(dim), m_(m), ksub_(ksub), dsub_(dim / static_cast<uint32_t>(m)), piece_(piece) {}

  void Init(const float* codebooks) {
    cb_.Reset(m_ * ksub_ * dsub_);
    cbnorm_.Reset(m_ * ksub_);
    xs_.Reset(piece_ * dim_);
    dist_.Reset(piece_ * ksub_);
    a_.Reset(piece_ * m_);
    staging_.Reset(piece_ * dim_);
    out_.Reset(piece_ * m_);
    CAIRN_CUDA(cudaMemcpyAsync(cb_.get(), codebooks, m_ * ksub_ * dsub_ * sizeof(float), cudaMemcpyHostToDevice,
                               stream_.get()));
    RowSquaredNorms(cb_.get(), m_ * ksub_, dsub_, Storage::kFloat32, cbnorm_.get(), stream_.get());
    stream_.Sync();
  }

  Result Encode(const float* x, size_t n, int32_t* codes) override {
    return Guard([&] {
      UseDevice(cfg_.device);
      cudaStream_t s = stream_.get();
      const unsigned threads = 256;
      for (size_t r0 = 0; r0 < n; r0 += piece_) {
        const size_t rn = std::min(piece_, n - r0);
        std::memcpy(staging_.get(), x + r0 * dim_, rn * dim_ * sizeof(float));
        CAIRN_CUDA(cudaMemcpyAsync(xs_.get(), staging_.get(), rn * dim_ * sizeof(float), cudaMemcpyHostToDevice, s));
        for (size_t j = 0; j < m_; ++j) {
          // ||x_j - c||^2 = ||x_j||^2 - 2 x_j.c + ||c||^2: the first term does not change the argmin.
          GemmScaledDots(blas_, s, Storage::kFloat32, cb_.get() + j * ksub_ * dsub_, ksub_, xs_.get() + j * dsub_,
                         rn, dsub_, -2.0f, dist_.get(), ksub_, dim_);
          kernels::ArgMinKernel<<<static_cast<unsigned>((rn * 32 + threads - 1) / threads), threads, 0, s>>>(
              dist_.get(), rn, ksub_, cbnorm_.get() + j * ksub_, nullptr, a_.get() + j * piece_, nullptr);
          CAIRN_CUDA_LAUNCHED();
        }
        for (size_t j = 0; j < m_; ++j) {
          CAIRN_CUDA(cudaMemcpyAsync(out_.get() + j * rn, a_.get() + j * piece_, rn * sizeof(int32_t),
                                     cudaMemcpyDeviceToHost, s));
        }
        stream_.Sync();
        for (size_t i = 0; i < rn; ++i) {
          for (size_t j = 0; j < m_; ++j) codes[(r0 + i) * m_ + j] = out_.get()[j * rn + i];
        }
      }
    });
  }

 private:
  const KMeansConfig cfg_;
  const uint32_t dim_;
  const size_t m_, ksub_;
  const uint32_t dsub_;
  const size_t piece_;
  Stream stream_;
  BlasHandle blas_;  // float32, no TF32
  DeviceArray<float> cb_, cbnorm_, xs_, dist_;
  DeviceArray<int32_t> a_;  // a pass's codes, sub-space by sub-space
  PinnedArray<float> staging_;
  PinnedArray<int32_t> out_;
};

}  // namespace

Result MakePqEncoder(uint32_t dim, size_t m, size_t ksub, const float* codebooks, const KMeansConfig& cfg,
                     size_t max_rows, std::unique_ptr<PqEncoderBackend>* out) {
  return Guard([&] {
    if (m == 0 || dim % m != 0) throw CudaFailure(Code::kInvalidArgument, "dimension not a multiple of m");
    if (ksub == 0 || ksub > 0x7fffffff) throw CudaFailure(Code::kInvalidArgument, "ksub out of range");
    UseDevice(cfg.device);
    // Per row of a pass: the point, one sub-space's distances, its m codes
    // (on the device and in pinned memory).
    const size_t row_bytes = dim * 4 + ksub * 4 + m * 8;
    const size_t piece = std::max<size_t>(1, std::min(max_rows == 0 ? 65536 : max_rows, kDistBytes / row_bytes));
    CheckFits(cfg, piece * row_bytes + m * ksub * (dim / m + 1) * 4 + (64ull << 20), "PQ encoding");
    auto enc = std::make_unique<PqEncoderCuda>(cfg, dim, m, ksub, piece);
    enc->Init(codebooks);
    *out = std::move(enc);
  });
}

}  // namespace cairn::index::gpu::cuda
