#!/usr/bin/env bash
# Installs the pinned node peers (package.json) into bench/ann/node/node_modules
# (ignored by git). Exits non-zero, with the reason, when npm cannot.
set -euo pipefail
cd "$(dirname "$0")"
command -v npm >/dev/null || { echo "node peers: npm is not installed (apt-get install npm)" >&2; exit 1; }
if [[ -d node_modules/@lancedb/lancedb && -d node_modules/usearch ]]; then exit 0; fi
echo "node peers: npm install (pinned versions)..." >&2
npm install --no-audit --no-fund --loglevel=error >&2
