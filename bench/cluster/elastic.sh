#!/usr/bin/env bash
# The elastic cluster on this machine (every node on loopback, sharing its
# cores), one collection of 3 shards x 3 replicas, flat index, DIM-d points:
#  1. rebalance: N points on 3 nodes, a 4th node joins; the time until the
#     controller has moved its share onto it (no operation left, every node
#     holding 2 or 3 replicas) and the bytes it then holds;
#  2. re-replication: with 4 nodes, one is killed (kill -9) and stays down;
#     --dead-node-timeout is 5 s: the time from the kill until every shard has
#     3 replicas on live nodes again (the timeout included);
#  3. writes during moves: the same M points ingested (cairn ingest, one
#     client) into the quiet 4-node cluster, then again while a 5th node joins
#     and replicas move onto it: records/s both ways, and the errors the
#     client saw.
# Logs are compacted every 100 entries (--raft-log-compact-entries), so that a
# new replica is copied as a large shard's would be: from the leader's files
# (a snapshot, fetched at most --snapshot-max-mbps 64), not by replaying its log.
# Usage: bench/cluster/elastic.sh [N=200000] [M=200000] [DIM=64]   (after make)
set -euo pipefail
n=${1:-200000}; m=${2:-200000}; dim=${3:-64}
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/bench/cluster/common.sh"
gen_fvecs "$work/a.fvecs" "$n" "$dim" 1
gen_fvecs "$work/b.fvecs" "$m" "$dim" 2
seeds=127.0.0.1:7702,127.0.0.1:7712,127.0.0.1:7722
declare -A node
start_node() {  # I
  "$bin/cairnd" --cluster --node-name "n$1" --data-dir "$work/n$1" --listen "127.0.0.1:77$1""0" \
    --http-listen "127.0.0.1:77$1""1" --peer-listen "127.0.0.1:77$1""2" --seeds "$seeds" \
    --dead-node-timeout 5s --raft-log-compact-entries 100 --snapshot-max-mbps 64 --insecure-no-auth >>"$work/n$1.log" 2>&1 &
  pids+=($!); node[$1]=$!
}
status_json() { "$bin/cairn" --target 127.0.0.1:7700 cluster status --json; }
# Whether the cluster has settled: no operation, every shard at 3 replicas
# on nodes other than $1 (if given), each live node holding $2..$3 replicas.
settled() {  # [AVOID_NAME] [MIN] [MAX]
  status_json | "${PYTHON:-/usr/bin/python3}" -c '
import json, sys
avoid, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
st = json.load(sys.stdin)
names = {n["id"]: n["name"] for n in st["nodes"]}
ok = not st.get("operations")
for g in st["groups"]:
    if g["collection"]:
        reps = g["replicas"]
        ok = ok and len(reps) == 3 and all(names.get(r["node_id"]) != avoid and int(r["lag"]) == 0 for r in reps)
for n in st["nodes"]:
    if n["state"] == "active" and n["name"] != avoid:
        ok = ok and lo <= int(n["replicas"]) <= hi
sys.exit(0 if ok else 1)' "${1:-}" "${2:-0}" "${3:-99}"
}
await_settled() {  # AVOID MIN MAX: seconds until settled()
  local t0; t0=$(now_ms)
  for _ in $(seq 3000); do
    settled "$@" && { calc "($(now_ms) - $t0) / 1000"; return 0; }
    sleep 0.1
  done
  echo "did not settle in 5 minutes:" >&2; "$bin/cairn" --target 127.0.0.1:7700 cluster status >&2; exit 1
}
bytes_of() {  # NAME
  status_json | "${PYTHON:-/usr/bin/python3}" -c '
import json, sys
print(sum(int(n["bytes"]) for n in json.load(sys.stdin)["nodes"] if n["name"] == sys.argv[1] and n["state"] != "removed"))' "$1"
}
snapshots_installed() {  # HTTP_PORT
  curl -sf "http://127.0.0.1:$1/metrics" | awk 'index($0, "cairn_raft_snapshots_installed_total{") == 1 {s += $2} END {printf "%.0f", s}'
}
ingest_rate() {  # FILE START_ID: records/s and errors+retries of one cairn ingest
  "$bin/cairn" --target 127.0.0.1:7700 ingest --collection v --start-id "$2" --json "$1" 2>/dev/null |
    "${PYTHON:-/usr/bin/python3}" -c '
import json, sys
r = json.load(sys.stdin)
print("%.0f %d" % (r["records_per_second"], int(r.get("errors", 0)) + int(r.get("retries", 0))))'
}

for i in 0 1 2; do start_node $i; done
for i in 0 1 2; do ready "77$i""1"; done
"$bin/cairn" --target 127.0.0.1:7700 collection create v --dim "$dim" --index flat --shards 3 >/dev/null
"$bin/cairn" --target 127.0.0.1:7700 ingest --collection v "$work/a.fvecs" >/dev/null 2>&1
sleep 12  # every replica measures its bytes every 10 s
echo "1. rebalance: $n points ($(bytes_of n0) bytes on each of 3 nodes), a 4th node joins"
t0=$(now_ms)
start_node 3
ready 7731
t=$(await_settled "" 2 3)
echo "   settled $(calc "($(now_ms) - $t0) / 1000") s after the start (join: $(calc "$(calc "($(now_ms) - $t0) / 1000") - $t") s), the 4th node holding $(sleep 11; bytes_of n3) bytes, $(snapshots_installed 7731) replicas copied as snapshots"

echo "2. re-replication: n3 killed (dead after 5 s)"
kill -9 "${node[3]}"; wait "${node[3]}" 2>/dev/null || true
t=$(await_settled n3 3 3)
echo "   every shard at 3 replicas on live nodes $t s after the kill"
rm -rf "$work/n3"
start_node 3  # a new node under the old name: it replaces the dead one
ready 7731
await_settled "" 2 3 >/dev/null

echo "3. writes: $m points, quiet, then while a 5th node joins"
read -r quiet quiet_err < <(ingest_rate "$work/b.fvecs" "$n")
ingest_rate "$work/b.fvecs" "$((n + m))" >"$work/moving" &
ingester=$!
start_node 4
wait "$ingester"
read -r moving moving_err <"$work/moving"
ops=$(status_json | "${PYTHON:-/usr/bin/python3}" -c 'import json,sys; print(len(json.load(sys.stdin).get("operations", [])))')
echo "   quiet: $quiet records/s ($quiet_err errors and retries); during moves: $moving records/s" \
  "($moving_err errors and retries; $ops operations still under way at the end); ratio $(calc "$moving / $quiet")"
await_settled "" 1 2 >/dev/null
count=$("$bin/cairn" --target 127.0.0.1:7740 collection info v | grep -o '"points": *"*[0-9]*' | grep -o '[0-9]*$')
[ "$count" = "$((n + 2 * m))" ] || { echo "the cluster counts $count points, not $((n + 2 * m))" >&2; exit 1; }
echo "   settled; $count points counted through the 5th node"
echo "N=$n, M=$m, DIM=$dim; 3 shards x 3 replicas, flat index, snapshots at most 64 MiB/s"
