#!/usr/bin/env bash
# tcp+tls:// end to end with real farmem-server processes and a certificate
# made here (openssl): every word of a far array over TLS, far pointers and the
# transparent region, with a token; one server listening on tcp:// and
# tcp+tls:// at once; a pool of TLS servers with one killed mid-run. Every
# wrong set-up ends within seconds with one line naming the problem and the
# fix: no or the wrong CA, a certificate for another address, a plain client at
# a TLS server and the other way round, and the server's certificate and key
# options. (The traffic itself, recorded and tampered with, is in protect_test.sh.)
set -uo pipefail
BENCH=$1
SERVER=$2
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

cert() {  # NAME SAN: a self-signed certificate and key in $tmp/NAME.pem, $tmp/NAME.key
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$1" \
    -addext "subjectAltName=$2" -keyout "$tmp/$1.key" -out "$tmp/$1.pem" 2>/dev/null ||
    { echo "openssl cannot make a test certificate (apt-get install openssl)"; exit 1; }
}
cert good IP:127.0.0.1
cert other DNS:memory.example.com
TLS=(--tls-cert "$tmp/good.pem" --tls-key "$tmp/good.key")
echo "token-$RANDOM" >"$tmp/token"
export FARMEM_TOKEN_FILE=$tmp/token FARMEM_TLS_CA=$tmp/good.pem

LISTEN_SCHEME=tcp+tls start_tcp_server main --capacity 1G --token-file "$tmp/token" "${TLS[@]}"
URI=tcp+tls://127.0.0.1:$PORT
start_tcp_server plain --capacity 1G --token-file "$tmp/token"
PLAIN=tcp://127.0.0.1:$PORT

# 1. Every word, over TLS: far pointers and the transparent region.
for mode in sw hw; do
  out=$(timeout 120 "$BENCH" --mode "$mode" --backend "$URI" --working-set 48M --local-mem 12M --ops 40000 --json 2>"$tmp/$mode.err")
  if [[ $out == *'"verified":true'* && $out != *'"bytes_in":0,'* ]]; then ok "$mode over $URI: every word verified"
  else bad "$mode over TLS: $out $(tail -2 "$tmp/$mode.err")"; fi
done

# 2. One server, a tcp:// and a tcp+tls:// listener: both serve from one capacity.
"$SERVER" --listen tcp://127.0.0.1:0 --listen tcp+tls://127.0.0.1:0 --capacity 256M "${TLS[@]}" \
  --token-file "$tmp/token" >"$tmp/both.out" 2>"$tmp/both.err" &
pids+=($!)
for _ in $(seq 100); do
  P1=$(sed -n 's|.*listening on tcp://127.0.0.1:\([0-9]*\).*|\1|p' "$tmp/both.out")
  P2=$(sed -n 's|.*listening on tcp+tls://127.0.0.1:\([0-9]*\).*|\1|p' "$tmp/both.out")
  [[ -n $P1 && -n $P2 ]] && break
  sleep 0.05
done
n=0
for b in "tcp://127.0.0.1:$P1" "tcp+tls://127.0.0.1:$P2"; do
  timeout 60 "$BENCH" --backend "$b" --working-set 32M --local-mem 8M --ops 10000 --json 2>/dev/null |
    grep -q '"verified":true' && n=$((n + 1))
done
if ((n == 2)); then ok "one server listening on tcp:// and tcp+tls://: both verified"
else bad "tcp:// and tcp+tls:// on one server: $n of 2 verified; $(cat "$tmp/both.err")"; fi

# 3. A pool of TLS servers (ec:2+1), one killed mid-run: every word verified.
SPIDS=() POOL=""
for i in 1 2 3; do
  LISTEN_SCHEME=tcp+tls start_tcp_server "p$i" --capacity 512M --token-file "$tmp/token" "${TLS[@]}"
  SPIDS+=("$SPID")
  POOL+="${POOL:+,}tcp+tls://127.0.0.1:$PORT"
done
FARMEM_BACKEND=$POOL FARMEM_REDUNDANCY=ec:2+1 FARMEM_FAR_MEM=256M FARMEM_STATS=1 timeout 180 "$BENCH" \
  --working-set 64M --local-mem 12M --ops 200000 --json >"$tmp/pool.json" 2>"$tmp/pool.err" &
bpid=$!
for _ in $(seq 200); do  # kill a server once pages reach it
  grep -q '"used_bytes":[1-9]' "$tmp/p3.out" && break
  kill -USR1 "${SPIDS[2]}"
  sleep 0.1
done
kill -9 "${SPIDS[2]}"
wait "$bpid"; rc=$?
if ((rc == 0)) && grep -q '"verified":true' "$tmp/pool.json" && grep -q "is down" "$tmp/pool.err"; then
  ok "ec:2+1 over three tcp+tls:// servers, one killed mid-run: every word verified"
else bad "TLS pool, one killed: rc $rc, $(cat "$tmp/pool.json") $(grep -v farmem_stats "$tmp/pool.err" | tail -3)"; fi

# 4. Wrong set-ups: one line, within seconds.
small=(--working-set 16M --local-mem 8M --ops 1000)
expect_error "no CA given: the system's CAs do not know a self-signed certificate" "certificate is not accepted (self-signed certificate); set FARMEM_TLS_CA" \
  env -u FARMEM_TLS_CA "$BENCH" --backend "$URI" "${small[@]}"
expect_error "the wrong CA" "certificate is not accepted (self-signed certificate); set FARMEM_TLS_CA" \
  env FARMEM_TLS_CA="$tmp/other.pem" "$BENCH" --backend "$URI" "${small[@]}"
expect_error "a CA file that is not there" "FARMEM_TLS_CA=$tmp/none.pem cannot be loaded (No such file or directory)" \
  env FARMEM_TLS_CA="$tmp/none.pem" "$BENCH" --backend "$URI" "${small[@]}"
LISTEN_SCHEME=tcp+tls start_tcp_server wrong-name --capacity 64M --token-file "$tmp/token" --tls-cert "$tmp/other.pem" --tls-key "$tmp/other.key"
expect_error "a certificate issued for another host" "certificate is not issued for 127.0.0.1 (IP address mismatch); connect by a name or address in its subjectAltName" \
  env FARMEM_TLS_CA="$tmp/other.pem" "$BENCH" --backend "tcp+tls://127.0.0.1:$PORT" "${small[@]}"
expect_error "a plain client at a TLS server" "refused us: this server speaks TLS: connect to $URI" \
  "$BENCH" --backend "tcp://127.0.0.1:${URI##*:}" "${small[@]}"
expect_error "a TLS client at a plain server" "${PLAIN/tcp/tcp+tls} did not answer TLS (.*); is it listening on tcp+tls://" \
  "$BENCH" --backend "${PLAIN/tcp/tcp+tls}" "${small[@]}"
expect_error "the wrong token over TLS" "refused us: wrong or missing token" \
  env FARMEM_TOKEN_FILE=<(echo wrong) "$BENCH" --backend "$URI" "${small[@]}"
expect_error "a bad tcp+tls URI" "is not tcp+tls://HOST:PORT" "$BENCH" --backend "tcp+tls://127.0.0.1" "${small[@]}"
expect_error "server: tcp+tls:// without a certificate" "needs --tls-cert FILE and --tls-key FILE" \
  "$SERVER" --listen tcp+tls://127.0.0.1:0 --capacity 64M
expect_error "server: a certificate without a tcp+tls:// listener" "are for tcp+tls:// listeners" \
  "$SERVER" --listen tcp://127.0.0.1:0 --capacity 64M "${TLS[@]}"
expect_error "server: a key that is not the certificate's" "is not the key of --tls-cert" \
  "$SERVER" --listen tcp+tls://127.0.0.1:0 --capacity 64M --tls-cert "$tmp/good.pem" --tls-key "$tmp/other.key"
expect_error "server: a certificate file that is not one" "--tls-cert $tmp/good.key cannot be loaded" \
  "$SERVER" --listen tcp+tls://127.0.0.1:0 --capacity 64M --tls-cert "$tmp/good.key" --tls-key "$tmp/good.key"

echo "tls test: $fails failure(s)"
exit $((fails > 0))
