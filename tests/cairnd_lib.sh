# Sourced by the shell tests: start_cairnd CAIRND DATA_DIR [FLAGS...] runs a
# cairnd on a free loopback port and returns once it logs "serving", setting
# $port and $pid (killed when the test exits), and $http_port with --http-listen.
start_cairnd() {
  local bin="$1" data="$2"
  shift 2
  coproc SERVER { exec "$bin" --listen 127.0.0.1:0 --data-dir "$data" "$@" 2>&1; }
  pid=$SERVER_PID
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  port=""
  local line
  while IFS= read -r line <&"${SERVER[0]}"; do
    if [[ $line =~ \"port\":([0-9]+) ]]; then port="${BASH_REMATCH[1]}"; fi
    if [[ $line =~ \"http_port\":([0-9]+) ]]; then http_port="${BASH_REMATCH[1]}"; fi
    [[ $line == *'"event":"serving"'* ]] && break
  done
  [[ -n $port ]] || { echo "cairnd did not start"; exit 1; }
}

# Debian's python3 (it sees python3-grpcio and friends); a failing check.
py="${PYTHON:-/usr/bin/python3}"
fail() { echo "FAIL: $*"; exit 1; }
