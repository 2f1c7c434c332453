// Filter: construction helpers and the JSON form (see include/cairn/filter.h).
#include "cairn/filter.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cairn/status.h"

namespace cairn {
namespace {

using json = nlohmann::json;
constexpr int kMaxDepth = 32;
constexpr size_t kMaxConditions = 10000;

absl::Status Bad(const std::string& where, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", std::string(why)));
}

absl::StatusOr<FieldValue> ParseValue(const json& j, const std::string& where) {
  if (j.is_string()) return FieldValue(j.get<std::string>());
  if (j.is_boolean()) return FieldValue(j.get<bool>());
  if (j.is_number_integer()) {
    if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return Bad(where, "integer out of range");
    }
    return FieldValue(j.get<int64_t>());
  }
  if (j.is_number_float()) return FieldValue(j.get<double>());
  return Bad(where, "expected a string, number or bool");
}

// An id: a number, a string, or the API's id object {"num": N or "N"} /
// {"str": "S"} (the form for numbers above 2^53, which JSON clients that
// keep numbers as doubles cannot send exactly).
absl::StatusOr<PointId> ParseId(const json& j, const std::string& where) {
  if (j.is_number_unsigned()) return PointId(j.get<uint64_t>());
  if (j.is_number_integer() && j.get<int64_t>() >= 0) return PointId(j.get<uint64_t>());
  if (j.is_string() && !j.get<std::string>().empty()) return PointId(j.get<std::string>());
  if (j.is_object() && j.size() == 1) {
    if (auto s = j.find("str"); s != j.end() && s->is_string() && !s->get<std::string>().empty()) {
      return PointId(s->get<std::string>());
    }
    if (auto n = j.find("num"); n != j.end()) {
      if (n->is_number_unsigned()) return PointId(n->get<uint64_t>());
      if (n->is_string()) {
        const std::string& d = n->get_ref<const std::string&>();
        uint64_t v = 0;
        if (!d.empty() && d.size() <= 20 && d.find_first_not_of("0123456789") == std::string::npos &&
            absl::SimpleAtoi(d, &v)) {
          return PointId(v);
        }
      }
    }
  }
  return Bad(where, "ids are unsigned integers, non-empty strings, {\"num\": \"N\"} or {\"str\": \"S\"}");
}

absl::StatusOr<Filter> ParseFilter(const json& j, const std::string& where, int depth,
                                   size_t* count);

std::string KeyOf(const json& j, const std::string& where, absl::Status* status) {
  auto it = j.find("key");
  if (it == j.end() || !it->is_string() || it->get<std::string>().empty()) {
    *status = Bad(where, "needs \"key\": a non-empty field name");
    return "";
  }
  return it->get<std::string>();
}

absl::StatusOr<Condition> ParseCondition(const json& j, const std::string& where, int depth,
                                         size_t* count) {
  if (++*count > kMaxConditions) return Bad(where, "too many conditions");
  if (!j.is_object()) return Bad(where, "a condition is a JSON object");
  if (j.contains("must") || j.contains("should") || j.contains("must_not")) {
    CAIRN_ASSIGN_OR_RETURN(Filter nested, ParseFilter(j, where, depth + 1, count));
    return Condition::Nested(std::move(nested));
  }
  // Exactly one kind per condition, and no key that would be ignored.
  std::vector<std::string> kinds;
  for (const auto& [k, v] : j.items()) {
    if (k == "has_id" || k == "is_null" || k == "match" || k == "range") {
      kinds.push_back(k);
    } else if (k != "key") {
      return Bad(where, absl::StrCat("unknown key \"", k, "\" (expected key with match or range, is_null, has_id, "
                                     "or a nested filter)"));
    }
  }
  if (kinds.size() > 1) {
    return Bad(where, absl::StrCat("a condition takes one of match, range, is_null, has_id; this one has ",
                                   absl::StrJoin(kinds, " and "), ": put each in its own condition"));
  }
  if (!kinds.empty() && (kinds[0] == "has_id" || kinds[0] == "is_null") && j.contains("key")) {
    return Bad(where, kinds[0] == "is_null" ? "is_null takes its key inside: {\"is_null\": {\"key\": ...}}"
                                            : "has_id takes no key");
  }
  if (auto it = j.find("has_id"); it != j.end()) {
    if (!it->is_array() || it->empty()) return Bad(where + ".has_id", "a non-empty array of ids");
    std::vector<PointId> ids;
    for (size_t i = 0; i < it->size(); ++i) {
      CAIRN_ASSIGN_OR_RETURN(PointId id, ParseId((*it)[i], absl::StrCat(where, ".has_id[", i, "]")));
      ids.push_back(std::move(id));
    }
    return Condition::HasId(std::move(ids));
  }
  if (auto it = j.find("is_null"); it != j.end()) {
    absl::Status s;
    std::string key = it->is_object() ? KeyOf(*it, where + ".is_null", &s) : "";
    if (!it->is_object()) s = Bad(where + ".is_null", "expected {\"key\": ...}");
    if (s.ok() && it->size() != 1) s = Bad(where + ".is_null", "expected {\"key\": ...} and nothing else");
    if (!s.ok()) return s;
    return Condition::IsNull(std::move(key));
  }
  absl::Status s;
  std::string key = KeyOf(j, where, &s);
  if (!s.ok()) return s;
  if (auto it = j.find("match"); it != j.end()) {
    if (!it->is_object()) return Bad(where + ".match", "expected {\"value\": v} or {\"any\": [...]}");
    if (it->size() != 1) return Bad(where + ".match", "expected \"value\" or \"any\", one of them");
    if (auto v = it->find("value"); v != it->end()) {
      CAIRN_ASSIGN_OR_RETURN(FieldValue value, ParseValue(*v, where + ".match.value"));
      return Condition::Match(std::move(key), std::move(value));
    }
    if (auto a = it->find("any"); a != it->end()) {
      if (!a->is_array()) return Bad(where + ".match.any", "expected an array");
      std::vector<FieldValue> values;
      for (size_t i = 0; i < a->size(); ++i) {
        CAIRN_ASSIGN_OR_RETURN(FieldValue v,
                               ParseValue((*a)[i], absl::StrCat(where, ".match.any[", i, "]")));
        values.push_back(std::move(v));
      }
      return Condition::MatchAny(std::move(key), std::move(values));
    }
    return Bad(where + ".match", "expected \"value\" or \"any\"");
  }
  if (auto it = j.find("range"); it != j.end()) {
    if (!it->is_object()) return Bad(where + ".range", "expected an object");
    std::optional<double> b[4];
    const char* names[4] = {"gt", "gte", "lt", "lte"};
    for (int i = 0; i < 4; ++i) {
      if (auto v = it->find(names[i]); v != it->end()) {
        if (!v->is_number()) return Bad(absl::StrCat(where, ".range.", names[i]), "expected a number");
        b[i] = v->get<double>();
        if (!std::isfinite(*b[i])) return Bad(absl::StrCat(where, ".range.", names[i]), "not finite");
      }
    }
    for (const auto& [k, v] : it->items()) {
      if (k != "gt" && k != "gte" && k != "lt" && k != "lte") {
        return Bad(where + ".range", absl::StrCat("unknown bound \"", k, "\""));
      }
    }
    if (!b[0] && !b[1] && !b[2] && !b[3]) {
      return Bad(where + ".range", "needs at least one of gt, gte, lt, lte");
    }
    return Condition::Range(std::move(key), b[1], b[3], b[0], b[2]);
  }
  return Bad(where, "expected one of match, range, is_null, has_id, or a nested filter");
}

absl::StatusOr<Filter> ParseFilter(const json& j, const std::string& where, int depth,
                                   size_t* count) {
  if (depth > kMaxDepth) return Bad(where, "nested too deeply");
  if (!j.is_object()) return Bad(where, "a filter is a JSON object");
  Filter f;
  for (const auto& [k, v] : j.items()) {
    std::vector<Condition>* list = nullptr;
    if (k == "must") list = &f.must;
    else if (k == "should") list = &f.should;
    else if (k == "must_not") list = &f.must_not;
    else return Bad(where, absl::StrCat("unknown key \"", k, "\" (expected must, should, must_not)"));
    const std::string sub = absl::StrCat(where, ".", k);
    if (v.is_object()) {  // a single condition is accepted without the array
      CAIRN_ASSIGN_OR_RETURN(Condition c, ParseCondition(v, sub, depth, count));
      list->push_back(std::move(c));
      continue;
    }
    if (!v.is_array()) return Bad(sub, "expected an array of conditions");
    for (size_t i = 0; i < v.size(); ++i) {
      CAIRN_ASSIGN_OR_RETURN(Condition c,
                             ParseCondition(v[i], absl::StrCat(sub, "[", i, "]"), depth, count));
      list->push_back(std::move(c));
    }
  }
  return f;
}

json ValueJson(const FieldValue& v) {
  return std::visit([](const auto& x) { return json(x); }, v);
}

json FilterJson(const Filter& f);

json ConditionJson(const Condition& c) {
  switch (c.kind) {
    case Condition::Kind::kMatch:
      return {{"key", c.field}, {"match", {{"value", ValueJson(c.value)}}}};
    case Condition::Kind::kMatchAny: {
      json any = json::array();
      for (const auto& v : c.any) any.push_back(ValueJson(v));
      return {{"key", c.field}, {"match", {{"any", any}}}};
    }
    case Condition::Kind::kRange: {
      json r = json::object();
      if (c.gt) r["gt"] = *c.gt;
      if (c.gte) r["gte"] = *c.gte;
      if (c.lt) r["lt"] = *c.lt;
      if (c.lte) r["lte"] = *c.lte;
      return {{"key", c.field}, {"range", r}};
    }
    case Condition::Kind::kIsNull:
      return {{"is_null", {{"key", c.field}}}};
    case Condition::Kind::kHasId: {
      json ids = json::array();
      for (const auto& id : c.ids) {
        if (id.is_number()) ids.push_back(id.number());
        else ids.push_back(id.str());
      }
      return {{"has_id", ids}};
    }
    case Condition::Kind::kNested:
      return FilterJson(*c.nested);
  }
  return json::object();
}

json FilterJson(const Filter& f) {
  json j = json::object();
  auto list = [](const std::vector<Condition>& cs) {
    json a = json::array();
    for (const auto& c : cs) a.push_back(ConditionJson(c));
    return a;
  };
  if (!f.must.empty()) j["must"] = list(f.must);
  if (!f.should.empty()) j["should"] = list(f.should);
  if (!f.must_not.empty()) j["must_not"] = list(f.must_not);
  return j;
}

}  // namespace

Condition Condition::Match(std::string field, FieldValue value) {
  Condition c;
  c.kind = Kind::kMatch;
  c.field = std::move(field);
  c.value = std::move(value);
  return c;
}

Condition Condition::MatchAny(std::string field, std::vector<FieldValue> values) {
  Condition c;
  c.kind = Kind::kMatchAny;
  c.field = std::move(field);
  c.any = std::move(values);
  return c;
}

Condition Condition::Range(std::string field, std::optional<double> gte,
                           std::optional<double> lte, std::optional<double> gt,
                           std::optional<double> lt) {
  Condition c;
  c.kind = Kind::kRange;
  c.field = std::move(field);
  c.gte = gte;
  c.lte = lte;
  c.gt = gt;
  c.lt = lt;
  return c;
}

Condition Condition::IsNull(std::string field) {
  Condition c;
  c.kind = Kind::kIsNull;
  c.field = std::move(field);
  return c;
}

Condition Condition::HasId(std::vector<PointId> ids) {
  Condition c;
  c.kind = Kind::kHasId;
  c.ids = std::move(ids);
  return c;
}

Condition Condition::Nested(Filter filter) {
  Condition c;
  c.kind = Kind::kNested;
  c.nested = std::make_shared<const Filter>(std::move(filter));
  return c;
}

absl::StatusOr<Filter> Filter::FromJson(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("filter: not valid JSON");
  size_t count = 0;
  return ParseFilter(j, "filter", 0, &count);
}

std::string Filter::ToJson() const { return FilterJson(*this).dump(); }

}  // namespace cairn
