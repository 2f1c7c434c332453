# Helpers the cluster benches share (sourced, not run): a work directory and
# processes that go away on exit, generated vectors, timing and CPU, and
# waiting for cairnd to be ready.
# REQUIRES: $root (the repository) set by the caller.
bin=$root/build/bin
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
gen_fvecs() {  # FILE N DIM SEED: N uniform random vectors
  "${PYTHON:-/usr/bin/python3}" - "$@" <<'PY'
import array, random, struct, sys
n, d = int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(int(sys.argv[4]))
with open(sys.argv[1], "wb") as f:
    head = struct.pack("<i", d)
    for _ in range(n):
        f.write(head)
        array.array("f", (rng.random() for _ in range(d))).tofile(f)
PY
}
tck=$(getconf CLK_TCK)
cpu() { awk -v t="$tck" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
calc() { awk "BEGIN { printf \"%.3f\", $1 }"; }
readyz() {  # PORT: whether /readyz answers 200 (curl, or bash's /dev/tcp where curl is missing)
  if command -v curl >/dev/null; then
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1
    return
  fi
  local status
  status=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && head -1 <&3) 2>/dev/null)
  [[ $status == *" 200 "* ]]
}
ready() {  # PORT
  for _ in $(seq 600); do
    readyz "$1" && return 0
    sleep 0.1
  done
  echo "not ready: see $work" >&2; exit 1
}
# PIN=1: every process on cores of its own (taskset), CORES_PER_NODE (default
# 2) each: the client first, then each server. On a machine with enough
# cores this measures what separate machines would, CPU-wise.
next_core=0
pinned=()
pin_next() {  # sets pinned=(taskset -c A-B) for the next process; () without PIN
  pinned=()
  [ "${PIN:-0}" = 1 ] || return 0
  local n=${CORES_PER_NODE:-2} first=$next_core
  next_core=$((next_core + n))
  if [ "$next_core" -gt "$(nproc)" ]; then
    echo "PIN=1 needs more than $(nproc) cores" >&2; exit 2
  fi
  pinned=(taskset -c "$first-$((next_core - 1))")
}
