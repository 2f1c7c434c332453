#!/usr/bin/env bash
# The cairn CLI against a cairnd with TLS and API keys (certificates made here
# by openssl): every connection setting from CAIRN_* variables or flags, roles
# enforced, clear failures (exit 3) for a missing key, a wrong role, an
# untrusted server and plaintext to a TLS port; keys rotated by replacing the
# keys file while cairnd runs.
# Usage: cli_tls_test.sh CAIRND CAIRN WORKDIR
set -euo pipefail
cairnd="$1"; cairn="$2"; work="$3"
rm -rf "$work"; mkdir -p "$work"
source "$(dirname "$0")/cairnd_lib.sh"

(
  cd "$work"
  key="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  openssl req -x509 $key -keyout ca.key -out ca.crt -days 2 -subj /CN=cairn-test-ca
  openssl req $key -keyout server.key -out server.csr -subj /CN=localhost
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' >san.cnf
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.cnf
  openssl req -x509 $key -keyout rogue.key -out rogue.crt -days 2 -subj /CN=rogue
) >/dev/null 2>&1 || fail "openssl"
printf 'admin admin-key-0123456789\nwrite writer-key-0123456789\nread reader-key-0123456789\n' >"$work/keys"
start_cairnd "$cairnd" "$work/data" --http-listen "" --api-keys-file "$work/keys" \
  --tls-cert "$work/server.crt" --tls-key "$work/server.key"
export CAIRN_TARGET="127.0.0.1:$port" CAIRN_TLS_CA="$work/ca.crt"

printf '%s\n' '{"id":"a","vector":[1,0,0,0],"payload":{"lang":"en"}}' '{"id":"b","vector":[0,1,0,0]}' >"$work/in.jsonl"
CAIRN_API_KEY=admin-key-0123456789 "$cairn" collection create docs --dim 4 | grep -c >/dev/null "created docs" || fail "create over TLS"
CAIRN_API_KEY=writer-key-0123456789 "$cairn" ingest --collection docs --json "$work/in.jsonl" | grep -c >/dev/null '"points_written":2' \
  || fail "ingest over TLS with a write key"
out="$("$cairn" --api-key reader-key-0123456789 search --collection docs --vector 1,0,0,0 --k 1)"
grep -qE '^a +0 ' <<<"$out" || fail "search over TLS with a read key: $out"

set +e
"$cairn" info >/dev/null 2>"$work/nokey.log"; nokey=$?
CAIRN_API_KEY=reader-key-0123456789 "$cairn" ingest --collection docs "$work/in.jsonl" 2>"$work/role.log"; role=$?
CAIRN_API_KEY=admin-key-0123456789 "$cairn" --tls-ca "$work/rogue.crt" info >/dev/null 2>"$work/rogue.log"; rogue=$?
CAIRN_API_KEY=admin-key-0123456789 CAIRN_TLS_CA= "$cairn" info >/dev/null 2>"$work/plain.log"; plain=$?
CAIRN_API_KEY=admin-key-0123456789 "$cairn" --tls-ca "$work/missing.crt" info >/dev/null 2>"$work/noca.log"; noca=$?
set -e
[[ $nokey == 3 ]] && grep -q "UNAUTHENTICATED" "$work/nokey.log" || fail "no key: $nokey $(cat "$work/nokey.log")"
[[ $role == 3 ]] && grep -q "PERMISSION_DENIED" "$work/role.log" || fail "read key ingest: $role $(cat "$work/role.log")"
! grep -q "retry" "$work/role.log" || fail "a refused request was retried: $(cat "$work/role.log")"
[[ $rogue == 3 ]] || fail "untrusted server certificate: exit $rogue"
[[ $plain == 3 ]] || fail "plaintext to a TLS port: exit $plain"
[[ $noca == 2 ]] && grep -q "missing.crt" "$work/noca.log" || fail "missing CA file: $noca $(cat "$work/noca.log")"

# --tls-server-name: the certificate checked against another name than the
# target's host (a pod called by its address); a name it lacks is refused.
CAIRN_API_KEY=admin-key-0123456789 "$cairn" --tls-server-name localhost info >/dev/null \
  || fail "--tls-server-name localhost (a name the certificate has)"
set +e
CAIRN_API_KEY=admin-key-0123456789 CAIRN_TLS_SERVER_NAME=other.example "$cairn" info >/dev/null 2>"$work/name.log"; name=$?
set -e
[[ $name == 3 ]] || fail "a server name the certificate lacks was accepted: $name $(cat "$work/name.log")"

# Key rotation without a restart: the keys file replaced as Kubernetes
# replaces a mounted Secret (a new file moved into place), the new keys
# apply within seconds; a file that no longer parses keeps the keys in use.
printf 'admin rotated-admin-key-0123456789\nread reader-key-0123456789\n' >"$work/keys.new"
mv "$work/keys.new" "$work/keys"
for _ in $(seq 100); do
  CAIRN_API_KEY=rotated-admin-key-0123456789 "$cairn" info >/dev/null 2>&1 && break
  sleep 0.1
done
CAIRN_API_KEY=rotated-admin-key-0123456789 "$cairn" info >/dev/null || fail "the rotated key is not taken within 10 s"
set +e
CAIRN_API_KEY=admin-key-0123456789 "$cairn" info >/dev/null 2>"$work/old.log"; old=$?
set -e
[[ $old == 3 ]] && grep -q "UNAUTHENTICATED" "$work/old.log" || fail "the replaced key still works: $old"
printf 'superuser not-a-role-0123456789\n' >"$work/keys.new"; mv "$work/keys.new" "$work/keys"
logged=""
while IFS= read -r -t 10 line <&"${SERVER[0]}"; do
  [[ $line == *'"event":"api_keys_not_reloaded"'* ]] && { logged=$line; break; }
done
[[ $logged == *superuser* ]] || fail "a broken keys file was not reported: $logged"
CAIRN_API_KEY=rotated-admin-key-0123456789 "$cairn" info >/dev/null || fail "a broken keys file dropped the keys in use"

kill -TERM "$pid"; wait "$pid" || true
rm -rf "$work"
echo "cli tls: ok"
