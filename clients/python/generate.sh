#!/usr/bin/env bash
# Generates the Python cairn.v1 client into DIR (default ./gen) with Debian's
# protoc and grpc_python_plugin (apt: protobuf-compiler protobuf-compiler-grpc).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/gen}"
mkdir -p "$out"
protoc --proto_path="$here/../../api/proto" \
  --python_out="$out" --grpc_out="$out" \
  --plugin=protoc-gen-grpc="$(command -v grpc_python_plugin)" \
  "$here"/../../api/proto/cairn/v1/*.proto
# Make cairn/ and cairn/v1/ importable packages.
touch "$out/cairn/__init__.py" "$out/cairn/v1/__init__.py"
