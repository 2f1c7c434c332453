#!/usr/bin/env bash
# Recovery: how long a replica that was down (kill -9) while M points were
# written takes to catch up once it restarts, from the log (its peers still
# hold the entries it lacks) and from a snapshot of files (they compacted their
# logs past what it has: --raft-log-compact-entries 10). A 3-node cairnd
# --cluster on this machine, one shard, replication factor 3, flat index; N
# points before the kill, M while the replica is down, written through a node
# that stays up (in requests of 100 points: M/100 log entries). Prints, for each way: the time from restart to ready
# (/readyz) and to caught up (its applied index reaches the commit index the
# leader had when the writes ended), and what was fetched.
# Usage: bench/cluster/recovery.sh [N=100000] [M=100000] [DIM=64]   (after make)
set -euo pipefail
n=${1:-100000}; m=${2:-100000}; dim=${3:-64}
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/bench/cluster/common.sh"
gen_fvecs "$work/a.fvecs" "$n" "$dim" 1
gen_fvecs "$work/b.fvecs" "$m" "$dim" 2
seeds=127.0.0.1:7862,127.0.0.1:7872,127.0.0.1:7882
metric() {  # HTTP_PORT NAME: the sample of collection v's group
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v n="$2" 'index($0, n "{") == 1 && /collection="v"/ {print $2}'
}
total() {  # HTTP_PORT PREFIX: the sum of the samples whose line starts with PREFIX
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v p="$2" 'index($0, p) == 1 {s += $2} END {printf "%.0f", s}'
}
start_node() {  # WAY I COMPACT
  "$bin/cairnd" --cluster --node-name "n$2" --data-dir "$work/$1/n$2" --listen "127.0.0.1:78$((6 + $2))0" \
    --http-listen "127.0.0.1:78$((6 + $2))1" --peer-listen "127.0.0.1:78$((6 + $2))2" --seeds "$seeds" \
    --raft-log-compact-entries "$3" --insecure-no-auth >>"$work/$1-n$2.log" 2>&1 &
  pids+=($!); node[$2]=$!
}
printf '%-10s %10s %12s %12s %14s %12s\n' "from" "ready s" "caught up s" "snapshots" "bytes fetched" "log entries"
for way in log snapshot; do
  compact=1000000; [ $way = snapshot ] && compact=10
  for i in 0 1 2; do start_node $way $i $compact; done
  for i in 0 1 2; do ready "78$((6 + i))1"; done
  "$bin/cairn" --target 127.0.0.1:7860 collection create v --dim "$dim" --index flat --replication-factor 3 >/dev/null
  leader=$("$bin/cairn" --target 127.0.0.1:7860 cluster status | awk '$2 == "v" {print $4}')
  l=${leader#n}; victim=$(((l + 1) % 3)); gateway=$(((l + 2) % 3))
  "$bin/cairn" --target "127.0.0.1:78$((6 + gateway))0" ingest --collection v "$work/a.fvecs" >/dev/null 2>&1
  kill -9 "${node[$victim]}"; wait "${node[$victim]}" 2>/dev/null || true
  "$bin/cairn" --target "127.0.0.1:78$((6 + gateway))0" ingest --collection v --start-id "$n" --batch 100 \
    "$work/b.fvecs" >/dev/null 2>&1
  commit=$(metric "78$((6 + l))1" cairn_raft_commit_index)
  first=$(metric "78$((6 + l))1" cairn_raft_log_first_index)
  t0=$(now_ms)
  start_node $way $victim $compact
  ready "78$((6 + victim))1"
  t_ready=$(calc "($(now_ms) - $t0) / 1000")
  for _ in $(seq 6000); do
    applied=$(metric "78$((6 + victim))1" cairn_raft_applied_index || echo 0)
    [ -n "$applied" ] && [ "$applied" -ge "$commit" ] && break
    sleep 0.05
  done
  t_caught=$(calc "($(now_ms) - $t0) / 1000")
  count=$("$bin/cairn" --target "127.0.0.1:78$((6 + victim))0" collection info v | grep -o '"points": *"*[0-9]*' | grep -o '[0-9]*$')
  [ "$count" = "$((n + m))" ] || { echo "the replica counts $count points, not $((n + m))" >&2; exit 1; }
  printf '%-10s %10s %12s %12s %14s %12s\n' "$way" "$t_ready" "$t_caught" \
    "$(total "78$((6 + victim))1" cairn_raft_snapshots_installed_total)" \
    "$(total "78$((6 + victim))1" 'cairn_snapshot_bytes_total{kind="fetched"}')" "$((commit - first + 1)) held"
  for i in 0 1 2; do kill -TERM "${node[$i]}" 2>/dev/null || true; wait "${node[$i]}" 2>/dev/null || true; done
done
echo "N=$n points before the kill, M=$m while down, DIM=$dim; the leader's log holds 'log entries' at the end"
