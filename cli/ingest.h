// `cairn ingest`: reads vector files and loads them into a collection, either
// online (to a running cairnd, over the client-streaming upsert) or offline
// (straight into a data directory no server holds).
//
// The input is a sequence of files read in order. Records of binary formats
// (fvecs, npy, HDF5, ...) get positional ids: start_id plus the record's
// position in the whole sequence. An id repeated in the input is written again
// and the last one wins, online and offline alike.
#ifndef CAIRN_CLI_INGEST_H_
#define CAIRN_CLI_INGEST_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cairn/options.h"
#include "cli/readers.h"

namespace cairn::cli {

// Where the input stands: the file, and how many items (records, good or bad)
// of it were consumed. Resuming re-reads the file up to here and skips.
struct InputPosition {
  size_t file = 0;
  uint64_t items = 0;
  uint64_t id_base = 0;  // positional id of the file's first record
};

struct SourceOptions {
  std::vector<std::string> files;
  std::vector<std::string> payload_files;  // empty, or one per file
  ReaderOptions reader;
  uint64_t start_id = 0;
  uint32_t dimension = 0;  // every record must have it
  bool skip_bad = false;
};

// The input files as one stream of records with their final ids, checked for
// dimension and finite values. A bad record either stops the stream (Next
// returns its error) or, with skip_bad, is counted and skipped.
class InputSource {
 public:
  explicit InputSource(SourceOptions options);
  // Starts at `from` (a checkpoint), skipping what came before it.
  absl::Status Seek(const InputPosition& from);
  absl::StatusOr<std::optional<InputRecord>> Next();
  // Position after the last record Next returned (or skipped).
  const InputPosition& position() const { return pos_; }
  // Fraction of the input bytes consumed, in [0, 1]; decompressed bytes read.
  double fraction() const;
  uint64_t bytes() const { return bytes_done_ + (reader_ ? reader_->bytes() : 0); }
  uint64_t skipped() const { return skipped_; }
  const std::vector<std::string>& skipped_sample() const { return sample_; }
  void AddSkipped(uint64_t n) { skipped_ += n; }

 private:
  absl::Status OpenCurrent();
  SourceOptions o_;
  std::vector<uint64_t> sizes_;
  uint64_t total_size_ = 0, done_size_ = 0, bytes_done_ = 0;
  InputPosition pos_;
  std::unique_ptr<RecordReader> reader_;
  uint64_t skipped_ = 0;
  std::vector<std::string> sample_;
};

// Progress on stderr: a bar that updates in place on a terminal, a plain line
// every few seconds otherwise, nothing with quiet.
class Progress {
 public:
  Progress(bool quiet, bool tty) : quiet_(quiet), tty_(tty) {}
  void Update(uint64_t records, uint64_t bytes, double fraction, bool final);

 private:
  bool quiet_, tty_;
  double start_ = Now(), last_ = start_;
  static double Now();
};

struct IngestStats {
  uint64_t records = 0;         // records read and sent this run
  uint64_t points_written = 0;  // acknowledged by the server (or written offline)
  uint64_t bytes = 0;
  uint64_t retries = 0;
  uint64_t skipped = 0;
  std::vector<std::string> skipped_sample;
  double seconds = 0;
  double finish_seconds = 0;     // offline: the final step (last segments, files ingested)
  bool resumed = false;
  uint64_t resumed_records = 0;  // records already loaded before this run
  bool interrupted = false;
  std::string error;             // empty when everything was written
  enum class ErrorKind { kNone, kInput, kServer } error_kind = ErrorKind::kNone;
};

struct OnlineOptions {
  std::string collection;
  size_t batch = 1000;             // points per message
  size_t batches_per_request = 8;  // messages per UpsertStream call, acknowledged together
  int inflight = 4;                // requests in flight
  int max_retries = 10;            // per request, with exponential backoff
  std::string checkpoint;          // checkpoint file
  bool resume = false;
  bool json = false;
};

struct OfflineOptions {
  std::string data_dir;
  std::string collection;
  // Settings to create the collection with when it does not exist.
  std::optional<CollectionConfig> create;
  uint64_t segment_size = 0;  // 0: the collection's seal_threshold
  bool json = false;
};

// Loads the input straight into a data directory that no server holds,
// through the engine's bulk load (Collection::BeginBulkLoad) into an empty
// collection. All or nothing: interrupted or failed, it leaves the collection
// empty. stats.error says why it stopped; bad settings are an error status.
absl::StatusOr<IngestStats> IngestOffline(SourceOptions source, const OfflineOptions& options);

// Set by SIGINT/SIGTERM: stop reading, finish what is in flight, keep the
// checkpoint.
extern std::atomic<bool> g_interrupted;

// "UNAVAILABLE", "PERMISSION_DENIED", ...
std::string GrpcCodeName(grpc::StatusCode code);

// ./.cairn-ingest-COLLECTION-HASH.checkpoint, HASH of the target and the
// files' absolute paths.
std::string DefaultCheckpointPath(const std::string& target, const std::string& collection,
                                  const std::vector<std::string>& files);

// Sends the input to cairnd. `prepare` adds credentials to each call.
// Returns stats; stats.error says why it stopped early (the checkpoint then
// records how far it got, for --resume). A bad checkpoint is an error status.
absl::StatusOr<IngestStats> IngestOnline(std::shared_ptr<grpc::Channel> channel,
                                         std::function<void(grpc::ClientContext*)> prepare, SourceOptions source,
                                         const OnlineOptions& options);

}  // namespace cairn::cli

#endif  // CAIRN_CLI_INGEST_H_
