#include "index/compact_lists.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <mutex>
#include <typeinfo>

#include <faiss/impl/FaissAssert.h>
#include <faiss/impl/io.h>
#include <faiss/invlists/InvertedListsIOHook.h>

namespace cairn::index {
namespace {

uint32_t FourCC(const char s[4]) {
  const auto* x = reinterpret_cast<const unsigned char*>(s);
  return x[0] | x[1] << 8 | x[2] << 16 | static_cast<uint32_t>(x[3]) << 24;
}

void Write(faiss::IOWriter* f, const void* p, size_t size, size_t n) {
  if (n == 0) return;
  FAISS_THROW_IF_NOT_MSG((*f)(p, size, n) == n, "write of inverted lists failed");
}

// Writes CompactInvertedLists as FAISS writes an ArrayInvertedLists (its
// "full" layout: every list's size, then each non-empty list's codes and
// 64-bit ids), so that any FAISS reads the file. The key is never written:
// FAISS finds writers by class name.
class CompactListsWriter final : public faiss::InvertedListsIOHook {
 public:
  CompactListsWriter() : InvertedListsIOHook("ilc4", typeid(CompactInvertedLists).name()) {}

  void write(const faiss::InvertedLists* ils, faiss::IOWriter* f) const override {
    const auto* c = dynamic_cast<const CompactInvertedLists*>(ils);
    FAISS_THROW_IF_NOT(c != nullptr);
    const uint32_t ilar = FourCC("ilar"), full = FourCC("full");
    Write(f, &ilar, sizeof ilar, 1);
    Write(f, &c->nlist, sizeof c->nlist, 1);
    Write(f, &c->code_size, sizeof c->code_size, 1);
    Write(f, &full, sizeof full, 1);
    std::vector<size_t> sizes(c->nlist);
    for (size_t l = 0; l < c->nlist; ++l) sizes[l] = c->list_size(l);
    const size_t count = sizes.size();
    Write(f, &count, sizeof count, 1);
    Write(f, sizes.data(), sizeof(size_t), count);
    std::vector<faiss::InvertedLists::idx_t> wide;
    for (size_t l = 0; l < c->nlist; ++l) {
      const size_t n = sizes[l];
      if (n == 0) continue;
      Write(f, c->get_codes(l), c->code_size, n);
      wide.assign(c->ids32(l), c->ids32(l) + n);
      Write(f, wide.data(), sizeof(wide[0]), n);
    }
  }

  faiss::InvertedLists* read(faiss::IOReader*, int) const override {
    FAISS_THROW_MSG("compact inverted lists are stored as ArrayInvertedLists");
  }
};

void RegisterWriter() {
  static std::once_flag once;
  std::call_once(once, [] { faiss::InvertedListsIOHook::add_callback(new CompactListsWriter()); });
}

uint32_t Narrow(faiss::InvertedLists::idx_t id) {
  FAISS_THROW_IF_NOT_FMT(id >= 0 && static_cast<uint64_t>(id) <= std::numeric_limits<uint32_t>::max(),
                         "id %lld does not fit compact inverted lists", static_cast<long long>(id));
  return static_cast<uint32_t>(id);
}

}  // namespace

CompactInvertedLists::CompactInvertedLists(size_t nlist, size_t code_size)
    : InvertedLists(nlist, code_size), codes_(nlist), ids_(nlist) {
  RegisterWriter();
}

std::unique_ptr<CompactInvertedLists> CompactInvertedLists::Compact(faiss::InvertedLists* from) {
  auto* array = dynamic_cast<faiss::ArrayInvertedLists*>(from);
  if (array == nullptr) return nullptr;
  for (const auto& ids : array->ids) {
    for (const auto id : ids) {
      if (id < 0 || static_cast<uint64_t>(id) > std::numeric_limits<uint32_t>::max()) return nullptr;
    }
  }
  auto out = std::make_unique<CompactInvertedLists>(array->nlist, array->code_size);
  for (size_t l = 0; l < array->nlist; ++l) {
    out->ids_[l].assign(array->ids[l].begin(), array->ids[l].end());
    std::vector<faiss::InvertedLists::idx_t>().swap(array->ids[l]);
    out->codes_[l].swap(array->codes[l]);
    out->codes_[l].shrink_to_fit();  // a list grown by add() has room to spare
  }
  return out;
}

const CompactInvertedLists::idx_t* CompactInvertedLists::get_ids(size_t list_no) const {
  const auto& ids = ids_[list_no];
  auto* wide = new idx_t[std::max<size_t>(ids.size(), 1)];
  std::copy(ids.begin(), ids.end(), wide);
  return wide;
}

void CompactInvertedLists::release_ids(size_t, const idx_t* ids) const { delete[] ids; }

CompactInvertedLists::idx_t CompactInvertedLists::get_single_id(size_t list_no, size_t offset) const {
  FAISS_THROW_IF_NOT(offset < ids_[list_no].size());
  return ids_[list_no][offset];
}

size_t CompactInvertedLists::add_entries(size_t list_no, size_t n_entry, const idx_t* ids, const uint8_t* code) {
  if (n_entry == 0) return 0;
  std::vector<uint32_t> narrow(n_entry);
  for (size_t i = 0; i < n_entry; ++i) narrow[i] = Narrow(ids[i]);  // throws before changing the list
  auto& list_ids = ids_[list_no];
  const size_t at = list_ids.size();
  list_ids.insert(list_ids.end(), narrow.begin(), narrow.end());
  codes_[list_no].insert(codes_[list_no].end(), code, code + n_entry * code_size);
  return at;
}

void CompactInvertedLists::update_entries(size_t list_no, size_t offset, size_t n_entry, const idx_t* ids,
                                          const uint8_t* code) {
  auto& list_ids = ids_[list_no];
  FAISS_THROW_IF_NOT(offset + n_entry <= list_ids.size());
  std::vector<uint32_t> narrow(n_entry);
  for (size_t i = 0; i < n_entry; ++i) narrow[i] = Narrow(ids[i]);
  std::copy(narrow.begin(), narrow.end(), list_ids.begin() + static_cast<ptrdiff_t>(offset));
  if (n_entry > 0) std::memcpy(codes_[list_no].data() + offset * code_size, code, n_entry * code_size);
}

void CompactInvertedLists::resize(size_t list_no, size_t new_size) {
  ids_[list_no].resize(new_size);
  codes_[list_no].resize(new_size * code_size);
}

uint64_t CompactInvertedLists::MemoryBytes() const {
  uint64_t bytes = nlist * (sizeof(codes_[0]) + sizeof(ids_[0]));
  for (size_t l = 0; l < nlist; ++l) bytes += codes_[l].capacity() + ids_[l].capacity() * sizeof(uint32_t);
  return bytes;
}

}  // namespace cairn::index
