#!/usr/bin/env bash
# Checks operator-manifests/ without a Kubernetes cluster (run by ctest as
# operator_manifests, and by hand):
#  1. renders every overlay (dev, prod, gpu) with every combination of the
#     opt-in components (tls-cert-manager, servicemonitor, networkpolicy,
#     backup): 48 renders, with `kubectl kustomize`;
#  2. yamllint over the sources and the renders;
#  3. every object against its Kubernetes or CRD schema (kubernetes-models),
#     and typed with its TypeScript interface under `tsc --strict`, which
#     rejects unknown fields (a misspelt readinesProbe);
#  4. policy.py: kube-linter's, kube-score's and Polaris's default rules and
#     Cairn's own, over every render; policy_test.py: each rule catches the
#     mistake it names;
#  5. the renders of the plain overlays and of prod with every component
#     against test/golden/ (UPDATE_GOLDEN=1 rewrites them);
#  6. the Dockerfile: lint, and its runtime packages against `ldd` of the
#     binaries in BIN_DIR; the scripts: shellcheck;
#  7. the backup CronJob's script against a real cairnd from BIN_DIR, and
#     the runbook's restore of what it wrote.
# Usage: operator-manifests/test/check.sh BIN_DIR   (BIN_DIR: build/bin)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
om=$(dirname "$here")
bin=$(cd "${1:?usage: check.sh BIN_DIR}" && pwd)
py=${PYTHON:-/usr/bin/python3}
work=$(mktemp -d /tmp/cairn-manifests.XXXXXX)
cairnd_pid=""
cleanup() {
  [ -n "$cairnd_pid" ] && kill "$cairnd_pid" 2>/dev/null && wait "$cairnd_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# kubectl (with kustomize) and Node.js are not Debian packages: without
# them the check is skipped (77), not failed.
for tool in kubectl node npm; do
  command -v "$tool" >/dev/null || { echo "check.sh: skipped: $tool is not installed" >&2; exit 77; }
done
for tool in yamllint shellcheck; do
  command -v "$tool" >/dev/null || { echo "check.sh: $tool is not installed (scripts/install-deps.sh)" >&2; exit 1; }
done
if [ ! -d "$here/node_modules/kubernetes-models" ] || [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
  echo "== npm ci (kubernetes-models, typescript, dockerfile-utils)"
  npm ci --prefix "$here" --no-audit --no-fund --loglevel=error
fi

echo "== 1. render"
# A copy, so that the dev overlay renders with a placeholder key file in
# place of a real one.
cp -r "$om/base" "$om/overlays" "$om/components" "$work/"
printf 'admin placeholder-rendered-by-check-sh-only\n' >"$work/overlays/dev/api-keys"
components=(tls-cert-manager servicemonitor networkpolicy backup)
mkdir -p "$work/out" "$work/combo"
renders=0
for overlay in dev prod gpu; do
  for mask in $(seq 0 15); do
    name=$overlay; list=""
    for i in 0 1 2 3; do
      if (( mask & (1 << i) )); then name+="+${components[$i]}"; list+="  - ../../components/${components[$i]}"$'\n'; fi
    done
    dir="$work/combo/$name"; mkdir -p "$dir"
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../overlays/%s\n' "$overlay" >"$dir/kustomization.yaml"
    [ -n "$list" ] && printf 'components:\n%s' "$list" >>"$dir/kustomization.yaml"
    kubectl kustomize "$dir" >"$work/out/$name.yaml"
    renders=$((renders + 1))
  done
done
echo "rendered $renders combinations"

echo "== 2. yamllint"
yamllint -c "$here/yamllint.yaml" "$om/base" "$om/overlays" "$om/components" "$work/out"

echo "== 3. schemas and strict fields"
(cd "$here" && node validate.mjs "$work"/out/*.yaml)
mkdir -p "$here/out"
node "$here/strict.mjs" "$work"/out/*.yaml >"$here/out/rendered.ts"
(cd "$here" && npx tsc --noEmit --strict --skipLibCheck --module nodenext --moduleResolution nodenext out/rendered.ts)
echo "tsc: every field of every object is known"

echo "== 4. policy"
"$py" "$here/policy.py" "$work"/out/*.yaml
"$py" "$here/policy_test.py" "$work/out/prod.yaml" 2>&1 | tail -1

echo "== 5. golden renders"
mkdir -p "$here/golden"
all="prod+tls-cert-manager+servicemonitor+networkpolicy+backup"
for name in dev prod gpu "$all"; do
  golden="$here/golden/${name//+tls-cert-manager+servicemonitor+networkpolicy+backup/-all-components}.yaml"
  if [ "${UPDATE_GOLDEN:-}" = 1 ]; then
    cp "$work/out/$name.yaml" "$golden"
  elif ! diff -u "$golden" "$work/out/$name.yaml"; then
    echo "the render of $name differs from $(basename "$golden"): review it, then UPDATE_GOLDEN=1 $0 $1" >&2
    exit 1
  fi
done
echo "golden renders match"

echo "== 6. image and scripts"
(cd "$here" && npx dockerfile-utils lint "$om/image/Dockerfile")
"$py" "$here/check_image.py" "$om/image/Dockerfile" "$om/../scripts/install-deps.sh" "$bin/cairnd" "$bin/cairn"
shellcheck "$here/check.sh" "$here/podsim.sh" "$om/overlays/dev/generate-key.sh"
shellcheck -s sh "$om/components/backup/backup.sh"

echo "== 7. the backup script against cairnd"
mkdir -p "$work/bin" "$work/backup"
ln -s "$bin/cairn" "$work/bin/cairn"
"$bin/cairnd" --data-dir "$work/data" --listen 127.0.0.1:0 --http-listen "" --port-file "$work/port" \
  --insecure-no-auth 2>"$work/cairnd.log" &
cairnd_pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
target=127.0.0.1:$(cat "$work/port")
"$bin/cairn" --target "$target" collection create docs --dim 4 >/dev/null
"$bin/cairn" --target "$target" collection create notes --dim 4 >/dev/null
printf '{"id": 1, "vector": [1, 2, 3, 4]}\n{"id": 2, "vector": [4, 3, 2, 1]}\n' >"$work/docs.jsonl"
"$bin/cairn" --target "$target" ingest --collection docs "$work/docs.jsonl" >/dev/null 2>&1
for _ in 1 2 3; do
  PATH="$work/bin:$PATH" BACKUP_DIR="$work/backup" KEEP=2 CAIRN_NODES="127.0.0.1:1,$target" \
    sh "$om/components/backup/backup.sh" >"$work/backup.log" 2>&1
  sleep 1.1  # backups are named by the second
done
kept=$(find "$work/backup" -mindepth 1 -maxdepth 1 | wc -l)
[ "$kept" = 2 ] || { echo "backup: $kept backups kept, not 2" >&2; ls -l "$work/backup" >&2; exit 1; }
newest=$(find "$work/backup" -mindepth 1 -maxdepth 1 | sort | tail -1)
if [ ! -s "$newest/docs.tar" ] || [ ! -s "$newest/notes.tar" ]; then echo "backup: $newest lacks a collection" >&2; exit 1; fi
left=$("$bin/cairn" --target "$target" snapshot list | wc -l)
[ "$left" = 0 ] || { echo "backup: $left snapshots left on the node" >&2; exit 1; }
# The runbook's restore: the tar unpacked into the node's snapshots
# directory, then restored as a new collection.
mkdir -p "$work/data/snapshots/docs-restored"
tar -xf "$newest/docs.tar" -C "$work/data/snapshots/docs-restored"
"$bin/cairn" --target "$target" snapshot restore docs-restored docs2 >/dev/null
points=$("$bin/cairn" --target "$target" collection info docs2 | grep -o '"points": *"*[0-9]*' | grep -o '[0-9]*$')
[ "$points" = 2 ] || { echo "backup: the restored docs2 has $points points, not 2" >&2; exit 1; }
echo "backup: 3 runs kept the newest 2 and left no snapshot on the node; one restored has its 2 points"
echo "operator-manifests: all checks passed"
