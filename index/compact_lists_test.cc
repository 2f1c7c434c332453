#include "index/compact_lists.h"

#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/clone_index.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>

#include "gtest/gtest.h"

namespace cairn::index {
namespace {

using idx_t = faiss::InvertedLists::idx_t;

std::vector<float> RandomRows(size_t n, size_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> x(n * d);
  for (auto& v : x) v = g(rng);
  return x;
}

// An IVF-PQ index over n random rows, with FAISS's own lists.
std::unique_ptr<faiss::IndexIVFPQ> MakeIvfPq(const std::vector<float>& x, size_t d) {
  auto* quantizer = new faiss::IndexFlatL2(static_cast<int>(d));
  auto idx = std::make_unique<faiss::IndexIVFPQ>(quantizer, d, 16, 8, 8);
  idx->own_fields = true;
  const auto n = static_cast<idx_t>(x.size() / d);
  idx->train(n, x.data());
  idx->add(n, x.data());
  return idx;
}

void ExpectSameLists(const faiss::InvertedLists& a, const faiss::InvertedLists& b) {
  ASSERT_EQ(a.nlist, b.nlist);
  ASSERT_EQ(a.code_size, b.code_size);
  for (size_t l = 0; l < a.nlist; ++l) {
    const size_t n = a.list_size(l);
    ASSERT_EQ(n, b.list_size(l)) << "list " << l;
    faiss::InvertedLists::ScopedIds ia(&a, l), ib(&b, l);
    faiss::InvertedLists::ScopedCodes ca(&a, l), cb(&b, l);
    for (size_t j = 0; j < n; ++j) ASSERT_EQ(ia[j], ib[j]) << "list " << l << " entry " << j;
    for (size_t j = 0; j < n * a.code_size; ++j) ASSERT_EQ(ca.get()[j], cb.get()[j]) << "list " << l;
  }
}

TEST(CompactListsTest, HoldWhatFaissListsHeldAndSearchAlike) {
  constexpr size_t kDim = 32, kRows = 4000;
  const auto x = RandomRows(kRows, kDim, 1);
  auto plain = MakeIvfPq(x, kDim);
  std::unique_ptr<faiss::IndexIVFPQ> compacted(static_cast<faiss::IndexIVFPQ*>(faiss::clone_index(plain.get())));
  auto compact = CompactInvertedLists::Compact(compacted->invlists);
  ASSERT_NE(compact, nullptr);
  // The source lists gave up their entries as they moved over.
  for (size_t l = 0; l < compacted->nlist; ++l) EXPECT_EQ(compacted->invlists->list_size(l), 0u);
  ExpectSameLists(*plain->invlists, *compact);
  compacted->replace_invlists(compact.release(), true);

  // 4 bytes an id, not 8.
  const auto* lists = dynamic_cast<const CompactInvertedLists*>(compacted->invlists);
  ASSERT_NE(lists, nullptr);
  const uint64_t payload = kRows * (compacted->code_size + sizeof(uint32_t));
  EXPECT_GE(lists->MemoryBytes(), payload);
  EXPECT_LT(lists->MemoryBytes(), payload + 64 * compacted->nlist);

  const auto q = RandomRows(50, kDim, 2);
  constexpr int kK = 10;
  std::vector<float> da(50 * kK), db(50 * kK);
  std::vector<idx_t> la(50 * kK), lb(50 * kK);
  plain->nprobe = compacted->nprobe = 4;
  plain->search(50, q.data(), kK, da.data(), la.data());
  compacted->search(50, q.data(), kK, db.data(), lb.data());
  EXPECT_EQ(la, lb);
  EXPECT_EQ(da, db);
  EXPECT_EQ(compacted->invlists->get_single_id(3, 0), plain->invlists->get_single_id(3, 0));
}

TEST(CompactListsTest, AreWrittenAsFaissArrayListsThatAnyFaissReads) {
  constexpr size_t kDim = 16;
  const auto x = RandomRows(3000, kDim, 3);
  auto plain = MakeIvfPq(x, kDim);
  std::unique_ptr<faiss::IndexIVFPQ> compacted(static_cast<faiss::IndexIVFPQ*>(faiss::clone_index(plain.get())));
  compacted->replace_invlists(CompactInvertedLists::Compact(compacted->invlists).release(), true);

  faiss::VectorIOWriter w_plain, w_compact;
  faiss::write_index(plain.get(), &w_plain);
  faiss::write_index(compacted.get(), &w_compact);
  // Byte for byte FAISS's own file, whatever the lists' sparsity.
  EXPECT_EQ(w_plain.data.size(), w_compact.data.size());
  faiss::VectorIOReader r;
  r.data = w_compact.data;
  std::unique_ptr<faiss::Index> back(faiss::read_index(&r));
  auto* ivf = dynamic_cast<faiss::IndexIVFPQ*>(back.get());
  ASSERT_NE(ivf, nullptr);
  ASSERT_NE(dynamic_cast<faiss::ArrayInvertedLists*>(ivf->invlists), nullptr);
  ExpectSameLists(*plain->invlists, *ivf->invlists);
}

TEST(CompactListsTest, SparseListsAreWrittenAndReadBack) {
  // Fewer than half the lists used: FAISS itself would write them "sprs".
  faiss::IndexIVFFlat idx(new faiss::IndexFlatL2(1), 1, 64);  // 4-byte codes
  idx.own_fields = true;
  std::vector<float> centroids(64);
  for (size_t c = 0; c < centroids.size(); ++c) centroids[c] = static_cast<float>(c);
  idx.quantizer->add(64, centroids.data());
  idx.is_trained = true;
  idx.replace_invlists(new CompactInvertedLists(64, 4), true);
  const std::vector<idx_t> ids = {7, 9};
  const std::vector<uint8_t> codes = {1, 2, 3, 4, 5, 6, 7, 8};
  idx.invlists->add_entries(5, 2, ids.data(), codes.data());
  idx.ntotal = 2;
  faiss::VectorIOWriter w;
  faiss::write_index(&idx, &w);
  faiss::VectorIOReader r;
  r.data = w.data;
  std::unique_ptr<faiss::Index> back(faiss::read_index(&r));
  ExpectSameLists(*idx.invlists, *static_cast<faiss::IndexIVF*>(back.get())->invlists);
}

TEST(CompactListsTest, AddUpdateAndResizeKeepIdsAndCodesTogether) {
  CompactInvertedLists lists(4, 2);
  const std::vector<idx_t> ids = {10, 11, 12};
  const std::vector<uint8_t> codes = {1, 1, 2, 2, 3, 3};
  EXPECT_EQ(lists.add_entries(2, 3, ids.data(), codes.data()), 0u);
  EXPECT_EQ(lists.add_entries(2, 1, ids.data(), codes.data()), 3u);
  ASSERT_EQ(lists.list_size(2), 4u);
  EXPECT_EQ(lists.get_single_id(2, 3), 10);
  const idx_t changed = 99;
  const uint8_t code[2] = {9, 9};
  lists.update_entries(2, 1, 1, &changed, code);
  EXPECT_EQ(lists.get_single_id(2, 1), 99);
  EXPECT_EQ(lists.get_codes(2)[2], 9);
  lists.resize(2, 2);
  ASSERT_EQ(lists.list_size(2), 2u);
  faiss::InvertedLists::ScopedIds wide(&lists, 2);
  EXPECT_EQ(wide[0], 10);
  EXPECT_EQ(wide[1], 99);
  EXPECT_EQ(lists.list_size(0), 0u);
}

TEST(CompactListsTest, IdsThatDoNotFitAreRefusedAndChangeNothing) {
  CompactInvertedLists lists(2, 1);
  const std::vector<idx_t> ids = {1, idx_t{1} << 32};
  const std::vector<uint8_t> codes = {1, 2};
  EXPECT_THROW(lists.add_entries(0, 2, ids.data(), codes.data()), faiss::FaissException);
  EXPECT_EQ(lists.list_size(0), 0u);
  const idx_t negative = -1;
  lists.add_entries(1, 1, ids.data(), codes.data());
  EXPECT_THROW(lists.update_entries(1, 0, 1, &negative, codes.data()), faiss::FaissException);
  EXPECT_EQ(lists.get_single_id(1, 0), 1);

  // FAISS lists holding such an id are left as they are.
  faiss::ArrayInvertedLists array(2, 1);
  array.add_entries(0, 1, ids.data(), codes.data());
  array.add_entries(1, 1, ids.data() + 1, codes.data() + 1);
  EXPECT_EQ(CompactInvertedLists::Compact(&array), nullptr);
  EXPECT_EQ(array.list_size(0), 1u);
  EXPECT_EQ(array.list_size(1), 1u);
  EXPECT_EQ(array.get_single_id(1, 0), idx_t{1} << 32);
}

}  // namespace
}  // namespace cairn::index
