// Tests for ivf_parts: an IVF-PQ index assembled from centroids, codebooks
// and codes made outside FAISS is the index FAISS makes from the same parts
// (the GPU path builds IVF-PQ segments this way; here the parts come from
// FAISS itself, so the two must match exactly).
#include "index/ivf_parts.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/impl/ProductQuantizer.h>

#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace cairn::index {
namespace {

using idx_t = faiss::Index::idx_t;

constexpr int kDim = 48;
constexpr size_t kN = 12000;
constexpr size_t kNlist = 32;
constexpr size_t kM = 8;

std::vector<float> Clustered(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> centers(50 * kDim);
  for (auto& c : centers) c = 4 * normal(rng);
  std::vector<float> x(n * kDim);
  for (size_t i = 0; i < n; ++i) {
    const size_t c = rng() % 50;
    for (int j = 0; j < kDim; ++j) x[i * kDim + j] = centers[c * kDim + j] + normal(rng);
  }
  return x;
}

std::unique_ptr<faiss::IndexIVFPQ> MakeIvfPq(faiss::MetricType metric, int nbits, size_t m = kM,
                                             size_t nlist = kNlist) {
  auto idx = std::make_unique<faiss::IndexIVFPQ>(new faiss::IndexFlat(kDim, metric), kDim, nlist, m, nbits, metric);
  idx->own_fields = true;
  idx->nprobe = 8;
  return idx;
}

// FAISS's codes of the residuals, one int32 per sub-space.
std::vector<int32_t> FaissCodes(const faiss::IndexIVFPQ& idx, const std::vector<float>& residuals, size_t n) {
  const auto& pq = idx.pq;
  std::vector<uint8_t> packed(n * pq.code_size);
  pq.compute_codes(residuals.data(), packed.data(), static_cast<idx_t>(n));
  std::vector<int32_t> codes(n * pq.M);
  for (size_t i = 0; i < n; ++i) {
    faiss::PQDecoderGeneric dec(packed.data() + i * pq.code_size, static_cast<int>(pq.nbits));
    for (size_t j = 0; j < pq.M; ++j) codes[i * pq.M + j] = static_cast<int32_t>(dec.decode());
  }
  return codes;
}

struct Params {
  faiss::MetricType metric;
  int nbits;
  size_t m = kM;
  size_t nlist = kNlist;
  bool mixed = false;  // the second part added by FAISS's add_core
};

class IvfPartsTest : public ::testing::TestWithParam<Params> {};

TEST_P(IvfPartsTest, AssembledIndexEqualsFaissOwn) {
  const Params p = GetParam();
  const std::vector<float> x = Clustered(kN, 7);
  auto own = MakeIvfPq(p.metric, p.nbits, p.m, p.nlist);
  own->train(static_cast<idx_t>(kN), x.data());
  own->add(static_cast<idx_t>(kN), x.data());

  auto made = MakeIvfPq(p.metric, p.nbits, p.m, p.nlist);
  std::vector<float> centroids(p.nlist * kDim);
  own->quantizer->reconstruct_n(0, static_cast<idx_t>(p.nlist), centroids.data());
  ASSERT_TRUE(InstallCoarseCentroids(made.get(), centroids.data()).ok());
  auto st = TrainIvfPqWithCodebooks(made.get(), own->pq.centroids.data(), x.data(), kN);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_TRUE(made->is_trained);
  EXPECT_EQ(made->pq.centroids, own->pq.centroids);
  EXPECT_EQ(made->use_precomputed_table, own->use_precomputed_table);
  EXPECT_EQ(made->precomputed_table.size(), own->precomputed_table.size());
  for (size_t i = 0; i < own->precomputed_table.size(); ++i) {
    ASSERT_EQ(made->precomputed_table[i], own->precomputed_table[i]) << i;
  }

  std::vector<idx_t> lists(kN);
  own->quantizer->assign(static_cast<idx_t>(kN), x.data(), lists.data());
  std::vector<float> residuals(kN * kDim);
  IvfResiduals(*made, kN, x.data(), lists.data(), residuals.data());
  const std::vector<int32_t> codes = FaissCodes(*made, residuals, kN);
  // In two calls: ids continue from ntotal.
  ASSERT_TRUE(AddIvfPqCodes(made.get(), 5000, lists.data(), codes.data()).ok());
  if (p.mixed) {
    made->add_core(static_cast<idx_t>(kN - 5000), x.data() + 5000 * kDim, nullptr, lists.data() + 5000);
  } else {
    st = AddIvfPqCodes(made.get(), kN - 5000, lists.data() + 5000, codes.data() + 5000 * p.m);
    ASSERT_TRUE(st.ok()) << st;
  }
  ASSERT_EQ(made->ntotal, own->ntotal);
  for (size_t l = 0; l < p.nlist; ++l) {
    const size_t len = own->invlists->list_size(l);
    ASSERT_EQ(made->invlists->list_size(l), len) << "list " << l;
    for (size_t e = 0; e < len; ++e) {
      ASSERT_EQ(made->invlists->get_single_id(l, e), own->invlists->get_single_id(l, e)) << "list " << l;
      ASSERT_EQ(0, std::memcmp(made->invlists->get_single_code(l, e), own->invlists->get_single_code(l, e),
                               own->code_size))
          << "list " << l << " entry " << e;
    }
  }

  const std::vector<float> q = Clustered(50, 8);
  std::vector<float> d1(50 * 10), d2(50 * 10);
  std::vector<idx_t> l1(50 * 10), l2(50 * 10);
  own->search(50, q.data(), 10, d1.data(), l1.data());
  made->search(50, q.data(), 10, d2.data(), l2.data());
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(d1, d2);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, IvfPartsTest,
    ::testing::Values(Params{faiss::METRIC_L2, 8}, Params{faiss::METRIC_INNER_PRODUCT, 8},
                      // Codes that end inside a byte, list numbers of two bytes.
                      Params{faiss::METRIC_L2, 5, 3, 300}, Params{faiss::METRIC_INNER_PRODUCT, 4, 16, 300},
                      Params{faiss::METRIC_L2, 8, kM, kNlist, /*mixed=*/true}));

TEST(IvfPartsErrorsTest, BadPartsAreRefusedAndChangeNothing) {
  const std::vector<float> x = Clustered(10000, 9);
  auto idx = MakeIvfPq(faiss::METRIC_L2, 8);
  std::vector<float> codebooks(kM * 256 * (kDim / kM), 0.5f);
  // The quantizer holds no centroids yet.
  EXPECT_EQ(TrainIvfPqWithCodebooks(idx.get(), codebooks.data(), x.data(), 10000).code(),
            absl::StatusCode::kFailedPrecondition);
  std::vector<float> centroids(x.begin(), x.begin() + kNlist * kDim);
  ASSERT_TRUE(InstallCoarseCentroids(idx.get(), centroids.data()).ok());
  idx->do_polysemous_training = true;  // would reorder the codebooks
  EXPECT_EQ(TrainIvfPqWithCodebooks(idx.get(), codebooks.data(), x.data(), 10000).code(),
            absl::StatusCode::kFailedPrecondition);
  idx->do_polysemous_training = false;
  // No more rows than centroids per sub-space.
  EXPECT_EQ(TrainIvfPqWithCodebooks(idx.get(), codebooks.data(), x.data(), 256).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(idx->is_trained);
  ASSERT_TRUE(TrainIvfPqWithCodebooks(idx.get(), codebooks.data(), x.data(), 10000).ok());
  std::vector<int64_t> lists = {0, 1, static_cast<int64_t>(kNlist)};
  std::vector<int32_t> codes(3 * kM, 1);
  EXPECT_EQ(AddIvfPqCodes(idx.get(), 3, lists.data(), codes.data()).code(), absl::StatusCode::kInvalidArgument);
  lists[2] = 2;
  codes[5] = 256;
  EXPECT_EQ(AddIvfPqCodes(idx.get(), 3, lists.data(), codes.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(idx->ntotal, 0);
  codes[5] = 255;
  EXPECT_TRUE(AddIvfPqCodes(idx.get(), 3, lists.data(), codes.data()).ok());
  EXPECT_EQ(idx->ntotal, 3);
}

}  // namespace
}  // namespace cairn::index
