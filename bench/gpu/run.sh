#!/usr/bin/env bash
# Runs on a GPU machine, from the unpacked pack (see pack.sh): the GPU tests
# (every GPU path against a CPU reference), then gpu_bench, whose tables end
# the output. Logs and the report go to $OUT (default /tmp/cairn-gpu-out).
# Extra arguments go to gpu_bench (e.g. --n 200000 for a quick run). The
# time limits (140 + 60 + 70 + 50 s at most; gpu_bench gets what is left of
# 575 s; each killed 10 s after its limit if it ignores SIGTERM) keep the
# whole run inside a 10-minute call.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# The driver's libcuda.so.1 may sit outside the loader's default paths
# (/usr/local/nvidia/lib64 on some container images).
libs="$here/lib:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/nvidia/lib64:/usr/local/nvidia/lib"
# cuBLAS 13 from the CUDA toolkit, or else from a Python wheel (nvidia-cublas).
if [[ ! -e /usr/local/cuda/lib64/libcublas.so.13 ]]; then
  cublas=$(find /usr/local /opt /usr/lib -maxdepth 9 -name 'libcublas.so.13' 2>/dev/null | head -1)
  if [[ -n $cublas ]]; then libs="$libs:$(dirname "$cublas")"; else echo "no libcublas.so.13 found"; fi
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
OUT=${OUT:-/tmp/cairn-gpu-out}
mkdir -p "$OUT"
# The binaries come from Debian 12 (glibc 2.36, GCC 12). Where the machine's C
# or C++ runtime is older, they start through the loader and runtime packed in
# rt/ instead (CAIRN_PACKED_RUNTIME=1 forces that); the sanitizers then run
# only if they accept that.
run=()
# Each binary must start: gpu_test's list of suites lands in start.log, what
# the loader says in start.err.
starts() {
  "${run[@]}" "$here/gpu_test" --gtest_list_tests >"$OUT/start.log" 2>"$OUT/start.err" &&
    "${run[@]}" "$here/db_test" --gtest_list_tests >/dev/null 2>>"$OUT/start.err" &&
    "${run[@]}" "$here/gpu_bench" --help >/dev/null 2>>"$OUT/start.err"
}
if [[ ${CAIRN_PACKED_RUNTIME:-0} == 1 ]] || ! starts; then
  if [[ ${CAIRN_PACKED_RUNTIME:-0} != 1 ]]; then
    echo "the binaries do not start with this machine's runtime:"
    tail -5 "$OUT/start.err"
  fi
  run=("$here/rt/ld-linux-x86-64.so.2" --library-path "$here/rt:$libs:/usr/lib/x86_64-linux-gnu:/usr/lib64")
  if starts; then
    echo "using the packed runtime (rt/)"
  else
    echo "they do not start with the packed runtime either:"
    tail -5 "$OUT/start.err"
    exit 1
  fi
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem --format=csv || true
echo "== gpu_test"
# One process per test suite: a kernel fault leaves the CUDA context unusable
# for the rest of its process, and a crash would hide the suites after it.
test_rc=0
deadline=$((SECONDS + 140))
: >"$OUT/gpu_test.log"
suites=$(grep -E '^[^ ].*\.$' "$OUT/start.log")
if [[ -z $suites ]]; then
  echo "gpu_test: no test suites listed (see start.log)"
  test_rc=1
fi
for suite in $suites; do
  left=$((deadline - SECONDS))
  if ((left < 5)); then
    echo "gpu_test: out of time before $suite"
    test_rc=124
    break
  fi
  timeout -k 10 "$left" "${run[@]}" "$here/gpu_test" --gtest_filter="$suite*" >>"$OUT/gpu_test.log" 2>&1
  rc=$?
  if ((rc != 0)); then
    echo "gpu_test: $suite exit code $rc"
    test_rc=$rc
  fi
done
grep -E '^\[  (PASSED|FAILED) |^\[==========\]|Failure|recall|objective|error|GPU path|CPU path' "$OUT/gpu_test.log" | head -80
# The database's device choice with a GPU present (collections with device
# gpu accepted, their segments copied to the GPU and counted).
timeout -k 10 60 "${run[@]}" "$here/db_test" --gtest_filter='*Device*' >"$OUT/db_test.log" 2>&1
rc=$?
grep -E '^\[  (PASSED|FAILED) |Failure' "$OUT/db_test.log" | head -10
if ((rc != 0)); then
  echo "db_test (device tests): exit code $rc"
  test_rc=$rc
fi
echo "gpu_test exit code: $test_rc"
# Out-of-bounds accesses and shared-memory races in the kernels, on small cases.
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [[ -x $san ]]; then
  echo "== compute-sanitizer"
  small='Paths/GpuExactTest.MatchesFloat64BruteForce/0:Paths/GpuExactTest.MatchesFloat64BruteForce/6'
  small="$small:Metrics/GpuIvfTest.MatchesTheCpuScanOfTheSameLists/L2_ByQuery"
  small="$small:Metrics/GpuIvfTest.MatchesTheCpuScanOfTheSameLists/L2_ByList:GpuKMeansTest.EmptyClustersAreSplit"
  timeout -k 10 70 "$san" --tool memcheck --error-exitcode 3 "${run[@]}" "$here/gpu_test" --gtest_filter="$small" >"$OUT/memcheck.log" 2>&1
  echo "memcheck exit code: $? (0 clean, 3 errors, 124 out of time)"
  grep -E 'ERROR SUMMARY|Invalid|Program hit' "$OUT/memcheck.log" | head -12
  timeout -k 10 50 "$san" --tool racecheck --error-exitcode 3 "${run[@]}" "$here/gpu_test" \
    --gtest_filter='Paths/GpuExactTest.MatchesFloat64BruteForce/3' >"$OUT/racecheck.log" 2>&1
  echo "racecheck exit code: $? (0 clean, 3 hazards, 124 out of time)"
  grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|Race' "$OUT/racecheck.log" | head -6
fi
echo "== gpu_bench $*"
bench_left=$((575 - SECONDS))
if ((bench_left < 30)); then
  echo "gpu_bench: skipped, $bench_left s left"
  bench_rc=124
else
  echo "(gpu_bench may take $bench_left s)"
  timeout -k 10 "$bench_left" "${run[@]}" "$here/gpu_bench" --out "$OUT/gpu_bench.md" "$@" 2>"$OUT/gpu_bench.err"
  bench_rc=$?
fi
tail -20 "$OUT/gpu_bench.err"
echo "gpu_test exit code: $test_rc; gpu_bench exit code: $bench_rc"
[[ $test_rc -eq 0 && $bench_rc -eq 0 ]]
