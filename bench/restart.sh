#!/usr/bin/env bash
# Restart time of cairnd over N growing (unsealed) HNSW points of dimension
# 128: after kill -9 (the growing segment's copy saved in the background is
# loaded and the points after it are rebuilt from storage:
# DatabaseOptions::growing_checkpoint_points) and after SIGTERM (a clean
# close seals it: DatabaseOptions::seal_on_close_points).
# Usage: bench/restart.sh [N=100000] [PORT=7741]   (after `make build`)
set -euo pipefail
n=${1:-100000}; port=${2:-7741}
bin=$(cd "$(dirname "$0")/.." && pwd)/build/bin
work=$(mktemp -d); trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
pid=0
"${PYTHON:-/usr/bin/python3}" - "$work/v.fvecs" "$n" <<'PY'
import sys, numpy as np
x = np.random.default_rng(1).random((int(sys.argv[2]), 128), dtype=np.float32)
d = np.full((x.shape[0], 1), 128, dtype=np.int32)
np.hstack([d.view(np.float32), x]).tofile(sys.argv[1])
PY
export CAIRN_TARGET=127.0.0.1:$port
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { local ms=$(($(now_ms) - $1)); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }
start() {
  "$bin/cairnd" --data-dir "$work/data" --insecure-no-auth --listen "$CAIRN_TARGET" --http-listen "" >"$work/log.$1" 2>&1 &
  pid=$!
  local t0; t0=$(now_ms)
  until grep -q '"event":"serving"' "$work/log.$1"; do
    kill -0 $pid 2>/dev/null || { cat "$work/log.$1"; exit 1; }
    sleep 0.1
  done
  local ready; ready=$(secs "$t0")
  local info; info=$("$bin/cairn" collection info v 2>/dev/null | tr -d '\n ' |
    grep -oE '"points":"[0-9]+"|"sealed_segments":"[0-9]+"' | tr '\n' ' ') || true
  echo "$1: ready in $ready s ${info:+($info)}"
}
start first
"$bin/cairn" collection create v --dim 128 >/dev/null
t0=$(now_ms)
"$bin/cairn" ingest --collection v "$work/v.fvecs" 2>/dev/null
echo "ingest of $n points: $(secs "$t0") s"
kill -9 $pid; wait $pid 2>/dev/null || true
copies=$(find "$work/data" -name 'grow-*.cseg' -printf '%f %s bytes\n' | tr '\n' ' ')
echo "growing segment's saved copy at the kill: ${copies:-none}"
start after-kill-9
t0=$(now_ms)
kill -TERM $pid; wait $pid || true
echo "SIGTERM to exit (sealing at close): $(secs "$t0") s"
start after-sigterm
kill -TERM $pid; wait $pid || true
