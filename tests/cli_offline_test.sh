#!/usr/bin/env bash
# Offline ingest (`cairn ingest --data-dir`) into a directory no server holds,
# then a real cairnd serving the result: counts, repeated ids (the last one
# wins), payloads from a JSON Lines file beside an .npy file, filters. Also:
# a directory a running cairnd holds is refused; a non-empty collection is
# refused; Ctrl-C leaves the collection empty.
# Usage: cli_offline_test.sh CAIRND CAIRN WORKDIR
set -euo pipefail
cairnd="$1"; cairn="$2"; work="$3"
rm -rf "$work"; mkdir -p "$work"
source "$(dirname "$0")/cairnd_lib.sh"

# docs.jsonl: 3000 string ids (d-0..d-2999), then d-0..d-9 again with new
# vectors; v.npy: 500 rows of dimension 8 with payloads in v.payloads.jsonl.
"$py" - "$work" <<'PY'
import json, struct, sys
w = sys.argv[1]
def vec(i, salt):
    return [float(i), float((3 * i + salt) % 101), float(salt), 1.0, 0.0, 0.0, 0.0, 0.0]
with open(f"{w}/docs.jsonl", "w") as f:
    for i in range(3000):
        f.write(json.dumps({"id": f"d-{i}", "vector": vec(i, 0), "payload": {"lang": "en" if i % 2 else "de"},
                            "text": f"chunk {i}"}) + "\n")
    for i in range(10):
        f.write(json.dumps({"id": f"d-{i}", "vector": vec(i, 7), "payload": {"lang": "fr"}}) + "\n")
header = "{'descr': '<f4', 'fortran_order': False, 'shape': (500, 8), }"
header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
with open(f"{w}/v.npy", "wb") as f, open(f"{w}/v.payloads.jsonl", "w") as p:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    for i in range(500):
        f.write(struct.pack("<8f", *([float(5000 + i)] * 8)))
        p.write(json.dumps({"lang": "np", "row": i}) + "\n")
PY

data="$work/data"
# A first load creates its collection from the flags.
summary="$("$cairn" ingest --data-dir "$data" --collection docs --dim 8 --payload-index lang:keyword \
  --segment-size 1000 --json "$work/docs.jsonl")"
"$py" -c 'import json,sys; s=json.loads(sys.argv[1]); assert s["mode"]=="offline" and s["points_written"]==3000 and s["errors"]==0, s' \
  "$summary" || fail "offline docs: $summary"
"$cairn" ingest --data-dir "$data" --collection vec --dim 8 --index ivf_flat --payloads "$work/v.payloads.jsonl" \
  "$work/v.npy" 2>"$work/vec.log" || fail "offline npy: $(cat "$work/vec.log")"
grep -q "wrote 500 points" "$work/vec.log" || fail "offline npy log: $(cat "$work/vec.log")"

# A non-empty collection is refused, and nothing changes.
set +e
"$cairn" ingest --data-dir "$data" --collection docs "$work/docs.jsonl" 2>"$work/nonempty.log"; code=$?
"$cairn" ingest --data-dir "$data" --collection nope "$work/docs.jsonl" 2>"$work/nope.log"; code2=$?
"$cairn" ingest --data-dir "$data" --collection docs --resume "$work/docs.jsonl" 2>/dev/null; code3=$?
set -e
[[ $code == 1 ]] && grep -q "empty collection" "$work/nonempty.log" || fail "non-empty: $code $(cat "$work/nonempty.log")"
[[ $code2 == 1 ]] && grep -q "give --dim" "$work/nope.log" || fail "absent collection: $code2 $(cat "$work/nope.log")"
[[ $code3 == 1 ]] || fail "--resume offline: exit $code3"

# A failed load into a collection it created leaves no collection behind: the
# same name loads next time with the right dimension.
set +e
"$cairn" ingest --data-dir "$data" --collection fresh --dim 100 "$work/docs.jsonl" 2>"$work/fresh.log"; code=$?
set -e
[[ $code == 2 ]] && grep -q "nothing was loaded" "$work/fresh.log" || fail "wrong --dim: $code $(cat "$work/fresh.log")"
"$cairn" ingest --data-dir "$data" --collection fresh --dim 8 "$work/v.npy" 2>"$work/fresh2.log" \
  || fail "reload after a failed first load: $(cat "$work/fresh2.log")"

# Ctrl-C during an offline load: exit 130; the collection it created is gone.
"$py" - "$work" <<'PY'
import struct, sys
with open(f"{sys.argv[1]}/big.fvecs", "wb") as f:
    row = struct.pack("<i", 8) + struct.pack("<8f", *([1.5] * 8))
    f.write(row * 2_000_000)
PY
"$cairn" ingest --data-dir "$data" --collection big --dim 8 --index flat "$work/big.fvecs" 2>"$work/int.log" & ing=$!
sleep 0.5
kill -INT "$ing"
set +e; wait "$ing"; code=$?; set -e
[[ $code == 130 ]] && grep -q "nothing was loaded" "$work/int.log" || fail "offline SIGINT: $code $(cat "$work/int.log")"

# cairnd serves what was loaded.
start_cairnd "$cairnd" "$data" --http-listen "" --insecure-no-auth
export CAIRN_TARGET="127.0.0.1:$port"
points() { "$cairn" collection info "$1" | "$py" -c 'import json,sys; print(json.load(sys.stdin).get("points", 0))'; }
[[ $(points docs) == 3000 ]] || fail "docs points: $(points docs)"
[[ $(points vec) == 500 ]] || fail "vec points: $(points vec)"
if "$cairn" collection info big >/dev/null 2>&1; then fail "big exists after Ctrl-C of the load that created it"; fi
out="$("$cairn" search --collection docs --vector 4,19,7,1,0,0,0,0 --k 1 --json --exact)"   # d-4's last vector
"$py" -c 'import json,sys; h=json.loads(sys.argv[1])["hits"][0]; assert h["id"]["str"]=="d-4" and h["payload"]["lang"]=="fr", h' "$out" \
  || fail "last one wins: $out"
out="$("$cairn" search --collection docs --vector 1501,59,0,1,0,0,0,0 --k 5 --json \
  --filter '{"must":[{"key":"lang","match":{"value":"en"}}]}')"
"$py" -c 'import json,sys; h=json.loads(sys.argv[1])["hits"]; assert h[0]["id"]["str"]=="d-1501" and len(h)==5 and all(x["payload"]["lang"]=="en" for x in h), h' "$out" \
  || fail "filtered search: $out"
out="$("$cairn" search --collection vec --vector 5123,5123,5123,5123,5123,5123,5123,5123 --k 1 --json)"
"$py" -c 'import json,sys; h=json.loads(sys.argv[1])["hits"][0]; assert h["id"]["num"]=="123" and h["payload"]=={"lang":"np","row":123}, h' "$out" \
  || fail "npy payloads: $out"
# Online writes work on the loaded collection.
echo '{"id": "d-new", "vector": [1,2,3,4,5,6,7,8]}' | "$cairn" ingest --collection docs - 2>/dev/null || fail "online after offline"
[[ $(points docs) == 3001 ]] || fail "docs after online: $(points docs)"

# The directory is held by cairnd now: an offline ingest is refused.
set +e
"$cairn" ingest --data-dir "$data" --collection other --dim 8 "$work/docs.jsonl" 2>"$work/locked.log"; code=$?
set -e
[[ $code == 1 ]] && grep -q "needs the directory to itself" "$work/locked.log" || fail "locked: $code $(cat "$work/locked.log")"

kill -TERM "$pid"; wait "$pid" || true
rm -rf "$work"
echo "cli offline: ok"
