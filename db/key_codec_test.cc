// Tests for the shard's key encodings, including the order-preserving number
// encodings of the payload index (observed through the keys it produces).
#include "db/key_codec.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "db/payload_index.h"
#include "db/test_util.h"
#include "gtest/gtest.h"

namespace cairn::db {
namespace {

using testing_util::TestSeed;

TEST(KeyCodecTest, InternalKeyIsBigEndianAndRoundTrips) {
  EXPECT_EQ(InternalKey(0x0102030405060708ull), std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8));
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, uint64_t{255}, uint64_t{256}, ~uint64_t{0}}) {
    EXPECT_EQ(InternalKey(v).size(), 8u);
    EXPECT_EQ(DecodeInternalKey(InternalKey(v)), v);
  }
}

TEST(KeyCodecTest, InternalKeyOrderMatchesNumericOrder) {
  std::mt19937_64 rng(TestSeed());
  for (int i = 0; i < 10000; ++i) {
    // Mix full-range values with small ones so both byte positions matter.
    uint64_t a = rng() >> (rng() % 64), b = rng() >> (rng() % 64);
    EXPECT_EQ(a < b, InternalKey(a) < InternalKey(b)) << a << " vs " << b;
    EXPECT_EQ(DecodeInternalKey(InternalKey(a)), a);
  }
}

TEST(KeyCodecTest, ExternalKeysKeepNumbersAndStringsApart) {
  EXPECT_NE(ExternalKey(PointId(7)), ExternalKey(PointId("7")));
  for (const PointId& id : {PointId(0), PointId(7), PointId(~uint64_t{0}), PointId("7"),
                            PointId("doc-1#chunk"), PointId(std::string(256, 'x')),
                            PointId(std::string("\0\xff", 2))}) {
    auto back = DecodeExternalKey(ExternalKey(id));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, id) << id.ToString();
  }
  // Numeric ids sort numerically, before every string id.
  EXPECT_LT(ExternalKey(PointId(2)), ExternalKey(PointId(10)));
  EXPECT_LT(ExternalKey(PointId(~uint64_t{0})), ExternalKey(PointId("0")));
  for (std::string_view bad : {std::string_view(""), std::string_view("n123"),
                               std::string_view("s"), std::string_view("x12345678")}) {
    auto r = DecodeExternalKey(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << bad;
  }
}

TEST(KeyCodecTest, PointIdToString) {
  EXPECT_EQ(PointId(42).ToString(), "42");
  EXPECT_EQ(PointId("abc").ToString(), "\"abc\"");
}

TEST(KeyCodecTest, PayloadValueRoundTrip) {
  std::string_view payload, text;
  std::string v = EncodePayloadValue("{\"a\":1}", "some text");
  ASSERT_TRUE(DecodePayloadValue(v, &payload, &text));
  EXPECT_EQ(payload, "{\"a\":1}");
  EXPECT_EQ(text, "some text");
  v = EncodePayloadValue("", "");
  ASSERT_TRUE(DecodePayloadValue(v, &payload, &text));
  EXPECT_EQ(payload, "");
  EXPECT_EQ(text, "");
  // Malformed: shorter than the length prefix, or a length past the end.
  EXPECT_FALSE(DecodePayloadValue("ab", &payload, &text));
  std::string bad = EncodePayloadValue("{}", "");
  bad.pop_back();
  EXPECT_FALSE(DecodePayloadValue(bad, &payload, &text));
}

TEST(KeyCodecTest, EncodeVectorIsRawFloats) {
  std::vector<float> v = {1.5f, -2.0f, 0.0f};
  std::string e = EncodeVector(v);
  ASSERT_EQ(e.size(), 12u);
  std::vector<float> back(3);
  std::memcpy(back.data(), e.data(), 12);
  EXPECT_EQ(back, v);
}

TEST(KeyCodecTest, StableHashIsFnv1a64) {
  // Routing depends on these values never changing.
  EXPECT_EQ(StableHash(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(StableHash("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(StableHash("foobar"), 0x85944171f73967e8ull);
}

// The payload index's number encoding, as the bytes between the tag and the
// internal id of the key KeysFor produces.
std::string NumberKey(PayloadType type, const Json& value) {
  PayloadIndex index({{"x", type}});
  Json payload = {{"x", value}};
  std::string want_prefix = std::string(1, '\x01') + "x";
  for (const auto& k : index.KeysFor(payload, 7)) {
    char tag = k[want_prefix.size()];
    if (tag == 'i' || tag == 'f') return k.substr(want_prefix.size() + 1, 8);
  }
  ADD_FAILURE() << "no number key for " << value.dump();
  return "";
}

TEST(KeyCodecTest, IntegerIndexKeysPreserveOrderIncludingNegatives) {
  std::vector<int64_t> values = {std::numeric_limits<int64_t>::min(), -(int64_t{1} << 40), -256, -255,
                                 -1, 0, 1, 255, 256, int64_t{1} << 40,
                                 std::numeric_limits<int64_t>::max()};
  std::mt19937_64 rng(TestSeed());
  for (int i = 0; i < 200; ++i) values.push_back(static_cast<int64_t>(rng()) >> (rng() % 63));
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  for (size_t i = 1; i < values.size(); ++i) {
    EXPECT_LT(NumberKey(PayloadType::kInteger, values[i - 1]),
              NumberKey(PayloadType::kInteger, values[i]))
        << values[i - 1] << " vs " << values[i];
  }
}

TEST(KeyCodecTest, FloatIndexKeysPreserveOrderIncludingNegatives) {
  std::vector<double> values = {-std::numeric_limits<double>::max(), -1e300, -2.5, -1.0, -1e-300,
                                -std::numeric_limits<double>::denorm_min(), 0.0,
                                std::numeric_limits<double>::denorm_min(), 1e-300, 0.5, 1.0, 2.5,
                                1e300, std::numeric_limits<double>::max()};
  std::mt19937_64 rng(TestSeed());
  std::normal_distribution<double> g(0, 1e6);
  for (int i = 0; i < 200; ++i) values.push_back(g(rng));
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  for (size_t i = 1; i < values.size(); ++i) {
    EXPECT_LT(NumberKey(PayloadType::kFloat, values[i - 1]), NumberKey(PayloadType::kFloat, values[i]))
        << values[i - 1] << " vs " << values[i];
  }
  // -0.0 sorts with (not after) +0.0.
  EXPECT_LE(NumberKey(PayloadType::kFloat, -0.0), NumberKey(PayloadType::kFloat, 0.0));
  EXPECT_LT(NumberKey(PayloadType::kFloat, -1e-300), NumberKey(PayloadType::kFloat, -0.0));
}

TEST(KeyCodecTest, NumberKeysDecodeBackThroughTheIndex) {
  // AddKey decodes what KeysFor encoded: a range query finds each value.
  for (double v : {-1e300, -2.5, -0.0, 0.0, 3.25, 1e300}) {
    PayloadIndex index({{"x", PayloadType::kFloat}});
    for (const auto& k : index.KeysFor(Json{{"x", v}}, 9)) ASSERT_TRUE(index.AddKey(k));
    Bitmap live;
    live.add(uint64_t{9});
    auto b = index.Evaluate(Condition::Range("x", v, v), live);
    ASSERT_TRUE(b.has_value());
    EXPECT_TRUE(b->contains(uint64_t{9})) << v;
  }
  for (int64_t v : {std::numeric_limits<int64_t>::min(), int64_t{-5}, int64_t{0}, int64_t{77},
                    std::numeric_limits<int64_t>::max()}) {
    PayloadIndex index({{"x", PayloadType::kInteger}});
    for (const auto& k : index.KeysFor(Json{{"x", v}}, 9)) ASSERT_TRUE(index.AddKey(k));
    Bitmap live;
    live.add(uint64_t{9});
    auto b = index.Evaluate(Condition::Match("x", v), live);
    ASSERT_TRUE(b.has_value());
    EXPECT_TRUE(b->contains(uint64_t{9})) << v;
  }
}

}  // namespace
}  // namespace cairn::db
