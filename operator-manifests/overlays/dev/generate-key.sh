#!/usr/bin/env bash
# Writes overlays/dev/api-keys with one new admin key, unless it exists, and
# prints the key: the dev overlay makes the Secret cairn-secrets from it.
# The file stays on this machine (.gitignore); use it as
#   cairn --target ... --api-key "$(awk '$1 == "admin" {print $2}' api-keys)"
set -euo pipefail
file="$(cd "$(dirname "$0")" && pwd)/api-keys"
if [ -e "$file" ]; then
  echo "$file exists; keeping it" >&2
else
  umask 077
  printf 'admin %s\n' "$(openssl rand -hex 24)" >"$file"
  echo "wrote $file" >&2
fi
awk '$1 == "admin" {print "admin key: " $2; exit}' "$file"
