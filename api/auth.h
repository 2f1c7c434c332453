// API keys with roles. Keys come from a file or an environment variable (a
// Kubernetes Secret mounted either way); clients send one per call as
// `authorization: Bearer KEY` (or `x-api-key: KEY`) metadata.
//
// Roles, each allowing what the previous does:
//   read   collections Get/List, points Get/Count/Scroll, Search, server Info
//   write  points Upsert/Delete/SetPayload
//   admin  collections Create/Delete
//
// Format, one key per line (blank lines and # comments ignored):
//   admin  0123456789abcdef0123
//   read   fedcba9876543210fedc
// or, in CAIRN_API_KEYS, the same pairs separated by commas: "read:KEY,admin:KEY".
#ifndef CAIRN_API_AUTH_H_
#define CAIRN_API_AUTH_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace cairn::api {

enum class Role { kRead = 1, kWrite = 2, kAdmin = 3 };
const char* RoleName(Role role);

class ApiKeys {
 public:
  // InvalidArgument naming the line for an unknown role, a key shorter than
  // 16 characters, or a key listed twice.
  static absl::StatusOr<ApiKeys> ParseFile(std::string_view text);
  static absl::StatusOr<ApiKeys> ParseList(std::string_view text);

  // The key's role; compares against every key in constant time per key, so
  // timing reveals nothing of which key nearly matched.
  std::optional<Role> Lookup(std::string_view key) const;
  size_t size() const { return keys_.size(); }

 private:
  struct Entry {
    Role role;
    std::string key;
  };
  static absl::StatusOr<ApiKeys> Parse(std::string_view text, char record_sep, char field_sep);
  std::vector<Entry> keys_;
};

}  // namespace cairn::api

#endif  // CAIRN_API_AUTH_H_
