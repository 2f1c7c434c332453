#!/usr/bin/env bash
# The elastic cluster on this machine (every node on loopback, sharing its
# cores), one collection of 3 shards x 3 replicas, flat index, DIM-d points:
#  1. rebalance: N points on 3 nodes, a 4th node joins; the time until the
#     controller has moved its share onto it (no operation left, every node
#     holding 2 or 3 replicas) and the bytes it then holds;
#  2. re-replication: with 4 nodes, one is killed (kill -9) and stays down;
#     --dead-node-timeout is 5 s: the time from the kill until every shard has
#     3 replicas on live nodes again (the timeout included);
#  3. writes and searches during moves: one client searching (k=10) and one
#     writing (2 threads, 500 new points a call), each call logged
#     (grpc_bench --load), first on the quiet 4-node cluster for QUIET seconds,
#     then while a 5th node joins and replicas move onto it: points written/s,
#     searches/s and the p99 of each in both windows; the calls that failed;
#  4. a split: the same on the settled 5-node cluster, quiet, then while
#     `cairn collection split v --wait` splits its 3 shards into 6 (measured
#     from the split's start to its end); the time the split took, and searches
#     on the 6 shards after it (no writes).
# Logs are compacted every 100 entries (--raft-log-compact-entries), so that a
# new replica is copied as a large shard's would be: from the leader's files
# (a snapshot, fetched at most --snapshot-max-mbps 64), not by replaying its log.
# Usage: bench/cluster/elastic.sh [N=200000] [DIM=64] [QUIET=6]   (after make)
set -euo pipefail
n=${1:-200000}; dim=${2:-64}; quiet=${3:-6}
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/bench/cluster/common.sh"
gen_fvecs "$work/a.fvecs" "$n" "$dim" 1
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
window() {  # LOG FROM_MS TO_MS: calls/s, p99 ms and failed calls in that window
  "${PYTHON:-/usr/bin/python3}" - "$@" <<'PY'
import sys
lo, hi = int(sys.argv[2]), int(sys.argv[3])
lat, bad = [], 0
for line in open(sys.argv[1]):
    t, ms, ok = line.split()
    if lo <= int(t) < hi:
        if ok == "1":
            lat.append(float(ms))
        else:
            bad += 1
lat.sort()
p99 = lat[min(len(lat) - 1, len(lat) * 99 // 100)] if lat else 0
print("%.1f %.2f %d" % (len(lat) / max((hi - lo) / 1000, 1e-3), p99, bad))
PY
}
batch=500
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

count_points() {  # I: the points of v, counted through node I
  "$bin/cairn" --target "127.0.0.1:77$1""0" collection info v | grep -o '"points": *"*[0-9]*' | grep -o '[0-9]*$'
}
json_field() {  # FILE FIELD
  "${PYTHON:-/usr/bin/python3}" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# One client searches and one writes (new ids from FIRST_ID on) for QUIET
# seconds, then while CMD... runs; then the writer stops and the searcher
# goes on alone for 4 s. Sets q0/q1 (the quiet window), busy0/busy1 (CMD's)
# and after0/after1 (searches alone, after CMD); the calls are in
# $work/NAME.search and $work/NAME.write.
under_load() {  # NAME FIRST_ID CMD...
  local name=$1 first=$2 search_pid write_pid
  shift 2
  "$bin/grpc_bench" --target 127.0.0.1:7700 --load v 3600 --threads 1 \
    --latency-log "$work/$name.search" >"$work/$name.search.json" &
  pids+=($!); search_pid=$!
  "$bin/grpc_bench" --target 127.0.0.1:7700 --load v 3600 --threads 2 --writes "$first" "$batch" \
    --latency-log "$work/$name.write" >"$work/$name.write.json" &
  pids+=($!); write_pid=$!
  sleep 1
  q0=$(now_ms); sleep "$quiet"; q1=$(now_ms)
  busy0=$(now_ms)
  "$@"
  busy1=$(now_ms)
  kill -TERM "$write_pid"; wait "$write_pid"
  after0=$(now_ms); sleep 4; after1=$(now_ms)
  kill -TERM "$search_pid"; wait "$search_pid"
}
report() {  # NAME WHAT: writes and searches, quiet and during CMD
  local qw qwp qwe bw bwp bwe qs qp qse bs bp bse
  read -r qw qwp qwe <<<"$(window "$work/$1.write" "$q0" "$q1")"
  read -r bw bwp bwe <<<"$(window "$work/$1.write" "$busy0" "$busy1")"
  read -r qs qp qse <<<"$(window "$work/$1.search" "$q0" "$q1")"
  read -r bs bp bse <<<"$(window "$work/$1.search" "$busy0" "$busy1")"
  echo "   writes: quiet $(calc "$qw * $batch") points/s p99 $qwp ms, $2 $(calc "$bw * $batch") points/s p99 $bwp ms" \
    "(ratio $(calc "$bw / $qw")), failed calls $qwe / $bwe"
  echo "   searches: quiet $qs/s p99 $qp ms, $2 $bs/s p99 $bp ms (ratio $(calc "$bs / $qs")), failed $qse / $bse"
}
join_fifth() { start_node 4; ready 7741; await_settled "" 1 2 >/dev/null; }
split_all() { "$bin/cairn" --target 127.0.0.1:7700 collection split v --wait >/dev/null; }

echo "3. writes and searches, quiet for $quiet s, then while a 5th node joins"
under_load p3 "$n" join_fifth
report p3 "during moves"
echo "   (the moves: $(calc "($busy1 - $busy0) / 1000") s from the 5th node's start until settled; measured over it)"
total=$((n + $(json_field "$work/p3.write.json" points_written)))
count=$(count_points 4)
[ "$count" = "$total" ] || { echo "the cluster counts $count points, not $total" >&2; exit 1; }
echo "   settled; $count points counted through the 5th node"

echo "4. a split of the 3 shards into 6, quiet for $quiet s, then during the split"
under_load p4 "$total" split_all
report p4 "during the split"
read -r after_qps after_p99 after_bad <<<"$(window "$work/p4.search" "$after0" "$after1")"
before=$(awk -v t="$busy0" -v b="$batch" '$1 < t && $3 == 1 {n += b} END {print n + 0}' "$work/p4.write")
echo "   the split took $(calc "($busy1 - $busy0) / 1000") s ($((total + before)) points in 3 shards when it started);" \
  "searches after it, on 6 shards, no writes: $after_qps/s p99 $after_p99 ms"
total=$((total + $(json_field "$work/p4.write.json" points_written)))
count=$(count_points 0)
[ "$count" = "$total" ] || { echo "the cluster counts $count points, not $total" >&2; exit 1; }
echo "   $count points counted after it, in $(status_json | "${PYTHON:-/usr/bin/python3}" -c '
import json,sys; print(sum(1 for g in json.load(sys.stdin)["groups"] if g["collection"] == "v"))') shards"
echo "N=$n, DIM=$dim, QUIET=$quiet s; 3 shards x 3 replicas, flat index, snapshots at most 64 MiB/s"
