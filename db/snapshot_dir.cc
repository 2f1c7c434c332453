#include "db/snapshot_dir.h"

#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cairn/database.h"
#include "cairn/status.h"
#include "db/config_codec.h"
#include "storage/file_util.h"

namespace cairn::db {

namespace fs = std::filesystem;

std::string ShardDirName(size_t i) { return absl::StrFormat("shard-%04d", i); }

absl::Status WriteFormatFile(const std::string& dir) {
  nlohmann::json j{{"format_version", kFormatVersion}};
  return storage::WriteFileAtomic((fs::path(dir) / "CAIRN").string(), j.dump() + "\n");
}

absl::Status WriteSnapshotDir(const std::string& target, const std::string& name, const CollectionConfig& config,
                              const std::function<absl::Status(const std::string& collection_dir)>& fill) {
  // "snap/" names the directory "snap": without this, the temp directory
  // would be "snap/.tmp", inside the target it is renamed to.
  fs::path target_path = fs::path(target).lexically_normal();
  if (!target_path.has_filename()) target_path = target_path.parent_path();
  const std::string target_dir = target_path.string();
  std::error_code ec;
  if (fs::exists(target_dir, ec)) {
    return absl::AlreadyExistsError(absl::StrCat("snapshot target ", target_dir, " already exists"));
  }
  const fs::path tmp = fs::path(target_dir + ".tmp");
  fs::remove_all(tmp, ec);
  const fs::path cdir = tmp / "collections" / name;
  fs::create_directories(cdir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", cdir.string(), ": ", ec.message()));
  absl::Status s = WriteFormatFile(tmp.string());
  if (s.ok()) s = storage::WriteFileSynced((cdir / "collection.json").string(), ConfigToJson(config));
  if (s.ok()) s = fill(cdir.string());
  if (s.ok()) {
    fs::rename(tmp, target_dir, ec);
    if (ec) s = absl::InternalError(absl::StrCat("rename to ", target_dir, ": ", ec.message()));
  }
  if (!s.ok()) {
    fs::remove_all(tmp, ec);
    return s;
  }
  return storage::SyncDir(target_path.parent_path().empty() ? "." : target_path.parent_path().string());
}

absl::StatusOr<SnapshotContents> ReadSnapshotDir(const std::string& dir) {
  std::error_code ec;
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(fs::path(dir) / "collections", ec)) {
    if (e.is_directory() && e.path().filename().string()[0] != '.') found.push_back(e.path());
  }
  if (ec || found.size() != 1 || !fs::exists(fs::path(dir) / "CAIRN")) {
    return absl::InvalidArgumentError(absl::StrCat(dir, " is not a snapshot of one collection"));
  }
  CAIRN_ASSIGN_OR_RETURN(std::string text, storage::ReadFile((found[0] / "collection.json").string()));
  auto config = ConfigFromJson(text);
  absl::Status valid = config.ok() ? ValidateConfig(*config) : config.status();
  if (!valid.ok()) return absl::DataLossError(absl::StrCat("snapshot config: ", valid.message()));
  return SnapshotContents{found[0], *std::move(config)};
}

absl::Status CopyTree(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::create_directories(to, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", to.string(), ": ", ec.message()));
  for (const auto& e : fs::directory_iterator(from, ec)) {
    fs::path target = to / e.path().filename();
    if (e.is_directory()) {
      CAIRN_RETURN_IF_ERROR(CopyTree(e.path(), target));
      continue;
    }
    std::string ext = e.path().extension().string();
    if (ext == ".sst" || ext == ".blob" || ext == ".cseg" || ext == ".vec") {
      CAIRN_RETURN_IF_ERROR(storage::LinkOrCopyFile(e.path().string(), target.string()));
    } else {
      CAIRN_ASSIGN_OR_RETURN(std::string data, storage::ReadFile(e.path().string()));
      CAIRN_RETURN_IF_ERROR(storage::WriteFileSynced(target.string(), data));
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("list ", from.string(), ": ", ec.message()));
  return storage::SyncDir(to.string());
}

}  // namespace cairn::db
