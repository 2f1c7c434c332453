#!/usr/bin/env bash
# Memory of one cairnd holding N DIM-d random points, for the sizing model
# of operator-manifests/README.md:
#  - for each index type: the points loaded offline (`cairn ingest
#    --data-dir`: sealed segments of that index), then cairnd started and
#    one search answered; its RSS beside the index memory it estimates
#    (cairn_collection_index_memory_bytes) and the bytes on disk;
#  - online ingest (flat): the RSS right after the ingest, write buffers full.
# Usage: [INDEXES="ivf_pq ivf_sq8"] bench/memory.sh [N=200000] [DIM=128]   (after make; ports 7960-7961;
# needs python3-numpy)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CAIRN_BUILD:-$root/build}/bin
work=$(mktemp -d /tmp/cairn-memory.XXXXXX)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
n=${1:-200000}; dim=${2:-128}
"${PYTHON:-/usr/bin/python3}" - "$n" "$dim" <<'PY'
import struct, sys
import numpy as np
n, d = int(sys.argv[1]), int(sys.argv[2])
a = np.empty((n, d + 1), dtype=np.float32)
a[:, 0] = np.frombuffer(struct.pack("<i", d), dtype=np.float32)[0]
a[:, 1:] = np.random.default_rng(1).random((n, d), dtype=np.float32)
a.tofile("a.fvecs")
PY
query=$("${PYTHON:-/usr/bin/python3}" -c "print(','.join(['0.5'] * $dim))")
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }
metric() { curl -s 127.0.0.1:7961/metrics | awk -v m="$1" 'index($0, m "{") == 1 {s += $2} END {print int(s / 1048576)}'; }
serve() {  # DIR: starts cairnd on DIR, waits until ready
  # The sizing model's floor: HNSW floats in their files only (a node with
  # room also keeps a copy in memory, 4 x DIM bytes a point, which it gives
  # back under pressure); HNSW_VECTORS_IN_MEMORY_PERCENT=50 measures that.
  "$bin/cairnd" --data-dir "$1" --listen 127.0.0.1:7960 --http-listen 127.0.0.1:7961 --insecure-no-auth \
    --hnsw-vectors-in-memory-percent "${HNSW_VECTORS_IN_MEMORY_PERCENT:-0}" 2>>log &
  pid=$!
  for _ in $(seq 300); do curl -sf 127.0.0.1:7961/readyz >/dev/null && return 0; sleep 0.2; done
  echo "cairnd did not start" >&2; cat log >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" || true; pid=""; }

echo "N=$n DIM=$dim, one cairnd, RSS in MiB"
for idx in ${INDEXES:-flat hnsw hnsw_sq ivf_flat ivf_pq ivf_sq8}; do
  rm -rf d
  "$bin/cairn" ingest --data-dir d --collection v --dim "$dim" --index "$idx" a.fvecs >/dev/null 2>&1
  serve d
  empty=$(rss "$pid")
  "$bin/cairn" --target 127.0.0.1:7960 search --collection v --vector "$query" --k 10 >/dev/null
  echo "$idx (sealed): RSS $(rss "$pid") MiB serving (at start $empty), index estimate" \
    "$(metric cairn_collection_index_memory_bytes) MiB, disk $(du -sm d | cut -f1) MiB"
  stop
done
rm -rf d
serve d
"$bin/cairn" --target 127.0.0.1:7960 collection create v --dim "$dim" --index flat >/dev/null
"$bin/cairn" --target 127.0.0.1:7960 ingest --collection v a.fvecs >/dev/null 2>&1
echo "flat (online ingest, growing segment): RSS $(rss "$pid") MiB right after the ingest, index estimate" \
  "$(metric cairn_collection_index_memory_bytes) MiB"
stop
