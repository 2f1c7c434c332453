#!/usr/bin/env bash
# Bulk-ingest benchmark: the same generated, clustered vectors (default
# 1,000,000 x 128 float32, in one .npy) loaded four ways, with the IVF-Flat
# index built, in one run on this machine:
#   faiss     Debian's python3-faiss: IndexIVFFlat train + add from a NumPy
#             array in memory (no durability), the in-memory reference
#   offline   cairn ingest --data-dir: sorted files + sealed segments built
#             directly, durable when it returns
#   online    cairn ingest to cairnd on loopback (client-streaming upserts,
#             each acknowledged batch durable and searchable at once): the
#             rate to the last acknowledgement, then the time until the
#             background indexing is done (collection info's
#             unindexed_points is 0) and the recall after it; run again with
#             one client searching meanwhile (grpc_bench --load): its p50/p99
#             while the ingest runs and the ingest rate with it
#   wal       the disk's raw rate for the same synchronous writes: dd with
#             oflag=dsync in blocks of one batch (1,000 vectors)
#   embedded  the engine in-process, Upsert batches of 1000, each durable
# Recall@10 (against exact neighbours) sits next to every speed figure: for
# FAISS and for the offline load (served by cairnd) at several nprobe.
#
# Usage: bench/ingest/run.sh [--n N] [--dim D] [--nlist L] [--queries Q]
#                            [--skip-online] [--out DIR]
# Needs a Release build (make run or cmake --build build) and, for the data
# and the FAISS peer, /usr/bin/python3 with python3-numpy and python3-faiss
# (installed here when run as root).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${BIN:-$root/build/bin}"
py="${PYTHON:-/usr/bin/python3}"
n=1000000 dim=128 nlist=1024 nq=1000 skip_online=0 out="$root/bench/out/ingest"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --n) n="$2"; shift 2 ;;
    --dim) dim="$2"; shift 2 ;;
    --nlist) nlist="$2"; shift 2 ;;
    --queries) nq="$2"; shift 2 ;;
    --skip-online) skip_online=1; shift ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 1 ;;
  esac
done
for b in cairn cairnd embedded_ingest grpc_bench; do
  [[ -x $bin/$b ]] || { echo "missing $bin/$b: build first (cmake --build build)" >&2; exit 1; }
done
if ! "$py" -c 'import numpy, faiss' 2>/dev/null; then
  if [[ $(id -u) == 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-numpy python3-faiss >/dev/null
  else
    echo "needs python3-numpy and python3-faiss: apt-get install python3-numpy python3-faiss" >&2; exit 1
  fi
fi
threads=$(nproc)
mkdir -p "$out"
data="$out/data-$n-$dim"
mkdir -p "$data"
results="$out/results.jsonl"
: >"$results"
now() { date +%s.%N; }
elapsed() { "$py" -c "print($2 - $1)"; }
emit() { echo "$1" | tee -a "$results"; }

# ---- data and exact neighbours (cached) -------------------------------------
if [[ ! -f $data/gt.npy ]]; then
  echo "generating $n x $dim clustered vectors and exact neighbours of $nq queries..." >&2
  "$py" - "$data" "$n" "$dim" "$nq" "$root/bench/ann" <<'PY'
import sys, numpy as np, faiss
out, n, d, nq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, sys.argv[5])
from run import synthetic                   # the ANN harness's clustered generator
base, q = synthetic(n, d, nq, 20261129)
np.save(f"{out}/base.npy", base)
np.save(f"{out}/queries.npy", q)
flat = faiss.IndexFlatL2(d)
flat.add(base)
np.save(f"{out}/gt.npy", flat.search(q, 10)[1].astype(np.int64))
PY
fi
mb=$("$py" -c "print(round($n * $dim * 4 / 1e6, 1))")

# ---- FAISS (python3-faiss), in memory ----------------------------------------
echo "faiss: IndexIVFFlat nlist=$nlist, $threads threads..." >&2
emit "$("$py" - "$data" "$nlist" "$threads" <<'PY'
import sys, time, json, numpy as np, faiss
data, nlist, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
faiss.omp_set_num_threads(threads)
x = np.load(f"{data}/base.npy"); q = np.load(f"{data}/queries.npy"); gt = np.load(f"{data}/gt.npy")
t = time.time()
index = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], nlist)
index.train(x)
index.add(x)
secs = time.time() - t
rec = {}
for nprobe in (1, 4, 16):
    index.nprobe = nprobe
    got = index.search(q, 10)[1]
    rec[str(nprobe)] = float(np.mean([len(set(got[i]) & set(gt[i])) / 10 for i in range(len(q))]))
print(json.dumps({"path": "faiss", "records": len(x), "seconds": round(secs, 3),
                  "records_per_second": round(len(x) / secs, 1), "mb_per_second": round(x.nbytes / 1e6 / secs, 2),
                  "recall_at_10_by_nprobe": rec, "faiss": faiss.__version__}))
PY
)"

# Recall@10 of collection $2 served by a cairnd on $1, at nprobe 1, 4, 16.
recall() {
  local target="$1" coll="$2" r=()
  for nprobe in 1 4 16; do
    "$bin/cairn" --target "$target" search --collection "$coll" --queries "$data/queries.npy" --k 10 \
      --nprobe "$nprobe" --json >"$out/hits-$nprobe.jsonl"
  done
  "$py" - "$data/gt.npy" "$out" <<'PY'
import sys, json, numpy as np
gt = np.load(sys.argv[1]); rec = {}
for nprobe in (1, 4, 16):
    hits = [json.loads(l) for l in open(f"{sys.argv[2]}/hits-{nprobe}.jsonl")]
    got = [{int(h["id"]["num"]) for h in r["hits"]} for r in hits]
    rec[str(nprobe)] = float(np.mean([len(got[i] & set(gt[i])) / 10 for i in range(len(gt))]))
print(json.dumps(rec))
PY
}

# A cairnd on a free loopback port over data dir $1; sets $srv_pid and $srv_target.
serve() {
  "$bin/cairnd" --data-dir "$1" --listen 127.0.0.1:0 --http-listen "" --insecure-no-auth >"$out/cairnd.log" 2>&1 &
  srv_pid=$!
  for _ in $(seq 200); do
    if grep -q '"event":"serving"' "$out/cairnd.log"; then break; fi
    sleep 0.05
  done
  srv_target="127.0.0.1:$(grep -o '"port":[0-9]*' "$out/cairnd.log" | head -1 | cut -d: -f2)"
}
trap '[[ -n ${srv_pid:-} ]] && kill "$srv_pid" 2>/dev/null || true' EXIT

# ---- Cairn offline -----------------------------------------------------------
echo "cairn offline: ingest --data-dir..." >&2
rm -rf "$out/offline"
summary="$("$bin/cairn" ingest --data-dir "$out/offline" --collection bench --dim "$dim" --index ivf_flat \
  --nlist "$nlist" --segment-size "$n" --json "$data/base.npy")"
serve "$out/offline"
rec="$(recall "$srv_target" bench)"
kill "$srv_pid"; wait "$srv_pid" 2>/dev/null || true; srv_pid=""
emit "$("$py" -c 'import json,sys; s=json.loads(sys.argv[1]); print(json.dumps({"path":"offline","records":s["records"],"seconds":round(s["seconds"],3),"records_per_second":round(s["records_per_second"],1),"mb_per_second":round(s["mb_per_second"],2),"recall_at_10_by_nprobe":json.loads(sys.argv[2])}))' "$summary" "$rec")"

# ---- Cairn online and embedded --------------------------------------------------
if [[ $skip_online == 0 ]]; then
  echo "wal: dd oflag=dsync, blocks of one batch..." >&2
  block=$((1000 * dim * 4))
  count=$((256 * 1024 * 1024 / block))
  mkdir -p "$out/wal"
  t0=$(now)
  dd if=/dev/zero of="$out/wal/f" bs="$block" count="$count" oflag=dsync status=none
  t1=$(now)
  rm -rf "$out/wal"
  emit "$("$py" -c 'import json,sys; b,c,s,d=int(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3]),int(sys.argv[4]); print(json.dumps({"path":"wal","records":b*c//(4*d),"seconds":round(s,3),"records_per_second":round(b*c/(4*d)/s,1),"mb_per_second":round(b*c/1e6/s,2)}))' "$block" "$count" "$(elapsed "$t0" "$t1")" "$dim")"

  # $1: the path's name; $2: 1 to search meanwhile.
  online() {
    rm -rf "$out/online"
    serve "$out/online"
    "$bin/cairn" --target "$srv_target" collection create bench --dim "$dim" --index ivf_flat --nlist "$nlist" >/dev/null
    local load_pid="" t0 t1 t2 left
    if [[ $2 == 1 ]]; then
      # Searches from now until 60 s on; the ingest's window is taken from the log.
      "$bin/grpc_bench" --target "$srv_target" --load bench 60 --latency-log "$out/latency.log" >/dev/null &
      load_pid=$!
      sleep 0.5
    fi
    t0=$(now)
    summary="$("$bin/cairn" --target "$srv_target" ingest --collection bench --json "$data/base.npy")"
    t1=$(now)
    # The background indexing: until nothing is left unindexed.
    for _ in $(seq 6000); do
      left=$("$bin/cairn" --target "$srv_target" collection info bench | "$py" -c 'import json,sys; print(json.load(sys.stdin).get("unindexedPoints", 0))')
      [[ $left == 0 ]] && break
      sleep 0.1
    done
    t2=$(now)
    local rec="null" lat="null"
    if [[ -n $load_pid ]]; then
      wait "$load_pid" || true
      lat="$("$py" - "$out/latency.log" "$t0" "$t1" <<'PY'
import sys, json
t0, t1 = float(sys.argv[2]) * 1000, float(sys.argv[3]) * 1000
ms = sorted(float(l.split()[1]) for l in open(sys.argv[1]) if l.strip() and t0 <= float(l.split()[0]) <= t1)
pick = lambda p: round(ms[min(len(ms) - 1, int(p * len(ms)))], 2) if ms else None
print(json.dumps({"searches": len(ms), "p50_ms": pick(0.5), "p99_ms": pick(0.99)}))
PY
)"
    else
      rec="$(recall "$srv_target" bench)"
    fi
    kill "$srv_pid"; wait "$srv_pid" 2>/dev/null || true; srv_pid=""
    emit "$("$py" -c 'import json,sys; s=json.loads(sys.argv[1]); print(json.dumps({"path":sys.argv[2],"records":s["points_written"],"seconds":round(s["seconds"],3),"records_per_second":round(s["records_per_second"],1),"mb_per_second":round(s["mb_per_second"],2),"indexed_seconds":round(float(sys.argv[3]),3),"recall_at_10_by_nprobe":json.loads(sys.argv[4]),"search_during_ingest":json.loads(sys.argv[5])}))' "$summary" "$1" "$(elapsed "$t0" "$t2")" "$rec" "$lat")"
  }
  echo "cairn online: ingest to cairnd on loopback..." >&2
  online online 0
  echo "cairn online with one client searching meanwhile..." >&2
  online online_searched 1
  echo "cairn embedded: Upsert batches of 1000, durable..." >&2
  rm -rf "$out/embedded"
  emit "$("$bin/embedded_ingest" --data-dir "$out/embedded" --index ivf_flat --nlist "$nlist" "$data/base.npy")"
fi
rm -rf "$out/offline" "$out/online" "$out/embedded" "$out"/hits-*.jsonl "$out/latency.log"

# ---- table ---------------------------------------------------------------------
"$py" - "$results" "$n" "$dim" "$nlist" "$mb" <<'PY'
import sys, json
rows = {r["path"]: r for r in map(json.loads, open(sys.argv[1]))}
n, dim, nlist, mb = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
print(f"\n{n} x {dim} float32 ({mb} MB), IVF-Flat nlist={nlist}\n")
print("| path | seconds | vectors/s | MB/s | indexed after (s) | recall@10 nprobe 1 / 4 / 16 | search p50 / p99 meanwhile (ms) |")
print("|---|---|---|---|---|---|---|")
for p in ("faiss", "offline", "online", "online_searched", "embedded", "wal"):
    if p not in rows: continue
    r = rows[p]; rec = r.get("recall_at_10_by_nprobe")
    rs = " / ".join(f"{rec[k]:.3f}" for k in ("1", "4", "16")) if rec else "-"
    ix = f"{r['indexed_seconds']:.1f}" if r.get("indexed_seconds") else "-"
    s = r.get("search_during_ingest")
    ss = f"{s['p50_ms']} / {s['p99_ms']} ({s['searches']} searches)" if s else "-"
    print(f"| {p} | {r['seconds']:.1f} | {r['records_per_second']:.0f} | {r['mb_per_second']:.1f} | {ix} | {rs} | {ss} |")
o = rows.get("offline")
if o and "faiss" in rows: print(f"\noffline vs FAISS build: {rows['faiss']['seconds'] / o['seconds']:.2f}x")
if o and "online" in rows: print(f"offline vs online: {rows['online']['seconds'] / o['seconds']:.2f}x")
if "online" in rows and "embedded" in rows:
    print(f"online / embedded rate: {rows['online']['records_per_second'] / rows['embedded']['records_per_second']:.2f}")
if "online" in rows and "wal" in rows:
    print(f"online / the disk's synchronous write rate: {rows['online']['records_per_second'] / rows['wal']['records_per_second']:.2f}")
PY
