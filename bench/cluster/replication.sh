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
# PIN=1 (a machine of 8 cores or more) gives the client and each server
# CORES_PER_NODE cores of their own (default 2; the single node gets the
# cores the first replica gets later): the ratio then measures replication,
# not three servers sharing one machine's CPU.
set -euo pipefail
n=${1:-100000}; dim=${2:-64}; index=${3:-flat}
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/bench/cluster/common.sh"
gen_fvecs "$work/v.fvecs" "$n" "$dim" 1
pin_next; client_pin=("${pinned[@]}")
ingest() {  # TARGET -> "seconds client-CPU-seconds"
  local t0 c; t0=$(now_ms)
  # `times` in the subshell: the CPU the client (its child) used.
  c=$( ("${client_pin[@]}" "$bin/cairn" --target "$1" ingest --collection v ${INGEST_FLAGS:-} "$work/v.fvecs" >/dev/null 2>&1; times) |
      tail -1 | awk '{ split($1, u, "m"); split($2, s, "m"); printf "%.3f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }')
  echo "$(calc "($(now_ms) - $t0) / 1000") $c"
}

# One node, on the cores the first replica gets later.
first_server_core=$next_core
pin_next
"${pinned[@]}" "$bin/cairnd" --data-dir "$work/single" --listen 127.0.0.1:7750 --http-listen 127.0.0.1:7751 \
  --insecure-no-auth >"$work/single.log" 2>&1 &
pids+=($!); single=$!
ready 7751
"$bin/cairn" --target 127.0.0.1:7750 collection create v --dim "$dim" --index "$index" >/dev/null
c0=$(cpu $single)
read -r t_single client_single < <(ingest 127.0.0.1:7750)
c_single=$(calc "$(cpu $single) - $c0")
kill -TERM $single; wait $single 2>/dev/null || true

# Three nodes.
seeds=127.0.0.1:7762,127.0.0.1:7772,127.0.0.1:7782
next_core=$first_server_core
for i in 0 1 2; do
  pin_next
  "${pinned[@]}" "$bin/cairnd" --cluster --node-name "n$i" --data-dir "$work/n$i" --listen "127.0.0.1:77$((6 + i))0" \
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
read -r t_cluster client_cluster < <(ingest "127.0.0.1:77$((6 + gateway))0")
echo "N=$n DIM=$dim INDEX=$index; shard leader $leader, client sent to n$gateway"
printf '%-44s %10s %16s\n' "" "writes/s" "CPU s/1k writes"
per_k() { calc "$1 * 1000 / $n"; }
printf '%-44s %10.0f %16.3f\n' "single node" "$(calc "$n / $t_single")" "$(per_k "$c_single")"
printf '%-44s %10s %16.3f\n' "  its client (cairn ingest)" "" "$(per_k "$client_single")"
replicas=0; busiest=0
for i in 0 1 2; do
  role=follower; [ "n$i" = "$leader" ] && role=leader
  [ $i = $gateway ] && role="$role, took the client's writes"
  d=$(calc "$(cpu ${node[$i]}) - ${c1[$i]}")
  replicas=$(calc "$replicas + $d")
  busiest=$(awk -v a="$busiest" -v b="$d" 'BEGIN { print (b > a) ? b : a }')
  printf '%-44s %10s %16.3f\n' "cluster n$i ($role)" "" "$(per_k "$d")"
done
printf '%-44s %10s %16.3f\n' "  its client (cairn ingest)" "" "$(per_k "$client_cluster")"
printf '%-44s %10.0f\n' "cluster (3 replicas)" "$(calc "$n / $t_cluster")"
printf 'cluster / single: %.2f\n' "$(calc "$t_single / $t_cluster")"
# On one machine every process shares its cores: the cluster cannot write
# faster than the cores divided by the CPU per write of the client and the
# three replicas together. With a machine per replica (the product), each
# replica's own CPU per write bounds it instead.
if [ "${PIN:-0}" = 1 ]; then
  echo "pinned: the client and each server on ${CORES_PER_NODE:-2} cores of their own"
  exit 0
fi
cores=$(nproc)
ceiling=$(calc "$cores * $n / ($client_cluster + $replicas)")
printf 'CPU ceiling of the cluster here (%s cores / client + 3 replicas per write): %.0f writes/s, ratio %.2f; measured %.0f%% of it\n' \
  "$cores" "$ceiling" "$(calc "$ceiling * $t_single / $n")" "$(calc "100 * $n / $t_cluster / $ceiling")"
printf 'a replica on a machine of its own (%s cores / busiest replica per write): %.0f writes/s\n' \
  "$cores" "$(calc "$cores * $n / $busiest")"
