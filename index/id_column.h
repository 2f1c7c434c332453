// A segment's internal ids by position, ascending, in as little memory as
// they allow: none while they form one run (a bulk load's segment, or any
// segment of points written and never deleted), 4 bytes each otherwise (a
// 64-bit base per block of kBlock positions and a 32-bit offset per
// position), 8 when a block's ids span 2^32 or more (never for ids a shard
// assigns, kept for correctness).
//
// Thread-safety: none; the segment guards it.
#ifndef CAIRN_INDEX_ID_COLUMN_H_
#define CAIRN_INDEX_ID_COLUMN_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace cairn::index {

class IdColumn {
 public:
  static constexpr size_t kBlock = 256;

  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  uint64_t front() const { return (*this)[0]; }
  uint64_t back() const { return (*this)[n_ - 1]; }

  uint64_t operator[](size_t p) const {
    switch (mode_) {
      case Mode::kRun:
        return first_ + p;
      case Mode::kBlocks:
        return base_[p / kBlock] + low_[p];
      case Mode::kWide:
        break;
    }
    return wide_[p];
  }

  // The first position whose id is at least `id` (size() when none).
  size_t LowerBound(uint64_t id) const {
    if (n_ == 0 || id <= front()) return 0;
    switch (mode_) {
      case Mode::kRun:
        return static_cast<size_t>(std::min<uint64_t>(id - first_, n_));
      case Mode::kBlocks: {
        // The last block starting at or below id, then within it.
        const size_t b = static_cast<size_t>(std::upper_bound(base_.begin(), base_.end(), id) - base_.begin()) - 1;
        const size_t lo = b * kBlock, hi = std::min(n_, lo + kBlock);
        const uint64_t off = id - base_[b];
        if (off > std::numeric_limits<uint32_t>::max()) return hi;
        return static_cast<size_t>(std::lower_bound(low_.begin() + static_cast<ptrdiff_t>(lo),
                                                    low_.begin() + static_cast<ptrdiff_t>(hi),
                                                    static_cast<uint32_t>(off)) -
                                   low_.begin());
      }
      case Mode::kWide:
        break;
    }
    return static_cast<size_t>(std::lower_bound(wide_.begin(), wide_.end(), id) - wide_.begin());
  }

  // REQUIRES: ids ascend, and the first is above back().
  void Append(const uint64_t* ids, size_t n) {
    size_t i = 0;
    if (mode_ == Mode::kRun) {
      if (n_ == 0 && n > 0) first_ = ids[0];
      while (i < n && ids[i] == first_ + n_) ++i, ++n_;
      if (i == n) return;
      // The run ends here: write its ids as blocks.
      const uint64_t first = first_;
      const size_t had = n_;
      n_ = 0;
      mode_ = Mode::kBlocks;
      for (size_t p = 0; p < had; ++p) Push(first + p);
    }
    for (; i < n; ++i) Push(ids[i]);
  }

  void Assign(const uint64_t* ids, size_t n) {
    *this = IdColumn();
    Append(ids, n);
    ShrinkToFit();
  }

  std::vector<uint64_t> ToVector() const {
    std::vector<uint64_t> out(n_);
    for (size_t p = 0; p < n_; ++p) out[p] = (*this)[p];
    return out;
  }

  uint64_t MemoryBytes() const {
    return base_.capacity() * sizeof(uint64_t) + low_.capacity() * sizeof(uint32_t) +
           wide_.capacity() * sizeof(uint64_t);
  }

  // Gives back what the appends over-allocated (a segment that is done growing).
  void ShrinkToFit() {
    base_.shrink_to_fit();
    low_.shrink_to_fit();
    wide_.shrink_to_fit();
  }

 private:
  enum class Mode { kRun, kBlocks, kWide };

  void Push(uint64_t id) {
    if (mode_ == Mode::kBlocks) {
      if (n_ % kBlock == 0) base_.push_back(id);
      const uint64_t off = id - base_.back();
      if (off <= std::numeric_limits<uint32_t>::max()) {
        low_.push_back(static_cast<uint32_t>(off));
        ++n_;
        return;
      }
      wide_ = ToVector();
      base_ = {};
      low_ = {};
      mode_ = Mode::kWide;
    }
    wide_.push_back(id);
    ++n_;
  }

  Mode mode_ = Mode::kRun;
  size_t n_ = 0;
  uint64_t first_ = 0;           // kRun: ids first_ .. first_ + n_ - 1
  std::vector<uint64_t> base_;   // kBlocks: the id at each block's first position
  std::vector<uint32_t> low_;    // kBlocks: id - its block's base, per position
  std::vector<uint64_t> wide_;   // kWide: the ids
};

}  // namespace cairn::index

#endif  // CAIRN_INDEX_ID_COLUMN_H_
