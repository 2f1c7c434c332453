#include "db/payload_index.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "db/key_codec.h"

namespace cairn::db {
namespace {

// Order-preserving encodings of numbers (so the column family sorts by value).
std::string EncodeInt(int64_t v) { return InternalKey(static_cast<uint64_t>(v) ^ (1ull << 63)); }
int64_t DecodeInt(std::string_view s) {
  return static_cast<int64_t>(DecodeInternalKey(s) ^ (1ull << 63));
}
std::string EncodeDouble(double d) {
  uint64_t u = std::bit_cast<uint64_t>(d);
  u = (u & (1ull << 63)) ? ~u : (u | (1ull << 63));
  return InternalKey(u);
}
double DecodeDouble(std::string_view s) {
  uint64_t u = DecodeInternalKey(s);
  u = (u & (1ull << 63)) ? (u & ~(1ull << 63)) : ~u;
  return std::bit_cast<double>(u);
}

constexpr char kTagKeyword = 'k', kTagInt = 'i', kTagFloat = 'f', kTagBool = 'b',
               kTagPresent = 'p';

bool IsNumber(const Json& j) { return j.is_number(); }

// The int64 equal in value to `d`, if there is one. (Converting the other
// way rounds above 2^53: 2^53 + 1 would equal 2^53.)
std::optional<int64_t> ExactInt(double d) {
  if (!(d >= -0x1p63 && d < 0x1p63) || std::floor(d) != d) return std::nullopt;
  return static_cast<int64_t>(d);
}

// Compares a JSON scalar with a condition value: numbers by exact value,
// strings and bools by equality.
bool ValueEquals(const Json& j, const FieldValue& v) {
  if (const auto* s = std::get_if<std::string>(&v)) return j.is_string() && j.get_ref<const std::string&>() == *s;
  if (const auto* b = std::get_if<bool>(&v)) return j.is_boolean() && j.get<bool>() == *b;
  if (!IsNumber(j)) return false;
  if (j.is_number_integer()) {
    if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      const double* d = std::get_if<double>(&v);
      return d != nullptr && *d >= 0x1p63 && *d < 0x1p64 && std::floor(*d) == *d &&
             static_cast<uint64_t>(*d) == j.get<uint64_t>();
    }
    const int64_t x = j.get<int64_t>();
    if (const auto* i = std::get_if<int64_t>(&v)) return x == *i;
    return ExactInt(std::get<double>(v)) == x;
  }
  const double x = j.get<double>();
  if (const auto* i = std::get_if<int64_t>(&v)) return ExactInt(x) == *i;
  return x == std::get<double>(v);
}

bool InRange(double x, const Condition& c) {
  if (c.gt && !(x > *c.gt)) return false;
  if (c.gte && !(x >= *c.gte)) return false;
  if (c.lt && !(x < *c.lt)) return false;
  if (c.lte && !(x <= *c.lte)) return false;
  return true;
}

}  // namespace

namespace {

// Values at parts[i..] below `cur`: at each object, the next part alone and
// each run of parts joined by '.' (a key that itself holds dots).
void CollectValues(const Json& cur, const std::vector<absl::string_view>& parts, size_t i,
                   std::vector<const Json*>* out) {
  if (i == parts.size()) {
    if (cur.is_array()) {
      for (const auto& e : cur) {
        if (!e.is_null()) out->push_back(&e);
      }
    } else if (!cur.is_null()) {
      out->push_back(&cur);
    }
    return;
  }
  if (!cur.is_object()) return;
  std::string key;
  for (size_t j = i; j < parts.size(); ++j) {
    if (j > i) key += '.';
    key.append(parts[j].data(), parts[j].size());
    if (auto it = cur.find(key); it != cur.end()) CollectValues(*it, parts, j + 1, out);
  }
}

}  // namespace

std::vector<const Json*> FieldValues(const Json& payload, const std::string& path) {
  std::vector<const Json*> out;
  const std::vector<absl::string_view> parts = absl::StrSplit(path, '.');
  CollectValues(payload, parts, 0, &out);
  return out;
}

bool MatchesCondition(const Condition& c, const Json& payload) {
  auto values = FieldValues(payload, c.field);
  switch (c.kind) {
    case Condition::Kind::kIsNull:
      return values.empty();
    case Condition::Kind::kMatch:
      for (const Json* v : values) {
        if (ValueEquals(*v, c.value)) return true;
      }
      return false;
    case Condition::Kind::kMatchAny:
      for (const Json* v : values) {
        for (const auto& want : c.any) {
          if (ValueEquals(*v, want)) return true;
        }
      }
      return false;
    case Condition::Kind::kRange:
      for (const Json* v : values) {
        if (v->is_number() && InRange(v->get<double>(), c)) return true;
      }
      return false;
    default:
      return false;
  }
}

absl::Status ValidatePayloadTypes(const std::vector<PayloadIndexSpec>& specs,
                                  const Json& payload) {
  for (const auto& spec : specs) {
    for (const Json* v : FieldValues(payload, spec.field)) {
      bool ok = false;
      switch (spec.type) {
        case PayloadType::kKeyword: ok = v->is_string(); break;
        case PayloadType::kInteger:
          ok = v->is_number_integer() &&
               !(v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX));
          break;
        case PayloadType::kFloat: ok = v->is_number(); break;
        case PayloadType::kBool: ok = v->is_boolean(); break;
      }
      if (!ok) {
        // A whole number from 2^53 up that arrived as a double (JSON through
        // google.protobuf.Struct) is no longer exact: say why it is refused.
        const bool inexact = spec.type == PayloadType::kInteger && v->is_number_float() &&
                             std::abs(v->get<double>()) >= 9007199254740992.0;
        return absl::InvalidArgumentError(absl::StrCat(
            "payload field \"", spec.field, "\" is indexed as ", std::string(PayloadTypeName(spec.type)),
            " but holds ", v->dump(),
            inexact ? " (a number from 2^53 up that came as a double, as through google.protobuf.Struct, "
                      "is not an exact integer; send such values as strings and index them as keyword)"
                    : ""));
      }
    }
  }
  return absl::OkStatus();
}

PayloadIndex::PayloadIndex(const std::vector<PayloadIndexSpec>& specs) {
  for (const auto& s : specs) fields_[s.field].type = s.type;
}

std::vector<std::string> PayloadIndex::KeysFor(const Json& payload, uint64_t id) const {
  std::vector<std::string> keys;
  const std::string id_key = InternalKey(id);
  for (const auto& [name, field] : fields_) {
    auto values = FieldValues(payload, name);
    if (values.empty()) continue;
    std::string prefix;
    prefix.push_back(static_cast<char>(name.size()));
    prefix.append(name);
    keys.push_back(prefix + kTagPresent + id_key);
    for (const Json* v : values) {
      switch (field.type) {
        case PayloadType::kKeyword:
          keys.push_back(prefix + kTagKeyword + v->get<std::string>() + id_key);
          break;
        case PayloadType::kInteger:
          keys.push_back(prefix + kTagInt + EncodeInt(v->get<int64_t>()) + id_key);
          break;
        case PayloadType::kFloat:
          keys.push_back(prefix + kTagFloat + EncodeDouble(v->get<double>()) + id_key);
          break;
        case PayloadType::kBool:
          keys.push_back(prefix + kTagBool + (v->get<bool>() ? "1" : "0") + id_key);
          break;
      }
    }
  }
  return keys;
}

bool PayloadIndex::AddKey(std::string_view key) {
  if (key.size() < 1 + 1 + 8) return false;
  size_t flen = static_cast<uint8_t>(key[0]);
  if (key.size() < 1 + flen + 1 + 8) return false;
  if (!fields_.contains(std::string(key.substr(1, flen)))) return false;
  Apply(key, true);
  return true;
}

void PayloadIndex::RemoveKey(std::string_view key) {
  if (key.size() < 1 + 1 + 8) return;
  size_t flen = static_cast<uint8_t>(key[0]);
  if (key.size() < 1 + flen + 1 + 8) return;
  if (!fields_.contains(std::string(key.substr(1, flen)))) return;
  Apply(key, false);
}

void PayloadIndex::Apply(std::string_view key, bool add) {
  size_t flen = static_cast<uint8_t>(key[0]);
  Field& f = fields_.find(std::string(key.substr(1, flen)))->second;
  char tag = key[1 + flen];
  std::string_view value = key.substr(2 + flen, key.size() - (2 + flen) - 8);
  uint64_t id = DecodeInternalKey(key.substr(key.size() - 8));
  auto touch = [&](Bitmap& b) {
    if (add) b.add(id);
    else b.remove(id);
  };
  switch (tag) {
    case kTagPresent: touch(f.present); break;
    case kTagKeyword: {
      auto& b = f.keywords[std::string(value)];
      touch(b);
      if (b.isEmpty()) f.keywords.erase(std::string(value));
      break;
    }
    case kTagInt: {
      if (value.size() != 8) return;
      int64_t v = DecodeInt(value);
      touch(f.ints[v]);
      if (f.ints[v].isEmpty()) f.ints.erase(v);
      break;
    }
    case kTagFloat: {
      if (value.size() != 8) return;
      double v = DecodeDouble(value);
      touch(f.floats[v]);
      if (f.floats[v].isEmpty()) f.floats.erase(v);
      break;
    }
    case kTagBool:
      touch(value == "1" ? f.is_true : f.is_false);
      break;
    default:
      break;
  }
}

std::optional<Bitmap> PayloadIndex::MatchValue(const Field& f, const FieldValue& v) const {
  Bitmap out;
  switch (f.type) {
    case PayloadType::kKeyword:
      if (const auto* s = std::get_if<std::string>(&v)) {
        if (auto it = f.keywords.find(*s); it != f.keywords.end()) out = it->second;
      }
      break;
    case PayloadType::kBool:
      if (const auto* b = std::get_if<bool>(&v)) out = *b ? f.is_true : f.is_false;
      break;
    case PayloadType::kInteger: {
      std::optional<int64_t> want;
      if (const auto* i = std::get_if<int64_t>(&v)) want = *i;
      if (const auto* d = std::get_if<double>(&v)) want = ExactInt(*d);
      if (want) {
        if (auto it = f.ints.find(*want); it != f.ints.end()) out = it->second;
      }
      break;
    }
    case PayloadType::kFloat: {
      std::optional<double> want;
      if (const auto* i = std::get_if<int64_t>(&v)) {
        // Only a double equal in value to the integer can match it.
        if (ExactInt(static_cast<double>(*i)) == *i) want = static_cast<double>(*i);
      }
      if (const auto* d = std::get_if<double>(&v)) want = *d;
      if (want) {
        if (auto it = f.floats.find(*want); it != f.floats.end()) out = it->second;
      }
      break;
    }
  }
  return out;
}

std::optional<Bitmap> PayloadIndex::Evaluate(const Condition& c, const Bitmap& live) const {
  auto it = fields_.find(c.field);
  if (it == fields_.end()) return std::nullopt;
  const Field& f = it->second;
  Bitmap out;
  switch (c.kind) {
    case Condition::Kind::kIsNull:
      out = live - f.present;
      return out;
    case Condition::Kind::kMatch:
      return MatchValue(f, c.value);
    case Condition::Kind::kMatchAny:
      for (const auto& v : c.any) out |= *MatchValue(f, v);
      return out;
    case Condition::Kind::kRange: {
      // Collect the bitmaps in range, then union them in one pass (far
      // faster than OR-ing hundreds of small bitmaps one by one).
      std::vector<const Bitmap*> parts;
      if (f.type == PayloadType::kInteger) {
        double lo = -INFINITY;
        if (c.gte) lo = std::max(lo, *c.gte);
        if (c.gt) lo = std::max(lo, *c.gt);
        // Ranges compare as doubles, and double(x) rounds by up to 1024 near
        // 2^63: start a little below the bound; InRange decides exactly.
        auto start = f.ints.begin();
        if (lo >= 0x1p63) {
          start = f.ints.lower_bound(INT64_MAX - 4096);
        } else if (lo > -0x1p63 + 8192) {
          start = f.ints.lower_bound(static_cast<int64_t>(std::floor(lo)) - 4096);
        }
        for (auto i = start; i != f.ints.end(); ++i) {
          double x = static_cast<double>(i->first);
          if ((c.lt && x >= *c.lt) || (c.lte && x > *c.lte)) break;
          if (InRange(x, c)) parts.push_back(&i->second);
        }
      } else if (f.type == PayloadType::kFloat) {
        double lo = -INFINITY;
        if (c.gte) lo = std::max(lo, *c.gte);
        if (c.gt) lo = std::max(lo, *c.gt);
        for (auto i = f.floats.lower_bound(lo); i != f.floats.end(); ++i) {
          if ((c.lt && i->first >= *c.lt) || (c.lte && i->first > *c.lte)) break;
          if (InRange(i->first, c)) parts.push_back(&i->second);
        }
      }
      if (parts.size() == 1) out = *parts[0];
      else if (!parts.empty()) out = Bitmap::fastunion(parts.size(), parts.data());
      return out;  // ranges never match keywords or bools
    }
    default:
      return std::nullopt;
  }
}

uint64_t PayloadIndex::MemoryBytes() const {
  uint64_t total = 0;
  for (const auto& [name, f] : fields_) {
    for (const auto& [k, b] : f.keywords) total += k.size() + b.getSizeInBytes(false);
    for (const auto& [k, b] : f.ints) total += 16 + b.getSizeInBytes(false);
    for (const auto& [k, b] : f.floats) total += 16 + b.getSizeInBytes(false);
    total += f.is_true.getSizeInBytes(false) + f.is_false.getSizeInBytes(false) +
             f.present.getSizeInBytes(false);
  }
  return total;
}

}  // namespace cairn::db
