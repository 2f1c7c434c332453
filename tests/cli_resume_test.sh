#!/usr/bin/env bash
# cairn ingest against failures, with a real cairnd on loopback:
#   1. Ctrl-C (SIGINT) stops it cleanly with exit 130 and a checkpoint;
#   2. SIGKILL of the CLI mid-file, then --resume;
#   3. cairnd killed and restarted mid-ingest: the CLI retries with backoff;
#   4. cairnd stopped with SIGTERM and restarted mid-ingest: likewise.
# Each run must end with exactly the data of an uninterrupted ingest, repeated
# ids included (the last one wins).
# Usage: cli_resume_test.sh CAIRND CAIRN WORKDIR
set -euo pipefail
cairnd="$1"; cairn="$2"; work="$3"
rm -rf "$work"; mkdir -p "$work"
source "$(dirname "$0")/cairnd_lib.sh"

# 120,000 records of dimension 8: vector of "p-i" is (i, 2i mod 7919, ...).
# Ids p-0..p-999 come again near the end with new vectors (the last one wins).
N=120000
"$py" - "$work" "$N" <<'PY'
import json, sys
w, n = sys.argv[1], int(sys.argv[2])
def vec(i, salt):
    return [float(i), float((2 * i + salt) % 7919), float(salt), 1.0, 2.0, 3.0, 4.0, 5.0]
with open(f"{w}/in.jsonl", "w") as f:
    for i in range(n - 1000):
        f.write(json.dumps({"id": f"p-{i}", "vector": vec(i, 0), "payload": {"n": i}}) + "\n")
    for i in range(1000):
        f.write(json.dumps({"id": f"p-{i}", "vector": vec(i, 1), "payload": {"n": i, "again": True}}) + "\n")
PY
UNIQUE=$((N - 1000))

start_cairnd "$cairnd" "$work/data" --http-listen "" --insecure-no-auth
export CAIRN_TARGET="127.0.0.1:$port"
count() { "$cairn" collection info "$1" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["points"])'; }
# The data is right: the count, the repeated ids hold their last vector, and
# a few others hold theirs.
check() {
  local c="$1"
  [[ $(count "$c") == "$UNIQUE" ]] || fail "$c: $(count "$c") points, want $UNIQUE"
  for i in 0 7 999; do
    out="$("$cairn" search --collection "$c" --vector "$i,$(((2 * i + 1) % 7919)),1,1,2,3,4,5" --k 1 --exact)"
    grep -qE "^p-$i +0 " <<<"$out" || fail "$c: p-$i does not hold its last vector: $out"
  done
  for i in 1000 65432 $((UNIQUE - 1)); do
    out="$("$cairn" search --collection "$c" --vector "$i,$(((2 * i) % 7919)),0,1,2,3,4,5" --k 1 --exact)"
    grep -qE "^p-$i +0 " <<<"$out" || fail "$c: p-$i: $out"
  done
}
# Waits until the checkpoint of collection $1 records some progress.
wait_progress() {
  for _ in $(seq 400); do
    if compgen -G "$work/.cairn-ingest-$1-*.checkpoint" >/dev/null &&
       grep -qE '"records": [1-9]' "$work"/.cairn-ingest-"$1"-*.checkpoint; then return 0; fi
    sleep 0.025
  done
  fail "no progress in the checkpoint of $1"
}
cd "$work"

# 1. SIGINT: stops after what is in flight, exit 130, checkpoint kept; then
# SIGKILL during the resumed run; then a second resume completes.
"$cairn" collection create a --dim 8 >/dev/null
"$cairn" ingest --collection a --batch 200 --inflight 3 in.jsonl 2>int.log & ing=$!
wait_progress a
kill -INT "$ing"
set +e; wait "$ing"; code=$?; set -e
[[ $code == 130 ]] || fail "SIGINT: exit $code: $(cat int.log)"
grep -q "with --resume to continue" int.log || fail "SIGINT message: $(cat int.log)"
compgen -G ".cairn-ingest-a-*.checkpoint" >/dev/null || fail "SIGINT: no checkpoint"
before=$(count a)
(( before > 0 && before < UNIQUE )) || fail "SIGINT: $before points written"

"$cairn" ingest --collection a --batch 200 --inflight 3 --resume in.jsonl 2>kill.log & ing=$!
sleep 0.3
wait_progress a
kill -KILL "$ing"
set +e; wait "$ing"; set -e
grep -q "resuming after" kill.log || fail "resume message: $(cat kill.log)"
summary="$("$cairn" ingest --collection a --batch 200 --inflight 3 --resume --json in.jsonl)"
"$py" -c 'import json,sys; s=json.loads(sys.argv[1]); assert s["resumed"] and s["errors"]==0 and s["records_total"]==int(sys.argv[2]) and 0 < s["records"] < int(sys.argv[2]), s' \
  "$summary" "$N" || fail "resume summary: $summary"
! compgen -G ".cairn-ingest-a-*" >/dev/null || fail "checkpoint left after a complete ingest: $(ls -a)"
check a
# --resume with nothing to resume, or with other files: a clear refusal.
set +e
"$cairn" ingest --collection a --resume in.jsonl 2>none.log; code=$?
set -e
[[ $code == 1 ]] && grep -q "no checkpoint" none.log || fail "resume without checkpoint: $code $(cat none.log)"

# 2. The same ingest uninterrupted, for comparison, and the same data again
# over it (idempotent).
# A second ingest of the same files into the same collection meanwhile is
# refused: they would share a checkpoint.
"$cairn" collection create b --dim 8 >/dev/null
"$cairn" ingest --collection b --inflight 2 in.jsonl 2>/dev/null & ing=$!
wait_progress b
set +e
"$cairn" ingest --collection b in.jsonl 2>twice.log; code=$?
set -e
[[ $code == 1 ]] && grep -q "another cairn ingest is using the checkpoint" twice.log || fail "same checkpoint twice: $code $(cat twice.log)"
wait "$ing" || fail "uninterrupted ingest"
check b

# 3. cairnd dies mid-ingest and comes back on the same port: the CLI retries.
"$cairn" collection create c --dim 8 >/dev/null
"$cairn" ingest --collection c --batch 200 --inflight 3 in.jsonl 2>retry.log & ing=$!
wait_progress c
kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
sleep 0.5
start_cairnd "$cairnd" "$work/data" --http-listen "" --insecure-no-auth --listen "127.0.0.1:$port"
set +e; wait "$ing"; code=$?; set -e
[[ $code == 0 ]] || fail "ingest across a cairnd restart: exit $code: $(cat retry.log)"
grep -q "retry 1 of 10" retry.log || fail "no retry logged: $(cat retry.log)"
check c

# 4. cairnd is stopped gracefully (SIGTERM) mid-ingest and comes back: calls
# refused while it drains (UNAVAILABLE) or cancelled by gRPC as it stops
# (CANCELLED, without having run) are retried.
"$cairn" collection create d --dim 8 >/dev/null
"$cairn" ingest --collection d --batch 200 --inflight 4 in.jsonl 2>term.log & ing=$!
wait_progress d
kill -TERM "$pid"; wait "$pid" || fail "cairnd's drain under ingest exited $?"
start_cairnd "$cairnd" "$work/data" --http-listen "" --insecure-no-auth --listen "127.0.0.1:$port"
set +e; wait "$ing"; code=$?; set -e
[[ $code == 0 ]] || fail "ingest across a graceful cairnd restart: exit $code: $(cat term.log)"
check d

kill -TERM "$pid"; wait "$pid" || true
cd /; rm -rf "$work"
echo "cli resume: ok"
