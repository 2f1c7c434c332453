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
};

// format: "auto" (from the name: .fvecs, .ivecs, .bvecs, .jsonl/.ndjson,
// optionally .gz), "fvecs", "ivecs", "bvecs" or "jsonl".
absl::StatusOr<std::unique_ptr<RecordReader>> OpenReader(const std::string& path, const std::string& format);

}  // namespace cairn::cli

#endif  // CAIRN_CLI_READERS_H_
