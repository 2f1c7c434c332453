// A deterministic simulator of a Raft group: N nodes driven by the real
// Raft core over MemoryStorage, virtual time, a seeded network that delays,
// drops, duplicates and reorders messages and partitions node sets, crashes
// and restarts that keep only what was persisted, membership changes, log
// compaction with snapshots, and clients running puts, gets (ReadIndex or
// through the log) and compare-and-sets against a replicated key-value store,
// retrying with sessions.
//
// Invariants are checked as the run goes: at most one leader per term;
// state machine safety (no two nodes apply different entries at an index,
// every node applies indexes in order); leader completeness (a new leader
// holds every entry applied anywhere); log matching between live nodes; a
// node's commit index never goes back, across crashes too. At the end the
// network heals and every node restarts; every client's operation must then
// finish, every node must converge to the same state, and the recorded
// history must be linearizable.
//
// The same options always replay the same run.
#ifndef CAIRN_TESTS_SIMULATION_SIMULATOR_H_
#define CAIRN_TESTS_SIMULATION_SIMULATOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "tests/simulation/linearizability.h"

namespace cairn::sim {

struct SimOptions {
  uint64_t seed = 1;
  // Node slots (3 or 5 drawn from the seed when 0). With membership changes,
  // 3 start as voters and the others join and leave.
  int nodes = 0;
  // Ticks with faults, then ticks healed and quiet in which everything must finish.
  int fault_ticks = 500;
  int quiet_ticks = 400;
  int clients = 5;
  int keys = 3;
  bool partitions = true;
  bool crashes = true;
  bool message_faults = true;  // drop, duplicate, delay/reorder
  bool membership = true;
  bool snapshots = true;
  // Idle groups go quiet (raft::Config::quiesce), and the driver plays the
  // node loop's part: a keepalive from every live node to every other each
  // tick (lost as messages are, cut by partitions), a quiet follower woken
  // when it has not heard its leader's node for an election timeout, a quiet
  // leader when a member is heard again after 3 ticks of silence or a voter
  // has been silent for an election timeout. Clients
  // pause up to 40 ticks between operations so that the group goes idle.
  bool quiesce = false;
  // Keep the last `trace_lines` events, printed with a violation.
  int trace_lines = 0;
  // A broken driver, to show the checks can fail: it never persists the term
  // and vote (only the commit index).
  bool unsafe_skip_persistence = false;
};

struct SimStats {
  uint64_t steps = 0;  // messages delivered + ticks + client calls
  uint64_t messages = 0;
  uint64_t dropped = 0;
  uint64_t duplicated = 0;
  uint64_t partitions = 0;
  uint64_t crashes = 0;
  uint64_t leaders = 0;  // elections won
  uint64_t conf_changes = 0;
  uint64_t snapshots_sent = 0;
  uint64_t snapshots_taken = 0;
  uint64_t ops_completed = 0;
  uint64_t ops_unfinished = 0;  // given up on (only during faults)
  uint64_t reads_via_read_index = 0;
  uint64_t quiesced = 0;  // times a replica went quiet
  uint64_t woken = 0;     // times the driver woke one (a silent leader, a member back)
  uint64_t max_term = 0;
  uint64_t committed = 0;  // highest index applied anywhere

  void Add(const SimStats& o);
  std::string ToString() const;
};

struct SimResult {
  bool ok = true;
  std::string violation;  // empty when ok
  std::string trace;      // the last events, when asked for
  SimStats stats;
  std::vector<HistoryOp> history;
};

SimResult RunSimulation(const SimOptions& options);

}  // namespace cairn::sim

#endif  // CAIRN_TESTS_SIMULATION_SIMULATOR_H_
