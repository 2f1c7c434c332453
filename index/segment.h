// Segment: one FAISS index over a run of a shard's points, addressed by the
// shard's internal ids. The only code in Cairn (with index/*.cc) that includes
// FAISS; FAISS exceptions never leave this folder.
//
// A segment stores its points at positions 0..size()-1 in ascending internal
// id order. Deletes are tombstones (a bit per position) applied as a FAISS
// IDSelector; compaction builds a new segment without them.
//
// Vectors given to Add, Build and Search must already be prepared for the
// metric (PrepareVectors: normalized for cosine).
//
// With spec.device resolving to a GPU (index/gpu), IVF types train their
// coarse centroids and assign points on the GPU (IVF-PQ also its codebooks
// and codes, assembled into the FAISS index by ivf_parts.h), and sealed Flat and IVF-Flat
// segments are searched on a device copy made at their first search; files
// are the same either way, and any GPU failure falls back to the CPU.
//
// Thread-safety: all methods are thread-safe. Add and MarkDeleted take an
// exclusive lock; searches share it.
#ifndef CAIRN_INDEX_SEGMENT_H_
#define CAIRN_INDEX_SEGMENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cairn/options.h"
#include "index/id_column.h"
#include "index/vector_file.h"
#include "index/gpu/cuda_backend.h"

namespace faiss {
struct Index;
}

namespace cairn::index {

class Int8Codes;

inline constexpr int64_t kNoId = -1;

// Normalizes rows in place for kCosine; no-op otherwise. Zero vectors stay zero.
void PrepareVectors(Metric metric, float* x, size_t n, size_t dim);
// Distance or similarity of two prepared vectors by `metric` (the score).
float Score(Metric metric, const float* a, const float* b, size_t dim);
// True when `a` ranks before `b` for `metric` (smaller L2, larger similarity).
inline bool Better(Metric metric, float a, float b) {
  return metric == Metric::kL2 ? a < b : a > b;
}

// A set of allowed positions, one bit each (bit i of words[i / 64]).
// Positions past the end are not in the set: a set made before a growing
// segment took more points stays valid for it.
struct PositionSet {
  std::vector<uint64_t> words;
  size_t count = 0;  // positions set
  void Resize(size_t n) {
    words.assign((n + 63) / 64, 0);
    count = 0;
  }
  void Set(size_t i) {
    uint64_t& w = words[i >> 6];
    const uint64_t bit = uint64_t{1} << (i & 63);
    count += (w & bit) == 0;
    w |= bit;
  }
  bool Test(size_t i) const { return (i >> 6) < words.size() && ((words[i >> 6] >> (i & 63)) & 1); }
};

// Reads the prepared vectors of internal ids from where their points are
// stored: out gets ids.size() x dim floats, found[i] whether ids[i] was.
using RawRows = std::function<absl::Status(const std::vector<uint64_t>& ids, std::vector<float>* out,
                                           std::vector<bool>* found)>;

struct SegmentSearchParams {
  int k = 10;
  int ef = 0;      // 0: the spec's ef_search
  int nprobe = 0;  // 0: the spec's nprobe
  // When set, only these positions may be returned (tombstones still apply).
  const PositionSet* allowed = nullptr;
  // For an HNSW segment whose vectors are on disk (MoveVectorsToFile): the
  // rows its vector file cannot give (none attached, a damaged row), to
  // re-rank with. Without it such candidates keep their codes' approximate
  // scores.
  const RawRows* raw_rows = nullptr;
  // Search on the CPU even when the segment has a GPU copy (benchmarks).
  bool force_cpu = false;
  // How a GPU copy of an IVF-Flat segment scans its lists (benchmarks; the
  // results are the same).
  gpu::cuda::IvfScan gpu_ivf_scan = gpu::cuda::IvfScan::kAuto;
};

// Prepared float32 vectors, row after row, held as the bytes FAISS's flat
// storage keeps them in: a segment that stores full vectors in memory (Flat,
// HNSW) takes them from Build without copying them.
//
// Rows are appended to blocks mapped from the system, which data() joins
// into one array, unmapping each block once copied: a buffer never holds its
// rows twice (a vector that doubles holds its old and its new storage at
// once while it copies, up to twice the rows), only the rows and one block.
class VectorBuffer {
 public:
  void Append(absl::Span<const float> v);
  // The rows as one array (joined on the first call after an Append).
  float* data();
  size_t size() const { return floats_; }
  bool empty() const { return floats_ == 0; }

 private:
  friend class Segment;
  static constexpr size_t kMaxBlockBytes = 8 << 20;
  struct Unmap {
    size_t bytes = 0;
    void operator()(uint8_t* p) const;
  };
  struct Block {
    std::unique_ptr<uint8_t, Unmap> bytes;
    size_t size = 0;
  };
  std::vector<Block> blocks_;
  std::vector<uint8_t> bytes_;  // the joined rows
  size_t floats_ = 0;
};

class Segment {
 public:
  ~Segment();

  // An empty segment that takes writes: HNSW over full vectors for kHnsw and
  // kHnswSq, Flat for every other type (IVF types until their shard trains
  // one: BuildGrowing).
  static absl::StatusOr<std::unique_ptr<Segment>> CreateGrowing(uint32_t dim, Metric metric,
                                                                const IndexSpec& spec);
  // For IVF types: how many points a growing segment gathers (flat) before
  // its shard trains it into an index of the collection's type
  // (BuildGrowing); 0 for the other types.
  static size_t GrowingTrainPoints(const IndexSpec& spec);
  // A growing segment of spec.type (an IVF type) trained on a seeded sample
  // of the n vectors and holding them: it takes writes (Add) like one made by
  // CreateGrowing, and sealing it is a file write. InvalidArgument when n is
  // under GrowingTrainPoints(spec).
  static absl::StatusOr<std::unique_ptr<Segment>> BuildGrowing(uint32_t dim, Metric metric, const IndexSpec& spec,
                                                               const float* x, const uint64_t* ids, size_t n,
                                                               int threads);
  // A sealed segment of `spec.type` over n vectors with ascending `ids`,
  // trained on a seeded sample of them when the type needs training.
  static absl::StatusOr<std::unique_ptr<Segment>> Build(uint32_t dim, Metric metric,
                                                        const IndexSpec& spec, const float* x,
                                                        const uint64_t* ids, size_t n,
                                                        int threads);
  // Build over the n rows of `x`; a segment that keeps full vectors in
  // memory (Flat, HNSW) takes x's memory for them and leaves x empty, so the
  // build holds one copy of the vectors, not two. Other types leave x as it
  // is. An HNSW segment comes without its walk codes: MoveVectorsToFile (or
  // BuildSearchCodes) derives them.
  static absl::StatusOr<std::unique_ptr<Segment>> Build(uint32_t dim, Metric metric, const IndexSpec& spec,
                                                        VectorBuffer* x, const uint64_t* ids, size_t n,
                                                        int threads);
  // Whether a segment of `spec` over n points of `dim` dimensions is built
  // from its vectors a chunk at a time (BuildStreamed): the types that keep
  // codes, not floats: ivf_pq, ivf_sq8 and hnsw_sq from the size at which
  // they are trained, and hnsw walking on int8 codes (its graph is then
  // linked on the codes, its floats left in their file).
  static bool Streams(const IndexSpec& spec, uint32_t dim, size_t n);
  // How many rows such a build trains on, at most (a caller's sample; 0
  // for hnsw, which needs none).
  static size_t TrainingRows(const IndexSpec& spec);
  // Reads `count` vectors (prepared) from position `first` to out.
  using RowReader = std::function<absl::Status(size_t first, size_t count, float* out)>;
  // A sealed segment over n vectors read through `rows` a chunk at a time,
  // trained on the sample_n rows of `sample` (drawn by the caller from the
  // same vectors): it holds the sample, one chunk and the index, never the
  // n vectors. An hnsw segment reads the rows twice (its codes' grid, then
  // its codes), links its graph on the codes and holds no floats: the
  // caller attaches the vector file it re-ranks from. REQUIRES:
  // Streams(spec, dim, n), else InvalidArgument; an error of `rows` fails the
  // build.
  static absl::StatusOr<std::unique_ptr<Segment>> BuildStreamed(uint32_t dim, Metric metric, const IndexSpec& spec,
                                                                const float* sample, size_t sample_n,
                                                                const RowReader& rows, const uint64_t* ids,
                                                                size_t n, int threads);
  // DataLoss for a truncated or corrupt file, FailedPrecondition for a file of
  // another format version. Search defaults (ef_search, nprobe) come from
  // `defaults` when given (the collection's current spec), else from the file.
  static absl::StatusOr<std::unique_ptr<Segment>> Load(const std::string& path,
                                                       const IndexSpec* defaults = nullptr);
  // A growing segment (as CreateGrowing's or BuildGrowing's) read from a
  // file Save wrote of one: it takes writes after the points it holds.
  // DataLoss when the file is corrupt or holds another kind of segment than
  // those two make for (dim, metric, spec).
  static absl::StatusOr<std::unique_ptr<Segment>> LoadGrowing(const std::string& path, uint32_t dim,
                                                              Metric metric, const IndexSpec& spec);

  // What Save wrote: the first `count` points, up to internal id `max_id`.
  struct SavedExtent {
    size_t count = 0;
    uint64_t max_id = 0;
  };
  // Writes the segment (without tombstones) and fsyncs it. Adds to it wait
  // while it is read, not during the fsync.
  absl::Status Save(const std::string& path, SavedExtent* extent = nullptr) const;

  // Appends n vectors. REQUIRES: ids ascending and above every id present;
  // not frozen.
  absl::Status Add(const float* x, const uint64_t* ids, size_t n, int threads);
  // After Freeze, Add fails: the segment is being sealed or is sealed.
  void Freeze();
  // For a frozen HNSW segment (Build and Load do this themselves): derives the
  // int8 codes its searches walk the graph with (see index/hnsw_search.h),
  // unless the spec turns them off or the dimension is too large.
  void BuildSearchCodes();

  // Whether this is a frozen HNSW segment that walks on int8 codes and holds
  // its float32 vectors in memory and no vector file yet: what
  // MoveVectorsToFile takes.
  bool CanMoveVectorsToFile() const;
  // Writes the segment's float32 vectors to a vector file at `path`
  // (fsynced), attaches it and frees them: from then on the segment holds
  // its graph and int8 codes (d bytes a point, not 4d), walks on the codes
  // and re-ranks the walk's best with rows read from the file, so its
  // scores stay exact. Searches go on meanwhile when the segment already has
  // its codes; without them (Build from a VectorBuffer) the floats are freed
  // before the codes are derived from the file a chunk at a time, so the two
  // are never held at once, and the segment must not be searched before
  // this returns. FailedPrecondition unless CanMoveVectorsToFile().
  absl::Status MoveVectorsToFile(const std::string& path);

  // For an HNSW segment whose floats are in its vector file (MoveVectorsToFile,
  // or a segment loaded or built so): the bytes LoadVectorsFromFile would
  // bring into memory; 0 for any other segment, and once a load failed.
  uint64_t FileVectorBytes() const;
  // Reads the floats back from the vector file into memory, keeping the file
  // attached: searches then re-rank from memory (no reads) until
  // ReleaseVectors. Searches go on meanwhile, from the file. DataLoss when a
  // row is damaged (the segment stays as it was, and is not loaded again);
  // FailedPrecondition when FileVectorBytes() is 0.
  absl::Status LoadVectorsFromFile();
  // Frees floats that LoadVectorsFromFile brought in (their file stays
  // attached): the bytes freed, 0 when there were none.
  uint64_t ReleaseVectors();

  // k nearest of each query among positions not deleted (and allowed). Results
  // are internal ids, best first, padded with kNoId.
  absl::Status Search(const float* queries, size_t nq, const SegmentSearchParams& params,
                      float* scores, int64_t* ids, int threads) const;
  // Exact search over the stored full-precision vectors. Unimplemented for
  // segments that store vectors lossily (IVF-PQ, SQ8) or only in inverted
  // lists (IVF-Flat): callers fall back to raw vectors.
  absl::Status SearchExact(const float* queries, size_t nq, const SegmentSearchParams& params,
                           float* scores, int64_t* ids) const;
  // Whether the full-precision vectors are in memory (Flat; HNSW until
  // MoveVectorsToFile; a frozen IVF-Flat segment, in its lists).
  bool HasExactVectors() const;
  // Whether Search returns exact scores: Flat, IVF-Flat, and HNSW (with its
  // vectors in memory, or re-ranking from its vector file and raw_rows).
  // The others' callers re-rank their candidates from the raw vectors.
  bool ScoresAreExact() const;
  // Scores `query` against the listed internal ids (those present and not
  // deleted), appending (score, id) pairs; false (and nothing appended)
  // when the vectors are not in memory (!HasExactVectors()).
  bool ScoreIds(const float* query, absl::Span<const uint64_t> ids,
                std::vector<std::pair<float, uint64_t>>* out) const;

  // Copies the stored vectors (as prepared for the metric) of the ids in
  // `sorted_ids` that this segment holds, deleted or not, to out[i * dim]
  // and sets (*found)[i]; leaves the others. Copies nothing unless
  // HasExactVectors(). REQUIRES: sorted_ids ascending; found sized like it.
  void CopyVectors(absl::Span<const uint64_t> sorted_ids, float* out, std::vector<bool>* found) const;

  // Attaches the file holding this segment's full vectors in position order
  // (written by the shard when it seals a segment that stores them lossily):
  // ReadVectors reads from it from then on. REQUIRES: frozen; file->rows() ==
  // size().
  void AttachVectorFile(std::shared_ptr<const VectorFile> file);
  std::shared_ptr<const VectorFile> vector_file() const { return vector_file_.load(); }
  // Reads the vectors of the ids this segment holds (deleted or not; `ids` in
  // any order) from its vector file to out[i * dim], setting (*found)[i];
  // leaves the others, and reads nothing without a vector file. Rows found
  // damaged are left unset. Internal when the file cannot be read.
  // REQUIRES: found sized like ids.
  absl::Status ReadVectors(absl::Span<const uint64_t> ids, float* out, std::vector<bool>* found) const;

  // Marks `id` deleted; returns false when it is not here or already deleted.
  bool MarkDeleted(uint64_t id);
  bool IsLive(uint64_t id) const;
  std::optional<size_t> PositionOf(uint64_t id) const;
  // Sets `out` (resized to size()) to the positions of `sorted_ids` that are
  // in this segment. REQUIRES: sorted_ids ascending.
  void PositionsOf(absl::Span<const uint64_t> sorted_ids, PositionSet* out) const;
  // Ids at positions, in position order (a copy).
  std::vector<uint64_t> Ids() const;

  size_t size() const;
  size_t num_deleted() const;
  uint64_t min_id() const;  // 0 when empty
  uint64_t max_id() const;  // 0 when empty
  IndexType type() const { return type_; }
  Metric metric() const { return metric_; }
  uint32_t dim() const { return dim_; }
  bool frozen() const;
  uint64_t MemoryBytes() const;
  // True once searches of this segment run on a GPU (after its first search).
  bool OnGpu() const;
  // Device memory its GPU copy holds (0 without one).
  uint64_t GpuBytes() const;

 private:
  struct GpuCopy;  // device copies of the segment's vectors (segment.cc)
  // Build and BuildGrowing: a segment of `type` over the n vectors, trained
  // when the type needs it. With `adopt` (holding x's rows), a type whose
  // index stores the vectors as floats takes adopt's memory for them.
  static absl::StatusOr<std::unique_ptr<Segment>> BuildOf(IndexType type, uint32_t dim, Metric metric,
                                                          const IndexSpec& spec, const float* x,
                                                          const uint64_t* ids, size_t n, int threads,
                                                          VectorBuffer* adopt = nullptr);
  // Both Builds: a sealed segment (flat below the size a trained type
  // needs), with its search codes.
  // BuildStreamed for hnsw: the codes, then the graph linked on them.
  static absl::StatusOr<std::unique_ptr<Segment>> BuildHnswOnCodes(uint32_t dim, Metric metric, const IndexSpec& spec,
                                                                   const RowReader& rows, const uint64_t* ids,
                                                                   size_t n, int threads);
  static absl::StatusOr<std::unique_ptr<Segment>> BuildSealed(uint32_t dim, Metric metric, const IndexSpec& spec,
                                                              const float* x, const uint64_t* ids, size_t n,
                                                              int threads, VectorBuffer* adopt);
  Segment(uint32_t dim, Metric metric, IndexType type, const IndexSpec& spec,
          std::unique_ptr<faiss::Index> index);
  std::optional<size_t> PositionOfLocked(uint64_t id) const;
  // Reads a file Save wrote: a segment that is not frozen and has no search codes.
  static absl::StatusOr<std::unique_ptr<Segment>> Read(const std::string& path, const IndexSpec* defaults);
  const faiss::Index* FlatStorage() const;
  // HNSW with int8 walk codes (spec.hnsw_int8, dim <= Int8Codes::kMaxDim).
  bool WalksOnCodes() const;
  // Flat, or HNSW whose storage still holds the floats. REQUIRES: mu_ held.
  bool FloatsHeldLocked() const;
  // Maps a frozen IVF-Flat segment's positions to their rows in its lists
  // (list_rows_); leaves other segments, and lists that are not one row per
  // position, unmapped. REQUIRES: mu_ held exclusively, or the segment not
  // yet shared.
  void MapListRows();
  // The floats of every position, in one block (Flat, HNSW holding them),
  // else nullptr. REQUIRES: mu_ held.
  const float* FloatBaseLocked() const;
  // The row at position p: from `base` (FloatBaseLocked) when not null,
  // else from the lists. REQUIRES: mu_ held; base or list_rows_ set.
  const float* RowLocked(size_t p, const float* base) const {
    return base != nullptr ? base + p * dim_ : list_rows_[p];
  }
  // Scores the walk's candidates (positions) with their rows from `base`
  // (the floats in memory) when given, else from `file` and the rest from
  // `raw` (either may be null), and sorts them best first. REQUIRES: mu_
  // held.
  absl::Status Rerank(const float* base, const VectorFile* file, const RawRows* raw, const float* query,
                      std::vector<std::pair<float, int64_t>>* found) const;
  // One query against an IVF-Flat index over a flat quantizer: scores and
  // ids (k slots, pre-filled with the worst score and kNoId).
  void IvfFlatScan(const float* query, size_t nprobe, const PositionSet* allowed, size_t k, float* scores,
                   int64_t* ids) const;
  // FAISS labels (positions, -1 for none) to internal ids. REQUIRES: mu_ held.
  void LabelsToIds(const std::vector<int64_t>& labels, float worst, float* scores,
                   int64_t* ids) const;
  // The GPU copy searches use: made on first call for a frozen Flat or
  // IVF-Flat segment whose device resolves to a GPU; nullptr otherwise or when
  // making it failed (logged once).
  std::shared_ptr<const GpuCopy> GpuCopyForSearch() const;
  // After a failed GPU search: logs it and keeps this segment on the CPU.
  void DisableGpu(const absl::Status& why) const;
  int GpuNprobe(const SegmentSearchParams& params) const;  // REQUIRES: IVF type
  absl::Status SearchOnGpu(const GpuCopy& gpu, const float* queries, size_t nq,
                           const SegmentSearchParams& params, float* scores, int64_t* ids) const;

  const uint32_t dim_;
  const Metric metric_;
  const IndexType type_;
  const IndexSpec spec_;
  mutable std::shared_mutex mu_;
  std::unique_ptr<faiss::Index> index_;
  IdColumn ids_;   // position -> internal id, ascending
  std::vector<uint64_t> deleted_;  // bitset over positions
  std::shared_ptr<const Int8Codes> codes_;  // HNSW walk codes, once frozen
  std::atomic<std::shared_ptr<const VectorFile>> vector_file_;
  // An HNSW segment whose floats are in its vector file and not in memory
  // (MoveVectorsToFile, ReleaseVectors; LoadVectorsFromFile clears it).
  std::atomic<bool> vectors_on_disk_{false};
  std::atomic<bool> load_failed_{false};  // LoadVectorsFromFile met a damaged row
  // A frozen IVF-Flat segment's rows by position, in its lists (which hold
  // the exact vectors, and do not change once frozen): what CopyVectors and
  // ScoreIds read. Empty otherwise.
  std::vector<const float*> list_rows_;
  std::atomic<bool> list_rows_ready_{false};
  size_t num_deleted_ = 0;
  bool frozen_ = false;
  // The GPU copy, once made; searches read it without locks. gpu_mu_ is held
  // by the one search making it (the others search on the CPU meanwhile).
  mutable std::atomic<std::shared_ptr<const GpuCopy>> gpu_;
  mutable std::mutex gpu_mu_;
  // Set when this segment stays on the CPU for good (no GPU, or a GPU
  // failure other than memory); a copy that did not fit is retried after
  // gpu_retry_at_ (steady-clock nanoseconds).
  mutable std::atomic<bool> cpu_only_{false};
  mutable std::atomic<int64_t> gpu_retry_at_{0};
};

}  // namespace cairn::index

#endif  // CAIRN_INDEX_SEGMENT_H_
