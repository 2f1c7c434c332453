#!/usr/bin/env bash
# Runs the rendered prod and dev overlays with podsim.py's kubelet through
# the scenarios of podsim_test.py (ctest operator_manifests_pods): as root,
# with bubblewrap and kubectl; skipped (77) otherwise.
# Usage: operator-manifests/test/podsim.sh BIN_DIR   (PODSIM_POINTS: step 8's points)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
om=$(dirname "$here")
bin=$(cd "${1:?usage: podsim.sh BIN_DIR}" && pwd)
py=${PYTHON:-/usr/bin/python3}
if [ "$(id -u)" != 0 ] || ! command -v bwrap >/dev/null || ! command -v kubectl >/dev/null; then
  echo "podsim.sh: skipped: needs root, bubblewrap and kubectl" >&2
  exit 77
fi
work=$(mktemp -d /tmp/cairn-podsim-render.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -r "$om/base" "$om/overlays" "$om/components" "$work/"
printf 'admin placeholder-rendered-by-podsim-only\n' >"$work/overlays/dev/api-keys"
kubectl kustomize "$work/overlays/prod" >"$work/prod.yaml"
kubectl kustomize "$work/overlays/dev" >"$work/dev.yaml"
mkdir -p "$work/prod-tls"
printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../overlays/prod\ncomponents:\n  - ../components/tls-cert-manager\n' \
  >"$work/prod-tls/kustomization.yaml"
kubectl kustomize "$work/prod-tls" >"$work/prod-tls.yaml"
"$om/../clients/python/generate.sh" "$work/gen" >/dev/null
"$py" "$here/podsim_test.py" "$work" "$bin" "$om/image/Dockerfile" "$work/gen"
