// Readers for the vector file formats `cairn ingest` takes. Each yields
// records one at a time with the record number, and reports problems with the
// file name and record number. Gzip-compressed files are read transparently.
#ifndef CAIRN_CLI_READERS_H_
#define CAIRN_CLI_READERS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace cairn::cli {

struct InputRecord {
  uint64_t number = 0;          // 1-based record number in the file
  // Binary formats have no ids: num_id is the record's 0-based position and
  // positional is set (the caller may shift it, e.g. across several files).
  bool positional = false;
  std::optional<uint64_t> num_id;
  std::optional<std::string> str_id;  // JSONL string ids
  std::vector<float> vector;
  std::string payload_json;     // JSONL "payload" (an object), else empty
  std::string text;             // JSONL "text"
};

class RecordReader {
 public:
  virtual ~RecordReader() = default;
  // The next record, nullopt at the end, or an error naming the file and
  // record: InvalidArgument for a bad record that reading can go on after,
  // DataLoss when the file cannot be read further (truncated, corrupt).
  virtual absl::StatusOr<std::optional<InputRecord>> Next() = 0;
  // Bytes consumed so far (of the decompressed stream).
  virtual uint64_t bytes() const = 0;
  // How far through the file reading is, in [0, 1] (0 when unknown: stdin).
  virtual double fraction() const = 0;
};

struct ReaderOptions {
  // "auto" (from the name: .fvecs, .ivecs, .bvecs, .npy, .hdf5/.h5,
  // .jsonl/.ndjson, -idx3-ubyte, each optionally .gz; else from the first
  // bytes), "fvecs", "ivecs", "bvecs", "npy", "hdf5", "idx" or "jsonl".
  std::string format = "auto";
  // HDF5: the dataset to read (ann-benchmarks files hold "train" and "test").
  std::string hdf5_dataset = "train";
  // A JSON Lines file whose line i is the payload object (or null) of record
  // i of a binary vector file; it must have exactly one line per record.
  std::string payloads_path;
  // JSON Lines of query vectors: "id" may be absent, and a line may be a bare
  // array of numbers (the vector).
  bool vectors_only = false;
};

// Opens `path` ("-" is stdin, for the streaming formats).
absl::StatusOr<std::unique_ptr<RecordReader>> OpenReader(const std::string& path, const ReaderOptions& options);

// The format OpenReader would pick for `path` under options.format "auto".
absl::StatusOr<std::string> DetectFormat(const std::string& path);

}  // namespace cairn::cli

#endif  // CAIRN_CLI_READERS_H_
