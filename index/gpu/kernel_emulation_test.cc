// The GPU kernels of index/gpu/, compiled as host C++ and run on the CPU by
// the CUDA emulator (cuda_emulator.h), against plain C++ references. This is
// what CI, which has no GPU, checks of the kernels' logic: selection, argmin,
// the counting sort and means of k-means, the IVF scan, conversions and
// norms. In the default build it runs under ThreadSanitizer, so a missing
// __syncthreads between threads that share memory fails it; in the
// sanitizer build, AddressSanitizer catches out-of-bounds accesses. gpu_test
// runs the same kernels on a real GPU.
#include "index/gpu/cuda_emulator.h"
// The kernels must come after the emulator.
#include "index/gpu/ivf_kernels.cuh"
#include "index/gpu/kmeans_kernels.cuh"
#include "index/gpu/ops_kernels.cuh"
#include "index/gpu/select_kernel.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

namespace cairn::index::gpu::cuda {
namespace {

using emu::Launch;

// ---- selection ------------------------------------------------------------

struct SelectCase {
  std::string name;
  int rows = 1;
  int64_t cols = 1;
  int k = 1;
  int slices = 1;
  bool in_ids = false;   // explicit labels, some of them -1 (empty)
  bool allow = false;    // an allow-list over the labels
  bool col_add = false;  // a value added per column
  bool row_len = false;  // rows shorter than cols
  int distinct = 0;      // > 0: values drawn from so many levels (ties)
};

void PrintTo(const SelectCase& c, std::ostream* os) { *os << c.name; }

uint32_t KeyOf(float f) {
  const uint32_t b = std::bit_cast<uint32_t>(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

class EmulatedSelectTest : public ::testing::TestWithParam<SelectCase> {};

TEST_P(EmulatedSelectTest, KeepsTheKSmallestOfEverySlice) {
  const SelectCase& c = GetParam();
  std::mt19937_64 rng(std::hash<std::string>{}(c.name));
  const int64_t ld = c.cols + 3;  // rows are not packed
  const int64_t id_offset = 5;
  std::vector<float> v(static_cast<size_t>(c.rows * ld), std::nanf(""));
  std::normal_distribution<float> normal(0.0f, 10.0f);
  std::uniform_int_distribution<int> level(0, std::max(c.distinct, 1) - 1);
  for (int r = 0; r < c.rows; ++r) {
    for (int64_t j = 0; j < c.cols; ++j) {
      float x = c.distinct > 0 ? static_cast<float>(level(rng)) - 2.0f : normal(rng);
      if (c.distinct == 0 && j % 97 == 3) x = 1e-40f;  // denormals and both zeros too
      if (c.distinct == 0 && j % 89 == 5) x = j % 2 ? -0.0f : 0.0f;
      v[r * ld + j] = x;
    }
  }
  std::vector<int64_t> ids;
  int64_t label_space = id_offset + c.cols;
  if (c.in_ids) {
    ids.assign(v.size(), -7);  // outside the rows' columns: never read
    label_space = 3 * c.cols;
    for (int r = 0; r < c.rows; ++r) {
      std::vector<int64_t> labels(static_cast<size_t>(label_space));
      std::iota(labels.begin(), labels.end(), 0);
      std::shuffle(labels.begin(), labels.end(), rng);
      for (int64_t j = 0; j < c.cols; ++j) ids[r * ld + j] = rng() % 10 == 0 ? -1 : labels[j];
    }
  }
  std::vector<uint64_t> allow;
  if (c.allow) {
    allow.assign(static_cast<size_t>(label_space / 64 + 1), 0);
    for (int64_t l = 0; l < label_space; ++l) {
      if (rng() % 10 < 7) allow[l >> 6] |= 1ull << (l & 63);
    }
  }
  std::vector<float> col_add;
  if (c.col_add) {
    for (int64_t j = 0; j < c.cols; ++j) col_add.push_back(c.distinct > 0 ? 1.0f : normal(rng));
  }
  std::vector<int64_t> row_len;
  if (c.row_len) {
    for (int r = 0; r < c.rows; ++r) row_len.push_back(r == 0 ? 0 : static_cast<int64_t>(rng() % (c.cols + 1)));
  }
  const int64_t slice_len = c.slices > 1 ? (c.cols + c.slices - 1) / c.slices : 0;
  const int64_t out_ld = static_cast<int64_t>(c.slices) * c.k;
  std::vector<float> out_v(static_cast<size_t>(c.rows * out_ld), -1.0f);
  std::vector<int64_t> out_i(out_v.size(), -2);

  SelectArgs a;
  a.v = v.data();
  a.ld = ld;
  a.rows = c.rows;
  a.cols = c.cols;
  a.row_len = c.row_len ? row_len.data() : nullptr;
  a.col_add = c.col_add ? col_add.data() : nullptr;
  a.in_ids = c.in_ids ? ids.data() : nullptr;
  a.id_offset = id_offset;
  a.allow = c.allow ? allow.data() : nullptr;
  a.k = c.k;
  a.slices = c.slices;
  a.slice_len = slice_len;
  a.out_v = out_v.data();
  a.out_i = out_i.data();
  a.out_ld = out_ld;
  Launch(dim3(c.rows, c.slices), dim3(kernels::kSelectThreads), 0, &kernels::SelectKernel, a);

  for (int r = 0; r < c.rows; ++r) {
    const int64_t len = c.row_len ? std::min(c.cols, row_len[r]) : c.cols;
    for (int s = 0; s < c.slices; ++s) {
      SCOPED_TRACE("row " + std::to_string(r) + " slice " + std::to_string(s));
      const int64_t begin = s * (slice_len > 0 ? slice_len : c.cols);
      const int64_t end = std::min(begin + (slice_len > 0 ? slice_len : c.cols), len);
      std::unordered_map<int64_t, uint32_t> key_of_label;  // the eligible elements
      std::vector<uint32_t> keys;
      for (int64_t j = begin; j < end; ++j) {
        const int64_t label = c.in_ids ? ids[r * ld + j] : id_offset + j;
        if (label < 0) continue;
        if (c.allow && !((allow[label >> 6] >> (label & 63)) & 1)) continue;
        float x = v[r * ld + j];
        if (c.col_add) x += col_add[j];
        key_of_label[label] = KeyOf(x);
        keys.push_back(KeyOf(x));
      }
      std::sort(keys.begin(), keys.end());
      std::vector<int64_t> seen;
      for (int j = 0; j < c.k; ++j) {
        const float got_v = out_v[r * out_ld + s * c.k + j];
        const int64_t got_i = out_i[r * out_ld + s * c.k + j];
        if (static_cast<size_t>(j) < keys.size()) {
          // The k-th value's ties may be any of the tied elements: the values
          // are exact at every rank, and each label carries its own value.
          ASSERT_EQ(KeyOf(got_v), keys[j]) << "rank " << j;
          auto it = key_of_label.find(got_i);
          ASSERT_NE(it, key_of_label.end()) << "rank " << j << ": label " << got_i << " is not eligible";
          ASSERT_EQ(it->second, keys[j]) << "rank " << j << ": label " << got_i << " has another value";
          seen.push_back(got_i);
        } else {
          ASSERT_EQ(got_i, -1) << "rank " << j << " past the " << keys.size() << " eligible elements";
          ASSERT_TRUE(std::isinf(got_v) && got_v > 0) << "rank " << j;
        }
      }
      std::sort(seen.begin(), seen.end());
      ASSERT_EQ(std::adjacent_find(seen.begin(), seen.end()), seen.end()) << "a label was returned twice";
    }
  }
}

std::vector<SelectCase> SelectCases() {
  std::vector<SelectCase> cases;
  auto add = [&](SelectCase c) { cases.push_back(std::move(c)); };
  add({.name = "one_column", .rows = 3, .cols = 1, .k = 1});
  add({.name = "k_over_the_row", .rows = 2, .cols = 700, .k = 1024});
  add({.name = "k1_long_row", .rows = 2, .cols = 9000, .k = 1});
  add({.name = "k100", .rows = 3, .cols = 5000, .k = 100});
  add({.name = "k1024", .rows = 2, .cols = 3000, .k = 1024});
  add({.name = "k_not_a_power_of_two", .rows = 2, .cols = 2000, .k = 77});
  add({.name = "ties", .rows = 3, .cols = 4000, .k = 100, .distinct = 5});
  add({.name = "all_equal", .rows = 2, .cols = 3000, .k = 64, .distinct = 1});
  add({.name = "slices", .rows = 2, .cols = 20000, .k = 64, .slices = 5});
  add({.name = "slices_short_last", .rows = 1, .cols = 10001, .k = 10, .slices = 3});
  add({.name = "labels_with_empties", .rows = 3, .cols = 3000, .k = 50, .in_ids = true});
  add({.name = "allow_list", .rows = 3, .cols = 3000, .k = 50, .allow = true});
  add({.name = "allow_fewer_than_k", .rows = 2, .cols = 200, .k = 1000, .allow = true});
  add({.name = "col_add", .rows = 3, .cols = 3000, .k = 32, .col_add = true});
  add({.name = "row_len", .rows = 4, .cols = 3000, .k = 40, .row_len = true});
  add({.name = "everything", .rows = 3, .cols = 12000, .k = 100, .slices = 3, .in_ids = true, .allow = true,
       .col_add = true, .row_len = true});
  add({.name = "everything_ties", .rows = 2, .cols = 6000, .k = 200, .slices = 2, .in_ids = true, .allow = true,
       .col_add = true, .row_len = true, .distinct = 3});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, EmulatedSelectTest, ::testing::ValuesIn(SelectCases()),
                         [](const auto& info) { return info.param.name; });

// ---- k-means --------------------------------------------------------------

TEST(EmulatedKMeansTest, ArgMinTakesTheLowestColumnOfTheSmallestSum) {
  std::mt19937_64 rng(11);
  for (const size_t cols : {1u, 37u, 300u}) {
    for (const bool adds : {false, true}) {
      SCOPED_TRACE("cols " + std::to_string(cols) + (adds ? " with adds" : ""));
      const size_t rows = 70;  // not a multiple of the 8 warps of a block
      std::uniform_int_distribution<int> small(0, 6);
      std::vector<float> dist(rows * cols), col_add(cols), row_add(rows);
      for (auto& x : dist) x = static_cast<float>(small(rng)) - 3.0f;  // ties everywhere
      for (auto& x : col_add) x = static_cast<float>(small(rng));
      for (auto& x : row_add) x = static_cast<float>(small(rng)) - 10.0f;
      for (size_t j = 0; j < cols; ++j) dist[5 * cols + j] = std::nanf("");  // a row of NaN
      std::vector<int32_t> assign(rows, -5);
      std::vector<float> best(rows, -5.0f);
      const unsigned threads = 256, blocks = static_cast<unsigned>((rows * 32 + threads - 1) / threads);
      Launch(dim3(blocks), dim3(threads), 0, &kernels::ArgMinKernel, dist.data(), rows, cols,
             adds ? col_add.data() : nullptr, adds ? row_add.data() : nullptr, assign.data(), best.data());
      for (size_t r = 0; r < rows; ++r) {
        float bv = std::numeric_limits<float>::infinity();
        int32_t bi = 0;
        for (size_t j = 0; j < cols; ++j) {
          const float x = dist[r * cols + j] + (adds ? col_add[j] : 0.0f);
          if (x < bv) {
            bv = x;
            bi = static_cast<int32_t>(j);
          }
        }
        ASSERT_EQ(assign[r], bi) << "row " << r;
        if (r == 5) continue;  // all NaN: any centroid, and no distance
        const float want = adds ? std::max(bv + row_add[r], 0.0f) : bv;
        ASSERT_EQ(best[r], want) << "row " << r;
      }
    }
  }
}

TEST(EmulatedKMeansTest, CountScatterAndMeanGroupPointsByCluster) {
  std::mt19937_64 rng(12);
  const size_t n = 3000, k = 40;
  const uint32_t d = 33;
  std::vector<int32_t> assign(n);
  for (auto& a : assign) a = static_cast<int32_t>(rng() % (k - 5));  // the last 5 clusters stay empty
  std::vector<float> x(n * d);
  std::normal_distribution<float> normal(3.0f, 2.0f);
  for (auto& e : x) e = normal(rng);

  std::vector<uint32_t> counts(k, 0);
  // Fewer blocks than the points need: the kernels stride over the grid.
  Launch(dim3(3), dim3(256), 0, &kernels::CountKernel, assign.data(), n, counts.data());
  std::vector<uint32_t> want(k, 0);
  for (const int32_t a : assign) ++want[a];
  ASSERT_EQ(counts, want);

  std::vector<uint32_t> offsets(k + 1, 0);
  for (size_t c = 0; c < k; ++c) offsets[c + 1] = offsets[c] + counts[c];
  std::vector<uint32_t> cursor(offsets.begin(), offsets.end() - 1), order(n, 0xffffffffu);
  Launch(dim3(5), dim3(256), 0, &kernels::ScatterKernel, assign.data(), n, cursor.data(), order.data());
  std::vector<bool> placed(n, false);
  for (size_t c = 0; c < k; ++c) {
    for (uint32_t m = offsets[c]; m < offsets[c + 1]; ++m) {
      ASSERT_LT(order[m], n);
      ASSERT_EQ(assign[order[m]], static_cast<int32_t>(c)) << "slot " << m;
      ASSERT_FALSE(placed[order[m]]) << "point " << order[m] << " placed twice";
      placed[order[m]] = true;
    }
  }

  std::vector<float> centroids(k * d, 42.0f);
  Launch(dim3(static_cast<unsigned>(k)), dim3(256), 0, &kernels::MeanKernel, x.data(), d, order.data(),
         offsets.data(), centroids.data());
  for (size_t c = 0; c < k; ++c) {
    for (uint32_t j = 0; j < d; ++j) {
      if (counts[c] == 0) {
        ASSERT_EQ(centroids[c * d + j], 42.0f) << "an empty cluster's centroid changed";
        continue;
      }
      double s = 0;
      for (size_t i = 0; i < n; ++i) {
        if (assign[i] == static_cast<int32_t>(c)) s += x[i * d + j];
      }
      ASSERT_NEAR(centroids[c * d + j], s / counts[c], 1e-5) << "cluster " << c << " dim " << j;
    }
  }
}

// ---- IVF-Flat scan ----------------------------------------------------------

// An IVF layout: lists back to back (list_off), their vectors and positions,
// and a batch's probes (nq x nprobe list numbers, -1 for none).
struct IvfLayout {
  uint32_t d = 0;
  int nlist = 0, nq = 0, nprobe = 0;
  std::vector<int64_t> list_off, positions, probes;
  std::vector<float> data, queries;
  std::vector<uint64_t> allow;
};

IvfLayout MakeLayout(uint32_t d, const std::vector<int64_t>& lens, int nq, int nprobe, std::mt19937_64& rng) {
  IvfLayout L;
  L.d = d;
  L.nlist = static_cast<int>(lens.size());
  L.nq = nq;
  L.nprobe = nprobe;
  L.list_off.assign(lens.size() + 1, 0);
  for (size_t l = 0; l < lens.size(); ++l) L.list_off[l + 1] = L.list_off[l] + lens[l];
  const int64_t total = L.list_off.back();
  L.positions.resize(static_cast<size_t>(total));
  std::iota(L.positions.begin(), L.positions.end(), 100);
  std::shuffle(L.positions.begin(), L.positions.end(), rng);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  L.data.resize(static_cast<size_t>(total) * d);
  L.queries.resize(static_cast<size_t>(nq) * d);
  for (auto& e : L.data) e = normal(rng);
  for (auto& e : L.queries) e = normal(rng);
  L.probes.assign(static_cast<size_t>(nq) * nprobe, -1);
  L.allow.assign((100 + total) / 64 + 1, 0);
  for (int64_t pos = 0; pos < 100 + total; ++pos) {
    if (rng() % 3 != 0) L.allow[pos >> 6] |= 1ull << (pos & 63);
  }
  return L;
}

// Runs ProbeOffsetsKernel, then the scan by query (ScanKernel) or by list
// (CountPairsKernel, PlanTiles, ScatterPairsKernel, TiledScanKernel), and
// checks every row entry against float64 distances, and that nothing is
// written past a row's length.
void ScanAndCheck(const IvfLayout& L, bool l2, bool use_allow, bool by_list) {
  const int nq = L.nq, nprobe = L.nprobe, nlist = L.nlist;
  std::vector<int64_t> probe_start(nq * nprobe, -9), row_len(nq, -9);
  Launch(dim3(1), dim3(128), 0, &kernels::ProbeOffsetsKernel, L.probes.data(), nq, nprobe, L.list_off.data(),
         probe_start.data(), row_len.data());
  int64_t row_cap = 0;
  for (int q = 0; q < nq; ++q) {
    int64_t at = 0;
    for (int p = 0; p < nprobe; ++p) {
      ASSERT_EQ(probe_start[q * nprobe + p], at);
      const int64_t l = L.probes[q * nprobe + p];
      if (l >= 0) at += L.list_off[l + 1] - L.list_off[l];
    }
    ASSERT_EQ(row_len[q], at);
    row_cap = std::max(row_cap, at);
  }

  std::vector<float> dist(static_cast<size_t>(nq * row_cap), -123.0f);
  std::vector<int64_t> labels(dist.size(), -123);
  const uint64_t* allow = use_allow ? L.allow.data() : nullptr;
  if (by_list) {
    const int64_t npairs = nq * nprobe;
    std::vector<uint32_t> counts(nlist, 0), cursor(nlist, 0), list_order(nlist);
    Launch(dim3(2), dim3(64), 0, &kernels::CountPairsKernel, L.probes.data(), npairs, counts.data());
    std::iota(list_order.begin(), list_order.end(), 0u);
    std::stable_sort(list_order.begin(), list_order.end(), [&](uint32_t a, uint32_t b) {
      return L.list_off[a + 1] - L.list_off[a] > L.list_off[b + 1] - L.list_off[b];
    });
    std::vector<kernels::TileWork> work(npairs);
    size_t n_work = 0;
    const int64_t pairs = kernels::PlanTiles(counts.data(), list_order.data(), nlist, cursor.data(), work.data(),
                                             &n_work);
    ASSERT_EQ(pairs, std::count_if(L.probes.begin(), L.probes.end(), [](int64_t l) { return l >= 0; }));
    std::vector<int64_t> order(std::max<int64_t>(pairs, 1), -1);
    Launch(dim3(3), dim3(64), 0, &kernels::ScatterPairsKernel, L.probes.data(), npairs, cursor.data(),
           order.data());
    // Every pair grouped once, under its own list.
    std::vector<int64_t> sorted(order.begin(), order.begin() + pairs);
    std::sort(sorted.begin(), sorted.end());
    ASSERT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end()) << "a pair grouped twice";
    for (size_t w = 0; w < n_work; ++w) {
      for (int i = 0; i < work[w].pairs; ++i) {
        const int64_t pair = order[work[w].pair_begin + i];
        ASSERT_GE(pair, 0);
        ASSERT_EQ(L.probes[pair], work[w].list) << "pair " << pair << " grouped under the wrong list";
      }
    }
    if (n_work > 0) {
      auto* kernel = l2 ? &kernels::TiledScanKernel<true> : &kernels::TiledScanKernel<false>;
      Launch(dim3(static_cast<unsigned>(n_work)), dim3(kernels::kTileThreads), 0, kernel, L.queries.data(), L.d,
             nprobe, probe_start.data(), work.data(), order.data(), L.data.data(), L.positions.data(),
             L.list_off.data(), allow, dist.data(), labels.data(), row_cap);
    }
  } else {
    const size_t shmem = L.d <= kernels::kSharedQueryDims ? L.d * sizeof(float) : 0;
    Launch(dim3(nq, nprobe), dim3(kernels::kScanThreads), shmem, &kernels::ScanKernel, L.queries.data(), L.d,
           L.probes.data(), nprobe, probe_start.data(), L.data.data(), L.positions.data(), L.list_off.data(), allow,
           l2, dist.data(), labels.data(), row_cap);
  }
  for (int q = 0; q < nq; ++q) {
    for (int p = 0; p < nprobe; ++p) {
      const int64_t l = L.probes[q * nprobe + p];
      if (l < 0) continue;
      for (int64_t i = 0; i < L.list_off[l + 1] - L.list_off[l]; ++i) {
        const int64_t at = q * row_cap + probe_start[q * nprobe + p] + i;
        const int64_t pos = L.positions[L.list_off[l] + i];
        if (use_allow && !((L.allow[pos >> 6] >> (pos & 63)) & 1)) {
          ASSERT_EQ(labels[at], -1) << "query " << q << " list " << l << " entry " << i;
          continue;
        }
        ASSERT_EQ(labels[at], pos) << "query " << q << " list " << l << " entry " << i;
        double s = 0;
        for (uint32_t j = 0; j < L.d; ++j) {
          const double a = L.queries[q * L.d + j], b = L.data[(L.list_off[l] + i) * L.d + j];
          s += l2 ? (a - b) * (a - b) : a * b;
        }
        const double want = l2 ? s : -s;
        ASSERT_NEAR(dist[at], want, 1e-4 * (1 + std::abs(want))) << "query " << q << " list " << l;
      }
    }
    for (int64_t at = q * row_cap + row_len[q]; at < (q + 1) * row_cap; ++at) {
      ASSERT_EQ(labels[at], -123) << "written past the row's length";
    }
  }
}

struct IvfScanCase {
  uint32_t d;
  bool l2;
  bool allow;
  bool by_list = false;  // TiledScanKernel over the pairs grouped by list, else ScanKernel
  int nq = 5;
  int max_len = 40;  // list lengths 1..max_len, and some empty lists
};

void PrintTo(const IvfScanCase& c, std::ostream* os) {
  *os << (c.by_list ? "by list" : "by query") << " d=" << c.d << (c.l2 ? " L2" : " IP")
      << (c.allow ? " allow-list" : "") << " nq=" << c.nq << " lists<=" << c.max_len;
}

class EmulatedIvfScanTest : public ::testing::TestWithParam<IvfScanCase> {};

// Random lists, each query probing 4 distinct lists (one probe is -1).
TEST_P(EmulatedIvfScanTest, WritesEveryProbedListsDistancesInItsPlace) {
  const IvfScanCase& c = GetParam();
  std::mt19937_64 rng(c.d * 2 + c.l2 + 7 * c.nq);
  const int nlist = 12, nprobe = 4;
  std::vector<int64_t> lens(nlist);
  for (int l = 0; l < nlist; ++l) lens[l] = l % 5 == 2 ? 0 : 1 + static_cast<int64_t>(rng() % c.max_len);
  IvfLayout L = MakeLayout(c.d, lens, c.nq, nprobe, rng);
  for (int q = 0; q < c.nq; ++q) {
    std::vector<int64_t> lists(nlist);
    std::iota(lists.begin(), lists.end(), 0);
    std::shuffle(lists.begin(), lists.end(), rng);
    for (int p = 0; p < nprobe; ++p) L.probes[q * nprobe + p] = (q == 1 && p == 2) ? -1 : lists[p];
  }
  ScanAndCheck(L, c.l2, c.allow, c.by_list);
}

INSTANTIATE_TEST_SUITE_P(Shapes, EmulatedIvfScanTest,
                         ::testing::Values(IvfScanCase{40, true, false}, IvfScanCase{40, false, true},
                                           IvfScanCase{1, true, true},
                                           // Over 48 KiB of query: read from global memory.
                                           IvfScanCase{kernels::kSharedQueryDims + 1, true, true},
                                           // By list: lists longer than a block's 128 vectors, and over
                                           // 32 queries per list (several blocks per list).
                                           IvfScanCase{40, true, false, true, 120, 300},
                                           IvfScanCase{40, false, true, true, 120, 300},
                                           // Dimensions not a multiple of 32; one dimension; many.
                                           IvfScanCase{70, true, true, true, 40, 150},
                                           IvfScanCase{1, true, true, true, 9, 40},
                                           IvfScanCase{1000, false, true, true, 9, 20}));

// The by-list scan at its tile edges: lists of exactly 128 and 256 vectors
// (and 127, 129, 1, 0), exactly 32 and 64 queries on a list, and 32 or 64
// dimensions (whole steps).
TEST(EmulatedIvfScanTest, TileEdges) {
  for (uint32_t d : {32u, 64u}) {
    std::mt19937_64 rng(d);
    IvfLayout L = MakeLayout(d, {128, 256, 127, 129, 1, 0}, 64, 3, rng);
    for (int q = 0; q < 64; ++q) {
      L.probes[q * 3 + 0] = 1;               // 64 queries on the 256-vector list
      L.probes[q * 3 + 1] = q < 32 ? 0 : 2;  // 32 on the 128, 32 on the 127
      L.probes[q * 3 + 2] = q % 4 == 0 ? 3 : q % 4 == 1 ? 4 : q % 4 == 2 ? 5 : -1;
    }
    SCOPED_TRACE(testing::Message() << "d=" << d);
    ScanAndCheck(L, /*l2=*/true, /*use_allow=*/true, /*by_list=*/true);
    ScanAndCheck(L, /*l2=*/false, /*use_allow=*/false, /*by_list=*/true);
  }
}

TEST(EmulatedIvfScanTest, PlanTilesCutsEachListsPairsIntoBlocksOf32LongestFirst) {
  const std::vector<uint32_t> counts = {0, 1, 32, 33, 64, 5};
  const std::vector<uint32_t> order = {4, 3, 2, 5, 1, 0};  // as by list length
  std::vector<uint32_t> cursor(counts.size(), 999);
  std::vector<kernels::TileWork> work(16);
  size_t n_work = 0;
  EXPECT_EQ(kernels::PlanTiles(counts.data(), order.data(), counts.size(), cursor.data(), work.data(), &n_work),
            135);
  // Cursors: each list's first pair, lists back to back in `order`.
  EXPECT_EQ(cursor, (std::vector<uint32_t>{135, 134, 97, 64, 0, 129}));
  struct Want {
    int64_t list, begin;
    int32_t pairs;
  };
  const std::vector<Want> want = {{4, 0, 32},  {4, 32, 32}, {3, 64, 32}, {3, 96, 1},
                                  {2, 97, 32}, {5, 129, 5}, {1, 134, 1}};
  ASSERT_EQ(n_work, want.size());
  for (size_t w = 0; w < want.size(); ++w) {
    EXPECT_EQ(work[w].list, want[w].list) << "block " << w;
    EXPECT_EQ(work[w].pair_begin, want[w].begin) << "block " << w;
    EXPECT_EQ(work[w].pairs, want[w].pairs) << "block " << w;
  }
}

// ---- element-wise ops -------------------------------------------------------

TEST(EmulatedOpsTest, ConversionsRoundToNearestLikeTheHost) {
  std::mt19937_64 rng(13);
  std::normal_distribution<float> normal(0.0f, 100.0f);
  std::vector<float> in(1000);
  for (auto& x : in) x = normal(rng);
  in[0] = 1e30f;  // beyond float16: infinity
  in[1] = 1e-30f;
  std::vector<__half> h(in.size());
  std::vector<__nv_bfloat16> b(in.size());
  Launch(dim3(2), dim3(256), 0, &kernels::ConvertKernel<__half>, in.data(), h.data(), in.size());
  Launch(dim3(2), dim3(256), 0, &kernels::ConvertKernel<__nv_bfloat16>, in.data(), b.data(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint16_t>(h[i]), std::bit_cast<uint16_t>(__float2half_rn(in[i]))) << i;
    ASSERT_EQ(std::bit_cast<uint16_t>(b[i]), std::bit_cast<uint16_t>(__float2bfloat16_rn(in[i]))) << i;
  }
}

TEST(EmulatedOpsTest, NormsOfEveryStorage) {
  std::mt19937_64 rng(14);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t n = 45;
  const uint32_t d = 70;
  std::vector<float> x(n * d);
  for (auto& e : x) e = normal(rng);
  std::vector<__half> h(x.size());
  std::vector<__nv_bfloat16> b(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    h[i] = __float2half_rn(x[i]);
    b[i] = __float2bfloat16_rn(x[i]);
  }
  std::vector<float> nf(n, -1), nh(n, -1), nb(n, -1);
  const unsigned blocks = static_cast<unsigned>((n * 32 + 255) / 256);
  Launch(dim3(blocks), dim3(256), 0, &kernels::NormsKernel<float>, x.data(), n, d, nf.data());
  Launch(dim3(blocks), dim3(256), 0, &kernels::NormsKernel<__half>, h.data(), n, d, nh.data());
  Launch(dim3(blocks), dim3(256), 0, &kernels::NormsKernel<__nv_bfloat16>, b.data(), n, d, nb.data());
  for (size_t r = 0; r < n; ++r) {
    double sf = 0, sh = 0, sb = 0;
    for (uint32_t j = 0; j < d; ++j) {
      sf += double{x[r * d + j]} * x[r * d + j];
      sh += double{__half2float(h[r * d + j])} * __half2float(h[r * d + j]);
      sb += double{__bfloat162float(b[r * d + j])} * __bfloat162float(b[r * d + j]);
    }
    ASSERT_NEAR(nf[r], sf, 1e-5 * sf) << r;
    ASSERT_NEAR(nh[r], sh, 1e-5 * sh) << r;
    ASSERT_NEAR(nb[r], sb, 1e-5 * sb) << r;
  }
}

TEST(EmulatedOpsTest, AddRowLeavesInfinitiesAndClamps) {
  const size_t rows = 7, k = 100;
  std::vector<float> v(rows * k), add(rows);
  for (size_t i = 0; i < v.size(); ++i) v[i] = i % 13 == 0 ? std::numeric_limits<float>::infinity() : 0.5f * (i % 9);
  for (size_t r = 0; r < rows; ++r) add[r] = static_cast<float>(r) - 3.0f;
  for (const bool clamp : {false, true}) {
    std::vector<float> got = v;
    Launch(dim3(2), dim3(256), 0, &kernels::AddRowKernel, got.data(), rows, k, add.data(), clamp);
    for (size_t i = 0; i < v.size(); ++i) {
      float want = std::isinf(v[i]) ? v[i] : v[i] + add[i / k];
      if (clamp && want < 0) want = 0;
      ASSERT_EQ(got[i], want) << i << (clamp ? " clamped" : "");
    }
  }
}

// ---- the emulator catches what a GPU would not forgive -----------------------

__global__ void ShuffleAfterALaneReturned(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}

TEST(EmulatorDeathTest, AWarpOperationWithoutAllItsLanesFails) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<float> out(32);
  EXPECT_DEATH(Launch(dim3(1), dim3(32), 0, &ShuffleAfterALaneReturned, out.data()), "lane");
}

}  // namespace
}  // namespace cairn::index::gpu::cuda
