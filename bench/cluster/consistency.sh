#!/usr/bin/env bash
# The cost of the default read consistency: the same searches through one node
# of a 3-node cairnd --cluster on this machine (2 shards, replication factor
# 3, HNSW), linearizable (ReadIndex: each shard's leader confirms it still
# leads, one round shared by the searches waiting at that moment) against local
# (the serving replicas answer from what they applied). QPS and p50/p99 for 1,
# 2 and 4 client threads, with recall@10 against exact search next to each.
# Usage: bench/cluster/consistency.sh [N=50000] [DIM=64] [QUERIES=2000]   (after make)
set -euo pipefail
n=${1:-50000}; dim=${2:-64}; nq=${3:-2000}
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/bench/cluster/common.sh"
seeds=127.0.0.1:7962,127.0.0.1:7972,127.0.0.1:7982
for i in 0 1 2; do
  "$bin/cairnd" --cluster --node-name "n$i" --data-dir "$work/n$i" --listen "127.0.0.1:79$((6 + i))0" \
    --http-listen "127.0.0.1:79$((6 + i))1" --peer-listen "127.0.0.1:79$((6 + i))2" --seeds "$seeds" \
    --insecure-no-auth >"$work/n$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do ready "79$((6 + i))1"; done
"$bin/grpc_bench" --target 127.0.0.1:7960 --shards 2 --synthetic "$n" "$dim" --queries "$nq" --threads 1,2,4
