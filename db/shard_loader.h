// Shard::Loader: the bulk-load path of a shard (see shard_loader.cc).
#ifndef CAIRN_DB_SHARD_LOADER_H_
#define CAIRN_DB_SHARD_LOADER_H_

#include <future>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "db/memory_budget.h"
#include "db/shard.h"

namespace cairn::db {

class Shard::Loader {
 public:
  Loader(Shard* shard, uint64_t segment_size)
      : shard_(shard),
        segment_size_(segment_size),
        streams_(index::Segment::Streams(shard->options_.index, shard->options_.dimension, SIZE_MAX)) {
    release_.Arm();
  }
  // Abandons the load when Finish did not succeed: nothing of it stays.
  ~Loader();
  absl::Status Start();
  // Adds a prepared point (validated by the caller). Ids may repeat.
  absl::Status Add(PreparedPoint p);
  // Writes everything; returns the number of distinct points loaded.
  absl::StatusOr<uint64_t> Finish();

 private:
  absl::Status StartSegment();
  // A streamed segment's build (in the background): from its vector file.
  absl::Status BuildStreamedSegment(const std::string& file, const std::string& vectors,
                                    const std::vector<uint64_t>& ids, const std::vector<float>& sample);
  absl::Status WaitSegment();

  // First, so destroyed last: the load's buffers are given back to the
  // system once freed.
  ReleaseFreeMemoryAtExit release_;
  Shard* shard_;
  const uint64_t segment_size_;
  std::string tmp_;
  uint64_t first_id_ = 0, next_id_ = 0;
  bool finished_ = false;
  std::unique_ptr<storage::SstWriter> vectors_, payloads_;
  std::vector<std::pair<std::string, uint64_t>> ids_;  // external key, internal id
  std::vector<std::string> index_keys_;
  std::vector<uint64_t> seg_ids_;
  index::VectorBuffer seg_vecs_;  // prepared when its segment starts
  // Types that keep codes, not floats (index::Segment::Streams): each
  // point's prepared vector goes to its segment's vector file as it arrives,
  // a seeded reservoir of them is kept to train on, and the segment is built
  // from the file a chunk at a time: a load holds no segment's floats.
  const bool streams_;
  std::string seg_file_;  // the segment's file name, from its first point on
  std::unique_ptr<index::VectorFile::Writer> seg_writer_;
  std::vector<float> sample_, prepared_;
  std::mt19937_64 sample_rng_;
  std::vector<std::string> made_;  // files written, removed if the load is abandoned
  std::future<absl::Status> pending_;
  std::vector<SealedRef> built_;  // written by the build thread, read after WaitSegment
};

}  // namespace cairn::db

#endif  // CAIRN_DB_SHARD_LOADER_H_
