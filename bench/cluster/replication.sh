#!/usr/bin/env bash
# The cost of replication: the same N points of dimension DIM ingested by the
# same client (`cairn ingest`) into one single-node cairnd, then into a 3-node
# cairnd --cluster on this machine (replication factor 3, one shard), through
# a node that does not lead the shard (the common case: any node takes any
# write). Prints write throughput of each and their ratio, and CPU seconds per
# 1,000 writes of each process (the leader's and the followers' apart).
# INDEX flat measures the log (the apply is cheap); hnsw adds index builds,
# which every replica does for itself.
# Usage: bench/cluster/replication.sh [N=100000] [DIM=64] [INDEX=flat]   (after make)
# INGEST_FLAGS passes flags to both ingests, e.g. INGEST_FLAGS="--inflight 16".
set -euo pipefail
n=${1:-100000}; dim=${2:-64}; index=${3:-flat}
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/bench/cluster/common.sh"
gen_fvecs "$work/v.fvecs" "$n" "$dim" 1
ingest() {  # TARGET -> seconds
  local t0; t0=$(now_ms)
  "$bin/cairn" --target "$1" ingest --collection v ${INGEST_FLAGS:-} "$work/v.fvecs" >/dev/null 2>&1
  calc "($(now_ms) - $t0) / 1000"
}

# One node.
"$bin/cairnd" --data-dir "$work/single" --listen 127.0.0.1:7750 --http-listen 127.0.0.1:7751 \
  --insecure-no-auth >"$work/single.log" 2>&1 &
pids+=($!); single=$!
ready 7751
"$bin/cairn" --target 127.0.0.1:7750 collection create v --dim "$dim" --index "$index" >/dev/null
c0=$(cpu $single)
t_single=$(ingest 127.0.0.1:7750)
c_single=$(calc "$(cpu $single) - $c0")
kill -TERM $single; wait $single 2>/dev/null || true

# Three nodes.
seeds=127.0.0.1:7762,127.0.0.1:7772,127.0.0.1:7782
for i in 0 1 2; do
  "$bin/cairnd" --cluster --node-name "n$i" --data-dir "$work/n$i" --listen "127.0.0.1:77$((6 + i))0" \
    --http-listen "127.0.0.1:77$((6 + i))1" --peer-listen "127.0.0.1:77$((6 + i))2" --seeds "$seeds" \
    --insecure-no-auth >"$work/n$i.log" 2>&1 &
  pids+=($!); node[$i]=$!
done
for i in 0 1 2; do ready "77$((6 + i))1"; done
"$bin/cairn" --target 127.0.0.1:7760 collection create v --dim "$dim" --index "$index" --replication-factor 3 >/dev/null
leader=$("$bin/cairn" --target 127.0.0.1:7760 cluster status | awk '$2 == "v" {print $4}')
gateway=0; [ "$leader" = n0 ] && gateway=1
declare -A c1
for i in 0 1 2; do c1[$i]=$(cpu ${node[$i]}); done
t_cluster=$(ingest "127.0.0.1:77$((6 + gateway))0")
echo "N=$n DIM=$dim INDEX=$index; shard leader $leader, client sent to n$gateway"
printf '%-34s %10s %14s\n' "" "writes/s" "CPU s/1k writes"
printf '%-34s %10.0f %14.3f\n' "single node" "$(calc "$n / $t_single")" "$(calc "$c_single * 1000 / $n")"
for i in 0 1 2; do
  role=follower; [ "n$i" = "$leader" ] && role=leader
  [ $i = $gateway ] && role="$role, took the client's writes"
  d=$(calc "$(cpu ${node[$i]}) - ${c1[$i]}")
  printf '%-34s %10s %14.3f\n' "cluster n$i ($role)" "" "$(calc "$d * 1000 / $n")"
done
printf '%-34s %10.0f\n' "cluster (3 replicas)" "$(calc "$n / $t_cluster")"
printf 'cluster / single: %.2f\n' "$(calc "$t_single / $t_cluster")"
