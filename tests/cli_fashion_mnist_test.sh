#!/usr/bin/env bash
# Fashion-MNIST (Debian's dataset-fashion-mnist: 60,000 train images, 784-d)
# loaded with `cairn ingest` straight from the IDX file into a real cairnd,
# then 200 test images searched; recall@10 against exact search must be
# >= 0.95. Skips (exit 77) when the package is not installed.
# Usage: cli_fashion_mnist_test.sh CAIRND CAIRN WORKDIR
set -euo pipefail
cairnd="$1"; cairn="$2"; work="$3"
fm=/usr/share/datasets/fashion-mnist
[[ -f $fm/train-images-idx3-ubyte.gz ]] || { echo "SKIP: dataset-fashion-mnist is not installed"; exit 77; }
rm -rf "$work"; mkdir -p "$work"
source "$(dirname "$0")/cairnd_lib.sh"
start_cairnd "$cairnd" "$work/data" --http-listen "" --insecure-no-auth
export CAIRN_TARGET="127.0.0.1:$port"

"$cairn" collection create fm --dim 784 >/dev/null
summary="$("$cairn" ingest --collection fm --json "$fm/train-images-idx3-ubyte.gz")"
"$py" -c 'import json,sys; s=json.loads(sys.argv[1]); assert s["points_written"]==60000 and s["errors"]==0, s' "$summary" \
  || fail "ingest: $summary"
echo "ingest: $summary"
q="$fm/t10k-images-idx3-ubyte.gz"
"$cairn" search --collection fm --queries "$q" --max-queries 200 --json >"$work/ann.jsonl"
"$cairn" search --collection fm --queries "$q" --max-queries 200 --json --exact >"$work/exact.jsonl"
"$py" - "$work" <<'PY' || fail "recall"
import json, sys
w = sys.argv[1]
ann = [json.loads(l) for l in open(f"{w}/ann.jsonl")]
exact = [json.loads(l) for l in open(f"{w}/exact.jsonl")]
assert len(ann) == len(exact) == 200, (len(ann), len(exact))
ids = lambda r: {h["id"]["num"] for h in r["hits"]}
assert all(len(r["hits"]) == 10 for r in exact)
recall = sum(len(ids(a) & ids(e)) for a, e in zip(ann, exact)) / 2000
print(f"recall@10 = {recall:.4f} over 200 queries")
assert recall >= 0.95, recall
PY
kill -TERM "$pid"; wait "$pid" || true
rm -rf "$work"
echo "cli fashion-mnist: ok"
