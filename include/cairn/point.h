// Points: what a collection stores, and what searches return.
#ifndef CAIRN_POINT_H_
#define CAIRN_POINT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace cairn {

// A point's identifier, chosen by the client: an unsigned 64-bit integer or a
// string (a UUID, a document chunk key, ...). The integer 7 and the string "7"
// are different ids. Strings are 1..256 bytes.
class PointId {
 public:
  PointId() : v_(uint64_t{0}) {}
  PointId(uint64_t n) : v_(n) {}                   // NOLINT: implicit by design
  PointId(int n) : v_(static_cast<uint64_t>(n)) {}  // NOLINT: literals
  PointId(std::string s) : v_(std::move(s)) {}     // NOLINT
  PointId(const char* s) : v_(std::string(s)) {}   // NOLINT

  bool is_number() const { return std::holds_alternative<uint64_t>(v_); }
  uint64_t number() const { return std::get<uint64_t>(v_); }
  const std::string& str() const { return std::get<std::string>(v_); }
  // "42" for numbers, "\"abc\"" for strings: unambiguous in messages.
  std::string ToString() const;

  friend bool operator==(const PointId& a, const PointId& b) { return a.v_ == b.v_; }
  friend bool operator<(const PointId& a, const PointId& b) { return a.v_ < b.v_; }

 private:
  std::variant<uint64_t, std::string> v_;
};

// One point to upsert.
struct Point {
  PointId id;
  // Exactly `dimension` finite floats.
  std::vector<float> vector;
  // A JSON object, or empty for none. Filters read it; searches may return it.
  std::string payload;
  // The original text chunk, stored beside the point and returned with it.
  std::string text;
};

// A stored point, as Get and Scroll return it.
struct Record {
  PointId id;
  std::vector<float> vector;  // empty unless asked for
  std::string payload;        // "" unless asked for; "{}" when none was set
  std::string text;           // "" unless asked for
};

// One search result.
struct ScoredPoint {
  PointId id;
  // Distance or similarity, by the collection's metric (see Metric).
  float score = 0;
  std::string payload;        // when SearchParams::with_payload
  std::string text;           // when SearchParams::with_payload
  std::vector<float> vector;  // when SearchParams::with_vector
};

}  // namespace cairn

#endif  // CAIRN_POINT_H_
