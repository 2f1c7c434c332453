#!/usr/bin/env bash
# The index memory cairnd reports (cairn_collection_index_memory_bytes)
# matches what the process holds: for a flat and an IVF-PQ collection of
# 100,000 64-d points (loaded offline, so their segments are sealed), the
# RSS cairnd gains over an empty start is the estimate, give or take 20% and
# 16 MiB (what RocksDB and the process keep besides). What /metrics says the
# node holds under its memory limit (cairn_memory_bytes: indexes and
# storage) is that RSS, within the same bounds.
# Usage: memory_estimate_test.sh CAIRND CAIRN WORKDIR
set -euo pipefail
cairnd="$1"; cairn="$2"; work="$3"
rm -rf "$work"; mkdir -p "$work"
source "$(dirname "$0")/cairnd_lib.sh"
"$py" - "$work/a.fvecs" <<'PY'
import array, random, struct, sys
n, d = 100000, 64
rng = random.Random(5)
with open(sys.argv[1], "wb") as f:
    head = struct.pack("<i", d)
    for _ in range(n):
        f.write(head)
        array.array("f", (rng.random() for _ in range(d))).tofile(f)
PY
rss_mib() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }
for idx in flat ivf_pq; do
  start_cairnd "$cairnd" "$work/empty-$idx" --http-listen 127.0.0.1:0 --insecure-no-auth
  empty=$(rss_mib "$pid")
  kill -TERM "$pid"; wait "$pid" || true
  "$cairn" ingest --data-dir "$work/$idx" --collection v --dim 64 --index "$idx" "$work/a.fvecs" >/dev/null 2>&1
  start_cairnd "$cairnd" "$work/$idx" --http-listen 127.0.0.1:0 --insecure-no-auth
  "$cairn" --target "127.0.0.1:$port" search --collection v --vector "$(printf '0.5,%.0s' $(seq 63))0.5" --k 5 >/dev/null
  held=$(( $(rss_mib "$pid") - empty ))
  est=$("$cairn" --target "127.0.0.1:$port" collection info v | grep -o '"index_memory_bytes": *"*[0-9]*' | grep -o '[0-9]*$')
  est=$(( est / 1048576 ))
  node=$("$py" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
           "http://127.0.0.1:$http_port/metrics" | awk '/^cairn_memory_bytes\{/ {s += $2} END {print int(s / 1048576)}')
  kill -TERM "$pid"; wait "$pid" || true
  diff=$(( held > est ? held - est : est - held ))
  echo "$idx: cairnd holds $held MiB more than empty, estimates $est MiB"
  (( diff <= est / 5 + 16 )) || fail "$idx: the estimate $est MiB is off what cairnd holds ($held MiB) by $diff MiB"
  echo "$idx: /metrics says the node holds $node MiB under its memory limit"
  diff=$(( held > node ? held - node : node - held ))
  (( node > 0 && diff <= node / 5 + 16 )) || fail "$idx: cairn_memory_bytes ($node MiB) is off what cairnd holds ($held MiB)"
done
rm -rf "$work"
echo "memory estimate: ok"
