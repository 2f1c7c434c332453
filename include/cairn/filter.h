// Payload filters for search, count, scroll and delete.
//
// A Filter is a boolean combination of conditions over payload fields:
//   must      every condition matches
//   should    at least one condition matches (ignored when empty)
//   must_not  no condition matches
// A field holding an array matches when any element matches. A missing field
// matches no condition except is_null. Fields are top-level keys or dotted
// paths ("meta.lang").
//
// JSON form (the same in the C++ API, the gRPC API and the CLI):
//   {"must": [
//      {"key": "lang", "match": {"value": "en"}},
//      {"key": "tag",  "match": {"any": ["faq", "howto"]}},
//      {"key": "year", "range": {"gte": 2020, "lt": 2025}},
//      {"is_null": {"key": "deleted_at"}},
//      {"has_id": [1, 2, "doc-7", {"num": "18446744073709551615"}]},
//      {"should": [...], "must_not": [...]}          (a nested filter)
//   ],
//   "should": [...], "must_not": [...]}
#ifndef CAIRN_FILTER_H_
#define CAIRN_FILTER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "cairn/point.h"

namespace cairn {

// A scalar a condition compares with. Integers and floats compare by value.
using FieldValue = std::variant<std::string, int64_t, double, bool>;

struct Filter;

struct Condition {
  enum class Kind { kMatch, kMatchAny, kRange, kIsNull, kHasId, kNested };
  Kind kind = Kind::kMatch;
  std::string field;             // all kinds but kHasId and kNested
  FieldValue value;              // kMatch
  std::vector<FieldValue> any;   // kMatchAny
  std::optional<double> gt, gte, lt, lte;  // kRange: at least one is set
  std::vector<PointId> ids;      // kHasId
  std::shared_ptr<const Filter> nested;  // kNested

  static Condition Match(std::string field, FieldValue value);
  static Condition MatchAny(std::string field, std::vector<FieldValue> values);
  static Condition Range(std::string field, std::optional<double> gte,
                         std::optional<double> lte,
                         std::optional<double> gt = std::nullopt,
                         std::optional<double> lt = std::nullopt);
  static Condition IsNull(std::string field);
  static Condition HasId(std::vector<PointId> ids);
  static Condition Nested(Filter filter);
};

struct Filter {
  std::vector<Condition> must;
  std::vector<Condition> should;
  std::vector<Condition> must_not;

  bool empty() const { return must.empty() && should.empty() && must_not.empty(); }

  // Parses the JSON form above. InvalidArgument names the offending part,
  // e.g. "filter.must[1].range: needs at least one of gt, gte, lt, lte".
  static absl::StatusOr<Filter> FromJson(std::string_view json);
  std::string ToJson() const;
};

}  // namespace cairn

#endif  // CAIRN_FILTER_H_
