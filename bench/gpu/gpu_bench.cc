// GPU benchmark: checks the GPU against the CPU on generated data, then
// times exact search, k-means training and IVF-Flat search on the GPU
// against the CPU of the same machine, in one run. See bench/gpu/README.md.
//
//   gpu_bench [--n 1000000] [--dim 768] [--kmeans-k 4096] [--cpu-kmeans-iters 2]
//             [--nlist 4096] [--ivf-queries 10000] [--out results.md]
#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>
#include <faiss/impl/ProductQuantizer.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "index/gpu/gpu.h"
#include "index/segment.h"

namespace {

using cairn::Metric;
using Clock = std::chrono::steady_clock;
namespace gpu = cairn::index::gpu;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Flags {
  size_t n = 1000000;
  uint32_t dim = 768;
  size_t queries = 10000;
  size_t kmeans_k = 4096;
  int kmeans_iters = 25;
  int cpu_kmeans_iters = 2;
  size_t nlist = 4096;
  size_t ivf_queries = 10000;
  size_t cpu_ivf_queries = 2000;
  size_t pq_m = 96;
  int cpu_pq_iters = 2;
  std::string out;
};

// The report goes to stdout and, as it is written, to --out: a run cut short
// keeps what it measured.
FILE* g_out = nullptr;
void Print(const std::string& s) {
  std::fputs(s.c_str(), stdout);
  std::fflush(stdout);
  if (g_out != nullptr) {
    std::fputs(s.c_str(), g_out);
    std::fflush(g_out);
  }
}

// n points around `centers` random centers, noise 0.35 per coordinate; the
// same seed gives the same points whatever the thread count.
std::vector<float> Clustered(size_t n, uint32_t dim, size_t centers, uint64_t seed) {
  std::vector<float> c(centers * dim);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& v : c) v = u(rng);
  std::vector<float> x(n * dim);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull + 1;
    auto next = [&] {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      return s;
    };
    const size_t ci = next() % centers;
    for (uint32_t j = 0; j < dim; ++j) {
      // Irwin-Hall(4): a cheap bell curve with standard deviation 0.35.
      double g = 0;
      for (int t = 0; t < 4; ++t) g += static_cast<double>(next() >> 11) / 9007199254740992.0;
      x[i * dim + j] = c[ci * dim + j] + static_cast<float>((g - 2.0) * 0.35 * std::sqrt(3.0));
    }
  }
  return x;
}

const char* StorageName(gpu::VectorStorage s) {
  switch (s) {
    case gpu::VectorStorage::kFloat32: return "float32";
    case gpu::VectorStorage::kFloat16: return "float16";
    case gpu::VectorStorage::kBFloat16: return "bfloat16";
  }
  return "?";
}

double Recall(const std::vector<int64_t>& got, const std::vector<int64_t>& truth, size_t nq, int k_got,
              int k_truth, int at) {
  size_t hits = 0;
  for (size_t q = 0; q < nq; ++q) {
    std::set<int64_t> t(truth.begin() + q * k_truth, truth.begin() + q * k_truth + at);
    for (int j = 0; j < at; ++j) hits += t.count(got[q * k_got + j]);
  }
  return static_cast<double>(hits) / static_cast<double>(nq * at);
}

int Run(const Flags& f) {
  const auto& dev = gpu::ProcessDevice();
  if (!dev.ok()) {
    std::fprintf(stderr, "gpu_bench: no usable GPU: %s\n", dev.status().ToString().c_str());
    return 2;
  }
  const int cores = omp_get_max_threads();
  Print(absl::StrFormat("# Cairn GPU benchmark\n\nDevice: %s; host: %d threads.\n\n", gpu::Describe(*dev), cores));
  auto ceil = gpu::MeasureCeilings();
  if (!ceil.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", ceil.status().ToString().c_str());
    return 1;
  }
  Print(absl::StrFormat(
      "Measured ceilings: copy %.2f TB/s (read + write), SGEMM %.1f TFLOP/s, FP16 GEMM %.1f TFLOP/s, BF16 GEMM "
      "%.1f TFLOP/s.\n\n",
      ceil->copy_bytes_per_s / 1e12, ceil->sgemm_flops / 1e12, ceil->hgemm_flops / 1e12, ceil->bgemm_flops / 1e12));

  auto t = Clock::now();
  const uint32_t d = f.dim;
  std::vector<float> base = Clustered(f.n, d, 10000, 1);
  std::vector<float> queries = Clustered(f.queries, d, 10000, 2);  // same centers, other points
  Print(absl::StrFormat("Data: %zu x %d base, %zu queries, clustered (10,000 centers), generated in %.1f s.\n\n",
                        f.n, d, f.queries, Since(t)));

  // ---- correctness: GPU exact search against FAISS's CPU flat index -------
  const size_t check_q = 200;
  const int check_k = 100;
  faiss::IndexFlatL2 cpu_flat(d);
  cpu_flat.add(static_cast<faiss::Index::idx_t>(f.n), base.data());
  std::vector<float> cpu_d(check_q * check_k);
  std::vector<faiss::Index::idx_t> cpu_l(check_q * check_k);
  t = Clock::now();
  cpu_flat.search(check_q, queries.data(), check_k, cpu_d.data(), cpu_l.data());
  const double cpu_flat_s = Since(t);

  auto exact = gpu::ExactIndex::Create(base.data(), f.n, d, Metric::kL2, {});
  if (!exact.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", exact.status().ToString().c_str());
    return 1;
  }
  std::vector<float> gd(check_q * check_k);
  std::vector<int64_t> gl(check_q * check_k);
  if (auto s = (*exact)->Search(queries.data(), check_q, check_k, nullptr, gd.data(), gl.data()); !s.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  size_t differ = 0, bad = 0;
  double max_rel = 0;
  for (size_t i = 0; i < gd.size(); ++i) {
    const double rel = std::abs(gd[i] - cpu_d[i]) / std::max(1.0f, std::abs(cpu_d[i]));
    max_rel = std::max(max_rel, rel);
    if (gl[i] != cpu_l[i]) {
      ++differ;
      if (rel > 1e-4) ++bad;  // not a tie at float precision
    }
  }
  Print(absl::StrFormat(
      "Check, exact search (%zu queries, k=%d) against FAISS CPU IndexFlatL2: %zu of %zu ids differ, %zu of them "
      "not ties; largest relative distance difference %.2e. %s\n\n",
      check_q, check_k, differ, gd.size(), bad, max_rel, bad == 0 && max_rel < 1e-3 ? "PASS" : "FAIL"));
  const bool exact_ok = bad == 0 && max_rel < 1e-3;

  // The IVF section's ground truth, from the index just checked.
  const size_t ivf_nq = std::min(f.ivf_queries, f.queries);
  const int ivf_k = 10;
  std::vector<float> truth_d(ivf_nq * ivf_k);
  std::vector<int64_t> truth(ivf_nq * ivf_k);
  if (auto s = (*exact)->Search(queries.data(), ivf_nq, ivf_k, nullptr, truth_d.data(), truth.data()); !s.ok()) {
    std::fprintf(stderr, "gpu_bench: ground truth: %s\n", s.ToString().c_str());
    return 1;
  }

  // ---- exact search speed --------------------------------------------------
  Print("## Exact search, " + absl::StrFormat("%zu x %d", f.n, d) +
        "\n\nQPS over the whole base; bandwidth and matrix columns are the fraction of the measured ceilings "
        "the search reaches (bytes: the base read once per batch; FLOPs: 2 n d per query); roofline is the "
        "larger of the two: the fraction of the best time the hardware allows.\n\n"
        "| storage | batch | k | QPS | ms/batch | of copy bandwidth | of GEMM rate | of roofline |\n"
        "|---|---|---|---|---|---|---|---|\n");
  double best_large_roofline = 0;
  for (auto st : {gpu::VectorStorage::kFloat32, gpu::VectorStorage::kFloat16, gpu::VectorStorage::kBFloat16}) {
    std::unique_ptr<gpu::ExactIndex> idx;
    if (st == gpu::VectorStorage::kFloat32) {
      idx = std::move(*exact);
    } else {
      gpu::ExactOptions o;
      o.storage = st;
      auto made = gpu::ExactIndex::Create(base.data(), f.n, d, Metric::kL2, o);
      if (!made.ok()) {
        Print(absl::StrFormat("| %s | - | - | %s |\n", StorageName(st), made.status().ToString()));
        continue;
      }
      idx = *std::move(made);
    }
    const double elem = st == gpu::VectorStorage::kFloat32 ? 4 : 2;
    const double peak = st == gpu::VectorStorage::kFloat32   ? ceil->sgemm_flops
                        : st == gpu::VectorStorage::kFloat16 ? ceil->hgemm_flops
                                                              : ceil->bgemm_flops;
    for (int k : {10, 100}) {
      for (size_t batch : {size_t{1}, size_t{16}, size_t{64}, size_t{256}, size_t{1024}, size_t{4096}}) {
        if (batch > f.queries) continue;
        std::vector<float> sc(batch * k);
        std::vector<int64_t> lb(batch * k);
        (void)idx->Search(queries.data(), batch, k, nullptr, sc.data(), lb.data());  // warm-up
        int reps = 0;
        t = Clock::now();
        do {
          const size_t off = (reps * batch) % (f.queries - batch + 1);
          if (auto s = idx->Search(queries.data() + off * d, batch, k, nullptr, sc.data(), lb.data()); !s.ok()) {
            std::fprintf(stderr, "gpu_bench: %s\n", s.ToString().c_str());
            return 1;
          }
          ++reps;
        } while (Since(t) < 0.4 || reps < 3);
        const double per = Since(t) / reps;
        const double bytes = static_cast<double>(f.n) * d * elem;
        const double flops = 2.0 * static_cast<double>(f.n) * d * batch;
        const double bw_frac = bytes / per / ceil->copy_bytes_per_s;
        const double mm_frac = flops / per / peak;
        const double roof = std::max(bytes / ceil->copy_bytes_per_s, flops / peak) / per;
        if (batch >= 1024) best_large_roofline = std::max(best_large_roofline, roof);
        Print(absl::StrFormat("| %s | %zu | %d | %.0f | %.3f | %.2f | %.2f | %.2f |\n", StorageName(st), batch, k,
                              batch / per, per * 1e3, bw_frac, mm_frac, roof));
      }
    }
  }
  Print(absl::StrFormat(
      "\nCPU peer on this machine: FAISS IndexFlatL2, %d threads, %zu queries, k=%d: %.0f QPS.\n\n", cores,
      check_q, check_k, check_q / cpu_flat_s));

  // ---- k-means -------------------------------------------------------------
  Print(absl::StrFormat("## k-means, %zu x %d into %zu centroids\n\n", f.n, d, f.kmeans_k));
  std::vector<float> centroids(f.kmeans_k * d);
  gpu::KMeansOptions ko;
  ko.iterations = f.kmeans_iters;
  auto km = gpu::TrainKMeans(base.data(), f.n, d, f.kmeans_k, Metric::kL2, ko, centroids.data());
  if (!km.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", km.status().ToString().c_str());
    return 1;
  }
  gpu::KMeansOptions ko32 = ko;
  ko32.tf32 = false;
  auto km32 = gpu::TrainKMeans(base.data(), f.n, d, f.kmeans_k, Metric::kL2, ko32, centroids.data());
  ko.iterations = f.cpu_kmeans_iters;
  std::vector<float> centroids_short(f.kmeans_k * d);
  auto km_short = gpu::TrainKMeans(base.data(), f.n, d, f.kmeans_k, Metric::kL2, ko, centroids_short.data());
  faiss::ClusteringParameters cp;
  cp.niter = f.cpu_kmeans_iters;
  cp.max_points_per_centroid = 1 << 30;  // all points, as the GPU
  faiss::Clustering clus(d, f.kmeans_k, cp);
  faiss::IndexFlatL2 assigner(d);
  t = Clock::now();
  clus.train(static_cast<faiss::Index::idx_t>(f.n), base.data(), assigner);
  const double cpu_s = Since(t);
  const double cpu_per_iter = cpu_s / f.cpu_kmeans_iters;
  const double gpu_per_iter = km->seconds / f.kmeans_iters;
  Print(absl::StrFormat(
      "| | iterations | seconds | s/iteration | objective |\n|---|---|---|---|---|\n"
      "| GPU (Cairn, TF32 distances, the default) | %d | %.2f | %.3f | %.6g |\n"
      "| GPU (Cairn, float32 distances) | %d | %.2f | %.3f | %.6g |\n"
      "| GPU (Cairn, TF32) | %d | %.2f | %.3f | %.6g |\n"
      "| CPU (FAISS, %d threads) | %d | %.2f | %.3f | %.6g |\n\n"
      "Speed-up per iteration, TF32 (float32 %.1fx): %.1fx (the CPU's %d-iteration time is %.0f s by "
      "extrapolation). "
      "GPU seconds include uploading the points.\n\n",
      f.kmeans_iters, km->seconds, gpu_per_iter, km->objective, f.kmeans_iters, km32.ok() ? km32->seconds : -1.0,
      km32.ok() ? km32->seconds / f.kmeans_iters : -1.0, km32.ok() ? km32->objective : -1.0, f.cpu_kmeans_iters,
      km_short.ok() ? km_short->seconds : -1.0, km_short.ok() ? km_short->seconds / f.cpu_kmeans_iters : -1.0,
      km_short.ok() ? km_short->objective : -1.0, cores, f.cpu_kmeans_iters, cpu_s, cpu_per_iter,
      clus.iteration_stats.back().obj, km32.ok() ? cpu_per_iter / (km32->seconds / f.kmeans_iters) : 0.0,
      cpu_per_iter / gpu_per_iter, f.kmeans_iters, cpu_per_iter * f.kmeans_iters));
  const double kmeans_speedup = cpu_per_iter / gpu_per_iter;

  // ---- IVF-Flat ------------------------------------------------------------
  Print(absl::StrFormat("## IVF-Flat, %zu x %d, nlist %zu\n\n", f.n, d, f.nlist));
  std::vector<uint64_t> ids(f.n);
  std::iota(ids.begin(), ids.end(), 0);
  cairn::IndexSpec spec;
  spec.type = cairn::IndexType::kIvfFlat;
  spec.nlist = static_cast<int>(f.nlist);
  spec.device = cairn::Device::kGpu;
  t = Clock::now();
  auto seg = cairn::index::Segment::Build(d, Metric::kL2, spec, base.data(), ids.data(), f.n, cores);
  if (!seg.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", seg.status().ToString().c_str());
    return 1;
  }
  const double build_s = Since(t);
  const size_t nq = ivf_nq;
  const int k = ivf_k;
  Print(absl::StrFormat(
      "Build (GPU k-means on the seeded sample, GPU assignment, lists on the CPU): %.1f s. Ground truth: GPU exact "
      "search (checked above).\n\n"
      "GPU QPS as searched (auto scan), and with the lists scanned by query and by list (IvfScan); "
      "batches of up to 1024 queries.\n\n"
      "| nprobe | GPU recall@10 | GPU QPS | by query | by list | CPU recall@10 | CPU QPS (%d threads) | speed-up |\n"
      "|---|---|---|---|---|---|---|---|\n",
      build_s, cores));
  double speedup_at_095 = 0;
  for (int nprobe : {4, 8, 16, 32, 64, 128}) {
    cairn::index::SegmentSearchParams p;
    p.k = k;
    p.nprobe = nprobe;
    std::vector<float> sc(nq * k);
    std::vector<int64_t> got(nq * k);
    (void)(*seg)->Search(queries.data(), std::min<size_t>(nq, 256), p, sc.data(), got.data(), cores);  // warm-up
    t = Clock::now();
    if (auto s = (*seg)->Search(queries.data(), nq, p, sc.data(), got.data(), cores); !s.ok()) {
      std::fprintf(stderr, "gpu_bench: %s\n", s.ToString().c_str());
      return 1;
    }
    const double gpu_qps = nq / Since(t);
    const double gpu_recall = Recall(got, truth, nq, k, k, k);
    double scan_qps[2] = {0, 0};
    for (int m = 0; m < 2; ++m) {
      cairn::index::SegmentSearchParams ps = p;
      ps.gpu_ivf_scan = m == 0 ? cairn::index::gpu::cuda::IvfScan::kByQuery : cairn::index::gpu::cuda::IvfScan::kByList;
      std::vector<int64_t> got_scan(nq * k);
      // Warm-up: the scan's workspaces.
      (void)(*seg)->Search(queries.data(), std::min<size_t>(nq, 1024), ps, sc.data(), got_scan.data(), cores);
      t = Clock::now();
      if (auto s = (*seg)->Search(queries.data(), nq, ps, sc.data(), got_scan.data(), cores); !s.ok()) {
        std::fprintf(stderr, "gpu_bench: %s\n", s.ToString().c_str());
        return 1;
      }
      scan_qps[m] = nq / Since(t);
      const double r = Recall(got_scan, truth, nq, k, k, k);
      if (std::abs(r - gpu_recall) > 0.002) {
        std::fprintf(stderr, "gpu_bench: IVF-Flat recall %.4f scanning %s, %.4f as searched\n", r,
                     m == 0 ? "by query" : "by list", gpu_recall);
        return 1;
      }
    }
    const size_t cq = std::min(nq, f.cpu_ivf_queries);
    p.force_cpu = true;
    t = Clock::now();
    (void)(*seg)->Search(queries.data(), cq, p, sc.data(), got.data(), cores);
    const double cpu_qps = cq / Since(t);
    const double cpu_recall = Recall(got, truth, cq, k, k, k);
    Print(absl::StrFormat("| %d | %.4f | %.0f | %.0f | %.0f | %.4f | %.0f | %.1fx |\n", nprobe, gpu_recall, gpu_qps,
                          scan_qps[0], scan_qps[1], cpu_recall, cpu_qps, gpu_qps / cpu_qps));
    if (speedup_at_095 == 0 && gpu_recall >= 0.95 && cpu_recall >= 0.95) speedup_at_095 = gpu_qps / cpu_qps;
  }
  Print(absl::StrFormat(
      "\n## Goals\n\n"
      "| goal | measured | |\n|---|---|---|\n"
      "| GPU results equal the CPU's (ids except ties) | %s | %s |\n"
      "| exact search >= 50%% of the roofline, batches >= 1024 | %.2f | %s |\n"
      "| k-means >= 20x the %d-thread CPU | %.1fx | %s |\n"
      "| IVF-Flat >= 10x the CPU at recall@10 >= 0.95 | %.1fx | %s |\n",
      exact_ok ? "equal" : "DIFFERENT", exact_ok ? "met" : "NOT MET", best_large_roofline,
      best_large_roofline >= 0.5 ? "met" : "not met", cores, kmeans_speedup, kmeans_speedup >= 20 ? "met" : "not met",
      speedup_at_095, speedup_at_095 >= 10 ? "met" : "not met"));

  // ---- IVF-PQ codebooks and codes -------------------------------------------
  // What an IVF-PQ build does after its coarse k-means: train a codebook per
  // sub-space on the residuals of 256 * 256 training vectors (FAISS's cap),
  // then encode every vector's residual.
  if (f.pq_m > 0 && d % f.pq_m == 0) {
    const size_t m = f.pq_m, ksub = 256, rows = std::min<size_t>(f.n, ksub * 256);
    std::vector<int64_t> lists(rows);
    if (auto s = gpu::AssignNearest(base.data(), rows, d, centroids.data(), f.kmeans_k, Metric::kL2, lists.data());
        !s.ok()) {
      std::fprintf(stderr, "gpu_bench: %s\n", s.ToString().c_str());
      return 1;
    }
    std::vector<float> res(rows * d);
    for (size_t i = 0; i < rows; ++i) {
      for (uint32_t j = 0; j < d; ++j) res[i * d + j] = base[i * d + j] - centroids[lists[i] * d + j];
    }
    gpu::KMeansOptions po;
    po.tf32 = false;
    std::vector<float> books(m * ksub * (d / m));
    t = Clock::now();
    auto pqr = gpu::TrainPqCodebooks(res.data(), rows, d, m, ksub, po, books.data());
    const double gpu_train_s = Since(t);
    std::vector<int32_t> codes(rows * m);
    t = Clock::now();
    const absl::Status enc = gpu::EncodePq(res.data(), rows, d, m, ksub, books.data(), codes.data());
    const double gpu_enc_s = Since(t);
    if (!pqr.ok() || !enc.ok()) {
      std::fprintf(stderr, "gpu_bench: %s\n", (pqr.ok() ? enc : pqr.status()).ToString().c_str());
      return 1;
    }
    faiss::ProductQuantizer cpu(d, m, 8);
    cpu.cp.niter = f.cpu_pq_iters;
    t = Clock::now();
    cpu.train(static_cast<int>(rows), res.data());
    const double cpu_train_s = Since(t);
    cpu.centroids = books;  // encode with the same codebooks: the codes must agree
    std::vector<uint8_t> cpu_codes(rows * cpu.code_size);
    t = Clock::now();
    cpu.compute_codes(res.data(), cpu_codes.data(), rows);
    const double cpu_enc_s = Since(t);
    size_t same = 0;
    for (size_t i = 0; i < rows * m; ++i) same += cpu_codes[i] == codes[i];
    const double cpu_train_full = cpu_train_s / f.cpu_pq_iters * po.iterations;
    Print(absl::StrFormat(
        "\n## IVF-PQ codebooks and codes, M=%zu, 8 bits, %zu residuals of %d dimensions\n\n"
        "| step | GPU s | CPU s (FAISS, %d threads) | speed-up |\n|---|---|---|---|\n"
        "| codebooks, %d iterations (the CPU timed at %d, scaled) | %.2f | %.1f | %.1fx |\n"
        "| encoding | %.3f | %.2f | %.1fx |\n\n"
        "Codes equal to FAISS's with the same codebooks: %.4f (others are ties within float rounding). GPU "
        "codebook objective %.6g.\n",
        m, rows, d, cores, po.iterations, f.cpu_pq_iters, gpu_train_s, cpu_train_full, cpu_train_full / gpu_train_s,
        gpu_enc_s, cpu_enc_s, cpu_enc_s / gpu_enc_s, static_cast<double>(same) / static_cast<double>(rows * m),
        pqr->objective));

    // The whole IVF-PQ build as a GPU node makes it (searched on the CPU).
    cairn::IndexSpec pq_spec;
    pq_spec.type = cairn::IndexType::kIvfPq;
    pq_spec.nlist = static_cast<int>(f.nlist);
    pq_spec.pq_m = static_cast<int>(m);
    pq_spec.device = cairn::Device::kGpu;
    t = Clock::now();
    auto pq_seg = cairn::index::Segment::Build(d, Metric::kL2, pq_spec, base.data(), ids.data(), f.n, cores);
    const double pq_build_s = Since(t);
    if (!pq_seg.ok()) {
      std::fprintf(stderr, "gpu_bench: IVF-PQ build: %s\n", pq_seg.status().ToString().c_str());
      return 1;
    }
    const size_t pq_nq = std::min<size_t>(ivf_nq, 1000);
    cairn::index::SegmentSearchParams pp;
    pp.k = ivf_k;
    pp.nprobe = 32;
    std::vector<float> psc(pq_nq * ivf_k);
    std::vector<int64_t> pgot(pq_nq * ivf_k);
    t = Clock::now();
    if (auto s = (*pq_seg)->Search(queries.data(), pq_nq, pp, psc.data(), pgot.data(), cores); !s.ok()) {
      std::fprintf(stderr, "gpu_bench: IVF-PQ search: %s\n", s.ToString().c_str());
      return 1;
    }
    const double pq_qps = pq_nq / Since(t);
    Print(absl::StrFormat(
        "IVF-PQ segment (nlist %zu, M=%zu) built on the GPU end to end: %.1f s. Searched on the CPU at nprobe 32: "
        "recall@10 %.4f, %.0f QPS (%d threads).\n",
        f.nlist, m, pq_build_s, Recall(pgot, truth, pq_nq, ivf_k, ivf_k, ivf_k), pq_qps, cores));
  }
  return exact_ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "gpu_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::printf(
          "gpu_bench: checks Cairn's GPU paths against the CPU on generated clustered data, then times exact\n"
          "search (float32/float16/bfloat16, batches 1..4096, k 10 and 100), k-means, IVF-Flat search and\n"
          "IVF-PQ codebooks and encoding against the CPU of the same machine. Prints markdown tables; exits 1 if the check fails.\n\n"
          "  --n N                 base vectors (default 1000000)\n"
          "  --dim D               dimension (default 768)\n"
          "  --queries Q           query vectors (default 10000)\n"
          "  --kmeans-k K          k-means centroids (default 4096)\n"
          "  --kmeans-iters I      GPU k-means iterations (default 25)\n"
          "  --cpu-kmeans-iters I  FAISS CPU k-means iterations timed (default 2; per-iteration times compared)\n"
          "  --nlist L             IVF lists (default 4096)\n"
          "  --ivf-queries Q       IVF queries on the GPU (default 10000)\n"
          "  --cpu-ivf-queries Q   IVF queries on the CPU (default 2000)\n"
          "  --pq-m M              IVF-PQ sub-spaces for the codebook and encoding timings (default 96;\n"
          "                        0 skips them)\n"
          "  --cpu-pq-iters I      FAISS CPU codebook iterations timed (default 2)\n"
          "  --out FILE            also write the report to FILE\n");
      return 0;
    }
    if (a == "--n") f.n = std::stoull(next());
    else if (a == "--dim") f.dim = static_cast<uint32_t>(std::stoul(next()));
    else if (a == "--queries") f.queries = std::stoull(next());
    else if (a == "--kmeans-k") f.kmeans_k = std::stoull(next());
    else if (a == "--kmeans-iters") f.kmeans_iters = std::stoi(next());
    else if (a == "--cpu-kmeans-iters") f.cpu_kmeans_iters = std::stoi(next());
    else if (a == "--nlist") f.nlist = std::stoull(next());
    else if (a == "--ivf-queries") f.ivf_queries = std::stoull(next());
    else if (a == "--cpu-ivf-queries") f.cpu_ivf_queries = std::stoull(next());
    else if (a == "--pq-m") f.pq_m = std::stoull(next());
    else if (a == "--cpu-pq-iters") f.cpu_pq_iters = std::max(1, std::stoi(next()));
    else if (a == "--out") f.out = next();
    else {
      std::fprintf(stderr, "gpu_bench: unknown flag %s (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (f.queries < 1 || f.n < f.kmeans_k || f.n < f.nlist * 39) {
    std::fprintf(stderr, "gpu_bench: need n >= kmeans-k and n >= 39 * nlist, and queries >= 1\n");
    return 2;
  }
  if (!f.out.empty()) {
    g_out = std::fopen(f.out.c_str(), "w");
    if (g_out == nullptr) {
      std::fprintf(stderr, "gpu_bench: cannot write %s\n", f.out.c_str());
      return 2;
    }
  }
  const int rc = Run(f);
  if (g_out != nullptr) std::fclose(g_out);
  return rc;
}
