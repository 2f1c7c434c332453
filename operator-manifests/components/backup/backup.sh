#!/bin/sh
# One backup: every collection of the cluster as a snapshot tar under
# $BACKUP_DIR/<UTC time>/, then the oldest backups past the newest $KEEP
# removed. A backup being written is named <time>.partial until complete.
# The snapshot is made on the first node that answers, downloaded from
# that node, then deleted there.
set -eu
: "${BACKUP_DIR:=/backup}" "${KEEP:=7}" "${CAIRN_NODES:?the nodes to try, comma-separated HOST:PORT}"
# With the tls-cert-manager component the nodes serve TLS: verify them with
# its CA (mounted when it exists).
if [ -z "${CAIRN_TLS_CA:-}" ] && [ -f /etc/cairn/tls/ca.crt ]; then
  export CAIRN_TLS_CA=/etc/cairn/tls/ca.crt
fi
stamp=$(date -u +%Y%m%dT%H%M%SZ)
work="$BACKUP_DIR/$stamp.partial"
target=""
for n in $(echo "$CAIRN_NODES" | tr ',' ' '); do
  if cairn --target "$n" info >/dev/null 2>&1; then target=$n; break; fi
done
[ -n "$target" ] || { echo "backup: no node of $CAIRN_NODES answers" >&2; exit 1; }
mkdir -p "$work"
count=0
for c in $(cairn --target "$target" collection list); do
  snap=$(cairn --target "$target" snapshot create "$c" --json | sed -n 's/.*"name":"\([^"]*\)".*/\1/p')
  [ -n "$snap" ] || { echo "backup: no snapshot of $c" >&2; exit 1; }
  cairn --target "$target" snapshot download "$snap" --output "$work/$c.tar"
  cairn --target "$target" snapshot delete "$snap" >/dev/null
  echo "backup: $c -> $stamp/$c.tar ($(wc -c <"$work/$c.tar") bytes)"
  count=$((count + 1))
done
mv "$work" "$BACKUP_DIR/$stamp"
echo "backup: $count collections in $BACKUP_DIR/$stamp (from $target)"
# Globs sort by name, and the names are times: oldest first.
set -- "$BACKUP_DIR"/2*Z
left=$#
for old in "$@"; do
  [ -d "$old" ] && [ "$left" -gt "$KEEP" ] && rm -rf "$old" && echo "backup: removed $old"
  left=$((left - 1))
done
rm -rf "$BACKUP_DIR"/*.partial
