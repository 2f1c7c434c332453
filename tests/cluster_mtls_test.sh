#!/usr/bin/env bash
# Three cairnd --cluster nodes whose peer ports require mTLS (certificates made
# here by openssl): they form a cluster and replicate a write; a fourth node
# whose certificate another CA signed is refused (it never learns of the
# cluster), and so is a node with the right certificate but a peer port on
# 0.0.0.0 and neither mTLS nor a secret (it refuses to start).
# Usage: cluster_mtls_test.sh CAIRND CAIRN WORKDIR
set -euo pipefail
cairnd="$1"; cairn="$2"; work="$3"
rm -rf "$work"; mkdir -p "$work"
source "$(dirname "$0")/cairnd_lib.sh"
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done' EXIT

(
  cd "$work"
  key="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' >san.cnf
  openssl req -x509 $key -keyout ca.key -out ca.crt -days 2 -subj /CN=cairn-peers
  openssl req -x509 $key -keyout rogue-ca.key -out rogue-ca.crt -days 2 -subj /CN=rogue
  for n in node rogue; do
    signer=ca; [ $n = rogue ] && signer=rogue-ca
    openssl req $key -keyout $n.key -out $n.csr -subj /CN=$n
    openssl x509 -req -in $n.csr -CA $signer.crt -CAkey $signer.key -CAcreateserial -out $n.crt -days 2 -extfile san.cnf
  done
) >/dev/null 2>&1 || fail "openssl"

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
peers=(); grpc=(); http=()
for i in 0 1 2 3; do peers+=("127.0.0.1:$(free_port)"); grpc+=("$(free_port)"); http+=("$(free_port)"); done
seeds="${peers[0]},${peers[1]},${peers[2]}"
start_node() {  # I CERT (CA for the node's certificate is ca.crt; peers are checked against ca.crt)
  local i=$1 cert=$2
  "$cairnd" --cluster --node-name "n$i" --data-dir "$work/n$i" --listen "127.0.0.1:${grpc[$i]}" \
    --http-listen "127.0.0.1:${http[$i]}" --peer-listen "${peers[$i]}" --seeds "$seeds" --raft-tick-ms 20 \
    --peer-tls-cert "$work/$cert.crt" --peer-tls-key "$work/$cert.key" --peer-tls-ca "$work/ca.crt" \
    --insecure-no-auth >"$work/n$i.log" 2>&1 &
  pids+=($!)
}
ready() {
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:${http[$1]}/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
for i in 0 1 2; do start_node $i node; done
for i in 0 1 2; do ready $i || fail "node $i did not serve: $(cat "$work/n$i.log")"; done
grep -q '"peer_auth":"mtls"' "$work/n0.log" || fail "peer auth not mtls: $(cat "$work/n0.log")"
"$cairn" --target "127.0.0.1:${grpc[0]}" collection create docs --dim 2 >/dev/null || fail "create"
printf '%s\n' '{"id":1,"vector":[1,0]}' >"$work/in.jsonl"
"$cairn" --target "127.0.0.1:${grpc[1]}" ingest --collection docs "$work/in.jsonl" >/dev/null 2>&1 || fail "ingest"
out="$("$cairn" --target "127.0.0.1:${grpc[2]}" search --collection docs --vector 1,0 --k 1)"
grep -qE '^1 +0 ' <<<"$out" || fail "search through another node: $out"

# A node whose certificate another CA signed, with node 0's seeds: its Hello
# calls fail the handshake, so it never learns of the cluster.
seeds="${peers[0]},${peers[1]},${peers[2]},${peers[3]}"
start_node 3 rogue
! ready 3 || fail "a node with a rogue certificate served"
grep -q "waiting for every seed to answer" "$work/n3.log" || fail "rogue node: $(cat "$work/n3.log")"
status="$("$cairn" --target "127.0.0.1:${grpc[0]}" cluster status)"
[ "$(grep -c ' active ' <<<"$status")" = 3 ] || fail "the cluster changed: $status"

# No secret and no mTLS on a non-loopback peer port: refused before starting.
set +e
"$cairnd" --cluster --node-name x --data-dir "$work/x" --peer-listen 0.0.0.0:0 --seeds 127.0.0.1:1 \
  --insecure-no-auth >"$work/x.log" 2>&1
code=$?
set -e
[ $code = 2 ] && grep -q "cluster-secret-file" "$work/x.log" || fail "open peer port: exit $code $(cat "$work/x.log")"
rm -rf "$work"
echo "cluster mtls: ok"
