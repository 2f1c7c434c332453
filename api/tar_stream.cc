#include "api/tar_stream.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace cairn::api {
namespace {

namespace fs = std::filesystem;

// A 512-byte ustar header for a regular file.
std::string Header(const std::string& path, uint64_t size) {
  std::string h(512, '\0');
  std::string name = path, prefix;
  if (name.size() > 100) {  // split at a '/' into prefix (<=155) and name (<=100)
    size_t cut = path.rfind('/', 155);
    prefix = path.substr(0, cut);
    name = path.substr(cut + 1);
  }
  auto put = [&h](size_t off, const std::string& v) { std::memcpy(&h[off], v.data(), v.size()); };
  put(0, name);
  put(100, "0000644");
  put(108, "0000000");
  put(116, "0000000");
  put(124, absl::StrFormat("%011o", size));
  put(136, absl::StrFormat("%011o", 0));
  std::memset(&h[148], ' ', 8);  // checksum is computed with spaces here
  h[156] = '0';
  put(257, "ustar");
  put(263, "00");
  put(345, prefix);
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  put(148, absl::StrFormat("%06o", sum));
  h[154] = '\0';
  h[155] = ' ';
  return h;
}

}  // namespace

absl::StatusOr<TarStream> TarStream::Open(const std::string& root) {
  TarStream t;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (ec) break;
    if (!it->is_regular_file()) continue;
    std::string rel = fs::relative(it->path(), root).string();
    size_t cut = rel.size() > 100 ? rel.rfind('/', 155) : 0;
    if (rel.size() > 255 || (rel.size() > 100 && (cut == std::string::npos || rel.size() - cut - 1 > 100))) {
      return absl::InvalidArgumentError(absl::StrCat("path too long for a tar archive: ", rel));
    }
    t.entries_.push_back({rel, it->path().string(), static_cast<uint64_t>(it->file_size())});
  }
  if (ec) return absl::InternalError(absl::StrCat("list ", root, ": ", ec.message()));
  std::sort(t.entries_.begin(), t.entries_.end(), [](const Entry& a, const Entry& b) { return a.path < b.path; });
  return t;
}

absl::StatusOr<bool> TarStream::Next(size_t max_bytes, std::string* out) {
  if (finished_) return false;
  const size_t start = out->size();
  while (out->size() - start < max_bytes) {
    if (index_ == entries_.size()) {
      out->append(1024, '\0');  // two zero blocks end the archive
      finished_ = true;
      return true;
    }
    Entry& e = entries_[index_];
    if (!header_done_) {
      out->append(Header(e.path, e.size));
      header_done_ = true;
      written_ = 0;
      in_ = std::ifstream(e.file, std::ios::binary);
      if (!in_) return absl::InternalError(absl::StrCat("open ", e.file));
    }
    if (written_ < e.size) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(e.size - written_, max_bytes));
      size_t off = out->size();
      out->resize(off + want);
      in_.read(&(*out)[off], static_cast<std::streamsize>(want));
      if (static_cast<size_t>(in_.gcount()) != want) {
        return absl::InternalError(absl::StrCat("read ", e.file, ": file changed while archiving"));
      }
      written_ += want;
      continue;
    }
    out->append((512 - e.size % 512) % 512, '\0');  // pad the data to a block
    in_.close();
    header_done_ = false;
    ++index_;
  }
  return true;
}

}  // namespace cairn::api
