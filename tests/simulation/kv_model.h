// The replicated key-value state machine the simulator's clients use: puts,
// gets and compare-and-sets on string keys, with per-client sessions so a
// retried command applies at most once (dissertation §6.3).
#ifndef CAIRN_TESTS_SIMULATION_KV_MODEL_H_
#define CAIRN_TESTS_SIMULATION_KV_MODEL_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace cairn::sim {

struct KvOp {
  enum class Kind : uint8_t { kPut, kGet, kCas };
  Kind kind = Kind::kPut;
  std::string key;
  std::string value;     // put: the value; cas: the new value
  std::string expected;  // cas: the value it must hold now
};

std::string DescribeOp(const KvOp& op);

// A client command as a log entry carries it.
struct Command {
  uint64_t client = 0;
  uint64_t seq = 0;
  KvOp op;
};

std::string EncodeCommand(const Command& c);
// nullopt for data that is no command (the leader's empty no-op).
std::optional<Command> DecodeCommand(std::string_view data);

// Results: put "ok"; cas "ok" or "fail"; get the value or kAbsent.
inline constexpr std::string_view kAbsent = "<absent>";

class KvStateMachine {
 public:
  // Applies a command once; a command already applied (same client, seq)
  // returns its first result again.
  std::string Apply(const Command& c);
  std::string Read(const std::string& key) const;
  // The whole state, for snapshots; Restore("") is the empty state.
  std::string Serialize() const;
  static KvStateMachine Restore(std::string_view data);

  bool operator==(const KvStateMachine&) const = default;

 private:
  std::map<std::string, std::string> data_;
  std::map<uint64_t, std::pair<uint64_t, std::string>> sessions_;  // client -> (last seq, its result)
};

}  // namespace cairn::sim

#endif  // CAIRN_TESTS_SIMULATION_KV_MODEL_H_
