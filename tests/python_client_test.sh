#!/usr/bin/env bash
# Runs the Python client example against a real cairnd on a loopback port.
# Usage: python_client_test.sh CAIRND WORKDIR
set -euo pipefail
cairnd="$1"
work="$2"
root="$(cd "$(dirname "$0")/.." && pwd)"
rm -rf "$work"
mkdir -p "$work"
"$root/clients/python/generate.sh" "$work/gen"

source "$root/tests/cairnd_lib.sh"
start_cairnd "$cairnd" "$work/data" --http-listen 127.0.0.1:0 \
  --api-keys-file <(echo "admin python-example-admin-key")

out="$(CAIRN_PY_GEN="$work/gen" "${PYTHON:-/usr/bin/python3}" "$root/clients/python/agent_retrieval.py" \
  --target "127.0.0.1:$port" --api-key python-example-admin-key)"
echo "$out"
grep -q '^upserted 4 chunks$' <<<"$out"
# The nearest English chunks to a password question, and nothing German.
grep -q '^faq-1 ' <<<"$out"
! grep -q '\[de\]' <<<"$out"
grep -q '^rejected: INVALID_ARGUMENT: .*dimension' <<<"$out"
grep -q '^collection holds 4 chunks$' <<<"$out"
kill -TERM "$pid"
wait "$pid"
rm -rf "$work"
echo "python client example: ok"
