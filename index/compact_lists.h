// IVF inverted lists whose ids take 4 bytes, not FAISS's 8.
//
// A segment's IVF lists hold, for each vector, its code and its position in
// the segment (what FAISS's add() gives it: 0, 1, 2...). FAISS's
// ArrayInvertedLists keeps each position as a 64-bit id: at 32-byte PQ codes
// that is a fifth of the index. A segment has fewer than 2^32 positions, so
// CompactInvertedLists keeps them as uint32_t and widens a list's ids when
// FAISS asks for them (get_ids, released by release_ids: one list at a time
// while a search scans it).
//
// It is written as FAISS writes an ArrayInvertedLists ("ilar", 64-bit ids):
// a saved index is an ordinary FAISS file, and one that holds ArrayInvertedLists
// once read; Compact() turns it back, list by list, so that reading never holds
// both forms of more than one list.
//
// Thread-safety: as FAISS's lists: concurrent readers, one writer.
#ifndef CAIRN_INDEX_COMPACT_LISTS_H_
#define CAIRN_INDEX_COMPACT_LISTS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <faiss/invlists/InvertedLists.h>

namespace cairn::index {

class CompactInvertedLists final : public faiss::InvertedLists {
 public:
  using idx_t = faiss::InvertedLists::idx_t;

  CompactInvertedLists(size_t nlist, size_t code_size);

  // The lists of `from` (an ArrayInvertedLists, emptied list by list as its
  // codes move over), or null when they are of another kind or an id is not
  // a position below 2^32 (the caller then keeps `from`).
  static std::unique_ptr<CompactInvertedLists> Compact(faiss::InvertedLists* from);

  size_t list_size(size_t list_no) const override { return ids_[list_no].size(); }
  const uint8_t* get_codes(size_t list_no) const override { return codes_[list_no].data(); }
  // A widened copy, freed by release_ids.
  const idx_t* get_ids(size_t list_no) const override;
  void release_ids(size_t list_no, const idx_t* ids) const override;
  idx_t get_single_id(size_t list_no, size_t offset) const override;
  size_t add_entries(size_t list_no, size_t n_entry, const idx_t* ids, const uint8_t* code) override;
  void update_entries(size_t list_no, size_t offset, size_t n_entry, const idx_t* ids,
                      const uint8_t* code) override;
  void resize(size_t list_no, size_t new_size) override;

  // The 32-bit ids of a list (for FAISS-free readers).
  const uint32_t* ids32(size_t list_no) const { return ids_[list_no].data(); }
  // Bytes the lists hold: codes, ids and the per-list vectors.
  uint64_t MemoryBytes() const;

 private:
  std::vector<std::vector<uint8_t>> codes_;
  std::vector<std::vector<uint32_t>> ids_;
};

}  // namespace cairn::index

#endif  // CAIRN_INDEX_COMPACT_LISTS_H_
