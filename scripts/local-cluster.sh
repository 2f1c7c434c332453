#!/usr/bin/env bash
# A local cairnd cluster on this machine, for trying it out: every node on
# loopback, node i serving gRPC on 7600+10*i, HTTP on 7601+10*i and its peer
# port on 7602+10*i, with its data and log in DIR/cairn-i.
#
#   scripts/local-cluster.sh start [N]     start N nodes (default 3), wait until
#                                          they serve, print the cluster's status
#   scripts/local-cluster.sh status        cairn cluster status (through node 0)
#   scripts/local-cluster.sh kill I        kill -9 node I (try a failover)
#   scripts/local-cluster.sh restart I     start node I again on its data
#   scripts/local-cluster.sh add           start one more node (the next number):
#                                          it joins, and replicas move onto it
#   scripts/local-cluster.sh wipe-node I   kill -9 node I, delete its data, start
#                                          it again: it joins under a new id in
#                                          place of its former self
#   scripts/local-cluster.sh stop          SIGTERM every node, wait for them
#   scripts/local-cluster.sh wipe          stop, then delete DIR
#
# Environment: CAIRN_BUILD (build directory, default build), CLUSTER_DIR (DIR,
# default ./cluster-data). Authentication is off: loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${CAIRN_BUILD:-build}
DIR=${CLUSTER_DIR:-./cluster-data}
CAIRND="$BUILD/bin/cairnd"
CAIRN="$BUILD/bin/cairn"

die() { echo "local-cluster: $*" >&2; exit 1; }
[ -x "$CAIRND" ] && [ -x "$CAIRN" ] || die "build first (make run or cmake --build $BUILD)"

nodes() { ls -d "$DIR"/cairn-* 2>/dev/null | sed 's/.*cairn-//' | sort -n; }
pid_of() { cat "$DIR/cairn-$1/pid" 2>/dev/null || true; }
# Running, and not a zombie waiting for a parent that does not reap it.
alive() {
  local p; p=$(pid_of "$1")
  [ -n "$p" ] && [ -r "/proc/$p/stat" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]
}

start_node() {
  local i=$1 n=$2 seeds="" j
  for ((j = 0; j < n; j++)); do seeds+="${seeds:+,}127.0.0.1:$((7602 + 10 * j))"; done
  mkdir -p "$DIR/cairn-$i"
  echo "$n" > "$DIR/cairn-$i/nodes"
  alive "$i" && die "node $i is running already (pid $(pid_of "$i"))"
  nohup "$CAIRND" --cluster --node-name "cairn-$i" --data-dir "$DIR/cairn-$i/data" \
    --listen "127.0.0.1:$((7600 + 10 * i))" --http-listen "127.0.0.1:$((7601 + 10 * i))" \
    --peer-listen "127.0.0.1:$((7602 + 10 * i))" --seeds "$seeds" \
    --insecure-no-auth --log-format logfmt >> "$DIR/cairn-$i/log" 2>&1 &
  echo $! > "$DIR/cairn-$i/pid"
}

wait_ready() {
  local i=$1 t
  for t in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$((7601 + 10 * i))/readyz" > /dev/null 2>&1; then return 0; fi
    alive "$i" || die "node $i exited: see $DIR/cairn-$i/log"
    sleep 0.1
  done
  die "node $i is not ready after 60 s: see $DIR/cairn-$i/log"
}

cmd=${1:-}
case "$cmd" in
  start)
    n=${2:-3}
    [[ "$n" =~ ^[1-9]$ ]] || die "start N: N is 1..9"
    for ((i = 0; i < n; i++)); do start_node "$i" "$n"; done
    for ((i = 0; i < n; i++)); do wait_ready "$i"; done
    echo "local-cluster: $n nodes serving; gRPC on 127.0.0.1:7600, :7610, ... (cairn --target 127.0.0.1:7610 ...)"
    "$CAIRN" --target 127.0.0.1:7600 cluster status
    ;;
  status)
    for i in $(nodes); do
      if alive "$i"; then "$CAIRN" --target "127.0.0.1:$((7600 + 10 * i))" cluster status; exit 0; fi
    done
    die "no node is running"
    ;;
  kill)
    i=${2:?kill I}
    alive "$i" || die "node $i is not running"
    kill -9 "$(pid_of "$i")"
    echo "local-cluster: killed node $i (kill -9)"
    ;;
  add)
    n=$(cat "$DIR/cairn-0/nodes" 2>/dev/null) || die "no cluster in $DIR: start one first"
    i=$(($(nodes | tail -1) + 1))
    [ "$i" -le 9 ] || die "nodes 0..9 only"
    start_node "$i" "$n"  # its seeds: the nodes that formed the cluster
    wait_ready "$i"
    echo "local-cluster: node $i joined; replicas move onto it (see: $0 status)"
    ;;
  restart)
    i=${2:?restart I}
    [ -d "$DIR/cairn-$i" ] || die "no node $i in $DIR"
    start_node "$i" "$(cat "$DIR/cairn-$i/nodes")"
    wait_ready "$i"
    echo "local-cluster: node $i serving again"
    ;;
  wipe-node)
    i=${2:?wipe-node I}
    [ -d "$DIR/cairn-$i" ] || die "no node $i in $DIR"
    if alive "$i"; then
      kill -9 "$(pid_of "$i")"
      for t in $(seq 1 100); do alive "$i" || break; sleep 0.1; done
    fi
    rm -rf "$DIR/cairn-$i/data"
    start_node "$i" "$(cat "$DIR/cairn-$i/nodes")"
    wait_ready "$i"
    echo "local-cluster: node $i serving again on an empty disk (see: $0 status)"
    ;;
  stop | wipe)
    for i in $(nodes); do
      if alive "$i"; then kill -TERM "$(pid_of "$i")"; fi
    done
    for i in $(nodes); do
      for t in $(seq 1 300); do alive "$i" || break; sleep 0.1; done
      rm -f "$DIR/cairn-$i/pid"
    done
    if [ "$cmd" = wipe ]; then
      rm -rf "$DIR"
      echo "local-cluster: stopped, and deleted $DIR"
    else
      echo "local-cluster: stopped (start again with: $0 start $(cat "$DIR"/cairn-0/nodes 2>/dev/null || echo 3))"
    fi
    ;;
  *)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || exit 1
    ;;
esac
