// raft_sim: runs the deterministic Raft simulator over a range of seeds and
// reports what it ran, what it injected and every violation found.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tests/simulation/simulator.h"

namespace {

constexpr const char* kUsage = R"(raft_sim: random Raft clusters under faults, checked as they run.

Each seed builds a group of 3 or 5 nodes (or --nodes), runs it with message
loss, duplication and reordering, partitions, crashes and restarts, membership
changes and snapshots while clients put, get and compare-and-set, then heals
everything and checks that all operations finished, all nodes converged and
the history is linearizable. The same seed always replays the same run.

  --first N         first seed (default 0)
  --seeds N         how many seeds (default 1000)
  --nodes N         node slots; 0 draws 3 or 5 per seed (default 0)
  --fault-ticks N   ticks with faults (default 500)
  --quiet-ticks N   healed ticks in which everything must finish (default 400)
  --clients N       concurrent clients (default 5)
  --no-partitions, --no-crashes, --no-message-faults, --no-membership, --no-snapshots
  --quiesce         idle groups go quiet; the driver wakes them as the node loop
                    does (keepalives each tick); clients pause between operations
  --trace N         print the last N events of a failing seed (default 0)
  --keep-going      run every seed even after a failure

Exit status: 0 when every seed passed, 1 otherwise.
)";

}  // namespace

int main(int argc, char** argv) {
  cairn::sim::SimOptions base;
  uint64_t first = 0, seeds = 1000;
  bool keep_going = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> uint64_t {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "raft_sim: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      char* end = nullptr;
      const uint64_t v = std::strtoull(argv[++i], &end, 10);
      if (*end != '\0') {
        std::fprintf(stderr, "raft_sim: %s: not a number: %s\n", a.c_str(), argv[i]);
        std::exit(2);
      }
      return v;
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--first") {
      first = value();
    } else if (a == "--seeds") {
      seeds = value();
    } else if (a == "--nodes") {
      base.nodes = static_cast<int>(value());
    } else if (a == "--fault-ticks") {
      base.fault_ticks = static_cast<int>(value());
    } else if (a == "--quiet-ticks") {
      base.quiet_ticks = static_cast<int>(value());
    } else if (a == "--clients") {
      base.clients = static_cast<int>(value());
    } else if (a == "--trace") {
      base.trace_lines = static_cast<int>(value());
    } else if (a == "--no-partitions") {
      base.partitions = false;
    } else if (a == "--no-crashes") {
      base.crashes = false;
    } else if (a == "--no-message-faults") {
      base.message_faults = false;
    } else if (a == "--no-membership") {
      base.membership = false;
    } else if (a == "--no-snapshots") {
      base.snapshots = false;
    } else if (a == "--quiesce") {
      base.quiesce = true;
    } else if (a == "--keep-going") {
      keep_going = true;
    } else {
      std::fprintf(stderr, "raft_sim: unknown option %s (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (base.nodes != 0 && (base.nodes < 1 || base.nodes > 9)) {
    std::fprintf(stderr, "raft_sim: --nodes must be 1..9\n");
    return 2;
  }

  const auto t0 = std::chrono::steady_clock::now();
  cairn::sim::SimStats total;
  uint64_t failed = 0, ran = 0;
  for (uint64_t seed = first; seed < first + seeds; ++seed) {
    cairn::sim::SimOptions o = base;
    o.seed = seed;
    cairn::sim::SimResult r = cairn::sim::RunSimulation(o);
    total.Add(r.stats);
    ++ran;
    if (!r.ok) {
      ++failed;
      std::printf("FAIL %s\n", r.violation.c_str());
      if (!r.trace.empty()) std::printf("last events:\n%s", r.trace.c_str());
      if (!keep_going) break;
    }
    if (ran % 1000 == 0) {
      std::fprintf(stderr, "raft_sim: %llu seeds, %llu failed\n", static_cast<unsigned long long>(ran),
                   static_cast<unsigned long long>(failed));
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("seeds %llu (from %llu), failed %llu, %.1f s\n%s\n", static_cast<unsigned long long>(ran),
              static_cast<unsigned long long>(first), static_cast<unsigned long long>(failed), secs,
              total.ToString().c_str());
  return failed == 0 ? 0 : 1;
}
