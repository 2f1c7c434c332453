#include "api/auth.h"

#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace cairn::api {
namespace {

constexpr size_t kMinKeyLength = 16;

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Length is not secret (keys have their own lengths); contents are.
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kRead: return "read";
    case Role::kWrite: return "write";
    case Role::kAdmin: return "admin";
  }
  return "?";
}

absl::StatusOr<ApiKeys> ApiKeys::ParseFile(std::string_view text) { return Parse(text, '\n', ' '); }
absl::StatusOr<ApiKeys> ApiKeys::ParseList(std::string_view text) { return Parse(text, ',', ':'); }

absl::StatusOr<ApiKeys> ApiKeys::Parse(std::string_view text, char record_sep, char field_sep) {
  ApiKeys keys;
  std::set<std::string> seen;
  int line_no = 0;
  for (absl::string_view raw : absl::StrSplit(absl::string_view(text.data(), text.size()), record_sep)) {
    ++line_no;
    std::string line(absl::StripAsciiWhitespace(raw));
    if (line.empty() || line[0] == '#') continue;
    for (char& c : line) {
      if (c == '\t') c = ' ';
    }
    size_t sep = line.find(field_sep);
    if (sep == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("api keys entry ", line_no, ": expected ROLE", std::string(1, field_sep), "KEY"));
    }
    std::string role_name(absl::StripAsciiWhitespace(line.substr(0, sep)));
    std::string key(absl::StripAsciiWhitespace(line.substr(sep + 1)));
    Role role;
    if (role_name == "read") role = Role::kRead;
    else if (role_name == "write") role = Role::kWrite;
    else if (role_name == "admin") role = Role::kAdmin;
    else {
      return absl::InvalidArgumentError(absl::StrCat("api keys entry ", line_no, ": unknown role \"", role_name,
                                                     "\" (read, write, admin)"));
    }
    if (key.size() < kMinKeyLength || key.find_first_of(" \t") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("api keys entry ", line_no, ": keys are at least ",
                                                     kMinKeyLength, " characters without spaces"));
    }
    if (!seen.insert(key).second) {
      return absl::InvalidArgumentError(absl::StrCat("api keys entry ", line_no, ": key listed twice"));
    }
    keys.keys_.push_back({role, std::move(key)});
  }
  return keys;
}

std::optional<Role> ApiKeys::Lookup(std::string_view key) const {
  std::optional<Role> found;
  for (const auto& e : keys_) {
    if (ConstantTimeEquals(e.key, key)) found = e.role;  // no early exit
  }
  return found;
}

}  // namespace cairn::api
