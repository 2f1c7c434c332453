#!/usr/bin/env bash
# Installs the Debian 12 packages Cairn builds with, when any are missing.
# As root on Debian it runs apt-get; otherwise it prints the command to run.
set -euo pipefail

PACKAGES=(
  cmake ninja-build g++ pkg-config ccache
  libfaiss-dev libopenblas-dev
  librocksdb-dev zlib1g-dev
  libabsl-dev libroaring-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  python3-grpcio python3-protobuf openssl
  libhdf5-dev
  dataset-fashion-mnist
  iproute2  # ip netns: the cluster partition tests (as root)
  yamllint shellcheck python3-yaml bubblewrap  # operator-manifests/test
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "cairn: installing missing packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "cairn: run as root:  apt-get install ${missing[*]}" >&2
  exit 1
fi
