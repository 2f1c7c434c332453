#!/usr/bin/env bash
# Builds gpu_test, gpu_bench and db_test (for its device tests) and packs them, with the shared libraries they
# need from Debian (BLAS, Abseil, OpenMP...), into .gpu-pack/pack.tar.xz: what
# a GPU machine that has the NVIDIA driver and CUDA but none of Cairn's apt
# packages needs to run bench/gpu/run.sh. cuBLAS comes from the machine's CUDA.
# The C and C++ runtimes (glibc, libstdc++, libgcc_s) and the loader go into
# rt/, apart: run.sh uses the machine's own, and this copy only where the
# machine's are older than the binaries need (glibc >= 2.34 from Debian 12).
#
#   bench/gpu/pack.sh            # then, on the GPU machine:
#   mkdir -p /tmp/cairn-gpu && tar -xJf .gpu-pack/pack.tar.xz -C /tmp/cairn-gpu && /tmp/cairn-gpu/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
if [[ ! -f $BUILD/CMakeCache.txt ]]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
grep -q '^CAIRN_NVCC:FILEPATH=.*nvcc' "$BUILD/CMakeCache.txt" || {
  echo "pack.sh: $BUILD was configured without CUDA (nvcc not found); the pack would have no GPU code" >&2
  exit 1
}
cmake --build "$BUILD" --target gpu_test gpu_bench db_test
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/lib"
cp "$BUILD/bin/gpu_test" "$BUILD/bin/gpu_bench" "$BUILD/bin/db_test" bench/gpu/run.sh "$stage/"
ldd "$BUILD/bin/gpu_test" "$BUILD/bin/gpu_bench" "$BUILD/bin/db_test" | awk '/=> \// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux-x86-64)\.so' |
  while read -r lib; do cp -L "$lib" "$stage/lib/"; done
mkdir -p "$stage/rt"
ldd "$BUILD/bin/gpu_test" "$BUILD/bin/gpu_bench" "$BUILD/bin/db_test" | grep -oE '/[^ ]*/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux-x86-64)\.so[^ ]*' |
  sort -u | while read -r lib; do cp -L "$lib" "$stage/rt/"; done
[[ -f $stage/rt/ld-linux-x86-64.so.2 ]] || { echo "pack.sh: the loader was not found by ldd" >&2; exit 1; }
for lib in libdl.so.2 libpthread.so.0 librt.so.1; do  # glibc's stubs, loaded by dlopen'ed libraries
  if [[ -f /lib/x86_64-linux-gnu/$lib ]]; then cp -L "/lib/x86_64-linux-gnu/$lib" "$stage/rt/"; fi
done
mkdir -p .gpu-pack
tar -C "$stage" -cJf .gpu-pack/pack.tar.xz .
echo "pack.sh: .gpu-pack/pack.tar.xz ($(du -h .gpu-pack/pack.tar.xz | cut -f1)): $(ls "$stage/lib" | wc -l) libraries, $(ls "$stage/rt" | wc -l) runtime files"
