#!/usr/bin/env bash
# Runs on a GPU machine, from the unpacked pack (see pack.sh): the GPU tests
# (every GPU path against a CPU reference), then gpu_bench, whose tables end
# the output. Logs and the report go to $OUT (default /tmp/cairn-gpu-out).
# Extra arguments go to gpu_bench (e.g. --n 200000 for a quick run). The
# time limits (150 s + 400 s) keep the whole run inside a 10-minute call.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$here/lib:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
OUT=${OUT:-/tmp/cairn-gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem --format=csv || true
echo "== gpu_test"
timeout 150 "$here/gpu_test" >"$OUT/gpu_test.log" 2>&1
test_rc=$?
grep -E '^\[  (PASSED|FAILED) |^\[==========\]|Failure|recall|objective|GPU path|CPU path' "$OUT/gpu_test.log" | head -60
echo "gpu_test exit code: $test_rc"
echo "== gpu_bench $*"
timeout 400 "$here/gpu_bench" --out "$OUT/gpu_bench.md" "$@" 2>"$OUT/gpu_bench.err"
bench_rc=$?
tail -20 "$OUT/gpu_bench.err"
echo "gpu_test exit code: $test_rc; gpu_bench exit code: $bench_rc"
[[ $test_rc -eq 0 && $bench_rc -eq 0 ]]
