#!/usr/bin/env bash
# What idle groups cost: a 3-node cluster holding one collection of SHARDS
# shards (3 replicas each, so every node hosts SHARDS + 1 groups), left idle,
# with quiet groups (--raft-quiesce on, the default) and then without (off).
# Prints each node's CPU use and the peer batches it sent per second over
# SECONDS of idleness, after the groups settled.
# Usage: bench/cluster/idle.sh [SHARDS=64] [SECONDS=20]   (after make)
set -euo pipefail
shards=${1:-64}; seconds=${2:-20}
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/bench/cluster/common.sh"
metric() {  # PORT NAME: a sample's value from /metrics
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'
}
run() {  # QUIESCE
  local q=$1 seeds=127.0.0.1:7862,127.0.0.1:7872,127.0.0.1:7882 i
  local -a node
  for i in 0 1 2; do
    "$bin/cairnd" --cluster --node-name "n$i" --data-dir "$work/$q-n$i" --listen "127.0.0.1:78$((6 + i))0" \
      --http-listen "127.0.0.1:78$((6 + i))1" --peer-listen "127.0.0.1:78$((6 + i))2" --seeds "$seeds" \
      --insecure-no-auth --raft-quiesce "$q" >"$work/$q-n$i.log" 2>&1 &
    pids+=($!); node[$i]=$!
  done
  for i in 0 1 2; do ready "78$((6 + i))1"; done
  "$bin/cairn" --target 127.0.0.1:7860 collection create v --dim 8 --index flat --shards "$shards" >/dev/null
  sleep 5  # elections, leader transfers, then quiet
  local -a c0 b0
  for i in 0 1 2; do c0[$i]=$(cpu ${node[$i]}); b0[$i]=$(metric "78$((6 + i))1" cairn_peer_batches_sent_total); done
  sleep "$seconds"
  local quiet
  quiet=$(curl -sf "http://127.0.0.1:7861/metrics" | awk '/^cairn_raft_quiesced/ {n += $2; t++} END {print n "/" t}')
  for i in 0 1 2; do
    printf 'raft-quiesce %-3s  n%s  CPU %5.1f%%  peer batches/s %7.1f  quiet groups on n0 %s\n' "$q" "$i" \
      "$(calc "100 * ($(cpu ${node[$i]}) - ${c0[$i]}) / $seconds")" \
      "$(calc "($(metric "78$((6 + i))1" cairn_peer_batches_sent_total) - ${b0[$i]}) / $seconds")" "$quiet"
  done
  for i in 0 1 2; do kill -TERM ${node[$i]}; done
  for i in 0 1 2; do wait ${node[$i]} 2>/dev/null || true; done
}
echo "$shards shards x 3 replicas on 3 nodes ($((shards + 1)) groups per node), idle for $seconds s"
run on
run off
