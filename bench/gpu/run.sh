#!/usr/bin/env bash
# Runs on a GPU machine, from the unpacked pack (see pack.sh): the GPU tests
# (every GPU path against a CPU reference), then gpu_bench, whose tables end
# the output. Logs and the report go to $OUT (default /tmp/cairn-gpu-out).
# Extra arguments go to gpu_bench (e.g. --n 200000 for a quick run). The
# time limits (120 + 80 + 60 + 320 s) keep the whole run inside a 10-minute
# call.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$here/lib:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
OUT=${OUT:-/tmp/cairn-gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem --format=csv || true
echo "== gpu_test"
timeout 120 "$here/gpu_test" >"$OUT/gpu_test.log" 2>&1
test_rc=$?
grep -E '^\[  (PASSED|FAILED) |^\[==========\]|Failure|recall|objective|GPU path|CPU path' "$OUT/gpu_test.log" | head -60
echo "gpu_test exit code: $test_rc"
# Out-of-bounds accesses and shared-memory races in the kernels, on small cases.
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [[ -x $san ]]; then
  echo "== compute-sanitizer"
  small='Paths/GpuExactTest.MatchesFloat64BruteForce/0:Paths/GpuExactTest.MatchesFloat64BruteForce/6:Metrics/GpuIvfTest.MatchesTheCpuScanOfTheSameLists/0:GpuKMeansTest.EmptyClustersAreSplit'
  timeout 80 "$san" --tool memcheck --error-exitcode 3 "$here/gpu_test" --gtest_filter="$small" >"$OUT/memcheck.log" 2>&1
  echo "memcheck exit code: $? (0 clean, 3 errors, 124 out of time)"
  grep -E 'ERROR SUMMARY|Invalid|Program hit' "$OUT/memcheck.log" | head -12
  timeout 60 "$san" --tool racecheck --error-exitcode 3 "$here/gpu_test" \
    --gtest_filter='Paths/GpuExactTest.MatchesFloat64BruteForce/3' >"$OUT/racecheck.log" 2>&1
  echo "racecheck exit code: $? (0 clean, 3 hazards, 124 out of time)"
  grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|Race' "$OUT/racecheck.log" | head -6
fi
echo "== gpu_bench $*"
timeout 320 "$here/gpu_bench" --out "$OUT/gpu_bench.md" "$@" 2>"$OUT/gpu_bench.err"
bench_rc=$?
tail -20 "$OUT/gpu_bench.err"
echo "gpu_test exit code: $test_rc; gpu_bench exit code: $bench_rc"
[[ $test_rc -eq 0 && $bench_rc -eq 0 ]]
