// A linearizability checker for key-value histories: Wing & Gong's search
// with Lowe's memoization of (linearized set, state), as in Knossos and
// Porcupine. The history splits by key (a key-value store is linearizable iff
// each key is), and each key is checked on its own.
//
// An operation that never returned (its client gave up, or the run ended)
// may have taken effect at any time after its call, or never: it gets an
// infinite return time and any output.
#ifndef CAIRN_TESTS_SIMULATION_LINEARIZABILITY_H_
#define CAIRN_TESTS_SIMULATION_LINEARIZABILITY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "tests/simulation/kv_model.h"

namespace cairn::sim {

struct HistoryOp {
  uint64_t client = 0;
  KvOp op;
  std::string output;  // as KvStateMachine returns it
  bool completed = false;
  uint64_t call = 0;  // distinct, increasing event times
  uint64_t ret = 0;   // ignored when !completed
};

struct LinearizabilityResult {
  bool ok = true;
  std::string key;          // the first key that fails
  std::string explanation;  // its operations, for a person to read
  uint64_t states_explored = 0;
  bool gave_up = false;  // the search passed max_states: no verdict (ok stays true)
};

LinearizabilityResult CheckKvLinearizable(const std::vector<HistoryOp>& history, uint64_t max_states = 5'000'000);

}  // namespace cairn::sim

#endif  // CAIRN_TESTS_SIMULATION_LINEARIZABILITY_H_
