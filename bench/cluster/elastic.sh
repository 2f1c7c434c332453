#!/usr/bin/env bash
# The elastic cluster on this machine (every node on loopback, sharing its
# cores), one collection of 3 shards x 3 replicas, flat index, DIM-d points:
#  1. rebalance: N points on 3 nodes, a 4th node joins; the time until the
#     controller has moved its share onto it (no operation left, every node
#     holding 2 or 3 replicas) and the bytes it then holds;
#  2. re-replication: with 4 nodes, one is killed (kill -9) and stays down;
#     --dead-node-timeout is 5 s: the time from the kill until every shard has
#     3 replicas on live nodes again (the timeout included);
#  3. writes and searches during moves: M points ingested (cairn ingest, one
#     client) into the quiet 4-node cluster, then M more while a 5th node
#     joins and replicas move onto it, one client searching throughout
#     (grpc_bench --load, k=10, each call logged): records/s of each ingest;
#     searches/s and p99 while the quiet ingest ran and from the 5th node's
#     start until the cluster settled; the errors the clients saw;
#  4. a split: the same on the settled 5-node cluster, quiet, then while
#     `cairn collection split v --wait` splits its 3 shards into 6 (searches
#     measured from the split's start to its end); the time the split took,
#     and searches on the 6 shards after it.
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
searcher() {  # LOG: one client searching v until SIGTERM, each call logged (grpc_bench --latency-log)
  "$bin/grpc_bench" --target 127.0.0.1:7700 --load v 3600 --threads 1 --latency-log "$1" >/dev/null &
  pids+=($!); search_pid=$!
}
stop_searcher() { kill -TERM "$search_pid"; wait "$search_pid"; }
window() {  # LOG FROM_MS TO_MS: searches/s, p99 ms and failed calls in that window
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
print("%.0f %.2f %d" % (len(lat) / max((hi - lo) / 1000, 1e-3), p99, bad))
PY
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

report() {  # WHAT QUIET_W BUSY_W QUIET_S BUSY_S: writes (records/s errors) and searches (qps p99 errors)
  local qw qwe bw bwe qs qp qse bs bp bse
  read -r qw qwe <<<"$2"; read -r bw bwe <<<"$3"; read -r qs qp qse <<<"$4"; read -r bs bp bse <<<"$5"
  echo "   writes: quiet $qw records/s, $1 $bw records/s (ratio $(calc "$bw / $qw")), errors and retries $qwe / $bwe"
  echo "   searches: quiet $qs/s p99 $qp ms, $1 $bs/s p99 $bp ms (ratio $(calc "$bs / $qs")), failed $qse / $bse"
}
count_points() {  # I: the points of v, counted through node I
  "$bin/cairn" --target "127.0.0.1:77$1""0" collection info v | grep -o '"points": *"*[0-9]*' | grep -o '[0-9]*$'
}

# One client searches throughout; M points are ingested quiet from START_ID,
# then M more while CMD... runs. Sets quiet_w (records/s errors), q0/q1 (the
# quiet ingest's window), busy0/busy1 (CMD's) and $work/busy (the second
# ingest's records/s errors); the searcher is still running (stop_searcher).
under_load() {  # LOG START_ID CMD...
  local log=$1 start=$2 ingester
  shift 2
  searcher "$log"
  sleep 1
  q0=$(now_ms); quiet_w=$(ingest_rate "$work/b.fvecs" "$start"); q1=$(now_ms)
  busy0=$(now_ms)
  ingest_rate "$work/b.fvecs" "$((start + m))" >"$work/busy" &
  ingester=$!
  "$@"
  busy1=$(now_ms)
  wait "$ingester"
}
join_fifth() { start_node 4; ready 7741; await_settled "" 1 2 >/dev/null; }
split_all() { "$bin/cairn" --target 127.0.0.1:7700 collection split v --wait >/dev/null; }

echo "3. writes and searches: $m points ingested while one client searches, quiet, then while a 5th node joins"
under_load "$work/lat3" "$n" join_fifth
stop_searcher
report "during moves" "$quiet_w" "$(cat "$work/busy")" "$(window "$work/lat3" "$q0" "$q1")" \
  "$(window "$work/lat3" "$busy0" "$busy1")"
echo "   (the moves: $(calc "($busy1 - $busy0) / 1000") s from the 5th node's start until settled; searches measured over it)"
count=$(count_points 4)
[ "$count" = "$((n + 2 * m))" ] || { echo "the cluster counts $count points, not $((n + 2 * m))" >&2; exit 1; }
echo "   settled; $count points counted through the 5th node"

echo "4. a split of the 3 shards into 6: $m points ingested while one client searches, quiet, then during the split"
under_load "$work/lat4" "$((n + 2 * m))" split_all
sleep 4
a1=$(now_ms)
stop_searcher
report "during the split" "$quiet_w" "$(cat "$work/busy")" "$(window "$work/lat4" "$q0" "$q1")" \
  "$(window "$work/lat4" "$busy0" "$busy1")"
read -r after_qps after_p99 after_bad <<<"$(window "$work/lat4" "$((a1 - 3000))" "$a1")"
echo "   the split took $(calc "($busy1 - $busy0) / 1000") s ($((n + 2 * m)) points in 3 shards when it started);" \
  "searches after it, on 6 shards, no writes: $after_qps/s p99 $after_p99 ms"
count=$(count_points 0)
[ "$count" = "$((n + 4 * m))" ] || { echo "the cluster counts $count points, not $((n + 4 * m))" >&2; exit 1; }
echo "   $count points counted after it, in $(status_json | "${PYTHON:-/usr/bin/python3}" -c '
import json,sys; print(sum(1 for g in json.load(sys.stdin)["groups"] if g["collection"] == "v"))') shards"
echo "N=$n, M=$m, DIM=$dim; 3 shards x 3 replicas, flat index, snapshots at most 64 MiB/s"
