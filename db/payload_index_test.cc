// Tests for payload field access, condition matching over JSON (the scan
// path), and the payload index (the index path): the two must agree.
#include "db/payload_index.h"

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "db/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cairn::db {
namespace {

using testing_util::TestSeed;

std::vector<std::string> Dump(const std::vector<const Json*>& v) {
  std::vector<std::string> out;
  for (const Json* j : v) out.push_back(j->dump());
  return out;
}

TEST(FieldValuesTest, TopLevelDottedArraysAndMissing) {
  Json p = Json::parse(R"({"a": 1, "tags": ["x", null, "y"], "meta": {"lang": "en", "n": {"d": 2}},
                           "nul": null, "empty": [], "arr_of_obj": [{"b": 1}]})");
  EXPECT_THAT(Dump(FieldValues(p, "a")), ::testing::ElementsAre("1"));
  EXPECT_THAT(Dump(FieldValues(p, "tags")), ::testing::ElementsAre("\"x\"", "\"y\""));
  EXPECT_THAT(Dump(FieldValues(p, "meta.lang")), ::testing::ElementsAre("\"en\""));
  EXPECT_THAT(Dump(FieldValues(p, "meta.n.d")), ::testing::ElementsAre("2"));
  EXPECT_TRUE(FieldValues(p, "missing").empty());
  EXPECT_TRUE(FieldValues(p, "nul").empty());
  EXPECT_TRUE(FieldValues(p, "empty").empty());
  EXPECT_TRUE(FieldValues(p, "a.b").empty());          // through a scalar
  EXPECT_TRUE(FieldValues(p, "meta.missing").empty());
  EXPECT_TRUE(FieldValues(p, "arr_of_obj.b").empty());  // paths do not enter arrays
}

TEST(FieldValuesTest, KeysThatHoldDots) {
  Json p = Json::parse(R"({"a.b": 1, "x": {"y.z": {"w": 2}}, "m": {"n": 3}, "m.n": 4, "u.v.w": 5})");
  EXPECT_THAT(Dump(FieldValues(p, "a.b")), ::testing::ElementsAre("1"));
  EXPECT_THAT(Dump(FieldValues(p, "x.y.z.w")), ::testing::ElementsAre("2"));
  EXPECT_THAT(Dump(FieldValues(p, "m.n")), ::testing::UnorderedElementsAre("3", "4"));
  EXPECT_THAT(Dump(FieldValues(p, "u.v.w")), ::testing::ElementsAre("5"));
  EXPECT_TRUE(FieldValues(p, "a").empty());
  EXPECT_TRUE(FieldValues(p, "u.v").empty());
  EXPECT_TRUE(MatchesCondition(Condition::Match("a.b", int64_t{1}), p));
}

TEST(MatchesConditionTest, Basics) {
  Json p = Json::parse(R"({"lang": "en", "year": 2021, "score": 0.5, "ok": true,
                           "tags": ["a", "b"], "nums": [1, 5.5], "meta": {"x": 3}})");
  EXPECT_TRUE(MatchesCondition(Condition::Match("lang", std::string("en")), p));
  EXPECT_FALSE(MatchesCondition(Condition::Match("lang", std::string("de")), p));
  EXPECT_TRUE(MatchesCondition(Condition::Match("year", int64_t{2021}), p));
  EXPECT_TRUE(MatchesCondition(Condition::Match("year", 2021.0), p));  // numbers by value
  EXPECT_FALSE(MatchesCondition(Condition::Match("year", std::string("2021")), p));
  EXPECT_TRUE(MatchesCondition(Condition::Match("score", 0.5), p));
  EXPECT_TRUE(MatchesCondition(Condition::Match("ok", true), p));
  EXPECT_FALSE(MatchesCondition(Condition::Match("ok", int64_t{1}), p));
  EXPECT_TRUE(MatchesCondition(Condition::Match("tags", std::string("b")), p));
  EXPECT_TRUE(MatchesCondition(Condition::MatchAny("tags", {std::string("z"), std::string("a")}), p));
  EXPECT_FALSE(MatchesCondition(Condition::MatchAny("tags", {}), p));
  EXPECT_TRUE(MatchesCondition(Condition::Range("nums", 5.0, 6.0), p));
  EXPECT_FALSE(MatchesCondition(Condition::Range("nums", std::nullopt, std::nullopt, 5.5), p));
  EXPECT_TRUE(MatchesCondition(Condition::Range("meta.x", std::nullopt, 3.0), p));
  EXPECT_FALSE(MatchesCondition(Condition::Range("lang", -1e9, 1e9), p));  // not a number
  EXPECT_TRUE(MatchesCondition(Condition::IsNull("missing"), p));
  EXPECT_FALSE(MatchesCondition(Condition::IsNull("lang"), p));
  EXPECT_FALSE(MatchesCondition(Condition::Match("missing", std::string("en")), p));
}

TEST(ValidatePayloadTypesTest, AcceptsDeclaredTypesAndRejectsOthers) {
  std::vector<PayloadIndexSpec> specs = {{"k", PayloadType::kKeyword},
                                         {"i", PayloadType::kInteger},
                                         {"f", PayloadType::kFloat},
                                         {"b", PayloadType::kBool},
                                         {"m.k", PayloadType::kKeyword}};
  for (const char* ok : {R"({})", R"({"k": "x", "i": -3, "f": 1, "b": false, "m": {"k": "y"}})",
                         R"({"k": ["x", "y"], "i": [1, 2], "f": [1.5, 2], "b": [true]})",
                         R"({"k": null, "i": [], "f": 2.5, "m": 5, "other": {"any": [1, "x"]}})"}) {
    EXPECT_TRUE(ValidatePayloadTypes(specs, Json::parse(ok)).ok()) << ok;
  }
  for (const char* bad : {R"({"k": 1})", R"({"i": 1.5})", R"({"i": "1"})", R"({"i": 9223372036854775808})",
                          R"({"f": "1.0"})", R"({"b": 1})", R"({"k": ["x", 2]})", R"({"m": {"k": true}})",
                          R"({"k": {"nested": "x"}})", R"({"i": [[1]]})"}) {
    absl::Status s = ValidatePayloadTypes(specs, Json::parse(bad));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  // 2^60 as a double (how google.protobuf.Struct carries it): the message says why.
  absl::Status s = ValidatePayloadTypes(specs, Json::parse(R"({"i": 1.152921504606847e+18})"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("not an exact integer"), std::string::npos) << s;
  s = ValidatePayloadTypes(specs, Json::parse(R"({"i": 1.5})"));
  EXPECT_EQ(s.message().find("not an exact integer"), std::string::npos) << s;
}

// ---- index vs scan agreement on random data ---------------------------------

const std::vector<PayloadIndexSpec>& Specs() {
  static const auto* specs = new std::vector<PayloadIndexSpec>{
      {"kw", PayloadType::kKeyword},   {"n", PayloadType::kInteger},
      {"f", PayloadType::kFloat},      {"b", PayloadType::kBool},
      {"meta.lang", PayloadType::kKeyword}, {"meta.score", PayloadType::kFloat},
      {"meta.deep.n", PayloadType::kInteger}};
  return *specs;
}

class RandomPayloads {
 public:
  explicit RandomPayloads(uint64_t seed) : rng_(seed) {}

  int64_t Int() {
    static const int64_t edge[] = {0, 1, -1, 2, -2, 7, 100, -100,
                                   std::numeric_limits<int64_t>::max(),
                                   std::numeric_limits<int64_t>::min(),
                                   std::numeric_limits<int64_t>::max() - 1,
                                   int64_t{9210000000000000000}, -int64_t{9210000000000000000},
                                   int64_t{1} << 53, (int64_t{1} << 53) + 1};
    switch (rng_() % 4) {
      case 0: return edge[rng_() % std::size(edge)];
      default: return static_cast<int64_t>(rng_() % 21) - 10;
    }
  }
  double Float() {
    static const double edge[] = {0.0, -0.0, 0.5, -0.5, 1.0, 1e300, -1e300, 2.25, 1e-300, 3.0};
    switch (rng_() % 4) {
      case 0: return edge[rng_() % std::size(edge)];
      case 1: return static_cast<double>(static_cast<int64_t>(rng_() % 21) - 10);
      default: return static_cast<double>(static_cast<int64_t>(rng_() % 41) - 20) / 4.0;
    }
  }
  std::string Keyword() {
    static const char* words[] = {"en", "de", "fr", "", "a.b", "x y", "\xc3\xa9t\xc3\xa9"};
    return words[rng_() % std::size(words)];
  }
  Json Value(PayloadType t) {
    switch (t) {
      case PayloadType::kKeyword: return Keyword();
      case PayloadType::kInteger: return Int();
      case PayloadType::kFloat:
        // Float fields hold JSON integers too (small ones: see FloatFieldsOfLargeIntegers).
        return rng_() % 4 == 0 ? Json(static_cast<int64_t>(rng_() % 21) - 10) : Json(Float());
      case PayloadType::kBool: return rng_() % 2 == 0;
    }
    return nullptr;
  }
  // A valid value for the field: absent (discarded), null, scalar or array.
  std::optional<Json> Field(PayloadType t) {
    switch (rng_() % 6) {
      case 0: return std::nullopt;
      case 1: return Json(nullptr);
      case 2: {
        Json a = Json::array();
        size_t n = rng_() % 4;
        for (size_t i = 0; i < n; ++i) a.push_back(rng_() % 5 == 0 ? Json(nullptr) : Value(t));
        return a;
      }
      default: return Value(t);
    }
  }
  Json Payload() {
    Json p = Json::object();
    for (const auto& s : Specs()) {
      auto v = Field(s.type);
      if (!v) continue;
      if (s.field.find('.') == std::string::npos) {
        p[s.field] = *v;
      } else {
        // Set the dotted path, unless an earlier field made a parent a scalar.
        Json* cur = &p;
        size_t start = 0;
        bool ok = true;
        while (true) {
          size_t dot = s.field.find('.', start);
          std::string part = s.field.substr(start, dot == std::string::npos ? dot : dot - start);
          if (dot == std::string::npos) {
            (*cur)[part] = *v;
            break;
          }
          if (!cur->contains(part)) (*cur)[part] = Json::object();
          cur = &(*cur)[part];
          if (!cur->is_object()) {
            ok = false;
            break;
          }
          start = dot + 1;
        }
        (void)ok;
      }
    }
    // Sometimes a parent of the dotted fields is not an object at all.
    if (rng_() % 10 == 0) p["meta"] = Json("scalar");
    if (rng_() % 5 == 0) p["unindexed"] = Int();
    return p;
  }
  FieldValue AnyValue() {
    switch (rng_() % 4) {
      case 0: return Keyword();
      case 1: return Int();
      case 2: return Float();
      default: return rng_() % 2 == 0;
    }
  }
  std::optional<double> Bound() {
    if (rng_() % 2 == 0) return std::nullopt;
    switch (rng_() % 3) {
      case 0: return Float();
      case 1: return static_cast<double>(Int());
      default: return static_cast<double>(static_cast<int64_t>(rng_() % 21) - 10) + 0.5;
    }
  }
  Condition RandomCondition() {
    const auto& s = Specs()[rng_() % Specs().size()];
    switch (rng_() % 5) {
      case 0: {
        // Usually a value of the field's own type, sometimes of another.
        FieldValue v = AnyValue();
        if (rng_() % 2 == 0) {
          Json j = Value(s.type);
          if (j.is_string()) v = j.get<std::string>();
          else if (j.is_boolean()) v = j.get<bool>();
          else if (j.is_number_integer()) v = j.get<int64_t>();
          else v = j.get<double>();
        }
        return Condition::Match(s.field, v);
      }
      case 1: {
        std::vector<FieldValue> vs;
        size_t n = rng_() % 4;
        for (size_t i = 0; i < n; ++i) vs.push_back(AnyValue());
        return Condition::MatchAny(s.field, vs);
      }
      case 2:
      case 3: {
        auto gte = Bound(), lte = Bound(), gt = Bound(), lt = Bound();
        if (!gte && !lte && !gt && !lt) gte = Float();
        return Condition::Range(s.field, gte, lte, gt, lt);
      }
      default:
        return Condition::IsNull(s.field);
    }
  }
  std::mt19937_64& rng() { return rng_; }

 private:
  std::mt19937_64 rng_;
};

std::string Describe(const Condition& c) {
  Filter f;
  f.must.push_back(c);
  return f.ToJson();
}

// Checks Evaluate(c) == {live ids whose payload MatchesCondition(c)}.
void ExpectAgree(const PayloadIndex& index, const std::map<uint64_t, Json>& payloads,
                 const Bitmap& live, const Condition& c) {
  auto got = index.Evaluate(c, live);
  ASSERT_TRUE(got.has_value()) << Describe(c);
  Bitmap want;
  for (const auto& [id, p] : payloads) {
    if (live.contains(id) && MatchesCondition(c, p)) want.add(id);
  }
  if (*got == want) return;
  Bitmap extra = *got - want, missing = want - *got;
  std::string detail;
  for (uint64_t id : extra) {
    detail += "\n  index only: " + std::to_string(id) + " " + payloads.at(id).dump();
    break;
  }
  for (uint64_t id : missing) {
    detail += "\n  scan only: " + std::to_string(id) + " " + payloads.at(id).dump();
    break;
  }
  ADD_FAILURE() << "index and scan disagree on " << Describe(c) << ": " << extra.cardinality()
                << " extra, " << missing.cardinality() << " missing" << detail;
}

TEST(PayloadIndexTest, IndexAndScanAgreeOnRandomPayloadsAndConditions) {
  const uint64_t seed = TestSeed();
  RandomPayloads gen(seed);
  PayloadIndex index(Specs());
  std::map<uint64_t, Json> payloads;  // every point ever written, by internal id
  Bitmap live;
  auto add = [&](uint64_t id, const Json& p) {
    ASSERT_TRUE(ValidatePayloadTypes(Specs(), p).ok()) << p.dump();
    for (const auto& k : index.KeysFor(p, id)) ASSERT_TRUE(index.AddKey(k));
    payloads[id] = p;
    live.add(id);
  };
  auto remove = [&](uint64_t id) {
    for (const auto& k : index.KeysFor(payloads.at(id), id)) index.RemoveKey(k);
    live.remove(id);
  };
  uint64_t next = 1;
  for (int i = 0; i < 2000; ++i) add(next++, gen.Payload());
  // Delete some, and overwrite some (a new internal id, as the shard does).
  for (int i = 0; i < 400; ++i) {
    uint64_t id = 1 + gen.rng()() % (next - 1);
    if (!live.contains(id)) continue;
    remove(id);
    if (i % 2 == 0) add(next++, gen.Payload());
  }
  for (int i = 0; i < 3000; ++i) {
    Condition c = gen.RandomCondition();
    ExpectAgree(index, payloads, live, c);
    if (HasFailure()) {
      std::cout << "replay with CAIRN_TEST_SEED=" << seed << " (condition " << i << ")" << std::endl;
      return;
    }
  }

  // Rebuilding the index from its persisted keys (as a shard does on open)
  // gives the same answers.
  PayloadIndex reloaded(Specs());
  for (uint64_t id : live) {
    for (const auto& k : index.KeysFor(payloads.at(id), id)) ASSERT_TRUE(reloaded.AddKey(k));
  }
  for (int i = 0; i < 500; ++i) {
    Condition c = gen.RandomCondition();
    auto a = index.Evaluate(c, live), b = reloaded.Evaluate(c, live);
    ASSERT_TRUE(a && b);
    EXPECT_EQ(*a, *b) << Describe(c);
  }
}

TEST(PayloadIndexTest, LargeIntegersNearTheInt64Limits) {
  // Ranges and matches near +-9.2e18 (where a double no longer fits the
  // int64 range cleanly) must agree with the scan.
  PayloadIndex index({{"n", PayloadType::kInteger}});
  std::map<uint64_t, Json> payloads;
  Bitmap live;
  const int64_t values[] = {std::numeric_limits<int64_t>::max(), int64_t{9210000000000000000},
                            int64_t{9200000000000000000}, int64_t{1} << 62, 0,
                            -int64_t{9210000000000000000}, std::numeric_limits<int64_t>::min(),
                            (int64_t{1} << 53) + 1};
  uint64_t id = 1;
  for (int64_t v : values) {
    Json p = {{"n", v}};
    for (const auto& k : index.KeysFor(p, id)) ASSERT_TRUE(index.AddKey(k));
    payloads[id] = p;
    live.add(id);
    ++id;
  }
  const Condition conds[] = {
      Condition::Range("n", 9.205e18, std::nullopt),
      Condition::Range("n", std::nullopt, std::nullopt, 9.2e18),
      Condition::Range("n", 9.2e18, std::nullopt),
      Condition::Range("n", std::nullopt, -9.205e18),
      Condition::Range("n", 9.3e18, std::nullopt),
      Condition::Range("n", -1e19, 1e19),
      Condition::Match("n", 9.21e18),
      Condition::Match("n", -9.21e18),
      Condition::Match("n", int64_t{9210000000000000000}),
      Condition::Match("n", 9223372036854775807.0),  // 2^63: equals no int64
      // Numbers match by exact value: 2^53 + 1 is not 2^53, though
      // double(2^53 + 1) == 2^53.
      Condition::Match("n", 9007199254740992.0),
      Condition::Match("n", int64_t{9007199254740992}),
      Condition::Match("n", int64_t{9007199254740993}),
      Condition::MatchAny("n", {9007199254740992.0, std::string("x")}),
  };
  for (const auto& c : conds) ExpectAgree(index, payloads, live, c);
  EXPECT_FALSE(MatchesCondition(Condition::Match("n", 9007199254740992.0), payloads[8]));
  EXPECT_TRUE(MatchesCondition(Condition::Match("n", int64_t{9007199254740993}), payloads[8]));
  EXPECT_FALSE(MatchesCondition(Condition::Match("n", 9223372036854775807.0), payloads[1]));
}

TEST(MatchesConditionTest, NumbersMatchByExactValue) {
  Json p = Json::parse(R"({"i": 9007199254740993, "f": 9007199254740992.0, "u": 18446744073709551615,
                           "h": 9223372036854775808})");
  EXPECT_TRUE(MatchesCondition(Condition::Match("i", int64_t{9007199254740993}), p));
  EXPECT_FALSE(MatchesCondition(Condition::Match("i", 9007199254740992.0), p));
  EXPECT_TRUE(MatchesCondition(Condition::Match("f", int64_t{9007199254740992}), p));
  EXPECT_FALSE(MatchesCondition(Condition::Match("f", int64_t{9007199254740993}), p));
  EXPECT_FALSE(MatchesCondition(Condition::Match("u", int64_t{-1}), p));
  EXPECT_TRUE(MatchesCondition(Condition::Match("h", 9223372036854775808.0), p));
  // Ranges compare as doubles (their bounds are doubles).
  EXPECT_TRUE(MatchesCondition(Condition::Range("i", 9007199254740992.0, 9007199254740992.0), p));
}

TEST(PayloadIndexTest, EvaluateReturnsNulloptForUnindexedFields) {
  PayloadIndex index({{"kw", PayloadType::kKeyword}});
  EXPECT_TRUE(index.Indexed("kw"));
  EXPECT_FALSE(index.Indexed("other"));
  Bitmap live;
  EXPECT_FALSE(index.Evaluate(Condition::Match("other", std::string("x")), live).has_value());
  EXPECT_TRUE(index.Evaluate(Condition::Match("kw", std::string("x")), live).has_value());
}

TEST(PayloadIndexTest, AddKeyRejectsMalformedAndUndeclared) {
  PayloadIndex index({{"kw", PayloadType::kKeyword}});
  PayloadIndex other({{"zz", PayloadType::kKeyword}});
  auto keys = other.KeysFor(Json{{"zz", "v"}}, 1);
  ASSERT_FALSE(keys.empty());
  EXPECT_FALSE(index.AddKey(keys[0]));  // undeclared field
  EXPECT_FALSE(index.AddKey(""));
  EXPECT_FALSE(index.AddKey("short"));
  EXPECT_FALSE(index.AddKey(std::string("\x40kw", 3) + std::string(8, '\0')));  // length past end
  auto good = index.KeysFor(Json{{"kw", "v"}}, 1);
  for (const auto& k : good) EXPECT_TRUE(index.AddKey(k));
  EXPECT_GT(index.MemoryBytes(), 0u);
}

TEST(PayloadIndexTest, RemoveKeyForgetsOnlyThatPoint) {
  PayloadIndex index({{"kw", PayloadType::kKeyword}, {"n", PayloadType::kInteger}});
  Json p = {{"kw", "a"}, {"n", 5}};
  for (uint64_t id : {1, 2}) {
    for (const auto& k : index.KeysFor(p, id)) index.AddKey(k);
  }
  for (const auto& k : index.KeysFor(p, 1)) index.RemoveKey(k);
  Bitmap live;
  live.add(uint64_t{2});
  auto m = index.Evaluate(Condition::Match("kw", std::string("a")), live);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->cardinality(), 1u);
  EXPECT_TRUE(m->contains(uint64_t{2}));
  auto r = index.Evaluate(Condition::Range("n", 5.0, 5.0), live);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->contains(uint64_t{2}));
  EXPECT_FALSE(r->contains(uint64_t{1}));
  auto nul = index.Evaluate(Condition::IsNull("n"), live);
  ASSERT_TRUE(nul);
  EXPECT_TRUE(nul->isEmpty());
}

}  // namespace
}  // namespace cairn::db
