// Tests for Filter's JSON form: every condition kind, nesting, errors that
// name the offending path, and ToJson -> FromJson round trips.
#include "cairn/filter.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cairn {
namespace {

using ::testing::HasSubstr;

Filter ParseOrDie(std::string_view json) {
  auto f = Filter::FromJson(json);
  EXPECT_TRUE(f.ok()) << json << ": " << f.status();
  return f.ok() ? *std::move(f) : Filter();
}

TEST(FilterJsonTest, MatchValueOfEveryType) {
  Filter f = ParseOrDie(R"({"must": [
      {"key": "lang", "match": {"value": "en"}},
      {"key": "year", "match": {"value": 2024}},
      {"key": "score", "match": {"value": 0.5}},
      {"key": "draft", "match": {"value": false}},
      {"key": "neg", "match": {"value": -3}}]})");
  ASSERT_EQ(f.must.size(), 5u);
  EXPECT_TRUE(f.should.empty());
  EXPECT_TRUE(f.must_not.empty());
  for (const auto& c : f.must) EXPECT_EQ(c.kind, Condition::Kind::kMatch);
  EXPECT_EQ(f.must[0].field, "lang");
  EXPECT_EQ(f.must[0].value, FieldValue(std::string("en")));
  EXPECT_EQ(f.must[1].value, FieldValue(int64_t{2024}));
  EXPECT_EQ(f.must[2].value, FieldValue(0.5));
  EXPECT_EQ(f.must[3].value, FieldValue(false));
  EXPECT_EQ(f.must[4].value, FieldValue(int64_t{-3}));
}

TEST(FilterJsonTest, MatchAny) {
  Filter f = ParseOrDie(R"({"should": [{"key": "tag", "match": {"any": ["faq", 7, true, 1.5]}},
                                       {"key": "none", "match": {"any": []}}]})");
  ASSERT_EQ(f.should.size(), 2u);
  EXPECT_EQ(f.should[0].kind, Condition::Kind::kMatchAny);
  EXPECT_EQ(f.should[0].field, "tag");
  EXPECT_EQ(f.should[0].any, (std::vector<FieldValue>{std::string("faq"), int64_t{7}, true, 1.5}));
  EXPECT_TRUE(f.should[1].any.empty());
}

TEST(FilterJsonTest, RangeBounds) {
  Filter f = ParseOrDie(R"({"must": [{"key": "year", "range": {"gte": 2020, "lt": 2025}},
                                     {"key": "p", "range": {"gt": -1.5}},
                                     {"key": "q", "range": {"lte": 3, "gt": 1, "gte": 0, "lt": 9}}]})");
  ASSERT_EQ(f.must.size(), 3u);
  const Condition& a = f.must[0];
  EXPECT_EQ(a.kind, Condition::Kind::kRange);
  EXPECT_EQ(a.gte, 2020.0);
  EXPECT_EQ(a.lt, 2025.0);
  EXPECT_FALSE(a.gt.has_value());
  EXPECT_FALSE(a.lte.has_value());
  EXPECT_EQ(f.must[1].gt, -1.5);
  EXPECT_FALSE(f.must[1].gte.has_value());
  const Condition& q = f.must[2];
  EXPECT_EQ(q.gt, 1.0);
  EXPECT_EQ(q.gte, 0.0);
  EXPECT_EQ(q.lt, 9.0);
  EXPECT_EQ(q.lte, 3.0);
}

TEST(FilterJsonTest, HasIdTakesTheApisIdObjects) {
  Filter f = ParseOrDie(R"({"must": [{"has_id": [{"num": "18446744073709551615"}, {"num": 9007199254740993},
                                                  {"str": "doc-7"}, {"num": "0"}]}]})");
  ASSERT_EQ(f.must.size(), 1u);
  EXPECT_EQ(f.must[0].ids, (std::vector<PointId>{PointId(~uint64_t{0}), PointId(uint64_t{9007199254740993}),
                                                 PointId("doc-7"), PointId(0)}));
  for (const char* bad : {R"({"num": "-1"})", R"({"num": "18446744073709551616"})", R"({"num": "1x"})",
                          R"({"num": ""})", R"({"str": ""})", R"({})", R"({"num": 1, "str": "a"})", R"({"num": 1.5})"}) {
    SCOPED_TRACE(bad);
    auto r = Filter::FromJson(std::string(R"({"must": [{"has_id": [)") + bad + "]}]}");
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("filter.must[0].has_id[0]"), std::string::npos) << r.status();
  }
}

TEST(FilterJsonTest, IsNullAndHasId) {
  Filter f = ParseOrDie(R"({"must_not": [{"is_null": {"key": "deleted_at"}},
                                         {"has_id": [1, 2, "doc-7", 18446744073709551615]}]})");
  ASSERT_EQ(f.must_not.size(), 2u);
  EXPECT_EQ(f.must_not[0].kind, Condition::Kind::kIsNull);
  EXPECT_EQ(f.must_not[0].field, "deleted_at");
  EXPECT_EQ(f.must_not[1].kind, Condition::Kind::kHasId);
  EXPECT_EQ(f.must_not[1].ids, (std::vector<PointId>{PointId(1), PointId(2), PointId("doc-7"),
                                                     PointId(~uint64_t{0})}));
}

TEST(FilterJsonTest, NestedFiltersAndSingleConditionForm) {
  Filter f = ParseOrDie(R"({
      "must": {"key": "lang", "match": {"value": "en"}},
      "should": [
        {"must": [{"key": "a", "match": {"value": 1}}],
         "must_not": [{"should": [{"is_null": {"key": "b"}}]}]},
        {"key": "c", "range": {"lt": 0}}
      ]})");
  ASSERT_EQ(f.must.size(), 1u);
  EXPECT_EQ(f.must[0].kind, Condition::Kind::kMatch);
  ASSERT_EQ(f.should.size(), 2u);
  const Condition& n = f.should[0];
  ASSERT_EQ(n.kind, Condition::Kind::kNested);
  ASSERT_NE(n.nested, nullptr);
  ASSERT_EQ(n.nested->must.size(), 1u);
  EXPECT_EQ(n.nested->must[0].field, "a");
  ASSERT_EQ(n.nested->must_not.size(), 1u);
  const Condition& inner = n.nested->must_not[0];
  ASSERT_EQ(inner.kind, Condition::Kind::kNested);
  ASSERT_EQ(inner.nested->should.size(), 1u);
  EXPECT_EQ(inner.nested->should[0].kind, Condition::Kind::kIsNull);
  EXPECT_EQ(f.should[1].kind, Condition::Kind::kRange);
}

TEST(FilterJsonTest, EmptyFilter) {
  Filter f = ParseOrDie("{}");
  EXPECT_TRUE(f.empty());
  EXPECT_EQ(f.ToJson(), "{}");
  EXPECT_TRUE(ParseOrDie(R"({"must": []})").empty());
}

struct ErrorCase {
  const char* json;
  const char* where;  // the path the message must start with
  const char* why;    // and a part of the reason
};

TEST(FilterJsonTest, ErrorsNameThePath) {
  const ErrorCase cases[] = {
      {"not json", "filter", "not valid JSON"},
      {"[]", "filter", "a filter is a JSON object"},
      {R"({"mustt": []})", "filter", "unknown key \"mustt\""},
      {R"({"must": 5})", "filter.must", "expected an array"},
      {R"({"must": [5]})", "filter.must[0]", "a condition is a JSON object"},
      {R"({"must": [{"key": "a", "match": {"value": 1}},
                    {"key": "y", "range": {}}]})",
       "filter.must[1].range", "needs at least one of gt, gte, lt, lte"},
      {R"({"must": [{"key": "y", "range": {"gte": "x"}}]})", "filter.must[0].range.gte",
       "expected a number"},
      {R"({"must": [{"key": "y", "range": {"gte": 1, "from": 2}}]})", "filter.must[0].range",
       "unknown bound \"from\""},
      {R"({"must": [{"key": "y", "range": 3}]})", "filter.must[0].range", "expected an object"},
      {R"({"should": [{"match": {"value": 1}}]})", "filter.should[0]", "needs \"key\""},
      {R"({"should": [{"key": "", "match": {"value": 1}}]})", "filter.should[0]", "needs \"key\""},
      {R"({"should": [{"key": 5, "match": {"value": 1}}]})", "filter.should[0]", "needs \"key\""},
      {R"({"should": [{"key": "a", "match": {}}]})", "filter.should[0].match",
       "expected \"value\" or \"any\""},
      {R"({"should": [{"key": "a", "match": 1}]})", "filter.should[0].match", "expected"},
      {R"({"should": [{"key": "a", "match": {"value": null}}]})", "filter.should[0].match.value",
       "expected a string, number or bool"},
      {R"({"should": [{"key": "a", "match": {"value": [1]}}]})", "filter.should[0].match.value",
       "expected a string, number or bool"},
      {R"({"should": [{"key": "a", "match": {"value": 9223372036854775808}}]})",
       "filter.should[0].match.value", "integer out of range"},
      {R"({"should": [{"key": "a", "match": {"any": 1}}]})", "filter.should[0].match.any",
       "expected an array"},
      {R"({"should": [{"key": "a", "match": {"any": ["x", {}]}}]})",
       "filter.should[0].match.any[1]", "expected a string, number or bool"},
      {R"({"must_not": [{"has_id": []}]})", "filter.must_not[0].has_id", "non-empty array"},
      {R"({"must_not": [{"has_id": 3}]})", "filter.must_not[0].has_id", "non-empty array"},
      {R"({"must_not": [{"has_id": [1, -2]}]})", "filter.must_not[0].has_id[1]", "ids are"},
      {R"({"must_not": [{"has_id": [1.5]}]})", "filter.must_not[0].has_id[0]", "ids are"},
      {R"({"must_not": [{"has_id": [""]}]})", "filter.must_not[0].has_id[0]", "ids are"},
      {R"({"must_not": [{"is_null": "x"}]})", "filter.must_not[0].is_null", "expected {\"key\""},
      {R"({"must_not": [{"is_null": {}}]})", "filter.must_not[0].is_null", "needs \"key\""},
      {R"({"must_not": [{"key": "a"}]})", "filter.must_not[0]", "expected one of match, range"},
      {R"({"must": [{"should": [{"key": "a", "match": {"value": 1}},
                                {"must": [{"key": "b", "range": {"lt": "z"}}]}]}]})",
       "filter.must[0].should[1].must[0].range.lt", "expected a number"},
      {R"({"must": [{"should": [], "bogus": 1}]})", "filter.must[0]", "unknown key \"bogus\""},
      // One kind per condition: a second one would be ignored.
      {R"({"must": [{"key": "a", "match": {"value": "en"}, "range": {"gte": 1}}]})", "filter.must[0]",
       "match and range"},
      {R"({"must": [{"key": "a", "match": {"value": "en", "any": ["de"]}}]})", "filter.must[0].match",
       "one of them"},
      {R"({"must": [{"has_id": [1], "key": "a", "match": {"value": 1}}]})", "filter.must[0]", "has_id and match"},
      {R"({"must": [{"has_id": [1], "key": "a"}]})", "filter.must[0]", "has_id takes no key"},
      {R"({"must": [{"key": "m", "is_null": {"key": "m"}}]})", "filter.must[0]", "is_null takes its key inside"},
      {R"({"must": [{"is_null": {"key": "m", "x": 1}}]})", "filter.must[0].is_null", "nothing else"},
      {R"({"must": [{"key": "a", "match": {"value": 1}, "bogus": 2}]})", "filter.must[0]", "unknown key \"bogus\""},
  };
  for (const auto& c : cases) {
    auto f = Filter::FromJson(c.json);
    ASSERT_FALSE(f.ok()) << c.json;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << c.json;
    std::string msg(f.status().message());
    EXPECT_EQ(msg.rfind(std::string(c.where) + ": ", 0), 0u)
        << "message \"" << msg << "\" should start with \"" << c.where << ": \"";
    EXPECT_THAT(msg, HasSubstr(c.why)) << c.json;
  }
}

TEST(FilterJsonTest, TooDeepOrTooLargeIsRefused) {
  std::string deep = R"({"key": "a", "match": {"value": 1}})";
  for (int i = 0; i < 40; ++i) deep = R"({"must": [)" + deep + "]}";
  auto f = Filter::FromJson(deep);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("nested too deeply"));

  std::string big = R"({"should": [)";
  for (int i = 0; i < 10001; ++i) {
    if (i) big += ",";
    big += R"({"has_id": [1]})";
  }
  big += "]}";
  f = Filter::FromJson(big);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("too many conditions"));
}

TEST(FilterJsonTest, RoundTripThroughToJson) {
  const char* inputs[] = {
      R"({"must": [{"key": "lang", "match": {"value": "en"}},
                   {"key": "tag", "match": {"any": ["faq", "howto", 3, false, 2.5]}},
                   {"key": "year", "range": {"gte": 2020, "lt": 2025}},
                   {"is_null": {"key": "deleted_at"}},
                   {"has_id": [1, 2, "doc-7"]},
                   {"should": [{"key": "x.y", "range": {"gt": -1.5, "lte": 1e10}}],
                    "must_not": [{"key": "b", "match": {"value": true}}]}],
          "should": [{"key": "n", "match": {"value": -9223372036854775807}}],
          "must_not": [{"has_id": ["z"]}]})",
      R"({"should": [{"key": "f", "match": {"value": 0.1}}]})",
      "{}",
  };
  for (const char* in : inputs) {
    Filter a = ParseOrDie(in);
    std::string j1 = a.ToJson();
    Filter b = ParseOrDie(j1);
    EXPECT_EQ(b.ToJson(), j1);
    ASSERT_EQ(a.must.size(), b.must.size());
    ASSERT_EQ(a.should.size(), b.should.size());
    ASSERT_EQ(a.must_not.size(), b.must_not.size());
    for (size_t i = 0; i < a.must.size(); ++i) {
      EXPECT_EQ(a.must[i].kind, b.must[i].kind);
      EXPECT_EQ(a.must[i].field, b.must[i].field);
      EXPECT_EQ(a.must[i].value, b.must[i].value);
      EXPECT_EQ(a.must[i].any, b.must[i].any);
      EXPECT_EQ(a.must[i].ids, b.must[i].ids);
      EXPECT_EQ(a.must[i].gt, b.must[i].gt);
      EXPECT_EQ(a.must[i].gte, b.must[i].gte);
      EXPECT_EQ(a.must[i].lt, b.must[i].lt);
      EXPECT_EQ(a.must[i].lte, b.must[i].lte);
    }
  }
}

TEST(FilterJsonTest, BuiltInCppRoundTrips) {
  Filter inner;
  inner.should.push_back(Condition::IsNull("gone"));
  inner.should.push_back(Condition::HasId({PointId(5), PointId("five")}));
  Filter f;
  f.must.push_back(Condition::Match("lang", std::string("de")));
  f.must.push_back(Condition::Range("year", 2000.0, std::nullopt, std::nullopt, 2030.0));
  f.must.push_back(Condition::MatchAny("n", {int64_t{1}, int64_t{2}}));
  f.must_not.push_back(Condition::Nested(inner));
  Filter back = ParseOrDie(f.ToJson());
  EXPECT_EQ(back.ToJson(), f.ToJson());
  ASSERT_EQ(back.must.size(), 3u);
  EXPECT_EQ(back.must[1].gte, 2000.0);
  EXPECT_EQ(back.must[1].lt, 2030.0);
  EXPECT_FALSE(back.must[1].lte.has_value());
  ASSERT_EQ(back.must_not.size(), 1u);
  ASSERT_EQ(back.must_not[0].kind, Condition::Kind::kNested);
  EXPECT_EQ(back.must_not[0].nested->should[1].ids, (std::vector<PointId>{PointId(5), PointId("five")}));
}

}  // namespace
}  // namespace cairn
