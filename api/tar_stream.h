// TarStream: a directory tree as an uncompressed POSIX ustar archive,
// produced in chunks (for streaming a snapshot without staging the archive).
#ifndef CAIRN_API_TAR_STREAM_H_
#define CAIRN_API_TAR_STREAM_H_

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace cairn::api {

class TarStream {
 public:
  // Lists the regular files under `root` (paths in the archive are relative
  // to it). InvalidArgument for a path too long for ustar (255 bytes).
  static absl::StatusOr<TarStream> Open(const std::string& root);

  // Appends up to about `max_bytes` of archive to `out`; false once the
  // archive is complete. Errors reading a file are returned.
  absl::StatusOr<bool> Next(size_t max_bytes, std::string* out);

 private:
  struct Entry {
    std::string path;  // in the archive
    std::string file;  // on disk
    uint64_t size;
  };
  std::vector<Entry> entries_;
  size_t index_ = 0;          // current entry
  uint64_t written_ = 0;      // bytes of the current entry's data written
  bool header_done_ = false;  // current entry's header written
  bool finished_ = false;
  std::ifstream in_;
};

}  // namespace cairn::api

#endif  // CAIRN_API_TAR_STREAM_H_
