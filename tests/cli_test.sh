#!/usr/bin/env bash
# The cairn CLI against a real cairnd on a loopback port: collections, ingest
# of fvecs (plain and gzip) and JSON Lines, search, info, bad input.
# Usage: cli_test.sh CAIRND CAIRN WORKDIR
set -euo pipefail
cairnd="$1"; cairn="$2"; work="$3"
rm -rf "$work"; mkdir -p "$work"

source "$(dirname "$0")/cairnd_lib.sh"
start_cairnd "$cairnd" "$work/data" --http-listen "" --insecure-no-auth
export CAIRN_TARGET="127.0.0.1:$port"

# 500 vectors of dimension 8: vector i is (i, i, ..., i).
"$py" - "$work" <<'PY'
import struct, sys, gzip, json
w = sys.argv[1]
with open(f"{w}/v.fvecs", "wb") as f:
    for i in range(500):
        f.write(struct.pack("<i", 8) + struct.pack("<8f", *([float(i)] * 8)))
with open(f"{w}/v.fvecs", "rb") as f, gzip.open(f"{w}/v2.fvecs.gz", "wb") as g:
    g.write(f.read())
with open(f"{w}/v.bvecs", "wb") as f:
    for i in range(3):
        f.write(struct.pack("<i", 8) + bytes([200 + i] * 8))
with open(f"{w}/v.ivecs", "wb") as f:
    for i in range(3):
        f.write(struct.pack("<i", 8) + struct.pack("<8i", *([-5 - i] * 8)))
# .npy float32 and float16, written by hand (no numpy needed).
def npy(path, descr, fmt, rows):
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%d, %d), }" % (descr, len(rows), len(rows[0]))
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        for r in rows:
            f.write(struct.pack("<%d%s" % (len(r), fmt), *r))
npy(f"{w}/v32.npy", "<f4", "f", [[float(300 + i)] * 8 for i in range(4)])
npy(f"{w}/v16.npy", "<f2", "e", [[float(400 + i)] * 8 for i in range(4)])
with open(f"{w}/mixed.jsonl", "w") as f:
    f.write(json.dumps({"id": "m-1", "vector": [9.0] * 8}) + "\n")
    f.write("not json\n")
    f.write(json.dumps({"id": "m-3", "vector": [9.0] * 3}) + "\n")
    f.write(json.dumps({"id": "m-4", "vector": [9.5] * 8}) + "\n")
with open(f"{w}/docs.jsonl", "w") as f:
    for i in range(20):
        f.write(json.dumps({"id": f"doc-{i}", "vector": [1000.0 + i] * 8,
                            "payload": {"lang": "en" if i % 2 == 0 else "de"}, "text": f"chunk {i}"}) + "\n")
with open(f"{w}/bad.jsonl", "w") as f:
    f.write(json.dumps({"id": "ok-1", "vector": [1.0] * 8}) + "\n")
    f.write(json.dumps({"id": "bad-2", "vector": [1.0] * 7}) + "\n")
with open(f"{w}/first_bad.jsonl", "w") as f:
    f.write(json.dumps({"id": "fb-1", "vector": [1.0] * 5}) + "\n")
with open(f"{w}/broken.jsonl", "w") as f:
    f.write('{"id": "x", "vector": [1,2,3,4,5,6,7,8]}\n{not json\n')
with open(f"{w}/trunc.fvecs", "wb") as f:
    f.write(struct.pack("<i", 8) + struct.pack("<8f", *([1.0] * 8)) + struct.pack("<i", 8) + b"\0" * 10)
PY

"$cairn" ingest --help | grep -c >/dev/null "Examples:" || fail "ingest --help"
"$cairn" search --help | grep -c >/dev/null "Usage: cairn search" || fail "search --help"
"$cairn" --help | grep -c >/dev/null "COMMAND --help" || fail "--help"
"$cairn" collection create docs --dim 8 --payload-index lang:keyword | grep -c >/dev/null "created docs" || fail create
"$cairn" collection list | grep -cx >/dev/null docs || fail list
"$cairn" ingest --collection docs "$work/v.fvecs" 2>"$work/ingest.log" || fail "ingest fvecs: $(cat "$work/ingest.log")"
grep -q "wrote 500 points" "$work/ingest.log" || fail "ingest log: $(cat "$work/ingest.log")"
# Same ids again from the gzip copy (idempotent), then JSON Lines with a --json summary.
"$cairn" ingest --collection docs "$work/v2.fvecs.gz" 2>/dev/null || fail "ingest gz"
summary="$("$cairn" ingest --collection docs --json "$work/docs.jsonl")"
"$py" -c 'import json,sys; s=json.loads(sys.argv[1]); assert s["points_written"]==20 and s["errors"]==0, s' "$summary" \
  || fail "json summary: $summary"
"$cairn" collection info docs | grep -c >/dev/null '"points": "520"' || fail "info: $("$cairn" collection info docs)"
# bvecs and ivecs into a second collection: ids 0..2, values as floats.
"$cairn" collection create small --dim 8 >/dev/null
"$cairn" collection info small | grep -c >/dev/null '"points": "0"' || fail "empty collection info: $("$cairn" collection info small)"
"$cairn" collection info small | grep -c >/dev/null '"hnsw_int8": true' || fail "hnsw_int8 default: $("$cairn" collection info small)"
"$cairn" collection create floats --dim 8 --hnsw-int8 off >/dev/null || fail "--hnsw-int8 off"
"$cairn" collection info floats | grep -c >/dev/null '"hnsw_int8": false' || fail "hnsw_int8 off: $("$cairn" collection info floats)"
"$cairn" collection create bad --dim 8 --hnsw-int8 maybe 2>/dev/null && fail "--hnsw-int8 maybe accepted"
"$cairn" collection drop floats >/dev/null || fail "drop floats"
"$cairn" collection create oncpu --dim 8 --index ivf_flat --device cpu >/dev/null || fail "--device cpu"
"$cairn" collection info oncpu | grep -c >/dev/null '"device": "DEVICE_CPU"' || fail "device cpu: $("$cairn" collection info oncpu)"
"$cairn" collection create bad --dim 8 --device tpu 2>/dev/null && fail "--device tpu accepted"
"$cairn" collection drop oncpu >/dev/null || fail "drop oncpu"
"$cairn" collection create pq --dim 8 --index ivf_pq --rerank 4 >/dev/null || fail "--rerank 4"
"$cairn" collection info pq | grep -c >/dev/null '"rerank_factor": 4' || fail "rerank 4: $("$cairn" collection info pq)"
"$cairn" collection create bad --dim 8 --rerank 101 2>/dev/null && fail "--rerank 101 accepted"
"$cairn" collection drop pq >/dev/null || fail "drop pq"
"$cairn" ingest --collection small "$work/v.bvecs" 2>/dev/null || fail "ingest bvecs"
out="$("$cairn" search --collection small --vector 201,201,201,201,201,201,201,201 --k 1)"
grep -qE '^1 +0 ' <<<"$out" || fail "bvecs search: $out"
"$cairn" ingest --collection small --format ivecs "$work/v.ivecs" 2>/dev/null || fail "ingest ivecs"
out="$("$cairn" search --collection small --vector -7,-7,-7,-7,-7,-7,-7,-7 --k 1)"
grep -qE '^2 +0 ' <<<"$out" || fail "ivecs search: $out"
"$cairn" ingest --collection small "$work/v32.npy" 2>/dev/null || fail "ingest npy f32"
out="$("$cairn" search --collection small --vector 302,302,302,302,302,302,302,302 --k 1)"
grep -qE '^2 +0 ' <<<"$out" || fail "npy f32 search: $out"
"$cairn" ingest --collection small "$work/v16.npy" 2>/dev/null || fail "ingest npy f16"
out="$("$cairn" search --collection small --vector 403,403,403,403,403,403,403,403 --k 1)"
grep -qE '^3 +0 ' <<<"$out" || fail "npy f16 search: $out"
# --skip-bad: two good records written, two bad ones counted with reasons.
summary="$("$cairn" ingest --collection small --skip-bad --json "$work/mixed.jsonl")"
"$py" -c 'import json,sys; s=json.loads(sys.argv[1]); assert s["points_written"]==2 and s["skipped"]==2 and "line 2" in s["skipped_sample"][0] and "record 3" in s["skipped_sample"][1], s' "$summary" \
  || fail "skip-bad: $summary"

out="$("$cairn" search --collection docs --vector 7,7,7,7,7,7,7,7 --k 1 --exact)"
grep -qE '^7 +0 ' <<<"$out" || fail "search: $out"
# The table's columns line up with UTF-8 ids (padding counts characters).
echo '{"id": "äöü-7", "vector": [7.25,7.25,7.25,7.25,7.25,7.25,7.25,7.25]}' | "$cairn" ingest --collection docs - 2>/dev/null \
  || fail "ingest a UTF-8 id"
out="$("$cairn" search --collection docs --vector 7,7,7,7,7,7,7,7 --k 2 --exact)"
"$py" -c 'import sys; rows=sys.argv[1].splitlines()[1:]; assert len(rows)==2 and "äöü-7" in sys.argv[1] and len({r.index(r.split()[1], 24) for r in rows})==1, rows' "$out" \
  || fail "table with a UTF-8 id: $out"
"$cairn" collection info docs >/dev/null
# Queries on stdin: {"vector": ...} without an id, or a bare array.
out="$(printf '{"vector": [7,7,7,7,7,7,7,7]}\n[9,9,9,9,9,9,9,9]\n' | "$cairn" search --collection docs --queries - --k 1 --exact --json)"
"$py" -c 'import sys,json; h=[json.loads(l)["hits"][0]["id"]["num"] for l in sys.argv[1].splitlines()]; assert h==["7","9"], h' "$out" \
  || fail "queries on stdin: $out"
# An exact match scores 0, and the JSON says so.
"$py" -c 'import sys,json; s=[json.loads(l)["hits"][0]["score"] for l in sys.argv[1].splitlines()]; assert s==[0,0], s' "$out" \
  || fail "score 0 in --json: $out"
# A string id that reads as a number is quoted in the table; the number is not.
"$cairn" collection create ids --dim 2 >/dev/null
printf '{"id": "42", "vector": [1, 1]}\n{"id": 42, "vector": [5, 5]}\n' >"$work/ids.jsonl"
"$cairn" ingest --collection ids "$work/ids.jsonl" 2>/dev/null || fail "ingest ids"
out="$("$cairn" search --collection ids --vector 1,1 --k 2 --exact)"
grep -qE '^"42" +0 ' <<<"$out" && grep -qE '^42 +32 ' <<<"$out" || fail "string vs number ids: $out"
"$cairn" collection drop ids >/dev/null
out="$("$cairn" search --collection docs --vector 1003,1003,1003,1003,1003,1003,1003,1003 --k 3 \
  --filter '{"must":[{"key":"lang","match":{"value":"de"}}]}' --json)"
"$py" -c 'import json,sys; h=json.loads(sys.argv[1])["hits"]; assert [x["id"]["str"] for x in h]==["doc-3","doc-1","doc-5"], h' "$out" \
  || fail "filtered search: $out"

# Bad input: exit 2, the file and record named; the records before it are
# written, nothing after it.
set +e
"$cairn" ingest --collection docs "$work/bad.jsonl" 2>"$work/bad.log"; code=$?
set -e
[[ $code == 2 ]] || fail "bad dimension exit $code"
# A failure before anything was acknowledged leaves no checkpoint behind.
set +e
(cd "$work" && "$cairn" ingest --collection docs first_bad.jsonl 2>first_bad.log); code=$?
set -e
[[ $code == 2 ]] || fail "first record bad: exit $code $(cat "$work/first_bad.log")"
if ls -a "$work" | grep -q '^\.cairn-ingest-'; then fail "checkpoint files left: $(ls -a "$work")"; fi
grep -q "bad.jsonl: record 2: vector has dimension 7; the collection has 8" "$work/bad.log" || fail "bad: $(cat "$work/bad.log")"
set +e
"$cairn" ingest --collection docs "$work/broken.jsonl" 2>"$work/broken.log"; code=$?
"$cairn" ingest --collection docs "$work/trunc.fvecs" 2>"$work/trunc.log"; code2=$?
"$cairn" search --collection nope --vector 1,2 >/dev/null 2>&1; code3=$?
"$cairn" frobnicate >/dev/null 2>&1; code4=$?
# A missing second file is found before the first is loaded.
"$cairn" ingest --collection docs "$work/docs.jsonl" "$work/missing.fvecs" 2>"$work/missing.log"; code5=$?
set -e
[[ $code5 == 2 ]] && grep -q "missing.fvecs: cannot open: No such file or directory" "$work/missing.log" \
  && grep -q "nothing was written" "$work/missing.log" || fail "missing file: $code5 $(cat "$work/missing.log")"
[[ $code == 2 ]] && grep -q "broken.jsonl: line 2: not a JSON object" "$work/broken.log" || fail "broken: $code $(cat "$work/broken.log")"
[[ $code2 == 2 ]] && grep -q "trunc.fvecs: record 2 is truncated" "$work/trunc.log" || fail "trunc: $code2 $(cat "$work/trunc.log")"
[[ $code3 == 3 ]] || fail "unknown collection exit $code3"
[[ $code4 == 1 ]] || fail "unknown command exit $code4"
# A misspelled flag or a stray argument is a usage error, never ignored (a
# search without its filter, a collection without its metric).
set +e
"$cairn" search --collection docs --vector 1,1,1,1,1,1,1,1 --fitler '{}' >/dev/null 2>"$work/usage.log"; code=$?
"$cairn" collection create typo --dim 8 --metirc cosine >/dev/null 2>>"$work/usage.log"; code2=$?
"$cairn" collection info docs extra >/dev/null 2>>"$work/usage.log"; code3=$?
"$cairn" collection create typo2 --dim abc >/dev/null 2>>"$work/usage.log"; code4=$?
# Each ingest mode refuses the other's flags.
"$cairn" ingest --collection docs --metric cosine "$work/docs.jsonl" 2>>"$work/usage.log"; code5=$?
"$cairn" ingest --data-dir "$work/offline" --collection c --dim 8 --batch 5 "$work/docs.jsonl" 2>>"$work/usage.log"; code6=$?
set -e
[[ $code == 1 && $code2 == 1 && $code3 == 1 && $code4 == 1 && $code5 == 1 && $code6 == 1 ]] \
  || fail "usage errors exit $code $code2 $code3 $code4 $code5 $code6"
grep -q -- "--metric is for an offline ingest" "$work/usage.log" || fail "online --metric: $(cat "$work/usage.log")"
grep -q -- "--batch is for an online ingest" "$work/usage.log" || fail "offline --batch: $(cat "$work/usage.log")"
[[ ! -e "$work/offline" ]] || fail "a refused offline ingest created its data directory"
grep -q "unknown flag --fitler for \`cairn search\`" "$work/usage.log" || fail "--fitler: $(cat "$work/usage.log")"
grep -q "unknown flag --metirc" "$work/usage.log" || fail "--metirc: $(cat "$work/usage.log")"
grep -q "takes at most 1 bare argument; unexpected: extra" "$work/usage.log" || fail "extra: $(cat "$work/usage.log")"
grep -q -- "--dim is a positive integer, got 'abc'" "$work/usage.log" || fail "--dim abc: $(cat "$work/usage.log")"
if "$cairn" collection list | grep -q typo; then fail "a collection was created despite a usage error"; fi
# ok-1 and x came before the bad records: they are in; nothing else is (523: 520 + äöü-7 + those two).
"$cairn" collection info docs | grep -c >/dev/null '"points": "523"' || fail "bad input: $("$cairn" collection info docs)"
"$cairn" info | grep -c >/dev/null "collections: docs" || fail info
"$cairn" info | grep -Ec >/dev/null "^device: (gpu: |cpu: no usable GPU)" || fail "info device: $("$cairn" info)"
# Snapshots: create, list, download as a tar that is a data directory, restore.
"$cairn" snapshot create docs | grep -c >/dev/null "^docs-" || fail "snapshot create"
snap="$("$cairn" snapshot list docs --json | "$py" -c 'import json,sys; print(json.loads(sys.stdin.readline())["name"])')"
"$cairn" snapshot download "$snap" --output "$work/snap.tar" 2>/dev/null || fail "snapshot download"
tar -tf "$work/snap.tar" | grep -c >/dev/null "^collections/docs/collection.json$" || fail "snapshot tar: $(tar -tf "$work/snap.tar" | head)"
[[ ! -e "$work/snap.tar.part" ]] || fail "download left its .part file"
set +e
"$cairn" snapshot download no-such-snapshot --output "$work/none.tar" 2>/dev/null; code=$?
set -e
[[ $code == 3 && ! -e "$work/none.tar" && ! -e "$work/none.tar.part" ]] || fail "download of an unknown snapshot: $code"
"$cairn" snapshot restore "$snap" docs2 | grep -c >/dev/null "restored" || fail "snapshot restore"
"$cairn" collection info docs2 | grep -c >/dev/null '"points": "523"' || fail "restored: $("$cairn" collection info docs2)"
"$cairn" snapshot delete "$snap" | grep -c >/dev/null "deleted $snap" || fail "snapshot delete"
[[ -z "$("$cairn" snapshot list docs)" ]] || fail "deleted snapshot still listed: $("$cairn" snapshot list docs)"
set +e
"$cairn" snapshot delete "$snap" 2>/dev/null; code=$?
set -e
[[ $code == 3 ]] || fail "second delete of a snapshot: exit $code"
"$cairn" collection info docs2 | grep -c >/dev/null '"points": "523"' || fail "restored after its snapshot's delete"
"$cairn" collection drop docs | grep -c >/dev/null "dropped docs" || fail drop

kill -TERM "$pid"; wait "$pid"
rm -rf "$work"
echo "cli: ok"
