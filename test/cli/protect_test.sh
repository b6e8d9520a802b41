#!/usr/bin/env bash
# Page protection end to end (FARMEM_PROTECT=aead) with a man in the middle:
# test/cli/relay.py sits between the client and a real farmem-server over tcp
# and records the traffic. Protection off, a marker the program writes to far
# memory shows in the traffic and in the server's memory (so the checks can
# see it); on, it shows in neither, with compression too. The relay then
# flips a bit in pages and replays old versions of pages: the client stops
# with the one-line error, exit status 1, never silent wrong data. The server
# takes a token, which never shows in any recording (it is proven, not sent).
# A pool with a tampering server rebuilds the bad pieces from the others. Bad
# values are refused with one line. Over tcp+tls:// (TLS, protection off) the
# marker is not in the traffic either, and a flipped bit ends the run with one
# line (test/cli/tls_test.sh has the rest of TLS).
set -uo pipefail
BENCH=$1
SERVER=$2
RUN=${3:-}
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"
RELAY="/usr/bin/python3 $(dirname "${BASH_SOURCE[0]}")/relay.py"

# start_relay NAME MODE: a relay to the server on $PORT; sets RPORT and RPID, records $tmp/NAME.rec.
start_relay() {
  rm -f "$tmp/$1.port"
  $RELAY "$tmp/$1.port" "$PORT" "$2" "$tmp/$1.rec" 2>"$tmp/$1.relay.err" &
  RPID=$!
  pids+=("$RPID")
  for _ in $(seq 100); do
    [[ -f $tmp/$1.port ]] && RPORT=$(cat "$tmp/$1.port") && return 0
    sleep 0.05
  done
  echo "relay did not start:"; cat "$tmp/$1.relay.err"; exit 1
}

# in_memory PID STRING: true if STRING is anywhere in PID's readable memory.
in_memory() {
  /usr/bin/python3 - "$1" "$2" <<'PY'
import re, sys
pid, needle = sys.argv[1], sys.argv[2].encode()
found = False
with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
    for line in maps:
        addr, perms = line.split()[:2]
        if perms[0] != "r":
            continue
        lo, hi = (int(x, 16) for x in addr.split("-"))
        for at in range(lo, hi, 1 << 24):
            try:
                mem.seek(at)
                chunk = mem.read(min(hi - at, (1 << 24) + len(needle)))
            except OSError:
                continue
            if needle in chunk:
                found = True
                break
        if found:
            break
sys.exit(0 if found else 1)
PY
}

# A certificate for 127.0.0.1, for the tcp+tls:// cases.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=farmem-test \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null ||
  { echo "openssl cannot make a test certificate (apt-get install openssl)"; exit 1; }
TLS_ARGS=(--tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem")

TOKEN=token-$RANDOM-never-on-the-wire
echo "$TOKEN" >"$tmp/token"
export FARMEM_TOKEN_FILE=$tmp/token
start_tcp_server main --capacity 2G --token-file "$tmp/token"
MAIN=$SPID
MAIN_PORT=$PORT

# 1. Bad values and combinations: one line naming the problem and the fix.
expect_error "unknown value" "FARMEM_PROTECT='foo' is not none or aead; set FARMEM_PROTECT=aead" \
  env FARMEM_PROTECT=foo "$BENCH" --working-set 16M --ops 1000
if [[ -n $RUN ]]; then
  expect_error "farmem-run names its option" "^farmem-run: --protect 'foo' is not none or aead" "$RUN" --protect foo -- true
fi

# 2. A marker the program writes to far memory: in the traffic and in the
#    server's memory without protection, in neither with it.
if [[ -n $RUN ]]; then
  cat >"$tmp/prog.py" <<'PY'
import os, sys, time
tag = "-".join(["FARMEM", "SECRET", "MARKER"])  # not in this file as one string
d = [f"{tag}-{i:07d}-" * 4 for i in range(60000)]
open(sys.argv[1], "w").close()  # far pages are out: the test looks now
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
print(len(d), sum(len(s) for s in d), d[54321][:40])
PY
  want=$(/usr/bin/python3 "$tmp/prog.py" "$tmp/r0" "$tmp/r0")
  run_marked() {  # NAME RUN-OPTIONS...: the program through a recording relay; MARK_SCHEME=tcp+tls: over TLS
    local name=$1 scheme=${MARK_SCHEME:-tcp} extra=() mode=record
    shift
    [[ $scheme == tcp+tls ]] && extra=("${TLS_ARGS[@]}") && mode=bytes
    # a server of its own: no earlier run's bytes in its heap
    LISTEN_SCHEME=$scheme start_tcp_server "m-$name" --capacity 2G --token-file "$tmp/token" "${extra[@]}"
    local mem=$SPID
    start_relay "$name" "$mode"
    rm -f "$tmp/ready" "$tmp/go"
    FARMEM_TLS_CA=$tmp/cert.pem FARMEM_BACKEND=$scheme://127.0.0.1:$RPORT FARMEM_FAR_MEM=512M FARMEM_HW_MEM=256M timeout 120 "$RUN" --local-mem 8M --stats "$@" \
      -- /usr/bin/python3 "$tmp/prog.py" "$tmp/ready" "$tmp/go" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    local cpid=$!
    for _ in $(seq 1200); do [[ -f $tmp/ready ]] || ! kill -0 "$cpid" 2>/dev/null && break; sleep 0.05; done
    in_memory "$mem" FARMEM-SECRET-MARKER-0; SERVER_HAS=$?
    touch "$tmp/go"
    wait "$cpid"; RC=$?
    kill "$RPID" "$mem" 2>/dev/null; wait "$RPID" "$mem" 2>/dev/null
    PORT=$MAIN_PORT
    grep -q FARMEM-SECRET-MARKER-0 "$tmp/$name.rec"; WIRE_HAS=$?
    GOT=$(cat "$tmp/$name.out")
  }
  run_marked plain
  if ((RC == 0)) && [[ $GOT == "$want" && $WIRE_HAS -eq 0 && $SERVER_HAS -eq 0 ]]; then
    ok "protection off: the marker is on the wire and in the server's memory (the checks can see it)"
  else bad "protection off: rc $RC, wire $WIRE_HAS, server $SERVER_HAS, '$GOT' vs '$want'; $(tail -2 "$tmp/plain.err")"; fi
  for opts in "--protect aead" "--protect aead --compress lz4"; do
    # shellcheck disable=SC2086
    run_marked sealed $opts
    st=$(grep -o '"bytes_out":[0-9]*' "$tmp/sealed.err" | head -1)
    if ((RC == 0)) && [[ $GOT == "$want" && $WIRE_HAS -ne 0 && $SERVER_HAS -ne 0 ]] && [[ $st != '"bytes_out":0' ]]; then
      ok "$opts: same output, the marker is neither on the wire nor in the server's memory ($st)"
    else bad "$opts: rc $RC, wire $WIRE_HAS, server $SERVER_HAS, '$GOT' vs '$want'; $(tail -2 "$tmp/sealed.err")"; fi
  done
  # TLS hides the traffic (not the server's memory: protection does that).
  MARK_SCHEME=tcp+tls run_marked tls
  st=$(grep -o '"bytes_out":[0-9]*' "$tmp/tls.err" | head -1)
  if ((RC == 0)) && [[ $GOT == "$want" && $WIRE_HAS -ne 0 && $SERVER_HAS -eq 0 ]] && [[ $st != '"bytes_out":0' ]]; then
    ok "tcp+tls://, protection off: same output, the marker is not on the wire (it is in the server's memory) ($st)"
  else bad "tcp+tls://: rc $RC, wire $WIRE_HAS, server $SERVER_HAS, '$GOT' vs '$want'; $(tail -2 "$tmp/tls.err")"; fi
fi

# 3. Tampering: a bit flipped in every page that comes back, an older
#    version of the page sent back, or another page's bytes. Protection off, the program would get
#    wrong data (the bench's own check sees it); on, it stops with one line.
tamper() {  # MODE PROTECT: runs the bench through a tampering relay; sets RC, OUT, ERR
  start_relay "$1-$2" "$1"
  OUT=$(FARMEM_BACKEND=tcp://127.0.0.1:$RPORT FARMEM_FAR_MEM=256M FARMEM_PROTECT=$2 timeout 120 "$BENCH" \
        --working-set 24M --local-mem 8M --ops 20000 --json 2>"$tmp/tamper.err")
  RC=$?
  ERR=$(grep '^farmem: ' "$tmp/tamper.err")
  kill "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null
}
tamper replay none
if [[ $OUT != *'"verified":true'* ]]; then ok "protection off: a replayed page reaches the program (rc $RC, $(tail -1 "$tmp/tamper.err")): the relay tampers"
else bad "protection off: the replay was not seen: $OUT"; fi
for mode in flip replay swap; do
  tamper "$mode" aead
  if ((RC == 1)) && [[ $(wc -l <<<"$ERR") -eq 1 ]] &&
     grep -q "far page [0-9]* came back from tcp://127.0.0.1:$RPORT altered, replayed or moved" <<<"$ERR" &&
     [[ $OUT != *'"verified"'* ]]; then
    ok "$mode with protection: stopped with one line: $ERR"
  else bad "$mode with protection: rc $RC, '$ERR', $OUT $(tail -3 "$tmp/tamper.err")"; fi
done

# Over TLS, protection off: a bit flipped in the server's bytes fails the
# record's check; the run ends with one line, never with the bad page.
LISTEN_SCHEME=tcp+tls start_tcp_server tls-flip --capacity 1G --token-file "$tmp/token" "${TLS_ARGS[@]}"
TLS_SPID=$SPID
start_relay tls-flip flipbyte
OUT=$(FARMEM_TLS_CA=$tmp/cert.pem FARMEM_BACKEND=tcp+tls://127.0.0.1:$RPORT FARMEM_FAR_MEM=256M timeout 120 "$BENCH" \
      --working-set 24M --local-mem 8M --ops 20000 --json 2>"$tmp/tls-flip.err")
RC=$?
ERR=$(grep '^farmem: ' "$tmp/tls-flip.err")
kill "$RPID" "$TLS_SPID" 2>/dev/null; wait "$RPID" "$TLS_SPID" 2>/dev/null
PORT=$MAIN_PORT
if ((RC == 1)) && [[ $(wc -l <<<"$ERR") -eq 1 ]] && grep -q "lost the memory server tcp+tls://127.0.0.1:$RPORT (TLS: " <<<"$ERR" &&
   [[ $OUT != *'"verified"'* ]]; then
  ok "tcp+tls://, a flipped bit: stopped with one line: $ERR"
else bad "tcp+tls:// flipped bit: rc $RC, '$ERR', $OUT $(tail -3 "$tmp/tls-flip.err")"; fi

# 4. A pool (ec:2+1 over three servers), one of them behind a relay that flips
#    a bit in every piece it sends back: each bad piece fails its check, the
#    pool rebuilds the page from the other two, every word is verified.
POOL=""
for i in 1 2; do
  start_tcp_server "p$i" --capacity 1G --token-file "$tmp/token"
  POOL+="tcp://127.0.0.1:$PORT,"
done
start_tcp_server p3 --capacity 1G --token-file "$tmp/token"
start_relay pool-flip flip
OUT=$(FARMEM_STATS=1 FARMEM_BACKEND="${POOL}tcp://127.0.0.1:$RPORT" FARMEM_REDUNDANCY=ec:2+1 FARMEM_FAR_MEM=256M \
      FARMEM_PROTECT=aead timeout 120 "$BENCH" --working-set 24M --local-mem 8M --ops 20000 --json 2>"$tmp/pool.err")
RC=$?
kill "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null
st=$(grep farmem_stats "$tmp/pool.err")
failed=$(grep -o '"failed_checks":[0-9]*' <<<"$st" | awk -F: '{s += $2} END {print s + 0}')
if ((RC == 0)) && [[ $OUT == *'"verified":true'* ]] && ((${failed:-0} > 0)) && grep -q '"checksum_retries":[1-9]' <<<"$st"; then
  ok "a pool with one tampering server: verified, $failed pieces failed their check and were rebuilt"
else bad "pool with a tampering server: rc $RC, failed checks '${failed}', $OUT $(grep -v farmem_stats "$tmp/pool.err" | tail -3) $st"; fi
PORT=$MAIN_PORT

# 5. The token: proven on every connection above, never in the traffic.
recs=("$tmp"/*.rec)
if ((${#recs[@]} >= 3)) && ! grep -q "$TOKEN" "${recs[@]}" && grep -q "$TOKEN" "$tmp/token"; then
  ok "the token is in none of ${#recs[@]} recordings ($(cat "${recs[@]}" | wc -c) bytes)"
else bad "the token was on the wire: $(grep -l "$TOKEN" "${recs[@]}")"; fi

kill "$MAIN"
echo "protect test: $fails failure(s)"
exit $((fails > 0))
