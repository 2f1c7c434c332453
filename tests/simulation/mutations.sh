#!/usr/bin/env bash
# Breaks the Raft core on purpose, one line at a time, and reports which
# checks notice: the simulator (2,000 seeds), the unit tests and the scripted
# scenarios. Works on a copy of the tree in a temporary directory; the
# working tree is never touched.
#
#   tests/simulation/mutations.sh [SEEDS]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SEEDS="${1:-2000}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
tar -C "$ROOT" --exclude='./build*' --exclude='./bench/out' --exclude='./data' --exclude='./.git' -cf - . | tar -C "$WORK" -xf -
cmake -S "$WORK" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCAIRN_CUDA=OFF -DCAIRN_BUILD_BENCH=OFF >/dev/null
PY="${PYTHON:-/usr/bin/python3}"

# name # file # exact text # replacement
MUTATIONS=(
  "no election restriction (§5.4.1)#replication/raft_log.cc#return last_term > our_term || (last_term == our_term && last_index >= LastIndex());#return true;"
  "ReadIndex answered without the heartbeat round#replication/raft.cc#  if (LeaseValid()) {#  if (true) {"
  "a vote granted twice in a term#replication/raft.cc#const bool can_vote = vote_ == m.from ||#const bool can_vote = true || vote_ == m.from ||"
  "a membership change while one is pending#replication/raft.cc#if (pending_conf_index_ > log_.applied()) {#if (false) {"
  "old-term entries committed by counting (§5.4.2)#replication/raft_log.cc#if (index > committed_ && TermOrZero(index) == term) {#if (index > committed_ && TermOrZero(index) <= term) {"
  "a lease that ignores the age of the acks#replication/raft.cc#return oldest_in_quorum > 0 && ticks_ + 1 < oldest_in_quorum + static_cast<uint64_t>(cfg_.election_tick);#return true;"
  "votes not refused during a leader's lease#replication/raft.cc#if (!force && in_lease) return absl::OkStatus();#if (false) return absl::OkStatus();"
  "a follower commits past the entries the message matched#replication/raft_log.cc#CommitTo(std::min(commit, last_new));#CommitTo(std::min(commit, LastIndex()));"
)

for m in "${MUTATIONS[@]}"; do
  IFS='#' read -r name file from to <<<"$m"
  cp "$WORK/$file" "$WORK/$file.orig"
  "$PY" - "$WORK/$file" "$from" "$to" <<'PYEOF'
import sys
path, old, new = sys.argv[1:4]
s = open(path).read()
if s.count(old) != 1:
    sys.exit(f"mutation target not found once in {path}: {old}")
open(path, "w").write(s.replace(old, new))
PYEOF
  cmake --build "$WORK/build" --target raft_sim replication_test simulation_test >/dev/null
  sim=$("$WORK/build/bin/raft_sim" --seeds "$SEEDS" --keep-going 2>/dev/null | grep -c '^FAIL' || true)
  unit=$("$WORK/build/bin/replication_test" 2>/dev/null | grep -c '^\[  FAILED  \] [A-Za-z].*ms)$' || true)
  scen=$("$WORK/build/bin/simulation_test" --gtest_filter='Scen*' 2>/dev/null | grep -c '^\[  FAILED  \] Scen.*ms)$' || true)
  printf '%-58s simulator %4s of %s seeds   unit tests %2s   scenarios %s\n' "$name:" "$sim" "$SEEDS" "$unit" "$scen"
  mv "$WORK/$file.orig" "$WORK/$file"
  touch "$WORK/$file"  # newer than the mutant's objects, so the next build recompiles it
done
