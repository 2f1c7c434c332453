#!/usr/bin/env bash
# Packs what the cluster benches need into DIR, to run them on a machine that
# lacks Cairn's build dependencies (a larger box, or one lent for a while):
# cairnd and cairn, every shared library they load except the C runtime's
# own, and the bench scripts. There, with python3 for the generated vectors:
#   DIR/run.sh replication.sh 300000 64 flat
#   PIN=1 DIR/run.sh replication.sh 300000 64 flat   (8 cores or more)
# With --xz it also writes DIR.tar.xz (about a quarter of the size: the
# libraries are most of it), to move where transfers are bounded.
# Usage: bench/cluster/package.sh DIR [--xz]   (after make)
set -euo pipefail
out=${1:?usage: bench/cluster/package.sh DIR [--xz]}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out/build/bin" "$out/lib" "$out/bench/cluster"
cp "$root/build/bin/cairnd" "$root/build/bin/cairn" "$out/build/bin/"
strip "$out/build/bin/cairnd" "$out/build/bin/cairn" 2>/dev/null || true
cp "$root"/bench/cluster/*.sh "$out/bench/cluster/"
# The target has a C runtime of its own; everything else travels.
ldd "$root/build/bin/cairnd" "$root/build/bin/cairn" | awk '/=> \// {print $3}' | sort -u |
  while read -r lib; do
    case "$(basename "$lib")" in
      libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux*) continue ;;
    esac
    cp -L "$lib" "$out/lib/"
    strip --strip-unneeded "$out/lib/$(basename "$lib")" 2>/dev/null || true
  done
cat >"$out/run.sh" <<'SH'
#!/usr/bin/env bash
# Runs a cluster bench of this package: run.sh SCRIPT [ARGS...]
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
script=$1
shift
exec bash "$here/bench/cluster/$script" "$@"
SH
chmod +x "$out/run.sh"
echo "packed into $out ($(du -sh "$out" | cut -f1)): $out/run.sh replication.sh [N] [DIM] [INDEX]"
if [ "${2:-}" = --xz ]; then
  tar -cf - -C "$(dirname "$out")" "$(basename "$out")" | xz -T0 -6 >"$out.tar.xz"
  echo "and $out.tar.xz ($(du -sh "$out.tar.xz" | cut -f1)): tar -xJf it, then run.sh as above"
fi
