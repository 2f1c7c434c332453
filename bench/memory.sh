#!/usr/bin/env bash
# Memory of one cairnd holding N DIM-d random points of each index type:
# its RSS empty, right after the ingest (write buffers full) and after a
# restart and one search (what it holds to serve), beside the index memory
# it estimates (cairn_collection_index_memory_bytes) and its bytes on disk.
# The sizing model of operator-manifests/README.md rests on it.
# Usage: bench/memory.sh [N=200000] [DIM=128]   (after make; ports 7960-7961)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CAIRN_BUILD:-$root/build}/bin
work=$(mktemp -d /tmp/cairn-memory.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
n=${1:-200000}; dim=${2:-128}
"${PYTHON:-/usr/bin/python3}" -c "
import numpy as np, struct
n,d=$n,$dim
x=np.random.default_rng(1).random((n,d),dtype=np.float32)
with open('a.fvecs','wb') as f:
    a=np.empty((n,d+1),dtype=np.float32); a[:,0]=np.frombuffer(struct.pack('<i',d),dtype=np.float32)[0]; a[:,1:]=x; a.tofile(f)
"
rss() { awk '/VmRSS/ {print int($2/1024)}' /proc/$1/status; }
for idx in none flat hnsw hnsw_sq ivf_flat ivf_pq; do
  rm -rf d; "$bin/cairnd" --data-dir d --listen 127.0.0.1:7960 --http-listen 127.0.0.1:7961 --insecure-no-auth 2>log &
  pid=$!; sleep 1
  base=$(rss $pid)
  if [ $idx != none ]; then
    "$bin/cairn" --target 127.0.0.1:7960 collection create v --dim $dim --index $idx >/dev/null
    "$bin/cairn" --target 127.0.0.1:7960 ingest --collection v a.fvecs >/dev/null 2>&1
    sleep 3
  fi
  after=$(rss $pid)
  kill $pid; wait $pid || true
  "$bin/cairnd" --data-dir d --listen 127.0.0.1:7960 --http-listen 127.0.0.1:7961 --insecure-no-auth 2>log &
  pid=$!; for _ in $(seq 100); do curl -sf 127.0.0.1:7961/readyz >/dev/null && break; sleep 0.2; done
  "$bin/cairn" --target 127.0.0.1:7960 search --collection v --vector "$(/usr/bin/python3 -c "print(','.join(['0.5']*$dim))")" --k 10 >/dev/null 2>&1 || true
  restart=$(rss $pid)
  im=$(curl -s 127.0.0.1:7961/metrics | awk '/^cairn_collection_index_memory_bytes/ {print int($2/1048576)}')
  sm=$(curl -s 127.0.0.1:7961/metrics | awk '/^cairn_collection_storage_memory_bytes/ {print int($2/1048576)}')
  kill $pid; wait $pid || true
  echo "$idx n=$n dim=$dim: empty ${base} MiB, after ingest ${after} MiB, after restart ${restart} MiB (index estimate ${im:-0} MiB, storage ${sm:-0} MiB), disk $(du -sm d | cut -f1) MiB"
done
